//! Shared state, the router and the gate every Graph request passes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use tokio::net::TcpListener;

use crate::connection::{KillSwitch, KillableListener};
use crate::errors::GraphError;
use crate::faults::{fault_response, transform};
use crate::subscriptions::graph as subscriptions;
use crate::tenant::Tenant;
use crate::{control, entra, groups, groups_delta, users_delta};

pub type TenantHandle = Arc<Mutex<Tenant>>;

/// Locks a mutex; a panic in another request must not wedge the simulator.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

struct AccessGrant {
    tenant_id: String,
    instance: u64,
}

pub struct Sim {
    /// Origin used in generated links, e.g. `http://127.0.0.1:8081`.
    pub base_url: String,
    tenants: RwLock<HashMap<String, TenantHandle>>,
    access_tokens: Mutex<HashMap<String, AccessGrant>>,
    /// Outbound calls to subscribers (validation, notifications).
    pub http: reqwest::Client,
}

impl Sim {
    pub fn new(base_url: &str) -> Arc<Self> {
        Arc::new(Sim {
            base_url: base_url.trim_end_matches('/').to_owned(),
            tenants: RwLock::default(),
            access_tokens: Mutex::default(),
            // A proxy from the environment must not stand between the
            // simulator and a local subscriber.
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("an HTTP client with the default TLS setup always builds"),
        })
    }

    pub fn tenant(&self, id: &str) -> Option<TenantHandle> {
        let tenants = self.tenants.read().unwrap_or_else(PoisonError::into_inner);
        tenants.get(&id.to_ascii_lowercase()).cloned()
    }

    /// Adds or replaces a tenant; access tokens of a replaced tenant stop working.
    pub fn insert_tenant(&self, tenant: Tenant) {
        let id = tenant.id.clone();
        self.revoke_access_tokens(&id);
        let mut tenants = self.tenants.write().unwrap_or_else(PoisonError::into_inner);
        tenants.insert(id, Arc::new(Mutex::new(tenant)));
    }

    pub fn issue_access_token(&self, tenant: &Tenant) -> String {
        let token = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let grant = AccessGrant {
            tenant_id: tenant.id.clone(),
            instance: tenant.instance,
        };
        lock(&self.access_tokens).insert(token.clone(), grant);
        token
    }

    pub fn revoke_access_tokens(&self, tenant_id: &str) {
        lock(&self.access_tokens).retain(|_, grant| grant.tenant_id != tenant_id);
    }

    fn tenant_for_bearer(&self, headers: &HeaderMap) -> Option<TenantHandle> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let token = value.strip_prefix("Bearer ")?;
        let (tenant_id, instance) = {
            let tokens = lock(&self.access_tokens);
            let grant = tokens.get(token)?;
            (grant.tenant_id.clone(), grant.instance)
        };
        let tenant = self.tenant(&tenant_id)?;
        let current = lock(&tenant).instance == instance;
        current.then_some(tenant)
    }
}

pub fn router(sim: Arc<Sim>) -> Router {
    let graph = Router::new()
        .route("/v1.0/users/delta", get(users_delta::handle))
        // Graph also takes the function-call form, which Microsoft's SDKs send.
        .route("/v1.0/users/delta()", get(users_delta::handle))
        .route("/v1.0/groups", get(groups::list))
        .route("/v1.0/groups/delta", get(groups_delta::handle))
        .route("/v1.0/groups/delta()", get(groups_delta::handle))
        .route(
            "/v1.0/groups/{id}/transitiveMembers/microsoft.graph.user",
            get(groups::transitive_members),
        )
        .route(
            "/v1.0/subscriptions",
            get(subscriptions::list).post(subscriptions::create),
        )
        .route(
            "/v1.0/subscriptions/{id}",
            get(subscriptions::get_one)
                .patch(subscriptions::renew)
                .delete(subscriptions::delete),
        )
        .route(
            "/v1.0/subscriptions/{id}/reauthorize",
            post(subscriptions::reauthorize),
        )
        .route_layer(middleware::from_fn_with_state(sim.clone(), graph_gate));
    Router::new()
        .merge(graph)
        .route("/{tenant}/oauth2/v2.0/token", post(entra::issue_token))
        .merge(control::routes())
        .with_state(sim)
}

/// Serves until the listener fails; connections can be cut by the `drop` fault.
pub async fn serve(listener: TcpListener, sim: Arc<Sim>) -> std::io::Result<()> {
    let app = router(sim).into_make_service_with_connect_info::<KillSwitch>();
    axum::serve(KillableListener(listener), app).await
}

/// Authenticates, counts, injects faults and checks consent, then hands the
/// tenant to the handler as an extension.
async fn graph_gate(
    State(sim): State<Arc<Sim>>,
    ConnectInfo(connection): ConnectInfo<KillSwitch>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(tenant) = sim.tenant_for_bearer(request.headers()) else {
        return GraphError::new(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token is empty or invalid.",
        )
        .into_response();
    };
    let path = request.uri().path().to_owned();
    let (fault, consent_missing) = {
        let mut tenant = lock(&tenant);
        tenant.stats.count_graph_request(&path);
        let fault = tenant.faults.take(&path);
        if fault.is_some() {
            tenant.stats.faults_served += 1;
        }
        (fault, tenant.settings.consent_missing)
    };
    let mut transforming = None;
    if let Some(fault) = fault {
        tracing::info!(kind = ?fault.kind, %path, "serving injected fault");
        if !fault.kind.transforms_answer() {
            let restart_url = format!("{}{path}", sim.base_url);
            let request_url = format!("{}{}", sim.base_url, request.uri());
            return fault_response(&fault, &restart_url, &request_url, &connection);
        }
        transforming = Some(fault);
    }
    if consent_missing {
        return GraphError::new(
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        )
        .into_response();
    }
    request.extensions_mut().insert(tenant);
    let response = next.run(request).await;
    match transforming {
        Some(fault) if response.status().is_success() => transform(&fault, response).await,
        _ => response,
    }
}
