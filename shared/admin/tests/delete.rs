//! Deleting a tenant deletes its change-notification subscriptions at Graph
//! first, best effort: one Graph cannot delete is named with the reason and
//! its expiry, and the tenant is deleted anyway. Against a real PostgreSQL
//! and a fake Graph.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use axum::{Json, Router};
use chrono::{SecondsFormat, TimeDelta, Utc};
use serde_json::{json, Value};
use usersync_graph::{GraphClient, GraphConfig, RetryPolicy};
use usersync_store::testing::{in_fresh_database, store_with_minimal_tenant, TEST_KEY};
use usersync_store::SecretKey;

type Deletes = Arc<Mutex<Vec<String>>>;

/// `sub-ok` is deleted, `sub-gone` is unknown, anything else fails with 503.
async fn delete_subscription(State(deletes): State<Deletes>, Path(id): Path<String>) -> StatusCode {
    deletes.lock().expect("log").push(id.clone());
    match id.as_str() {
        "sub-ok" => StatusCode::NO_CONTENT,
        "sub-gone" => StatusCode::NOT_FOUND,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn token() -> Json<Value> {
    Json(json!({"token_type": "Bearer", "expires_in": 3599, "access_token": "token"}))
}

#[tokio::test]
async fn subscriptions_are_deleted_at_graph_and_one_that_is_not_is_named() {
    in_fresh_database(|url| async move {
        let store = store_with_minimal_tenant(&url, "acme", 2).await;
        let key = SecretKey::from_base64(TEST_KEY).expect("a test key");
        let deletes: Deletes = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/v1.0/subscriptions/{id}", delete(delete_subscription))
            .with_state(Arc::clone(&deletes));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let graph = GraphClient::new(GraphConfig {
            graph_base_url: format!("{base}/v1.0"),
            login_base_url: base,
            retry: RetryPolicy {
                max_attempts: 2,
                min_delay: Duration::from_millis(5),
                max_delay: Duration::from_millis(10),
                max_total_wait: Duration::from_secs(1),
            },
        });
        let now = Utc::now();
        let live = now + TimeDelta::days(20);
        for (resource, id, expires) in [
            ("/users", "sub-ok", live),
            ("/groups", "sub-down", live),
            ("/devices", "sub-gone", live),
            ("/expired", "sub-expired", now - TimeDelta::days(1)),
        ] {
            store
                .graph_subscription_created("acme", resource, id, "state", expires, &key)
                .await
                .expect("recorded");
        }

        let deleted = usersync_admin::tenants::delete_with_subscriptions(&store, &key, &graph, "acme", None)
            .await
            .expect("deleted");

        assert!(deleted.deleted);
        assert!(store.tenant("acme", None).await.expect("read").is_none());
        let mut asked = deletes.lock().expect("log").clone();
        asked.sort();
        asked.dedup();
        assert_eq!(
            asked,
            ["sub-down", "sub-gone", "sub-ok"],
            "an expired one is not asked for"
        );
        assert_eq!(
            deleted.subscriptions_left.len(),
            1,
            "{:?}",
            deleted.subscriptions_left
        );
        let left = &deleted.subscriptions_left[0];
        for part in [
            "subscription sub-down on /groups could not be deleted at Graph (Microsoft Graph unavailable",
            &format!(
                "Graph drops it by {}",
                live.to_rfc3339_opts(SecondsFormat::Secs, true)
            ),
        ] {
            assert!(left.contains(part), "{part:?} in {left}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_stale_version_deletes_nothing_at_graph() {
    in_fresh_database(|url| async move {
        let store = store_with_minimal_tenant(&url, "acme", 2).await;
        let key = SecretKey::from_base64(TEST_KEY).expect("a test key");
        store
            .graph_subscription_created(
                "acme",
                "/users",
                "sub-1",
                "state",
                Utc::now() + TimeDelta::days(20),
                &key,
            )
            .await
            .expect("recorded");
        // A Graph nobody listens at: the refusal must come before any call to it.
        let graph = GraphClient::new(GraphConfig {
            graph_base_url: "http://127.0.0.1:9/v1.0".into(),
            login_base_url: "http://127.0.0.1:9".into(),
            retry: RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
        });
        let version = store
            .tenant("acme", None)
            .await
            .expect("read")
            .expect("a tenant")
            .version;

        let outcome = usersync_admin::tenants::delete_with_subscriptions(
            &store,
            &key,
            &graph,
            "acme",
            Some(version + 1),
        )
        .await;

        assert!(
            matches!(outcome, Err(usersync_admin::AdminError::Stale(_))),
            "{outcome:?}"
        );
        assert!(store.tenant("acme", None).await.expect("read").is_some());
        let rows = store.graph_subscriptions(Some("acme"), None).await.expect("rows");
        assert_eq!(rows[0].subscription_id.as_deref(), Some("sub-1"));
    })
    .await;
}
