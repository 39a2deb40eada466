//! Pages of two rounds of one tenant met in the unkind orders: an old round's
//! page after the new round's, the same page twice, a page waiting while the
//! next round begins, and pages with users in common recorded at once. Each
//! test in a database of its own, against a real PostgreSQL.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use usersync_store::testing::{in_fresh_database, store_with_minimal_tenant};
use usersync_store::{PageOutcome, Round, Store};
use uuid::Uuid;

async fn begun_round(store: &Store, run_id: Uuid) -> Round {
    let round = Round {
        run_id,
        round_id: Uuid::new_v4(),
    };
    assert!(store
        .begin_round("acme", round)
        .await
        .expect("beginning the round"));
    round
}

async fn new_run(store: &Store) -> Uuid {
    let run_id = Uuid::new_v4();
    store
        .start_run(run_id, "acme", "manual", true)
        .await
        .expect("starting a run");
    run_id
}

fn users(ids: std::ops::Range<usize>, title: &str) -> Vec<Value> {
    ids.map(|i| json!({"id": format!("u{i:04}"), "mail": format!("{i}@x"), "jobTitle": title}))
        .collect()
}

/// (object id, removed, seen in `round`, jobTitle) of every stored user.
async fn directory(store: &Store, round: Round) -> Vec<(String, bool, bool, Option<String>)> {
    let client = store.client().await.expect("a connection");
    client
        .query(
            "SELECT object_id, removed, seen_round IS NOT DISTINCT FROM $1, source->>'jobTitle'
             FROM directory_users WHERE tenant_id = 'acme' ORDER BY object_id",
            &[&round.round_id],
        )
        .await
        .expect("reading the directory")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect()
}

async fn field_counts(store: &Store) -> Vec<(String, i64)> {
    store
        .fields("acme")
        .await
        .expect("fields")
        .into_iter()
        .map(|f| (f.field, f.users))
        .collect()
}

/// Waits until `waiters` sessions of this database wait on a lock.
async fn until_waiting_on_locks(store: &Store, waiters: i64) {
    let client = store.client().await.expect("a connection");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .expect("reading the sessions");
        if row.get::<_, i64>(0) >= waiters {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{waiters} sessions never waited on a lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The fetcher killed mid-round: its round's last page is retried after the
/// new (full) round recorded the same users. It must not move their
/// `seen_round` back, or the full round's end would remove them.
#[tokio::test]
async fn an_old_rounds_page_retried_after_the_new_round_changes_nothing() {
    in_fresh_database(|url| async move {
        let store = store_with_minimal_tenant(&url, "acme", 4).await;
        let run_id = new_run(&store).await;
        let killed = begun_round(&store, run_id).await;
        let outcome = store
            .record_users_page(killed, "acme", 0, &users(0..50, "old"))
            .await
            .expect("recording");
        assert_eq!(outcome, PageOutcome::Recorded);

        let full = begun_round(&store, run_id).await;
        for (page, range) in [(0, 0..50), (1, 50..100)] {
            let outcome = store
                .record_users_page(full, "acme", page, &users(range, "new"))
                .await
                .expect("recording");
            assert_eq!(outcome, PageOutcome::Recorded);
        }
        let late = store
            .record_users_page(killed, "acme", 1, &users(50..100, "old"))
            .await
            .expect("recording the late page");
        assert_eq!(late, PageOutcome::StaleRound);

        let stored = directory(&store, full).await;
        assert_eq!(stored.len(), 100);
        assert!(
            stored
                .iter()
                .all(|(_, removed, seen, title)| !removed && *seen && title.as_deref() == Some("new")),
            "{stored:?}"
        );
        assert_eq!(
            store.mark_unseen_removed("acme", full, 2).await.expect("marking"),
            Some(0)
        );
        assert!(directory(&store, full)
            .await
            .iter()
            .all(|(_, removed, ..)| !removed));
        assert_eq!(
            field_counts(&store).await,
            [("jobTitle".to_owned(), 100), ("mail".to_owned(), 100)]
        );
        // The superseded round's end acts on nothing.
        assert_eq!(
            store
                .mark_unseen_removed("acme", killed, 1)
                .await
                .expect("marking"),
            None
        );
        assert!(!store
            .settle_membership("acme", killed, None)
            .await
            .expect("settling"));
        assert!(!store.begin_round("acme", killed).await.expect("beginning again"));
        assert!(directory(&store, full)
            .await
            .iter()
            .all(|(_, removed, ..)| !removed));
    })
    .await;
}

/// A members page of a superseded round is not stored for it either.
#[tokio::test]
async fn an_old_rounds_members_page_changes_nothing() {
    in_fresh_database(|url| async move {
        let store = store_with_minimal_tenant(&url, "acme", 4).await;
        let run_id = new_run(&store).await;
        let killed = begun_round(&store, run_id).await;
        let next = begun_round(&store, run_id).await;
        let outcome = store
            .record_members_page(killed, "acme", 0, &["u0001".to_owned()])
            .await
            .expect("recording");
        assert_eq!(outcome, PageOutcome::StaleRound);
        assert_eq!(store.pages_recorded(killed).await.expect("pages"), 0);
        let client = store.client().await.expect("a connection");
        let members: i64 = client
            .query_one("SELECT count(*) FROM round_members", &[])
            .await
            .expect("members")
            .get(0);
        assert_eq!(members, 0);
        let outcome = store
            .record_members_page(next, "acme", 0, &["u0001".to_owned()])
            .await
            .expect("recording");
        assert_eq!(outcome, PageOutcome::Recorded);
    })
    .await;
}

/// A redelivered page counts its users' fields once; a full round's end
/// waits for all its pages.
#[tokio::test]
async fn the_same_page_twice_counts_once_and_an_incomplete_round_removes_nobody() {
    in_fresh_database(|url| async move {
        let store = store_with_minimal_tenant(&url, "acme", 4).await;
        let run_id = new_run(&store).await;
        let first = begun_round(&store, run_id).await;
        store
            .record_users_page(first, "acme", 0, &users(0..30, "a"))
            .await
            .expect("recording");
        let full = begun_round(&store, run_id).await;
        let page = users(0..10, "b");
        assert_eq!(
            store
                .record_users_page(full, "acme", 0, &page)
                .await
                .expect("recording"),
            PageOutcome::Recorded
        );
        assert_eq!(
            store
                .record_users_page(full, "acme", 0, &page)
                .await
                .expect("recording"),
            PageOutcome::AlreadyRecorded
        );
        assert_eq!(
            field_counts(&store).await,
            [("jobTitle".to_owned(), 30), ("mail".to_owned(), 30)]
        );
        // Two pages announced, one recorded: nobody is removed yet.
        assert_eq!(
            store.mark_unseen_removed("acme", full, 2).await.expect("marking"),
            None
        );
        assert!(directory(&store, full)
            .await
            .iter()
            .all(|(_, removed, ..)| !removed));
        assert_eq!(
            store.mark_unseen_removed("acme", full, 1).await.expect("marking"),
            Some(20)
        );
        assert_eq!(
            field_counts(&store).await,
            [("jobTitle".to_owned(), 10), ("mail".to_owned(), 10)]
        );
    })
    .await;
}

/// The unkind moment: an old round's page waits for the tenant's directory
/// while the next round begins. Once it gets its turn it sees it is stale.
#[tokio::test]
async fn a_page_waiting_while_the_next_round_begins_is_stale_when_its_turn_comes() {
    in_fresh_database(|url| async move {
        let store = store_with_minimal_tenant(&url, "acme", 6).await;
        let run_id = new_run(&store).await;
        let killed = begun_round(&store, run_id).await;
        store
            .record_users_page(killed, "acme", 0, &users(0..20, "old"))
            .await
            .expect("recording");
        let next = Round {
            run_id,
            round_id: Uuid::new_v4(),
        };

        // This session begins the next round, holding the tenant's round row
        // while the late page queues behind it.
        let mut fetcher = store.client().await.expect("a connection");
        let fetcher = fetcher.transaction().await.expect("a transaction");
        fetcher
            .execute(
                "SELECT 1 FROM tenant_rounds WHERE tenant_id = 'acme' FOR UPDATE",
                &[],
            )
            .await
            .expect("locking the round row");
        let late = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .record_users_page(killed, "acme", 1, &users(0..20, "late"))
                    .await
            })
        };
        until_waiting_on_locks(&store, 1).await;
        fetcher
            .execute(
                "UPDATE tenant_rounds SET round_id = $1 WHERE tenant_id = 'acme'",
                &[&next.round_id],
            )
            .await
            .expect("switching rounds");
        fetcher
            .execute(
                "INSERT INTO directory_rounds (round_id, tenant_id, run_id) VALUES ($1, 'acme', $2)",
                &[&next.round_id, &run_id],
            )
            .await
            .expect("remembering the round");
        fetcher.commit().await.expect("committing");

        let outcome = late.await.expect("the late page's task").expect("recording");
        assert_eq!(outcome, PageOutcome::StaleRound);
        let stored = directory(&store, killed).await;
        assert!(
            stored
                .iter()
                .all(|(_, _, seen, title)| *seen && title.as_deref() == Some("old")),
            "{stored:?}"
        );
        assert!(store.is_current_round("acme", next).await.expect("current round"));
    })
    .await;
}

/// Two consumers record pages with users in common (new and existing ones,
/// fields new to both) at the same moment: both queue on the tenant's
/// directory, neither deadlocks, and every user counts once.
#[tokio::test]
async fn overlapping_pages_released_together_take_turns_and_count_once() {
    in_fresh_database(|url| async move {
        let store = store_with_minimal_tenant(&url, "acme", 6).await;
        let run_id = new_run(&store).await;
        let round = begun_round(&store, run_id).await;
        store
            .record_users_page(round, "acme", 0, &users(0..100, "first"))
            .await
            .expect("recording");

        let mut gate = store.client().await.expect("a connection");
        let gate = gate.transaction().await.expect("a transaction");
        gate.execute(
            "SELECT 1 FROM tenant_rounds WHERE tenant_id = 'acme' FOR UPDATE",
            &[],
        )
        .await
        .expect("closing the gate");
        // u0050..u0149 and u0149 down to u0050 with a field each other lacks:
        // the same rows and fields, wanted in opposite orders.
        let forwards: Vec<Value> = (50..150)
            .map(|i| json!({"id": format!("u{i:04}"), "mail": format!("{i}@x"), "department": "D"}))
            .collect();
        let backwards: Vec<Value> = (50..150)
            .rev()
            .map(|i| json!({"id": format!("u{i:04}"), "mail": format!("{i}@x"), "costCenter": "C"}))
            .collect();
        let mut recording = Vec::new();
        for (page, users) in [(1u32, forwards), (2, backwards)] {
            let store = store.clone();
            recording.push(tokio::spawn(async move {
                store.record_users_page(round, "acme", page, &users).await
            }));
        }
        until_waiting_on_locks(&store, 2).await;
        gate.commit().await.expect("opening the gate");
        for task in recording {
            let outcome = task.await.expect("a recording task").expect("recording");
            assert_eq!(outcome, PageOutcome::Recorded);
        }
        assert_eq!(
            field_counts(&store).await,
            [
                ("costCenter".to_owned(), 100),
                ("department".to_owned(), 100),
                ("jobTitle".to_owned(), 100),
                ("mail".to_owned(), 150),
            ]
        );
    })
    .await;
}

/// A fetcher starting a round locks the tenant's row and then the run's row
/// (`mark_round_started`). A page recorded at that moment must wait before it
/// holds the run's row (its claim's heartbeat), not while holding it: the
/// other order deadlocked (`adding the page's new users`).
#[tokio::test]
async fn a_page_recorded_while_a_round_starts_waits_before_it_holds_the_runs_row() {
    in_fresh_database(|url| async move {
        let store = store_with_minimal_tenant(&url, "acme", 6).await;
        let run_id = new_run(&store).await;
        let round = begun_round(&store, run_id).await;

        let mut fetcher = store.client().await.expect("a connection");
        let fetcher = fetcher.transaction().await.expect("a transaction");
        fetcher
            .execute("SELECT 1 FROM tenants WHERE id = 'acme' FOR UPDATE", &[])
            .await
            .expect("locking the tenant's row");
        let page = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .record_users_page(round, "acme", 0, &users(0..20, "t"))
                    .await
            })
        };
        until_waiting_on_locks(&store, 1).await;
        // The run's row is free: the page waits on the tenant's row alone.
        fetcher
            .execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE NOWAIT", &[&run_id])
            .await
            .expect("the run's row is not held by the waiting page");
        fetcher
            .execute(
                "UPDATE runs SET round_started_at = now() WHERE id = $1",
                &[&run_id],
            )
            .await
            .expect("recording the round's start");
        fetcher.commit().await.expect("committing");
        let outcome = page.await.expect("the page's task").expect("recording");
        assert_eq!(outcome, PageOutcome::Recorded);
        assert_eq!(directory(&store, round).await.len(), 20);
    })
    .await;
}

/// A run resumed in a new round plans from that round: the dry run takes its
/// scope from it, not from the superseded round with more pages.
#[tokio::test]
async fn the_last_plan_names_the_round_it_was_made_from() {
    in_fresh_database(|url| async move {
        let store = store_with_minimal_tenant(&url, "acme", 4).await;
        assert_eq!(store.latest_round("acme").await.expect("reading"), None);
        let run_id = new_run(&store).await;
        let killed = begun_round(&store, run_id).await;
        for (page, range) in [(0, 0..10), (1, 10..20), (2, 20..30)] {
            store
                .record_users_page(killed, "acme", page, &users(range, "old"))
                .await
                .expect("recording");
        }
        let resumed = begun_round(&store, run_id).await;
        store
            .record_users_page(resumed, "acme", 0, &users(0..30, "new"))
            .await
            .expect("recording");
        let end = usersync_store::RoundEnd {
            delta_link: "https://graph/users/delta?$deltatoken=1",
            full_round: true,
            paused: false,
            basis: "basis",
            planned_everyone: true,
            planned_at: chrono::Utc::now(),
        };
        store
            .complete_planning(run_id, "acme", &end)
            .await
            .expect("completing the planning");
        assert_eq!(store.latest_round("acme").await.expect("reading"), Some(resumed));
    })
    .await;
}
