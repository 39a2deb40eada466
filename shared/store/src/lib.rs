//! PostgreSQL: the pool, the migrations, and every query the services make.
//!
//! The database is created when absent and migrated at start under an advisory
//! lock, so replicas starting together do not race.

mod crypto;
mod db;
mod directory;
mod dispatch;
mod mails;
mod pbx_checks;
mod runs;
mod sync_users;
mod tenants;

pub use crypto::{SecretKey, SecretKeyError};
pub use db::Store;
pub use directory::{ReconcileRow, Round};
pub use dispatch::DISPATCH_WINDOW;
pub use pbx_checks::PbxCheck;
pub use runs::{RunRow, RunStart, RunState};
pub use sync_users::{ChangeRecord, LockedUser, PlannedUser, RoundEnd, SyncRow};
pub use tenants::{StoredTenant, TenantSummary};

/// Errors from the store. Database errors keep their cause for the logs.
pub type Result<T> = std::result::Result<T, anyhow::Error>;
