//! Notifications of runs that end (`LISTEN usersync_run_ended`, see V12), on
//! a connection of their own that is opened again whenever it is lost.
//!
//! A notification sent while nobody listens is gone for good, so a listener
//! that comes back after an outage says so ([`RunEnd::Resumed`]): whatever
//! ended meanwhile must be read from the tables.

use std::time::Instant;

use anyhow::Context;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use usersync_runtime::health::{reconnect_backoff, MAX_RECONNECT_DELAY};

use crate::{Result, Store};

/// The PostgreSQL channel told the tenant id of every run that ends.
const RUN_ENDED_CHANNEL: &str = "usersync_run_ended";

/// What the listener hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// A run of this tenant ended.
    Ended(String),
    /// Listening again after the connection was lost: runs may have ended
    /// unheard in between.
    Resumed,
}

/// Runs that end, whichever service ended them: a prompt nudge only; what is
/// due is always read from the tables. Stops listening when dropped.
pub struct RunEnds {
    ended: UnboundedReceiver<RunEnd>,
    listener: tokio::task::AbortHandle,
}

impl RunEnds {
    /// The next run end, or [`RunEnd::Resumed`] after a lost connection came
    /// back. Never ends while the `RunEnds` lives: a lost connection is
    /// opened again, with backoff, forever.
    pub async fn next(&mut self) -> Option<RunEnd> {
        self.ended.recv().await
    }
}

impl Drop for RunEnds {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl Store {
    /// Listens, on a connection of its own, for runs that end. Fails when the
    /// first connection cannot be opened; after that, reconnects on its own.
    pub async fn run_ends(&self) -> Result<RunEnds> {
        let (sender, ended) = mpsc::unbounded_channel();
        let listening = Listening::open(&self.config, sender.clone()).await?;
        let listener = tokio::spawn(keep_listening(
            self.config.clone(),
            self.target.to_string(),
            listening,
            sender,
        ))
        .abort_handle();
        Ok(RunEnds { ended, listener })
    }
}

/// One subscribed connection. The pump forwards its notifications and ends,
/// with the reason, when the connection does.
struct Listening {
    _client: tokio_postgres::Client,
    pump: tokio::task::JoinHandle<String>,
}

impl Listening {
    async fn open(config: &tokio_postgres::Config, sender: UnboundedSender<RunEnd>) -> Result<Listening> {
        let (client, mut connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .context("connecting to PostgreSQL to listen for runs that end")?;
        // Notifications only come through `poll_message`, which also drives
        // the connection, so the pump must run before LISTEN can complete.
        let pump = tokio::spawn(async move {
            while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notification(note)) => {
                        if sender.send(RunEnd::Ended(note.payload().to_owned())).is_err() {
                            return "nobody listens any more".to_owned();
                        }
                    }
                    Ok(_) => {}
                    Err(err) => return err.to_string(),
                }
            }
            "the server closed the connection".to_owned()
        });
        let listening = Listening {
            _client: client,
            pump,
        };
        listening
            ._client
            .batch_execute(&format!("LISTEN {RUN_ENDED_CHANNEL}"))
            .await
            .context("listening for runs that end")?;
        Ok(listening)
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// Waits for the connection to end, then opens a new one (backoff with
/// jitter, forever) and says [`RunEnd::Resumed`]. Logged once per outage.
async fn keep_listening(
    config: tokio_postgres::Config,
    target: String,
    mut listening: Listening,
    sender: UnboundedSender<RunEnd>,
) {
    loop {
        let reason = match (&mut listening.pump).await {
            Ok(reason) => reason,
            Err(err) => err.to_string(),
        };
        if sender.is_closed() {
            return;
        }
        tracing::warn!(database = %target, %reason,
            "lost the connection listening for runs that end: listening again once PostgreSQL is back (the scheduler's polls start follow-ups meanwhile)");
        let lost_at = Instant::now();
        let mut delays = reconnect_backoff();
        listening = loop {
            tokio::time::sleep(delays.next().unwrap_or(MAX_RECONNECT_DELAY)).await;
            match Listening::open(&config, sender.clone()).await {
                Ok(listening) => break listening,
                Err(err) => {
                    tracing::debug!(error = %format!("{err:#}"), "still not listening for runs that end")
                }
            }
        };
        tracing::info!(database = %target, outage_s = format!("{:.1}", lost_at.elapsed().as_secs_f64()),
            "listening for runs that end again");
        if sender.send(RunEnd::Resumed).is_err() {
            return;
        }
    }
}
