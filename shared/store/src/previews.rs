//! Live previews (see `usersync-preview`): their progress, their lines, and
//! the stored sync state they compare the directory with.

use std::collections::HashMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::types::Json;
use uuid::Uuid;

use deadpool_postgres::GenericClient;

use crate::{ClaimSession, Result, Store, SyncRow};

/// A preview is reported failed once its heartbeat is this old: the process
/// running it died (it beats every few seconds while it works).
pub const PREVIEW_STALE_SECS: i64 = 60;

/// How long previews are kept.
pub const PREVIEW_KEPT_HOURS: i64 = 24;

/// A preview as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PreviewRow {
    pub id: Uuid,
    pub tenant_id: String,
    /// running, succeeded or failed
    pub state: String,
    pub settings_hash: String,
    pub summary: Option<Value>,
    pub warnings: Option<Value>,
    pub error_code: Option<String>,
    pub error: Option<String>,
    pub users_read: i64,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl PreviewRow {
    fn from_row(row: &tokio_postgres::Row) -> PreviewRow {
        PreviewRow {
            id: row.get("id"),
            tenant_id: row.get("tenant_id"),
            state: row.get("state"),
            settings_hash: row.get("settings_hash"),
            summary: row.get::<_, Option<Json<Value>>>("summary").map(|Json(v)| v),
            warnings: row.get::<_, Option<Json<Value>>>("warnings").map(|Json(v)| v),
            error_code: row.get("error_code"),
            error: row.get("error"),
            users_read: row.get("users_read"),
            created_at: row.get("created_at"),
            finished_at: row.get("finished_at"),
        }
    }
}

impl ClaimSession {
    /// [`Store::sync_rows_page`] on the session's own connection: a survey
    /// never waits for a second connection while it holds one.
    pub async fn sync_rows_page(
        &mut self,
        tenant_id: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<(String, SyncRow)>> {
        sync_rows_page(&mut self.client, tenant_id, after, limit).await
    }

    /// [`Store::sync_rows_of`] on the session's own connection.
    pub async fn sync_rows_of(
        &self,
        tenant_id: &str,
        object_ids: &[String],
    ) -> Result<HashMap<String, SyncRow>> {
        sync_rows_of(&self.client, tenant_id, object_ids).await
    }
}

async fn sync_rows_page(
    client: &mut deadpool_postgres::Object,
    tenant_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<(String, SyncRow)>> {
    let tx = client.transaction().await?;
    // The ordered primary key, whatever the statistics say (see `reconcile_page`).
    tx.batch_execute(crate::directory::PIN_PAGE_PLAN).await?;
    let rows = tx
        .query(
            "SELECT object_id, state, desired, desired_version, pbx_id, applied, applied_version, pending_delete_at
             FROM sync_users WHERE tenant_id = $1 AND object_id > $2
             ORDER BY object_id LIMIT $3",
            &[&tenant_id, &after, &limit],
        )
        .await
        .context("reading stored sync state")?;
    tx.commit().await?;
    Ok(rows
        .iter()
        .map(|row| (row.get("object_id"), SyncRow::from_row(row)))
        .collect())
}

async fn sync_rows_of(
    client: &impl GenericClient,
    tenant_id: &str,
    object_ids: &[String],
) -> Result<HashMap<String, SyncRow>> {
    let rows = client
        .query(
            "SELECT s.object_id, s.state, s.desired, s.desired_version, s.pbx_id, s.applied, s.applied_version,
                    s.pending_delete_at
             FROM unnest($2::text[]) AS u(id)
             JOIN LATERAL (SELECT * FROM sync_users WHERE tenant_id = $1 AND object_id = u.id) s ON true",
            &[&tenant_id, &object_ids],
        )
        .await
        .context("reading stored sync state")?;
    Ok(rows
        .iter()
        .map(|row| (row.get("object_id"), SyncRow::from_row(row)))
        .collect())
}

const PREVIEW_COLUMNS: &str = "id, tenant_id, state, settings_hash, summary, warnings, error_code, error,
     users_read, created_at, finished_at";

impl Store {
    /// A keyset page of the tenant's stored sync rows after `after`, by object id.
    pub async fn sync_rows_page(
        &self,
        tenant_id: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<(String, SyncRow)>> {
        sync_rows_page(&mut self.client().await?, tenant_id, after, limit).await
    }

    /// The stored sync rows of the given users (those that have one).
    pub async fn sync_rows_of(
        &self,
        tenant_id: &str,
        object_ids: &[String],
    ) -> Result<HashMap<String, SyncRow>> {
        sync_rows_of(&self.client().await?, tenant_id, object_ids).await
    }

    /// Records a new running preview, and deletes the ones kept long enough.
    pub async fn create_preview(&self, tenant_id: &str, settings_hash: &str) -> Result<Uuid> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM previews WHERE created_at < now() - make_interval(hours => $1::int)",
                &[&(PREVIEW_KEPT_HOURS as i32)],
            )
            .await
            .context("deleting old previews")?;
        let id = Uuid::new_v4();
        client
            .execute(
                "INSERT INTO previews (id, tenant_id, state, settings_hash) VALUES ($1, $2, 'running', $3)",
                &[&id, &tenant_id, &settings_hash],
            )
            .await
            .context("recording the preview")?;
        Ok(id)
    }

    /// Tells readers the preview is still worked on; false once it is no
    /// longer running (reported failed meanwhile): its work is then wasted.
    pub async fn beat_preview(&self, id: Uuid, users_read: i64) -> Result<bool> {
        let client = self.client().await?;
        let updated = client
            .execute(
                "UPDATE previews SET heartbeat_at = now(), users_read = $2 WHERE id = $1 AND state = 'running'",
                &[&id, &users_read],
            )
            .await
            .context("recording the preview's heartbeat")?;
        Ok(updated == 1)
    }

    /// Adds lines numbered from `first`: (decision, line).
    pub async fn add_preview_lines(&self, id: Uuid, first: i32, lines: &[(&str, Value)]) -> Result<()> {
        let numbers: Vec<i32> = (first..).take(lines.len()).collect();
        let decisions: Vec<&str> = lines.iter().map(|(d, _)| *d).collect();
        let bodies: Vec<Json<&Value>> = lines.iter().map(|(_, l)| Json(l)).collect();
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO preview_lines (preview_id, n, decision, line)
                 SELECT $1, u.n, u.decision, u.line
                 FROM unnest($2::int[], $3::text[], $4::jsonb[]) AS u(n, decision, line)
                 ON CONFLICT DO NOTHING",
                &[&id, &numbers, &decisions, &bodies],
            )
            .await
            .context("recording the preview's lines")?;
        Ok(())
    }

    /// Ends a running preview with its result; false when it was no longer running.
    pub async fn finish_preview(
        &self,
        id: Uuid,
        users_read: i64,
        summary: &Value,
        warnings: &Value,
    ) -> Result<bool> {
        let client = self.client().await?;
        let updated = client
            .execute(
                "UPDATE previews SET state = 'succeeded', users_read = $2, summary = $3, warnings = $4, finished_at = now()
                 WHERE id = $1 AND state = 'running'",
                &[&id, &users_read, &Json(summary), &Json(warnings)],
            )
            .await
            .context("recording the preview's result")?;
        Ok(updated == 1)
    }

    /// Ends a running preview with why it failed; its lines go.
    pub async fn fail_preview(&self, id: Uuid, code: &str, reason: &str) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let updated = tx
            .execute(
                "UPDATE previews SET state = 'failed', error_code = $2, error = $3, finished_at = now()
                 WHERE id = $1 AND state = 'running'",
                &[&id, &code, &reason],
            )
            .await
            .context("recording the preview's failure")?;
        if updated == 1 {
            tx.execute("DELETE FROM preview_lines WHERE preview_id = $1", &[&id])
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A preview of the tenant; one whose heartbeat went stale is failed first.
    pub async fn preview(&self, tenant_id: &str, id: Uuid) -> Result<Option<PreviewRow>> {
        let stale = self
            .client()
            .await?
            .query_opt(
                "SELECT 1 FROM previews WHERE id = $1 AND tenant_id = $2 AND state = 'running'
                   AND heartbeat_at < now() - make_interval(secs => $3::int)",
                &[&id, &tenant_id, &(PREVIEW_STALE_SECS as i32)],
            )
            .await
            .context("reading the preview")?
            .is_some();
        if stale {
            self.fail_preview(
                id,
                "preview.abandoned",
                "the process running the preview stopped (restarted or crashed) before it ended: start a new preview",
            )
            .await?;
        }
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT {PREVIEW_COLUMNS} FROM previews WHERE id = $1 AND tenant_id = $2"),
                &[&id, &tenant_id],
            )
            .await
            .context("reading the preview")?;
        Ok(row.as_ref().map(PreviewRow::from_row))
    }

    /// A page of a preview's lines in object id order, of one decision or all;
    /// and how many there are in all.
    pub async fn preview_lines(
        &self,
        id: Uuid,
        decision: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<Value>, i64)> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT line FROM preview_lines WHERE preview_id = $1 AND ($2::text IS NULL OR decision = $2)
                 ORDER BY n OFFSET $3 LIMIT $4",
                &[&id, &decision, &offset, &limit],
            )
            .await
            .context("reading the preview's lines")?;
        let total: i64 = client
            .query_one(
                "SELECT count(*) FROM preview_lines WHERE preview_id = $1 AND ($2::text IS NULL OR decision = $2)",
                &[&id, &decision],
            )
            .await
            .context("counting the preview's lines")?
            .get(0);
        Ok((
            rows.iter().map(|row| row.get::<_, Json<Value>>(0).0).collect(),
            total,
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::testing::{in_fresh_database, store_with_minimal_tenant};

    #[tokio::test]
    async fn a_preview_that_stopped_beating_is_failed_and_its_late_result_refused() {
        in_fresh_database(|url| async move {
            let store = store_with_minimal_tenant(&url, "acme", 2).await;
            let id = store.create_preview("acme", "hash").await.expect("created");
            assert!(store.beat_preview(id, 10).await.expect("beat"));
            store
                .add_preview_lines(id, 0, &[("create", json!({"object_id": "u1"}))])
                .await
                .expect("lines");
            let running = store.preview("acme", id).await.expect("read").expect("kept");
            assert_eq!((running.state.as_str(), running.users_read), ("running", 10));
            assert!(store.preview("other", id).await.expect("read").is_none(), "another tenant's");

            // The process stalls past the stale limit (or died): the next reader fails it.
            let client = store.client().await.expect("a connection");
            client
                .execute(
                    "UPDATE previews SET heartbeat_at = now() - make_interval(secs => $2::int + 1) WHERE id = $1",
                    &[&id, &(super::PREVIEW_STALE_SECS as i32)],
                )
                .await
                .expect("aged");
            let failed = store.preview("acme", id).await.expect("read").expect("kept");
            assert_eq!(failed.state, "failed");
            assert_eq!(failed.error_code.as_deref(), Some("preview.abandoned"));
            assert_eq!(store.preview_lines(id, None, 0, 10).await.expect("lines").1, 0);
            // A late worker learns it lost, and its result does not replace the failure.
            assert!(!store.beat_preview(id, 20).await.expect("beat"));
            assert!(!store.finish_preview(id, 20, &json!({}), &json!([])).await.expect("finish"));
            assert_eq!(store.preview("acme", id).await.expect("read").expect("kept").state, "failed");
        })
        .await;
    }

    #[tokio::test]
    async fn lines_page_in_order_and_by_decision_and_old_previews_go() {
        in_fresh_database(|url| async move {
            let store = store_with_minimal_tenant(&url, "acme", 2).await;
            let id = store.create_preview("acme", "hash").await.expect("created");
            let lines: Vec<(&str, serde_json::Value)> = (0..7)
                .map(|n| (if n % 2 == 0 { "create" } else { "skip" }, json!({"n": n})))
                .collect();
            store.add_preview_lines(id, 0, &lines[..4]).await.expect("lines");
            store.add_preview_lines(id, 4, &lines[4..]).await.expect("lines");
            assert!(store
                .finish_preview(id, 7, &json!({"create": 4, "skip": 3}), &json!([]))
                .await
                .expect("finish"));
            let (page, total) = store.preview_lines(id, None, 2, 3).await.expect("page");
            assert_eq!(
                (page, total),
                (vec![json!({"n": 2}), json!({"n": 3}), json!({"n": 4})], 7)
            );
            let (page, total) = store.preview_lines(id, Some("skip"), 1, 10).await.expect("page");
            assert_eq!((page, total), (vec![json!({"n": 3}), json!({"n": 5})], 3));

            let client = store.client().await.expect("a connection");
            client
                .execute(
                    "UPDATE previews SET created_at = now() - interval '25 hours' WHERE id = $1",
                    &[&id],
                )
                .await
                .expect("aged");
            let newer = store.create_preview("acme", "hash").await.expect("created");
            assert!(
                store.preview("acme", id).await.expect("read").is_none(),
                "kept a day only"
            );
            assert!(store.preview("acme", newer).await.expect("read").is_some());
            assert_eq!(store.preview_lines(id, None, 0, 10).await.expect("lines").1, 0);
        })
        .await;
    }
}
