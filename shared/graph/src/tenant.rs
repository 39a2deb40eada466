//! What a tenant's settings ask of Graph: its credentials, the properties to
//! read and the filter groups by id. Shared by the fetcher's rounds and the
//! live preview, so both read the directory the same way.

use usersync_core::TenantConfig;

use crate::{Credentials, GraphClient, GraphConfig, GraphError, RetryPolicy};

/// Properties read for every user, mapped or not, so fields can be discovered
/// before any mapping exists.
pub const STANDARD_PROPERTIES: &[&str] = &[
    "id",
    "accountEnabled",
    "displayName",
    "givenName",
    "surname",
    "mailNickname",
    "userPrincipalName",
    "mail",
    "businessPhones",
    "mobilePhone",
    "jobTitle",
    "department",
    "officeLocation",
    "preferredLanguage",
    "employeeId",
    "onPremisesExtensionAttributes",
];

/// The tenant's app registration.
pub fn credentials_of(tenant: &TenantConfig) -> Credentials {
    Credentials {
        tenant_id: tenant.provider_settings.tenant_id.clone(),
        client_id: tenant.provider_settings.client_id.clone(),
        client_secret: tenant.provider_settings.client_secret.clone(),
    }
}

/// Standard properties plus every top-level property the mapping reads.
pub fn select_list(tenant: &TenantConfig) -> Vec<String> {
    let mut select: Vec<String> = STANDARD_PROPERTIES.iter().map(|p| (*p).to_owned()).collect();
    for path in tenant.mapped_source_paths() {
        let property = path.top_level_property().to_owned();
        if !select.contains(&property) {
            select.push(property);
        }
    }
    select
}

/// The filter groups named in `memberOf`, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterGroups {
    /// Sorted, without duplicates.
    pub ids: Vec<String>,
    /// One line per name that more than one group carries.
    pub warnings: Vec<String>,
}

impl GraphClient {
    /// The ids of the groups named in `memberOf`; a name matching none is
    /// [`GraphError::GroupNotFound`].
    pub async fn filter_groups(
        &self,
        creds: &Credentials,
        names: &[String],
    ) -> Result<FilterGroups, GraphError> {
        let resolved = self.resolve_groups(creds, names).await?;
        if let Some(missing) = resolved.iter().find(|group| group.ids.is_empty()) {
            return Err(GraphError::GroupNotFound {
                name: missing.name.clone(),
            });
        }
        let mut groups = FilterGroups::default();
        for group in resolved {
            if group.ids.len() > 1 {
                groups.warnings.push(format!(
                    "{} groups are named {:?}: members of all of them are in scope (rename groups in Entra ID, or check provider_settings.user_filter.memberOf)",
                    group.ids.len(),
                    group.name
                ));
            }
            groups.ids.extend(group.ids);
        }
        groups.ids.sort();
        groups.ids.dedup();
        Ok(groups)
    }
}

impl GraphConfig {
    /// From `GRAPH_BASE_URL`, `ENTRA_LOGIN_URL`, `GRAPH_RETRY_ATTEMPTS` and
    /// `GRAPH_RETRY_MAX_WAIT_SECS`; Microsoft's public cloud and the default
    /// retry policy where unset. An outage longer than the retries allow is
    /// [`GraphError::Unavailable`].
    pub fn from_env() -> Result<GraphConfig, String> {
        let defaults = GraphConfig::default();
        let text = |name: &str, default: String| std::env::var(name).unwrap_or(default);
        let number = |name: &str, default: u64| -> Result<u64, String> {
            match std::env::var(name) {
                Err(_) => Ok(default),
                Ok(text) => text.trim().parse().map_err(|_| {
                    format!("{name}={text:?} is not a whole number: set it to e.g. {default}, or unset it")
                }),
            }
        };
        let retry = defaults.retry;
        let attempts = number("GRAPH_RETRY_ATTEMPTS", retry.max_attempts as u64)?;
        let max_wait = number("GRAPH_RETRY_MAX_WAIT_SECS", retry.max_total_wait.as_secs())?;
        Ok(GraphConfig {
            graph_base_url: text("GRAPH_BASE_URL", defaults.graph_base_url),
            login_base_url: text("ENTRA_LOGIN_URL", defaults.login_base_url),
            retry: RetryPolicy {
                max_attempts: usize::try_from(attempts.max(1)).unwrap_or(usize::MAX),
                max_total_wait: std::time::Duration::from_secs(max_wait),
                ..retry
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_names_every_mapped_property_and_account_enabled() {
        let document = serde_json::json!({
            "id": "acme", "name": "Acme AB", "type": "ad_sync", "mode": "user_sync",
            "provider_settings": {"tenant_id": "t", "client_id": "c", "client_secret": "s",
                                  "user_filter": {"memberOf": [""]}},
            "pbx_company_id": "acme",
            "field_mapping": {"alias": "extension_0a1b2c_alias", "first_name": "givenName",
                              "surname": "surname", "pstn_fixed": "businessPhones[0]"},
            "user_field_mapping": {"attributes.cost": "onPremisesExtensionAttributes.extensionAttribute3",
                                   "attributes.fax": "faxNumber"}
        });
        let tenant = usersync_core::parse_tenant_file(&document.to_string()).expect("tenant file");
        let select = select_list(&tenant);
        for property in [
            "extension_0a1b2c_alias",
            "givenName",
            "surname",
            "businessPhones",
            "onPremisesExtensionAttributes",
            "faxNumber",
        ] {
            assert_eq!(
                select.iter().filter(|p| *p == property).count(),
                1,
                "{property} in {select:?}"
            );
        }
        let graph = GraphClient::new(GraphConfig::default());
        let url = graph.users_delta_start_url(&select);
        let query = url.split_once("$select=").expect("a $select").1;
        let selected: Vec<&str> = query.split(',').collect();
        assert!(selected.contains(&"accountEnabled"), "{url}");
        assert!(selected.contains(&"extension_0a1b2c_alias"), "{url}");
    }
}
