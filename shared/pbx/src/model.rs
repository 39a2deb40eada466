//! The PBX's data shapes, as the contract describes them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A user-settings template that can be applied when a user is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub id: String,
    pub name: String,
}

/// A company number usable as caller id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Number {
    pub number: String,
    /// `main`, `fixed` or `mobile`.
    pub kind: String,
}

/// The writable fields of a user, as sent on creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewUser {
    pub alias: String,
    pub first_name: String,
    pub surname: String,
    pub pstn_fixed: String,
    pub email: Option<String>,
    pub caller_id: Option<String>,
    pub template: Option<String>,
    pub external_id: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// A user as the PBX returns it. Fields the contract may add later are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PbxUser {
    pub id: String,
    pub alias: String,
    pub first_name: String,
    pub surname: String,
    pub pstn_fixed: String,
    pub email: Option<String>,
    pub caller_id: Option<String>,
    pub template: Option<String>,
    pub external_id: Option<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    pub version: i64,
}

/// One page of the user listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsersPage {
    pub items: Vec<PbxUser>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// Look-up by one of the unique keys of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserFilter {
    Alias(String),
    ExternalId(String),
}

impl UserFilter {
    pub(crate) fn query_pair(&self) -> (&'static str, &str) {
        match self {
            Self::Alias(alias) => ("alias", alias),
            Self::ExternalId(id) => ("external_id", id),
        }
    }
}

/// The `{"items": [...]}` wrapper of the list endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Items<T> {
    pub items: Vec<T>,
}
