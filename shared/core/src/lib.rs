//! The pure core of usersync: tenant configuration, field mapping, phone and
//! alias normalisation, the desired-versus-applied diff and the per-user
//! sync decision. Plain functions over plain data: no I/O, no async, no clock.

pub mod alias;
pub mod conflict;
pub mod decide;
pub mod mapping;
pub mod phone;
pub mod problem;
pub mod schedule;
pub mod tenant;
pub mod user;

pub use alias::normalize_alias;
pub use conflict::{claims_of, resolve_conflicts, Claim, Conflict, UniqueField};
pub use decide::{decide, Action, Applied, Decision, Policy, Scope, UserView};
pub use mapping::SourcePath;
pub use phone::normalize_phone;
pub use problem::{error_chain, Problem};
pub use tenant::{
    parse_tenant_file, AdoptMatch, DeletionGuard, FieldMapping, Mode, NotificationLevel, PbxLimits,
    PbxOverride, ProviderSettings, Schedule, TenantConfig, TenantType, UserFilter,
};
pub use user::{diff, map_user, FieldPatch, SyncedFields};
