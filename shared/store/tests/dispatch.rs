//! Windowed dispatch and the applier's per-run PBX facts, against a real
//! PostgreSQL (postgres@127.0.0.1:5432, trust auth), each test in a database
//! of its own.

use std::future::Future;
use std::time::Instant;

use serde_json::json;
use usersync_contract::Change;
use usersync_core::Action;
use usersync_store::testing::{in_fresh_database, store_with_minimal_tenant};
use usersync_store::{ChangeEnd, ChangeRecord, PbxCheck, PlannedUser, RoundEnd, Store, UserToLock};
use uuid::Uuid;

/// Runs `test` with a store on a new database with tenant `acme` and one
/// started run; the database is dropped afterwards, also when the test fails.
/// A statement still running after a minute fails the test instead of
/// stalling it: every statement here takes milliseconds, one that grows with
/// the square of the run (as the numbering once did: minutes for 20,000
/// changes) does not.
async fn with_run<F, Fut>(test: F)
where
    F: FnOnce(Store, Uuid) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    in_fresh_database(|url| async move {
        let setup = Store::connect(&url, 1).await.expect("creating the database");
        setup
            .client()
            .await
            .expect("a connection")
            .batch_execute(
                "DO $$ BEGIN
                   EXECUTE format('ALTER DATABASE %I SET statement_timeout = %L', current_database(), '60s');
                 END $$",
            )
            .await
            .expect("limiting statements to a minute");
        drop(setup);
        let store = store_with_minimal_tenant(&url, "acme", 4).await;
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
    let object_id = format!("u{index:06}");
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
        settled_version: Some(1),
        claims: Vec::new(),
    }
}

/// Ends the run's planning, as the differ does after storing the plan.
async fn complete_planning(store: &Store, run: Uuid) {
    let end = RoundEnd {
        delta_link: "https://graph/users/delta?$deltatoken=1",
        full_round: false,
        paused: false,
        basis: "basis",
        planned_everyone: true,
        planned_at: chrono::Utc::now(),
    };
    store
        .complete_planning(run, "acme", &end)
        .await
        .expect("completing the planning");
}

#[tokio::test]
async fn a_change_counts_its_own_failed_tries_until_its_outcome_is_recorded() {
    with_run(|store, run| async move {
        let planned: Vec<_> = (0..2).map(planned_delete).collect();
        store
            .save_plan(run, "acme", &planned, 0)
            .await
            .expect("saving the plan");
        let mut client = store.client().await.expect("a connection");
        let mut tried = Vec::new();
        for error in ["PBX answered 503 unavailable", "PBX answered 429 rate_limited"] {
            let tx = client.transaction().await.expect("a transaction");
            let tries = Store::record_failed_tries(&tx, run, &[("u000000", error.to_owned())])
                .await
                .expect("recording a try")
                .remove("u000000")
                .expect("the change is pending");
            tx.commit().await.expect("commit");
            tried.push(tries);
        }
        assert_eq!((tried[0].tries, tried[1].tries), (1, 2));
        assert_eq!(tried[0].failing_for, std::time::Duration::ZERO, "from the first try on");
        assert!(tried[1].failing_for > tried[0].failing_for);
        let row = client
            .query_one(
                "SELECT outcome, detail, tries FROM run_changes WHERE run_id = $1 AND object_id = 'u000000'",
                &[&run],
            )
            .await
            .expect("the change");
        assert_eq!(row.get::<_, String>(0), "pending");
        assert_eq!(row.get::<_, String>(1), "PBX answered 429 rate_limited", "its latest error");
        let neighbour = client
            .query_one(
                "SELECT tries, first_failed_at IS NULL FROM run_changes WHERE run_id = $1 AND object_id = 'u000001'",
                &[&run],
            )
            .await
            .expect("the other change");
        assert_eq!((neighbour.get::<_, i32>(0), neighbour.get::<_, bool>(1)), (0, true));

        // Its outcome clears the latest error; a done change takes no more tries.
        let tx = client.transaction().await.expect("a transaction");
        let deleted = ChangeEnd {
            object_id: "u000000",
            desired_version: 1,
            record: ChangeRecord::Deleted,
        };
        Store::record_changes(&tx, run, "acme", &[deleted], &[])
            .await
            .expect("recording the outcome");
        assert!(
            Store::record_failed_tries(&tx, run, &[("u000000", "late".to_owned())])
                .await
                .expect("recording a try")
                .is_empty()
        );
        tx.commit().await.expect("commit");
        let row = client
            .query_one(
                "SELECT outcome, detail IS NULL, tries FROM run_changes WHERE run_id = $1 AND object_id = 'u000000'",
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
async fn batches_are_numbered_as_pages_are_stored_and_hand_out_only_pending_changes() {
    with_run(|store, run| async move {
        let planned: Vec<_> = (0..250).map(planned_delete).collect();
        // Pages that do not end on a batch boundary.
        let mut numbered = 0;
        for page in planned.chunks(130) {
            numbered += store
                .save_plan(run, "acme", page, numbered)
                .await
                .expect("saving a page");
        }
        assert_eq!(numbered, 250);
        complete_planning(&store, run).await;
        assert_eq!(store.batch_count(run).await.expect("counting"), 3);
        let first = store.pending_batch(run, 0).await.expect("batch 0");
        let ids: Vec<&str> = first.iter().map(|c| c.object_id.as_str()).collect();
        assert_eq!(ids.len(), 100);
        assert_eq!(
            (ids[0], ids[99]),
            ("u000000", "u000099"),
            "batches follow the object ids"
        );
        assert_eq!(store.pending_batch(run, 1).await.expect("batch 1").len(), 100);
        assert_eq!(store.pending_batch(run, 2).await.expect("batch 2").len(), 50);
        assert!(store.pending_batch(run, 3).await.expect("batch 3").is_empty());

        let client = store.client().await.expect("a connection");
        client
            .execute(
                "UPDATE run_changes SET outcome = 'deleted' WHERE run_id = $1 AND object_id = 'u000000'",
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

/// Checks every change of the run is in batch `position / 100` of its place
/// in object-id order, in one statement; returns the offenders.
async fn misnumbered(store: &Store, run: Uuid) -> i64 {
    let client = store.client().await.expect("a connection");
    client
        .query_one(
            "SELECT count(*) FROM (SELECT batch, row_number() OVER (ORDER BY object_id) - 1 AS position
                                   FROM run_changes WHERE run_id = $1) c
             WHERE c.batch IS DISTINCT FROM c.position / 100",
            &[&run],
        )
        .await
        .expect("checking the numbering")
        .get(0)
}

/// Whether PostgreSQL has statistics of the table (it has none until ANALYZE).
async fn analysed(store: &Store, table: &str) -> bool {
    let client = store.client().await.expect("a connection");
    client
        .query_one(
            "SELECT last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL
             FROM pg_stat_user_tables WHERE relname = $1",
            &[&table],
        )
        .await
        .expect("reading the table's statistics")
        .get(0)
}

/// First syncs of 20,000 and 100,000 users on tables the planner knows
/// nothing about (never analysed, as on a fresh database with autovacuum off):
/// storing and numbering a run's changes has to be linear whatever plan
/// PostgreSQL picks. Prints the times; asserts the numbering.
#[tokio::test]
async fn changes_are_numbered_in_object_id_order_without_statistics() {
    with_run(|store, first| async move {
        let client = store.client().await.expect("a connection");
        client
            .batch_execute("ALTER TABLE run_changes SET (autovacuum_enabled = false)")
            .await
            .expect("keeping autovacuum off the table");
        number_and_check(&store, first, 20_000).await;
        store
            .fail_run(first, "test", "next run")
            .await
            .expect("ending the run");
        let second = Uuid::new_v4();
        store
            .start_run(second, "acme", "manual", false)
            .await
            .expect("starting the second run");
        number_and_check(&store, second, 100_000).await;
        assert!(
            !analysed(&store, "run_changes").await,
            "the table was never analysed"
        );
    })
    .await;
}

/// Stores `changes` planned deletions in pages of 500, as the differ does,
/// and checks the batches; then stores every page again (a redelivered page)
/// and plans the run again from the start (a redelivered end of round), and
/// checks nothing moved.
async fn number_and_check(store: &Store, run: Uuid, changes: usize) {
    let pages: Vec<Vec<PlannedUser>> = (0..changes)
        .collect::<Vec<_>>()
        .chunks(500)
        .map(|page| page.iter().copied().map(planned_delete).collect())
        .collect();
    let started = Instant::now();
    let numbered = save_pages(store, run, &pages).await;
    println!(
        "{changes} changes stored and numbered in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(numbered as usize, changes);
    check_batches(store, run, changes).await;

    save_pages(store, run, &pages).await;
    check_batches(store, run, changes).await;
    store.restart_plan(run).await.expect("planning again");
    save_pages(store, run, &pages).await;
    check_batches(store, run, changes).await;

    complete_planning(store, run).await;
    let batches = store.batch_count(run).await.expect("counting the batches");
    assert_eq!(batches as usize, changes / 100);
    // Each change in exactly one batch, handed out in object-id order.
    let started = Instant::now();
    let mut handed = Vec::with_capacity(changes);
    for batch in 0..batches {
        let batch_changes = store.pending_batch(run, batch).await.expect("a batch");
        assert_eq!(batch_changes.len(), 100, "batch {batch} is full");
        handed.extend(batch_changes.into_iter().map(|c| c.object_id));
    }
    println!(
        "{batches} batches read in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let expected: Vec<String> = (0..changes).map(|i| format!("u{i:06}")).collect();
    assert!(handed == expected, "every change once, in object-id order");
}

async fn save_pages(store: &Store, run: Uuid, pages: &[Vec<PlannedUser>]) -> u64 {
    let mut numbered = 0;
    for page in pages {
        numbered += store
            .save_plan(run, "acme", page, numbered)
            .await
            .expect("saving a page");
    }
    numbered
}

/// Every change in batch `position / 100` of its place in object-id order,
/// and each batch's counters holding exactly its changes.
async fn check_batches(store: &Store, run: Uuid, changes: usize) {
    assert_eq!(
        misnumbered(store, run).await,
        0,
        "batches of 100 in object-id order"
    );
    let client = store.client().await.expect("a connection");
    let row = client
        .query_one(
            "SELECT count(*), coalesce(sum(changes), 0)::int8,
                    count(*) FILTER (WHERE changes <> 100 OR pending <> changes)
             FROM run_batches WHERE run_id = $1",
            &[&run],
        )
        .await
        .expect("reading the batch counters");
    let (batches, counted, odd): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (batches, counted, odd),
        ((changes / 100) as i64, changes as i64, 0)
    );
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

/// A run of 20,000 changes written batch by batch as the applier does: each
/// batch's users locked in one statement and its outcomes recorded in one, on
/// tables never analysed. Each step must cost the same however far the run
/// is (the printed time), the counts land on the batches' rows, and the run
/// ends with its last batch, once.
#[tokio::test]
async fn a_batch_is_locked_and_recorded_in_one_statement_each_and_the_last_ends_the_run() {
    with_run(|store, run| async move {
        const CHANGES: usize = 20_000;
        let planned: Vec<_> = (0..CHANGES).map(planned_delete).collect();
        let mut numbered = 0;
        for page in planned.chunks(500) {
            numbered += store.save_plan(run, "acme", page, numbered).await.expect("saving a page");
        }
        complete_planning(&store, run).await;
        let batches = store.batch_count(run).await.expect("counting");
        store
            .save_unowned(run, &[("u000001".into(), json!({"id": "p-1"}))])
            .await
            .expect("an unowned PBX user");
        let mut client = store.client().await.expect("a connection");
        let started = Instant::now();
        let mut finished = Vec::new();
        // The last batch first: the run ends with whichever batch is done last.
        for batch in (0..batches).rev() {
            let changes = store.pending_batch(run, batch).await.expect("a batch");
            let tx = Store::begin_step(&mut client).await.expect("a transaction");
            let users: Vec<UserToLock> = changes
                .iter()
                .map(|c| UserToLock {
                    object_id: &c.object_id,
                    match_value: Some(c.object_id.clone()),
                })
                .collect();
            let locked = Store::lock_users(&tx, run, "acme", &users).await.expect("locking");
            assert_eq!(locked.len(), 100, "batch {batch}");
            assert!(locked.values().all(|user| user.outcome == "pending"));
            if batch == 0 {
                let listed: Vec<&str> = locked
                    .iter()
                    .filter(|(_, user)| user.unowned)
                    .map(|(id, _)| id.as_str())
                    .collect();
                assert_eq!(listed, ["u000001"], "the listed unowned user is named");
            }
            let ends: Vec<ChangeEnd> = changes
                .iter()
                .enumerate()
                .map(|(index, c)| ChangeEnd {
                    object_id: &c.object_id,
                    desired_version: c.desired_version,
                    record: if index == 0 {
                        ChangeRecord::Failed {
                            reason: "refused".into(),
                        }
                    } else {
                        ChangeRecord::Deleted
                    },
                })
                .collect();
            Store::record_changes(&tx, run, "acme", &ends, &[])
                .await
                .expect("recording");
            // Recorded again (a redelivered batch): nothing is counted twice.
            Store::record_changes(&tx, run, "acme", &ends, &[])
                .await
                .expect("recording again");
            tx.commit().await.expect("committing");
            // After each step's commit, as the applier does; twice, as a
            // redelivered batch does: the run ends once, with its last batch.
            for _ in 0..2 {
                let tx = Store::begin_step(&mut client).await.expect("a transaction");
                let event = Store::finish_if_done(&tx, run).await.expect("ending the run");
                assert!(event.is_none() || batch == 0, "ended before its last batch");
                finished.extend(event);
                tx.commit().await.expect("committing");
            }
        }
        println!(
            "{batches} batches locked and recorded in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        let [usersync_contract::Event::RunFinished { outcome, counts, .. }] = finished.as_slice() else {
            panic!("one finish event: {finished:?}");
        };
        assert_eq!(outcome, "partial");
        assert_eq!((counts.deleted, counts.failed), (19_800, 200));
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE applied_version = 1), count(*) FILTER (WHERE applied_version = 0)
                 FROM sync_users WHERE tenant_id = 'acme'",
                &[],
            )
            .await
            .expect("the users");
        assert_eq!(
            (row.get::<_, i64>(0), row.get::<_, i64>(1)),
            (19_800, 200),
            "a deletion is applied, a failure is not"
        );
        assert!(!analysed(&store, "sync_users").await && !analysed(&store, "run_changes").await);
    })
    .await;
}

/// Records one batch's changes (all deleted) in `tx`, as a step does.
async fn record_batch(tx: &deadpool_postgres::Transaction<'_>, run: Uuid, changes: &[Change]) {
    let ends: Vec<ChangeEnd> = changes
        .iter()
        .map(|c| ChangeEnd {
            object_id: &c.object_id,
            desired_version: c.desired_version,
            record: ChangeRecord::Deleted,
        })
        .collect();
    Store::record_changes(tx, run, "acme", &ends, &[])
        .await
        .expect("recording");
}

#[tokio::test]
async fn of_two_steps_ending_a_runs_last_batches_at_once_exactly_one_ends_it_in_any_order() {
    for both_commit_first in [false, true] {
        let label = if both_commit_first {
            "both steps commit, then both look at once"
        } else {
            "one step commits and looks while the other has not committed"
        };
        with_run(move |store, run| async move {
            let users: Vec<PlannedUser> = (0..200).map(planned_delete).collect();
            store
                .save_plan(run, "acme", &users, 0)
                .await
                .expect("saving the plan");
            complete_planning(&store, run).await;
            assert_eq!(store.batch_count(run).await.expect("counting"), 2);
            let batch = [
                store.pending_batch(run, 0).await.expect("a batch"),
                store.pending_batch(run, 1).await.expect("a batch"),
            ];
            let mut ended = Vec::new();
            {
                let mut first = store.client().await.expect("a connection");
                let mut second = store.client().await.expect("a connection");
                let a = Store::begin_step(&mut first).await.expect("a transaction");
                let b = Store::begin_step(&mut second).await.expect("a transaction");
                record_batch(&a, run, &batch[0]).await;
                record_batch(&b, run, &batch[1]).await;
                a.commit().await.expect("committing");
                if both_commit_first {
                    b.commit().await.expect("committing");
                    // The first look holds the run's row; the second waits for
                    // it, then finds the run ended.
                    let mut looking = store.client().await.expect("a connection");
                    let look = Store::begin_step(&mut looking).await.expect("a transaction");
                    ended.extend(Store::finish_if_done(&look, run).await.expect("looking"));
                    let waiting = tokio::spawn({
                        let store = store.clone();
                        async move {
                            let mut client = store.client().await.expect("a connection");
                            let tx = Store::begin_step(&mut client).await.expect("a transaction");
                            let event = Store::finish_if_done(&tx, run).await.expect("looking");
                            tx.commit().await.expect("committing");
                            event
                        }
                    });
                    look.commit().await.expect("committing");
                    ended.extend(waiting.await.expect("the second look"));
                } else {
                    let mut looking = store.client().await.expect("a connection");
                    let look = Store::begin_step(&mut looking).await.expect("a transaction");
                    ended.extend(Store::finish_if_done(&look, run).await.expect("looking"));
                    assert!(ended.is_empty(), "{label}: the other batch is still open");
                    look.commit().await.expect("committing");
                    b.commit().await.expect("committing");
                    // The other step looks after its commit, as the applier does.
                    let look = Store::begin_step(&mut looking).await.expect("a transaction");
                    ended.extend(Store::finish_if_done(&look, run).await.expect("looking"));
                    look.commit().await.expect("committing");
                }
            }
            // A redelivered batch looks again: nothing more.
            let mut again = store.client().await.expect("a connection");
            let tx = Store::begin_step(&mut again).await.expect("a transaction");
            ended.extend(Store::finish_if_done(&tx, run).await.expect("looking again"));
            tx.commit().await.expect("committing");
            let [usersync_contract::Event::RunFinished { outcome, counts, .. }] = ended.as_slice() else {
                panic!("{label}: one finish event, got {ended:?}");
            };
            assert_eq!((outcome.as_str(), counts.deleted), ("succeeded", 200), "{label}");
            let state = store.run(run).await.expect("the run").expect("recorded").state;
            assert_eq!(state, "succeeded", "{label}");
        })
        .await;
    }
}
