//! API tokens of usersync-api: only their sha256 is stored.

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::{Result, Store};

/// A token as listed: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenRow {
    pub id: String,
    /// The tenant it is scoped to; `None`: every tenant.
    pub tenant_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

fn token_row(row: &tokio_postgres::Row) -> ApiTokenRow {
    ApiTokenRow {
        id: row.get("id"),
        tenant_id: row.get("tenant_id"),
        created_at: row.get("created_at"),
        last_used_at: row.get("last_used_at"),
    }
}

impl Store {
    pub async fn insert_api_token(
        &self,
        id: &str,
        token_sha256: &str,
        tenant_id: Option<&str>,
    ) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO api_tokens (id, token_sha256, tenant_id) VALUES ($1, $2, $3)",
                &[&id, &token_sha256, &tenant_id],
            )
            .await
            .context("saving the API token")?;
        Ok(())
    }

    /// Every token, oldest first.
    pub async fn api_tokens(&self) -> Result<Vec<ApiTokenRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, tenant_id, created_at, last_used_at FROM api_tokens ORDER BY created_at, id",
                &[],
            )
            .await
            .context("listing API tokens")?;
        Ok(rows.iter().map(token_row).collect())
    }

    /// Removes a token; false when there was none with that id.
    pub async fn revoke_api_token(&self, id: &str) -> Result<bool> {
        let client = self.client().await?;
        let removed = client
            .execute("DELETE FROM api_tokens WHERE id = $1", &[&id])
            .await
            .context("revoking the API token")?;
        Ok(removed == 1)
    }

    /// The token with this hash, marked used now; `None` when unknown or revoked.
    pub async fn use_api_token(&self, token_sha256: &str) -> Result<Option<ApiTokenRow>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "UPDATE api_tokens SET last_used_at = now() WHERE token_sha256 = $1
                 RETURNING id, tenant_id, created_at, last_used_at",
                &[&token_sha256],
            )
            .await
            .context("checking the API token")?;
        Ok(row.as_ref().map(token_row))
    }
}
