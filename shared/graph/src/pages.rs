//! The pages the client hands out, and the Graph collection shapes they come from.

use serde::Deserialize;
use serde_json::Value;

use crate::GraphError;

/// One page of a users delta round.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaPage {
    /// Raw user objects as Graph sent them, `@removed` entries included.
    pub users: Vec<Value>,
    pub next: PageLink,
}

/// Where a delta round goes on from a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageLink {
    /// More pages in this round: fetch this link next.
    Next(String),
    /// The round is complete: store this link and start the next round from it.
    Delta(String),
}

/// One page of a group's transitive user members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembersPage {
    pub user_ids: Vec<String>,
    pub next: Option<String>,
}

/// The groups carrying one display name; empty `ids` means none does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedGroup {
    pub name: String,
    pub ids: Vec<String>,
}

/// An OData collection page.
#[derive(Deserialize)]
pub(crate) struct Collection<T> {
    pub value: Vec<T>,
    #[serde(rename = "@odata.nextLink")]
    pub next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    pub delta_link: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct DirectoryObject {
    pub id: String,
}

impl TryFrom<Collection<Value>> for DeltaPage {
    type Error = GraphError;

    /// Graph never sends both links; if it did, following `nextLink` loses nothing.
    fn try_from(page: Collection<Value>) -> Result<Self, GraphError> {
        let next = match (page.next_link, page.delta_link) {
            (Some(next), _) => PageLink::Next(next),
            (None, Some(delta)) => PageLink::Delta(delta),
            (None, None) => {
                return Err(GraphError::InvalidResponse {
                    reason: "delta page carries neither @odata.nextLink nor @odata.deltaLink".to_string(),
                })
            }
        };
        Ok(Self {
            users: page.value,
            next,
        })
    }
}

impl From<Collection<DirectoryObject>> for MembersPage {
    fn from(page: Collection<DirectoryObject>) -> Self {
        Self {
            user_ids: page.value.into_iter().map(|member| member.id).collect(),
            next: page.next_link,
        }
    }
}
