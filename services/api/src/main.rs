//! usersync-api: the HTTP API (and web page) of the company admin's AD Sync
//! settings, over the same PostgreSQL and RabbitMQ as the services. Stateless:
//! any number of replicas; only the per-token rate buckets and the change
//! notifications of the open coalescing window live in memory.

mod auth;
mod docs;
mod error;
mod notifications;
mod page;
mod routes;

use std::{net::SocketAddr, num::NonZeroU32, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    extract::Request,
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use tower_http::limit::RequestBodyLimitLayer;
use usersync_admin::pbx::PbxAccess;
use usersync_bus::Bus;
use usersync_runtime::{
    amqp_url, database_url, env_opt, env_or, init_tracing, install_metrics, metrics_router, shutdown_signal,
    Dependency, Health,
};
use usersync_store::{SecretKey, Store};
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::ApiError;

/// PostgreSQL connections of one replica (capped by `DATABASE_POOL_SIZE`).
const POOL_SIZE: usize = 8;
/// Default of `API_BODY_LIMIT`: a tenant file is a few KB.
const DEFAULT_BODY_LIMIT: usize = 256 * 1024;

pub struct AppState {
    pub store: Store,
    pub bus: Bus,
    /// Encrypts the secrets of a tenant written; `None` refuses writes with a clear message.
    pub key: Option<SecretKey>,
    pub pbx: PbxAccess,
    /// Reads the directory for previews (the fetcher's settings: `GRAPH_BASE_URL`, `ENTRA_LOGIN_URL`, retries).
    pub graph: usersync_graph::GraphClient,
    pub rate_limits: auth::RateLimits,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "usersync API",
        description = "The company admin's AD Sync settings: the tenant, resyncs and runs, the PBX's and the directory's choices, users. Every `/v1` call carries `Authorization: Bearer TOKEN` (from `usersync api-token create`). Errors are `{\"error\": CODE, \"message\": TEXT}`; a refused tenant file is `422 {\"errors\": [{\"field\", \"message\"}]}`."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The `/v1` routes, Graph's notification routes (no token, no rate limit:
/// their own state) and the OpenAPI document generated from both.
fn api() -> (
    Router<Arc<AppState>>,
    Router<notifications::Intake>,
    utoipa::openapi::OpenApi,
) {
    let (graph, graph_document) = notifications::router().split_for_parts();
    let (v1, mut document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(routes::list_tenants))
        .routes(routes!(
            routes::get_tenant,
            routes::put_tenant,
            routes::delete_tenant
        ))
        .routes(routes!(routes::resync))
        .routes(routes!(routes::status))
        .routes(routes!(routes::runs))
        .routes(routes!(routes::run))
        .routes(routes!(routes::fields))
        .routes(routes!(routes::pbx_numbers))
        .routes(routes!(routes::pbx_templates))
        .routes(routes!(routes::user))
        .routes(routes!(routes::held_deletions))
        .routes(routes!(routes::approve_deletions))
        .routes(routes!(routes::start_preview))
        .routes(routes!(routes::get_preview))
        .split_for_parts();
    document.merge(graph_document);
    (v1, graph, document)
}

/// The OpenAPI document as served (also what the reference page renders).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    api().2
}

fn app(
    state: Arc<AppState>,
    intake: notifications::Intake,
    health: Health,
    metrics: metrics_exporter::Handle,
    body_limit: usize,
) -> Router {
    let (v1, graph, document) = api();
    let document = Arc::new(document);
    let v1 = v1.layer(middleware::from_fn_with_state(state.clone(), auth::authenticate));
    let json_document = document.clone();
    Router::new()
        .merge(v1)
        .route(
            "/openapi.json",
            get(move || std::future::ready(Json(json_document.as_ref().clone()))),
        )
        .route(
            "/docs",
            get(move || std::future::ready(docs::reference_page(&document))),
        )
        .merge(page::router())
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such path; the API is described at /openapi.json and /docs",
            )
        })
        .with_state(state)
        .merge(graph.with_state(intake))
        .merge(metrics_router(metrics, health))
        .layer(RequestBodyLimitLayer::new(body_limit))
        // Outside the limit, so its plain-text 413 is rewritten too.
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            json_refusals(request, next, body_limit)
        }))
}

mod metrics_exporter {
    pub type Handle = metrics_exporter_prometheus::PrometheusHandle;
}

/// Refusals made below the handlers (an oversized body, a method the path
/// does not have) come as plain text; they get the JSON error shape too.
async fn json_refusals(request: Request, next: Next, body_limit: usize) -> Response {
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || response.status().is_success() {
        return response;
    }
    match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            // The body was left unread, so the connection cannot carry another
            // request: say so, or a client reusing it gets a closed socket.
            let mut refused = ApiError::too_large(body_limit).into_response();
            refused
                .headers_mut()
                .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            refused
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            let allow = response.headers().get(header::ALLOW).cloned();
            let mut refused = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this path does not take that method; see /openapi.json",
            )
            .into_response();
            if let Some(allow) = allow {
                refused.headers_mut().insert(header::ALLOW, allow);
            }
            refused
        }
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY | StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            let status = response.status();
            let text = axum::body::to_bytes(response.into_body(), 64 * 1024)
                .await
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            ApiError::new(status, "bad_request", text).into_response()
        }
        _ => response,
    }
}

fn nonzero_env(name: &str, default: u32) -> anyhow::Result<NonZeroU32> {
    let text = env_or(name, &default.to_string());
    text.parse::<NonZeroU32>().with_context(|| {
        format!("{name}={text:?} is not a whole number above 0; leave it unset for {default}")
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let addr_text = env_or("API_ADDR", "127.0.0.1:8080");
    let addr: SocketAddr = addr_text
        .parse()
        .with_context(|| format!("API_ADDR={addr_text:?} is not an address such as 127.0.0.1:8080"))?;
    let body_limit = match env_opt("API_BODY_LIMIT") {
        None => DEFAULT_BODY_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1024)
            .with_context(|| format!("API_BODY_LIMIT={text:?} is not a number of bytes of at least 1024"))?,
    };
    let rate_limits = auth::RateLimits::new(
        nonzero_env("API_RATE_PER_MINUTE", 1200)?,
        nonzero_env("API_RATE_BURST", 100)?,
    );
    let metrics = install_metrics()?;
    let health = Health::new(&[Dependency::Database, Dependency::Broker]);
    let store = Store::connect_waiting(&database_url(), POOL_SIZE, &health).await?;
    health.up(Dependency::Database);
    health.watch(Dependency::Database, store.probe());
    let bus = Bus::start(&amqp_url(), "usersync-api", &health).await?;
    let key = SecretKey::from_env().ok();
    if key.is_none() {
        tracing::warn!(
            "USERSYNC_SECRET_KEY is not set: tenant writes and change notifications are refused until it is"
        );
    }
    let window = Duration::from_millis(nonzero_env("USERSYNC_NOTIFICATION_WINDOW_MS", 500)?.get().into());
    let (intake, coalescer) = match &key {
        Some(key) => {
            let (intake, bodies) = notifications::Intake::channel(notifications::QUEUE_CAPACITY);
            let coalescer = notifications::Coalescer::new(store.clone(), key.clone(), bus.clone(), window);
            (intake, Some(tokio::spawn(coalescer.run(bodies))))
        }
        None => (notifications::Intake::without_key(), None),
    };
    let state = Arc::new(AppState {
        store,
        bus: bus.clone(),
        pbx: PbxAccess {
            http: usersync_pbx::PbxClient::http()
                .map_err(|err| anyhow::anyhow!("building the PBX HTTP client: {}", err.describe()))?,
            default: usersync_pbx::PbxTarget::from_env(),
            key: key.clone(),
        },
        key,
        graph: usersync_graph::GraphClient::new(
            usersync_graph::GraphConfig::from_env().map_err(anyhow::Error::msg)?,
        ),
        rate_limits,
    });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding API_ADDR {addr}"))?;
    tracing::info!(%addr, "serving the API, the page, /openapi.json, /docs, /metrics and /healthz");
    axum::serve(listener, app(state, intake, health, metrics, body_limit))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving the API")?;
    // The server dropped the intake: the coalescer flushes its last window and ends.
    if let Some(coalescer) = coalescer {
        if tokio::time::timeout(Duration::from_secs(10), coalescer)
            .await
            .is_err()
        {
            tracing::warn!("the last window of change notifications was not published within 10 s");
        }
    }
    bus.close().await;
    Ok(())
}
