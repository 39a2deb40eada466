//! The `/v1` handlers: each checks the caller's scope, calls the shared admin
//! function the CLI calls too, and shapes its answer.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Extension, Json,
};
use serde::{Deserialize, Serialize};
use usersync_admin::{
    approve::{Approval, HeldDeletion},
    status::{FieldInfo, RunDetail, RunSummary, StatusLine},
    tenants::{Applied, Deleted, TenantLine},
};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    auth::Caller,
    error::{ApiError, ApiResult, ErrorBody, ProblemsBody, RefusedBody},
    AppState,
};

type AppStateRef = State<Arc<AppState>>;

/// The version an `If-Match` names (`"3"` or `W/"3"`); `*` (any) is `None`.
/// A value that is no ETag of ours is a malformed request (400).
fn if_match(headers: &HeaderMap) -> ApiResult<Option<i64>> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    if text == "*" {
        return Ok(None);
    }
    let tag = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    tag.parse::<i64>().map(Some).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_if_match",
            format!("If-Match {text:?} is not an ETag of this API (such as \"3\"); send the ETag of GET /v1/tenants/{{id}}"),
        )
    })
}

fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits and quotes are a header value")
}

/// The tenants the token may see.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants",
    responses(
        (status = 200, description = "the tenants the token may see", body = [TenantLine]),
        (status = 401, body = ErrorBody), (status = 429, body = ErrorBody),
    ))]
pub async fn list_tenants(
    State(state): AppStateRef,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<TenantLine>>> {
    Ok(Json(
        usersync_admin::tenants::list(&state.store, caller.tenant.as_deref()).await?,
    ))
}

/// The tenant's file, secrets masked (`********`), with its version as `ETag`.
#[utoipa::path(get, path = "/v1/tenants/{id}", tag = "tenants",
    params(("id" = String, Path, description = "tenant id")),
    responses(
        (status = 200, description = "the tenant file, secrets masked; a PUT of it back keeps the stored secrets",
         body = Object, headers(("ETag" = String, description = "the tenant's version"))),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody),
    ))]
pub async fn get_tenant(
    State(state): AppStateRef,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    caller.check(&id)?;
    let shown = usersync_admin::tenants::show(&state.store, &id).await?;
    let mut response = Json(shown.config).into_response();
    response.headers_mut().insert(header::ETAG, etag(shown.version));
    Ok(response)
}

/// Creates or replaces the tenant from the tenant file's JSON.
///
/// `provider_settings` may be an object or the pasted string. `id` may be left
/// out (it is the path's). A secret sent as `********` keeps the stored one.
/// With `If-Match`, only over that version.
#[utoipa::path(put, path = "/v1/tenants/{id}", tag = "tenants",
    params(("id" = String, Path, description = "tenant id"),
           ("If-Match" = Option<String>, Header, nullable = false, pattern = r#"^(\*|(W/)?"[0-9]+")$"#, description = "the ETag the change was made from")),
    request_body(content = Object, description = "the tenant file", content_type = "application/json"),
    responses(
        (status = 200, description = "replaced", body = Applied, headers(("ETag" = String))),
        (status = 201, description = "created", body = Applied, headers(("ETag" = String))),
        (status = 400, description = "the body is not JSON (`errors`), or If-Match is no ETag (`error`)", body = Object),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 412, description = "stale If-Match", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "every problem, by field; nothing saved", body = ProblemsBody),
        (status = 429, body = ErrorBody),
        (status = 503, description = "USERSYNC_SECRET_KEY is not set (`no_secret_key`)", body = ErrorBody),
    ))]
pub async fn put_tenant(
    State(state): AppStateRef,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    caller.check(&id)?;
    let expected = if_match(&headers)?;
    let key = state.key.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_secret_key",
            "USERSYNC_SECRET_KEY is not set for usersync-api, so secrets cannot be stored; the operator sets it",
        )
    })?;
    let text = std::str::from_utf8(&body).map_err(|_| {
        ApiError::Problems(vec![usersync_core::Problem::new(
            "(document)",
            "is not UTF-8 text; send the tenant file as JSON in UTF-8",
        )])
    })?;
    let applied = match usersync_admin::tenants::apply(&state.store, key, text, Some(&id), expected).await {
        // A body that is not JSON at all is a malformed request.
        Err(usersync_admin::AdminError::Invalid(problems))
            if serde_json::from_str::<serde_json::Value>(text).is_err() =>
        {
            let body = ProblemsBody {
                errors: problems
                    .into_iter()
                    .map(|p| crate::error::FieldProblem {
                        field: p.field,
                        message: p.message,
                    })
                    .collect(),
            };
            return Ok((StatusCode::BAD_REQUEST, Json(body)).into_response());
        }
        other => other?,
    };
    let status = if applied.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let version = applied.version;
    let mut response = (status, Json(applied)).into_response();
    response.headers_mut().insert(header::ETAG, etag(version));
    Ok(response)
}

/// Stops syncing the tenant: deletes it and its sync state. Its PBX users are
/// left as they are. With `If-Match`, only at that version.
#[utoipa::path(delete, path = "/v1/tenants/{id}", tag = "tenants",
    params(("id" = String, Path, description = "tenant id"),
           ("If-Match" = Option<String>, Header, nullable = false, pattern = r#"^(\*|(W/)?"[0-9]+")$"#, description = "the ETag the delete was decided on")),
    responses(
        (status = 200, description = "deleted; `effect` says what happens to the sync and the PBX users", body = Deleted),
        (status = 400, description = "If-Match is no ETag", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 412, body = ErrorBody), (status = 429, body = ErrorBody),
    ))]
pub async fn delete_tenant(
    State(state): AppStateRef,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Deleted>> {
    caller.check(&id)?;
    let expected = if_match(&headers)?;
    // With the key its subscriptions are deleted at Graph first; without it
    // (no tenant could have been written) there are none to delete.
    let deleted = match &state.key {
        Some(key) => {
            usersync_admin::tenants::delete_with_subscriptions(&state.store, key, &state.graph, &id, expected)
                .await?
        }
        None => usersync_admin::tenants::delete(&state.store, &id, expected).await?,
    };
    Ok(Json(deleted))
}

/// A resync request's body; an empty body is `{"full": false}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResyncBody {
    /// Drop the delta state first and read the whole directory.
    #[serde(default)]
    pub full: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ResyncAccepted {
    /// Follow it at `GET /v1/tenants/{id}/runs/{run_id}` (the run it started,
    /// or the run in progress it joined).
    pub run_id: String,
    pub full: bool,
}

/// Reads an optional JSON body: empty is the default; anything else must parse.
fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> ApiResult<T> {
    let text = body.trim_ascii();
    if text.is_empty() || text == b"null" {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|err| {
        let (status, code) = if err.is_syntax() || err.is_eof() {
            (StatusCode::BAD_REQUEST, "malformed_json")
        } else {
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body")
        };
        ApiError::new(status, code, format!("the body is not usable: {err}"))
    })
}

/// Asks for a sync now.
#[utoipa::path(post, path = "/v1/tenants/{id}/resync", tag = "runs",
    params(("id" = String, Path, description = "tenant id")),
    request_body(content = Option<ResyncBody>, content_type = "application/json"),
    responses(
        (status = 202, description = "requested", body = ResyncAccepted),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody),
    ))]
pub async fn resync(
    State(state): AppStateRef,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<ResyncAccepted>)> {
    caller.check(&id)?;
    let body: ResyncBody = optional_json(&body)?;
    let run_id = usersync_admin::resync::request(&state.store, &state.bus, &id, body.full).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ResyncAccepted {
            run_id: run_id.to_string(),
            full: body.full,
        }),
    ))
}

/// Mode, state, last successful sync, last run (with its error), next run.
#[utoipa::path(get, path = "/v1/tenants/{id}/status", tag = "runs",
    params(("id" = String, Path, description = "tenant id")),
    responses(
        (status = 200, body = StatusLine),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody),
    ))]
pub async fn status(
    State(state): AppStateRef,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<StatusLine>> {
    caller.check(&id)?;
    let mut lines = usersync_admin::status::status(&state.store, Some(&id)).await?;
    lines.pop().map(Json).ok_or_else(|| ApiError::no_tenant(&id))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// How many runs, newest first (1 to 200).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// The tenant's runs, newest first.
#[utoipa::path(get, path = "/v1/tenants/{id}/runs", tag = "runs",
    params(("id" = String, Path, description = "tenant id"), RunsQuery),
    responses(
        (status = 200, body = [RunSummary]),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody),
    ))]
pub async fn runs(
    State(state): AppStateRef,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<RunsQuery>,
) -> ApiResult<Json<Vec<RunSummary>>> {
    caller.check(&id)?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit is {limit}; give 1 to 200"),
        ));
    }
    let rows = usersync_admin::status::runs(&state.store, &id, limit).await?;
    Ok(Json(rows.iter().map(RunSummary::from).collect()))
}

/// One run, with its counts so far and the changes still to do while it goes.
#[utoipa::path(get, path = "/v1/tenants/{id}/runs/{run_id}", tag = "runs",
    params(("id" = String, Path, description = "tenant id"),
           ("run_id" = Uuid, Path, description = "a run id, or the run_id a resync answered")),
    responses(
        (status = 200, body = RunDetail),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, description = "no such run of the tenant (yet: a request just made is taken within moments)", body = ErrorBody),
        (status = 429, body = ErrorBody),
    ))]
pub async fn run(
    State(state): AppStateRef,
    Extension(caller): Extension<Caller>,
    Path((id, run_id)): Path<(String, String)>,
) -> ApiResult<Json<RunDetail>> {
    caller.check(&id)?;
    let run_id = Uuid::parse_str(&run_id).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("run id {run_id:?} is not a UUID; use an id from the runs list or a resync's answer"),
        )
    })?;
    usersync_admin::require_tenant(&state.store, &id).await?;
    Ok(Json(
        usersync_admin::status::run(&state.store, &id, run_id).await?,
    ))
}

/// The source fields seen in the directory, with how many users have each and an example.
#[utoipa::path(get, path = "/v1/tenants/{id}/fields", tag = "choices",
    params(("id" = String, Path, description = "tenant id")),
    responses(
        (status = 200, description = "empty before the first successful sync", body = [FieldInfo]),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody),
    ))]
pub async fn fields(
    State(state): AppStateRef,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<FieldInfo>>> {
    caller.check(&id)?;
    Ok(Json(usersync_admin::status::fields(&state.store, &id).await?))
}

/// A company number usable as caller id.
#[derive(Debug, Serialize, ToSchema)]
pub struct NumberItem {
    pub number: String,
    /// `main`, `fixed` or `mobile`.
    pub kind: String,
}

/// A user-settings template.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateItem {
    pub id: String,
    pub name: String,
}

/// The company's numbers, read from the PBX now (for the default caller id).
#[utoipa::path(get, path = "/v1/tenants/{id}/pbx/numbers", tag = "choices",
    params(("id" = String, Path, description = "tenant id")),
    responses(
        (status = 200, body = [NumberItem]),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 502, description = "the PBX did not answer usably", body = ErrorBody),
    ))]
pub async fn pbx_numbers(
    State(state): AppStateRef,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<NumberItem>>> {
    caller.check(&id)?;
    let numbers = state.pbx.numbers(&state.store, &id).await?;
    Ok(Json(
        numbers
            .into_iter()
            .map(|n| NumberItem {
                number: n.number,
                kind: n.kind,
            })
            .collect(),
    ))
}

/// The company's user-settings templates, read from the PBX now (for the default template).
#[utoipa::path(get, path = "/v1/tenants/{id}/pbx/templates", tag = "choices",
    params(("id" = String, Path, description = "tenant id")),
    responses(
        (status = 200, body = [TemplateItem]),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 502, description = "the PBX did not answer usably", body = ErrorBody),
    ))]
pub async fn pbx_templates(
    State(state): AppStateRef,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<TemplateItem>>> {
    caller.check(&id)?;
    let templates = state.pbx.templates(&state.store, &id).await?;
    Ok(Json(
        templates
            .into_iter()
            .map(|t| TemplateItem {
                id: t.id,
                name: t.name,
            })
            .collect(),
    ))
}

/// One user: state, source and mapped values, last change, the next run's decision.
#[utoipa::path(get, path = "/v1/tenants/{id}/users/{user}", tag = "users",
    params(("id" = String, Path, description = "tenant id"),
           ("user" = String, Path, description = "object id, alias, mail or user principal name")),
    responses(
        (status = 200, description = "as `usersync explain ID USER --json`", body = Object),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the key matches several users", body = ErrorBody),
        (status = 429, body = ErrorBody),
    ))]
pub async fn user(
    State(state): AppStateRef,
    Extension(caller): Extension<Caller>,
    Path((id, user)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.check(&id)?;
    Ok(Json(
        usersync_admin::plan::explain(&state.store, &id, &user)
            .await?
            .json,
    ))
}

/// The users whose deletion the mass-deletion guard holds.
#[utoipa::path(get, path = "/v1/tenants/{id}/held-deletions", tag = "users",
    params(("id" = String, Path, description = "tenant id")),
    responses(
        (status = 200, body = [HeldDeletion]),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody),
    ))]
pub async fn held_deletions(
    State(state): AppStateRef,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<HeldDeletion>>> {
    caller.check(&id)?;
    Ok(Json(usersync_admin::approve::held(&state.store, &id).await?))
}

/// Lets the next run delete the held users, and asks for that run now.
#[utoipa::path(post, path = "/v1/tenants/{id}/approve-deletions", tag = "users",
    params(("id" = String, Path, description = "tenant id")),
    responses(
        (status = 200, description = "`approved` is false when nothing was held", body = Approval),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody),
    ))]
pub async fn approve_deletions(
    State(state): AppStateRef,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Approval>> {
    caller.check(&id)?;
    Ok(Json(
        usersync_admin::approve::approve_deletions(&state.store, &state.bus, &id).await?,
    ))
}

/// The body of a preview request: nothing for the settings as saved, or a
/// tenant file (as `PUT /v1/tenants/{id}` takes it) to preview before saving.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct PreviewBody {
    /// The unsaved tenant file; secrets left as the mask `********` keep the stored ones.
    #[schema(value_type = Option<Object>)]
    pub tenant: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewAccepted {
    /// Follow it at `GET /v1/tenants/{id}/preview/{run_id}`.
    pub run_id: String,
}

/// Starts a preview: what the next sync would do, read from the directory now
/// and planned with the settings as they stand (or the unsaved ones given).
/// Writes nothing to the PBX and sends no mail.
#[utoipa::path(post, path = "/v1/tenants/{id}/preview", tag = "preview",
    params(("id" = String, Path, description = "tenant id")),
    request_body(content = Option<PreviewBody>, content_type = "application/json"),
    responses(
        (status = 202, description = "started", body = PreviewAccepted),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "the unsaved tenant file's problems, by field, or a body of the wrong shape", body = RefusedBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    ))]
pub async fn start_preview(
    State(state): AppStateRef,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<PreviewAccepted>)> {
    caller.check(&id)?;
    let body: PreviewBody = optional_json(&body)?;
    let key = state.key.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_secret_key",
            "USERSYNC_SECRET_KEY is not set for usersync-api, so the client secret cannot be read; the operator sets it",
        )
    })?;
    let unsaved = body.tenant.map(|file| match file {
        // The portal's box may hold the file as a string.
        serde_json::Value::String(text) => text,
        other => other.to_string(),
    });
    let tenant =
        usersync_admin::tenants::settings_to_preview(&state.store, key, &id, unsaved.as_deref()).await?;
    let run_id = usersync_preview::start_preview(&state.store, &state.graph, tenant)
        .await
        .map_err(usersync_admin::AdminError::Other)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(PreviewAccepted {
            run_id: run_id.to_string(),
        }),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PreviewQuery {
    /// Only users with this decision: create, update, delete, pending_deletion, skip, held or none.
    pub decision: Option<String>,
    /// Lines to pass over, in object id order.
    #[serde(default)]
    pub offset: i64,
    /// Lines to return, 1 to 1,000.
    #[serde(default = "default_preview_limit")]
    pub limit: i64,
}

fn default_preview_limit() -> i64 {
    100
}

/// A preview: `running`, then `succeeded` with the summary per decision, the
/// warnings and a page of the users' lines (create with its fields, update
/// field by field, deletion on a date, skip with the reasons), or `failed`
/// with why. Kept a day.
#[utoipa::path(get, path = "/v1/tenants/{id}/preview/{run_id}", tag = "preview",
    params(("id" = String, Path, description = "tenant id"),
           ("run_id" = Uuid, Path, description = "the run_id the preview request answered"),
           PreviewQuery),
    responses(
        (status = 200, body = usersync_preview::PreviewReport),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, description = "no such preview of the tenant (or older than a day)", body = ErrorBody),
        (status = 429, body = ErrorBody),
    ))]
pub async fn get_preview(
    State(state): AppStateRef,
    Extension(caller): Extension<Caller>,
    Path((id, run_id)): Path<(String, String)>,
    Query(query): Query<PreviewQuery>,
) -> ApiResult<Json<usersync_preview::PreviewReport>> {
    caller.check(&id)?;
    let run_id = Uuid::parse_str(&run_id).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("preview id {run_id:?} is not a UUID; use the run_id the preview request answered"),
        )
    })?;
    const DECISIONS: [&str; 7] = [
        "create",
        "update",
        "delete",
        "pending_deletion",
        "skip",
        "held",
        "none",
    ];
    if let Some(decision) = query.decision.as_deref().filter(|d| !DECISIONS.contains(d)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!(
                "decision {decision:?} is none of {}; leave it out for all",
                DECISIONS.join(", ")
            ),
        ));
    }
    if !(1..=usersync_preview::MAX_PAGE).contains(&query.limit) || query.offset < 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!(
                "limit must be 1 to {} and offset 0 or more; got limit {} and offset {}",
                usersync_preview::MAX_PAGE,
                query.limit,
                query.offset
            ),
        ));
    }
    let report = usersync_preview::get_preview(
        &state.store,
        &id,
        run_id,
        query.decision.as_deref(),
        query.offset,
        query.limit,
    )
    .await
    .map_err(usersync_admin::AdminError::Other)?
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("tenant {id:?} has no preview {run_id} (previews are kept a day)"),
        )
    })?;
    Ok(Json(report))
}
