//! One simulated Entra tenant: credentials, behaviour flags, directory,
//! injected faults, request counters, change-notification subscriptions and
//! a simulated clock.

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::directory::Directory;
use crate::faults::FaultQueue;
use crate::subscriptions::{DirectoryChange, Subscriptions};
use crate::sync_token::Stamp;

/// Graph lets directory delta tokens live seven days.
pub const DEFAULT_TOKEN_MAX_AGE_SECS: u64 = 7 * 24 * 3600;

/// How the tenant answers an expired or foreign delta/skip token.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExpiryStyle {
    /// 410 with a `Location` header to restart from.
    #[default]
    #[serde(rename = "gone")]
    Gone,
    #[serde(rename = "syncStateNotFound")]
    SyncStateNotFound,
    #[serde(rename = "syncStateInvalid")]
    SyncStateInvalid,
    #[serde(rename = "resyncRequired")]
    ResyncRequired,
}

#[derive(Serialize, Clone, Debug)]
pub struct TenantSettings {
    pub client_id: String,
    pub client_secret: String,
    pub secret_expired: bool,
    pub consent_missing: bool,
    pub page_size: usize,
    pub expiry_style: ExpiryStyle,
    pub token_max_age_secs: u64,
    pub domain: String,
}

#[derive(Serialize, Default, Clone, Debug)]
pub struct RequestCounts {
    pub users_delta: u64,
    pub groups: u64,
    pub members: u64,
    pub groups_delta: u64,
    pub subscriptions: u64,
}

#[derive(Serialize, Default, Clone, Debug)]
pub struct Stats {
    pub token_requests: u64,
    pub requests: RequestCounts,
    pub faults_served: u64,
}

impl Stats {
    /// Counts a Graph request by the family of its path.
    pub fn count_graph_request(&mut self, path: &str) {
        let counts = &mut self.requests;
        let path = path.strip_suffix("()").unwrap_or(path);
        if path.ends_with("/users/delta") {
            counts.users_delta += 1;
        } else if path.ends_with("/groups/delta") {
            counts.groups_delta += 1;
        } else if path.contains("/transitiveMembers") {
            counts.members += 1;
        } else if path.contains("/subscriptions") {
            counts.subscriptions += 1;
        } else {
            counts.groups += 1;
        }
    }
}

/// Why a token from a link cannot be used.
pub enum TokenProblem {
    /// Too old, issued before an expiry call, or from a replaced tenant.
    Expired,
    /// Not a token this tenant could have issued for this resource.
    Invalid,
}

pub struct Tenant {
    pub id: String,
    /// Random per creation, so tokens of a replaced tenant are refused.
    pub instance: u64,
    pub seed: u64,
    pub settings: TenantSettings,
    pub directory: Directory,
    pub faults: FaultQueue,
    pub stats: Stats,
    pub subscriptions: Subscriptions,
    /// Index of the next user created through the control API (ids stay deterministic).
    pub next_user_index: u64,
    pub next_group_index: u64,
    token_generation: u32,
    started: Instant,
    clock_offset_secs: u64,
}

impl Tenant {
    pub fn new(id: String, seed: u64, settings: TenantSettings, directory: Directory) -> Self {
        Tenant {
            id,
            instance: rand::random(),
            seed,
            settings,
            directory,
            faults: FaultQueue::default(),
            stats: Stats::default(),
            subscriptions: Subscriptions::default(),
            next_user_index: 0,
            next_group_index: 0,
            token_generation: 0,
            started: Instant::now(),
            clock_offset_secs: 0,
        }
    }

    /// Seconds on the simulated clock: real time since creation plus any advance.
    pub fn now_secs(&self) -> u64 {
        self.started
            .elapsed()
            .as_secs()
            .saturating_add(self.clock_offset_secs)
    }

    /// The simulated wall clock: real time plus any advance. Subscriptions
    /// expire on it.
    pub fn now_utc(&self) -> DateTime<Utc> {
        // A huge advance saturates instead of overflowing the date.
        let offset = i64::try_from(self.clock_offset_secs).unwrap_or(i64::MAX);
        let offset = chrono::Duration::try_seconds(offset).unwrap_or(chrono::TimeDelta::MAX);
        Utc::now()
            .checked_add_signed(offset)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Queues change notifications for the tenant's live subscriptions.
    pub fn publish(&self, changes: &[DirectoryChange]) {
        self.subscriptions.publish(&self.id, self.now_utc(), changes);
    }

    pub fn advance_clock(&mut self, secs: u64) {
        self.clock_offset_secs = self.clock_offset_secs.saturating_add(secs);
    }

    /// Makes every delta and skip token issued so far unusable.
    pub fn expire_delta_tokens(&mut self) {
        self.token_generation += 1;
    }

    pub fn stamp(&self) -> Stamp {
        Stamp {
            instance: self.instance,
            generation: self.token_generation,
            issued_at: self.now_secs(),
        }
    }

    pub fn check_stamp(&self, stamp: &Stamp) -> Result<(), TokenProblem> {
        let age = self.now_secs().saturating_sub(stamp.issued_at);
        if stamp.instance != self.instance
            || stamp.generation < self.token_generation
            || age > self.settings.token_max_age_secs
        {
            return Err(TokenProblem::Expired);
        }
        if stamp.generation > self.token_generation {
            return Err(TokenProblem::Invalid);
        }
        Ok(())
    }
}
