//! The PBX contract under `/v1`: a gate (company lookup, counting, auth,
//! faults) in front of the user, template and number handlers.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::company::{Company, Number, Template};
use crate::error::ApiError;
use crate::faults::{Forged, Spoil, Verdict, PROXY_PAGE};
use crate::state::AppState;
use crate::user::{parse_body, User, UserPatch};

const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;
const CURSOR_PREFIX: &str = "c_";

/// Runs in front of every /v1 route: resolves the company (404), counts the
/// request, checks the token (401), applies latency and injected faults, and
/// hands the company to the handler through a request extension.
pub async fn gate(
    State(app): State<Arc<AppState>>,
    Path(params): Path<HashMap<String, String>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(company) = params.get("company").and_then(|id| app.company(id)) else {
        return ApiError::not_found("unknown company").into_response();
    };
    let admission = company.admit(
        request.method(),
        bearer_token(request.headers()),
        &app.default_token,
    );
    let (before, after) = match admission.latency {
        Some(latency) if latency.after => (None, Some(latency.delay)),
        Some(latency) => (Some(latency.delay), None),
        None => (None, None),
    };
    if let Some(delay) = before {
        tokio::time::sleep(delay).await;
    }
    match admission.verdict {
        Verdict::Reject(error) => error.into_response(),
        Verdict::DropBefore => dropped_connection(),
        Verdict::Forge(forged) => forged_response(forged),
        Verdict::Proceed { then } => {
            request.extensions_mut().insert(company);
            let response = next.run(request).await;
            // The write is done; a client that goes away now cannot undo it.
            if let Some(delay) = after {
                tokio::time::sleep(delay).await;
            }
            match then {
                None => response,
                Some(spoil) => spoilt(response, &spoil).await,
            }
        }
    }
}

/// An answer made up in place of the PBX's.
fn forged_response(forged: Forged) -> Response {
    match forged {
        Forged::Html => html_response(StatusCode::OK),
        Forged::Unlisted { status, location } => {
            let text = format!("{status}\n");
            let mut response = (status, [(header::CONTENT_TYPE, "text/plain")], text).into_response();
            if let Some(value) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
    }
}

fn html_response(status: StatusCode) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        PROXY_PAGE,
    )
        .into_response()
}

/// The handled request's answer, spoilt as the fault says.
async fn spoilt(response: Response, spoil: &Spoil) -> Response {
    let (parts, body) = response.into_parts();
    // The sim's own answers are small and in memory: reading one cannot fail.
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let part = spoil.body(&body);
    match spoil {
        Spoil::Drop => dropped_connection(),
        Spoil::Html => html_response(parts.status),
        Spoil::Truncate => {
            // The whole length announced, half sent; pending once between, so
            // hyper flushes the headers and the half before it cuts.
            let cut = futures::stream::once(async {
                tokio::task::yield_now().await;
                Err::<Bytes, _>(io::Error::other("injected cut mid-body"))
            });
            let stream = futures::StreamExt::chain(futures::stream::once(async { Ok(part) }), cut);
            let mut response = Response::from_parts(parts, Body::from_stream(stream));
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            response
        }
        Spoil::Reshape { .. } => {
            let mut response = Response::from_parts(parts, Body::from(part.clone()));
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(part.len()));
            response
        }
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A response whose body fails before its first byte: hyper then closes the
/// connection without sending anything, so the client sees a transport error.
fn dropped_connection() -> Response {
    let failing =
        futures::stream::once(async { Err::<Bytes, _>(io::Error::other("injected connection drop")) });
    Response::new(Body::from_stream(failing))
}

#[derive(Serialize)]
pub struct Items<T> {
    pub items: Vec<T>,
}

#[derive(Serialize)]
pub struct UserPage {
    items: Vec<User>,
    next_cursor: Option<String>,
}

type CompanyExt = axum::Extension<Arc<Company>>;

pub async fn list_users(
    axum::Extension(company): CompanyExt,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<UserPage>, ApiError> {
    let Query(params) = query.map_err(|error| ApiError::bad_request(error.body_text()))?;
    let query = ListQuery::parse(params)?;
    if let Some(external_id) = &query.external_id {
        let found = company.find_by_external_id(external_id);
        return Ok(Json(filtered_page(found, query.alias.as_deref())));
    }
    if let Some(alias) = &query.alias {
        return Ok(Json(filtered_page(company.find_by_alias(alias), None)));
    }
    let page = company.page(query.after, query.limit);
    Ok(Json(UserPage {
        items: page.users,
        next_cursor: page.next_after.map(|after| format!("{CURSOR_PREFIX}{after:x}")),
    }))
}

/// A filtered listing holds at most one user, so it never has a next page.
fn filtered_page(found: Option<User>, alias: Option<&str>) -> UserPage {
    let items = found
        .filter(|user| alias.is_none_or(|alias| user.alias == alias))
        .into_iter()
        .collect();
    UserPage {
        items,
        next_cursor: None,
    }
}

struct ListQuery {
    limit: usize,
    after: Option<u64>,
    external_id: Option<String>,
    alias: Option<String>,
}

impl ListQuery {
    fn parse(params: Vec<(String, String)>) -> Result<Self, ApiError> {
        let mut query = Self {
            limit: DEFAULT_PAGE_SIZE,
            after: None,
            external_id: None,
            alias: None,
        };
        for (name, value) in params {
            match name.as_str() {
                "limit" => query.limit = parse_limit(&value)?,
                "cursor" => query.after = Some(parse_cursor(&value)?),
                "external_id" => query.external_id = Some(value),
                // Aliases are stored lower-cased, so look them up that way.
                "alias" => query.alias = Some(value.to_lowercase()),
                other => {
                    return Err(ApiError::bad_field(
                        other,
                        format!("unknown query parameter `{other}`"),
                    ))
                }
            }
        }
        Ok(query)
    }
}

fn parse_limit(value: &str) -> Result<usize, ApiError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|limit| (1..=MAX_PAGE_SIZE).contains(limit))
        .ok_or_else(|| ApiError::bad_field("limit", "limit must be an integer from 1 to 1000"))
}

fn parse_cursor(value: &str) -> Result<u64, ApiError> {
    value
        .strip_prefix(CURSOR_PREFIX)
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| ApiError::bad_field("cursor", "cursor is not one this server issued"))
}

pub async fn get_user(
    axum::Extension(company): CompanyExt,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<User>, ApiError> {
    company
        .get_user(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("user {id} does not exist")))
}

pub async fn create_user(
    axum::Extension(company): CompanyExt,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request = parse_body(&body)?;
    let key = header_text(&headers, "idempotency-key")?;
    let stored = company.create_user(&request, key)?;
    Ok(json_response(stored.status, stored.body))
}

pub async fn patch_user(
    axum::Extension(company): CompanyExt,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<User>, ApiError> {
    let patch = UserPatch::from_object(&parse_body(&body)?)?;
    let expected_version = header_text(&headers, "if-match")?
        .map(parse_version)
        .transpose()?;
    company.patch_user(&id, &patch, expected_version).map(Json)
}

pub async fn delete_user(
    axum::Extension(company): CompanyExt,
    Path((_, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    company.delete_user(&id).map(|()| StatusCode::NO_CONTENT)
}

pub async fn list_templates(axum::Extension(company): CompanyExt) -> Json<Items<Template>> {
    Json(Items {
        items: company.templates(),
    })
}

pub async fn list_numbers(axum::Extension(company): CompanyExt) -> Json<Items<Number>> {
    Json(Items {
        items: company.numbers(),
    })
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|value| {
            value
                .to_str()
                .map_err(|_| ApiError::bad_request(format!("{name} header is not text")))
        })
        .transpose()
}

/// Accepts `3` as well as the ETag-style `"3"`.
fn parse_version(value: &str) -> Result<u64, ApiError> {
    value
        .trim()
        .trim_matches('"')
        .parse()
        .map_err(|_| ApiError::bad_request("If-Match must be a user version number"))
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Answers unknown paths with the contract's error body.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}
