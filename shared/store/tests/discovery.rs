//! Field discovery and stored group membership against a real PostgreSQL, each
//! test in a database of its own.

use serde_json::json;
use usersync_contract::GroupsRound;
use usersync_core::parse_tenant_file;
use usersync_store::testing::{in_fresh_database, TEST_KEY};
use usersync_store::{Round, SecretKey, Store};
use uuid::Uuid;

async fn store_with_tenant(url: &str) -> Store {
    let store = Store::connect(url, 4).await.expect("connecting the store");
    let document = json!({
        "id": "acme", "name": "Acme AB", "type": "ad_sync", "mode": "user_sync",
        "provider_settings": {"tenant_id": "t-1", "client_id": "c-1", "client_secret": "s",
                              "user_filter": {"memberOf": ["Telephony"]}},
        "pbx_company_id": "acme",
        "field_mapping": {"alias": "mailNickname", "first_name": "givenName", "surname": "surname"},
        "pbx": {"api_url": "https://pbx.example", "api_token": "t"}
    });
    let tenant = parse_tenant_file(&document.to_string()).expect("a valid tenant file");
    let key = SecretKey::from_base64(TEST_KEY).expect("key");
    store
        .upsert_tenant(&tenant, &key)
        .await
        .expect("saving the tenant");
    store
}

async fn new_round(store: &Store) -> Round {
    let round = Round {
        run_id: Uuid::new_v4(),
        round_id: Uuid::new_v4(),
    };
    store
        .start_run(round.run_id, "acme", "manual", true)
        .await
        .expect("starting a run");
    assert!(store
        .begin_round("acme", round)
        .await
        .expect("beginning the round"));
    round
}

/// A later round of `round`'s run, begun (the fetcher begins a round before
/// publishing its first page).
async fn later_round(store: &Store, round: Round) -> Round {
    let later = Round {
        run_id: round.run_id,
        round_id: Uuid::new_v4(),
    };
    assert!(store
        .begin_round("acme", later)
        .await
        .expect("beginning the round"));
    later
}

async fn fields_of(store: &Store) -> Vec<(String, i64, serde_json::Value)> {
    store
        .fields("acme")
        .await
        .expect("fields")
        .into_iter()
        .map(|f| (f.field, f.users, f.example))
        .collect()
}

#[tokio::test]
async fn fields_are_flattened_counted_and_exemplified_as_the_page_is_recorded() {
    in_fresh_database(|url| async move {
        let store = store_with_tenant(&url).await;
        let round = new_round(&store).await;
        let users = [
            json!({"id": "a", "mail": "a@x", "businessPhones": ["+46 8 1"], "mobilePhone": null,
                   "onPremisesExtensionAttributes": {"extensionAttribute1": "K1", "extensionAttribute2": null},
                   "extension_0a1b_costCenter": "CC-7"}),
            json!({"id": "b", "mail": "b@x", "businessPhones": [],
                   "onPremisesExtensionAttributes": {"extensionAttribute1": "K2"}}),
            json!({"id": "c", "mail": "c@x"}),
            json!({"id": "d", "@removed": {"reason": "deleted"}}),
        ];
        for _ in 0..2 {
            // A redelivered page counts once.
            store
                .record_users_page(round, "acme", 0, &users)
                .await
                .expect("recording");
        }
        assert_eq!(
            fields_of(&store).await,
            [
                ("businessPhones[0]".to_owned(), 1, json!("+46 8 1")),
                ("extension_0a1b_costCenter".to_owned(), 1, json!("CC-7")),
                ("mail".to_owned(), 3, json!("a@x")),
                ("onPremisesExtensionAttributes.extensionAttribute1".to_owned(), 2, json!("K1")),
            ]
        );
    })
    .await;
}

/// Later pages move the counts by what they change: a user removed from the
/// directory or one that loses a property counts no more, a new one counts.
#[tokio::test]
async fn later_pages_and_a_full_round_move_the_counts_by_what_changed() {
    in_fresh_database(|url| async move {
        let store = store_with_tenant(&url).await;
        let round = new_round(&store).await;
        let users = [
            json!({"id": "a", "mail": "a@x", "jobTitle": "Boss"}),
            json!({"id": "b", "mail": "b@x", "jobTitle": "Clerk"}),
            json!({"id": "c", "mail": "c@x"}),
        ];
        store
            .record_users_page(round, "acme", 0, &users)
            .await
            .expect("recording");
        let later = later_round(&store, round).await;
        let changes = [
            json!({"id": "a", "@removed": {"reason": "deleted"}}),
            json!({"id": "b", "jobTitle": null, "department": "Sales"}),
            json!({"id": "e", "mail": "e@x"}),
        ];
        store
            .record_users_page(later, "acme", 0, &changes)
            .await
            .expect("recording changes");
        assert_eq!(
            fields_of(&store).await,
            [
                ("department".to_owned(), 1, json!("Sales")),
                ("mail".to_owned(), 3, json!("b@x")),
            ]
        );

        // A full round that returns only b: c and e are gone.
        let full = later_round(&store, round).await;
        store
            .record_users_page(
                full,
                "acme",
                0,
                &[json!({"id": "b", "mail": "b@x", "department": "Sales"})],
            )
            .await
            .expect("recording the full round");
        assert_eq!(
            store.mark_unseen_removed("acme", full, 1).await.expect("marking"),
            Some(2)
        );
        assert_eq!(
            fields_of(&store).await,
            [
                ("department".to_owned(), 1, json!("Sales")),
                ("mail".to_owned(), 1, json!("b@x")),
            ]
        );
    })
    .await;
}

/// Pages of one round recorded at once, with users in common, count each
/// user once: the users' rows are locked before their fields are counted.
#[tokio::test]
async fn concurrent_pages_with_the_same_new_users_count_them_once() {
    in_fresh_database(|url| async move {
        let store = store_with_tenant(&url).await;
        let round = new_round(&store).await;
        let pages: Vec<Vec<serde_json::Value>> = (0..8)
            .map(|page| {
                (0..200)
                    .map(|i| json!({"id": format!("u{i:04}"), "mail": format!("{i}@x"), "jobTitle": format!("t{page}")}))
                    .collect()
            })
            .collect();
        let mut recording = tokio::task::JoinSet::new();
        for (page, users) in pages.into_iter().enumerate() {
            let store = store.clone();
            let page = u32::try_from(page).expect("a page number");
            recording.spawn(async move { store.record_users_page(round, "acme", page, &users).await });
        }
        while let Some(outcome) = recording.join_next().await {
            outcome.expect("a recording task").expect("recording");
        }
        let counts: Vec<(String, i64)> = fields_of(&store).await.into_iter().map(|(f, n, _)| (f, n)).collect();
        assert_eq!(counts, [("jobTitle".to_owned(), 200), ("mail".to_owned(), 200)]);
    })
    .await;
}

#[tokio::test]
async fn a_relisting_round_stores_members_and_a_later_round_reuses_them() {
    in_fresh_database(|url| async move {
        let store = store_with_tenant(&url).await;
        assert_eq!(store.groups_state("acme").await.expect("state"), None);
        let first = new_round(&store).await;
        store
            .record_members_page(first, "acme", 0, &["u1".to_owned(), "u2".to_owned()])
            .await
            .expect("members");
        let mut groups = GroupsRound {
            delta_link: "https://graph/groups/delta?$deltatoken=1".to_owned(),
            filter_group_ids: vec!["g1".to_owned()],
            nested_group_ids: vec!["g2".to_owned()],
            relisted: true,
        };
        store
            .settle_membership("acme", first, Some(&groups))
            .await
            .expect("settling");
        // A redelivered end of round changes nothing.
        store
            .settle_membership("acme", first, Some(&groups))
            .await
            .expect("settling again");

        let state = store.groups_state("acme").await.expect("state").expect("stored");
        assert_eq!(state.nested_group_ids, ["g2"]);
        // Later rounds of the same run (a run is open while its rounds are planned).
        let second = later_round(&store, first).await;
        groups.relisted = false;
        groups.delta_link = "https://graph/groups/delta?$deltatoken=2".to_owned();
        store
            .settle_membership("acme", second, Some(&groups))
            .await
            .expect("settling");
        let client = store.client().await.expect("client");
        let rows = client
            .query(
                "SELECT object_id FROM tenant_members WHERE tenant_id = 'acme' ORDER BY object_id",
                &[],
            )
            .await
            .expect("round members");
        let members: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
        assert_eq!(members, ["u1", "u2"]);
        let state = store.groups_state("acme").await.expect("state").expect("stored");
        assert!(state.delta_link.ends_with("deltatoken=2"));

        // An unscoped round forgets it all.
        let third = later_round(&store, first).await;
        store
            .settle_membership("acme", third, None)
            .await
            .expect("settling");
        assert_eq!(store.groups_state("acme").await.expect("state"), None);
    })
    .await;
}

#[tokio::test]
async fn run_warnings_ride_on_the_run_finished_event_once_each() {
    in_fresh_database(|url| async move {
        let store = store_with_tenant(&url).await;
        let round = new_round(&store).await;
        let warning = "2 groups are named \"Telephony\": members of all of them are in scope";
        for _ in 0..2 {
            store
                .add_run_warning(round.run_id, warning)
                .await
                .expect("recording the warning");
        }
        let end = usersync_store::RoundEnd {
            delta_link: "https://graph/users/delta?$deltatoken=1",
            full_round: true,
            paused: false,
            basis: "basis",
            planned_everyone: true,
            planned_at: chrono::Utc::now(),
        };
        let event = store
            .complete_planning(round.run_id, "acme", &end)
            .await
            .expect("completing")
            .expect("nothing pending: the run finishes");
        let usersync_contract::Event::RunFinished { warnings, .. } = event else {
            panic!("expected RunFinished, got {event:?}");
        };
        assert_eq!(warnings, [warning]);
    })
    .await;
}

/// The counts kept page by page are the ones the database's own
/// `source_fields` gives over the stored directory (a full round's removals
/// count down with it), for values of every kind, after a first page and
/// after a page of changes.
#[tokio::test]
async fn counts_kept_page_by_page_match_the_stored_directory_flattened_by_the_database() {
    in_fresh_database(|url| async move {
        let store = store_with_tenant(&url).await;
        let round = new_round(&store).await;
        let first = [
            json!({"id": "u1", "n": 1, "f": 1.5, "b": false, "s": "x", "o": {"k": {"deep": 1}, "z": null, "e": []},
                   "a": [null, {"q": 1}, [2], "t"], "empty": {}, "none": [], "gone": null}),
            json!({"id": "u2", "s": "y", "a": ["only"], "o": {"k": 2}}),
            json!({"id": "u3", "s": "z", "@odata.type": "#microsoft.graph.user"}),
        ];
        store
            .record_users_page(round, "acme", 0, &first)
            .await
            .expect("recording");
        let later = later_round(&store, round).await;
        let changes = [
            json!({"id": "u1", "a": null, "o": {"k": 3}, "s": null}),
            json!({"id": "u2", "@removed": {"reason": "changed"}}),
            json!({"id": "u4", "s": "w", "n": 0, "a": [null, "v", {"r": 1}], "o": {"k": [1], "m": "x"}}),
        ];
        store
            .record_users_page(later, "acme", 0, &changes)
            .await
            .expect("recording changes");
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connecting");
        tokio::spawn(connection);
        let recomputed: Vec<(String, i64)> = client
            .query(
                "SELECT f.field, count(*) FROM directory_users d, source_fields(d.source) f
                 WHERE d.tenant_id = 'acme' AND NOT d.removed GROUP BY f.field ORDER BY f.field",
                &[],
            )
            .await
            .expect("recomputing")
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let kept: Vec<(String, i64)> = fields_of(&store).await.into_iter().map(|(f, n, _)| (f, n)).collect();
        assert!(recomputed.len() >= 5, "a directory with fields: {recomputed:?}");
        assert_eq!(kept, recomputed);
    })
    .await;
}
