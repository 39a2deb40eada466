//! A subscription's life in the store: claimed by one scheduler replica at a
//! time, created (clientState encrypted), failed with a backoff, renewed,
//! asked for lifecycle work, lost, and removed; against a real PostgreSQL.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use usersync_store::testing::{in_fresh_database, store_with_minimal_tenant, TEST_KEY};
use usersync_store::{GraphSubscription, SecretKey, Store, SubscriptionAction};

const LEASE: Duration = Duration::from_secs(120);

fn key() -> SecretKey {
    SecretKey::from_base64(TEST_KEY).expect("a valid test key")
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("a date")
        .with_timezone(&Utc)
}

async fn users_row(store: &Store) -> GraphSubscription {
    let rows = store
        .graph_subscriptions(Some("acme"), Some(&key()))
        .await
        .expect("listing");
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows.into_iter().next().expect("one row")
}

#[tokio::test]
async fn claim_create_fail_renew_lose_and_remove() {
    in_fresh_database(|url| async move {
        let store = store_with_minimal_tenant(&url, "acme", 2).await;
        let now = at("2026-12-02T06:00:00Z");

        // One replica at a time; the lease runs out, a release ends it early.
        assert!(store
            .claim_graph_subscription("acme", "/users", now, LEASE)
            .await
            .expect("claim"));
        assert!(!store
            .claim_graph_subscription("acme", "/users", now, LEASE)
            .await
            .expect("claim"));
        let after_lease = now + TimeDelta::seconds(121);
        assert!(store
            .claim_graph_subscription("acme", "/users", after_lease, LEASE)
            .await
            .expect("claim"));
        store
            .release_graph_subscription("acme", "/users")
            .await
            .expect("release");
        assert!(store
            .claim_graph_subscription("acme", "/users", now, LEASE)
            .await
            .expect("claim"));
        let claimed = users_row(&store).await;
        assert_eq!((claimed.subscription_id, claimed.attempts), (None, 0));

        // A failure records the reason and the next attempt, and releases the claim.
        let retry_at = now + TimeDelta::minutes(1);
        store
            .graph_subscription_failed("acme", "/users", "URL not reachable", now, retry_at)
            .await
            .expect("failed");
        let failed = users_row(&store).await;
        assert_eq!(failed.last_error.as_deref(), Some("URL not reachable"));
        assert_eq!((failed.next_attempt_at, failed.attempts), (Some(retry_at), 1));
        assert!(store
            .claim_graph_subscription("acme", "/users", now, LEASE)
            .await
            .expect("claim"));

        // Created: the failure is cleared, the clientState only readable with the key.
        let expires = now + TimeDelta::days(29);
        store
            .graph_subscription_created("acme", "/users", "sub-1", "state-1", expires, &key())
            .await
            .expect("created");
        let created = users_row(&store).await;
        assert_eq!(created.subscription_id.as_deref(), Some("sub-1"));
        assert_eq!(created.client_state.as_deref(), Some("state-1"));
        assert_eq!(
            (created.expires_at, created.last_error, created.attempts),
            (Some(expires), None, 0)
        );
        let unkeyed = store
            .graph_subscriptions(Some("acme"), None)
            .await
            .expect("listing");
        assert_eq!(unkeyed[0].client_state, None);
        let found = store
            .graph_subscription_by_id("sub-1", &key())
            .await
            .expect("lookup");
        assert_eq!(found.and_then(|row| row.client_state).as_deref(), Some("state-1"));
        assert!(
            store
                .claim_graph_subscription("acme", "/users", now, LEASE)
                .await
                .expect("claim"),
            "created releases"
        );

        // A lifecycle event asks for work; a renewal clears it and the failure.
        let tenant = store
            .request_graph_subscription_action("sub-1", SubscriptionAction::Reauthorize)
            .await
            .expect("action");
        assert_eq!(tenant.as_deref(), Some("acme"));
        assert_eq!(
            users_row(&store).await.action,
            Some(SubscriptionAction::Reauthorize)
        );
        store
            .graph_subscription_failed("acme", "/users", "throttled", now, retry_at)
            .await
            .expect("failed");
        let renewed_until = expires + TimeDelta::days(15);
        store
            .graph_subscription_renewed("acme", "/users", renewed_until)
            .await
            .expect("renewed");
        let renewed = users_row(&store).await;
        assert_eq!(
            (
                renewed.expires_at,
                renewed.action,
                renewed.last_error,
                renewed.next_attempt_at,
                renewed.attempts
            ),
            (Some(renewed_until), None, None, None, 0)
        );

        // Lost at Graph: the id goes, so the next pass creates it again.
        store
            .graph_subscription_lost("acme", "/users")
            .await
            .expect("lost");
        let lost = users_row(&store).await;
        assert_eq!(
            (lost.subscription_id, lost.client_state, lost.expires_at),
            (None, None, None)
        );
        assert_eq!(
            store
                .request_graph_subscription_action("sub-1", SubscriptionAction::Recreate)
                .await
                .expect("action"),
            None
        );

        store
            .remove_graph_subscription("acme", "/users")
            .await
            .expect("removed");
        assert!(store
            .graph_subscriptions(Some("acme"), None)
            .await
            .expect("listing")
            .is_empty());
    })
    .await;
}

#[tokio::test]
async fn the_last_notification_of_each_tenant_only_moves_forward() {
    in_fresh_database(|url| async move {
        let store = store_with_minimal_tenant(&url, "acme", 2).await;
        assert!(store.last_notifications(None).await.expect("read").is_empty());
        let later = at("2026-12-02T06:00:05Z");
        store
            .record_notifications(&["acme".into()], later)
            .await
            .expect("recorded");
        store
            .record_notifications(&["acme".into()], at("2026-12-02T06:00:01Z"))
            .await
            .expect("recorded");
        let all = store.last_notifications(None).await.expect("read");
        assert_eq!(all.get("acme"), Some(&later));
        assert_eq!(
            store.last_notifications(Some("other")).await.expect("read").len(),
            0
        );
        assert_eq!(
            store.last_notification_at("acme").await.expect("read"),
            Some(later)
        );
    })
    .await;
}
