//! Change-notification subscriptions against a real HTTP receiver: a tiny
//! axum server on a free port that answers validation requests and records
//! every POST it gets.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode as AxumStatus};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{tenant_body, tenant_path, TestSim, CLIENT_ID, TENANT};
use crate::seed::{guid, IdStream};
use crate::subscriptions::delivery;

/// How long a test waits for a notification before failing.
const DEADLINE: Duration = Duration::from_secs(20);
const VALIDATION_FAILED: &str =
    "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request.";

/// How the receiver answers a validation request.
#[derive(Clone, Copy)]
enum Validation {
    Echo,
    WrongBody,
    /// Never answers.
    Hang,
}

#[derive(Clone, Debug)]
struct Received {
    path: String,
    raw_query: Option<String>,
    /// The decoded `validationToken`, for validation requests.
    token: Option<String>,
    content_type: Option<String>,
    body: String,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

struct ReceiverState {
    validation: Validation,
    /// Notifications still to be answered 500.
    failures: AtomicU32,
    /// While false, notification POSTs wait (a subscriber that hangs).
    open: watch::Receiver<bool>,
    log: watch::Sender<Vec<Received>>,
}

struct Receiver {
    base: String,
    state: Arc<ReceiverState>,
    gate: watch::Sender<bool>,
}

async fn receive(State(state): State<Arc<ReceiverState>>, request: Request) -> Response {
    let uri = request.uri().clone();
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .unwrap();
    let token = uri.query().and_then(|query| {
        let url = reqwest::Url::parse(&format!("http://x/?{query}")).unwrap();
        let token = url.query_pairs().find(|(name, _)| name == "validationToken");
        token.map(|(_, value)| value.into_owned())
    });
    let received = Received {
        path: uri.path().to_owned(),
        raw_query: uri.query().map(str::to_owned),
        token: token.clone(),
        content_type,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    };
    state.log.send_modify(|log| log.push(received));
    if let Some(token) = token {
        return match state.validation {
            Validation::Echo => {
                (AxumStatus::OK, [(header::CONTENT_TYPE, "text/plain")], token).into_response()
            }
            Validation::WrongBody => (AxumStatus::OK, "not the token").into_response(),
            Validation::Hang => std::future::pending().await,
        };
    }
    let mut open = state.open.clone();
    let _ = open.wait_for(|open| *open).await;
    let fail = state
        .failures
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if fail {
        AxumStatus::INTERNAL_SERVER_ERROR.into_response()
    } else {
        AxumStatus::ACCEPTED.into_response()
    }
}

impl Receiver {
    async fn start(validation: Validation) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (gate, open) = watch::channel(true);
        let state = Arc::new(ReceiverState {
            validation,
            failures: AtomicU32::new(0),
            open,
            log: watch::Sender::new(Vec::new()),
        });
        let app = Router::new().fallback(receive).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { base, state, gate }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log(&self) -> Vec<Received> {
        self.state.log.borrow().clone()
    }

    fn fail_next(&self, count: u32) {
        self.state.failures.store(count, Ordering::SeqCst);
    }

    /// Bodies of the POSTs to `path` that are not validation requests.
    fn posts(&self, path: &str) -> Vec<Value> {
        let log = self.log();
        log.iter()
            .filter(|r| r.path == path && r.token.is_none())
            .map(Received::json)
            .collect()
    }

    /// The notifications posted to `path`, in order, batches flattened.
    fn notifications(&self, path: &str) -> Vec<Value> {
        let posts = self.posts(path);
        posts
            .iter()
            .flat_map(|post| post["value"].as_array().cloned().unwrap())
            .collect()
    }

    /// Waits until `path` has received `count` notifications, then returns them.
    async fn wait_for_notifications(&self, path: &str, count: usize) -> Vec<Value> {
        let mut log = self.state.log.subscribe();
        let arrived = log.wait_for(|log| {
            let items = log
                .iter()
                .filter(|r| r.path == path && r.token.is_none())
                .map(|r| r.json()["value"].as_array().map_or(0, Vec::len))
                .sum::<usize>();
            items >= count
        });
        if tokio::time::timeout(DEADLINE, arrived).await.is_err() {
            panic!(
                "{path} got {:?}, not {count} notifications",
                self.notifications(path)
            );
        }
        self.notifications(path)
    }
}

/// A Graph call with the bearer token; returns status and JSON body (or null).
async fn graph(
    sim: &TestSim,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = sim
        .http
        .request(method, format!("{}{path}", sim.base))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn in_days(days: i64) -> String {
    (Utc::now() + chrono::Duration::days(days)).to_rfc3339()
}

fn subscription_body(resource: &str, change_type: &str, url: &str) -> Value {
    json!({
        "changeType": change_type,
        "notificationUrl": url,
        "resource": resource,
        "expirationDateTime": in_days(2),
        "clientState": "secret-state",
        "latestSupportedTlsVersion": "v1_2",
        "includeResourceData": false,
    })
}

/// Creates a subscription that must succeed; returns its id.
async fn subscribe(sim: &TestSim, token: &str, body: Value) -> String {
    let (status, created) = graph(sim, token, Method::POST, "/v1.0/subscriptions", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

/// A tenant with `users` seeded users, and an app token for it.
async fn tenant_with_token(sim: &TestSim, users: u64, extra: Value) -> (Value, String) {
    let created = sim.create_tenant(tenant_body(users, extra)).await;
    (created, sim.token().await)
}

/// The control API's view of one subscription.
async fn control_view(sim: &TestSim, id: &str) -> Value {
    let listing = sim.ok(Method::GET, &tenant_path("/subscriptions"), None).await;
    let found = listing["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id);
    found.cloned().unwrap_or_else(|| panic!("{id} not in {listing}"))
}

/// Polls the control API's view until `done` holds or the deadline passes.
async fn wait_for_view(sim: &TestSim, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let view = control_view(sim, id).await;
        if done(&view) {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting, last view {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_graph_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
}

#[tokio::test]
async fn creation_validates_both_urls_with_an_encoded_token() {
    let sim = TestSim::start().await;
    let (_, token) = tenant_with_token(&sim, 1, json!({})).await;
    let receiver = Receiver::start(Validation::Echo).await;
    let mut body = subscription_body("/users", "created,updated,deleted", &receiver.url("/notify"));
    body["lifecycleNotificationUrl"] = json!(receiver.url("/lifecycle"));
    let expiry = in_days(3);
    body["expirationDateTime"] = json!(expiry);

    let (status, created) = graph(&sim, &token, Method::POST, "/v1.0/subscriptions", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    assert_eq!(created["resource"], "/users");
    assert_eq!(created["applicationId"], CLIENT_ID);
    assert_eq!(created["changeType"], "created,updated,deleted");
    assert_eq!(created["clientState"], "secret-state");
    assert_eq!(created["notificationUrl"], receiver.url("/notify"));
    assert_eq!(created["lifecycleNotificationUrl"], receiver.url("/lifecycle"));
    assert_eq!(created["latestSupportedTlsVersion"], "v1_2");
    assert_eq!(created["includeResourceData"], false);
    assert!(created["creatorId"]
        .as_str()
        .is_some_and(|c| uuid::Uuid::parse_str(c).is_ok()));
    let answered = DateTime::parse_from_rfc3339(created["expirationDateTime"].as_str().unwrap()).unwrap();
    assert_eq!(answered, DateTime::parse_from_rfc3339(&expiry).unwrap());

    let log = receiver.log();
    assert_eq!(log.len(), 2, "one validation per URL: {log:?}");
    assert_eq!(log[0].path, "/notify");
    assert_eq!(log[1].path, "/lifecycle");
    for request in &log {
        let raw = request.raw_query.as_deref().unwrap();
        let decoded = request.token.as_deref().unwrap();
        assert!(
            decoded.contains(' ') && decoded.contains(':') && decoded.contains('+'),
            "{decoded}"
        );
        for encoded in ["%20", "%3A", "%2B"] {
            assert!(raw.contains(encoded), "{raw} lacks {encoded}");
        }
        assert_eq!(request.content_type.as_deref(), Some("text/plain"));
        assert_eq!(request.body, "");
    }
    assert_ne!(log[0].token, log[1].token, "a fresh token per request");

    let (status, listed) = graph(&sim, &token, Method::GET, "/v1.0/subscriptions", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["value"].as_array().unwrap().len(), 1);
    assert_eq!(listed["value"][0]["id"], id);
    let (status, one) = graph(
        &sim,
        &token,
        Method::GET,
        &format!("/v1.0/subscriptions/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["clientState"], "secret-state");
    let view = control_view(&sim, id).await;
    assert_eq!(view["validations"], 2);
    assert_eq!(view["status"], "active");
    assert_eq!(view["removed"], false);
    let stats = sim.ok(Method::GET, &tenant_path("/stats"), None).await;
    assert_eq!(stats["requests"]["subscriptions"], 3);
}

#[tokio::test]
async fn failed_validation_refuses_the_subscription() {
    let sim = TestSim::start().await;
    let (_, token) = tenant_with_token(&sim, 1, json!({})).await;
    // Bound but not listening, and held: a connection there is refused, and no
    // server started meanwhile (the receivers below) can be given the port.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let unreachable = format!("http://{}/notify", closed.local_addr().unwrap());
    let wrong = Receiver::start(Validation::WrongBody).await;
    let good = Receiver::start(Validation::Echo).await;
    let mut bad_lifecycle = subscription_body("/users", "updated", &good.url("/notify"));
    bad_lifecycle["lifecycleNotificationUrl"] = json!(unreachable);
    let cases = [
        (
            "unreachable",
            subscription_body("/users", "updated", &unreachable),
        ),
        (
            "wrong body",
            subscription_body("/users", "updated", &wrong.url("/notify")),
        ),
        ("unreachable lifecycle URL", bad_lifecycle),
    ];
    for (case, body) in cases {
        let (status, answer) = graph(&sim, &token, Method::POST, "/v1.0/subscriptions", Some(body)).await;
        assert_graph_error(status, &answer, StatusCode::BAD_REQUEST, "ValidationError");
        assert_eq!(answer["error"]["message"], VALIDATION_FAILED, "{case}");
    }
    assert_eq!(wrong.log().len(), 1, "the wrong answer came from a real request");
    let (_, listed) = graph(&sim, &token, Method::GET, "/v1.0/subscriptions", None).await;
    assert_eq!(listed["value"], json!([]));
}

#[tokio::test]
async fn a_validation_request_left_unanswered_times_out() {
    let sim = TestSim::start().await;
    let (_, token) = tenant_with_token(&sim, 1, json!({})).await;
    let hanging = Receiver::start(Validation::Hang).await;
    let body = subscription_body("/users", "updated", &hanging.url("/notify"));
    let started = std::time::Instant::now();
    let (status, answer) = graph(&sim, &token, Method::POST, "/v1.0/subscriptions", Some(body)).await;
    assert_graph_error(status, &answer, StatusCode::BAD_REQUEST, "ValidationError");
    assert_eq!(
        answer["error"]["message"],
        "Subscription validation request timed out."
    );
    assert!(started.elapsed() >= Duration::from_secs(10), "Graph waits 10 s");
}

#[tokio::test]
async fn requests_are_checked_like_graph_checks_them() {
    let sim = TestSim::start().await;
    let (_, token) = tenant_with_token(&sim, 1, json!({})).await;
    let receiver = Receiver::start(Validation::Echo).await;
    let url = receiver.url("/notify");
    let with = |field: &str, value: Value| {
        let mut body = subscription_body("/users", "updated", &url);
        body[field] = value;
        body
    };
    let too_far = (Utc::now() + chrono::Duration::minutes(41760 + 5)).to_rfc3339();
    let cases = [
        (
            with("expirationDateTime", json!(too_far)),
            "41760 minutes in the future",
        ),
        (
            with("expirationDateTime", json!(in_days(-1))),
            "must be in the future",
        ),
        (
            with("expirationDateTime", json!("tomorrow")),
            "expirationDateTime 'tomorrow'",
        ),
        (
            with("expirationDateTime", Value::Null),
            "expirationDateTime is required",
        ),
        (with("resource", json!("/me/messages")), "resource '/me/messages'"),
        (with("changeType", json!("updated,moved")), "changeType 'moved'"),
        (with("changeType", Value::Null), "changeType is required"),
        (
            with("notificationUrl", json!("ftp://x/y")),
            "notificationUrl 'ftp://x/y'",
        ),
        (
            with("clientState", json!("x".repeat(129))),
            "clientState is longer than 128",
        ),
        (with("includeResourceData", json!(true)), "encryptionCertificate"),
    ];
    for (body, expected) in cases {
        let (status, answer) = graph(&sim, &token, Method::POST, "/v1.0/subscriptions", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
    assert!(receiver.log().is_empty(), "refused bodies are not validated");
    let within = (Utc::now() + chrono::Duration::minutes(41760 - 5)).to_rfc3339();
    for resource in ["users", "/groups", "groups", "groups/g1", "/groups/g1"] {
        let mut body = with("expirationDateTime", json!(within));
        body["resource"] = json!(resource);
        subscribe(&sim, &token, body).await;
    }
}

#[tokio::test]
async fn renewal_moves_the_expiry_within_the_same_limit() {
    let sim = TestSim::start().await;
    let (_, token) = tenant_with_token(&sim, 1, json!({})).await;
    let receiver = Receiver::start(Validation::Echo).await;
    let id = subscribe(
        &sim,
        &token,
        subscription_body("/users", "updated", &receiver.url("/n")),
    )
    .await;
    let path = format!("/v1.0/subscriptions/{id}");
    let (status, answer) = graph(
        &sim,
        &token,
        Method::PATCH,
        &path,
        Some(json!({"expirationDateTime": in_days(30)})),
    )
    .await;
    assert_graph_error(status, &answer, StatusCode::BAD_REQUEST, "InvalidRequest");

    let renewed_to = in_days(5);
    let body = json!({"expirationDateTime": renewed_to});
    let (status, renewed) = graph(&sim, &token, Method::PATCH, &path, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    let expected = DateTime::parse_from_rfc3339(&renewed_to).unwrap();
    let answered = DateTime::parse_from_rfc3339(renewed["expirationDateTime"].as_str().unwrap()).unwrap();
    assert_eq!(answered, expected);
    let view = control_view(&sim, &id).await;
    let listed = DateTime::parse_from_rfc3339(view["expirationDateTime"].as_str().unwrap()).unwrap();
    assert_eq!(listed, expected, "the control API shows the moved expiry");

    let unknown = "/v1.0/subscriptions/00000000-0000-0000-0000-000000000000";
    let (status, answer) = graph(
        &sim,
        &token,
        Method::PATCH,
        unknown,
        Some(json!({"expirationDateTime": renewed_to})),
    )
    .await;
    assert_graph_error(status, &answer, StatusCode::NOT_FOUND, "ResourceNotFound");
}

#[tokio::test]
async fn a_subscription_expires_on_the_simulated_clock() {
    let sim = TestSim::start().await;
    let (_, token) = tenant_with_token(&sim, 2, json!({})).await;
    let receiver = Receiver::start(Validation::Echo).await;
    let mut short = subscription_body("/users", "updated", &receiver.url("/short"));
    short["expirationDateTime"] = json!((Utc::now() + chrono::Duration::hours(1)).to_rfc3339());
    let short = subscribe(&sim, &token, short).await;
    let long = subscribe(
        &sim,
        &token,
        subscription_body("/users", "updated", &receiver.url("/long")),
    )
    .await;

    sim.ok(
        Method::POST,
        &tenant_path("/advance-clock"),
        Some(json!({"seconds": 3601})),
    )
    .await;
    let path = format!("/v1.0/subscriptions/{short}");
    let renewal = json!({"expirationDateTime": in_days(1)});
    for (method, path, body) in [
        (Method::GET, path.clone(), None),
        (Method::PATCH, path.clone(), Some(renewal)),
        (Method::POST, format!("{path}/reauthorize"), None),
        (Method::DELETE, path.clone(), None),
    ] {
        let (status, answer) = graph(&sim, &token, method.clone(), &path, body).await;
        assert_graph_error(status, &answer, StatusCode::NOT_FOUND, "ResourceNotFound");
    }
    let (_, listed) = graph(&sim, &token, Method::GET, "/v1.0/subscriptions", None).await;
    let ids: Vec<&Value> = listed["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["id"])
        .collect();
    assert_eq!(ids, vec![&json!(long)]);
    let view = control_view(&sim, &short).await;
    assert_eq!(
        (&view["status"], &view["removed"]),
        (&json!("expired"), &json!(true))
    );

    let user = guid(42, IdStream::User, 0);
    sim.ok(
        Method::PATCH,
        &tenant_path(&format!("/users/{user}")),
        Some(json!({"jobTitle": "Expired"})),
    )
    .await;
    let arrived = receiver.wait_for_notifications("/long", 1).await;
    assert_eq!(arrived[0]["resource"], format!("Users/{user}"));
    // Changes are queued while the control call runs, so by now an expired
    // subscription would have had its notification queued and counted.
    assert!(receiver.posts("/short").is_empty());
    assert_eq!(control_view(&sim, &short).await["delivered"], 0);

    // An absurd advance saturates the clock rather than breaking it.
    sim.ok(
        Method::POST,
        &tenant_path("/advance-clock"),
        Some(json!({"seconds": u64::MAX})),
    )
    .await;
    assert_eq!(control_view(&sim, &long).await["status"], "expired");
}

#[tokio::test]
async fn user_changes_notify_with_the_client_state_and_change_type() {
    let sim = TestSim::start().await;
    let (_, token) = tenant_with_token(&sim, 2, json!({})).await;
    let receiver = Receiver::start(Validation::Echo).await;
    let mut all = subscription_body("/users", "created,updated,deleted", &receiver.url("/all"));
    all["clientState"] = json!("state-of-all");
    let all = subscribe(&sim, &token, all).await;
    let updates = subscribe(
        &sim,
        &token,
        subscription_body("users", "updated", &receiver.url("/updates")),
    )
    .await;

    let created = sim
        .ok(
            Method::POST,
            &tenant_path("/users"),
            Some(json!({"displayName": "New Person"})),
        )
        .await;
    let new_user = created["id"].as_str().unwrap().to_owned();
    let user_path = tenant_path(&format!("/users/{new_user}"));
    sim.ok(Method::PATCH, &user_path, Some(json!({"accountEnabled": false})))
        .await;
    sim.ok(Method::DELETE, &user_path, None).await;
    sim.ok(Method::POST, &format!("{user_path}/restore"), None).await;
    sim.ok(Method::DELETE, &format!("{user_path}?hard=true"), None)
        .await;
    // A last change to another user: per-subscription order proves that
    // `updates` was told of nothing in between.
    let other = guid(42, IdStream::User, 1);
    sim.ok(
        Method::PATCH,
        &tenant_path(&format!("/users/{other}")),
        Some(json!({"jobTitle": "Last"})),
    )
    .await;

    let seen = receiver.wait_for_notifications("/all", 6).await;
    let kinds: Vec<&Value> = seen.iter().map(|n| &n["changeType"]).collect();
    assert_eq!(
        kinds,
        ["created", "updated", "deleted", "updated", "deleted", "updated"]
    );
    let resources: Vec<&Value> = seen.iter().map(|n| &n["resource"]).collect();
    let mine = json!(format!("Users/{new_user}"));
    assert_eq!(resources[..5], [&mine, &mine, &mine, &mine, &mine]);
    assert_eq!(resources[5], &json!(format!("Users/{other}")));
    let first = &seen[0];
    assert_eq!(first["subscriptionId"], all);
    assert_eq!(first["clientState"], "state-of-all");
    assert_eq!(first["tenantId"], TENANT);
    assert!(first["subscriptionExpirationDateTime"].is_string());
    assert!(uuid::Uuid::parse_str(first["id"].as_str().unwrap()).is_ok());
    let data = json!({
        "@odata.type": "#Microsoft.Graph.User",
        "@odata.id": format!("Users/{new_user}"),
        "id": new_user,
        "organizationId": TENANT,
    });
    assert_eq!(first["resourceData"], data);
    let json_posts = receiver
        .log()
        .iter()
        .filter(|r| r.path == "/all" && r.token.is_none())
        .all(|r| r.content_type.as_deref() == Some("application/json"));
    assert!(json_posts);

    let told = receiver.wait_for_notifications("/updates", 4).await;
    let kinds: Vec<(&Value, &Value)> = told.iter().map(|n| (&n["changeType"], &n["resource"])).collect();
    let other = json!(format!("Users/{other}"));
    let updated = json!("updated");
    let expected = vec![
        (&updated, &mine),
        (&updated, &mine),
        (&updated, &mine),
        (&updated, &other),
    ];
    assert_eq!(
        kinds, expected,
        "a creation is an update to an updated-only subscription"
    );
    assert!(told
        .iter()
        .all(|n| n["subscriptionId"] == updates && n["clientState"] == "secret-state"));
    let view = wait_for_view(&sim, &all, |v| v["delivered"] == 6).await;
    assert_eq!((&view["failed"], &view["dropped"]), (&json!(0), &json!(0)));
}

#[tokio::test]
async fn membership_changes_notify_group_subscriptions() {
    let sim = TestSim::start().await;
    let groups = json!([{"name": "One", "members": 1}, {"name": "Two", "members": 1}]);
    let (created, token) = tenant_with_token(&sim, 3, json!({"groups": groups})).await;
    let one = created["groups"][0]["id"].as_str().unwrap().to_owned();
    let two = created["groups"][1]["id"].as_str().unwrap().to_owned();
    let receiver = Receiver::start(Validation::Echo).await;
    subscribe(
        &sim,
        &token,
        subscription_body(&format!("groups/{one}"), "updated", &receiver.url("/one")),
    )
    .await;
    subscribe(
        &sim,
        &token,
        subscription_body("/groups", "created,updated", &receiver.url("/groups")),
    )
    .await;
    subscribe(
        &sim,
        &token,
        subscription_body("/users", "deleted", &receiver.url("/users")),
    )
    .await;

    let joiner = guid(42, IdStream::User, 2);
    sim.ok(
        Method::POST,
        &tenant_path(&format!("/groups/{one}/members")),
        Some(json!({"id": joiner})),
    )
    .await;
    sim.ok(
        Method::POST,
        &tenant_path(&format!("/groups/{two}/members")),
        Some(json!({"id": joiner})),
    )
    .await;
    sim.ok(
        Method::DELETE,
        &tenant_path(&format!("/groups/{one}/members/{joiner}")),
        None,
    )
    .await;
    let new_group = sim
        .ok(
            Method::POST,
            &tenant_path("/groups"),
            Some(json!({"name": "Three"})),
        )
        .await;
    let three = new_group["id"].as_str().unwrap();
    // Deleting a user is also a change to each of its groups (user 0 is in both).
    let member_of_two = guid(42, IdStream::User, 0);
    sim.ok(
        Method::DELETE,
        &tenant_path(&format!("/users/{member_of_two}")),
        None,
    )
    .await;

    let of_one = receiver.wait_for_notifications("/one", 3).await;
    assert_eq!(of_one.len(), 3, "joined, left, its member deleted");
    let group_one = json!(format!("Groups/{one}"));
    assert!(of_one
        .iter()
        .all(|n| n["changeType"] == "updated" && n["resource"] == group_one));
    assert_eq!(of_one[0]["resourceData"]["@odata.type"], "#Microsoft.Graph.Group");
    assert_eq!(of_one[0]["resourceData"]["@odata.id"], group_one);
    assert_eq!(of_one[0]["clientState"], "secret-state");

    let all = receiver.wait_for_notifications("/groups", 6).await;
    let seen: Vec<(String, String)> = all
        .iter()
        .map(|n| {
            (
                n["changeType"].as_str().unwrap().into(),
                n["resource"].as_str().unwrap().into(),
            )
        })
        .collect();
    let change = |kind: &str, id: &str| (kind.to_owned(), format!("Groups/{id}"));
    let expected = vec![
        change("updated", &one),
        change("updated", &two),
        change("updated", &one),
        change("created", three),
    ];
    assert_eq!(seen[..4], expected);
    let mut last_two = seen[4..].to_vec();
    last_two.sort();
    let mut both = vec![change("updated", &one), change("updated", &two)];
    both.sort();
    assert_eq!(last_two, both, "the deleted user was in both groups");
    let deleted = receiver.wait_for_notifications("/users", 1).await;
    assert_eq!(deleted[0]["resource"], format!("Users/{member_of_two}"));
    assert_eq!(deleted[0]["changeType"], "deleted");
}

#[tokio::test]
async fn lifecycle_events_reach_the_lifecycle_url() {
    let sim = TestSim::start().await;
    let (_, token) = tenant_with_token(&sim, 1, json!({})).await;
    let receiver = Receiver::start(Validation::Echo).await;
    let mut body = subscription_body("/users", "updated", &receiver.url("/notify"));
    body["lifecycleNotificationUrl"] = json!(receiver.url("/lifecycle"));
    let id = subscribe(&sim, &token, body).await;
    let without = subscribe(
        &sim,
        &token,
        subscription_body("/users", "updated", &receiver.url("/plain")),
    )
    .await;
    let event = |id: &str, event: &str| {
        let path = tenant_path(&format!("/subscriptions/{id}/lifecycle"));
        let sim = &sim;
        let body = json!({"event": event});
        async move { sim.control(Method::POST, &path, Some(body)).await }
    };

    let (status, answer) = event(&id, "reauthorizationRequired").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], 202, "the endpoint's answer");
    let sent = receiver.posts("/lifecycle");
    let expected = json!({"value": [{
        "subscriptionId": id,
        "subscriptionExpirationDateTime": sent[0]["value"][0]["subscriptionExpirationDateTime"],
        "tenantId": TENANT,
        "clientState": "secret-state",
        "lifecycleEvent": "reauthorizationRequired",
        "resource": "/users",
    }]});
    assert_eq!(sent, vec![expected]);
    assert!(sent[0]["value"][0]["subscriptionExpirationDateTime"].is_string());
    assert_eq!(control_view(&sim, &id).await["reauthorization_pending"], true);
    let reauthorize = format!("/v1.0/subscriptions/{id}/reauthorize");
    let (status, _) = graph(&sim, &token, Method::POST, &reauthorize, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(control_view(&sim, &id).await["reauthorization_pending"], false);

    let (status, _) = event(&id, "missed").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = event(&id, "subscriptionRemoved").await;
    assert_eq!(status, StatusCode::OK);
    let events: Vec<Value> = receiver
        .posts("/lifecycle")
        .iter()
        .map(|p| p["value"][0]["lifecycleEvent"].clone())
        .collect();
    assert_eq!(
        events,
        ["reauthorizationRequired", "missed", "subscriptionRemoved"]
    );
    let view = control_view(&sim, &id).await;
    assert_eq!(
        (&view["status"], &view["lifecycle_events"]),
        (&json!("subscriptionRemoved"), &json!(3))
    );
    let (status, answer) = graph(
        &sim,
        &token,
        Method::GET,
        &format!("/v1.0/subscriptions/{id}"),
        None,
    )
    .await;
    assert_graph_error(status, &answer, StatusCode::NOT_FOUND, "ResourceNotFound");
    let (status, _) = event(&id, "missed").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a removed subscription gets no events"
    );

    let (status, answer) = event(&without, "missed").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("lifecycleNotificationUrl"),
        "{answer}"
    );
    let (status, _) = event(&without, "renamed").await;
    assert!(status.is_client_error());
}

#[tokio::test]
async fn a_deleted_subscription_is_gone() {
    let sim = TestSim::start().await;
    let (_, token) = tenant_with_token(&sim, 1, json!({})).await;
    let receiver = Receiver::start(Validation::Echo).await;
    let id = subscribe(
        &sim,
        &token,
        subscription_body("/users", "updated", &receiver.url("/n")),
    )
    .await;
    let path = format!("/v1.0/subscriptions/{id}");
    let (status, _) = graph(&sim, &token, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for method in [Method::GET, Method::DELETE] {
        let (status, answer) = graph(&sim, &token, method, &path, None).await;
        assert_graph_error(status, &answer, StatusCode::NOT_FOUND, "ResourceNotFound");
    }
    let (_, listed) = graph(&sim, &token, Method::GET, "/v1.0/subscriptions", None).await;
    assert_eq!(listed["value"], json!([]));
    let view = control_view(&sim, &id).await;
    assert_eq!(
        (&view["status"], &view["removed"]),
        (&json!("deleted"), &json!(true))
    );
    let notify = tenant_path(&format!("/subscriptions/{id}/notify"));
    let (status, _) = sim.control(Method::POST, &notify, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_test_notification_carries_the_given_client_state() {
    let sim = TestSim::start().await;
    let (_, token) = tenant_with_token(&sim, 3, json!({})).await;
    let receiver = Receiver::start(Validation::Echo).await;
    let id = subscribe(
        &sim,
        &token,
        subscription_body("/users", "updated", &receiver.url("/n")),
    )
    .await;
    let notify = tenant_path(&format!("/subscriptions/{id}/notify"));

    let answer = sim
        .ok(Method::POST, &notify, Some(json!({"client_state": "forged"})))
        .await;
    assert_eq!(answer["status"], 202);
    receiver.fail_next(1);
    let answer = sim.ok(Method::POST, &notify, None).await;
    assert_eq!(answer["status"], 500, "the endpoint's status is passed on");

    let users = sim.ok(Method::GET, &tenant_path("/users"), None).await;
    let first_user = users["value"][0]["id"].as_str().unwrap();
    let sent = receiver.notifications("/n");
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0]["clientState"], "forged");
    assert_eq!(sent[1]["clientState"], "secret-state");
    assert!(sent.iter().all(|n| n["changeType"] == "updated"));
    assert_eq!(sent[0]["resource"], format!("Users/{first_user}"));
    assert_eq!(
        control_view(&sim, &id).await["delivered"],
        0,
        "outside the counters"
    );
}

#[tokio::test]
async fn failed_posts_are_retried_then_given_up_and_counted() {
    let sim = TestSim::start().await;
    let (_, token) = tenant_with_token(&sim, 2, json!({})).await;
    let receiver = Receiver::start(Validation::Echo).await;
    let id = subscribe(
        &sim,
        &token,
        subscription_body("/users", "updated", &receiver.url("/n")),
    )
    .await;
    let user = guid(42, IdStream::User, 0);
    let patch = |title: &'static str| {
        let path = tenant_path(&format!("/users/{user}"));
        let sim = &sim;
        async move {
            sim.ok(Method::PATCH, &path, Some(json!({"jobTitle": title})))
                .await
        }
    };

    receiver.fail_next(2);
    patch("Retried").await;
    let view = wait_for_view(&sim, &id, |v| v["delivered"] == 1).await;
    assert_eq!((&view["retries"], &view["failed"]), (&json!(2), &json!(0)));
    assert_eq!(
        receiver.posts("/n").len(),
        3,
        "the same batch, posted three times"
    );

    // One first attempt and four retries, all refused: the batch is dropped.
    receiver.fail_next(5);
    patch("Dropped").await;
    let view = wait_for_view(&sim, &id, |v| v["failed"] == 1).await;
    assert_eq!((&view["retries"], &view["delivered"]), (&json!(6), &json!(1)));
    assert_eq!(receiver.posts("/n").len(), 8);
}

#[tokio::test]
async fn a_storm_is_bounded_and_notifications_keep_flowing() {
    const STORM: u64 = 1500;
    let sim = TestSim::start().await;
    let (_, token) = tenant_with_token(&sim, 2, json!({})).await;
    let receiver = Receiver::start(Validation::Echo).await;
    let id = subscribe(
        &sim,
        &token,
        subscription_body("/users", "updated", &receiver.url("/n")),
    )
    .await;
    // The subscriber hangs: the worker holds one batch, the queue fills.
    receiver.gate.send_replace(false);
    let user = guid(42, IdStream::User, 0);
    let path = tenant_path(&format!("/users/{user}"));
    for n in 0..STORM {
        sim.ok(Method::PATCH, &path, Some(json!({"jobTitle": format!("t{n}")})))
            .await;
    }
    receiver.gate.send_replace(true);
    let settled = |v: &Value| {
        let counts = ["delivered", "failed", "dropped"].map(|c| v[c].as_u64().unwrap());
        counts.iter().sum::<u64>()
    };
    let view = wait_for_view(&sim, &id, |v| settled(v) == STORM).await;
    let capacity = (delivery::QUEUE_CAPACITY + delivery::MAX_BATCH) as u64;
    assert!(view["dropped"].as_u64().unwrap() >= STORM - capacity, "{view}");

    let last = guid(42, IdStream::User, 1);
    sim.ok(
        Method::PATCH,
        &tenant_path(&format!("/users/{last}")),
        Some(json!({"jobTitle": "after the storm"})),
    )
    .await;

    let before = receiver.notifications("/n").len();
    let arrived = receiver.wait_for_notifications("/n", before + 1).await;
    assert_eq!(
        arrived[before]["resource"],
        format!("Users/{last}"),
        "flowing after the storm"
    );
    wait_for_view(&sim, &id, |v| settled(v) == STORM + 1).await;
    let largest = receiver
        .posts("/n")
        .iter()
        .map(|p| p["value"].as_array().unwrap().len())
        .max();
    let largest = largest.unwrap();
    assert!(
        largest > 1 && largest <= delivery::MAX_BATCH,
        "batched: {largest}"
    );
}
