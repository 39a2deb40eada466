//! Field discovery: which source properties the tenant's users carry, so a
//! field mapping can be written from what the directory really holds. The
//! counts move as each page of users is recorded (and as a full round marks
//! the users it did not return as removed), in the same transaction, so they
//! never need the whole directory read again.

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
    /// A value from the latest recorded page with a user that has the field.
    pub example: Value,
}

impl Store {
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
