//! A simulator of the hosted PBX ("Infinity") user API, for tests, the demo
//! and benchmarks. `/v1` follows the PBX contract; `/_sim` lets a test
//! configure companies, seed users, inject faults and read counters.

mod api;
mod company;
mod control;
mod directory;
mod error;
mod faults;
mod state;
mod user;

use std::sync::Arc;

use axum::routing::{get, post, put};
use axum::{middleware, Router};
use tokio::net::TcpListener;

pub use company::Stats;

use state::AppState;

/// The whole simulator. `default_token` is accepted for every company that
/// has not been given its own token.
pub fn router(default_token: impl Into<String>) -> Router {
    let state = Arc::new(AppState::new(default_token.into()));
    let company_api = Router::new()
        .route(
            "/v1/companies/{company}/users",
            get(api::list_users).post(api::create_user),
        )
        .route(
            "/v1/companies/{company}/users/{id}",
            get(api::get_user).patch(api::patch_user).delete(api::delete_user),
        )
        .route("/v1/companies/{company}/templates", get(api::list_templates))
        .route("/v1/companies/{company}/numbers", get(api::list_numbers))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), api::gate));
    let control_api = Router::new()
        .route("/_sim/companies/{company}", put(control::put_company))
        .route(
            "/_sim/companies/{company}/users",
            get(control::all_users).post(control::seed_user),
        )
        .route(
            "/_sim/companies/{company}/faults",
            post(control::add_fault).delete(control::clear_faults),
        )
        .route("/_sim/stats", get(control::stats))
        .route("/_sim/stats/reset", post(control::reset_stats));
    company_api
        .merge(control_api)
        .fallback(api::not_found)
        .with_state(state)
}

/// Serves the simulator on `listener` until the future is dropped or
/// `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    default_token: impl Into<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(default_token))
        .with_graceful_shutdown(shutdown)
        .await
}
