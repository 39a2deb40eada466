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
    ("index.html", HTML, include_str!("../assets/index.html")),
    ("style.css", CSS, include_str!("../assets/style.css")),
    ("app.js", JS, include_str!("../assets/app.js")),
    ("api.js", JS, include_str!("../assets/api.js")),
    ("i18n.js", JS, include_str!("../assets/i18n.js")),
    (
        "provider-settings.js",
        JS,
        include_str!("../assets/provider-settings.js"),
    ),
];

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
// ES modules load only with a JavaScript media type.
const JS: &str = "text/javascript; charset=utf-8";

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
