//! Shared harness: a simulator on an ephemeral port plus request helpers.

#![allow(dead_code)] // each test binary uses a different subset

use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub const TOKEN: &str = "test-token";
pub const COMPANY: &str = "acme";
pub const MAIN_NUMBER: &str = "46812345600";

pub struct Sim {
    pub base: String,
    pub client: Client,
}

impl Sim {
    /// Starts a simulator with company `acme` (one template, one number).
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(usersync_pbx_sim::serve(listener, TOKEN, std::future::pending()));
        let sim = Self {
            base: format!("http://{addr}"),
            client: Client::new(),
        };
        sim.configure(
            COMPANY,
            json!({
                "templates": [{"id": "standard", "name": "Standard"}],
                "numbers": [{"number": MAIN_NUMBER, "kind": "main"}]
            }),
        )
        .await;
        sim
    }

    pub async fn configure(&self, company: &str, config: Value) {
        let response = self
            .client
            .put(format!("{}/_sim/companies/{company}", self.base))
            .json(&config)
            .send()
            .await
            .expect("configure");
        assert_eq!(response.status(), StatusCode::OK);
    }

    /// An authenticated request to `/v1/companies/acme{path}`.
    pub fn v1(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}/v1/companies/{COMPANY}{path}", self.base))
            .bearer_auth(TOKEN)
    }

    pub fn control(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}/_sim{path}", self.base))
    }

    pub async fn create(&self, body: Value) -> Response {
        self.v1(Method::POST, "/users")
            .json(&body)
            .send()
            .await
            .expect("create request")
    }

    /// Creates a user that must succeed and returns it.
    pub async fn create_ok(&self, body: Value) -> Value {
        let response = self.create(body).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.expect("user json")
    }

    pub async fn add_fault(&self, fault: Value) {
        let response = self
            .control(Method::POST, &format!("/companies/{COMPANY}/faults"))
            .json(&fault)
            .send()
            .await
            .expect("add fault");
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }

    pub async fn all_users(&self) -> Vec<Value> {
        let body: Value = self
            .control(Method::GET, &format!("/companies/{COMPANY}/users"))
            .send()
            .await
            .expect("all users")
            .json()
            .await
            .expect("json");
        body["items"].as_array().cloned().expect("items array")
    }

    pub async fn stats(&self) -> Value {
        let body: Value = self
            .control(Method::GET, "/stats")
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        body["companies"][COMPANY].clone()
    }
}

/// A valid user body; `n` keeps alias, number and external id unique.
pub fn user_body(n: u32) -> Value {
    json!({
        "alias": format!("User.{n}"),
        "first_name": "Test",
        "surname": format!("User {n}"),
        "pstn_fixed": format!("4681{n:07}"),
        "email": format!("user{n}@example.com"),
        "caller_id": MAIN_NUMBER,
        "template": "standard",
        "external_id": format!("ext-{n}"),
        "attributes": {"department": "Sales"}
    })
}

/// Asserts an error answer with the contract's body shape.
pub async fn expect_error(response: Response, status: StatusCode, code: &str, field: Option<&str>) -> Value {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("error json");
    assert_eq!(body["error"], code, "body: {body}");
    assert_eq!(body["field"].as_str(), field, "body: {body}");
    assert!(body["message"].is_string(), "body: {body}");
    assert!(body.get("existing_id").is_some(), "body: {body}");
    body
}
