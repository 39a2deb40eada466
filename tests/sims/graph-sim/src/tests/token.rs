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

/// What a refused token request must answer.
struct Refusal {
    status: StatusCode,
    error: &'static str,
    code: u64,
}

fn bad_request(error: &'static str, code: u64) -> Refusal {
    let status = StatusCode::BAD_REQUEST;
    Refusal { status, error, code }
}

fn unauthorized(code: u64) -> Refusal {
    let status = StatusCode::UNAUTHORIZED;
    Refusal {
        status,
        error: "invalid_client",
        code,
    }
}

async fn expect_refusal(response: reqwest::Response, expected: Refusal) {
    assert_eq!(response.status(), expected.status);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], expected.error, "{body}");
    assert_eq!(body["error_codes"], json!([expected.code]));
    let description = body["error_description"].as_str().unwrap();
    let prefix = format!("AADSTS{}: ", expected.code);
    assert!(description.starts_with(&prefix), "{description}");
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
    let unknown_tenant = "99999999-9999-9999-9999-999999999999";
    let cases = [
        ("not-a-guid", good, bad_request("invalid_request", 900023)),
        (unknown_tenant, good, bad_request("invalid_tenant", 90002)),
        (
            TENANT,
            form("other-app", SECRET, "client_credentials", SCOPE),
            bad_request("unauthorized_client", 700016),
        ),
        (
            TENANT,
            form(CLIENT_ID, "wrong", "client_credentials", SCOPE),
            unauthorized(7000215),
        ),
        (
            TENANT,
            form(CLIENT_ID, SECRET, "password", SCOPE),
            bad_request("unsupported_grant_type", 70003),
        ),
        (
            TENANT,
            form(CLIENT_ID, SECRET, "client_credentials", "User.Read"),
            bad_request("invalid_scope", 1002012),
        ),
        (
            TENANT,
            form(CLIENT_ID, SECRET, "client_credentials", ""),
            bad_request("invalid_request", 900144),
        ),
    ];
    for (tenant, form, expected) in cases {
        expect_refusal(sim.token_response(tenant, &form).await, expected).await;
    }

    sim.ok(
        Method::PATCH,
        &tenant_path(""),
        Some(json!({"secret_expired": true})),
    )
    .await;
    let expired = sim.token_response(TENANT, &good).await;
    expect_refusal(expired, unauthorized(7000222)).await;

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
