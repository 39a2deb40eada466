//! The pure core of usersync: tenant configuration, field mapping, phone and
//! alias normalisation, the desired-versus-applied diff and the per-user
//! sync decision. Plain functions over plain data: no I/O, no async, no clock.

pub mod alias;
pub mod decide;
pub mod mapping;
pub mod phone;
pub mod problem;
pub mod tenant;
pub mod user;

pub use alias::normalize_alias;
pub use decide::{decide, Action, Applied, Decision, Policy, Scope, UserView};
pub use mapping::SourcePath;
pub use phone::normalize_phone;
pub use problem::{error_chain, Problem};
pub use tenant::{
    parse_tenant_file, AdoptMatch, FieldMapping, Mode, NotificationLevel, PbxLimits, PbxOverride,
    ProviderSettings, Schedule, TenantConfig, TenantType, UserFilter,
};
pub use user::{diff, map_user, FieldPatch, SyncedFields};
