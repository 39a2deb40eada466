use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{tenant_body, tenant_path, TestSim, CLIENT_ID, SECRET, TENANT};

const SCOPE: &str = "https://graph.microsoft.com/.default";

fn form<'a>(client_id: &'a str, secret: &'a str, grant: &'a str, scope: &'a str) -> [(&'a str, &'a str); 4] {
    [
        ("client_id", client_id),
        ("client_secret", secret),
        ("grant_type", grant),
        ("scope", scope),
    ]
}

async fn expect_error(response: reqwest::Response, status: StatusCode, error: &str, code: u64) {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["error_codes"], json!([code]));
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "{description}"
    );
    assert!(description.contains("Trace ID: ") && description.contains("Correlation ID: "));
    for field in ["timestamp", "trace_id", "correlation_id"] {
        assert!(body[field].is_string(), "{field} missing");
    }
}

#[tokio::test]
async fn token_errors_carry_entra_codes() {
    let sim = TestSim::start().await;
    sim.create_tenant(tenant_body(0, json!({}))).await;
    let good = form(CLIENT_ID, SECRET, "client_credentials", SCOPE);
    let cases: Vec<(&str, [(&str, &str); 4], StatusCode, &str, u64)> = vec![
        (
            "not-a-guid",
            good,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900023,
        ),
        (
            "99999999-9999-9999-9999-999999999999",
            good,
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            90002,
        ),
        (
            TENANT,
            form("other-app", SECRET, "client_credentials", SCOPE),
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
        ),
        (
            TENANT,
            form(CLIENT_ID, "wrong", "client_credentials", SCOPE),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
        ),
        (
            TENANT,
            form(CLIENT_ID, SECRET, "password", SCOPE),
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
        ),
        (
            TENANT,
            form(CLIENT_ID, SECRET, "client_credentials", "User.Read"),
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
        ),
        (
            TENANT,
            form(CLIENT_ID, SECRET, "client_credentials", ""),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
        ),
    ];
    for (tenant, form, status, error, code) in cases {
        expect_error(sim.token_response(tenant, &form).await, status, error, code).await;
    }

    sim.ok(
        Method::PATCH,
        &tenant_path(""),
        Some(json!({"secret_expired": true})),
    )
    .await;
    let expired = sim.token_response(TENANT, &good).await;
    expect_error(expired, StatusCode::UNAUTHORIZED, "invalid_client", 7000222).await;

    let renewed = json!({"secret_expired": false, "client_secret": "fresh"});
    sim.ok(Method::PATCH, &tenant_path(""), Some(renewed)).await;
    let fresh = form(CLIENT_ID, "fresh", "client_credentials", SCOPE);
    let response = sim.token_response(TENANT, &fresh).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);

    let stats = sim.ok(Method::GET, &tenant_path("/stats"), None).await;
    assert_eq!(
        stats["token_requests"], 7,
        "requests that reached the tenant are counted"
    );
}

#[tokio::test]
async fn graph_demands_a_valid_token_and_consent() {
    let sim = TestSim::start().await;
    sim.create_tenant(tenant_body(1, json!({}))).await;
    let response = sim
        .http
        .get(format!("{}/v1.0/users/delta", sim.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");

    let token = sim.token().await;
    sim.ok(
        Method::PATCH,
        &tenant_path(""),
        Some(json!({"consent_missing": true})),
    )
    .await;
    let denied = sim.graph(&token, "/v1.0/groups").await;
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    let body: Value = denied.json().await.unwrap();
    assert_eq!(body["error"]["code"], "Authorization_RequestDenied");
    assert_eq!(
        body["error"]["message"],
        "Insufficient privileges to complete the operation."
    );

    sim.ok(
        Method::PATCH,
        &tenant_path(""),
        Some(json!({"consent_missing": false})),
    )
    .await;
    assert_eq!(sim.graph(&token, "/v1.0/groups").await.status(), StatusCode::OK);
    sim.ok(Method::POST, &tenant_path("/revoke-tokens"), None).await;
    assert_eq!(
        sim.graph(&token, "/v1.0/groups").await.status(),
        StatusCode::UNAUTHORIZED
    );
}
