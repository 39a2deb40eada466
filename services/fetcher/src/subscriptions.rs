//! The subscription manager: keeps each tenant's Graph change-notification
//! subscriptions (`/users`, and `/groups` when `memberOf` names groups) in
//! line with its `change_notifications` flag. Every pass looks at every
//! recorded row and every tenant with the flag on, decides what each
//! (tenant, resource) needs ([`decide`], pure), and does it under the row's
//! claim, a few at a time. A failure is recorded on the row with a backoff
//! and reported as a run warning; it never stops other tenants or the runs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt;
use rand::RngCore;
use usersync_core::TenantConfig;
use usersync_graph::{
    credentials_of, subscription_resources, Credentials, GraphClient, GraphError, NewSubscription,
};
use usersync_runtime::{clock, CancellationToken};
use usersync_store::{GraphSubscription, SecretKey, Store, SubscriptionAction};

/// Users and groups subscriptions last at most 29 days (41760 minutes); we
/// ask for 5 minutes less so clock skew never makes Graph refuse the expiry.
const LONGEST_EXPIRY: TimeDelta = TimeDelta::minutes(41_760 - 5);
/// Renewed when less than this remains: about every 15 days, with two weeks
/// of retries before a subscription would lapse.
const RENEW_BEFORE: TimeDelta = TimeDelta::days(14);
/// Waits after the 1st, 2nd, 3rd and later failures in a row.
const BACKOFF: [TimeDelta; 4] = [
    TimeDelta::minutes(1),
    TimeDelta::minutes(5),
    TimeDelta::minutes(15),
    TimeDelta::hours(1),
];
/// (tenant, resource) pairs worked on at once per replica, so thousands of
/// tenants do not stampede Graph.
const CONCURRENCY: usize = 8;
const CHANGE_TYPE: &str = "updated,deleted";
/// The variable naming the address Graph reaches usersync-api at.
pub const PUBLIC_URL_VAR: &str = "USERSYNC_PUBLIC_URL";

/// What a (tenant, resource) needs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Create,
    Renew,
    Reauthorize,
    Recreate,
    Delete,
    Nothing,
}

/// The decision table. `wanted`: the tenant has notifications on and needs
/// this resource; `row`: what is recorded for it.
pub fn decide(wanted: bool, row: Option<&GraphSubscription>, now: DateTime<Utc>) -> Decision {
    let Some(row) = row else {
        return if wanted {
            Decision::Create
        } else {
            Decision::Nothing
        };
    };
    // Nothing at Graph to delete: the row goes at once, backoff or not.
    if !wanted && row.subscription_id.is_none() {
        return Decision::Delete;
    }
    if row.next_attempt_at.is_some_and(|at| at > now) {
        return Decision::Nothing;
    }
    if !wanted {
        return Decision::Delete;
    }
    if row.subscription_id.is_none() {
        return Decision::Create;
    }
    match (row.expires_at, row.action) {
        // Graph has dropped an expired subscription by now.
        (Some(at), _) if at <= now => Decision::Recreate,
        (_, Some(SubscriptionAction::Recreate)) => Decision::Recreate,
        (_, Some(SubscriptionAction::Reauthorize)) => Decision::Reauthorize,
        (Some(at), None) if at - now >= RENEW_BEFORE => Decision::Nothing,
        _ => Decision::Renew,
    }
}

/// When to try again after a failure, given the failures in a row before it.
pub fn next_attempt(failures_before: i32, now: DateTime<Utc>) -> DateTime<Utc> {
    let step = usize::try_from(failures_before)
        .unwrap_or(0)
        .min(BACKOFF.len() - 1);
    now + BACKOFF[step]
}

/// The expiry asked for a subscription created or renewed at `now`.
pub fn requested_expiry(now: DateTime<Utc>) -> DateTime<Utc> {
    now + LONGEST_EXPIRY
}

/// A fresh clientState: 32 random bytes, base64url.
fn new_client_state() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `USERSYNC_PUBLIC_URL` without its trailing slash.
pub fn public_url_from_env() -> Option<String> {
    usersync_runtime::env_opt(PUBLIC_URL_VAR).map(|url| public_url(&url))
}

fn public_url(raw: &str) -> String {
    raw.trim().trim_end_matches('/').to_owned()
}

pub struct Manager {
    pub store: Store,
    pub graph: GraphClient,
    pub key: SecretKey,
    /// Where Graph reaches usersync-api; `None` makes every create a failure saying so.
    pub public_url: Option<String>,
}

/// One (tenant, resource) a pass may work on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Pair {
    tenant_id: String,
    resource: String,
}

/// Passes every `interval`, the first at once, until `stop`; a pair in
/// progress finishes, no new one starts.
pub async fn run(manager: Manager, interval: Duration, stop: CancellationToken) {
    tracing::info!(poll_s = interval.as_secs_f64(), "subscription manager started");
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {
                if let Err(err) = manager.pass(&stop).await {
                    tracing::warn!(error = %format!("{err:#}"), "subscription pass failed; trying again");
                }
            }
        }
    }
}

impl Manager {
    /// One look at every subscription that is recorded or wanted.
    pub async fn pass(&self, stop: &CancellationToken) -> anyhow::Result<()> {
        let now = clock::now();
        let mut wanted: BTreeMap<Pair, bool> = BTreeMap::new();
        for tenant in self.store.tenants().await? {
            if tenant.config.change_notifications {
                for resource in subscription_resources(&tenant.config) {
                    wanted.insert(pair(&tenant.config.id, resource), true);
                }
            }
        }
        let rows: BTreeMap<Pair, GraphSubscription> = self
            .store
            .graph_subscriptions(None, None)
            .await?
            .into_iter()
            .map(|row| (pair(&row.tenant_id, &row.resource), row))
            .collect();
        let pairs: BTreeSet<Pair> = wanted.keys().chain(rows.keys()).cloned().collect();
        // Decided again under the claim on a fresh read; this only skips the
        // many pairs with nothing to do without claiming them.
        let due: Vec<Pair> = pairs
            .into_iter()
            .filter(|p| decide(wanted.contains_key(p), rows.get(p), now) != Decision::Nothing)
            .collect();
        futures::stream::iter(due)
            .take_until(stop.cancelled())
            .for_each_concurrent(CONCURRENCY, |p| async move {
                if let Err(err) = self.work(&p).await {
                    tracing::warn!(tenant_id = %p.tenant_id, resource = %p.resource, error = %format!("{err:#}"), "subscription work failed; tried again next pass");
                }
            })
            .await;
        Ok(())
    }

    /// Claims the pair, decides on what is recorded now and does it.
    async fn work(&self, p: &Pair) -> anyhow::Result<()> {
        let now = clock::now();
        if !self
            .store
            .claim_graph_subscription(&p.tenant_id, &p.resource, now, self.lease())
            .await?
        {
            return Ok(()); // another replica has it
        }
        let outcome = self.work_claimed(p, now).await;
        if outcome.is_err() {
            // Best effort: the lease runs out anyway.
            let _ = self
                .store
                .release_graph_subscription(&p.tenant_id, &p.resource)
                .await;
        }
        outcome
    }

    /// Long enough for the Graph calls of one pair with all their retries
    /// (token, renew, create again), so a slow Graph does not let another
    /// replica work on the same row meanwhile.
    fn lease(&self) -> Duration {
        self.graph.config().retry.max_total_wait * 3 + Duration::from_secs(120)
    }

    async fn work_claimed(&self, p: &Pair, now: DateTime<Utc>) -> anyhow::Result<()> {
        let tenant = self.store.tenant(&p.tenant_id, Some(&self.key)).await?;
        let row = self
            .store
            .graph_subscriptions(Some(&p.tenant_id), Some(&self.key))
            .await?
            .into_iter()
            .find(|row| row.resource == p.resource);
        let wanted = tenant.as_ref().is_some_and(|t| wants(&t.config, &p.resource));
        let decision = decide(wanted, row.as_ref(), now);
        let (Some(tenant), Some(row)) = (tenant, row) else {
            // The tenant was deleted meanwhile (its rows with it).
            return Ok(());
        };
        let creds = credentials_of(&tenant.config);
        let outcome = match decision {
            Decision::Nothing => {
                self.store
                    .release_graph_subscription(&p.tenant_id, &p.resource)
                    .await?;
                return Ok(());
            }
            Decision::Create => self.create(&creds, p, now).await,
            Decision::Recreate => {
                self.store
                    .graph_subscription_lost(&p.tenant_id, &p.resource)
                    .await?;
                self.create(&creds, p, now).await
            }
            Decision::Renew => self.renew(&creds, p, &row, now).await,
            Decision::Reauthorize => self.reauthorize(&creds, p, &row, now).await,
            Decision::Delete => self.delete(&creds, p, &row, now).await,
        };
        match outcome {
            Ok(Outcome::Done) => Ok(()),
            Ok(Outcome::Failed(reason)) => {
                tracing::warn!(tenant_id = %p.tenant_id, resource = %p.resource, ?decision, %reason, "subscription work failed");
                self.store
                    .graph_subscription_failed(
                        &p.tenant_id,
                        &p.resource,
                        &reason,
                        now,
                        next_attempt(row.attempts, now),
                    )
                    .await
            }
            Err(err) => Err(err),
        }
    }

    async fn create(&self, creds: &Credentials, p: &Pair, now: DateTime<Utc>) -> anyhow::Result<Outcome> {
        let Some(public_url) = &self.public_url else {
            return Ok(Outcome::Failed(format!(
                "{PUBLIC_URL_VAR} is not set: set it to the https address Graph reaches usersync-api at"
            )));
        };
        let client_state = new_client_state();
        let new = NewSubscription {
            resource: p.resource.clone(),
            change_type: CHANGE_TYPE.to_owned(),
            notification_url: format!("{public_url}/graph/notifications"),
            lifecycle_notification_url: format!("{public_url}/graph/lifecycle"),
            client_state: client_state.clone(),
            expires_at: requested_expiry(now),
        };
        match self.graph.create_subscription(creds, &new).await {
            Ok(created) => {
                self.store
                    .graph_subscription_created(
                        &p.tenant_id,
                        &p.resource,
                        &created.id,
                        &client_state,
                        created.expires_at,
                        &self.key,
                    )
                    .await?;
                tracing::info!(tenant_id = %p.tenant_id, resource = %p.resource, subscription_id = %created.id, expires_at = %created.expires_at, "subscription created");
                Ok(Outcome::Done)
            }
            Err(err) => Ok(Outcome::Failed(err.to_string())),
        }
    }

    async fn renew(
        &self,
        creds: &Credentials,
        p: &Pair,
        row: &GraphSubscription,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Outcome> {
        let id = row.subscription_id.as_deref().unwrap_or_default();
        match self
            .graph
            .renew_subscription(creds, id, requested_expiry(now))
            .await
        {
            Ok(renewed) => {
                self.store
                    .graph_subscription_renewed(&p.tenant_id, &p.resource, renewed.expires_at)
                    .await?;
                tracing::info!(tenant_id = %p.tenant_id, resource = %p.resource, subscription_id = %id, expires_at = %renewed.expires_at, "subscription renewed");
                Ok(Outcome::Done)
            }
            Err(err) => self.lost_or_failed(creds, p, err, now).await,
        }
    }

    async fn reauthorize(
        &self,
        creds: &Credentials,
        p: &Pair,
        row: &GraphSubscription,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Outcome> {
        let id = row.subscription_id.as_deref().unwrap_or_default();
        match self.graph.reauthorize_subscription(creds, id).await {
            Ok(()) => {
                // Clears the action; the expiry is unchanged (a later pass renews it).
                let expires_at = row.expires_at.unwrap_or(now);
                self.store
                    .graph_subscription_renewed(&p.tenant_id, &p.resource, expires_at)
                    .await?;
                tracing::info!(tenant_id = %p.tenant_id, resource = %p.resource, subscription_id = %id, "subscription reauthorized");
                Ok(Outcome::Done)
            }
            Err(err) => self.lost_or_failed(creds, p, err, now).await,
        }
    }

    /// Graph lost the subscription: forget it and create it again in this pass.
    async fn lost_or_failed(
        &self,
        creds: &Credentials,
        p: &Pair,
        err: GraphError,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Outcome> {
        let GraphError::SubscriptionNotFound { .. } = err else {
            return Ok(Outcome::Failed(err.to_string()));
        };
        tracing::info!(tenant_id = %p.tenant_id, resource = %p.resource, "Graph no longer has the subscription: creating it again");
        self.store
            .graph_subscription_lost(&p.tenant_id, &p.resource)
            .await?;
        self.create(creds, p, now).await
    }

    async fn delete(
        &self,
        creds: &Credentials,
        p: &Pair,
        row: &GraphSubscription,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Outcome> {
        // An expired subscription is gone at Graph already.
        let live = row.expires_at.is_none_or(|at| at > now);
        if let (Some(id), true) = (&row.subscription_id, live) {
            match self.graph.delete_subscription(creds, id).await {
                Ok(()) | Err(GraphError::SubscriptionNotFound { .. }) => {}
                Err(err) => return Ok(Outcome::Failed(err.to_string())),
            }
            tracing::info!(tenant_id = %p.tenant_id, resource = %p.resource, subscription_id = %id, "subscription deleted");
        }
        self.store
            .remove_graph_subscription(&p.tenant_id, &p.resource)
            .await?;
        Ok(Outcome::Done)
    }
}

/// How a Graph step ended; store errors are the `Err` around it.
enum Outcome {
    Done,
    /// Graph refused or failed: the reason for the operator.
    Failed(String),
}

fn pair(tenant_id: &str, resource: &str) -> Pair {
    Pair {
        tenant_id: tenant_id.to_owned(),
        resource: resource.to_owned(),
    }
}

fn wants(tenant: &TenantConfig, resource: &str) -> bool {
    tenant.change_notifications && subscription_resources(tenant).contains(&resource)
}

/// The run warning for each failing subscription (see round.rs).
pub fn run_warning(row: &GraphSubscription) -> Option<String> {
    let reason = row.last_error.as_deref()?;
    Some(format!(
        "change notifications are not working: subscription on {}: {reason}; the tenant syncs on its schedule",
        row.resource
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-02T06:00:00Z")
            .expect("a date")
            .with_timezone(&Utc)
    }

    fn row() -> GraphSubscription {
        GraphSubscription {
            tenant_id: "acme".into(),
            resource: "/users".into(),
            subscription_id: Some("sub-1".into()),
            client_state: None,
            expires_at: Some(now() + TimeDelta::days(20)),
            action: None,
            last_error: None,
            last_error_at: None,
            next_attempt_at: None,
            attempts: 0,
        }
    }

    fn with(change: impl FnOnce(&mut GraphSubscription)) -> GraphSubscription {
        let mut row = row();
        change(&mut row);
        row
    }

    #[test]
    fn the_decision_table() {
        let not_created = with(|r| {
            r.subscription_id = None;
            r.expires_at = None;
        });
        let backing_off = with(|r| {
            r.subscription_id = None;
            r.next_attempt_at = Some(now() + TimeDelta::minutes(1));
        });
        let backoff_over = with(|r| {
            r.subscription_id = None;
            r.next_attempt_at = Some(now() - TimeDelta::seconds(1));
        });
        let renew_failing = with(|r| {
            r.expires_at = Some(now() + TimeDelta::days(3));
            r.next_attempt_at = Some(now() + TimeDelta::minutes(5));
        });
        let cases: Vec<(&str, bool, Option<GraphSubscription>, Decision)> = vec![
            ("wanted, nothing recorded", true, None, Decision::Create),
            ("not wanted, nothing recorded", false, None, Decision::Nothing),
            ("fresh", true, Some(row()), Decision::Nothing),
            (
                "exactly 14 days left",
                true,
                Some(with(|r| r.expires_at = Some(now() + RENEW_BEFORE))),
                Decision::Nothing,
            ),
            (
                "less than 14 days left",
                true,
                Some(with(|r| {
                    r.expires_at = Some(now() + RENEW_BEFORE - TimeDelta::seconds(1))
                })),
                Decision::Renew,
            ),
            (
                "expiry unknown",
                true,
                Some(with(|r| r.expires_at = None)),
                Decision::Renew,
            ),
            (
                "expired",
                true,
                Some(with(|r| r.expires_at = Some(now()))),
                Decision::Recreate,
            ),
            (
                "claimed but never created",
                true,
                Some(not_created.clone()),
                Decision::Create,
            ),
            (
                "creating failed, waiting",
                true,
                Some(backing_off.clone()),
                Decision::Nothing,
            ),
            (
                "creating failed, wait over",
                true,
                Some(backoff_over),
                Decision::Create,
            ),
            (
                "renewing failed, waiting",
                true,
                Some(renew_failing.clone()),
                Decision::Nothing,
            ),
            (
                "reauthorization asked",
                true,
                Some(with(|r| r.action = Some(SubscriptionAction::Reauthorize))),
                Decision::Reauthorize,
            ),
            (
                "removal reported",
                true,
                Some(with(|r| r.action = Some(SubscriptionAction::Recreate))),
                Decision::Recreate,
            ),
            (
                "reauthorization asked of an expired one",
                true,
                Some(with(|r| {
                    r.action = Some(SubscriptionAction::Reauthorize);
                    r.expires_at = Some(now() - TimeDelta::minutes(1));
                })),
                Decision::Recreate,
            ),
            (
                "reauthorization asked, never created",
                true,
                Some(with(|r| {
                    r.subscription_id = None;
                    r.action = Some(SubscriptionAction::Reauthorize);
                })),
                Decision::Create,
            ),
            ("turned off", false, Some(row()), Decision::Delete),
            (
                "turned off, never created",
                false,
                Some(not_created),
                Decision::Delete,
            ),
            (
                "turned off while creating failed",
                false,
                Some(backing_off),
                Decision::Delete,
            ),
            (
                "turned off while deleting failed, waiting",
                false,
                Some(renew_failing),
                Decision::Nothing,
            ),
        ];
        for (case, wanted, row, expected) in cases {
            assert_eq!(decide(wanted, row.as_ref(), now()), expected, "{case}");
        }
    }

    #[test]
    fn the_public_url_loses_its_trailing_slash() {
        assert_eq!(
            public_url("https://sync.example.com/ "),
            "https://sync.example.com"
        );
        assert_eq!(
            public_url("https://sync.example.com/usersync//"),
            "https://sync.example.com/usersync"
        );
    }

    #[test]
    fn backoff_is_one_five_fifteen_minutes_then_hourly() {
        let waits: Vec<i64> = (0..6)
            .map(|failures| (next_attempt(failures, now()) - now()).num_minutes())
            .collect();
        assert_eq!(waits, [1, 5, 15, 60, 60, 60]);
    }

    #[test]
    fn expiry_asked_is_29_days_less_5_minutes() {
        assert_eq!(
            requested_expiry(now()) - now(),
            TimeDelta::minutes(41_760) - TimeDelta::minutes(5)
        );
    }

    #[test]
    fn client_states_are_32_random_bytes_in_base64url() {
        let (one, two) = (new_client_state(), new_client_state());
        assert_ne!(one, two);
        let bytes = URL_SAFE_NO_PAD.decode(&one).expect("base64url");
        assert_eq!(bytes.len(), 32);
    }

    #[test]
    fn the_warning_names_resource_and_reason_only_while_failing() {
        assert_eq!(run_warning(&row()), None);
        let failing = with(|r| r.last_error = Some("consent missing".into()));
        assert_eq!(
            run_warning(&failing).as_deref(),
            Some("change notifications are not working: subscription on /users: consent missing; the tenant syncs on its schedule")
        );
    }
}

/// Passes against a real PostgreSQL and a fake Graph that keeps subscriptions.
#[cfg(test)]
mod pass_tests {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::{patch, post};
    use axum::{Json, Router};
    use serde_json::{json, Value};
    use usersync_graph::{GraphConfig, RetryPolicy};
    use usersync_store::testing::{in_fresh_database, TEST_KEY};

    use super::*;

    #[derive(Default)]
    struct Graph {
        created: u32,
        live: HashSet<String>,
        /// Answer creates with Graph's failed-validation error.
        refuse_creates: bool,
        /// (method, path, body) of every subscription call.
        calls: Vec<(String, String, Value)>,
    }

    type Shared = Arc<Mutex<Graph>>;

    async fn create(State(graph): State<Shared>, Json(body): Json<Value>) -> Response {
        let mut graph = graph.lock().expect("graph");
        graph
            .calls
            .push(("POST".into(), "/subscriptions".into(), body.clone()));
        if graph.refuse_creates {
            let error = json!({"error": {"code": "ValidationError", "message": "Subscription validation request failed. Response must exactly match validationToken query parameter."}});
            return (StatusCode::BAD_REQUEST, Json(error)).into_response();
        }
        graph.created += 1;
        let id = format!("sub-{}", graph.created);
        graph.live.insert(id.clone());
        let answer =
            json!({"id": id, "resource": body["resource"], "expirationDateTime": body["expirationDateTime"]});
        (StatusCode::CREATED, Json(answer)).into_response()
    }

    async fn renew(State(graph): State<Shared>, Path(id): Path<String>, Json(body): Json<Value>) -> Response {
        let mut graph = graph.lock().expect("graph");
        graph
            .calls
            .push(("PATCH".into(), format!("/subscriptions/{id}"), body.clone()));
        if !graph.live.contains(&id) {
            let error = json!({"error": {"code": "ResourceNotFound", "message": "gone"}});
            return (StatusCode::NOT_FOUND, Json(error)).into_response();
        }
        Json(json!({"id": id, "expirationDateTime": body["expirationDateTime"]})).into_response()
    }

    async fn delete(State(graph): State<Shared>, Path(id): Path<String>) -> StatusCode {
        let mut graph = graph.lock().expect("graph");
        graph
            .calls
            .push(("DELETE".into(), format!("/subscriptions/{id}"), Value::Null));
        if graph.live.remove(&id) {
            StatusCode::NO_CONTENT
        } else {
            StatusCode::NOT_FOUND
        }
    }

    async fn token() -> Json<Value> {
        Json(json!({"token_type": "Bearer", "expires_in": 3599, "access_token": "token"}))
    }

    async fn fake_graph(graph: Shared) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/v1.0/subscriptions", post(create))
            .route("/v1.0/subscriptions/{id}", patch(renew).delete(delete))
            .with_state(graph);
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }

    fn key() -> SecretKey {
        SecretKey::from_base64(TEST_KEY).expect("a test key")
    }

    async fn set_tenant(store: &Store, notifications: bool, member_of: &[&str]) {
        let document = json!({
            "id": "acme", "name": "Acme AB", "type": "ad_sync", "mode": "user_sync",
            "change_notifications": notifications,
            "provider_settings": {"tenant_id": "t-acme", "client_id": "c", "client_secret": "s",
                                  "user_filter": {"memberOf": member_of}},
            "pbx_company_id": "acme", "field_mapping": {}
        });
        let tenant = usersync_core::parse_tenant_file(&document.to_string()).expect("a tenant file");
        store
            .upsert_tenant(&tenant, &key())
            .await
            .expect("saving the tenant");
    }

    async fn rows(store: &Store) -> Vec<GraphSubscription> {
        store
            .graph_subscriptions(Some("acme"), Some(&key()))
            .await
            .expect("rows")
    }

    fn calls(graph: &Shared) -> Vec<(String, String)> {
        let graph = graph.lock().expect("graph");
        graph
            .calls
            .iter()
            .map(|(method, path, _)| (method.clone(), path.clone()))
            .collect()
    }

    fn call(method: &str, path: &str) -> (String, String) {
        (method.to_owned(), path.to_owned())
    }

    #[tokio::test]
    async fn passes_create_renew_recreate_delete_and_back_off() {
        in_fresh_database(|url| async move {
            let store = Store::connect(&url, 4).await.expect("store");
            let graph: Shared = Arc::default();
            let base = fake_graph(Arc::clone(&graph)).await;
            let client = GraphClient::new(GraphConfig {
                graph_base_url: format!("{base}/v1.0"),
                login_base_url: base.clone(),
                retry: RetryPolicy {
                    max_attempts: 2,
                    min_delay: Duration::from_millis(5),
                    max_delay: Duration::from_millis(10),
                    max_total_wait: Duration::from_secs(2),
                },
            });
            let manager = Manager {
                store: store.clone(),
                graph: client,
                key: key(),
                public_url: Some("https://sync.example.com".into()),
            };
            let stop = CancellationToken::new();

            // Turned on, scoped by a group: /users and /groups are created.
            set_tenant(&store, true, &["Telephony"]).await;
            let before = clock::now();
            manager.pass(&stop).await.expect("pass");
            let created = rows(&store).await;
            let resources: Vec<&str> = created.iter().map(|r| r.resource.as_str()).collect();
            assert_eq!(resources, ["/groups", "/users"]);
            for row in &created {
                assert!(row.subscription_id.is_some(), "{row:?}");
                let state = row.client_state.as_deref().expect("a clientState");
                assert_eq!(URL_SAFE_NO_PAD.decode(state).expect("base64url").len(), 32);
                let left = row.expires_at.expect("an expiry") - before;
                // Asked for at the pass's now, sent to the millisecond.
                let asked = LONGEST_EXPIRY - TimeDelta::milliseconds(1)..LONGEST_EXPIRY + TimeDelta::minutes(1);
                assert!(asked.contains(&left), "{left}");
            }
            {
                let graph = graph.lock().expect("graph");
                let (_, _, body) = &graph.calls[0];
                assert_eq!(body["notificationUrl"], "https://sync.example.com/graph/notifications");
                assert_eq!(body["lifecycleNotificationUrl"], "https://sync.example.com/graph/lifecycle");
                assert_eq!(body["changeType"], "updated,deleted");
            }

            // Nothing due: a pass calls Graph for nothing.
            manager.pass(&stop).await.expect("pass");
            assert_eq!(calls(&graph).len(), 2);

            // /users due for renewal, but Graph lost it: recreated in the same pass.
            let users_id = created[1].subscription_id.clone().expect("an id");
            graph.lock().expect("graph").live.remove(&users_id);
            store
                .graph_subscription_renewed("acme", "/users", clock::now() + TimeDelta::days(2))
                .await
                .expect("renewed");
            manager.pass(&stop).await.expect("pass");
            assert_eq!(
                calls(&graph)[2..],
                [call("PATCH", &format!("/subscriptions/{users_id}")), call("POST", "/subscriptions")]
            );
            let users = rows(&store).await.into_iter().find(|r| r.resource == "/users").expect("/users");
            assert_eq!(users.subscription_id.as_deref(), Some("sub-3"));
            assert_ne!(users.client_state, created[1].client_state, "a fresh clientState");

            // memberOf no longer names groups: /groups is deleted at Graph and forgotten.
            set_tenant(&store, true, &[""]).await;
            manager.pass(&stop).await.expect("pass");
            let groups_id = created[0].subscription_id.clone().expect("an id");
            assert_eq!(calls(&graph)[4..], [call("DELETE", &format!("/subscriptions/{groups_id}"))]);
            let resources: Vec<String> = rows(&store).await.into_iter().map(|r| r.resource).collect();
            assert_eq!(resources, ["/users"]);

            // Turned off: /users is deleted too.
            set_tenant(&store, false, &[""]).await;
            manager.pass(&stop).await.expect("pass");
            assert_eq!(calls(&graph)[5..], [call("DELETE", "/subscriptions/sub-3")]);
            assert!(rows(&store).await.is_empty());

            // On again while Graph cannot validate the URL: the failure is
            // recorded with the reason and a minute's backoff, and not retried before.
            graph.lock().expect("graph").refuse_creates = true;
            set_tenant(&store, true, &[""]).await;
            let failed_at = clock::now();
            manager.pass(&stop).await.expect("pass");
            let failed = rows(&store).await.into_iter().next().expect("a row");
            let reason = failed.last_error.clone().expect("a reason");
            assert!(
                reason.starts_with("Graph could not validate the notification URL https://sync.example.com/graph/notifications: Subscription validation request failed."),
                "{reason}"
            );
            assert!(reason.contains("USERSYNC_PUBLIC_URL"), "{reason}");
            let wait = failed.next_attempt_at.expect("a next attempt") - failed_at;
            assert!(wait >= TimeDelta::seconds(59) && wait <= TimeDelta::seconds(61), "{wait}");
            assert_eq!((failed.attempts, failed.subscription_id.clone()), (1, None));
            assert_eq!(run_warning(&failed).as_deref().map(|w| w.contains(&reason)), Some(true));
            let posts = calls(&graph).len();
            manager.pass(&stop).await.expect("pass");
            assert_eq!(calls(&graph).len(), posts, "backing off");

            // No public URL: the failure says which variable to set.
            store
                .graph_subscription_failed("acme", "/users", "x", failed_at, failed_at)
                .await
                .expect("due again");
            let without_url = Manager { public_url: None, ..manager };
            without_url.pass(&stop).await.expect("pass");
            let failed = rows(&store).await.into_iter().next().expect("a row");
            assert_eq!(
                failed.last_error.as_deref(),
                Some("USERSYNC_PUBLIC_URL is not set: set it to the https address Graph reaches usersync-api at")
            );
            assert_eq!(failed.attempts, 3);
            assert_eq!(calls(&graph).len(), posts, "Graph is not asked without a URL");
        })
        .await;
    }
}
