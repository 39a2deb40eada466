use axum::Router;
use serde_json::json;
use usersync_graph::{AuthFailureKind, Credentials, GraphError};

use crate::support::{creds, graph_with, scripted_post, token_ok, Fake, Reply, SECRET, TOKEN_PATH};

#[tokio::test]
async fn token_is_requested_once_then_served_from_the_cache() {
    let fake = Fake::start(|_| Router::new().route(TOKEN_PATH, token_ok())).await;
    let client = fake.client();

    let first = client.token(&creds()).await.expect("token");
    let second = client.token(&creds()).await.expect("token");

    assert_eq!((first.as_str(), second.as_str()), ("token-1", "token-1"));
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, axum::http::Method::POST);
    let body = &requests[0].body;
    assert!(body.contains("grant_type=client_credentials"), "{body}");
    assert!(
        body.contains("scope=https%3A%2F%2Fgraph.microsoft.com%2F.default"),
        "{body}"
    );
}

#[tokio::test]
async fn a_new_secret_gets_its_own_token() {
    let fake = Fake::start(|_| Router::new().route(TOKEN_PATH, token_ok())).await;
    let client = fake.client();
    let rotated = Credentials {
        client_secret: "rotated".into(),
        ..creds()
    };

    client.token(&creds()).await.expect("token");
    let token = client.token(&rotated).await.expect("token");

    assert_eq!(token, "token-2");
    assert_eq!(fake.token_requests(), 2);
}

/// Each refusal carries a description that claims something else, to prove the
/// client decides on `error_codes` only.
#[tokio::test]
async fn refusals_are_classified_by_their_codes() {
    let cases = [
        (
            401,
            "invalid_client",
            7_000_215,
            AuthFailureKind::WrongSecret,
            "provider_settings.client_secret",
        ),
        (
            401,
            "invalid_client",
            7_000_222,
            AuthFailureKind::ExpiredSecret,
            "provider_settings.client_secret",
        ),
        (
            400,
            "unauthorized_client",
            700_016,
            AuthFailureKind::UnknownApplication,
            "provider_settings.client_id",
        ),
        (
            400,
            "invalid_tenant",
            90_002,
            AuthFailureKind::UnknownTenant,
            "provider_settings.tenant_id",
        ),
        (
            400,
            "invalid_request",
            900_023,
            AuthFailureKind::MalformedTenantId,
            "provider_settings.tenant_id",
        ),
        (
            400,
            "invalid_request",
            50_000,
            AuthFailureKind::Other,
            "provider_settings",
        ),
    ];
    for (status, error, code, expected, field) in cases {
        let lie = "AADSTS7000222: The provided client secret keys are expired.";
        let refusal = Reply::json(
            status,
            json!({"error": error, "error_description": lie, "error_codes": [code],
                   "timestamp": "2024-01-01 00:00:00Z", "trace_id": "t", "correlation_id": "c"}),
        );
        let fake = Fake::start(|_| Router::new().route(TOKEN_PATH, scripted_post(vec![refusal]))).await;

        let outcome = fake.client().token(&creds()).await;

        let Err(GraphError::Auth(failure)) = &outcome else {
            panic!("code {code}: expected Auth, got {outcome:?}");
        };
        assert_eq!(failure.kind, expected, "code {code}");
        assert_eq!((failure.status, failure.codes.as_slice()), (status, &[code][..]));
        let message = outcome.expect_err("refused").to_string();
        assert!(message.contains(field), "code {code}: {message}");
        assert!(!message.contains(SECRET), "code {code}: {message}");
        assert_eq!(fake.token_requests(), 1, "refusals are not retried");
    }
}

#[tokio::test]
async fn missing_admin_consent_is_reported_as_such() {
    let fake = graph_with(
        "/v1.0/users/delta",
        vec![Reply::graph_error(
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        )],
    )
    .await;
    let client = fake.client();

    let outcome = client
        .users_delta_page(&creds(), &client.users_delta_start_url(&[]))
        .await;

    let Err(error @ GraphError::ConsentMissing { .. }) = outcome else {
        panic!("expected ConsentMissing, got {outcome:?}");
    };
    let message = error.to_string();
    assert!(message.contains("User.Read.All and Group.Read.All"), "{message}");
    assert!(message.contains("admin consent"), "{message}");
}

#[tokio::test]
async fn a_rejected_token_is_replaced_once() {
    let page = json!({"value": [], "@odata.deltaLink": "{base}/v1.0/users/delta?$deltatoken=next"});
    let fake = graph_with(
        "/v1.0/users/delta",
        vec![
            Reply::graph_error(
                401,
                "InvalidAuthenticationToken",
                "Lifetime validation failed, the token is expired.",
            ),
            Reply::json(200, page),
        ],
    )
    .await;
    let client = fake.client();

    let outcome = client
        .users_delta_page(&creds(), &client.users_delta_start_url(&[]))
        .await;

    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(fake.token_requests(), 2);
    let graph_auth: Vec<_> = fake
        .requests()
        .iter()
        .filter(|seen| seen.path == "/v1.0/users/delta")
        .map(|seen| seen.headers["authorization"].to_str().expect("ascii").to_string())
        .collect();
    assert_eq!(graph_auth, ["Bearer token-1", "Bearer token-2"]);
}

#[tokio::test]
async fn a_token_rejected_twice_is_an_http_error() {
    let fake = graph_with(
        "/v1.0/users/delta",
        vec![Reply::graph_error(
            401,
            "InvalidAuthenticationToken",
            "Access token validation failure.",
        )],
    )
    .await;
    let client = fake.client();

    let outcome = client
        .users_delta_page(&creds(), &client.users_delta_start_url(&[]))
        .await;

    assert!(
        matches!(outcome, Err(GraphError::Http { status: 401, .. })),
        "{outcome:?}"
    );
    assert_eq!(fake.requests_to("/v1.0/users/delta"), 2);
}

#[tokio::test]
async fn an_unavailable_token_endpoint_is_retried() {
    let fake = Fake::start(|_| {
        Router::new().route(
            TOKEN_PATH,
            scripted_post(vec![
                Reply::empty(503),
                Reply::json(
                    200,
                    json!({"token_type": "Bearer", "expires_in": 3599, "access_token": "late"}),
                ),
            ]),
        )
    })
    .await;

    let token = fake.client().token(&creds()).await.expect("token");

    assert_eq!(token, "late");
    assert_eq!(fake.token_requests(), 2);
}
