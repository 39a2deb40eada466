//! Everything the simulator knows about one company, behind one lock that is
//! only ever held for in-memory work (never across an await).

use std::collections::HashMap;
use std::time::Instant;

use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use chrono::Utc;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::directory::{Directory, Page};
use crate::error::ApiError;
use crate::faults::{FaultRequest, Faults, Latency, Verdict};
use crate::user::{NewUser, User, UserPatch};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumberKind {
    Main,
    Fixed,
    Mobile,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Number {
    pub number: String,
    pub kind: NumberKind,
}

/// The company settings a test controls; `token: None` means the
/// simulator-wide default token is accepted.
#[derive(Debug, Clone, Default)]
pub struct CompanyConfig {
    pub token: Option<String>,
    pub templates: Vec<Template>,
    pub numbers: Vec<Number>,
}

/// Per-company request counters, as reported by `GET /_sim/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Every /v1 request received for the company, whatever its outcome.
    pub requests: u64,
    /// Every /v1 POST, PATCH or DELETE received, whatever its outcome.
    pub writes: u64,
    pub posts: u64,
    pub patches: u64,
    pub deletes: u64,
    /// POSTs answered from the idempotency record instead of creating.
    pub idempotent_replays: u64,
    /// Requests answered 429 (injected, throttled or over the rate limit).
    pub throttled: u64,
    /// Users actually created, changed or deleted through /v1.
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
}

impl Stats {
    fn count_request(&mut self, method: &Method) {
        self.requests += 1;
        let counter = match *method {
            Method::POST => &mut self.posts,
            Method::PATCH => &mut self.patches,
            Method::DELETE => &mut self.deletes,
            _ => return,
        };
        *counter += 1;
        self.writes += 1;
    }
}

/// The first answer given to a POST with an `Idempotency-Key`.
#[derive(Debug, Clone)]
struct IdempotentOutcome {
    request: Map<String, Value>,
    status: StatusCode,
    body: Bytes,
}

/// A response to send as-is (used for idempotent replays).
pub struct StoredResponse {
    pub status: StatusCode,
    pub body: Bytes,
}

/// The result of a request that got past the gate: how long to wait first
/// and what to do.
pub struct Admission {
    pub latency: Option<Latency>,
    pub verdict: Verdict,
}

#[derive(Debug, Default)]
struct CompanyState {
    config: CompanyConfig,
    directory: Directory,
    idempotency: HashMap<String, IdempotentOutcome>,
    faults: Faults,
    stats: Stats,
}

#[derive(Debug, Default)]
pub struct Company {
    state: Mutex<CompanyState>,
}

impl Company {
    pub fn new(config: CompanyConfig) -> Self {
        let company = Self::default();
        company.state.lock().config = config;
        company
    }

    /// Replaces the settings; with `reset` also forgets users, idempotency
    /// records and faults (stats are kept; see `/_sim/stats/reset`).
    pub fn configure(&self, config: CompanyConfig, reset: bool) {
        let mut state = self.state.lock();
        state.config = config;
        if reset {
            state.directory.clear();
            state.idempotency.clear();
            state.faults = Faults::default();
        }
    }

    pub fn user_count(&self) -> usize {
        self.state.lock().directory.len()
    }

    /// Counts the request, checks the token and consults the faults.
    pub fn admit(&self, method: &Method, bearer: Option<&str>, default_token: &str) -> Admission {
        let mut state = self.state.lock();
        state.stats.count_request(method);
        let expected = state.config.token.as_deref().unwrap_or(default_token);
        let verdict = if bearer == Some(expected) {
            state.faults.judge(method, Instant::now())
        } else {
            Verdict::Reject(ApiError::unauthorized())
        };
        if matches!(&verdict, Verdict::Reject(error) if error.is_rate_limited()) {
            state.stats.throttled += 1;
        }
        Admission {
            latency: state.faults.latency(),
            verdict,
        }
    }

    pub fn add_fault(&self, fault: FaultRequest) -> Result<(), ApiError> {
        self.state.lock().faults.add(fault, Instant::now())
    }

    pub fn clear_faults(&self) {
        self.state.lock().faults = Faults::default();
    }

    pub fn stats(&self) -> Stats {
        self.state.lock().stats
    }

    pub fn reset_stats(&self) {
        self.state.lock().stats = Stats::default();
    }

    pub fn templates(&self) -> Vec<Template> {
        self.state.lock().config.templates.clone()
    }

    pub fn numbers(&self) -> Vec<Number> {
        self.state.lock().config.numbers.clone()
    }

    pub fn get_user(&self, id: &str) -> Option<User> {
        self.state.lock().directory.get(id).cloned()
    }

    pub fn find_by_alias(&self, alias: &str) -> Option<User> {
        self.state.lock().directory.find_by_alias(alias).cloned()
    }

    pub fn find_by_external_id(&self, external_id: &str) -> Option<User> {
        self.state
            .lock()
            .directory
            .find_by_external_id(external_id)
            .cloned()
    }

    pub fn page(&self, after: Option<u64>, limit: usize) -> Page {
        self.state.lock().directory.page(after, limit)
    }

    pub fn all_users(&self) -> Vec<User> {
        self.state.lock().directory.all()
    }

    /// Creates a user from a control-API seed: same rules, no counters.
    pub fn seed_user(&self, fields: NewUser) -> Result<User, ApiError> {
        self.state.lock().insert_new(fields)
    }

    /// Creates a user for a /v1 POST, honouring an idempotency key: a repeat
    /// with the same body replays the first answer, a refusal (409, 422) as
    /// much as a 201. Injected faults come before and are never recorded.
    pub fn create_user(
        &self,
        request: &Map<String, Value>,
        idempotency_key: Option<&str>,
    ) -> Result<StoredResponse, ApiError> {
        let mut state = self.state.lock();
        if let Some(key) = idempotency_key {
            if let Some(first) = state.idempotency.get(key) {
                if first.request != *request {
                    return Err(ApiError::bad_request(
                        "Idempotency-Key was already used with a different body",
                    ));
                }
                let replay = StoredResponse {
                    status: first.status,
                    body: first.body.clone(),
                };
                state.stats.idempotent_replays += 1;
                return Ok(replay);
            }
        }
        let inserted = NewUser::from_object(request).and_then(|fields| state.insert_new(fields));
        let response = match (inserted, idempotency_key) {
            (Ok(user), _) => {
                state.stats.created += 1;
                StoredResponse {
                    status: StatusCode::CREATED,
                    body: to_json_bytes(&user),
                }
            }
            (Err(error), None) => return Err(error),
            // A refusal is the first answer too: the contract replays it, status included.
            (Err(error), Some(_)) => StoredResponse {
                status: error.status(),
                body: error.body(),
            },
        };
        if let Some(key) = idempotency_key {
            let outcome = IdempotentOutcome {
                request: request.clone(),
                status: response.status,
                body: response.body.clone(),
            };
            state.idempotency.insert(key.to_owned(), outcome);
        }
        Ok(response)
    }

    /// Applies a PATCH; an `expected_version` that differs from the stored
    /// one is a 412. A patch that changes nothing leaves the version alone.
    pub fn patch_user(
        &self,
        id: &str,
        patch: &UserPatch,
        expected_version: Option<u64>,
    ) -> Result<User, ApiError> {
        let mut state = self.state.lock();
        let current = state
            .directory
            .get(id)
            .ok_or_else(|| ApiError::not_found(format!("user {id} does not exist")))?;
        if expected_version.is_some_and(|expected| expected != current.version) {
            return Err(ApiError::stale(current.version));
        }
        let mut updated = current.patched(patch);
        if updated == *current {
            return Ok(updated);
        }
        state
            .config
            .check_references(flatten(&patch.caller_id), flatten(&patch.template))?;
        state.directory.check_unique(&updated)?;
        updated.version += 1;
        updated.updated_at = Utc::now();
        state.directory.upsert(updated.clone());
        state.stats.updated += 1;
        Ok(updated)
    }

    pub fn delete_user(&self, id: &str) -> Result<(), ApiError> {
        let mut state = self.state.lock();
        state
            .directory
            .remove(id)
            .ok_or_else(|| ApiError::not_found(format!("user {id} does not exist")))?;
        state.stats.deleted += 1;
        Ok(())
    }
}

impl CompanyState {
    fn insert_new(&mut self, fields: NewUser) -> Result<User, ApiError> {
        self.config
            .check_references(fields.caller_id.as_deref(), fields.template.as_deref())?;
        let user = User::create(Uuid::new_v4().to_string(), fields, Utc::now());
        self.directory.check_unique(&user)?;
        self.directory.upsert(user.clone());
        Ok(user)
    }
}

impl CompanyConfig {
    /// 422 unless the caller id is a company number and the template exists.
    fn check_references(&self, caller_id: Option<&str>, template: Option<&str>) -> Result<(), ApiError> {
        if let Some(caller_id) = caller_id {
            if !self.numbers.iter().any(|n| n.number == caller_id) {
                return Err(ApiError::validation(
                    "caller_id",
                    format!("{caller_id} is not one of the company's numbers"),
                ));
            }
        }
        if let Some(template) = template {
            if !self.templates.iter().any(|t| t.id == template) {
                return Err(ApiError::validation(
                    "template",
                    format!("template {template} does not exist"),
                ));
            }
        }
        Ok(())
    }
}

fn flatten(value: &Option<Option<String>>) -> Option<&str> {
    value.as_ref().and_then(|inner| inner.as_deref())
}

/// Serialises a value we built ourselves; a failure would be a bug here.
pub fn to_json_bytes<T: Serialize>(value: &T) -> Bytes {
    match serde_json::to_vec(value) {
        Ok(bytes) => Bytes::from(bytes),
        Err(error) => {
            tracing::error!(%error, "could not serialise a response");
            Bytes::from_static(b"null")
        }
    }
}
