//! Who is calling: the bearer token, its scope, its request rate; and the
//! request log line, which names the token's id, never the token.

use std::{num::NonZeroU32, sync::Arc, time::Instant};

use axum::{
    extract::{Request, State},
    http::{header, HeaderValue},
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{clock::Clock, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::{error::ApiError, AppState};

/// The caller of a `/v1` request, put in the request's extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    /// The one tenant the token may see; `None`: every tenant.
    pub tenant: Option<String>,
}

impl Caller {
    pub fn may_see(&self, tenant_id: &str) -> bool {
        self.tenant.as_deref().is_none_or(|own| own == tenant_id)
    }

    /// A tenant the token may not see answers exactly like a missing one.
    pub fn check(&self, tenant_id: &str) -> Result<(), ApiError> {
        if self.may_see(tenant_id) {
            Ok(())
        } else {
            Err(ApiError::no_tenant(tenant_id))
        }
    }
}

/// Per-token buckets: the only in-process state, and one that may differ
/// between replicas without harm (each replica limits what it serves).
pub struct RateLimits {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl RateLimits {
    pub fn new(per_minute: NonZeroU32, burst: NonZeroU32) -> RateLimits {
        RateLimits {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
        }
    }

    /// `Err(seconds to wait)` when the token is over its rate.
    fn check(&self, token_id: &str) -> Result<(), u64> {
        self.limiter.check_key(&token_id.to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }
}

/// Authenticates every `/v1` request, limits its rate, and logs it.
pub async fn authenticate(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let authorization = request.headers().get(header::AUTHORIZATION).cloned();
    let caller = match caller(&state, authorization).await {
        Ok(caller) => caller,
        Err(err) => {
            let response = err.into_response();
            tracing::info!(%method, %path, status = response.status().as_u16(), token_id = "-", "request refused");
            return response;
        }
    };
    let token_id = caller.token_id.clone();
    let response = match state.rate_limits.check(&token_id) {
        Ok(()) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(wait) => ApiError::rate_limited(wait).into_response(),
    };
    let status = response.status().as_u16();
    metrics::counter!("usersync_api_requests_total", "status" => status.to_string()).increment(1);
    metrics::histogram!("usersync_api_request_duration_seconds").record(started.elapsed().as_secs_f64());
    tracing::info!(%method, %path, status, %token_id, ms = started.elapsed().as_millis() as u64, "request");
    response
}

async fn caller(state: &AppState, authorization: Option<HeaderValue>) -> Result<Caller, ApiError> {
    let header = authorization
        .as_ref()
        .ok_or_else(|| {
            ApiError::unauthorized(
                "no Authorization header: send `Authorization: Bearer TOKEN` with a token from `usersync api-token create`",
            )
        })?
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not text; send `Bearer TOKEN`"))?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("the Authorization header is not `Bearer TOKEN`"))?;
    let row = usersync_admin::tokens::authenticate(&state.store, token)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| {
            ApiError::unauthorized(
                "the token is unknown or revoked; ask the operator for a new one (`usersync api-token create`)",
            )
        })?;
    Ok(Caller {
        token_id: row.id,
        tenant: row.tenant_id,
    })
}
