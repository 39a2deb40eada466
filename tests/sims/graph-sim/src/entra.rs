//! `POST /{tenant}/oauth2/v2.0/token`: the client credentials grant, with
//! the AADSTS failures a misconfigured app registration runs into.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use serde::Deserialize;
use serde_json::json;

use crate::connection::KillSwitch;
use crate::errors::EntraError;
use crate::faults::fault_response;
use crate::seed::looks_like_guid;
use crate::server::{lock, Sim};
use crate::tenant::Tenant;

pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
const TOKEN_LIFETIME_SECS: u64 = 3599;

#[derive(Deserialize)]
pub struct TokenForm {
    client_id: Option<String>,
    client_secret: Option<String>,
    grant_type: Option<String>,
    scope: Option<String>,
}

pub async fn issue_token(
    State(sim): State<Arc<Sim>>,
    Path(tenant_id): Path<String>,
    ConnectInfo(connection): ConnectInfo<KillSwitch>,
    Form(form): Form<TokenForm>,
) -> Response {
    if !looks_like_guid(&tenant_id) {
        let text = format!(
            "Specified tenant identifier '{tenant_id}' is neither a valid DNS name, nor a valid external domain."
        );
        return EntraError::bad_request("invalid_request", 900023, text).into_response();
    }
    let Some(tenant) = sim.tenant(&tenant_id) else {
        let text = format!(
            "Tenant '{tenant_id}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
        );
        return EntraError::bad_request("invalid_tenant", 90002, text).into_response();
    };
    let mut tenant = lock(&tenant);
    tenant.stats.token_requests += 1;
    let path = format!("/{tenant_id}/oauth2/v2.0/token");
    if let Some(fault) = tenant.faults.take(&path) {
        tenant.stats.faults_served += 1;
        tracing::info!(kind = ?fault.kind, %path, "serving injected fault");
        let url = format!("{}{path}", sim.base_url);
        return fault_response(&fault, &url, &url, &connection);
    }
    if let Err(error) = check_request(&tenant, &form) {
        return error.into_response();
    }
    let access_token = sim.issue_access_token(&tenant);
    Json(json!({
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME_SECS,
        "ext_expires_in": TOKEN_LIFETIME_SECS,
        "access_token": access_token,
    }))
    .into_response()
}

fn required<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str, EntraError> {
    value.as_deref().filter(|v| !v.is_empty()).ok_or_else(|| {
        let text = format!("The request body must contain the following parameter: '{name}'.");
        EntraError::bad_request("invalid_request", 900144, text)
    })
}

/// Checks the form in the order Entra does: grant, client, secret, scope.
fn check_request(tenant: &Tenant, form: &TokenForm) -> Result<(), EntraError> {
    let grant_type = required(&form.grant_type, "grant_type")?;
    if grant_type != "client_credentials" {
        let text = format!("The app requested an unsupported grant type '{grant_type}'.");
        return Err(EntraError::bad_request("unsupported_grant_type", 70003, text));
    }
    let client_id = required(&form.client_id, "client_id")?;
    let settings = &tenant.settings;
    if client_id != settings.client_id {
        let text = format!(
            "Application with identifier '{client_id}' was not found in the directory '{}'.",
            tenant.id
        );
        return Err(EntraError::bad_request("unauthorized_client", 700016, text));
    }
    let secret = required(&form.client_secret, "client_secret")?;
    if secret != settings.client_secret {
        let text = format!(
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
        );
        return Err(EntraError::invalid_client(7000215, text));
    }
    if settings.secret_expired {
        let text = format!(
            "The provided client secret keys for app '{client_id}' are expired. Visit the Azure portal to create new keys for your app."
        );
        return Err(EntraError::invalid_client(7000222, text));
    }
    let scope = required(&form.scope, "scope")?;
    if scope != GRAPH_SCOPE {
        let text = format!(
            "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier."
        );
        return Err(EntraError::bad_request("invalid_scope", 1002012, text));
    }
    Ok(())
}
