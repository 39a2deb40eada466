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

/// Which work queue of a stage a run's messages take. The queues of a stage
/// are first come, first served (quorum queues have no priorities), so runs a
/// person asked for get a queue of their own in every stage, consumed with
/// capacity of its own: a night's backlog of scheduled runs never sits in
/// front of them. A run's messages all take the lane of its trigger, so its
/// pages and batches stay in one queue, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Runs a person or their tool asked for (`manual`, `approve`, `api`, any
    /// trigger the scheduler does not use).
    Express,
    /// The scheduler's own runs (`scheduled`: nightly; `sweep`: due deletions).
    Standard,
}

impl Lane {
    /// The lane of a run, from the trigger recorded with it (or carried by its request).
    pub fn for_trigger(trigger: &str) -> Lane {
        match trigger {
            "scheduled" | "sweep" => Lane::Standard,
            _ => Lane::Express,
        }
    }

    /// The routing key of a resync request in this lane on [`RESYNC_EXCHANGE`].
    pub fn resync_routing_key(self) -> &'static str {
        match self {
            Lane::Express => MANUAL_ROUTING_KEY,
            Lane::Standard => SCHEDULED_ROUTING_KEY,
        }
    }
}

/// A stage of the pipeline: it owns its work queues (one per [`Lane`]; the
/// notifier's one serves both), their retry tiers and a dead-letter queue.
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

    /// The stage's first work queue, as older versions had it: the fetcher's
    /// manual requests, the standard lane of the differ and the applier, the
    /// notifier's events. Its retry tiers keep their names ([`Stage::retry_queue`]).
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

    /// The work queue of a lane: `usersync.differ.express` and
    /// `usersync.applier.express` for the express lane; the fetcher's lanes
    /// are its manual and scheduled request queues; the notifier has one queue.
    pub fn lane_queue(self, lane: Lane) -> String {
        match (self, lane) {
            (Stage::Fetcher, Lane::Express) => self.queue(),
            (Stage::Fetcher, Lane::Standard) => SCHEDULED_REQUESTS_QUEUE.to_owned(),
            (Stage::Differ | Stage::Applier, Lane::Express) => {
                format!("usersync.{}.express", self.name())
            }
            (Stage::Differ | Stage::Applier, Lane::Standard) | (Stage::Notifier, _) => self.queue(),
        }
    }

    /// A delayed-retry queue of [`Stage::queue`]: messages wait `delay_secs`
    /// there, then return to it.
    pub fn retry_queue(self, delay_secs: u32) -> String {
        format!("usersync.{}.retry.{delay_secs}s", self.name())
    }

    /// A delayed-retry queue of one of the stage's work queues: a message
    /// waits `delay_secs` there, then returns to the queue it came from (and
    /// so stays in its lane). The first work queue's tiers keep their old
    /// names; another queue's are named after it (`usersync.differ.express.retry.5s`).
    pub fn retry_queue_of(self, work_queue: &str, delay_secs: u32) -> String {
        if work_queue == self.queue() {
            self.retry_queue(delay_secs)
        } else {
            format!("{work_queue}.retry.{delay_secs}s")
        }
    }

    /// Every work queue the stage consumes, [`Stage::queue`] first, each with
    /// capacity of its own.
    pub fn consumed_queues(self) -> Vec<String> {
        let mut queues = vec![self.queue()];
        for lane in [Lane::Express, Lane::Standard] {
            let queue = self.lane_queue(lane);
            if !queues.contains(&queue) {
                queues.push(queue);
            }
        }
        queues
    }

    pub fn parse(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|stage| stage.name() == name)
    }
}

/// The delays of the retry tiers, shortest first.
pub const RETRY_DELAYS_SECS: [u32; 4] = [1, 5, 30, 300];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_schedulers_own_triggers_take_the_standard_lane() {
        assert_eq!(Lane::for_trigger("scheduled"), Lane::Standard);
        assert_eq!(Lane::for_trigger("sweep"), Lane::Standard);
        for person in ["manual", "approve", "api", "", "Scheduled", "nightly by hand"] {
            assert_eq!(Lane::for_trigger(person), Lane::Express, "{person:?}");
        }
    }

    #[test]
    fn the_lane_picks_the_resync_routing_key() {
        assert_eq!(
            Lane::for_trigger("manual").resync_routing_key(),
            MANUAL_ROUTING_KEY
        );
        assert_eq!(
            Lane::for_trigger("sweep").resync_routing_key(),
            SCHEDULED_ROUTING_KEY
        );
    }

    #[test]
    fn each_lane_has_its_own_work_queue_and_retry_tiers() {
        assert_eq!(Stage::Differ.lane_queue(Lane::Standard), "usersync.differ.pages");
        assert_eq!(Stage::Differ.lane_queue(Lane::Express), "usersync.differ.express");
        assert_eq!(
            Stage::Applier.lane_queue(Lane::Standard),
            "usersync.applier.changes"
        );
        assert_eq!(
            Stage::Applier.lane_queue(Lane::Express),
            "usersync.applier.express"
        );
        assert_eq!(
            Stage::Fetcher.lane_queue(Lane::Express),
            "usersync.fetcher.requests"
        );
        assert_eq!(
            Stage::Fetcher.lane_queue(Lane::Standard),
            SCHEDULED_REQUESTS_QUEUE
        );
        assert_eq!(Stage::Notifier.lane_queue(Lane::Express), Stage::Notifier.queue());
        assert_eq!(
            Stage::Differ.consumed_queues(),
            ["usersync.differ.pages", "usersync.differ.express"]
        );
        assert_eq!(Stage::Notifier.consumed_queues(), [Stage::Notifier.queue()]);
        assert_eq!(
            Stage::Differ.retry_queue_of("usersync.differ.pages", 5),
            "usersync.differ.retry.5s"
        );
        assert_eq!(
            Stage::Differ.retry_queue_of("usersync.differ.express", 5),
            "usersync.differ.express.retry.5s"
        );
        assert_eq!(
            Stage::Fetcher.retry_queue_of(SCHEDULED_REQUESTS_QUEUE, 1),
            "usersync.fetcher.scheduled.retry.1s"
        );
    }
}
