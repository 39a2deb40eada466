//! In-process HTTP tests: each test starts the real server on 127.0.0.1:0
//! and talks to it with reqwest, as the fetcher would.

mod faults;
mod groups;
mod scale;
mod sdk;
mod subscriptions;
mod token;
mod users_delta;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::server::{serve, Sim};

pub const TENANT: &str = "11111111-1111-1111-1111-111111111111";
pub const CLIENT_ID: &str = "22222222-2222-2222-2222-222222222222";
pub const SECRET: &str = "s3cret";

pub struct TestSim {
    pub base: String,
    pub http: reqwest::Client,
}

/// Everything a round returned, page by page.
pub struct Collected {
    pub pages: Vec<Value>,
    pub delta_link: String,
}

impl Collected {
    pub fn items(&self) -> Vec<Value> {
        self.pages
            .iter()
            .flat_map(|page| page["value"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

/// A control API path under the test tenant.
pub fn tenant_path(rest: &str) -> String {
    format!("/_sim/tenants/{TENANT}{rest}")
}

/// A tenant body with sensible defaults; `extra` fields override them.
pub fn tenant_body(users: u64, extra: Value) -> Value {
    let mut body = json!({
        "tenant_id": TENANT,
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "seed": 42,
        "users": users,
    });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    body
}

impl TestSim {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(serve(listener, Sim::new(&base)));
        TestSim {
            base,
            http: reqwest::Client::new(),
        }
    }

    /// Calls the control API and returns status and body (JSON, else as a string).
    pub async fn control(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        // Rejections by axum's extractors come as plain text.
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    /// A control call that must succeed.
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, json) = self.control(method, path, body).await;
        assert!(status.is_success(), "{path}: {status} {json}");
        json
    }

    pub async fn create_tenant(&self, body: Value) -> Value {
        self.ok(Method::POST, "/_sim/tenants", Some(body)).await
    }

    pub async fn token_response(&self, tenant: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let url = format!("{}/{tenant}/oauth2/v2.0/token", self.base);
        self.http.post(url).form(form).send().await.unwrap()
    }

    pub async fn token(&self) -> String {
        let form = [
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("grant_type", "client_credentials"),
            ("scope", "https://graph.microsoft.com/.default"),
        ];
        let response = self.token_response(TENANT, &form).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// A Graph GET with the bearer token; `url` may be relative to the base.
    pub async fn graph(&self, token: &str, url: &str) -> reqwest::Response {
        let url = if url.starts_with("http") {
            url.to_owned()
        } else {
            format!("{}{url}", self.base)
        };
        self.http.get(url).bearer_auth(token).send().await.unwrap()
    }

    pub async fn graph_json(&self, token: &str, url: &str) -> Value {
        let response = self.graph(token, url).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{url}: {body}");
        body
    }

    /// Follows nextLinks exactly as given until a page carries a deltaLink.
    pub async fn round(&self, token: &str, start: &str) -> Collected {
        let mut pages = Vec::new();
        let mut url = start.to_owned();
        loop {
            let page = self.graph_json(token, &url).await;
            let next = page["@odata.nextLink"].as_str().map(str::to_owned);
            let delta = page["@odata.deltaLink"].as_str().map(str::to_owned);
            assert!(page["@odata.context"].is_string());
            pages.push(page);
            match (next, delta) {
                (Some(next), None) => url = next,
                (None, Some(delta_link)) => return Collected { pages, delta_link },
                other => panic!("a page needs exactly one link, got {other:?}"),
            }
        }
    }
}
