//! The messages that travel between the stages, and where they travel.
//!
//! Every message is JSON. Its AMQP `type` property names the message and its
//! schema version (for example `usersync.resync.v1`), and its `message_id` is
//! deterministic, so a redelivered or re-published message can be recognised.

pub mod topology;

use serde::{Deserialize, Serialize};
use usersync_core::{Action, Problem};
use uuid::Uuid;

/// A message that can travel on the bus.
pub trait Message: Serialize + for<'de> Deserialize<'de> {
    /// The AMQP `type` property: message name and schema version.
    const TYPE: &'static str;
}

/// Ask for a sync of one tenant. Published to the `usersync.resync` exchange by
/// the CLI, the scheduler or any AMQP client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResyncRequest {
    pub tenant_id: String,
    /// Drop the delta state first and read the whole directory.
    #[serde(default)]
    pub full: bool,
    /// Who asked: `manual` (default), `scheduled`, or free text.
    #[serde(default = "default_trigger")]
    pub trigger: String,
}

fn default_trigger() -> String {
    "manual".to_owned()
}

impl Message for ResyncRequest {
    const TYPE: &'static str = "usersync.resync.v1";
}

/// What the fetcher read from the directory, one page at a time, then the end of the round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectoryPage {
    pub run_id: Uuid,
    /// One pass of the fetcher over the directory. A fetcher that crashed and
    /// resumed the run reads again in a new round, so pages of a half-read round
    /// are never taken for pages of the new one.
    pub round_id: Uuid,
    pub tenant_id: String,
    #[serde(flatten)]
    pub body: PageBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PageBody {
    /// Raw Graph user objects, `@removed` entries included.
    Users {
        page: u32,
        users: Vec<serde_json::Value>,
    },
    /// Object ids of users who are (transitive) members of the tenant's filter groups.
    Members { page: u32, member_ids: Vec<String> },
    /// Every page of the round has been published (and confirmed).
    RoundComplete {
        /// How many `Users` and `Members` pages the round had.
        pages: u32,
        /// The round read the whole directory: users it did not return are gone.
        full_round: bool,
        /// Membership pages were sent: only members are in scope.
        scoped: bool,
        /// Where the next round starts, once this one is recorded.
        delta_link: String,
        /// Membership tracking of a scoped round (absent: not scoped, or an older fetcher).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        groups: Option<GroupsRound>,
    },
}

/// What a scoped round learnt about the filter groups, stored with the round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupsRound {
    /// Where the next groups delta round starts.
    pub delta_link: String,
    /// The filter groups the membership belongs to (their names resolved this round).
    pub filter_group_ids: Vec<String>,
    /// Groups nested (at any depth) in the filter groups: a change to one of
    /// them changes who is in scope.
    pub nested_group_ids: Vec<String>,
    /// `Members` pages were sent: they are the membership now. Otherwise the
    /// groups delta reported no change that matters, and the stored membership holds.
    pub relisted: bool,
}

impl DirectoryPage {
    /// Deterministic id: the same page of the same round always has the same id.
    pub fn message_id(&self) -> String {
        match &self.body {
            PageBody::Users { page, .. } | PageBody::Members { page, .. } => {
                format!("{}:page:{page}", self.round_id)
            }
            PageBody::RoundComplete { .. } => format!("{}:complete", self.round_id),
        }
    }
}

impl Message for DirectoryPage {
    const TYPE: &'static str = "usersync.directory-page.v1";
}

/// One user to bring in line with its desired state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub object_id: String,
    /// The desired-state version this change was planned against; the applier
    /// drops a change whose version is no longer current.
    pub desired_version: i64,
    pub action: Action,
}

/// Changes for one tenant from one run, grouped to spare the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeBatch {
    pub run_id: Uuid,
    pub tenant_id: String,
    /// Position of this batch in the run, for a deterministic message id.
    pub batch: u32,
    pub changes: Vec<Change>,
}

impl ChangeBatch {
    pub fn message_id(&self) -> String {
        format!("{}:changes:{}", self.run_id, self.batch)
    }
}

impl Message for ChangeBatch {
    const TYPE: &'static str = "usersync.change-batch.v1";
}

/// Counts of what a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCounts {
    pub created: i64,
    pub updated: i64,
    pub deleted: i64,
    pub skipped: i64,
    pub failed: i64,
    /// Deletions held back by the mass-deletion guard.
    #[serde(default)]
    pub held: i64,
}

/// One user-level problem of a run, for the digest mail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserProblem {
    /// Alias, mail or object id: whatever names the user best.
    pub user: String,
    pub outcome: String,
    pub problem: Problem,
}

/// What happened, for the notifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A PBX user was created: the welcome mail and its copy.
    UserCreated {
        tenant_id: String,
        run_id: Uuid,
        object_id: String,
        pbx_id: String,
        alias: String,
        first_name: String,
        surname: String,
        pstn_fixed: String,
        /// Where the welcome mail goes: the mapped email, else the directory `mail`.
        email: Option<String>,
        /// The directory's `preferredLanguage`, for the mail's language.
        language: Option<String>,
    },
    /// A run ended, in any outcome.
    RunFinished {
        tenant_id: String,
        run_id: Uuid,
        outcome: String,
        counts: RunCounts,
        /// Run-level failure reason, for the operator.
        error: Option<String>,
        /// A stable key for the failure's cause (`entra.7000222`, `pbx.unauthorized`,
        /// `graph.unavailable`, …): the same standing error is recognised across runs.
        #[serde(default)]
        error_code: Option<String>,
        /// Run-level warnings (a group name matching several groups, deletions held, …).
        #[serde(default)]
        warnings: Vec<String>,
        problems: Vec<UserProblem>,
    },
    /// A PBX user was updated or deleted, or a change to it failed for good.
    UserChanged {
        tenant_id: String,
        run_id: Uuid,
        object_id: String,
        /// `updated`, `deleted` or `failed`.
        outcome: String,
        /// Why it failed, or what changed.
        detail: Option<String>,
    },
    /// The events of one change batch in one message: a batch costs the
    /// broker one confirmed publish, not one per user.
    Batch {
        tenant_id: String,
        run_id: Uuid,
        batch: i64,
        events: Vec<Event>,
    },
}

impl Event {
    pub fn message_id(&self) -> String {
        match self {
            Self::UserCreated {
                tenant_id, pbx_id, ..
            } => format!("created:{tenant_id}:{pbx_id}"),
            Self::RunFinished { run_id, .. } => format!("finished:{run_id}"),
            Self::UserChanged {
                run_id, object_id, ..
            } => format!("changed:{run_id}:{object_id}"),
            Self::Batch {
                run_id,
                batch,
                events,
                ..
            } => {
                let first = events.first().map(Event::message_id).unwrap_or_default();
                format!("batch:{run_id}:{batch}:{}:{first}", events.len())
            }
        }
    }

    pub fn tenant_id(&self) -> &str {
        match self {
            Self::UserCreated { tenant_id, .. }
            | Self::RunFinished { tenant_id, .. }
            | Self::UserChanged { tenant_id, .. }
            | Self::Batch { tenant_id, .. } => tenant_id,
        }
    }
}

impl Message for Event {
    const TYPE: &'static str = "usersync.event.v1";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resync_request_accepts_the_minimal_body() {
        let request: ResyncRequest = serde_json::from_str(r#"{"tenant_id":"acme"}"#).unwrap();
        assert_eq!(request.tenant_id, "acme");
        assert!(!request.full);
        assert_eq!(request.trigger, "manual");
    }

    #[test]
    fn resync_request_refuses_unknown_fields() {
        let err = serde_json::from_str::<ResyncRequest>(r#"{"tenant_id":"acme","ful":true}"#).unwrap_err();
        assert!(err.to_string().contains("ful"), "{err}");
    }

    #[test]
    fn page_ids_are_deterministic_and_distinct() {
        let page = |body| DirectoryPage {
            run_id: Uuid::nil(),
            round_id: Uuid::nil(),
            tenant_id: "t".into(),
            body,
        };
        let users = page(PageBody::Users {
            page: 3,
            users: vec![],
        });
        let members = page(PageBody::Members {
            page: 4,
            member_ids: vec![],
        });
        assert_eq!(users.message_id(), users.clone().message_id());
        assert_ne!(users.message_id(), members.message_id());
    }

    #[test]
    fn a_page_travels_as_flat_json() {
        let page = DirectoryPage {
            run_id: Uuid::nil(),
            round_id: Uuid::nil(),
            tenant_id: "t".into(),
            body: PageBody::Members {
                page: 0,
                member_ids: vec!["a".into()],
            },
        };
        let json = serde_json::to_value(&page).unwrap();
        assert_eq!(json["kind"], "members");
        assert_eq!(json["member_ids"][0], "a");
        assert_eq!(serde_json::from_value::<DirectoryPage>(json).unwrap(), page);
    }
}
