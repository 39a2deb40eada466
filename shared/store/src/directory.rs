//! The directory side: what Graph said about each user, recorded page by page.

use std::collections::BTreeMap;

use anyhow::Context;
use serde_json::{Map, Value};
use tokio_postgres::types::Json;
use uuid::Uuid;

use deadpool_postgres::GenericClient;

use crate::{Result, Store, SyncRow};

/// One user as the differ needs it to decide: source, scope facts and sync state.
#[derive(Debug, Clone)]
pub struct ReconcileRow {
    pub object_id: String,
    pub source: Value,
    pub removed: bool,
    /// Listed as a member of a filter group in this round.
    pub member: bool,
    pub sync: Option<SyncRow>,
}

/// One pass of the fetcher within a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub run_id: Uuid,
    pub round_id: Uuid,
}

/// What one page says about one user, duplicates within the page folded in order.
#[derive(Default)]
struct PageEntry {
    removed: bool,
    attributes: Map<String, Value>,
}

/// Folds a page: a later entry for the same id wins, attributes merge (absent
/// keeps, explicit null clears), and `@odata`/`@removed` annotations are dropped.
fn fold_page(users: &[Value]) -> BTreeMap<String, PageEntry> {
    let mut entries: BTreeMap<String, PageEntry> = BTreeMap::new();
    for user in users {
        let Some(object) = user.as_object() else { continue };
        let Some(id) = object.get("id").and_then(Value::as_str) else {
            continue;
        };
        let entry = entries.entry(id.to_owned()).or_default();
        if object.contains_key("@removed") {
            entry.removed = true;
            continue;
        }
        entry.removed = false;
        for (key, value) in object {
            if !key.starts_with('@') && !key.contains("@odata") && key != "id" {
                entry.attributes.insert(key.clone(), value.clone());
            }
        }
    }
    entries
}

impl Store {
    /// Records one page of users. A page already recorded for this round is skipped,
    /// so a redelivered page changes nothing twice.
    pub async fn record_users_page(
        &self,
        round: Round,
        tenant_id: &str,
        page: u32,
        users: &[Value],
    ) -> Result<()> {
        let entries = fold_page(users);
        let mut ids = Vec::with_capacity(entries.len());
        let mut removed = Vec::with_capacity(entries.len());
        let mut sources = Vec::with_capacity(entries.len());
        for (id, entry) in entries {
            ids.push(id);
            removed.push(entry.removed);
            sources.push(Json(Value::Object(entry.attributes)));
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if !claim_page(&tx, round, page).await? {
            return Ok(());
        }
        tx.execute(
            "INSERT INTO directory_users AS d (tenant_id, object_id, source, removed, seen_round, updated_at)
             SELECT $1, u.id, u.source, u.removed, $2, now()
             FROM unnest($3::text[], $4::jsonb[], $5::bool[]) AS u(id, source, removed)
             ON CONFLICT (tenant_id, object_id) DO UPDATE
               SET source = d.source || EXCLUDED.source,
                   removed = EXCLUDED.removed,
                   seen_round = EXCLUDED.seen_round,
                   updated_at = now()",
            &[&tenant_id, &round.round_id, &ids, &sources, &removed],
        )
        .await
        .context("recording a page of users")?;
        tx.commit().await?;
        Ok(())
    }

    /// Records one page of filter-group members.
    pub async fn record_members_page(&self, round: Round, page: u32, member_ids: &[String]) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if !claim_page(&tx, round, page).await? {
            return Ok(());
        }
        tx.execute(
            "INSERT INTO round_members (run_id, round_id, object_id)
             SELECT $1, $2, id FROM unnest($3::text[]) AS id
             ON CONFLICT DO NOTHING",
            &[&round.run_id, &round.round_id, &member_ids],
        )
        .await
        .context("recording a page of group members")?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn pages_recorded(&self, round: Round) -> Result<i64> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM round_pages WHERE round_id = $1",
                &[&round.round_id],
            )
            .await?;
        Ok(row.get(0))
    }

    /// After a full round: every user the round did not return is gone.
    pub async fn mark_unseen_removed(&self, tenant_id: &str, round: Round) -> Result<u64> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE directory_users SET removed = true, updated_at = now()
                 WHERE tenant_id = $1 AND NOT removed AND seen_round IS DISTINCT FROM $2",
                &[&tenant_id, &round.round_id],
            )
            .await
            .context("marking users the full round did not return as removed")
    }

    /// A keyset page of the tenant's users, ordered by object id, after `after`.
    pub async fn reconcile_rows(
        &self,
        tenant_id: &str,
        round: Round,
        after: &str,
        limit: i64,
    ) -> Result<Vec<ReconcileRow>> {
        let mut client = self.client().await?;
        reconcile_page(&mut client, tenant_id, round, after, limit).await
    }
}

/// A keyset page of users to reconcile, on a connection the caller holds.
///
/// The page is read by walking the primary key from `after`, whatever the
/// planner's statistics say: with none (a table never analysed) or stale ones
/// (a new tenant among analysed ones) it estimates a handful of rows and would
/// rather fetch every user after `after` and sort them for the first `limit`,
/// which makes each page cost the rest of the tenant and the pass quadratic.
/// Sorting and bitmap scans are ruled out for this one statement, which
/// leaves the ordered index scan that stops after `limit` users.
pub(crate) async fn reconcile_page(
    client: &mut deadpool_postgres::Object,
    tenant_id: &str,
    round: Round,
    after: &str,
    limit: i64,
) -> Result<Vec<ReconcileRow>> {
    let tx = client.transaction().await?;
    tx.batch_execute(PIN_PAGE_PLAN)
        .await
        .context("pinning the page to the primary key")?;
    let rows = tx
        .query(
            &reconcile_page_statement(),
            &[&tenant_id, &round.round_id, &after, &limit],
        )
        .await
        .context("loading users to reconcile")?;
    tx.commit().await?;
    Ok(rows.iter().map(ReconcileRow::from_row).collect())
}

/// Leaves the planner no way to read a page but the ordered primary key.
pub(crate) const PIN_PAGE_PLAN: &str = "SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off";

/// `$1` tenant, `$2` round, `$3` after, `$4` limit. The page of directory
/// users first, then each one's rows by key: the cost of a page does not grow
/// with the tenant.
fn reconcile_page_statement() -> String {
    format!(
        "SELECT {RECONCILE_COLUMNS}
         FROM (SELECT * FROM directory_users WHERE tenant_id = $1 AND object_id > $3
               ORDER BY object_id LIMIT $4) d
         {RECONCILE_JOINS}
         ORDER BY d.object_id"
    )
}

/// A user's source, scope facts and sync state, over `directory_users d`
/// joined with [`RECONCILE_JOINS`].
pub(crate) const RECONCILE_COLUMNS: &str =
    "d.object_id, d.source, d.removed, (m.object_id IS NOT NULL) AS member,
     s.state, s.desired, s.desired_version, s.pbx_id, s.applied, s.applied_version, s.pending_delete_at";

/// Membership in round `$2` and the sync row, looked up by key per user.
pub(crate) const RECONCILE_JOINS: &str = "LEFT JOIN LATERAL (SELECT object_id FROM round_members
                        WHERE round_id = $2 AND object_id = d.object_id) m ON true
     LEFT JOIN LATERAL (SELECT * FROM sync_users
                        WHERE tenant_id = d.tenant_id AND object_id = d.object_id) s ON true";

impl ReconcileRow {
    pub(crate) fn from_row(row: &tokio_postgres::Row) -> ReconcileRow {
        let Json(source): Json<Value> = row.get("source");
        let has_sync_row = row.get::<_, Option<String>>("state").is_some();
        ReconcileRow {
            object_id: row.get("object_id"),
            source,
            removed: row.get("removed"),
            member: row.get("member"),
            sync: has_sync_row.then(|| SyncRow::from_row(row)),
        }
    }
}

/// Marks a page as recorded; false when it already was.
async fn claim_page(tx: &deadpool_postgres::Transaction<'_>, round: Round, page: u32) -> Result<bool> {
    let page = i32::try_from(page).context("page number out of range")?;
    let inserted = tx
        .execute(
            "INSERT INTO round_pages (run_id, round_id, page) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&round.run_id, &round.round_id, &page],
        )
        .await
        .context("recording the page")?;
    Ok(inserted == 1)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};
    use uuid::Uuid;

    use super::{fold_page, reconcile_page_statement, Round, PIN_PAGE_PLAN};
    use crate::testing::{in_fresh_database, store_with_minimal_tenant};

    /// Rows read from `table` by the plan's nodes (a JSON plan of EXPLAIN ANALYZE).
    fn rows_read(plan: &Value, table: &str) -> f64 {
        let own = if plan["Relation Name"] == table {
            plan["Actual Rows"].as_f64().unwrap_or(0.0) * plan["Actual Loops"].as_f64().unwrap_or(1.0)
        } else {
            0.0
        };
        let children = plan["Plans"].as_array().map_or(0.0, |plans| {
            plans.iter().map(|child| rows_read(child, table)).sum()
        });
        own + children
    }

    /// On tables the planner has no statistics of, a page of a 5,000-user
    /// tenant (scoped: every user a member) reads its 500 users and their
    /// members, not the whole tenant and round.
    #[tokio::test]
    async fn a_page_reads_its_own_users_only_without_statistics() {
        in_fresh_database(|url| async move {
            let store = store_with_minimal_tenant(&url, "acme", 2).await;
            let round = Round {
                run_id: Uuid::new_v4(),
                round_id: Uuid::new_v4(),
            };
            store
                .start_run(round.run_id, "acme", "manual", false)
                .await
                .expect("starting the run");
            let ids: Vec<String> = (0..5000).map(|i| format!("u{i:06}")).collect();
            for (page, chunk) in ids.chunks(500).enumerate() {
                let users: Vec<Value> = chunk
                    .iter()
                    .map(|id| json!({"id": id, "givenName": "Anna"}))
                    .collect();
                let page = u32::try_from(page).expect("a page number");
                store
                    .record_users_page(round, "acme", page, &users)
                    .await
                    .expect("recording users");
                store
                    .record_members_page(round, 100 + page, chunk)
                    .await
                    .expect("recording members");
            }
            let mut client = store.client().await.expect("a connection");
            let tx = client.transaction().await.expect("a transaction");
            tx.batch_execute(PIN_PAGE_PLAN).await.expect("pinning");
            let explain = format!("EXPLAIN (ANALYZE, FORMAT JSON) {}", reconcile_page_statement());
            let row = tx
                .query_one(&explain, &[&"acme", &round.round_id, &"", &500i64])
                .await
                .expect("explaining a page");
            let tokio_postgres::types::Json(plan): tokio_postgres::types::Json<Value> = row.get(0);
            let plan = &plan[0]["Plan"];
            assert_eq!(plan["Actual Rows"], 500, "{plan:#}");
            assert!(rows_read(plan, "directory_users") <= 500.0, "{plan:#}");
            assert!(rows_read(plan, "round_members") <= 500.0, "{plan:#}");
        })
        .await;
    }

    #[test]
    fn later_entries_win_and_annotations_are_dropped() {
        let page = [
            json!({"id": "a", "givenName": "Anna", "surname": "Berg", "@odata.type": "#microsoft.graph.user"}),
            json!({"id": "a", "surname": null}),
            json!({"id": "b", "@removed": {"reason": "changed"}}),
        ];
        let folded = fold_page(&page);
        let a = &folded["a"];
        assert!(!a.removed);
        assert_eq!(a.attributes["givenName"], "Anna");
        assert!(a.attributes["surname"].is_null());
        assert!(!a.attributes.contains_key("@odata.type"));
        assert!(folded["b"].removed);
    }

    #[test]
    fn a_restored_user_after_its_removal_is_present() {
        let page = [
            json!({"id": "a", "@removed": {"reason": "changed"}}),
            json!({"id": "a", "givenName": "Anna"}),
        ];
        assert!(!fold_page(&page)["a"].removed);
    }
}
