//! The tenant ("AD Sync template"): create or replace from the tenant file,
//! show it masked, list, delete.

use std::time::Duration;

use chrono::SecondsFormat;
use serde::Serialize;
use serde_json::Value;
use usersync_core::{parse_tenant_file, tenant::MASK, Problem, TenantConfig};
use usersync_graph::{credentials_of, GraphClient, GraphError};
use usersync_store::{SecretKey, Store, TenantWrite};

use crate::{no_tenant, plan::after_apply_note, AdminError, AdminResult};

/// What a write did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Applied {
    pub id: String,
    /// True when the tenant is new.
    pub created: bool,
    /// The tenant's version now (its `ETag`).
    pub version: i64,
    /// What the operator should know about the next run, when the rules changed.
    pub note: Option<String>,
}

/// What a delete does, said to whoever asked for it.
pub const DELETE_EFFECT: &str = "the tenant and its sync state (runs, users, delta link) are deleted and \
     no run of it starts again; its users in the PBX are left as they are (none is deleted or changed); \
     a run in progress stops at its next step; create the tenant again to sync it anew (a first full read, \
     which adopts the PBX users it finds)";

/// Creates or replaces a tenant from the tenant file's text.
///
/// `path_id`: the id the caller addressed (the API's `{id}`); the file may
/// leave `id` out then, and must not name another. `expected_version`: write
/// only over that version (`If-Match`). A secret given as the mask `********`
/// (what `show` prints) keeps the stored secret. Nothing is saved on any problem.
pub async fn apply(
    store: &Store,
    key: &SecretKey,
    text: &str,
    path_id: Option<&str>,
    expected_version: Option<i64>,
) -> AdminResult<Applied> {
    let text = with_path_id(text, path_id);
    let mut tenant = parse_tenant_file(&text).map_err(AdminError::Invalid)?;
    if let Some(id) = path_id {
        if tenant.id != id {
            return Err(AdminError::Invalid(vec![Problem::new(
                "id",
                format!(
                    "is {:?} but the address names tenant {id:?}; make them the same (or leave id out)",
                    tenant.id
                ),
            )]));
        }
    }
    let previous = store.tenant(&tenant.id, Some(key)).await?;
    keep_masked_secrets(&mut tenant, previous.as_ref().map(|p| &p.config))?;
    if let (Some(expected), None) = (expected_version, &previous) {
        return Err(AdminError::Stale(format!(
            "tenant {:?} does not exist, so it is not at version {expected}; create it without If-Match",
            tenant.id
        )));
    }
    let note = previous
        .as_ref()
        .and_then(|p| after_apply_note(&p.config, &tenant));
    match store.write_tenant(&tenant, key, expected_version).await? {
        TenantWrite::Created { version } => Ok(Applied {
            id: tenant.id,
            created: true,
            version,
            note: None,
        }),
        TenantWrite::Updated { version } => Ok(Applied {
            id: tenant.id,
            created: false,
            version,
            note,
        }),
        TenantWrite::Stale => Err(stale(&tenant.id)),
    }
}

/// The settings a preview runs with, secrets in clear: the stored tenant's,
/// or the unsaved tenant file `text` for it, refused as `apply` refuses it
/// (masked secrets keep the stored ones). Nothing is saved.
pub async fn settings_to_preview(
    store: &Store,
    key: &SecretKey,
    id: &str,
    text: Option<&str>,
) -> AdminResult<TenantConfig> {
    let stored = store
        .tenant(id, Some(key))
        .await?
        .ok_or_else(|| crate::no_tenant(id))?;
    let Some(text) = text else {
        return Ok(stored.config);
    };
    let mut tenant = parse_tenant_file(&with_path_id(text, Some(id))).map_err(AdminError::Invalid)?;
    if tenant.id != id {
        return Err(AdminError::Invalid(vec![Problem::new(
            "id",
            format!(
                "is {:?} but the address names tenant {id:?}; make them the same (or leave id out)",
                tenant.id
            ),
        )]));
    }
    keep_masked_secrets(&mut tenant, Some(&stored.config))?;
    Ok(tenant)
}

fn stale(id: &str) -> AdminError {
    AdminError::Stale(format!(
        "tenant {id:?} was changed since the version this write was made from; \
         read it again (GET /v1/tenants/{id}), redo the change on it and send it with the new ETag"
    ))
}

/// The file with `"id": path_id` added when it is an object without one.
fn with_path_id(text: &str, path_id: Option<&str>) -> String {
    let Some(id) = path_id else {
        return text.to_owned();
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(mut map)) if !map.contains_key("id") => {
            map.insert("id".to_owned(), Value::String(id.to_owned()));
            Value::Object(map).to_string()
        }
        _ => text.to_owned(),
    }
}

/// A secret left masked means "keep the one stored"; without one stored it is an error.
fn keep_masked_secrets(tenant: &mut TenantConfig, previous: Option<&TenantConfig>) -> AdminResult<()> {
    let mut problems = Vec::new();
    if tenant.provider_settings.client_secret == MASK {
        match previous {
            Some(previous) => {
                tenant.provider_settings.client_secret = previous.provider_settings.client_secret.clone()
            }
            None => problems.push(Problem::new(
                "provider_settings.client_secret",
                "is the mask ******** but no secret is stored yet; paste the application's client secret",
            )),
        }
    }
    if let Some(pbx) = tenant.pbx.as_mut() {
        if pbx.api_token == MASK {
            match previous.and_then(|p| p.pbx.as_ref()) {
                Some(stored) => pbx.api_token = stored.api_token.clone(),
                None => problems.push(Problem::new(
                    "pbx.api_token",
                    "is the mask ******** but no PBX token is stored yet; give the company's PBX API token",
                )),
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(AdminError::Invalid(problems))
    }
}

/// One tenant as shown: its file with secrets masked, and its version.
#[derive(Debug, Clone)]
pub struct Shown {
    pub config: TenantConfig,
    pub version: i64,
}

pub async fn show(store: &Store, id: &str) -> AdminResult<Shown> {
    let tenant = crate::require_tenant(store, id).await?;
    Ok(Shown {
        config: tenant.config.masked(),
        version: tenant.version,
    })
}

/// One line of the tenant list.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TenantLine {
    pub id: String,
    pub name: String,
    pub mode: String,
}

/// Every tenant, or the one `only` names.
pub async fn list(store: &Store, only: Option<&str>) -> AdminResult<Vec<TenantLine>> {
    Ok(store
        .tenants()
        .await?
        .into_iter()
        .filter(|t| only.is_none_or(|id| t.config.id == id))
        .map(|t| TenantLine {
            mode: t.config.mode.as_str().to_owned(),
            name: t.config.name,
            id: t.config.id,
        })
        .collect())
}

/// What a delete did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    pub id: String,
    pub deleted: bool,
    /// What happens now, to the sync and to the company's PBX users.
    pub effect: String,
    /// Change-notification subscriptions that could not be deleted at Graph,
    /// each with the reason and when Graph drops it on its own.
    pub subscriptions_left: Vec<String>,
}

/// How long deleting one subscription at Graph may take before the tenant
/// is deleted anyway (Graph drops the subscription when it expires).
const GRAPH_DELETE_TIMEOUT: Duration = Duration::from_secs(30);
/// Keeps the subscription manager off the tenant's rows while it is deleted.
const DELETE_CLAIM: Duration = Duration::from_secs(300);

/// Deletes the tenant, without touching Graph: its change-notification
/// subscriptions there lapse when they expire. See [`delete_with_subscriptions`].
pub async fn delete(store: &Store, id: &str, expected_version: Option<i64>) -> AdminResult<Deleted> {
    if store.delete_tenant(id, expected_version).await? {
        return Ok(Deleted {
            id: id.to_owned(),
            deleted: true,
            effect: DELETE_EFFECT.to_owned(),
            subscriptions_left: Vec::new(),
        });
    }
    match (store.tenant(id, None).await?, expected_version) {
        (Some(_), Some(_)) => Err(stale(id)),
        _ => Err(no_tenant(id)),
    }
}

/// Deletes the tenant after deleting its change-notification subscriptions
/// at Graph, best effort: one that cannot be deleted is named in
/// `subscriptions_left` with the reason and its expiry, and the delete goes on.
pub async fn delete_with_subscriptions(
    store: &Store,
    key: &SecretKey,
    graph: &GraphClient,
    id: &str,
    expected_version: Option<i64>,
) -> AdminResult<Deleted> {
    let tenant = store.tenant(id, Some(key)).await?.ok_or_else(|| no_tenant(id))?;
    if expected_version.is_some_and(|version| version != tenant.version) {
        return Err(stale(id));
    }
    let now = usersync_runtime::clock::now();
    let creds = credentials_of(&tenant.config);
    let mut left = Vec::new();
    for row in store.graph_subscriptions(Some(id), None).await? {
        let (Some(subscription_id), Some(expires_at)) = (&row.subscription_id, row.expires_at) else {
            continue;
        };
        if expires_at <= now {
            continue; // Graph has dropped it already
        }
        // Claimed, so the scheduler does not renew or recreate it meanwhile.
        if !store
            .claim_graph_subscription(id, &row.resource, now, DELETE_CLAIM)
            .await?
        {
            left.push(format!(
                "subscription {subscription_id} on {} is being renewed by the scheduler right now and was \
                 not deleted at Graph; Graph drops it by {}",
                row.resource,
                expires_at.to_rfc3339_opts(SecondsFormat::Secs, true)
            ));
            continue;
        }
        let reason = match tokio::time::timeout(
            GRAPH_DELETE_TIMEOUT,
            graph.delete_subscription(&creds, subscription_id),
        )
        .await
        {
            Ok(Ok(()) | Err(GraphError::SubscriptionNotFound { .. })) => continue,
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!(
                "Microsoft Graph did not answer within {} s",
                GRAPH_DELETE_TIMEOUT.as_secs()
            ),
        };
        left.push(format!(
            "subscription {subscription_id} on {} could not be deleted at Graph ({reason}); Graph drops it by {}",
            row.resource,
            expires_at.to_rfc3339_opts(SecondsFormat::Secs, true)
        ));
    }
    let mut deleted = delete(store, id, expected_version).await?;
    deleted.subscriptions_left = left;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_id_fills_a_missing_id_only() {
        assert_eq!(
            with_path_id(r#"{"name":"A"}"#, Some("acme")),
            r#"{"id":"acme","name":"A"}"#
        );
        assert_eq!(with_path_id(r#"{"id":"x"}"#, Some("acme")), r#"{"id":"x"}"#);
        assert_eq!(with_path_id("not json", Some("acme")), "not json");
    }
}
