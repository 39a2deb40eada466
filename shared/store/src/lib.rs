//! PostgreSQL: the pool, the migrations, and every query the services make.
//!
//! The database is created when absent and migrated at start under an advisory
//! lock, so replicas starting together do not race.

mod api_tokens;
mod applying;
mod crypto;
mod db;
mod directory;
mod dispatch;
mod fields;
mod mail_locks;
mod mail_marks;
mod mails;
mod membership;
mod operations;
mod pbx_checks;
mod planning;
mod previews;
mod rounds;
mod run_ends;
mod runs;
mod subscriptions;
mod sync_users;
mod tenants;
pub mod testing;

pub use api_tokens::ApiTokenRow;
pub use applying::{ChangeEnd, CreateAnswers, CreateConflict, FailedTries, LockedUser, UserToLock};
pub use crypto::{SecretKey, SecretKeyError};
pub use db::Store;
pub use directory::{ReconcileRow, Round};
pub use dispatch::{BATCH_SIZE, DISPATCH_WINDOW};
pub use fields::DiscoveredField;
pub use mails::{Claim, MailClaim, MailProblem, NewMail, StandingError};
pub use membership::GroupsState;
pub use operations::{RunProgress, ScheduleRow, TenantOverview};
pub use pbx_checks::PbxCheck;
pub use planning::{ChangeHistory, ClaimSession, HeldUser};
pub use previews::{PreviewRow, PREVIEW_KEPT_HOURS, PREVIEW_STALE_SECS};
pub use rounds::PageOutcome;
pub use run_ends::{RunEnd, RunEnds};
pub use runs::{
    DueFollowUp, RunRow, RunStart, RunState, DEFAULT_STALE_RUN_MINUTES, FOLLOW_UP_REPUBLISH_SECS,
};
pub use subscriptions::{GraphSubscription, SubscriptionAction};
pub use sync_users::{ChangeRecord, PlannedUser, RoundEnd, SyncRow};
pub use tenants::{StoredTenant, TenantSummary, TenantWrite};

/// Errors from the store. Database errors keep their cause for the logs.
pub type Result<T> = std::result::Result<T, anyhow::Error>;
