use anyhow::{anyhow, Context};
use chrono::{DateTime, Utc};
use tokio_postgres::types::Json;
use usersync_core::TenantConfig;

use crate::{Result, SecretKey, Store};

/// A tenant as stored: the configuration with its secrets decrypted (when a
/// key was given) or masked (when not), and its sync state.
#[derive(Debug, Clone)]
pub struct StoredTenant {
    pub config: TenantConfig,
    pub delta_link: Option<String>,
    pub last_success_at: Option<DateTime<Utc>>,
    /// Moved on by every write: the API's `ETag`.
    pub version: i64,
}

/// What a conditional write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantWrite {
    Created {
        version: i64,
    },
    Updated {
        version: i64,
    },
    /// The tenant is not at the version the write was made from (or is gone).
    Stale,
}

/// One line of `usersync tenant list` / `usersync status`.
#[derive(Debug, Clone)]
pub struct TenantSummary {
    pub config: TenantConfig,
    pub last_success_at: Option<DateTime<Utc>>,
    pub pending_deletions: i64,
}

impl Store {
    /// Creates or replaces a tenant. Secrets are stored encrypted, never in `config`.
    /// Returns true when the tenant is new.
    pub async fn upsert_tenant(&self, tenant: &TenantConfig, key: &SecretKey) -> Result<bool> {
        let write = self.write_tenant(tenant, key, None).await?;
        Ok(matches!(write, TenantWrite::Created { .. }))
    }

    /// Creates or replaces a tenant; with `expected_version`, replaces it only
    /// while it is at that version (one statement, so two writers from the same
    /// version cannot both win).
    pub async fn write_tenant(
        &self,
        tenant: &TenantConfig,
        key: &SecretKey,
        expected_version: Option<i64>,
    ) -> Result<TenantWrite> {
        let client_secret = key.encrypt(&tenant.provider_settings.client_secret);
        let pbx_token = tenant.pbx.as_ref().map(|pbx| key.encrypt(&pbx.api_token));
        let masked = Json(tenant.masked());
        let client = self.client().await?;
        let Some(expected) = expected_version else {
            let row = client
                .query_one(
                    "INSERT INTO tenants (id, config, client_secret_enc, pbx_token_enc)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (id) DO UPDATE
                       SET config = EXCLUDED.config,
                           client_secret_enc = EXCLUDED.client_secret_enc,
                           pbx_token_enc = EXCLUDED.pbx_token_enc,
                           version = tenants.version + 1,
                           updated_at = now()
                     RETURNING (xmax = 0) AS inserted, version",
                    &[&tenant.id, &masked, &client_secret, &pbx_token],
                )
                .await
                .context("saving the tenant")?;
            let version = row.get("version");
            return Ok(if row.get("inserted") {
                TenantWrite::Created { version }
            } else {
                TenantWrite::Updated { version }
            });
        };
        let row = client
            .query_opt(
                "UPDATE tenants
                    SET config = $2, client_secret_enc = $3, pbx_token_enc = $4,
                        version = version + 1, updated_at = now()
                  WHERE id = $1 AND version = $5
                 RETURNING version",
                &[&tenant.id, &masked, &client_secret, &pbx_token, &expected],
            )
            .await
            .context("saving the tenant")?;
        Ok(row.map_or(TenantWrite::Stale, |row| TenantWrite::Updated {
            version: row.get("version"),
        }))
    }

    /// Deletes a tenant and everything stored for it (its runs, users, state);
    /// with `expected_version`, only while it is at that version. False when
    /// nothing was deleted (no such tenant, or another version).
    pub async fn delete_tenant(&self, id: &str, expected_version: Option<i64>) -> Result<bool> {
        let client = self.client().await?;
        let deleted = client
            .execute(
                "DELETE FROM tenants WHERE id = $1 AND ($2::bigint IS NULL OR version = $2)",
                &[&id, &expected_version],
            )
            .await
            .context("deleting the tenant")?;
        Ok(deleted == 1)
    }

    /// Loads one tenant; with a key its secrets are decrypted, without they stay masked.
    pub async fn tenant(&self, id: &str, key: Option<&SecretKey>) -> Result<Option<StoredTenant>> {
        let client = self.client().await?;
        let Some(row) = client
            .query_opt(
                "SELECT config, client_secret_enc, pbx_token_enc, delta_link, last_success_at, version
                 FROM tenants WHERE id = $1",
                &[&id],
            )
            .await
            .context("loading the tenant")?
        else {
            return Ok(None);
        };
        let Json(mut config): Json<TenantConfig> = row.get("config");
        if let Some(key) = key {
            config.provider_settings.client_secret = key.decrypt(row.get("client_secret_enc"))?;
            let pbx_token: Option<String> = row.get("pbx_token_enc");
            if let (Some(pbx), Some(sealed)) = (config.pbx.as_mut(), pbx_token) {
                pbx.api_token = key.decrypt(&sealed)?;
            }
        }
        Ok(Some(StoredTenant {
            config,
            delta_link: row.get("delta_link"),
            last_success_at: row.get("last_success_at"),
            version: row.get("version"),
        }))
    }

    /// Like [`Store::tenant`], but a missing tenant is an error that says what to do.
    pub async fn require_tenant(&self, id: &str, key: Option<&SecretKey>) -> Result<StoredTenant> {
        self.tenant(id, key)
            .await?
            .ok_or_else(|| anyhow!("no tenant {id:?}: create it with `usersync tenant apply FILE`"))
    }

    /// Every tenant with masked secrets, ordered by id.
    pub async fn tenants(&self) -> Result<Vec<TenantSummary>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT t.config, t.last_success_at,
                        (SELECT count(*) FROM sync_users s
                          WHERE s.tenant_id = t.id AND s.pending_delete_at IS NOT NULL
                            AND s.pbx_id IS NOT NULL) AS pending_deletions
                 FROM tenants t ORDER BY t.id",
                &[],
            )
            .await
            .context("listing tenants")?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let Json(config): Json<TenantConfig> = row.get("config");
                TenantSummary {
                    config,
                    last_success_at: row.get("last_success_at"),
                    pending_deletions: row.get("pending_deletions"),
                }
            })
            .collect())
    }

    /// Forgets the delta state, so the next round reads the whole directory.
    pub async fn drop_delta_state(&self, tenant_id: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE tenants SET delta_link = NULL WHERE id = $1",
                &[&tenant_id],
            )
            .await
            .context("dropping the delta state")?;
        Ok(())
    }
}
