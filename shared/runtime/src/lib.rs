//! What every service binary needs around its loop: configuration from the
//! environment, logging, the metrics and health endpoint, and shutdown.

pub mod clock;
pub mod health;
pub mod outage;

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use axum::{http::StatusCode, routing::get, Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

pub use health::{Dependency, Health};
pub use tokio_util::sync::CancellationToken;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/usersync";
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A variable from the environment, or its documented default.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// A variable that has no default.
pub fn env_opt(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

pub fn database_url() -> String {
    env_or("DATABASE_URL", DEFAULT_DATABASE_URL)
}

pub fn amqp_url() -> String {
    env_or("AMQP_URL", DEFAULT_AMQP_URL)
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); JSON lines when
/// `USERSYNC_LOG_FORMAT=json`.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if env_or("USERSYNC_LOG_FORMAT", "text") == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Seconds: from a fast API call (5 ms) to a 100,000-user first sync (an hour).
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    3600.0,
];

/// Serves Prometheus text at `/metrics` and the process's [`Health`] at
/// `/healthz` (200 when every dependency is up, else 503 naming what is down
/// and why) on `METRICS_ADDR`, when that is set. The recorder is installed
/// either way, so metrics calls are cheap no-ops only when nothing reads them.
/// Call it first, before connecting: `/healthz` then says what a starting
/// service still waits for.
pub async fn serve_metrics(health: Health) -> anyhow::Result<()> {
    let handle = install_metrics()?;
    let Some(addr) = env_opt("METRICS_ADDR") else {
        return Ok(());
    };
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("METRICS_ADDR={addr:?} is not an address such as 127.0.0.1:9100"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding METRICS_ADDR {addr}"))?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, metrics_router(handle, health)).await {
            tracing::error!(error = %err, "metrics server stopped");
        }
    });
    Ok(())
}

/// How often the recorder folds the histogram samples recorded since into
/// its buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder (once per process) and returns what renders
/// it. Must be called within the Tokio runtime: it starts the recorder's upkeep.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        // Buckets make every `*_duration_seconds` a Prometheus histogram (so
        // `histogram_quantile` works across replicas), not a summary.
        .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".to_owned()), DURATION_BUCKETS)
        .context("setting the histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    // Each histogram sample is kept until it is folded into the buckets: a
    // scrape folds them, and so does this, or a service nobody scrapes would
    // keep every sample it ever recorded.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(METRICS_UPKEEP);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// `/metrics` and `/healthz`, for a service that serves them on its own
/// address (usersync-api) instead of `METRICS_ADDR`.
pub fn metrics_router(handle: PrometheusHandle, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route(
            "/healthz",
            get(move || {
                let (healthy, report) = health.report();
                let status = if healthy {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                std::future::ready((status, Json(report)))
            }),
        )
}

/// Default of `USERSYNC_SHUTDOWN_SECS`.
pub const DEFAULT_SHUTDOWN_SECS: u64 = 30;
/// Longest `USERSYNC_SHUTDOWN_SECS` accepted (an hour).
const MAX_SHUTDOWN_SECS: u64 = 3600;

/// `USERSYNC_SHUTDOWN_SECS`: how long a stopping service lets the messages in
/// hand finish. Read at start, so a bad value stops the service there.
pub fn shutdown_timeout() -> anyhow::Result<Duration> {
    parse_shutdown_secs(env_opt("USERSYNC_SHUTDOWN_SECS").as_deref())
}

fn parse_shutdown_secs(text: Option<&str>) -> anyhow::Result<Duration> {
    let Some(text) = text else {
        return Ok(Duration::from_secs(DEFAULT_SHUTDOWN_SECS));
    };
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|secs| *secs <= MAX_SHUTDOWN_SECS)
        .map(Duration::from_secs)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "USERSYNC_SHUTDOWN_SECS={text:?} is not a number of seconds from 0 to {MAX_SHUTDOWN_SECS}: it is how long a stopping service lets the messages in hand finish; leave it unset for {DEFAULT_SHUTDOWN_SECS}"
            )
        })
}

/// A token cancelled on SIGINT or SIGTERM: one signal stops every task
/// holding a clone (the consumers, the fetcher's scheduler).
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("asked to stop");
        cancel.cancel();
    });
    token
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shutdown_timeout_defaults_to_30_seconds_and_names_a_bad_value() {
        assert_eq!(parse_shutdown_secs(None).unwrap(), Duration::from_secs(30));
        assert_eq!(parse_shutdown_secs(Some("5")).unwrap(), Duration::from_secs(5));
        assert_eq!(parse_shutdown_secs(Some("0")).unwrap(), Duration::ZERO);
        for bad in ["thirty", "-1", "1.5", "86400"] {
            let err = parse_shutdown_secs(Some(bad)).unwrap_err().to_string();
            assert!(
                err.contains("USERSYNC_SHUTDOWN_SECS") && err.contains(bad),
                "{err}"
            );
        }
    }
}
