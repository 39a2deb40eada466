//! A tiny scripted HTTP server standing in for the PBX.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Raw path and query, exactly as sent (still percent-encoded).
    pub target: String,
    pub headers: HeaderMap,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn query_value(&self, key: &str) -> Option<String> {
        let query = self.target.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == key).then(|| v.to_string())
        })
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// Send only this many bytes of the body, then cut the connection.
    pub cut_after: Option<usize>,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json".to_string())],
            body: body.to_string(),
            cut_after: None,
        }
    }

    pub fn text(status: u16, content_type: &str, body: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type", content_type.to_string())],
            body: body.to_string(),
            cut_after: None,
        }
    }

    /// The body announced in full (Content-Length), `bytes` of it sent, then
    /// the connection cut: what a client sees when a proxy or the PBX dies mid-answer.
    pub fn cut_after(mut self, bytes: usize) -> Self {
        self.cut_after = Some(bytes);
        self
    }

    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
            cut_after: None,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
}

type Responder = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

#[derive(Clone)]
struct ServerState {
    responder: Responder,
    seen: Arc<Mutex<Vec<Recorded>>>,
}

pub struct TestServer {
    pub base_url: String,
    seen: Arc<Mutex<Vec<Recorded>>>,
}

impl TestServer {
    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    pub fn only_request(&self) -> Recorded {
        let mut requests = self.requests();
        assert_eq!(requests.len(), 1, "expected exactly one request");
        requests.remove(0)
    }
}

/// Starts a server on a free local port that answers every request with `responder`.
pub async fn serve(responder: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> TestServer {
    let state = ServerState {
        responder: Arc::new(responder),
        seen: Arc::new(Mutex::new(Vec::new())),
    };
    let seen = state.seen.clone();
    let app = Router::new().fallback(handle).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    // The socket is already listening, so requests queue until the task runs.
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    TestServer {
        base_url: format!("http://{address}"),
        seen,
    }
}

async fn handle(
    State(state): State<ServerState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let recorded = Recorded {
        method,
        target: uri
            .path_and_query()
            .map(|pq| pq.as_str().to_string())
            .unwrap_or_default(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let reply = (state.responder)(&recorded);
    state.seen.lock().unwrap().push(recorded);
    let status = StatusCode::from_u16(reply.status).unwrap();
    let mut response = match reply.cut_after {
        None => (status, reply.body).into_response(),
        Some(bytes) => {
            let length = reply.body.len();
            let sent = Bytes::from(reply.body.into_bytes()).slice(..bytes);
            // Pending once between the part and the failure, so hyper flushes
            // the headers and the part before it cuts the connection.
            let cut = futures::stream::once(async {
                tokio::task::yield_now().await;
                Err(std::io::Error::other("connection cut by the test server"))
            });
            let chunks = futures::StreamExt::chain(futures::stream::once(async { Ok(sent) }), cut);
            let mut response = (status, axum::body::Body::from_stream(chunks)).into_response();
            response
                .headers_mut()
                .insert(axum::http::header::CONTENT_LENGTH, HeaderValue::from(length));
            response
        }
    };
    for (name, value) in reply.headers {
        response.headers_mut().insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(&value).unwrap(),
        );
    }
    response
}

/// A user object as the contract shows it, with fields this client does not model.
pub fn user_json(id: &str, alias: &str, version: i64) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "alias": alias,
        "first_name": "Anna",
        "surname": "Berg",
        "pstn_fixed": "46812345678",
        "email": "anna@example.com",
        "caller_id": null,
        "template": null,
        "external_id": "obj-1",
        "attributes": {"department": "Sales"},
        "version": version,
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-01-02T00:00:00Z",
        "some_future_field": {"nested": true}
    })
}

pub fn error_json(
    code: &str,
    message: &str,
    field: Option<&str>,
    existing_id: Option<&str>,
) -> serde_json::Value {
    serde_json::json!({"error": code, "message": message, "field": field, "existing_id": existing_id})
}
