//! The /_sim control API: seeding, company reset, fault injection, stats,
//! and the binary's start-up line.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{expect_error, user_body, Sim, COMPANY};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn seeded_users_are_visible_but_not_counted() {
    let sim = Sim::start().await;
    let response = sim
        .control(Method::POST, &format!("/companies/{COMPANY}/users"))
        .json(&user_body(1))
        .send()
        .await
        .expect("seed");
    assert_eq!(response.status(), StatusCode::CREATED);
    let seeded: Value = response.json().await.expect("json");

    let fetched: Value = sim
        .v1(
            Method::GET,
            &format!("/users/{}", seeded["id"].as_str().expect("id")),
        )
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(fetched, seeded);
    let stats = sim.stats().await;
    assert_eq!(stats["created"], 0);
    assert_eq!(stats["writes"], 0);
    assert_eq!(stats["requests"], 1, "only the GET");

    let duplicate = sim
        .control(Method::POST, &format!("/companies/{COMPANY}/users"))
        .json(&user_body(1))
        .send()
        .await
        .expect("seed");
    expect_error(duplicate, StatusCode::CONFLICT, "conflict", Some("alias")).await;
}

#[tokio::test]
async fn reconfiguring_keeps_users_unless_reset() {
    let sim = Sim::start().await;
    sim.create_ok(user_body(1)).await;
    sim.configure(COMPANY, json!({"numbers": []})).await;
    assert_eq!(sim.all_users().await.len(), 1);
    sim.configure(COMPANY, json!({"reset": true})).await;
    assert!(sim.all_users().await.is_empty());
}

#[tokio::test]
async fn status_fault_answers_the_next_matching_requests() {
    let sim = Sim::start().await;
    sim.add_fault(json!({"kind": "status", "status": 503, "retry_after": 7, "count": 2, "method": "POST"}))
        .await;

    let get = sim.v1(Method::GET, "/users").send().await.expect("get");
    assert_eq!(get.status(), StatusCode::OK, "GET does not match the fault");
    for _ in 0..2 {
        let response = sim.create(user_body(1)).await;
        assert_eq!(
            response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("7")
        );
        expect_error(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable", None).await;
    }
    assert!(sim.all_users().await.is_empty());
    sim.create_ok(user_body(1)).await;
}

#[tokio::test]
async fn injected_429_uses_the_contract_code() {
    let sim = Sim::start().await;
    sim.add_fault(json!({"kind": "status", "status": 429, "retry_after": 2, "count": 1}))
        .await;
    let response = sim.v1(Method::GET, "/users").send().await.expect("get");
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("2")
    );
    expect_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited", None).await;
}

#[tokio::test]
async fn drop_performs_the_write_but_loses_the_answer() {
    let sim = Sim::start().await;
    sim.add_fault(json!({"kind": "drop", "count": 1, "method": "POST"}))
        .await;
    let send = || {
        sim.v1(Method::POST, "/users")
            .header("Idempotency-Key", "lost-1")
            .json(&user_body(1))
            .send()
    };
    let lost = send().await;
    assert!(lost.is_err(), "the client must see a transport error: {lost:?}");
    assert_eq!(sim.all_users().await.len(), 1, "the write happened");

    // A retry with the same key learns the outcome without creating again.
    let retry = send().await.expect("retry");
    assert_eq!(retry.status(), StatusCode::CREATED);
    let user: Value = retry.json().await.expect("json");
    assert_eq!(sim.all_users().await, vec![user]);
}

#[tokio::test]
async fn drop_before_loses_the_request_without_writing() {
    let sim = Sim::start().await;
    sim.add_fault(json!({"kind": "drop_before", "count": 1})).await;
    let lost = sim.v1(Method::POST, "/users").json(&user_body(1)).send().await;
    assert!(lost.is_err(), "the client must see a transport error");
    assert!(sim.all_users().await.is_empty());
    sim.create_ok(user_body(1)).await;
}

#[tokio::test]
async fn latency_slows_every_request_until_cleared() {
    const DELAY: Duration = Duration::from_millis(1500);
    let sim = Sim::start().await;
    sim.add_fault(json!({"kind": "latency", "ms": DELAY.as_millis()}))
        .await;
    let started = Instant::now();
    let response = sim.v1(Method::GET, "/users").send().await.expect("get");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() >= DELAY);

    let cleared = sim
        .control(Method::DELETE, &format!("/companies/{COMPANY}/faults"))
        .send()
        .await
        .expect("clear");
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    let started = Instant::now();
    sim.v1(Method::GET, "/users").send().await.expect("get");
    assert!(started.elapsed() < DELAY);
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let sim = Sim::start().await;
    sim.add_fault(json!({"kind": "rate_limit", "per_second": 2}))
        .await;
    let mut limited = None;
    for _ in 0..6 {
        let response = sim.v1(Method::GET, "/users").send().await.expect("get");
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
    }
    let response = limited.expect("some request beyond 2 per second is limited");
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    expect_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited", None).await;
}

#[tokio::test]
async fn throttle_answers_every_nth_write_with_429_and_counts_it() {
    let sim = Sim::start().await;
    sim.add_fault(json!({"kind": "throttle", "every": 3, "retry_after": 1, "method": "POST"}))
        .await;
    let mut statuses = Vec::new();
    for n in 1..=6 {
        let response = sim.create(user_body(n)).await;
        statuses.push(response.status().as_u16());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(
                response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()),
                Some("1")
            );
            expect_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited", None).await;
        }
    }
    assert_eq!(statuses, [201, 201, 429, 201, 201, 429]);
    let get = sim.v1(Method::GET, "/users").send().await.expect("get");
    assert_eq!(get.status(), StatusCode::OK, "GETs are not throttled");
    let stats = sim.stats().await;
    assert_eq!(stats["throttled"], 2, "{stats}");
    assert_eq!(stats["created"], 4, "a throttled POST creates nothing: {stats}");
    assert_eq!(sim.all_users().await.len(), 4);
}

#[tokio::test]
async fn invalid_faults_are_refused() {
    let sim = Sim::start().await;
    for fault in [
        json!({"kind": "status", "status": 418}),
        json!({"kind": "drop", "count": 0}),
        json!({"kind": "throttle", "every": 0}),
        json!({"kind": "explode"}),
    ] {
        let response = sim
            .control(Method::POST, &format!("/companies/{COMPANY}/faults"))
            .json(&fault)
            .send()
            .await
            .expect("add fault");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{fault}");
    }
}

#[tokio::test]
async fn stats_count_every_request_including_faulted_ones() {
    let sim = Sim::start().await;
    let created = sim.create_ok(user_body(1)).await;
    let path = format!("/users/{}", created["id"].as_str().expect("id"));
    sim.v1(Method::PATCH, &path)
        .json(&json!({"surname": "X"}))
        .send()
        .await
        .expect("patch");
    sim.add_fault(json!({"kind": "status", "status": 500, "count": 1, "method": "DELETE"}))
        .await;
    sim.v1(Method::DELETE, &path).send().await.expect("delete"); // faulted
    sim.v1(Method::DELETE, &path).send().await.expect("delete");
    sim.v1(Method::GET, "/users").send().await.expect("list");
    sim.create(user_body(1)).await; // 201 again: the user was deleted
    sim.client
        .post(format!("{}/v1/companies/{COMPANY}/users", sim.base))
        .json(&user_body(3))
        .send()
        .await
        .expect("unauthenticated post");

    let stats = sim.stats().await;
    let expected = json!({
        "requests": 7, "writes": 6, "posts": 3, "patches": 1, "deletes": 2,
        "idempotent_replays": 0, "throttled": 0, "created": 2, "updated": 1, "deleted": 1
    });
    assert_eq!(stats, expected);

    let reset = sim
        .control(Method::POST, "/stats/reset")
        .send()
        .await
        .expect("reset");
    assert_eq!(reset.status(), StatusCode::NO_CONTENT);
    assert_eq!(sim.stats().await["requests"], 0);
}

#[test]
fn binary_announces_its_address_on_stdout() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_usersync-pbx-sim"))
        .args(["--listen", "127.0.0.1:0", "--token", "t"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn simulator");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    let read = BufReader::new(stdout).read_line(&mut line);
    child.kill().expect("kill simulator");
    child.wait().expect("reap simulator");
    read.expect("read line");
    let addr = line
        .trim_end()
        .strip_prefix("listening on http://127.0.0.1:")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    assert!(addr.parse::<u16>().is_ok_and(|port| port != 0), "{line:?}");
}
