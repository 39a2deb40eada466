//! Windowed dispatch and the applier's per-run PBX facts, against a real
//! PostgreSQL (postgres@127.0.0.1:5432, trust auth), each test in a database
//! of its own.

use std::future::Future;

use serde_json::json;
use usersync_contract::Change;
use usersync_core::{parse_tenant_file, Action};
use usersync_store::testing::{in_fresh_database, TEST_KEY};
use usersync_store::{ChangeRecord, PbxCheck, PlannedUser, SecretKey, Store};
use uuid::Uuid;

/// Runs `test` with a store on a new database with tenant `acme` and one
/// started run; the database is dropped afterwards, also when the test fails.
async fn with_run<F, Fut>(test: F)
where
    F: FnOnce(Store, Uuid) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    in_fresh_database(|url| async move {
        let store = Store::connect(&url, 4).await.expect("connecting the store");
        let tenant = parse_tenant_file(
            &json!({
                "id": "acme", "name": "Acme AB", "type": "ad_sync", "mode": "user_sync",
                "provider_settings": {"tenant_id": "t", "client_id": "c", "client_secret": "s",
                                      "user_filter": {"memberOf": []}},
                "pbx_company_id": "acme", "field_mapping": {}
            })
            .to_string(),
        )
        .expect("a valid tenant file");
        let key = SecretKey::from_base64(TEST_KEY).expect("a valid key");
        store
            .upsert_tenant(&tenant, &key)
            .await
            .expect("saving the tenant");
        let run = Uuid::new_v4();
        store
            .start_run(run, "acme", "manual", false)
            .await
            .expect("starting the run");
        test(store, run).await;
    })
    .await;
}

fn planned_delete(index: usize) -> PlannedUser {
    let object_id = format!("u{index:03}");
    PlannedUser {
        object_id: object_id.clone(),
        state: "deleted",
        desired: None,
        desired_version: 1,
        problems: Vec::new(),
        held: None,
        pending_delete_at: None,
        change: Some(Change {
            object_id,
            desired_version: 1,
            action: Action::Delete {
                pbx_id: format!("p{index}"),
            },
        }),
    }
}

#[tokio::test]
async fn a_change_counts_its_own_failed_tries_until_its_outcome_is_recorded() {
    with_run(|store, run| async move {
        let planned: Vec<_> = (0..2).map(planned_delete).collect();
        store
            .save_plan(run, "acme", &planned)
            .await
            .expect("saving the plan");
        let mut client = store.client().await.expect("a connection");
        let mut tried = Vec::new();
        for error in ["PBX answered 503 unavailable", "PBX answered 429 rate_limited"] {
            let tx = client.transaction().await.expect("a transaction");
            let tries = Store::record_failed_try(&tx, run, "u000", error)
                .await
                .expect("recording a try")
                .expect("the change is pending");
            tx.commit().await.expect("commit");
            tried.push(tries);
        }
        assert_eq!((tried[0].tries, tried[1].tries), (1, 2));
        assert_eq!(tried[0].failing_for, std::time::Duration::ZERO, "from the first try on");
        assert!(tried[1].failing_for > tried[0].failing_for);
        let row = client
            .query_one(
                "SELECT outcome, detail, tries FROM run_changes WHERE run_id = $1 AND object_id = 'u000'",
                &[&run],
            )
            .await
            .expect("the change");
        assert_eq!(row.get::<_, String>(0), "pending");
        assert_eq!(row.get::<_, String>(1), "PBX answered 429 rate_limited", "its latest error");
        let neighbour = client
            .query_one(
                "SELECT tries, first_failed_at IS NULL FROM run_changes WHERE run_id = $1 AND object_id = 'u001'",
                &[&run],
            )
            .await
            .expect("the other change");
        assert_eq!((neighbour.get::<_, i32>(0), neighbour.get::<_, bool>(1)), (0, true));

        // Its outcome clears the latest error; a done change takes no more tries.
        let tx = client.transaction().await.expect("a transaction");
        Store::record_change(&tx, run, "acme", "u000", 1, &ChangeRecord::Deleted)
            .await
            .expect("recording the outcome");
        assert_eq!(
            Store::record_failed_try(&tx, run, "u000", "late")
                .await
                .expect("recording a try"),
            None
        );
        tx.commit().await.expect("commit");
        let row = client
            .query_one(
                "SELECT outcome, detail IS NULL, tries FROM run_changes WHERE run_id = $1 AND object_id = 'u000'",
                &[&run],
            )
            .await
            .expect("the change");
        assert_eq!(
            (row.get::<_, String>(0), row.get::<_, bool>(1), row.get::<_, i32>(2)),
            ("deleted".to_owned(), true, 2)
        );
    })
    .await;
}

#[tokio::test]
async fn batches_are_numbered_once_and_hand_out_only_pending_changes() {
    with_run(|store, run| async move {
        let planned: Vec<_> = (0..250).map(planned_delete).collect();
        store
            .save_plan(run, "acme", &planned)
            .await
            .expect("saving the plan");
        assert_eq!(store.assign_batches(run, 100).await.expect("numbering"), 3);
        let first = store.pending_batch(run, 0).await.expect("batch 0");
        let ids: Vec<&str> = first.iter().map(|c| c.object_id.as_str()).collect();
        assert_eq!(ids.len(), 100);
        assert_eq!(
            (ids[0], ids[99]),
            ("u000", "u099"),
            "batches follow the object ids"
        );

        // Numbered once: a redelivered end of round keeps the batches as they were.
        assert_eq!(store.assign_batches(run, 7).await.expect("numbering again"), 3);
        assert_eq!(store.pending_batch(run, 2).await.expect("batch 2").len(), 50);
        assert!(store.pending_batch(run, 3).await.expect("batch 3").is_empty());

        let client = store.client().await.expect("a connection");
        client
            .execute(
                "UPDATE run_changes SET outcome = 'deleted' WHERE run_id = $1 AND object_id = 'u000'",
                &[&run],
            )
            .await
            .expect("recording one change");
        let first = store.pending_batch(run, 0).await.expect("batch 0");
        assert_eq!(first.len(), 99, "a done change is not handed out again");
        assert!(store.run_is_open(run).await.expect("the run's state"));
    })
    .await;
}

#[tokio::test]
async fn an_unowned_pbx_user_is_claimed_once_and_a_rolled_back_claim_is_undone() {
    with_run(|store, run| async move {
        assert_eq!(store.pbx_check(run).await.expect("loading"), None);
        let check = PbxCheck {
            template_id: Some("tpl-1".into()),
        };
        store.save_pbx_check(run, &check).await.expect("saving");
        store.save_pbx_check(run, &check).await.expect("saving twice");
        assert_eq!(store.pbx_check(run).await.expect("loading"), Some(check));

        let anna = json!({"id": "p-1", "alias": "anna"});
        let other = json!({"id": "p-2", "alias": "anna"});
        store
            .save_unowned(run, &[("anna".into(), anna.clone())])
            .await
            .expect("saving");
        store
            .save_unowned(run, &[("anna".into(), other)])
            .await
            .expect("the first user seen keeps the value");

        let mut client = store.client().await.expect("a connection");
        {
            let tx = client.transaction().await.expect("a transaction");
            let claimed = Store::claim_unowned(&tx, run, "anna").await.expect("claiming");
            assert_eq!(claimed, Some(anna.clone()));
            // Dropped without a commit: the write failed, the user is there for the next try.
        }
        let tx = client.transaction().await.expect("a transaction");
        let claimed = Store::claim_unowned(&tx, run, "anna").await.expect("claiming");
        assert_eq!(claimed, Some(anna));
        tx.commit().await.expect("committing");
        let tx = client.transaction().await.expect("a transaction");
        assert_eq!(
            Store::claim_unowned(&tx, run, "anna").await.expect("claiming"),
            None,
            "adopted once"
        );
    })
    .await;
}
