//! Whether a service can work: each dependency (the database, the broker) is
//! up or down with a reason. `/healthz` answers 503 with the reasons while
//! any is down, consumers take no new work until all are up again, and each
//! outage is logged once when it starts and once when it ends.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// What a service needs to reach to do its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dependency {
    Database,
    Broker,
}

impl Dependency {
    pub fn name(self) -> &'static str {
        match self {
            Dependency::Database => "database",
            Dependency::Broker => "broker",
        }
    }
}

impl std::fmt::Display for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a dependency is down, and since when.
#[derive(Debug, Clone)]
pub struct Down {
    pub reason: String,
    pub since: DateTime<Utc>,
    started: Instant,
    /// Never up yet: the service is still starting.
    starting: bool,
}

#[derive(Debug, Clone, Default)]
struct State {
    down: BTreeMap<Dependency, Down>,
    stopping: bool,
}

/// The health of one process. Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct Health {
    state: Arc<watch::Sender<State>>,
}

impl Health {
    /// Every dependency starts down ("not connected yet") until first reported up.
    pub fn new(dependencies: &[Dependency]) -> Health {
        let now = Instant::now();
        let down = dependencies
            .iter()
            .map(|&dependency| {
                let down = Down {
                    reason: "not connected yet".to_owned(),
                    since: Utc::now(),
                    started: now,
                    starting: true,
                };
                (dependency, down)
            })
            .collect();
        for dependency in dependencies {
            metrics::gauge!("usersync_dependency_up", "dependency" => dependency.name()).set(0.0);
        }
        Health {
            state: Arc::new(watch::Sender::new(State {
                down,
                stopping: false,
            })),
        }
    }

    /// Reports a dependency unreachable. Logged when the outage starts; a
    /// later report of the same outage only refreshes the reason.
    pub fn down(&self, dependency: Dependency, reason: impl std::fmt::Display) {
        let reason = reason.to_string();
        self.state.send_if_modified(|state| match state.down.get_mut(&dependency) {
            Some(down) => {
                if down.reason != reason {
                    down.reason = reason;
                }
                false
            }
            None => {
                tracing::warn!(dependency = dependency.name(), %reason, "lost the {dependency}: taking no new work until it is back");
                metrics::gauge!("usersync_dependency_up", "dependency" => dependency.name()).set(0.0);
                metrics::counter!("usersync_outages_total", "dependency" => dependency.name()).increment(1);
                state.down.insert(
                    dependency,
                    Down {
                        reason,
                        since: Utc::now(),
                        started: Instant::now(),
                        starting: false,
                    },
                );
                true
            }
        });
    }

    /// Reports a dependency reachable. Logged when it ends an outage.
    pub fn up(&self, dependency: Dependency) {
        self.state.send_if_modified(|state| {
            let Some(down) = state.down.remove(&dependency) else {
                return false;
            };
            let secs = down.started.elapsed().as_secs_f64();
            if down.starting {
                tracing::info!(dependency = dependency.name(), "connected to the {dependency}");
            } else {
                tracing::info!(
                    dependency = dependency.name(),
                    outage_s = format!("{secs:.1}"),
                    "the {dependency} is back"
                );
            }
            metrics::gauge!("usersync_dependency_up", "dependency" => dependency.name()).set(1.0);
            true
        });
    }

    pub fn is_up(&self, dependency: Dependency) -> bool {
        !self.state.borrow().down.contains_key(&dependency)
    }

    /// Every dependency up and not stopping.
    pub fn is_healthy(&self) -> bool {
        let state = self.state.borrow();
        state.down.is_empty() && !state.stopping
    }

    /// Resolves once every dependency is up (at once when they are).
    pub async fn wait_healthy(&self) {
        let mut changes = self.state.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = changes.wait_for(|state| state.down.is_empty()).await;
    }

    /// Resolves once `dependency` is up.
    pub async fn wait_up(&self, dependency: Dependency) {
        let mut changes = self.state.subscribe();
        let _ = changes
            .wait_for(|state| !state.down.contains_key(&dependency))
            .await;
    }

    /// The process is stopping: `/healthz` answers 503 so no one sends it work.
    pub fn stopping(&self) {
        self.state.send_modify(|state| state.stopping = true);
    }

    /// What is down and why, for `/healthz`.
    pub fn report(&self) -> (bool, serde_json::Value) {
        let state = self.state.borrow();
        let down: Vec<_> = state
            .down
            .iter()
            .map(|(dependency, down)| {
                serde_json::json!({
                    "dependency": dependency.name(),
                    "reason": down.reason,
                    "since": down.since.to_rfc3339(),
                })
            })
            .collect();
        let healthy = down.is_empty() && !state.stopping;
        let status = if state.stopping {
            "stopping"
        } else if healthy {
            "ok"
        } else {
            "unavailable"
        };
        (healthy, serde_json::json!({ "status": status, "down": down }))
    }

    /// Watches a dependency for as long as the process runs: while up, `probe`
    /// runs every `PROBE_INTERVAL` so an outage shows even on an idle service;
    /// while down, it is retried with exponential backoff and jitter, forever,
    /// and the first success reports the dependency up.
    pub fn watch<F, Fut>(&self, dependency: Dependency, probe: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send,
    {
        let health = self.clone();
        tokio::spawn(async move {
            let mut backoff = reconnect_backoff();
            loop {
                let result = probe().await;
                match result {
                    Ok(()) => {
                        health.up(dependency);
                        backoff = reconnect_backoff();
                    }
                    Err(err) => health.down(dependency, format!("{err:#}")),
                }
                let wait = if health.is_up(dependency) {
                    PROBE_INTERVAL
                } else {
                    backoff.next().unwrap_or(MAX_RECONNECT_DELAY)
                };
                // A failure reported by the service's own work wakes the probe early.
                let mut changes = health.state.subscribe();
                let was_up = health.is_up(dependency);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = changes.wait_for(|state| state.down.contains_key(&dependency) == was_up) => {}
                }
            }
        })
    }
}

/// How often a dependency that is up is checked.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// The longest wait between two reconnection attempts.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// Delays between reconnection attempts: from 200 ms doubling to
/// [`MAX_RECONNECT_DELAY`], with jitter so replicas do not reconnect in step;
/// never ends.
pub fn reconnect_backoff() -> impl Iterator<Item = Duration> + Send {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(MAX_RECONNECT_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_down_and_is_healthy_once_everything_is_up() {
        let health = Health::new(&[Dependency::Database, Dependency::Broker]);
        assert!(!health.is_healthy());
        let (healthy, report) = health.report();
        assert!(!healthy);
        assert_eq!(report["down"].as_array().map(Vec::len), Some(2));
        health.up(Dependency::Database);
        assert!(!health.is_healthy());
        health.up(Dependency::Broker);
        assert!(health.is_healthy());
        tokio::time::timeout(Duration::from_secs(1), health.wait_healthy())
            .await
            .expect("healthy at once");
        assert_eq!(health.report().1["status"], "ok");
    }

    #[tokio::test]
    async fn an_outage_keeps_its_start_and_names_the_latest_reason() {
        let health = Health::new(&[]);
        health.down(Dependency::Database, "connection refused");
        let since = health.state.borrow().down[&Dependency::Database].since;
        health.down(Dependency::Database, "too many clients");
        let (healthy, report) = health.report();
        assert!(!healthy);
        assert_eq!(report["status"], "unavailable");
        assert_eq!(report["down"][0]["dependency"], "database");
        assert_eq!(report["down"][0]["reason"], "too many clients");
        assert_eq!(health.state.borrow().down[&Dependency::Database].since, since);
        let waiter = tokio::spawn({
            let health = health.clone();
            async move { health.wait_healthy().await }
        });
        health.up(Dependency::Database);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken when the database is back")
            .expect("the waiter ran");
    }

    #[tokio::test]
    async fn stopping_is_unhealthy() {
        let health = Health::new(&[]);
        assert!(health.is_healthy());
        health.stopping();
        let (healthy, report) = health.report();
        assert!(!healthy);
        assert_eq!(report["status"], "stopping");
    }

    #[tokio::test]
    async fn the_watch_retries_a_failing_probe_until_it_succeeds() {
        let health = Health::new(&[Dependency::Broker]);
        let tries = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let task = health.watch(Dependency::Broker, {
            let tries = Arc::clone(&tries);
            move || {
                let n = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    if n < 2 {
                        anyhow::bail!("connection refused")
                    }
                    Ok(())
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), health.wait_up(Dependency::Broker))
            .await
            .expect("up after the third probe");
        assert!(tries.load(std::sync::atomic::Ordering::SeqCst) >= 3);
        task.abort();
    }

    #[test]
    fn reconnect_delays_grow_to_the_cap_and_never_end() {
        let delays: Vec<_> = reconnect_backoff().take(50).collect();
        assert_eq!(delays.len(), 50);
        assert!(delays.iter().all(|d| *d <= MAX_RECONNECT_DELAY * 2));
        assert!(delays[49] >= MAX_RECONNECT_DELAY);
    }
}
