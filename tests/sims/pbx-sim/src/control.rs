//! The unauthenticated `/_sim` control API tests use to set the stage and
//! inspect what happened.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::Items;
use crate::company::{Company, CompanyConfig, Number, Stats, Template};
use crate::error::ApiError;
use crate::faults::FaultRequest;
use crate::state::AppState;
use crate::user::{parse_body, NewUser, User};

/// Body of `PUT /_sim/companies/{company}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompanyRequest {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    templates: Vec<Template>,
    #[serde(default)]
    numbers: Vec<Number>,
    #[serde(default)]
    reset: bool,
}

#[derive(Serialize)]
pub struct CompanySummary {
    id: String,
    templates: Vec<Template>,
    numbers: Vec<Number>,
    users: usize,
}

#[derive(Serialize)]
pub struct StatsReport {
    companies: BTreeMap<String, Stats>,
}

type AppRef = State<Arc<AppState>>;

pub async fn put_company(
    State(app): AppRef,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<CompanySummary>, ApiError> {
    let request: CompanyRequest = parse_json(&body)?;
    let config = CompanyConfig {
        token: request.token,
        templates: request.templates,
        numbers: request.numbers,
    };
    let company = app.configure(&id, config, request.reset);
    Ok(Json(CompanySummary {
        id,
        templates: company.templates(),
        numbers: company.numbers(),
        users: company.user_count(),
    }))
}

pub async fn seed_user(
    State(app): AppRef,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let company = known_company(&app, &id)?;
    let fields = NewUser::from_object(&parse_body(&body)?)?;
    let user = company.seed_user(fields)?;
    Ok((StatusCode::CREATED, Json(user)))
}

pub async fn all_users(State(app): AppRef, Path(id): Path<String>) -> Result<Json<Items<User>>, ApiError> {
    let company = known_company(&app, &id)?;
    Ok(Json(Items {
        items: company.all_users(),
    }))
}

pub async fn add_fault(
    State(app): AppRef,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let fault: FaultRequest = parse_json(&body)?;
    known_company(&app, &id)?.add_fault(fault)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn clear_faults(State(app): AppRef, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    known_company(&app, &id)?.clear_faults();
    Ok(StatusCode::NO_CONTENT)
}

pub async fn stats(State(app): AppRef) -> Json<StatsReport> {
    Json(StatsReport {
        companies: app.stats(),
    })
}

pub async fn reset_stats(State(app): AppRef) -> StatusCode {
    app.reset_stats();
    StatusCode::NO_CONTENT
}

fn known_company(app: &AppState, id: &str) -> Result<Arc<Company>, ApiError> {
    app.company(id)
        .ok_or_else(|| ApiError::not_found(format!("company {id} is not configured")))
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| ApiError::bad_request(error.to_string()))
}
