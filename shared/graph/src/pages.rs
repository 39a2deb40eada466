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

/// One page of a groups delta round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupsDeltaPage {
    pub groups: Vec<GroupDelta>,
    pub next: PageLink,
}

/// A group as a groups delta page reports it: its membership changes (on a
/// round without a token: its members), or its removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDelta {
    pub id: String,
    /// The group itself was deleted.
    pub removed: bool,
    pub members: Vec<MemberChange>,
}

/// One entry of `members@delta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChange {
    pub id: String,
    /// A nested group rather than a user (or another directory object).
    pub is_group: bool,
    /// `@removed`: the member left the group (it is not a deleted user).
    pub removed: bool,
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

    fn try_from(page: Collection<Value>) -> Result<Self, GraphError> {
        let next = page_link(page.next_link, page.delta_link)?;
        Ok(Self {
            users: page.value,
            next,
        })
    }
}

/// A group object of the groups delta, as Graph sends it.
#[derive(Deserialize)]
pub(crate) struct RawGroupDelta {
    id: String,
    #[serde(rename = "@removed")]
    removed: Option<Value>,
    #[serde(rename = "members@delta", default)]
    members: Vec<RawMember>,
}

#[derive(Deserialize)]
struct RawMember {
    id: String,
    #[serde(rename = "@odata.type", default)]
    odata_type: String,
    #[serde(rename = "@removed")]
    removed: Option<Value>,
}

impl TryFrom<Collection<RawGroupDelta>> for GroupsDeltaPage {
    type Error = GraphError;

    fn try_from(page: Collection<RawGroupDelta>) -> Result<Self, GraphError> {
        let next = page_link(page.next_link, page.delta_link)?;
        let groups = page
            .value
            .into_iter()
            .map(|group| GroupDelta {
                id: group.id,
                removed: group.removed.is_some(),
                members: group
                    .members
                    .into_iter()
                    .map(|member| MemberChange {
                        is_group: member.odata_type.eq_ignore_ascii_case("#microsoft.graph.group"),
                        removed: member.removed.is_some(),
                        id: member.id,
                    })
                    .collect(),
            })
            .collect();
        Ok(Self { groups, next })
    }
}

/// Graph never sends both links; if it did, following `nextLink` loses nothing.
fn page_link(next_link: Option<String>, delta_link: Option<String>) -> Result<PageLink, GraphError> {
    match (next_link, delta_link) {
        (Some(next), _) => Ok(PageLink::Next(next)),
        (None, Some(delta)) => Ok(PageLink::Delta(delta)),
        (None, None) => Err(GraphError::InvalidResponse {
            reason: "delta page carries neither @odata.nextLink nor @odata.deltaLink".to_string(),
        }),
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
