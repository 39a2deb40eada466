use axum::Router;
use serde_json::json;

use crate::support::{creds, graph_with, scripted, token_ok, Fake, Reply, TOKEN_PATH};

#[tokio::test]
async fn group_names_are_quoted_encoded_and_paged() {
    let fake = Fake::start(|base| {
        let first = json!({
            "value": [{"id": "g1", "displayName": "O'Brien & Co"}],
            "@odata.nextLink": format!("{base}/v1.0/groups?$skiptoken=more"),
        });
        let second = json!({"value": [{"id": "g2", "displayName": "O'Brien & Co"}]});
        let none = json!({"value": []});
        Router::new().route(TOKEN_PATH, token_ok()).route(
            "/v1.0/groups",
            scripted(vec![
                Reply::json(200, first),
                Reply::json(200, second),
                Reply::json(200, none),
            ]),
        )
    })
    .await;
    let names = ["O'Brien & Co".to_string(), "Nobody".to_string()];

    let resolved = fake
        .client()
        .resolve_groups(&creds(), &names)
        .await
        .expect("groups");

    assert_eq!(resolved.len(), 2);
    assert_eq!(
        (resolved[0].name.as_str(), resolved[0].ids.as_slice()),
        ("O'Brien & Co", &["g1".to_string(), "g2".to_string()][..])
    );
    assert_eq!((resolved[1].name.as_str(), resolved[1].ids.len()), ("Nobody", 0));
    let queries: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|seen| seen.path == "/v1.0/groups")
        .map(|seen| seen.query)
        .collect();
    assert_eq!(
        queries,
        [
            "$filter=displayName%20eq%20%27O%27%27Brien%20%26%20Co%27&$select=id,displayName",
            "$skiptoken=more",
            "$filter=displayName%20eq%20%27Nobody%27&$select=id,displayName",
        ]
    );
}

#[tokio::test]
async fn members_are_read_with_eventual_consistency_and_count() {
    let path = "/v1.0/groups/g-1/transitiveMembers/microsoft.graph.user";
    let fake = Fake::start(|base| {
        let first = json!({
            "@odata.count": 3,
            "value": [{"@odata.type": "#microsoft.graph.user", "id": "u1"},
                      {"@odata.type": "#microsoft.graph.user", "id": "u2"}],
            "@odata.nextLink": format!("{base}{path}?$count=true&$select=id&$skiptoken=p2"),
        });
        let second = json!({"value": [{"@odata.type": "#microsoft.graph.user", "id": "u3"}]});
        Router::new().route(TOKEN_PATH, token_ok()).route(
            path,
            scripted(vec![Reply::json(200, first), Reply::json(200, second)]),
        )
    })
    .await;
    let client = fake.client();

    let first = client
        .members_page(&creds(), &client.members_start_url("g-1"))
        .await
        .expect("first page");
    let next = first.next.clone().expect("next link");
    let second = client.members_page(&creds(), &next).await.expect("second page");

    assert_eq!(first.user_ids, ["u1", "u2"]);
    assert_eq!(
        (second.user_ids.as_slice(), second.next),
        (&["u3".to_string()][..], None)
    );
    let member_requests: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|seen| seen.path == path)
        .collect();
    assert_eq!(member_requests.len(), 2);
    assert_eq!(member_requests[0].query, "$count=true&$select=id");
    for seen in &member_requests {
        assert_eq!(seen.headers["consistencylevel"], "eventual");
    }
}

#[tokio::test]
async fn group_lookup_errors_are_returned() {
    let fake = graph_with(
        "/v1.0/groups",
        vec![Reply::graph_error(400, "Request_UnsupportedQuery", "Bad filter.")],
    )
    .await;

    let outcome = fake
        .client()
        .resolve_groups(&creds(), &["Sales".to_string()])
        .await;

    assert!(outcome.is_err(), "{outcome:?}");
}

#[tokio::test]
async fn groups_delta_pages_carry_member_changes_and_removals() {
    let path = "/v1.0/groups/delta";
    let fake = Fake::start(|base| {
        let first = json!({
            "value": [{"id": "g1", "displayName": "Telephony", "members@delta": [
                {"@odata.type": "#microsoft.graph.user", "id": "u1"},
                {"@odata.type": "#microsoft.graph.group", "id": "g2"}]}],
            "@odata.nextLink": format!("{base}{path}?$skiptoken=p2"),
        });
        let second = json!({
            "value": [
                {"id": "g1", "members@delta": [
                    {"@odata.type": "#microsoft.graph.user", "id": "u2", "@removed": {"reason": "deleted"}}]},
                {"id": "g3", "@removed": {"reason": "changed"}}],
            "@odata.deltaLink": format!("{base}{path}?$deltatoken=next"),
        });
        Router::new().route(TOKEN_PATH, token_ok()).route(
            path,
            scripted(vec![Reply::json(200, first), Reply::json(200, second)]),
        )
    })
    .await;
    let client = fake.client();

    let first = client
        .groups_delta_page(&creds(), &client.groups_delta_start_url())
        .await
        .expect("first page");
    let usersync_graph::PageLink::Next(next) = first.next.clone() else {
        panic!("expected a next link: {first:?}");
    };
    let second = client
        .groups_delta_page(&creds(), &next)
        .await
        .expect("second page");

    let g1 = &first.groups[0];
    assert_eq!((g1.id.as_str(), g1.removed), ("g1", false));
    let members: Vec<_> = g1
        .members
        .iter()
        .map(|m| (m.id.as_str(), m.is_group, m.removed))
        .collect();
    assert_eq!(members, [("u1", false, false), ("g2", true, false)]);
    let left = &second.groups[0].members[0];
    assert_eq!(
        (left.id.as_str(), left.is_group, left.removed),
        ("u2", false, true)
    );
    assert!(second.groups[1].removed);
    assert_eq!(
        second.next,
        usersync_graph::PageLink::Delta(format!("{}{path}?$deltatoken=next", fake.base))
    );
    let queries: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|seen| seen.path == path)
        .map(|seen| seen.query)
        .collect();
    assert_eq!(queries, ["$select=displayName,members", "$skiptoken=p2"]);
}
