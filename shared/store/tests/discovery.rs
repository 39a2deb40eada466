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
    round
}

#[tokio::test]
async fn fields_are_flattened_counted_and_exemplified() {
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
        store
            .record_users_page(round, "acme", 0, &users)
            .await
            .expect("recording");

        assert_eq!(store.record_fields("acme").await.expect("recording fields"), 4);
        let fields: Vec<_> = store
            .fields("acme")
            .await
            .expect("fields")
            .into_iter()
            .map(|f| (f.field, f.users, f.example))
            .collect();
        assert_eq!(
            fields,
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

#[tokio::test]
async fn a_relisting_round_stores_members_and_a_later_round_reuses_them() {
    in_fresh_database(|url| async move {
        let store = store_with_tenant(&url).await;
        assert_eq!(store.groups_state("acme").await.expect("state"), None);
        let first = new_round(&store).await;
        store
            .record_members_page(first, 0, &["u1".to_owned(), "u2".to_owned()])
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
        let second = Round {
            run_id: first.run_id,
            round_id: Uuid::new_v4(),
        };
        groups.relisted = false;
        groups.delta_link = "https://graph/groups/delta?$deltatoken=2".to_owned();
        store
            .settle_membership("acme", second, Some(&groups))
            .await
            .expect("settling");
        let client = store.client().await.expect("client");
        let rows = client
            .query(
                "SELECT object_id FROM round_members WHERE round_id = $1 ORDER BY object_id",
                &[&second.round_id],
            )
            .await
            .expect("round members");
        let members: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
        assert_eq!(members, ["u1", "u2"]);
        let state = store.groups_state("acme").await.expect("state").expect("stored");
        assert!(state.delta_link.ends_with("deltatoken=2"));

        // An unscoped round forgets it all.
        let third = Round {
            run_id: first.run_id,
            round_id: Uuid::new_v4(),
        };
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
