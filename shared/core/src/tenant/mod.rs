//! The tenant file: one company's sync configuration, as an operator writes it.

mod parse;
mod serde_formats;
#[cfg(test)]
mod tests;
mod values;

use std::collections::BTreeMap;
use std::fmt;

use chrono::{NaiveDate, NaiveTime};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::mapping::SourcePath;

pub use parse::parse_tenant_file;

/// What replaces a secret in any output.
pub const MASK: &str = "********";

/// A tenant as configured by its operator. Build it with [`parse_tenant_file`],
/// which validates every field; serialising it gives a file that parses again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantConfig {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: TenantType,
    pub mode: Mode,
    #[serde(default)]
    pub welcome_mail: bool,
    #[serde(default)]
    pub welcome_mail_copy_to: Option<String>,
    #[serde(default = "default_delete_after_days")]
    pub delete_after_days: u32,
    #[serde(default)]
    pub error_notification_email: Option<String>,
    #[serde(default)]
    pub error_notification_level: NotificationLevel,
    pub provider_settings: ProviderSettings,
    pub pbx_company_id: String,
    #[serde(default)]
    pub default_caller_id: Option<String>,
    #[serde(default)]
    pub default_template: Option<String>,
    pub field_mapping: FieldMapping,
    /// Key: `email` or `attributes.<name>`.
    #[serde(default)]
    pub user_field_mapping: BTreeMap<String, SourcePath>,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default)]
    pub pbx: Option<PbxOverride>,
    #[serde(default)]
    pub client_secret_expires_at: Option<NaiveDate>,
    /// When one run may not delete without an operator's approval.
    #[serde(default)]
    pub deletion_guard: DeletionGuard,
    /// Country codes whose phone numbers may be synced.
    #[serde(default = "default_allowed_country_prefixes")]
    pub allowed_country_prefixes: Vec<String>,
    /// Which field links an existing, unowned PBX user to a directory user on first sync.
    #[serde(default)]
    pub adopt_match: AdoptMatch,
    /// How hard the applier may drive this company's PBX.
    #[serde(default)]
    pub pbx_limits: PbxLimits,
    /// Graph change notifications start a delta round when the directory
    /// changes (the nightly run stays the safety net).
    #[serde(default)]
    pub change_notifications: bool,
}

pub(crate) const DEFAULT_DELETE_AFTER_DAYS: u32 = 7;

fn default_delete_after_days() -> u32 {
    DEFAULT_DELETE_AFTER_DAYS
}

pub(crate) fn default_allowed_country_prefixes() -> Vec<String> {
    vec!["46".to_owned()]
}

impl TenantConfig {
    /// The same document with every secret replaced by [`MASK`].
    pub fn masked(&self) -> TenantConfig {
        let mut copy = self.clone();
        copy.provider_settings.client_secret = MASK.to_owned();
        if let Some(pbx) = copy.pbx.as_mut() {
            pbx.api_token = MASK.to_owned();
        }
        copy
    }

    /// Every source path the mappings read, sorted and without repeats
    /// (what the Graph `$select` must cover).
    pub fn mapped_source_paths(&self) -> Vec<&SourcePath> {
        let mut paths: Vec<&SourcePath> = self
            .field_mapping
            .paths()
            .chain(self.user_field_mapping.values())
            .collect();
        paths.sort();
        paths.dedup();
        paths
    }
}

/// The kind of tenant; only Entra ID user sync exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantType {
    AdSync,
}

/// How much the sync may change in the PBX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Nothing changes and nothing is added.
    Pause,
    /// Create, update and delete continuously.
    UserSync,
    /// Only add users; users already synced are never touched.
    NewUsersOnly,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Pause, Mode::UserSync, Mode::NewUsersOnly];

    /// The name used in the tenant file.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Pause => "pause",
            Mode::UserSync => "user_sync",
            Mode::NewUsersOnly => "new_users_only",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which events reach the error-notification address. Ordered from fewest
/// to most mails: a run at level `l` reports every event whose level is `<= l`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationLevel {
    /// A run failed.
    #[default]
    Error,
    /// Also users that were skipped or failed.
    Warning,
    /// Also a summary of every run.
    Info,
}

impl NotificationLevel {
    pub const ALL: [NotificationLevel; 3] = [
        NotificationLevel::Error,
        NotificationLevel::Warning,
        NotificationLevel::Info,
    ];

    /// The name used in the tenant file.
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationLevel::Error => "error",
            NotificationLevel::Warning => "warning",
            NotificationLevel::Info => "info",
        }
    }
}

impl fmt::Display for NotificationLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Entra ID application the sync signs in as, and whom it syncs.
/// `Debug` masks the secret so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderSettings {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub user_filter: UserFilter,
}

impl fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderSettings")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &MASK)
            .field("user_filter", &self.user_filter)
            .finish()
    }
}

/// Group display names a user must belong to; empty means every user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserFilter {
    #[serde(rename = "memberOf")]
    pub member_of: Vec<String>,
}

impl UserFilter {
    /// Whether every user in the directory is in scope.
    pub fn syncs_everyone(&self) -> bool {
        self.member_of.is_empty()
    }
}

/// Where the four required PBX fields come from. Each is optional because an
/// incomplete mapping is accepted: the sync then only discovers fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldMapping {
    #[serde(default)]
    pub alias: Option<SourcePath>,
    #[serde(default)]
    pub first_name: Option<SourcePath>,
    #[serde(default)]
    pub surname: Option<SourcePath>,
    #[serde(default)]
    pub pstn_fixed: Option<SourcePath>,
}

impl FieldMapping {
    /// The PBX field names, in the order the mapping lists them.
    pub const FIELDS: [&'static str; 4] = ["alias", "first_name", "surname", "pstn_fixed"];

    pub fn is_complete(&self) -> bool {
        self.missing().is_empty()
    }

    /// The PBX fields that have no source yet.
    pub fn missing(&self) -> Vec<&'static str> {
        Self::FIELDS
            .into_iter()
            .zip(self.slots())
            .filter(|(_, slot)| slot.is_none())
            .map(|(name, _)| name)
            .collect()
    }

    /// The source of one PBX field by its name in [`Self::FIELDS`].
    pub fn get(&self, field: &str) -> Option<&SourcePath> {
        Self::FIELDS
            .into_iter()
            .zip(self.slots())
            .find(|(name, _)| *name == field)
            .and_then(|(_, slot)| slot)
    }

    fn slots(&self) -> [Option<&SourcePath>; 4] {
        [
            self.alias.as_ref(),
            self.first_name.as_ref(),
            self.surname.as_ref(),
            self.pstn_fixed.as_ref(),
        ]
    }

    fn paths(&self) -> impl Iterator<Item = &SourcePath> {
        self.slots().into_iter().flatten()
    }
}

/// The mass-deletion guard: a run that would delete more than `max_percent`
/// of the tenant's synced users, and at least `min_users` users, holds its
/// deletions until an operator approves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionGuard {
    pub max_percent: u32,
    pub min_users: u32,
}

impl Default for DeletionGuard {
    fn default() -> Self {
        DeletionGuard {
            max_percent: 10,
            min_users: 10,
        }
    }
}

impl DeletionGuard {
    /// Whether `deletions` out of `synced` PBX users are too many for one run.
    pub fn trips(&self, deletions: u64, synced: u64) -> bool {
        deletions > 0
            && deletions >= u64::from(self.min_users)
            && deletions * 100 > u64::from(self.max_percent) * synced
    }

    /// Why deletions were held, and what to do about it.
    pub fn reason(&self, tenant_id: &str, deletions: u64, synced: u64) -> String {
        format!(
            "{deletions} of {synced} synced users would be deleted, more than the guard allows \
             (over {}% and at least {} users); nothing was deleted. If that is right, run \
             `usersync approve-deletions {tenant_id}`; if not, fix the directory or the filter groups",
            self.max_percent, self.min_users
        )
    }
}

/// When the nightly run happens, in the tenant's own time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    #[serde(with = "serde_formats::hour_minute")]
    pub at: NaiveTime,
    #[serde(with = "serde_formats::time_zone")]
    pub timezone: Tz,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            at: NaiveTime::MIN + chrono::TimeDelta::hours(2),
            timezone: chrono_tz::Europe::Stockholm,
        }
    }
}

/// A per-tenant PBX endpoint, overriding the environment.
/// `Debug` masks the token so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PbxOverride {
    pub api_url: String,
    pub api_token: String,
}

impl fmt::Debug for PbxOverride {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PbxOverride")
            .field("api_url", &self.api_url)
            .field("api_token", &MASK)
            .finish()
    }
}

/// The field that identifies an existing PBX user (one without an owner) as a
/// directory user's, so the first sync adopts it instead of creating a second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdoptMatch {
    #[default]
    Alias,
    Email,
    PstnFixed,
}

impl AdoptMatch {
    pub const ALL: [AdoptMatch; 3] = [AdoptMatch::Alias, AdoptMatch::Email, AdoptMatch::PstnFixed];

    /// The name used in the tenant file, which is also the PBX field's name.
    pub fn as_str(self) -> &'static str {
        match self {
            AdoptMatch::Alias => "alias",
            AdoptMatch::Email => "email",
            AdoptMatch::PstnFixed => "pstn_fixed",
        }
    }
}

impl fmt::Display for AdoptMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-company limits on PBX calls, so one company's slow or throttling PBX
/// does not hold the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PbxLimits {
    /// Calls in flight at once per applier replica; default
    /// [`PbxLimits::DEFAULT_MAX_IN_FLIGHT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Calls started per second per applier replica; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
}

impl PbxLimits {
    pub const DEFAULT_MAX_IN_FLIGHT: u32 = 8;
    pub const MAX_IN_FLIGHT_LIMIT: u32 = 256;

    pub fn max_in_flight(&self) -> u32 {
        self.max_in_flight.unwrap_or(Self::DEFAULT_MAX_IN_FLIGHT)
    }
}
