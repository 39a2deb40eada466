use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use serde_json::json;
use tokio::time::Instant;
use usersync_graph::{GraphClient, GraphError, RetryEvent, RetryPolicy};

use crate::support::{creds, fast_policy, graph_with, token_ok, Fake, Reply, TOKEN_PATH};

const DELTA_PATH: &str = "/v1.0/users/delta";

fn final_page() -> Reply {
    Reply::json(
        200,
        json!({"value": [{"id": "u1"}], "@odata.deltaLink": "{base}/v1.0/users/delta?$deltatoken=next"}),
    )
}

/// A client that records every retry wait it announces.
fn recording_client(fake: &Fake, policy: RetryPolicy) -> (GraphClient, Arc<Mutex<Vec<RetryEvent>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let config = usersync_graph::GraphConfig {
        retry: policy,
        ..fake.config()
    };
    let client = GraphClient::with_retry_hook(config, move |event| {
        sink.lock().expect("events").push(event.clone());
    });
    (client, events)
}

#[tokio::test]
async fn throttling_waits_exactly_as_long_as_retry_after_says() {
    let fake = graph_with(
        DELTA_PATH,
        vec![
            Reply::graph_error(429, "TooManyRequests", "Too many requests.").header("Retry-After", "0.2"),
            final_page(),
        ],
    )
    .await;
    // Computed backoff is tiny, so only Retry-After can explain a 200 ms wait.
    let policy = RetryPolicy {
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
        ..fast_policy()
    };
    let (client, events) = recording_client(&fake, policy);
    client.token(&creds()).await.expect("token");

    let started = Instant::now();
    let page = client
        .users_delta_page(&creds(), &client.users_delta_start_url(&[]))
        .await
        .expect("page after the wait");
    let elapsed = started.elapsed();

    assert_eq!(page.users.len(), 1);
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    let events = events.lock().expect("events").clone();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].status, events[0].wait, events[0].attempt),
        (Some(429), Duration::from_millis(200), 1)
    );
}

#[tokio::test]
async fn unavailable_without_retry_after_backs_off_and_recovers() {
    let fake = graph_with(
        DELTA_PATH,
        vec![Reply::empty(503), Reply::empty(504), final_page()],
    )
    .await;
    let (client, events) = recording_client(&fake, fast_policy());

    let page = client
        .users_delta_page(&creds(), &client.users_delta_start_url(&[]))
        .await
        .expect("page after retries");

    assert_eq!(page.users.len(), 1);
    let events = events.lock().expect("events").clone();
    let statuses: Vec<_> = events.iter().map(|event| event.status).collect();
    assert_eq!(statuses, [Some(503), Some(504)]);
    for event in &events {
        assert!(event.wait <= fast_policy().max_delay, "{event:?}");
    }
}

#[tokio::test]
async fn retries_run_out_into_unavailable() {
    let fake = graph_with(
        DELTA_PATH,
        vec![Reply::graph_error(
            503,
            "serviceNotAvailable",
            "Service unavailable.",
        )],
    )
    .await;
    let client = fake.client();

    let outcome = client
        .users_delta_page(&creds(), &client.users_delta_start_url(&[]))
        .await;

    let Err(GraphError::Unavailable { attempts, last }) = outcome else {
        panic!("expected Unavailable, got {outcome:?}");
    };
    assert_eq!(attempts, fast_policy().max_attempts);
    assert!(last.contains("503"), "{last}");
    assert_eq!(fake.requests_to(DELTA_PATH), fast_policy().max_attempts);
}

#[tokio::test]
async fn a_wait_beyond_the_total_budget_gives_up_at_once() {
    let fake = graph_with(
        DELTA_PATH,
        vec![Reply::graph_error(429, "TooManyRequests", "Slow down.").header("Retry-After", "30")],
    )
    .await;
    let policy = RetryPolicy {
        max_total_wait: Duration::from_secs(1),
        ..fast_policy()
    };
    let (client, events) = recording_client(&fake, policy);

    let started = Instant::now();
    let outcome = client
        .users_delta_page(&creds(), &client.users_delta_start_url(&[]))
        .await;

    assert!(
        matches!(outcome, Err(GraphError::Unavailable { attempts: 1, .. })),
        "{outcome:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(events.lock().expect("events").is_empty());
}

#[tokio::test]
async fn connection_failures_are_retried_then_reported() {
    // Graph lives on a port nobody listens on; the token endpoint works.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_base = format!("http://{}/v1.0", closed.local_addr().expect("addr"));
    drop(closed);
    let fake = Fake::start(|_| Router::new().route(TOKEN_PATH, token_ok())).await;
    let client = GraphClient::new(usersync_graph::GraphConfig {
        graph_base_url: dead_base.clone(),
        ..fake.config()
    });

    let outcome = client
        .users_delta_page(&creds(), &format!("{dead_base}/users/delta"))
        .await;

    let Err(GraphError::Unavailable { attempts, last }) = outcome else {
        panic!("expected Unavailable, got {outcome:?}");
    };
    assert_eq!(attempts, fast_policy().max_attempts);
    assert!(last.contains("onnect"), "{last}");
    assert!(
        !last.contains("users/delta"),
        "links stay out of messages: {last}"
    );
}

#[tokio::test]
async fn requests_can_run_on_spawned_tasks() {
    let fake = graph_with(DELTA_PATH, vec![final_page()]).await;
    let client = fake.client();
    let url = client.users_delta_start_url(&[]);

    // tokio::spawn only accepts Send futures: this is the compile-time check.
    let task = tokio::spawn({
        let client = client.clone();
        async move { client.users_delta_page(&creds(), &url).await }
    });

    assert!(task.await.expect("task").is_ok());
}
