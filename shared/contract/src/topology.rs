//! Names of exchanges and queues. They read well on a RabbitMQ dashboard:
//! `usersync.<stage>.<role>`.

/// Where resync requests are published (direct exchange).
pub const RESYNC_EXCHANGE: &str = "usersync.resync";
/// Routing key of resync requests from people and their tools: the fetcher's
/// work queue, served ahead of scheduled ones.
pub const MANUAL_ROUTING_KEY: &str = "manual";
/// Routing key of the scheduler's requests (nightly runs, due deletions): a
/// queue of their own, so a night's backlog never delays a manual resync.
pub const SCHEDULED_ROUTING_KEY: &str = "scheduled";
/// Routing keys accepted by [`RESYNC_EXCHANGE`].
pub const RESYNC_ROUTING_KEYS: [&str; 2] = [MANUAL_ROUTING_KEY, SCHEDULED_ROUTING_KEY];
/// Where scheduled resync requests wait for the fetcher.
pub const SCHEDULED_REQUESTS_QUEUE: &str = "usersync.fetcher.scheduled";
/// Direct exchange between the stages; the routing key is the queue name.
pub const PIPELINE_EXCHANGE: &str = "usersync.pipeline";

/// A stage of the pipeline: it owns one work queue, its retry tiers and a dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Fetcher,
    Differ,
    Applier,
    Notifier,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Fetcher, Stage::Differ, Stage::Applier, Stage::Notifier];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Fetcher => "fetcher",
            Stage::Differ => "differ",
            Stage::Applier => "applier",
            Stage::Notifier => "notifier",
        }
    }

    /// The work queue the stage consumes.
    pub fn queue(self) -> String {
        let role = match self {
            Stage::Fetcher => "requests",
            Stage::Differ => "pages",
            Stage::Applier => "changes",
            Stage::Notifier => "events",
        };
        format!("usersync.{}.{role}", self.name())
    }

    /// Messages that failed for good, with the reason in a header.
    pub fn dead_letter_queue(self) -> String {
        format!("usersync.{}.dlq", self.name())
    }

    /// A delayed-retry queue: messages wait `delay_secs` there, then return to the work queue.
    pub fn retry_queue(self, delay_secs: u32) -> String {
        format!("usersync.{}.retry.{delay_secs}s", self.name())
    }

    /// Every queue the stage consumes, the work queue first: the fetcher also
    /// takes scheduled requests, with capacity of their own.
    pub fn consumed_queues(self) -> Vec<String> {
        match self {
            Stage::Fetcher => vec![self.queue(), SCHEDULED_REQUESTS_QUEUE.to_owned()],
            _ => vec![self.queue()],
        }
    }

    pub fn parse(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|stage| stage.name() == name)
    }
}

/// The delays of the retry tiers, shortest first.
pub const RETRY_DELAYS_SECS: [u32; 4] = [1, 5, 30, 300];
