//! Microsoft Graph client for usersync: client-credentials tokens, users delta
//! rounds, group lookups, transitive group members and change-notification
//! subscriptions — with throttling, outages
//! and expired delta state handled the way Microsoft documents them.

mod client;
mod error;
mod pages;
pub mod parse;
mod response;
mod retry;
mod subscriptions;
mod tenant;
mod token;
mod urls;

use std::fmt;

pub use client::GraphClient;
pub use error::{AuthFailure, AuthFailureKind, GraphError};
pub use pages::{DeltaPage, GroupDelta, GroupsDeltaPage, MemberChange, MembersPage, PageLink, ResolvedGroup};
pub use retry::{RetryEvent, RetryHook, RetryPolicy};
pub use subscriptions::{
    subscription_resources, NewSubscription, Subscription, GROUPS_RESOURCE, USERS_RESOURCE,
};
pub use tenant::{credentials_of, select_list, FilterGroups, STANDARD_PROPERTIES};

/// Microsoft's global Graph endpoint, API version 1.0.
pub const MICROSOFT_GRAPH_BASE_URL: &str = "https://graph.microsoft.com/v1.0";
/// Microsoft's global Entra ID login endpoint.
pub const MICROSOFT_LOGIN_BASE_URL: &str = "https://login.microsoftonline.com";

/// Where Graph and the login endpoint live, and how failures are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphConfig {
    /// e.g. `https://graph.microsoft.com/v1.0`
    pub graph_base_url: String,
    /// e.g. `https://login.microsoftonline.com`
    pub login_base_url: String,
    pub retry: RetryPolicy,
}

impl Default for GraphConfig {
    /// Microsoft's public cloud with the default retry policy.
    fn default() -> Self {
        Self {
            graph_base_url: MICROSOFT_GRAPH_BASE_URL.to_string(),
            login_base_url: MICROSOFT_LOGIN_BASE_URL.to_string(),
            retry: RetryPolicy::default(),
        }
    }
}

/// An app registration's client credentials for one tenant.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_masks_the_secret() {
        let creds = Credentials {
            tenant_id: "t".into(),
            client_id: "c".into(),
            client_secret: "hunter2".into(),
        };
        let printed = format!("{creds:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("***"), "{printed}");
    }
}
