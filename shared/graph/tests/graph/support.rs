//! A fake Microsoft: scripted answers and a log of every request it saw.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, post, MethodFilter, MethodRouter};
use axum::Router;
use serde_json::{json, Value};
use usersync_graph::{Credentials, GraphClient, GraphConfig, RetryPolicy};

pub const TENANT: &str = "11111111-2222-3333-4444-555555555555";
pub const SECRET: &str = "s3cr3t-value-never-printed";
pub const TOKEN_PATH: &str = "/11111111-2222-3333-4444-555555555555/oauth2/v2.0/token";

pub fn creds() -> Credentials {
    Credentials {
        tenant_id: TENANT.to_string(),
        client_id: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".to_string(),
        client_secret: SECRET.to_string(),
    }
}

/// Fast retries so the tests stay quick; large enough to measure.
pub fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        min_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        max_total_wait: Duration::from_secs(5),
    }
}

/// Stands for the fake's base URL in the bodies [`graph_with`] serves, so a
/// canned page can carry links to the fake itself (the only host the client follows).
pub const BASE: &str = "{base}";

/// One canned HTTP answer.
#[derive(Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Option<Value>,
    raw: Option<(String, Vec<u8>)>,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Some(body),
            raw: None,
        }
    }

    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: None,
            raw: None,
        }
    }

    /// A body as given, with its content type: HTML from a proxy, broken JSON, …
    pub fn raw(status: u16, content_type: &str, body: &[u8]) -> Self {
        Self {
            raw: Some((content_type.to_owned(), body.to_vec())),
            ..Self::empty(status)
        }
    }

    /// [`BASE`] in the JSON body's strings replaced with `base`.
    fn on(mut self, base: &str) -> Self {
        if let Some(body) = &self.body {
            let text = body.to_string().replace(BASE, base);
            self.body = Some(serde_json::from_str(&text).expect("JSON after replacing {base}"));
        }
        self
    }

    /// Graph's documented error body.
    pub fn graph_error(status: u16, code: &str, message: &str) -> Self {
        Self::json(
            status,
            json!({"error": {"code": code, "message": message,
                   "innerError": {"request-id": "r-1", "date": "2024-01-01T00:00:00"}}}),
        )
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).expect("valid status");
        let mut response = match (self.raw, self.body) {
            (Some((content_type, raw)), _) => {
                (status, [(axum::http::header::CONTENT_TYPE, content_type)], raw).into_response()
            }
            (None, Some(body)) => (status, axum::Json(body)).into_response(),
            (None, None) => status.into_response(),
        };
        for (name, value) in &self.headers {
            response.headers_mut().insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                value.parse().expect("header value"),
            );
        }
        response
    }
}

/// A GET route answering the replies in order; the last one repeats.
pub fn scripted(replies: Vec<Reply>) -> MethodRouter {
    in_order(MethodFilter::GET, replies)
}

/// Like [`scripted`], for POST (the token endpoint).
pub fn scripted_post(replies: Vec<Reply>) -> MethodRouter {
    in_order(MethodFilter::POST, replies)
}

/// Like [`scripted`], for any method (PATCH, DELETE, …).
pub fn scripted_on(method: MethodFilter, replies: Vec<Reply>) -> MethodRouter {
    in_order(method, replies)
}

fn in_order(method: MethodFilter, replies: Vec<Reply>) -> MethodRouter {
    let queue = Arc::new(Mutex::new(VecDeque::from(replies)));
    on(method, move || {
        let queue = Arc::clone(&queue);
        async move {
            let mut queue = queue.lock().expect("queue");
            let reply = if queue.len() > 1 {
                queue.pop_front()
            } else {
                queue.front().cloned()
            };
            reply.expect("at least one scripted reply")
        }
    })
}

/// A token endpoint issuing `token-1`, `token-2`, … valid for an hour.
pub fn token_ok() -> MethodRouter {
    let issued = Arc::new(AtomicUsize::new(0));
    post(move || {
        let number = issued.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            Reply::json(
                200,
                json!({"token_type": "Bearer", "expires_in": 3599,
                       "access_token": format!("token-{number}")}),
            )
        }
    })
}

/// What the fake saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    /// The raw query, exactly as sent (still percent-encoded).
    pub query: String,
    pub headers: HeaderMap,
    pub body: String,
}

pub struct Fake {
    pub base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    /// Starts a server on 127.0.0.1:0; `routes` gets its base URL (for absolute links).
    pub async fn start(routes: impl FnOnce(&str) -> Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = routes(&base).layer(middleware::from_fn_with_state(Arc::clone(&seen), record));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, seen }
    }

    pub fn graph_base(&self) -> String {
        format!("{}/v1.0", self.base)
    }

    pub fn config(&self) -> GraphConfig {
        GraphConfig {
            graph_base_url: self.graph_base(),
            login_base_url: self.base.clone(),
            retry: fast_policy(),
        }
    }

    pub fn client(&self) -> GraphClient {
        GraphClient::new(self.config())
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("log").clone()
    }

    pub fn token_requests(&self) -> usize {
        self.requests_to(TOKEN_PATH)
    }

    pub fn requests_to(&self, path: &str) -> usize {
        self.requests().iter().filter(|seen| seen.path == path).count()
    }
}

async fn record(State(seen): State<Arc<Mutex<Vec<Seen>>>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
    seen.lock().expect("log").push(Seen {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        headers: parts.headers.clone(),
        body: String::from_utf8_lossy(&bytes).into_owned(),
    });
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// A standard fake: token endpoint plus one scripted Graph route; [`BASE`] in
/// the replies' bodies is the fake's base URL.
pub async fn graph_with(path: &str, replies: Vec<Reply>) -> Fake {
    let path = path.to_string();
    Fake::start(|base| {
        let replies = replies.into_iter().map(|reply| reply.on(base)).collect();
        Router::new()
            .route(TOKEN_PATH, token_ok())
            .route(&path, scripted(replies))
    })
    .await
}
