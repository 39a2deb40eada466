//! The company's numbers and user-settings templates, read from its PBX, for
//! the choices of the default caller id and template.

use usersync_pbx::{Number, PbxTarget, Template};
use usersync_store::{SecretKey, Store};

use crate::{no_tenant, AdminError, AdminResult};

/// How to reach the PBX: the environment's, unless the tenant has its own.
#[derive(Clone)]
pub struct PbxAccess {
    pub http: reqwest::Client,
    pub default: PbxTarget,
    /// Decrypts a tenant's own PBX token; without it such a tenant cannot be read.
    pub key: Option<SecretKey>,
}

impl PbxAccess {
    async fn client(&self, store: &Store, id: &str) -> AdminResult<(usersync_pbx::PbxClient, String)> {
        let tenant = store.tenant(id, None).await?.ok_or_else(|| no_tenant(id))?;
        let own = match (&tenant.config.pbx, &self.key) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(AdminError::Upstream(
                    "tenant has its own PBX but USERSYNC_SECRET_KEY is not set here to read its token".into(),
                ))
            }
            (Some(_), Some(key)) => store.tenant(id, Some(key)).await?.and_then(|t| t.config.pbx),
        };
        let own_pair = own.as_ref().map(|p| (p.api_url.as_str(), p.api_token.as_str()));
        let client = self
            .default
            .client(&self.http, own_pair, "API")
            .map_err(AdminError::Upstream)?;
        Ok((client, tenant.config.pbx_company_id))
    }

    pub async fn numbers(&self, store: &Store, id: &str) -> AdminResult<Vec<Number>> {
        let (client, company) = self.client(store, id).await?;
        client
            .list_numbers(&company)
            .await
            .map_err(|err| AdminError::Upstream(err.describe()))
    }

    pub async fn templates(&self, store: &Store, id: &str) -> AdminResult<Vec<Template>> {
        let (client, company) = self.client(store, id).await?;
        client
            .list_templates(&company)
            .await
            .map_err(|err| AdminError::Upstream(err.describe()))
    }
}
