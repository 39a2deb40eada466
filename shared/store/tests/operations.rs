//! Operating many tenants against a real PostgreSQL: coalescing by progress,
//! the schedule's once-only claim, due deletions, status and progress. Every
//! test gets a database of its own, dropped afterwards.

use chrono::{DateTime, Utc};
use serde_json::json;
use usersync_core::parse_tenant_file;
use usersync_store::testing::{in_fresh_database, TEST_KEY};
use usersync_store::{Round, RunStart, RunState, SecretKey, Store};
use uuid::Uuid;

async fn store_with_tenants(url: &str, ids: &[&str]) -> Store {
    let store = Store::connect(url, 4).await.expect("connecting the store");
    let key = SecretKey::from_base64(TEST_KEY).expect("a test key");
    for id in ids {
        let document = json!({
            "id": id, "name": "Acme AB", "type": "ad_sync", "mode": "user_sync",
            "provider_settings": {"tenant_id": "t-1", "client_id": "c-1", "client_secret": "s",
                                  "user_filter": {"memberOf": []}},
            "pbx_company_id": id,
            "field_mapping": {"alias": "mailNickname", "first_name": "givenName",
                              "surname": "surname", "pstn_fixed": "businessPhones[0]"},
            "schedule": {"at": "02:30", "timezone": "Europe/Stockholm"}
        });
        let tenant = parse_tenant_file(&document.to_string()).expect("a valid tenant file");
        store
            .upsert_tenant(&tenant, &key)
            .await
            .expect("saving the tenant");
    }
    store
}

async fn execute(store: &Store, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> u64 {
    store
        .client()
        .await
        .expect("a connection")
        .execute(sql, params)
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"))
}

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

#[tokio::test]
async fn a_request_joins_a_run_that_makes_progress_and_replaces_one_that_stopped() {
    in_fresh_database(|url| async move {
        let store = store_with_tenants(&url, &["acme"]).await;
        let first = Uuid::new_v4();
        assert_eq!(
            store.start_run(first, "acme", "manual", false).await.unwrap(),
            RunStart::Started
        );

        // Started three hours ago, but a page was recorded just now: still alive.
        execute(
            &store,
            "UPDATE runs SET started_at = now() - interval '3 hours'",
            &[],
        )
        .await;
        execute(&store, "ALTER TABLE runs DISABLE TRIGGER runs_heartbeat", &[]).await;
        execute(
            &store,
            "UPDATE runs SET heartbeat_at = now() - interval '3 hours'",
            &[],
        )
        .await;
        execute(&store, "ALTER TABLE runs ENABLE TRIGGER runs_heartbeat", &[]).await;
        let round = Round {
            run_id: first,
            round_id: Uuid::new_v4(),
        };
        store
            .record_members_page(round, 0, &["u1".to_owned()])
            .await
            .unwrap();

        let joined = Uuid::new_v4();
        assert_eq!(
            store.start_run(joined, "acme", "manual", false).await.unwrap(),
            RunStart::Coalesced(first),
            "a recorded page is progress"
        );
        assert_eq!(store.run_for_request(joined).await.unwrap(), Some(first));
        assert_eq!(store.run_for_request(first).await.unwrap(), Some(first));

        // No progress for longer than the stale limit: the next request starts afresh.
        execute(&store, "ALTER TABLE runs DISABLE TRIGGER runs_heartbeat", &[]).await;
        execute(
            &store,
            "UPDATE runs SET heartbeat_at = now() - interval '16 minutes'",
            &[],
        )
        .await;
        execute(&store, "ALTER TABLE runs ENABLE TRIGGER runs_heartbeat", &[]).await;
        let fresh = Uuid::new_v4();
        assert_eq!(
            store.start_run(fresh, "acme", "manual", false).await.unwrap(),
            RunStart::Started
        );
        let stale = store.run(first).await.unwrap().expect("the stale run");
        assert_eq!(stale.state, RunState::Failed.as_str());
        assert_eq!(stale.error_code.as_deref(), Some("run.stale"));
        assert!(stale.error.unwrap().contains(&fresh.to_string()));
        assert!(stale.finished_at.is_some());
    })
    .await;
}

#[tokio::test]
async fn a_due_run_is_claimed_by_exactly_one_of_many_replicas() {
    in_fresh_database(|url| async move {
        let store = store_with_tenants(&url, &["acme", "globex"]).await;
        let to_compute = store.schedules_to_compute().await.unwrap();
        assert_eq!(to_compute.len(), 2);
        let due = utc("2026-03-29T01:00:00Z");
        for row in &to_compute {
            assert_eq!(
                row.schedule,
                json!({"at": "02:30", "timezone": "Europe/Stockholm"})
            );
            store
                .set_next_due(&row.tenant_id, &row.schedule, due)
                .await
                .unwrap();
        }
        assert!(store.schedules_to_compute().await.unwrap().is_empty());
        assert!(store
            .due_schedules(utc("2026-03-29T00:59:59Z"))
            .await
            .unwrap()
            .is_empty());
        let now = utc("2026-03-29T01:00:05Z");
        assert_eq!(store.due_schedules(now).await.unwrap().len(), 2);

        // Eight replicas race for each due run.
        let next = utc("2026-03-30T00:30:00Z");
        let mut racers = Vec::new();
        for _ in 0..8 {
            for tenant in ["acme", "globex"] {
                let store = store.clone();
                racers.push(tokio::spawn(async move {
                    store.claim_due(tenant, due, next).await.unwrap()
                }));
            }
        }
        let mut won = 0;
        for racer in racers {
            won += usize::from(racer.await.unwrap());
        }
        assert_eq!(won, 2, "one claim per tenant");
        assert!(store.due_schedules(now).await.unwrap().is_empty());

        // A failed publish gives the claim back.
        store.unclaim_due("acme", due, next).await.unwrap();
        assert_eq!(store.due_schedules(now).await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn due_deletions_are_swept_once_and_status_shows_them() {
    in_fresh_database(|url| async move {
        let store = store_with_tenants(&url, &["acme"]).await;
        store
            .set_next_due("acme", &json!({"at": "02:30", "timezone": "Europe/Stockholm"}), utc("2026-03-29T01:00:00Z"))
            .await
            .unwrap();
        let due_at = utc("2026-03-20T10:00:00Z");
        execute(
            &store,
            "INSERT INTO sync_users (tenant_id, object_id, state, pbx_id, pending_delete_at)
             VALUES ('acme', 'u1', 'pending_deletion', 'p1', $1), ('acme', 'u2', 'pending_deletion', 'p2', $1 + interval '2 days')",
            &[&due_at],
        )
        .await;
        assert!(store.due_sweeps(utc("2026-03-20T09:00:00Z")).await.unwrap().is_empty());
        let now = utc("2026-03-20T10:00:01Z");
        assert_eq!(store.due_sweeps(now).await.unwrap(), vec![("acme".to_owned(), due_at)]);
        assert!(store.claim_sweep("acme", due_at).await.unwrap());
        assert!(!store.claim_sweep("acme", due_at).await.unwrap(), "claimed once");
        assert!(store.due_sweeps(now).await.unwrap().is_empty());

        let overview = store.tenant_overview(None).await.unwrap();
        assert_eq!(overview.len(), 1);
        assert_eq!(overview[0].pending_deletions, 2);
        assert_eq!(overview[0].mode, "user_sync");
        assert_eq!(overview[0].next_due, Some(utc("2026-03-29T01:00:00Z")));
        assert!(overview[0].last_run.is_none());
        let run = Uuid::new_v4();
        store.start_run(run, "acme", "sweep", false).await.unwrap();
        // A tenant with a run in progress is not swept again.
        execute(&store, "UPDATE tenant_schedule SET swept_for = NULL", &[]).await;
        assert!(store.due_sweeps(now).await.unwrap().is_empty());
        let overview = store.tenant_overview(Some("acme")).await.unwrap();
        assert_eq!(overview[0].last_run.as_ref().map(|r| r.id), Some(run));
        assert!(store.tenant_overview(Some("nobody")).await.unwrap().is_empty());
    })
    .await;
}
