//! The private servers themselves: what a restart keeps, and what a full
//! PostgreSQL answers. The cases build on these.

use std::time::Duration;

use serde_json::{json, Value};
use tokio_postgres::{error::SqlState, NoTls};
use usersync_e2e::{wait_for, workspace_target, PrivatePostgres, PrivateRabbit};

fn logs(name: &str) -> std::path::PathBuf {
    let dir = workspace_target().join("e2e-logs").join(name);
    std::fs::create_dir_all(&dir).expect("a log folder");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: scripts/fault-suite (in CI, rabbitmq_restarted_mid_run restarts the private node mid-run)"]
async fn a_private_rabbitmq_node_keeps_quorum_queue_messages_over_a_restart() {
    let mut rabbit = PrivateRabbit::start(&logs("servers-rabbit")).await;
    let api = format!("http://127.0.0.1:{}/api", rabbit.management_port);
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Value| {
        http.request(method, format!("{api}{path}"))
            .basic_auth("guest", Some("guest"))
            .json(&body)
            .send()
    };
    let declared = call(
        reqwest::Method::PUT,
        "/queues/%2F/fault.check",
        json!({"durable": true, "arguments": {"x-queue-type": "quorum"}}),
    )
    .await
    .expect("declaring a queue");
    assert!(declared.status().is_success(), "{}", declared.status());
    for n in 0..3 {
        let published = call(
            reqwest::Method::POST,
            "/exchanges/%2F/amq.default/publish",
            json!({"properties": {"delivery_mode": 2}, "routing_key": "fault.check",
                   "payload": format!("message {n}"), "payload_encoding": "string"}),
        )
        .await
        .expect("publishing")
        .json::<Value>()
        .await
        .expect("a publish answer");
        assert_eq!(published["routed"], true, "{published}");
    }
    rabbit.restart().await;
    let depth = || async {
        let queue: Value = call(reqwest::Method::GET, "/queues/%2F/fault.check", Value::Null)
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        queue["messages"].as_u64().filter(|&n| n > 0)
    };
    let messages = wait_for(
        "the queue's depth after the restart",
        Duration::from_secs(60),
        depth,
    )
    .await;
    assert_eq!(
        messages, 3,
        "a restart of the node lost messages of a quorum queue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_postgres_keeps_data_over_a_restart_and_refuses_clients_while_full() {
    let postgres = PrivatePostgres::start(&logs("servers-postgres"), 20);
    let url = postgres.admin_url();
    let connect = || tokio_postgres::connect(&url, NoTls);
    let (client, connection) = connect().await.expect("connecting");
    tokio::spawn(connection);
    client
        .batch_execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)")
        .await
        .expect("writing");

    postgres.restart();
    assert!(
        client.is_closed() || client.simple_query("SELECT 1").await.is_err(),
        "the restart did not cut the connection"
    );
    let (client, connection) = connect().await.expect("connecting after the restart");
    tokio::spawn(connection);
    let kept: i32 = client
        .query_one("SELECT n FROM kept", &[])
        .await
        .expect("reading")
        .get(0);
    assert_eq!(kept, 42);

    let refusal = postgres.refuse_connections().await;
    assert_eq!(refusal.held(), 20, "every slot is held");
    assert!(
        client.simple_query("SELECT 1").await.is_err(),
        "the other client's backend was ended"
    );
    let refused = connect()
        .await
        .err()
        .expect("a full cluster refuses a new client");
    assert_eq!(refused.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{refused}");
    refusal.release();
    wait_for("a connection once released", Duration::from_secs(30), || async {
        connect().await.ok().map(drop)
    })
    .await;
}
