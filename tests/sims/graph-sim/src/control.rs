//! The control API under `/_sim`: create tenants, change the directory,
//! inject faults, read counters. JSON in and out, no authentication.
//! Every directory change also notifies the tenant's subscriptions (see
//! `subscriptions`, whose own hooks are merged in here).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::directory::{DirError, Directory, Props, SeedGroup};
use crate::faults::{FaultQueue, FaultSpec};
use crate::seed::{guid, looks_like_guid, seeded_users, IdStream};
use crate::server::{lock, Sim, TenantHandle};
use crate::subscriptions::{self, ChangeKind, DirectoryChange};
use crate::tenant::{ExpiryStyle, Tenant, TenantSettings, DEFAULT_TOKEN_MAX_AGE_SECS};

const DEFAULT_PAGE_SIZE: usize = 100;
const DEFAULT_DOMAIN: &str = "contoso.onmicrosoft.com";
/// The seeded user list is paged to 100,000 users by the benchmarks; cap it
/// well above that so a typo cannot eat the machine's memory.
const MAX_SEEDED_USERS: u64 = 1_000_000;

pub fn routes() -> Router<Arc<Sim>> {
    let tenant = "/_sim/tenants/{tenant}";
    Router::new()
        .route("/_sim/tenants", post(create_tenant))
        .route(tenant, patch(update_tenant))
        .route(&format!("{tenant}/users"), get(list_users).post(create_user))
        .route(
            &format!("{tenant}/users/{{id}}"),
            get(get_user).patch(patch_user).delete(delete_user),
        )
        .route(&format!("{tenant}/users/{{id}}/restore"), post(restore_user))
        .route(&format!("{tenant}/groups"), get(list_groups).post(create_group))
        .route(&format!("{tenant}/groups/{{group}}/members"), post(add_member))
        .route(
            &format!("{tenant}/groups/{{group}}/members/{{id}}"),
            delete(remove_member),
        )
        .route(&format!("{tenant}/faults"), post(add_fault).delete(clear_faults))
        .route(&format!("{tenant}/stats"), get(stats))
        .route(
            &format!("{tenant}/expire-delta-tokens"),
            post(expire_delta_tokens),
        )
        .route(&format!("{tenant}/advance-clock"), post(advance_clock))
        .route(&format!("{tenant}/revoke-tokens"), post(revoke_tokens))
        .merge(subscriptions::control::routes())
}

/// A control API failure: `{"error": message}` with a status.
pub struct ControlError(pub StatusCode, pub String);

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<DirError> for ControlError {
    fn from(error: DirError) -> Self {
        match error {
            DirError::NotFound(what) => ControlError(StatusCode::NOT_FOUND, format!("{what} not found")),
            DirError::Conflict(why) => ControlError(StatusCode::CONFLICT, why),
            DirError::Invalid(why) => ControlError(StatusCode::BAD_REQUEST, why),
        }
    }
}

fn invalid(message: impl Into<String>) -> ControlError {
    ControlError(StatusCode::BAD_REQUEST, message.into())
}

pub type Reply = Result<Response, ControlError>;

pub fn tenant_handle(sim: &Sim, id: &str) -> Result<TenantHandle, ControlError> {
    sim.tenant(id)
        .ok_or_else(|| ControlError(StatusCode::NOT_FOUND, format!("tenant {id} not found")))
}

#[derive(Deserialize)]
struct GroupSeed {
    name: String,
    #[serde(default)]
    members: u64,
}

#[derive(Deserialize)]
struct CreateTenant {
    tenant_id: String,
    client_id: String,
    client_secret: String,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    users: u64,
    #[serde(default)]
    groups: Vec<GroupSeed>,
    page_size: Option<usize>,
    #[serde(default)]
    secret_expired: bool,
    #[serde(default)]
    consent_missing: bool,
    #[serde(default)]
    expiry_style: ExpiryStyle,
    token_max_age_secs: Option<u64>,
    domain: Option<String>,
}

/// Creates or replaces a tenant with `users` seeded users. Seeded group
/// `i` gets the first `members` users (by creation index) as direct members.
async fn create_tenant(State(sim): State<Arc<Sim>>, Json(body): Json<CreateTenant>) -> Reply {
    if !looks_like_guid(&body.tenant_id) {
        return Err(invalid("tenant_id must be a GUID"));
    }
    if body.users > MAX_SEEDED_USERS {
        return Err(invalid(format!("at most {MAX_SEEDED_USERS} seeded users")));
    }
    if let Some(group) = body.groups.iter().find(|g| g.members > body.users) {
        return Err(invalid(format!(
            "group {} wants more members than users",
            group.name
        )));
    }
    let page_size = body.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
    if page_size == 0 {
        return Err(invalid("page_size must be at least 1"));
    }
    // Seeding 100,000 users is CPU work: keep it off the async workers.
    let tenant = tokio::task::spawn_blocking(move || build_tenant(body, page_size))
        .await
        .map_err(|e| ControlError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let groups: Vec<Value> = tenant
        .directory
        .groups()
        .map(|(id, g)| json!({"id": id, "name": g.name}))
        .collect();
    let reply = json!({
        "tenant_id": tenant.id,
        "users": tenant.next_user_index,
        "groups": groups,
    });
    tracing::info!(tenant = %tenant.id, users = tenant.next_user_index, "tenant created");
    sim.insert_tenant(tenant);
    Ok((StatusCode::CREATED, Json(reply)).into_response())
}

fn build_tenant(body: CreateTenant, page_size: usize) -> Tenant {
    let domain = body.domain.unwrap_or_else(|| DEFAULT_DOMAIN.to_owned());
    let users = seeded_users(body.seed, &domain, body.users);
    let groups = body
        .groups
        .into_iter()
        .enumerate()
        .map(|(index, group)| SeedGroup {
            id: guid(body.seed, IdStream::Group, index as u64),
            name: group.name,
            member_ids: (0..group.members)
                .map(|i| guid(body.seed, IdStream::User, i))
                .collect(),
        })
        .collect::<Vec<_>>();
    let group_count = groups.len() as u64;
    let settings = TenantSettings {
        client_id: body.client_id,
        client_secret: body.client_secret,
        secret_expired: body.secret_expired,
        consent_missing: body.consent_missing,
        page_size,
        expiry_style: body.expiry_style,
        token_max_age_secs: body.token_max_age_secs.unwrap_or(DEFAULT_TOKEN_MAX_AGE_SECS),
        domain,
    };
    let id = body.tenant_id.to_ascii_lowercase();
    let mut tenant = Tenant::new(id, body.seed, settings, Directory::seeded(users, groups));
    tenant.next_user_index = body.users;
    tenant.next_group_index = group_count;
    tenant
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantPatch {
    client_id: Option<String>,
    client_secret: Option<String>,
    secret_expired: Option<bool>,
    consent_missing: Option<bool>,
    page_size: Option<usize>,
    expiry_style: Option<ExpiryStyle>,
    token_max_age_secs: Option<u64>,
}

async fn update_tenant(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Json(patch): Json<TenantPatch>,
) -> Reply {
    if patch.page_size == Some(0) {
        return Err(invalid("page_size must be at least 1"));
    }
    let handle = tenant_handle(&sim, &id)?;
    let mut tenant = lock(&handle);
    let settings = &mut tenant.settings;
    if let Some(v) = patch.client_id {
        settings.client_id = v;
    }
    if let Some(v) = patch.client_secret {
        settings.client_secret = v;
    }
    if let Some(v) = patch.secret_expired {
        settings.secret_expired = v;
    }
    if let Some(v) = patch.consent_missing {
        settings.consent_missing = v;
    }
    if let Some(v) = patch.page_size {
        settings.page_size = v;
    }
    if let Some(v) = patch.expiry_style {
        settings.expiry_style = v;
    }
    if let Some(v) = patch.token_max_age_secs {
        settings.token_max_age_secs = v;
    }
    Ok(Json(&*settings).into_response())
}

async fn list_users(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Reply {
    let handle = tenant_handle(&sim, &id)?;
    let tenant = lock(&handle);
    let users: Vec<&Props> = tenant
        .directory
        .active_users_after(None)
        .map(|(_, user)| &user.props)
        .collect();
    Ok(Json(json!({"value": users})).into_response())
}

async fn get_user(State(sim): State<Arc<Sim>>, Path((tenant, id)): Path<(String, String)>) -> Reply {
    let handle = tenant_handle(&sim, &tenant)?;
    let tenant = lock(&handle);
    let user = tenant
        .directory
        .active_user(&id)
        .ok_or(DirError::NotFound(format!("user {id}")))?;
    Ok(Json(&user.props).into_response())
}

/// Creates a user from a partial Graph object; without an id, the id is
/// derived from the tenant seed and a creation counter (deterministic).
async fn create_user(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Json(mut props): Json<Props>,
) -> Reply {
    let handle = tenant_handle(&sim, &id)?;
    let mut tenant = lock(&handle);
    if !props.contains_key("id") {
        let index = tenant.next_user_index;
        props.insert("id".into(), json!(guid(tenant.seed, IdStream::User, index)));
        tenant.next_user_index += 1;
    }
    let user = tenant.directory.create_user(props)?.clone();
    let id = user.get("id").and_then(Value::as_str).unwrap_or_default();
    tenant.publish(&[DirectoryChange::user(id, ChangeKind::Created)]);
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

async fn patch_user(
    State(sim): State<Arc<Sim>>,
    Path((tenant, id)): Path<(String, String)>,
    Json(patch): Json<Props>,
) -> Reply {
    let handle = tenant_handle(&sim, &tenant)?;
    let mut tenant = lock(&handle);
    let user = tenant.directory.patch_user(&id, patch)?.clone();
    tenant.publish(&[DirectoryChange::user(&id, ChangeKind::Updated)]);
    Ok(Json(user).into_response())
}

#[derive(Deserialize)]
struct DeleteOptions {
    #[serde(default)]
    hard: bool,
}

async fn delete_user(
    State(sim): State<Arc<Sim>>,
    Path((tenant, id)): Path<(String, String)>,
    Query(options): Query<DeleteOptions>,
) -> Reply {
    let handle = tenant_handle(&sim, &tenant)?;
    let mut tenant = lock(&handle);
    // Read before the deletion: a hard delete forgets the memberships.
    let groups = tenant.directory.groups_containing(&id);
    if options.hard {
        tenant.directory.hard_delete_user(&id)?;
    } else {
        tenant.directory.soft_delete_user(&id)?;
    }
    tenant.publish(&user_and_group_changes(&id, ChangeKind::Deleted, &groups));
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A change to a user, and the membership change it is to each of its groups.
fn user_and_group_changes(id: &str, kind: ChangeKind, groups: &[String]) -> Vec<DirectoryChange> {
    let groups = groups
        .iter()
        .map(|g| DirectoryChange::group(g, ChangeKind::Updated));
    std::iter::once(DirectoryChange::user(id, kind))
        .chain(groups)
        .collect()
}

async fn restore_user(State(sim): State<Arc<Sim>>, Path((tenant, id)): Path<(String, String)>) -> Reply {
    let handle = tenant_handle(&sim, &tenant)?;
    let mut tenant = lock(&handle);
    let user = tenant.directory.restore_user(&id)?.clone();
    let groups = tenant.directory.groups_containing(&id);
    tenant.publish(&user_and_group_changes(&id, ChangeKind::Updated, &groups));
    Ok(Json(user).into_response())
}

async fn list_groups(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Reply {
    let handle = tenant_handle(&sim, &id)?;
    let tenant = lock(&handle);
    let groups: Vec<Value> = tenant
        .directory
        .groups()
        .map(|(id, g)| json!({"id": id, "name": g.name, "members": g.members.keys().collect::<Vec<_>>()}))
        .collect();
    Ok(Json(json!({"value": groups})).into_response())
}

#[derive(Deserialize)]
struct NewGroup {
    name: String,
}

async fn create_group(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Json(body): Json<NewGroup>,
) -> Reply {
    let handle = tenant_handle(&sim, &id)?;
    let mut tenant = lock(&handle);
    let group_id = guid(tenant.seed, IdStream::Group, tenant.next_group_index);
    tenant.next_group_index += 1;
    tenant
        .directory
        .create_group(group_id.clone(), body.name.clone())?;
    tenant.publish(&[DirectoryChange::group(&group_id, ChangeKind::Created)]);
    let reply = json!({"id": group_id, "name": body.name});
    Ok((StatusCode::CREATED, Json(reply)).into_response())
}

#[derive(Deserialize)]
struct NewMember {
    id: String,
}

async fn add_member(
    State(sim): State<Arc<Sim>>,
    Path((tenant, group)): Path<(String, String)>,
    Json(body): Json<NewMember>,
) -> Reply {
    let handle = tenant_handle(&sim, &tenant)?;
    let mut tenant = lock(&handle);
    tenant.directory.add_member(&group, &body.id)?;
    tenant.publish(&[DirectoryChange::group(&group, ChangeKind::Updated)]);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn remove_member(
    State(sim): State<Arc<Sim>>,
    Path((tenant, group, id)): Path<(String, String, String)>,
) -> Reply {
    let handle = tenant_handle(&sim, &tenant)?;
    let mut tenant = lock(&handle);
    tenant.directory.remove_member(&group, &id)?;
    tenant.publish(&[DirectoryChange::group(&group, ChangeKind::Updated)]);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn add_fault(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Json(fault): Json<FaultSpec>,
) -> Reply {
    fault.validate().map_err(invalid)?;
    let handle = tenant_handle(&sim, &id)?;
    lock(&handle).faults.push(fault);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Drops every fault not yet served, e.g. to release a request held by a long fault.
async fn clear_faults(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Reply {
    let handle = tenant_handle(&sim, &id)?;
    lock(&handle).faults = FaultQueue::default();
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn stats(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Reply {
    let handle = tenant_handle(&sim, &id)?;
    let tenant = lock(&handle);
    Ok(Json(&tenant.stats).into_response())
}

async fn expire_delta_tokens(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Reply {
    let handle = tenant_handle(&sim, &id)?;
    lock(&handle).expire_delta_tokens();
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct ClockAdvance {
    seconds: u64,
}

async fn advance_clock(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Json(body): Json<ClockAdvance>,
) -> Reply {
    let handle = tenant_handle(&sim, &id)?;
    let mut tenant = lock(&handle);
    tenant.advance_clock(body.seconds);
    Ok(Json(json!({"now_secs": tenant.now_secs()})).into_response())
}

async fn revoke_tokens(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Reply {
    let handle = tenant_handle(&sim, &id)?;
    let tenant_id = lock(&handle).id.clone();
    sim.revoke_access_tokens(&tenant_id);
    Ok(StatusCode::NO_CONTENT.into_response())
}
