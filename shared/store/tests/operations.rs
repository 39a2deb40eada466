//! Operating many tenants against a real PostgreSQL: coalescing by progress,
//! the schedule's once-only claim, due deletions, status and progress. Every
//! test gets a database of its own, dropped afterwards.

use chrono::{DateTime, Utc};
use serde_json::json;
use usersync_core::parse_tenant_file;
use usersync_store::testing::{in_fresh_database, TEST_KEY};
use usersync_store::{Round, RunEnd, RunStart, RunState, SecretKey, Store};
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
            .record_members_page(round, "acme", 0, &["u1".to_owned()])
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

/// Ages the tenant's runs' heartbeat without it counting as progress.
async fn age_heartbeats(store: &Store, minutes: i32) {
    execute(store, "ALTER TABLE runs DISABLE TRIGGER runs_heartbeat", &[]).await;
    execute(
        store,
        "UPDATE runs SET heartbeat_at = now() - make_interval(mins => $1) WHERE state <> 'queued'",
        &[&minutes],
    )
    .await;
    execute(store, "ALTER TABLE runs ENABLE TRIGGER runs_heartbeat", &[]).await;
}

#[tokio::test]
async fn a_request_joins_a_run_until_it_reads_its_round_then_all_share_one_follow_up() {
    in_fresh_database(|url| async move {
        let store = store_with_tenants(&url, &["acme"]).await;
        execute(
            &store,
            "UPDATE tenants SET delta_link = 'https://graph.example/delta'",
            &[],
        )
        .await;
        let start = |run_id: Uuid, trigger: &'static str, full: bool| {
            let store = store.clone();
            async move { store.start_run(run_id, "acme", trigger, full).await.unwrap() }
        };
        let first = Uuid::new_v4();
        assert_eq!(start(first, "manual", false).await, RunStart::Started);
        let early = Uuid::new_v4();
        assert_eq!(
            start(early, "manual", true).await,
            RunStart::Coalesced(first),
            "the round is not read yet"
        );
        assert!(
            store.mark_round_started(first).await.unwrap(),
            "a request for a full read joined: the round reads everything"
        );

        let [manual, scheduled, full] = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
        assert_eq!(start(manual, "manual", false).await, RunStart::Queued(manual));
        assert_eq!(
            start(scheduled, "scheduled", false).await,
            RunStart::Queued(manual)
        );
        assert_eq!(start(full, "manual", true).await, RunStart::Queued(manual));
        assert_eq!(
            start(manual, "manual", false).await,
            RunStart::Queued(manual),
            "a redelivered request"
        );
        for request in [manual, scheduled, full] {
            assert_eq!(store.run_for_request(request).await.unwrap(), Some(manual));
        }
        assert_eq!(store.run_for_request(early).await.unwrap(), Some(first));
        let queued = store.run(manual).await.unwrap().expect("the follow-up");
        assert_eq!(
            (queued.state.as_str(), queued.trigger.as_str(), queued.full_round),
            ("queued", "manual", true),
            "one --full request makes the follow-up read everything"
        );
        assert_eq!(
            store.runs("acme", 10).await.unwrap().len(),
            2,
            "one follow-up however many requests"
        );
        let overview = &store.tenant_overview(Some("acme")).await.unwrap()[0];
        assert_eq!(overview.last_run.as_ref().map(|run| run.id), Some(first));
        assert_eq!(overview.queued_run, Some(manual));

        // Not while the first run is in progress, however long it takes: a
        // queued run does not go stale.
        assert_eq!(store.due_follow_ups().await.unwrap(), vec![]);
        execute(
            &store,
            "UPDATE runs SET requested_at = now() - interval '1 hour' WHERE id = $1",
            &[&manual],
        )
        .await;
        let later = Uuid::new_v4();
        assert_eq!(start(later, "manual", false).await, RunStart::Queued(manual));

        store.fail_run(first, "test.refused", "no").await.unwrap();
        let due = store.due_follow_ups().await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].run_id, due[0].full_round), (manual, true));
        // Two replicas saw it due: one claims it.
        let claims = [
            store.claim_follow_up(&due[0]).await.unwrap(),
            store.claim_follow_up(&due[0]).await.unwrap(),
        ];
        assert_eq!(claims, [Some(1), None]);
        assert_eq!(
            store.due_follow_ups().await.unwrap(),
            vec![],
            "claimed: not published again soon"
        );
        // Between the first run's end and the follow-up's start a request joins the follow-up.
        let between = Uuid::new_v4();
        assert_eq!(start(between, "manual", false).await, RunStart::Queued(manual));

        // The start request it was claimed for starts it, once.
        assert_eq!(
            store.start_follow_up(manual, "acme", 1).await.unwrap(),
            RunStart::Started
        );
        assert_eq!(
            store.start_follow_up(manual, "acme", 1).await.unwrap(),
            RunStart::Resumed,
            "a redelivery of that request"
        );
        assert_eq!(
            store.start_follow_up(manual, "acme", 2).await.unwrap(),
            RunStart::AlreadyFetched,
            "another start request"
        );
        assert!(store.mark_round_started(manual).await.unwrap());
        let started = store.run(manual).await.unwrap().unwrap();
        let ended = store.run(first).await.unwrap().unwrap();
        assert_eq!(started.state, "fetching");
        assert!(started.started_at >= ended.finished_at.unwrap());
        assert_eq!(store.due_follow_ups().await.unwrap(), vec![]);
        let overview = &store.tenant_overview(Some("acme")).await.unwrap()[0];
        assert_eq!(overview.last_run.as_ref().map(|run| run.id), Some(manual));
        assert_eq!(overview.queued_run, None);
    })
    .await;
}

#[tokio::test]
async fn the_round_starts_reading_only_after_a_request_deciding_to_join_has_committed() {
    in_fresh_database(|url| async move {
        let store = store_with_tenants(&url, &["acme"]).await;
        let first = Uuid::new_v4();
        store.start_run(first, "acme", "manual", false).await.unwrap();
        // A request deciding under the tenant's lock, as start_run does.
        let mut deciding = store.client().await.unwrap();
        let decision = deciding.transaction().await.unwrap();
        decision
            .execute("SELECT 1 FROM tenants WHERE id = 'acme' FOR UPDATE", &[])
            .await
            .unwrap();
        let marking = tokio::spawn({
            let store = store.clone();
            async move { store.mark_round_started(first).await.unwrap() }
        });
        let observer = store.client().await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let waiting: i64 = observer
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if waiting == 1 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the mark never waited for the tenant");
            tokio::task::yield_now().await;
        }
        let read: Option<DateTime<Utc>> = observer
            .query_one("SELECT round_started_at FROM runs WHERE id = $1", &[&first])
            .await
            .unwrap()
            .get(0);
        assert_eq!(read, None, "not read while the request decides");
        decision.commit().await.unwrap();
        marking.await.unwrap();
        let read: Option<DateTime<Utc>> = observer
            .query_one("SELECT round_started_at FROM runs WHERE id = $1", &[&first])
            .await
            .unwrap()
            .get(0);
        assert!(read.is_some());
    })
    .await;
}

#[tokio::test]
async fn a_follow_up_waits_for_the_run_in_progress_and_replaces_a_stale_one() {
    in_fresh_database(|url| async move {
        let store = store_with_tenants(&url, &["acme"]).await;
        let first = Uuid::new_v4();
        store.start_run(first, "acme", "manual", false).await.unwrap();
        store.mark_round_started(first).await.unwrap();
        let follow_up = Uuid::new_v4();
        assert_eq!(
            store.start_run(follow_up, "acme", "sweep", false).await.unwrap(),
            RunStart::Queued(follow_up)
        );
        // A start request that arrives while the first run is still in
        // progress leaves it queued, to be asked for again.
        execute(
            &store,
            "UPDATE runs SET start_requests = 4 WHERE id = $1",
            &[&follow_up],
        )
        .await;
        assert_eq!(
            store.start_follow_up(follow_up, "acme", 4).await.unwrap(),
            RunStart::Queued(follow_up)
        );
        assert_eq!(store.run(follow_up).await.unwrap().unwrap().state, "queued");

        // The first run stops making progress: it no longer holds the follow-up back.
        age_heartbeats(&store, 16).await;
        let due = store.due_follow_ups().await.unwrap();
        assert_eq!(due.iter().map(|d| d.run_id).collect::<Vec<_>>(), vec![follow_up]);
        assert_eq!(due[0].trigger, "sweep");
        let number = store.claim_follow_up(&due[0]).await.unwrap().expect("claimed");
        assert_eq!(number, 5);
        // Publishing failed: released, it is due again at once.
        store.release_follow_up(follow_up, number).await.unwrap();
        let due = store.due_follow_ups().await.unwrap();
        let number = store
            .claim_follow_up(&due[0])
            .await
            .unwrap()
            .expect("claimed again");
        // A start request lost in a crash: published again after a while,
        // longer the more were published (this is the sixth).
        execute(
            &store,
            "UPDATE runs SET start_requested_at = now() - interval '1 minute' WHERE id = $1",
            &[&follow_up],
        )
        .await;
        assert_eq!(store.due_follow_ups().await.unwrap(), vec![]);
        execute(
            &store,
            "UPDATE runs SET start_requested_at = now() - interval '17 minutes' WHERE id = $1",
            &[&follow_up],
        )
        .await;
        let due = store.due_follow_ups().await.unwrap();
        let republished = store
            .claim_follow_up(&due[0])
            .await
            .unwrap()
            .expect("claimed again");
        assert_ne!(republished, number);

        // The older request arrives first: it starts the run; the newer one then changes nothing.
        assert_eq!(
            store.start_follow_up(follow_up, "acme", number).await.unwrap(),
            RunStart::Started
        );
        assert_eq!(
            store
                .start_follow_up(follow_up, "acme", republished)
                .await
                .unwrap(),
            RunStart::AlreadyFetched
        );
        let stale = store.run(first).await.unwrap().unwrap();
        assert_eq!(stale.error_code.as_deref(), Some("run.stale"));
        assert!(stale.error.unwrap().contains(&follow_up.to_string()));
        // A request now joins the follow-up, which has not read its round yet.
        let joined = Uuid::new_v4();
        assert_eq!(
            store.start_run(joined, "acme", "manual", false).await.unwrap(),
            RunStart::Coalesced(follow_up)
        );
        assert!(
            store.mark_round_started(follow_up).await.unwrap(),
            "no delta link yet: the round reads everything"
        );
        assert!(store.run(follow_up).await.unwrap().unwrap().full_round);
    })
    .await;
}

#[tokio::test]
async fn a_listener_is_told_of_each_run_that_ends_whoever_ends_it() {
    in_fresh_database(|url| async move {
        let store = store_with_tenants(&url, &["acme", "globex"]).await;
        let mut ends = store.run_ends().await.expect("listening");
        let [acme, globex] = [Uuid::new_v4(), Uuid::new_v4()];
        store.start_run(acme, "acme", "manual", false).await.unwrap();
        store.start_run(globex, "globex", "manual", false).await.unwrap();
        // Progress is not an end.
        store.set_run_state(globex, RunState::Applying).await.unwrap();
        // However a run ends, the same column says so.
        execute(
            &store,
            "UPDATE runs SET state = 'succeeded', finished_at = now() WHERE id = $1",
            &[&globex],
        )
        .await;
        store.fail_run(acme, "test.refused", "no").await.unwrap();
        store.fail_run(acme, "test.refused", "again").await.unwrap();
        // Notifications arrive in commit order: this one marks the end of the test.
        let last = Uuid::new_v4();
        store.start_run(last, "globex", "manual", false).await.unwrap();
        store.fail_run(last, "test.refused", "no").await.unwrap();
        let mut told = Vec::new();
        for _ in 0..3 {
            let next = tokio::time::timeout(std::time::Duration::from_secs(30), ends.next());
            match next.await.expect("told within the deadline") {
                Some(RunEnd::Ended(tenant)) => told.push(tenant),
                other => panic!("expected a run end, heard {other:?}"),
            }
        }
        assert_eq!(told, ["globex", "acme", "globex"], "each ended run told once");
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
