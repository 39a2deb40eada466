//! The company admin's web page: static files embedded in the binary at
//! compile time (no build step, no CDN), served at `/` and `/assets/*`.

use axum::{
    extract::Path,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};

/// Every asset: its name under `/assets/`, its media type, its text.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../assets/index.html"),
    ),
    (
        "page.css",
        "text/css; charset=utf-8",
        include_str!("../assets/page.css"),
    ),
];

fn asset(name: &str) -> Response {
    match ASSETS.iter().find(|(asset, _, _)| *asset == name) {
        Some((_, media_type, text)) => ([(header::CONTENT_TYPE, *media_type)], *text).into_response(),
        None => crate::error::ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no asset {name:?}"))
            .into_response(),
    }
}

/// `/` and `/assets/{name}`; no token needed (the page asks for one).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset("index.html") }))
        .route(
            "/assets/{*name}",
            get(|Path(name): Path<String>| async move { asset(&name) }),
        )
}
