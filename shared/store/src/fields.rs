//! Field discovery: which source properties the tenant's users carry, so a
//! field mapping can be written from what the directory really holds.

use anyhow::Context;
use serde_json::Value;
use tokio_postgres::types::Json;

use crate::{Result, Store};

/// One source property seen in the directory.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveredField {
    /// As a mapping names it: `mail`, `onPremisesExtensionAttributes.extensionAttribute1`,
    /// `businessPhones[0]`, `extension_…_costCenter`.
    pub field: String,
    /// Users (not removed) with a non-null value.
    pub users: i64,
    pub example: Value,
}

impl Store {
    /// Recomputes the tenant's discovered fields from the stored directory:
    /// nested objects are flattened one level (`a.b`), arrays by position (`a[0]`).
    pub async fn record_fields(&self, tenant_id: &str) -> Result<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("DELETE FROM tenant_fields WHERE tenant_id = $1", &[&tenant_id])
            .await?;
        let recorded = tx
            .execute(
                "WITH present AS (
                   SELECT d.object_id, p.key, p.value
                   FROM directory_users d, jsonb_each(d.source) p
                   WHERE d.tenant_id = $1 AND NOT d.removed
                 ), flat AS (
                   SELECT object_id, key AS field, value FROM present
                   WHERE jsonb_typeof(value) NOT IN ('object', 'array', 'null')
                   UNION ALL
                   SELECT p.object_id, p.key || '.' || i.key, i.value
                   FROM present p, jsonb_each(p.value) i
                   WHERE jsonb_typeof(p.value) = 'object' AND jsonb_typeof(i.value) <> 'null'
                   UNION ALL
                   SELECT p.object_id, p.key || '[' || (e.position - 1) || ']', e.value
                   FROM present p, jsonb_array_elements(p.value) WITH ORDINALITY AS e(value, position)
                   WHERE jsonb_typeof(p.value) = 'array' AND jsonb_typeof(e.value) <> 'null'
                 )
                 INSERT INTO tenant_fields (tenant_id, field, users, example)
                 SELECT $1, field, count(DISTINCT object_id), (array_agg(value ORDER BY object_id))[1]
                 FROM flat GROUP BY field",
                &[&tenant_id],
            )
            .await
            .context("recording the discovered fields")?;
        tx.commit().await?;
        Ok(recorded)
    }

    /// The tenant's discovered fields, by name.
    pub async fn fields(&self, tenant_id: &str) -> Result<Vec<DiscoveredField>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT field, users, example FROM tenant_fields WHERE tenant_id = $1 ORDER BY field",
                &[&tenant_id],
            )
            .await
            .context("loading the discovered fields")?;
        Ok(rows
            .iter()
            .map(|row| {
                let Json(example): Json<Value> = row.get("example");
                DiscoveredField {
                    field: row.get("field"),
                    users: i64::from(row.get::<_, i32>("users")),
                    example,
                }
            })
            .collect())
    }
}
