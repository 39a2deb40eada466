//! The planner against a real PostgreSQL: tenant-wide conflicts across pages,
//! the mass-deletion guard and its approval. Every test has its own database.

use chrono::Utc;
use serde_json::{json, Value};
use tokio_postgres::types::Json;
use usersync_core::{parse_tenant_file, Action, SyncedFields, TenantConfig};
use usersync_planner::{decision_label, Planner, PLAN_PAGE};
use usersync_store::testing::{in_fresh_database, TEST_KEY};
use usersync_store::{Round, RunStart, SecretKey, Store};
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
