//! The client's metrics, read back through the Prometheus exporter the services
//! use. A binary of its own: the recorder is process-wide.

#[path = "graph/support.rs"]
#[allow(dead_code)]
mod support;

use serde_json::json;
use usersync_graph::RetryPolicy;

use crate::support::{creds, graph_with, Reply};

#[tokio::test]
async fn requests_durations_and_waits_are_counted() {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this test binary");
    let fake = graph_with(
        "/v1.0/users/delta",
        vec![
            Reply::graph_error(429, "TooManyRequests", "Slow down.").header("Retry-After", "0.125"),
            Reply::json(
                200,
                json!({"value": [], "@odata.deltaLink": "{base}/v1.0/users/delta?$deltatoken=next"}),
            ),
        ],
    )
    .await;
    let client = usersync_graph::GraphClient::new(usersync_graph::GraphConfig {
        retry: RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        },
        ..fake.config()
    });

    client
        .users_delta_page(&creds(), &client.users_delta_start_url(&[]))
        .await
        .expect("the page after the wait");

    let text = handle.render();
    // The throttled request and the retried one (token requests are not Graph's).
    assert!(
        text.contains("usersync_graph_requests_total{status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("usersync_graph_requests_total{status=\"429\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("usersync_throttle_wait_seconds_total{target=\"graph\"} 0.125"),
        "{text}"
    );
    assert!(
        text.contains("usersync_graph_request_duration_seconds_count 2"),
        "{text}"
    );
}
