//! The planner against a real PostgreSQL: tenant-wide conflicts across pages,
//! the mass-deletion guard and its approval. Every test has its own database.

use chrono::Utc;
use serde_json::{json, Value};
use tokio_postgres::types::Json;
use usersync_core::{parse_tenant_file, Action, SyncedFields, TenantConfig};
use usersync_planner::{decision_label, Planner, Survey, PLAN_PAGE};
use usersync_store::testing::{in_fresh_database, TEST_KEY};
use usersync_store::{Round, RoundEnd, RunStart, SecretKey, Store};
use uuid::Uuid;

fn tenant() -> TenantConfig {
    let document = json!({
        "id": "acme", "name": "Acme AB", "type": "ad_sync", "mode": "user_sync",
        "delete_after_days": 0,
        "provider_settings": {"tenant_id": "t", "client_id": "c", "client_secret": "s", "user_filter": {"memberOf": [""]}},
        "pbx_company_id": "acme",
        "field_mapping": {"alias": "mailNickname", "first_name": "givenName", "surname": "surname", "pstn_fixed": "businessPhones[0]"}
    });
    parse_tenant_file(&document.to_string()).expect("a valid tenant file")
}

fn user(index: usize, alias: &str) -> Value {
    json!({
        "id": format!("u{index:04}"), "mailNickname": alias, "givenName": "Anna", "surname": "Berg",
        "businessPhones": [format!("08-{:07}", 1_000_000 + index)], "accountEnabled": true
    })
}

/// A store with the tenant, a run and one round holding `users`.
async fn recorded(url: &str, users: &[Value]) -> (Store, Round) {
    let store = Store::connect(url, 4).await.expect("connecting");
    let key = SecretKey::from_base64(TEST_KEY).expect("key");
    store.upsert_tenant(&tenant(), &key).await.expect("tenant");
    let round = Round {
        run_id: Uuid::new_v4(),
        round_id: Uuid::new_v4(),
    };
    let started = store
        .start_run(round.run_id, "acme", "manual", true)
        .await
        .expect("run");
    assert_eq!(started, RunStart::Started);
    store
        .record_users_page(round, "acme", 0, users)
        .await
        .expect("page");
    (store, round)
}

/// Marks users as in the PBX with the fields they map to.
async fn mark_synced(store: &Store, ids: &[String], fields: &SyncedFields) {
    let client = store.client().await.expect("connection");
    client
        .execute(
            "INSERT INTO sync_users (tenant_id, object_id, state, desired, desired_version, pbx_id, applied, applied_version)
             SELECT 'acme', id, 'active', $2, 1, 'pbx-' || id, $2, 1 FROM unnest($1::text[]) AS id",
            &[&ids, &Json(fields)],
        )
        .await
        .expect("marking users synced");
}

fn planner<'a>(store: &'a Store, tenant: &'a TenantConfig, round: Round) -> Planner<'a> {
    Planner {
        store,
        tenant,
        round,
        scoped: false,
        now: Utc::now(),
    }
}

#[tokio::test]
async fn a_conflict_across_pages_is_found_and_the_lowest_object_id_wins() {
    in_fresh_database(|url| async move {
        let count = usize::try_from(PLAN_PAGE).unwrap() + 20;
        let users: Vec<Value> = (0..count)
            .map(|i| match i {
                3 | 510 => user(i, "Kim.Twin"),
                _ => user(i, &format!("user{i}")),
            })
            .collect();
        let (store, round) = recorded(&url, &users).await;
        let tenant = tenant();
        let planner = planner(&store, &tenant, round);
        let survey = planner.survey().await.expect("survey");
        assert_eq!(survey.conflicts.len(), 1, "{:?}", survey.conflicts);
        assert_eq!(survey.conflicts[0].winner, "u0003");
        assert_eq!(survey.conflicts[0].losers, ["u0510"]);

        let mut labels = std::collections::BTreeMap::new();
        let mut after = String::new();
        loop {
            let page = planner.plan_page(&survey, None, &after).await.expect("page");
            let Some(last) = page.last() else { break };
            after = last.row.object_id.clone();
            for planned in page {
                if planned.row.object_id == "u0510" {
                    assert_eq!(planned.user.state, "skipped");
                    assert!(planned.user.change.is_none());
                    assert!(
                        planned.user.problems[0].message.contains("u0003"),
                        "{:?}",
                        planned.user.problems
                    );
                }
                labels.insert(planned.row.object_id, decision_label(&planned.user));
            }
        }
        assert_eq!(labels.len(), count);
        assert_eq!(labels["u0003"], "create");
        assert_eq!(labels["u0510"], "skip");
        assert_eq!(labels.values().filter(|l| **l == "create").count(), count - 1);
    })
    .await;
}

/// Users over four plan pages and a bit, some skipped here and there (no
/// fixed number: no change), so the pages' change counts differ and a page
/// numbered from the wrong offset shows. Returns them and how many are skipped.
fn scattered_skips() -> (Vec<Value>, usize) {
    let count = 4 * usize::try_from(PLAN_PAGE).unwrap() + 37;
    let skips = |i: usize| i % 7 == 3 || (600..640).contains(&i);
    let users = (0..count)
        .map(|i| {
            let mut user = user(i, &format!("user{i}"));
            if skips(i) {
                user["businessPhones"] = json!([]);
            }
            user
        })
        .collect();
    (users, (0..count).filter(|i| skips(*i)).count())
}

/// The stored plan is the one a page-at-a-time save would make: every
/// change in its batch by object-id order, each batch's counts, the run's skips.
async fn assert_numbered(store: &Store, run_id: Uuid, count: usize, skipped: usize) {
    let client = store.client().await.expect("connection");
    let changes = client
        .query(
            "SELECT object_id, batch FROM run_changes WHERE run_id = $1 ORDER BY object_id",
            &[&run_id],
        )
        .await
        .expect("changes");
    assert_eq!(changes.len(), count - skipped);
    let batch_size = usize::try_from(usersync_store::BATCH_SIZE).unwrap();
    for (position, row) in changes.iter().enumerate() {
        let batch: i32 = row.get("batch");
        assert_eq!(
            usize::try_from(batch).unwrap(),
            position / batch_size,
            "change {position} ({}) is in the wrong batch",
            row.get::<_, String>("object_id")
        );
    }
    let batches = client
        .query(
            "SELECT b.batch, b.changes, b.pending, (SELECT count(*) FROM run_changes c
                                                    WHERE c.run_id = b.run_id AND c.batch = b.batch) AS held
             FROM run_batches b WHERE run_id = $1 ORDER BY batch",
            &[&run_id],
        )
        .await
        .expect("batches");
    assert_eq!(batches.len(), (count - skipped).div_ceil(batch_size));
    for row in &batches {
        let held: i64 = row.get("held");
        let batch: i32 = row.get("batch");
        assert_eq!(i64::from(row.get::<_, i32>("changes")), held, "batch {batch}");
        assert_eq!(i64::from(row.get::<_, i32>("pending")), held, "batch {batch}");
    }
    let run_skipped: i32 = client
        .query_one("SELECT skipped FROM runs WHERE id = $1", &[&run_id])
        .await
        .expect("run")
        .get(0);
    assert_eq!(usize::try_from(run_skipped).unwrap(), skipped);
}

/// Pages are stored while the next ones are decided, several at once: the
/// stored plan must be the one a page-at-a-time save would make.
#[tokio::test]
async fn a_plan_stored_pages_at_once_numbers_every_change_in_object_id_order() {
    in_fresh_database(|url| async move {
        let (users, skipped) = scattered_skips();
        let (store, round) = recorded(&url, &users).await;
        let tenant = tenant();
        let planner = planner(&store, &tenant, round);
        let survey = planner.survey().await.expect("survey");
        let stored = planner
            .store_plan(round.run_id, &survey, None, |_| {})
            .await
            .expect("storing the plan");
        assert_eq!(stored.users, users.len() as u64);
        assert_eq!(stored.changes, (users.len() - skipped) as u64);
        assert_numbered(&store, round.run_id, users.len(), skipped).await;
    })
    .await;
}

/// One page's save fails while others are in flight: the error comes back
/// only once no save of the plan is still going on (none of the store's
/// connections is left in a transaction), and the plan started again from
/// the beginning is whole and numbered as if the first attempt never was.
#[tokio::test]
async fn a_save_failing_mid_plan_ends_every_save_and_the_plan_started_again_is_whole() {
    in_fresh_database(|url| async move {
        let (users, skipped) = scattered_skips();
        let (store, round) = recorded(&url, &users).await;
        let client = store.client().await.expect("connection");
        // The third page's save fails; the pages around it are saved at once.
        client
            .batch_execute(
                "CREATE FUNCTION refuse_u1234() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                   IF NEW.object_id = 'u1234' THEN RAISE EXCEPTION 'refused for the test'; END IF;
                   RETURN NEW;
                 END $$;
                 CREATE TRIGGER refuse_u1234 BEFORE INSERT ON run_changes
                   FOR EACH ROW EXECUTE FUNCTION refuse_u1234();",
            )
            .await
            .expect("the failing trigger");
        let tenant = tenant();
        let planner = planner(&store, &tenant, round);
        let survey = planner.survey().await.expect("survey");
        let failed = planner
            .store_plan(round.run_id, &survey, None, |_| {})
            .await
            .expect_err("a page's save fails");
        assert!(
            format!("{failed:#}").contains("refused for the test"),
            "{failed:#}"
        );
        let in_transaction: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND xact_start IS NOT NULL",
                &[],
            )
            .await
            .expect("sessions")
            .get(0);
        assert_eq!(
            in_transaction, 0,
            "a save still going on after store_plan returned"
        );
        let kept: i64 = client
            .query_one(
                "SELECT count(*) FROM run_changes WHERE run_id = $1",
                &[&round.run_id],
            )
            .await
            .expect("changes")
            .get(0);
        assert!(kept > 0, "the pages before the failing one were stored");

        client
            .batch_execute("DROP TRIGGER refuse_u1234 ON run_changes")
            .await
            .expect("dropping the trigger");
        store.restart_plan(round.run_id).await.expect("planning again");
        planner
            .store_plan(round.run_id, &survey, None, |_| {})
            .await
            .expect("storing the plan again");
        assert_numbered(&store, round.run_id, users.len(), skipped).await;
    })
    .await;
}

#[tokio::test]
async fn the_guard_holds_a_mass_deletion_and_an_approval_lets_one_run_through() {
    in_fresh_database(|url| async move {
        let mut users: Vec<Value> = (0..40).map(|i| user(i, &format!("user{i}"))).collect();
        let ids: Vec<String> = (0..40).map(|i| format!("u{i:04}")).collect();
        let (store, round) = recorded(&url, &users).await;
        let fields = SyncedFields {
            alias: "x".into(),
            first_name: "Anna".into(),
            surname: "Berg".into(),
            pstn_fixed: "4681".into(),
            email: None,
            attributes: Default::default(),
        };
        mark_synced(&store, &ids, &fields).await;
        // Twelve leave the directory.
        for user in users.iter_mut().take(12) {
            *user = json!({"id": user["id"], "@removed": {"reason": "deleted"}});
        }
        store
            .record_users_page(round, "acme", 1, &users[..12])
            .await
            .expect("page of removals");

        let tenant = tenant();
        let planner = planner(&store, &tenant, round);
        let survey = planner.survey().await.expect("survey");
        assert_eq!((survey.deletions, survey.synced), (12, 40));
        assert!(survey.guard_trips);
        let hold = survey.hold_reason(&tenant, false).expect("held");
        assert!(hold.contains("12 of 40"), "{hold}");
        let page = planner.plan_page(&survey, Some(&hold), "").await.expect("page");
        let held: Vec<_> = page.iter().filter(|p| p.user.state == "held").collect();
        assert_eq!(held.len(), 12);
        assert!(held
            .iter()
            .all(|p| p.user.change.is_none() && p.user.problems.is_empty()));
        assert!(survey.warnings(Some(&hold))[0].starts_with("deletions held"));

        // Approved: the next run takes the approval (again on redelivery), a later one does not.
        assert!(!store.has_open_deletion_approval("acme").await.unwrap());
        assert_eq!(
            store.held_deletions("acme").await.unwrap(),
            0,
            "nothing stored yet"
        );
        store.approve_deletions("acme").await.expect("approve");
        assert!(store.has_open_deletion_approval("acme").await.unwrap());
        assert!(store.use_deletion_approval("acme", round.run_id).await.unwrap());
        assert!(store.use_deletion_approval("acme", round.run_id).await.unwrap());
        assert!(!store.use_deletion_approval("acme", Uuid::new_v4()).await.unwrap());
        assert_eq!(survey.hold_reason(&tenant, true), None);
        let page = planner.plan_page(&survey, None, "").await.expect("page");
        let deletes = page
            .iter()
            .filter(|p| {
                matches!(
                    p.user.change.as_ref().map(|c| &c.action),
                    Some(Action::Delete { .. })
                )
            })
            .count();
        assert_eq!(deletes, 12);
    })
    .await;
}

#[tokio::test]
async fn a_survey_leaves_no_claims_behind() {
    in_fresh_database(|url| async move {
        let users: Vec<Value> = (0..5).map(|i| user(i, "same")).collect();
        let (store, round) = recorded(&url, &users).await;
        let tenant = tenant();
        let first = planner(&store, &tenant, round).survey().await.expect("survey");
        let second = planner(&store, &tenant, round).survey().await.expect("survey");
        assert_eq!(
            first.conflicts, second.conflicts,
            "claims of one survey leak into the next"
        );
        assert_eq!(first.conflicts[0].losers.len(), 4);
        let client = store.client().await.unwrap();
        let tables: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE tablename = 'plan_claims'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(tables, 0);
    })
    .await;
}

/// One run of the differ over `round`: survey, store the plan, end planning;
/// then what the applier records when every change is applied. Returns the
/// survey and each decided user's label.
async fn run(
    store: &Store,
    tenant: &TenantConfig,
    round: Round,
    now: chrono::DateTime<Utc>,
    everyone: bool,
) -> (Survey, std::collections::BTreeMap<String, &'static str>) {
    let planner = Planner {
        store,
        tenant,
        round,
        scoped: false,
        now,
    };
    let survey = planner.survey_run(round.run_id, everyone).await.expect("survey");
    let hold = survey.hold_reason(tenant, false);
    let mut labels = std::collections::BTreeMap::new();
    let mut after = String::new();
    loop {
        let page = planner
            .plan_page(&survey, hold.as_deref(), &after)
            .await
            .expect("page");
        let Some(last) = page.last() else { break };
        after = last.row.object_id.clone();
        for planned in &page {
            labels.insert(planned.row.object_id.clone(), decision_label(&planned.user));
        }
    }
    planner
        .store_plan(round.run_id, &survey, hold.as_deref(), |_| {})
        .await
        .expect("storing the plan");
    let end = RoundEnd {
        delta_link: "https://graph/users/delta?$deltatoken=1",
        full_round: everyone,
        paused: false,
        basis: &planner.basis().expect("basis"),
        planned_everyone: survey.decides_everyone(),
        planned_at: now,
    };
    store
        .complete_planning(round.run_id, "acme", &end)
        .await
        .expect("completing the planning");
    apply_everything(store, round.run_id).await;
    (survey, labels)
}

/// What the applier records when each of the run's changes is applied.
async fn apply_everything(store: &Store, run_id: Uuid) {
    let client = store.client().await.expect("connection");
    client
        .batch_execute(&format!(
            "UPDATE sync_users s SET pbx_id = NULL, applied = NULL, applied_version = c.desired_version,
                    pending_delete_at = NULL, state = 'deleted'
             FROM run_changes c
             WHERE c.run_id = '{run_id}' AND c.object_id = s.object_id AND c.action ? 'delete';
             UPDATE sync_users s SET pbx_id = coalesce(s.pbx_id, 'pbx-' || s.object_id), applied = s.desired,
                    applied_version = c.desired_version, state = 'active'
             FROM run_changes c
             WHERE c.run_id = '{run_id}' AND c.object_id = s.object_id AND NOT c.action ? 'delete';
             UPDATE run_changes SET outcome = 'applied' WHERE run_id = '{run_id}';
             UPDATE runs SET state = 'succeeded', finished_at = now() WHERE id = '{run_id}';"
        ))
        .await
        .expect("applying the changes");
}

/// A new run of the tenant, with `users` as its round's page (if any).
async fn next_round(store: &Store, users: &[Value]) -> Round {
    let round = Round {
        run_id: Uuid::new_v4(),
        round_id: Uuid::new_v4(),
    };
    store
        .start_run(round.run_id, "acme", "scheduled", false)
        .await
        .expect("run");
    assert!(store
        .begin_round("acme", round)
        .await
        .expect("beginning the round"));
    if !users.is_empty() {
        store
            .record_users_page(round, "acme", 0, users)
            .await
            .expect("page");
    }
    round
}

fn tenant_with(grace_days: u32, surname: &str) -> TenantConfig {
    let mut tenant = tenant();
    tenant.delete_after_days = grace_days;
    tenant.field_mapping = serde_json::from_value(json!({
        "alias": "mailNickname", "first_name": "givenName", "surname": surname, "pstn_fixed": "businessPhones[0]"
    }))
    .expect("a mapping");
    tenant
}

/// Thirty users synced by a first run (everyone decided, every change applied).
async fn synced_tenant(url: &str, tenant: &TenantConfig) -> (Store, Vec<Value>) {
    let users: Vec<Value> = (0..30).map(|i| user(i, &format!("user{i}"))).collect();
    let (store, round) = recorded(url, &users).await;
    let (survey, labels) = run(&store, tenant, round, Utc::now(), true).await;
    assert!(survey.decides_everyone());
    assert_eq!(labels.values().filter(|l| **l == "create").count(), 30);
    (store, users)
}

#[tokio::test]
async fn a_quiet_run_decides_nobody_and_a_change_only_its_user() {
    in_fresh_database(|url| async move {
        let tenant = tenant_with(0, "surname");
        let (store, users) = synced_tenant(&url, &tenant).await;
        // The run after the first sync: the applied creates are settled.
        let round = next_round(&store, &[]).await;
        let (survey, labels) = run(&store, &tenant, round, Utc::now(), false).await;
        assert_eq!(survey.chosen, Some(round.run_id));
        assert!(labels.is_empty(), "{labels:?}");
        assert_eq!(survey.synced, 30);

        let mut changed = users[7].clone();
        changed["surname"] = json!("Lind");
        let round = next_round(&store, &[changed]).await;
        let (_, labels) = run(&store, &tenant, round, Utc::now(), false).await;
        assert_eq!(
            labels.into_iter().collect::<Vec<_>>(),
            [("u0007".to_owned(), "update")]
        );

        // Its change applied, that user is settled too.
        let (_, labels) = run(&store, &tenant, next_round(&store, &[]).await, Utc::now(), false).await;
        assert!(labels.is_empty(), "{labels:?}");

        // And `usersync plan` (everyone, from stored data) agrees: nothing to do.
        let planner = planner(&store, &tenant, round);
        let survey = planner.survey().await.expect("survey");
        let page = planner.plan_page(&survey, None, "").await.expect("page");
        assert_eq!(page.len(), 30);
        assert!(page.iter().all(|p| decision_label(&p.user) == "none"));
    })
    .await;
}

#[tokio::test]
async fn a_conflict_between_a_changed_and_an_unchanged_user_is_found() {
    in_fresh_database(|url| async move {
        let tenant = tenant_with(0, "surname");
        let (store, users) = synced_tenant(&url, &tenant).await;
        // u0012 takes the alias u0003 has in the PBX.
        let mut taker = users[12].clone();
        taker["mailNickname"] = json!("user3");
        let round = next_round(&store, &[taker]).await;
        let (survey, labels) = run(&store, &tenant, round, Utc::now(), false).await;
        assert_eq!(survey.conflicts.len(), 1, "{:?}", survey.conflicts);
        assert_eq!(survey.conflicts[0].winner, "u0003");
        assert_eq!(survey.conflicts[0].losers, ["u0012"]);
        assert_eq!(labels["u0012"], "skip");
        assert_eq!(labels["u0003"], "none");
        assert_eq!(labels.len(), 2);
        // The loser stays skipped, run after run, until it changes.
        let (survey, labels) = run(&store, &tenant, next_round(&store, &[]).await, Utc::now(), false).await;
        assert_eq!(survey.conflicts.len(), 1);
        assert_eq!(labels["u0012"], "skip");
    })
    .await;
}

#[tokio::test]
async fn a_deletion_due_by_time_alone_is_made_by_a_quiet_run() {
    in_fresh_database(|url| async move {
        let tenant = tenant_with(3, "surname");
        let (store, _) = synced_tenant(&url, &tenant).await;
        let gone = json!({"id": "u0004", "@removed": {"reason": "deleted"}});
        let (_, labels) = run(
            &store,
            &tenant,
            next_round(&store, &[gone]).await,
            Utc::now(),
            false,
        )
        .await;
        assert_eq!(labels["u0004"], "none", "pending: the grace period runs");
        let (survey, labels) = run(&store, &tenant, next_round(&store, &[]).await, Utc::now(), false).await;
        assert!(!survey.decides_everyone());
        assert_eq!(labels["u0004"], "none", "still pending");
        let later = Utc::now() + chrono::TimeDelta::days(4);
        let (survey, labels) = run(&store, &tenant, next_round(&store, &[]).await, later, false).await;
        assert!(!survey.decides_everyone());
        assert_eq!(survey.deletions, 1);
        assert_eq!(
            labels.into_iter().collect::<Vec<_>>(),
            [("u0004".to_owned(), "delete")]
        );
    })
    .await;
}

#[tokio::test]
async fn a_mapping_change_or_a_week_without_one_decides_everyone() {
    in_fresh_database(|url| async move {
        let tenant = tenant_with(0, "surname");
        let (store, _) = synced_tenant(&url, &tenant).await;
        let remapped = tenant_with(0, "givenName");
        let (survey, labels) = run(
            &store,
            &remapped,
            next_round(&store, &[]).await,
            Utc::now(),
            false,
        )
        .await;
        assert!(survey.decides_everyone());
        assert_eq!(labels.values().filter(|l| **l == "update").count(), 30);
        let (survey, _) = run(
            &store,
            &remapped,
            next_round(&store, &[]).await,
            Utc::now(),
            false,
        )
        .await;
        assert!(!survey.decides_everyone());
        let week = Utc::now() + usersync_planner::FULL_PLAN_EVERY;
        let (survey, labels) = run(&store, &remapped, next_round(&store, &[]).await, week, false).await;
        assert!(survey.decides_everyone());
        assert_eq!(labels.len(), 30);
    })
    .await;
}

#[tokio::test]
async fn the_guard_counts_deletions_against_everyone_in_the_pbx_when_few_are_decided() {
    in_fresh_database(|url| async move {
        let tenant = tenant_with(0, "surname");
        let (store, _) = synced_tenant(&url, &tenant).await;
        let gone: Vec<Value> = (0..10)
            .map(|i| json!({"id": format!("u{i:04}"), "@removed": {"reason": "deleted"}}))
            .collect();
        let (survey, labels) = run(
            &store,
            &tenant,
            next_round(&store, &gone).await,
            Utc::now(),
            false,
        )
        .await;
        assert!(!survey.decides_everyone());
        assert_eq!((survey.deletions, survey.synced), (10, 30));
        assert!(survey.guard_trips);
        assert_eq!(labels.len(), 10);
        assert!(labels.values().all(|l| *l == "held"));
    })
    .await;
}

/// A relisted membership or a full round's removals are remembered until a
/// plan is stored: a run that fails before has the next one decide everyone.
#[tokio::test]
async fn a_relisted_membership_has_the_next_stored_plan_decide_everyone() {
    in_fresh_database(|url| async move {
        let tenant = tenant_with(0, "surname");
        let (store, _) = synced_tenant(&url, &tenant).await;
        let failed = next_round(&store, &[]).await;
        let groups = usersync_contract::GroupsRound {
            delta_link: "https://graph/groups/delta?$deltatoken=1".to_owned(),
            filter_group_ids: vec!["g1".to_owned()],
            nested_group_ids: Vec::new(),
            relisted: true,
        };
        store
            .settle_membership("acme", failed, Some(&groups))
            .await
            .expect("settling");
        // That run ends before its plan is stored; the next one is not relisted.
        store
            .fail_run(failed.run_id, "differ.test", "ended before its plan was stored")
            .await
            .expect("failing the run");
        let (survey, labels) = run(&store, &tenant, next_round(&store, &[]).await, Utc::now(), false).await;
        assert!(survey.decides_everyone());
        assert_eq!(labels.len(), 30);
        let (survey, _) = run(&store, &tenant, next_round(&store, &[]).await, Utc::now(), false).await;
        assert!(!survey.decides_everyone());
    })
    .await;
}
