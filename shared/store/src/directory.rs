//! The directory side: what Graph said about each user, recorded page by page.

use std::collections::BTreeMap;

use anyhow::Context;
use serde_json::{Map, Value};
use tokio_postgres::types::Json;
use uuid::Uuid;

use deadpool_postgres::GenericClient;

use crate::rounds::{enter_round, lock_if_current, retry_conflicts, PageOutcome};
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
    /// Records one page of users. A page already recorded for this round, or
    /// one of a round that is no longer the tenant's current one, changes
    /// nothing (see [`crate::rounds`]).
    pub async fn record_users_page(
        &self,
        round: Round,
        tenant_id: &str,
        page: u32,
        users: &[Value],
    ) -> Result<PageOutcome> {
        retry_conflicts(|| self.record_users_page_once(round, tenant_id, page, users)).await
    }

    async fn record_users_page_once(
        &self,
        round: Round,
        tenant_id: &str,
        page: u32,
        users: &[Value],
    ) -> Result<PageOutcome> {
        let entries = fold_page(users);
        let ids: Vec<String> = entries.keys().cloned().collect();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The tenant's directory lock first, then the page, the users in id
        // order and the fields in name order: one order for every writer.
        if !enter_round(&tx, tenant_id, round).await? {
            return Ok(PageOutcome::StaleRound);
        }
        if !claim_page(&tx, round, page).await? {
            return Ok(PageOutcome::AlreadyRecorded);
        }
        // The page's stored users are locked, in id order, so what the page
        // changes is read and written with no other page in between. A new
        // user has no row to lock and needs none: every writer of the
        // tenant's directory holds its round row (above), so no other can
        // insert it meanwhile; it is written once, by the upsert below, and
        // counts as removed before (counted nowhere yet).
        // By key, user after user: the cost is the page's, never the tenant's.
        let stored = tx
            .query(
                "SELECT d.object_id, d.source, d.removed FROM unnest($2::text[]) AS u(id)
                 CROSS JOIN LATERAL (SELECT object_id, source, removed FROM directory_users
                                     WHERE tenant_id = $1 AND object_id = u.id FOR UPDATE) d",
                &[&tenant_id, &ids],
            )
            .await
            .context("locking the page's users")?;
        let mut before: BTreeMap<String, (bool, Map<String, Value>)> = stored
            .iter()
            .map(|row| {
                let Json(source): Json<Value> = row.get("source");
                let source = match source {
                    Value::Object(map) => map,
                    _ => Map::new(),
                };
                (row.get("object_id"), (row.get("removed"), source))
            })
            .collect();
        // What the page makes of each user (attributes replace key by key,
        // as Graph's delta sends only what changed), and how the discovered
        // fields move: the fields the users had count down, those they have
        // now count up. Worked out here rather than in SQL: a page's fields
        // are thousands of small values, cheap in memory and slow as rows.
        let mut moves = FieldMoves::default();
        let mut sources = Vec::with_capacity(entries.len());
        let mut removed = Vec::with_capacity(entries.len());
        for (id, entry) in entries {
            let (was_removed, mut source) = before.remove(&id).unwrap_or((true, Map::new()));
            if !was_removed {
                moves.count_down(&source);
            }
            source.extend(entry.attributes);
            if !entry.removed {
                moves.count_up(&source);
            }
            sources.push(Json(Value::Object(source)));
            removed.push(entry.removed);
        }
        // The tenant's counts are locked in order first, so pages recorded
        // at once take turns here instead of deadlocking.
        tx.execute(
            "SELECT 1 FROM tenant_fields WHERE tenant_id = $1 ORDER BY field FOR UPDATE",
            &[&tenant_id],
        )
        .await
        .context("locking the discovered fields")?;
        tx.execute(
            "INSERT INTO directory_users AS d (tenant_id, object_id, source, removed, seen_round, updated_at)
             SELECT $1, u.id, u.source, u.removed, $2, now()
             FROM unnest($3::text[], $4::jsonb[], $5::bool[]) AS u(id, source, removed)
             ON CONFLICT (tenant_id, object_id) DO UPDATE
               SET source = EXCLUDED.source, removed = EXCLUDED.removed,
                   seen_round = EXCLUDED.seen_round, updated_at = now()",
            &[&tenant_id, &round.round_id, &ids, &sources, &removed],
        )
        .await
        .context("recording a page of users")?;
        moves.store(&tx, tenant_id).await?;
        tx.commit().await?;
        Ok(PageOutcome::Recorded)
    }

    /// Records one page of filter-group members, as [`Store::record_users_page`]
    /// does users.
    pub async fn record_members_page(
        &self,
        round: Round,
        tenant_id: &str,
        page: u32,
        member_ids: &[String],
    ) -> Result<PageOutcome> {
        retry_conflicts(|| self.record_members_page_once(round, tenant_id, page, member_ids)).await
    }

    async fn record_members_page_once(
        &self,
        round: Round,
        tenant_id: &str,
        page: u32,
        member_ids: &[String],
    ) -> Result<PageOutcome> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if !enter_round(&tx, tenant_id, round).await? {
            return Ok(PageOutcome::StaleRound);
        }
        if !claim_page(&tx, round, page).await? {
            return Ok(PageOutcome::AlreadyRecorded);
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
        Ok(PageOutcome::Recorded)
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

    /// After a full round: every user the round did not return is gone, and
    /// no longer counts for the discovered fields. Only for the tenant's
    /// current round with all its `pages` recorded; `None` (nothing changed)
    /// otherwise.
    pub async fn mark_unseen_removed(
        &self,
        tenant_id: &str,
        round: Round,
        pages: u32,
    ) -> Result<Option<u64>> {
        retry_conflicts(|| self.mark_unseen_removed_once(tenant_id, round, pages)).await
    }

    async fn mark_unseen_removed_once(
        &self,
        tenant_id: &str,
        round: Round,
        pages: u32,
    ) -> Result<Option<u64>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if !lock_if_current(&tx, tenant_id, round).await? {
            return Ok(None);
        }
        let recorded: i64 = tx
            .query_one(
                "SELECT count(*) FROM round_pages WHERE round_id = $1",
                &[&round.round_id],
            )
            .await
            .context("counting the round's pages")?
            .get(0);
        if recorded < i64::from(pages) {
            return Ok(None);
        }
        let row = tx
            .query_one(
                "WITH gone AS (
                   UPDATE directory_users SET removed = true, updated_at = now()
                   WHERE tenant_id = $1 AND NOT removed AND seen_round IS DISTINCT FROM $2
                   RETURNING object_id, source
                 ), moves AS (
                   SELECT f.field, count(DISTINCT g.object_id)::int4 AS users
                   FROM gone g, source_fields(g.source) f GROUP BY f.field
                 ), counted AS (
                   UPDATE tenant_fields t SET users = t.users - m.users, updated_at = now()
                   FROM moves m WHERE t.tenant_id = $1 AND t.field = m.field
                 )
                 SELECT count(*) FROM gone",
                &[&tenant_id, &round.round_id],
            )
            .await
            .context("marking users the full round did not return as removed")?;
        forget_unused_fields(&tx, tenant_id).await?;
        let gone = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        if gone > 0 {
            // Until a plan is stored, the tenant's next plan decides everyone
            // (a later round need not return them again).
            tx.execute("DELETE FROM tenant_plans WHERE tenant_id = $1", &[&tenant_id])
                .await
                .context("forgetting the last plan's basis")?;
        }
        tx.commit().await?;
        Ok(Some(gone))
    }

    /// A keyset page of the tenant's users, ordered by object id, after
    /// `after`: all of them, or with `chosen` those that run decides.
    pub async fn reconcile_rows(
        &self,
        tenant_id: &str,
        chosen: Option<Uuid>,
        after: &str,
        limit: i64,
    ) -> Result<Vec<ReconcileRow>> {
        let mut client = self.client().await?;
        reconcile_page(&mut client, tenant_id, chosen, after, limit).await
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
    chosen: Option<Uuid>,
    after: &str,
    limit: i64,
) -> Result<Vec<ReconcileRow>> {
    let tx = client.transaction().await?;
    tx.batch_execute(PIN_PAGE_PLAN)
        .await
        .context("pinning the page to the primary key")?;
    let rows = match chosen {
        None => {
            tx.query(&reconcile_page_statement(), &[&tenant_id, &after, &limit])
                .await
        }
        Some(run_id) => {
            tx.query(&chosen_page_statement(), &[&tenant_id, &after, &limit, &run_id])
                .await
        }
    }
    .context("loading users to reconcile")?;
    tx.commit().await?;
    Ok(rows.iter().map(ReconcileRow::from_row).collect())
}

/// Leaves the planner no way to read a page but the ordered primary key.
pub(crate) const PIN_PAGE_PLAN: &str = "SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off";

/// `$1` tenant, `$2` after, `$3` limit. The page of directory
/// users first, then each one's rows by key: the cost of a page does not grow
/// with the tenant.
fn reconcile_page_statement() -> String {
    format!(
        "SELECT {RECONCILE_COLUMNS}
         FROM (SELECT * FROM directory_users WHERE tenant_id = $1 AND object_id > $2
               ORDER BY object_id LIMIT $3) d
         {RECONCILE_JOINS}
         ORDER BY d.object_id"
    )
}

/// As [`reconcile_page_statement`], over the users run `$4` decides (by the
/// key of `run_plan_users`).
fn chosen_page_statement() -> String {
    format!(
        "SELECT {RECONCILE_COLUMNS}
         FROM (SELECT u.* FROM run_plan_users p
               JOIN LATERAL (SELECT * FROM directory_users
                             WHERE tenant_id = $1 AND object_id = p.object_id) u ON true
               WHERE p.run_id = $4 AND p.object_id > $2
               ORDER BY p.object_id LIMIT $3) d
         {RECONCILE_JOINS}
         ORDER BY d.object_id"
    )
}

/// A user's source, scope facts and sync state, over `directory_users d`
/// joined with [`RECONCILE_JOINS`].
pub(crate) const RECONCILE_COLUMNS: &str =
    "d.object_id, d.source, d.removed, (m.object_id IS NOT NULL) AS member,
     s.state, s.desired, s.desired_version, s.pbx_id, s.applied, s.applied_version, s.pending_delete_at";

/// Membership in the tenant's filter groups, as the last settled round
/// left it (`Store::settle_membership`), and the sync row, looked up by key
/// per user.
pub(crate) const RECONCILE_JOINS: &str = "LEFT JOIN LATERAL (SELECT object_id FROM tenant_members
                        WHERE tenant_id = d.tenant_id AND object_id = d.object_id) m ON true
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

/// How one page moves the tenant's discovered fields: users per field, and
/// the value of the page's first user (by object id) that has it now.
#[derive(Default)]
struct FieldMoves {
    moves: BTreeMap<String, (i32, Option<Value>)>,
}

impl FieldMoves {
    fn count_down(&mut self, source: &Map<String, Value>) {
        for (field, _) in source_fields(source) {
            self.moves.entry(field).or_default().0 -= 1;
        }
    }

    fn count_up(&mut self, source: &Map<String, Value>) {
        for (field, value) in source_fields(source) {
            let (users, example) = self.moves.entry(field).or_default();
            *users += 1;
            example.get_or_insert_with(|| value.clone());
        }
    }

    /// Writes the moves (fields in name order, as they were locked) and
    /// drops the fields no user has any more.
    async fn store(self, tx: &deadpool_postgres::Transaction<'_>, tenant_id: &str) -> Result<()> {
        // Fields users have after the page (with an example), and fields
        // only counted down (known ones: they have a row).
        let (mut had, mut has) = (Vec::new(), Vec::new());
        for (field, (moved, example)) in self.moves {
            match example {
                Some(example) => has.push((field, moved, Json(example))),
                None if moved != 0 => had.push((field, moved)),
                None => {}
            }
        }
        // Only a field nobody on the page has now can reach 0 users.
        let counted_down = !had.is_empty();
        if counted_down {
            let (fields, users): (Vec<String>, Vec<i32>) = had.into_iter().unzip();
            tx.execute(
                "UPDATE tenant_fields t SET users = t.users + m.users, updated_at = now()
                 FROM unnest($2::text[], $3::int4[]) AS m(field, users)
                 WHERE t.tenant_id = $1 AND t.field = m.field",
                &[&tenant_id, &fields, &users],
            )
            .await
            .context("counting down the fields the page's users had")?;
        }
        if !has.is_empty() {
            let fields: Vec<&str> = has.iter().map(|(field, _, _)| field.as_str()).collect();
            let users: Vec<i32> = has.iter().map(|(_, moved, _)| *moved).collect();
            let examples: Vec<&Json<Value>> = has.iter().map(|(_, _, example)| example).collect();
            tx.execute(
                "INSERT INTO tenant_fields AS t (tenant_id, field, users, example, updated_at)
                 SELECT $1, m.field, m.users, m.example, now()
                 FROM unnest($2::text[], $3::int4[], $4::jsonb[]) AS m(field, users, example)
                 ORDER BY m.field
                 ON CONFLICT (tenant_id, field) DO UPDATE
                   SET users = t.users + EXCLUDED.users, example = EXCLUDED.example, updated_at = now()",
                &[&tenant_id, &fields, &users, &examples],
            )
            .await
            .context("counting up the fields the page's users have")?;
        }
        if counted_down {
            forget_unused_fields(tx, tenant_id).await?;
        }
        Ok(())
    }
}

/// A source's discoverable fields, as the database's `source_fields` names
/// them: a plain value by its key, an object's values as `key.name` and an
/// array's elements as `key[i]` (one level down), nulls left out.
fn source_fields(source: &Map<String, Value>) -> impl Iterator<Item = (String, &Value)> {
    source.iter().flat_map(|(key, value)| {
        let nested: Vec<(String, &Value)> = match value {
            Value::Null => Vec::new(),
            Value::Object(inner) => inner
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(name, v)| (format!("{key}.{name}"), v))
                .collect(),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .filter(|(_, v)| !v.is_null())
                .map(|(i, v)| (format!("{key}[{i}]"), v))
                .collect(),
            plain => vec![(key.clone(), plain)],
        };
        nested
    })
}

/// Drops the discovered fields no user has any more.
async fn forget_unused_fields(tx: &deadpool_postgres::Transaction<'_>, tenant_id: &str) -> Result<()> {
    tx.execute(
        "DELETE FROM tenant_fields WHERE tenant_id = $1 AND users <= 0",
        &[&tenant_id],
    )
    .await
    .context("forgetting fields no user has")?;
    Ok(())
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

    use super::{chosen_page_statement, fold_page, reconcile_page_statement, Round, PIN_PAGE_PLAN};
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
                    .record_members_page(round, "acme", 100 + page, chunk)
                    .await
                    .expect("recording members");
            }
            let groups = usersync_contract::GroupsRound {
                delta_link: "https://graph/groups/delta?$deltatoken=1".to_owned(),
                filter_group_ids: vec!["g1".to_owned()],
                nested_group_ids: Vec::new(),
                relisted: true,
            };
            store
                .settle_membership("acme", round, Some(&groups))
                .await
                .expect("settling the members");
            let mut client = store.client().await.expect("a connection");
            let tx = client.transaction().await.expect("a transaction");
            tx.batch_execute(PIN_PAGE_PLAN).await.expect("pinning");
            let explain = format!("EXPLAIN (ANALYZE, FORMAT JSON) {}", reconcile_page_statement());
            let row = tx
                .query_one(&explain, &[&"acme", &"", &500i64])
                .await
                .expect("explaining a page");
            let tokio_postgres::types::Json(plan): tokio_postgres::types::Json<Value> = row.get(0);
            let plan = &plan[0]["Plan"];
            assert_eq!(plan["Actual Rows"], 500, "{plan:#}");
            assert!(rows_read(plan, "directory_users") <= 500.0, "{plan:#}");
            assert!(rows_read(plan, "tenant_members") <= 500.0, "{plan:#}");
        })
        .await;
    }

    /// Without statistics, a page of the users a run chose reads those
    /// users only, not the tenant (5,000 users, 3 chosen).
    #[tokio::test]
    async fn a_page_of_chosen_users_reads_them_only_without_statistics() {
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
                let users: Vec<Value> = chunk.iter().map(|id| json!({"id": id, "givenName": "Anna"})).collect();
                let page = u32::try_from(page).expect("a page number");
                store
                    .record_users_page(round, "acme", page, &users)
                    .await
                    .expect("recording users");
            }
            let mut client = store.client().await.expect("a connection");
            client
                .execute(
                    "INSERT INTO run_plan_users (run_id, object_id) VALUES ($1, 'u000007'), ($1, 'u002500'), ($1, 'u004999')",
                    &[&round.run_id],
                )
                .await
                .expect("choosing users");
            let tx = client.transaction().await.expect("a transaction");
            tx.batch_execute(PIN_PAGE_PLAN).await.expect("pinning");
            let explain = format!("EXPLAIN (ANALYZE, FORMAT JSON) {}", chosen_page_statement());
            let row = tx
                .query_one(&explain, &[&"acme", &"", &500i64, &round.run_id])
                .await
                .expect("explaining a page");
            let tokio_postgres::types::Json(plan): tokio_postgres::types::Json<Value> = row.get(0);
            let plan = &plan[0]["Plan"];
            assert_eq!(plan["Actual Rows"], 3, "{plan:#}");
            assert!(rows_read(plan, "directory_users") <= 3.0, "{plan:#}");
            assert!(rows_read(plan, "sync_users") <= 3.0, "{plan:#}");
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
