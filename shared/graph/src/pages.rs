//! The pages the client hands out, and the Graph collection shapes they come from.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{urls, GraphError};

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
pub(crate) struct Collection<T> {
    pub value: Vec<T>,
    pub next_link: Option<String>,
    pub delta_link: Option<String>,
}

const NEXT_LINK: &str = "@odata.nextLink";
const DELTA_LINK: &str = "@odata.deltaLink";

/// Checks the page's shape key by key, so a refusal names the key at fault
/// (serde's own messages name a line and column of a body nobody can see).
pub(crate) fn collection<T: DeserializeOwned>(body: Value) -> Result<Collection<T>, String> {
    let Value::Object(mut page) = body else {
        return Err(format!("the body is {}, not a JSON object", kind(&body)));
    };
    let items = match page.remove("value") {
        None => return Err("the page has no `value` key".to_owned()),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(format!("`value` is {}, not an array", kind(&other))),
    };
    let value = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| parse_item(index, item))
        .collect::<Result<_, _>>()?;
    Ok(Collection {
        value,
        next_link: link(&page, NEXT_LINK)?,
        delta_link: link(&page, DELTA_LINK)?,
    })
}

/// Every directory object carries a non-empty string `id`; the rest is the item type's.
fn parse_item<T: DeserializeOwned>(index: usize, item: Value) -> Result<T, String> {
    match item.get("id") {
        _ if !item.is_object() => {
            return Err(format!(
                "item {index} of `value` is {}, not an object",
                kind(&item)
            ))
        }
        None => return Err(format!("item {index} of `value` has no `id`")),
        Some(Value::String(id)) if !id.is_empty() => {}
        Some(Value::String(_)) => return Err(format!("item {index} of `value` has an empty `id`")),
        Some(other) => {
            return Err(format!(
                "item {index} of `value` has an `id` that is {}, not a string",
                kind(other)
            ))
        }
    }
    serde_json::from_value(item).map_err(|error| format!("item {index} of `value`: {error}"))
}

/// An absent or `null` link is no link; anything else must be a string.
fn link(page: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match page.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(link)) => Ok(Some(link.clone())),
        Some(other) => Err(format!("`{key}` is {}, not a string", kind(other))),
    }
}

/// A JSON value's kind, for messages: "a number", "an array", …
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<T> Collection<T> {
    /// Both links must point at the Graph host: a foreign one is never followed
    /// (it would get the access token) nor stored as the next round's start.
    pub(crate) fn check_links(&self, graph_base_url: &str, request_path: &str) -> Result<(), GraphError> {
        for (key, link) in [(NEXT_LINK, &self.next_link), (DELTA_LINK, &self.delta_link)] {
            if let Some(link) = link {
                urls::trusted_link(graph_base_url, link).map_err(|error| GraphError::InvalidLink {
                    reason: format!("`{key}` of GET {request_path}: {}", link_reason(error)),
                })?;
            }
        }
        Ok(())
    }
}

fn link_reason(error: GraphError) -> String {
    match error {
        GraphError::InvalidLink { reason } => reason,
        other => other.to_string(),
    }
}

#[derive(Deserialize)]
pub(crate) struct DirectoryObject {
    pub id: String,
}

impl DeltaPage {
    pub(crate) fn from_collection(page: Collection<Value>, request_path: &str) -> Result<Self, GraphError> {
        let next = page_link(page.next_link, page.delta_link, request_path)?;
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

impl GroupsDeltaPage {
    pub(crate) fn from_collection(
        page: Collection<RawGroupDelta>,
        request_path: &str,
    ) -> Result<Self, GraphError> {
        let next = page_link(page.next_link, page.delta_link, request_path)?;
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
fn page_link(
    next_link: Option<String>,
    delta_link: Option<String>,
    request_path: &str,
) -> Result<PageLink, GraphError> {
    match (next_link, delta_link) {
        (Some(next), _) => Ok(PageLink::Next(next)),
        (None, Some(delta)) => Ok(PageLink::Delta(delta)),
        (None, None) => Err(GraphError::InvalidResponse {
            reason: format!(
                "HTTP 200 to GET {request_path}: the delta page carries neither `{NEXT_LINK}` nor `{DELTA_LINK}`"
            ),
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
