//! `GET /v1.0/groups/delta?$select=displayName,members`: groups with their
//! direct members as `members@delta`. A full round may split one group's
//! members over consecutive pages; a delta round reports membership changes.

use std::ops::Bound;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::directory::{Directory, GroupChange, MemberKind};
use crate::errors::GraphError;
use crate::rounds::{self, Endpoint, FreshOptions, Page, ResolvedRound, Round};
use crate::server::{lock, Sim, TenantHandle};
use crate::sync_token::{Resource, Step};
use crate::tenant::Tenant;

const GROUP_DELTA_PROPERTIES: &[&str] = &["id", "displayName", "members"];
const DEFAULT_GROUP_SELECT: &[&str] = &["displayName", "members"];

/// Position in a full round, in group-id then member-id order.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub enum Position {
    #[default]
    Start,
    AfterGroup(String),
    InGroup {
        group: String,
        after_member: String,
    },
}

struct Wanted {
    display_name: bool,
    members: bool,
}

impl Wanted {
    fn from_select(select: &[String]) -> Self {
        Wanted {
            display_name: select.iter().any(|s| s == "displayName"),
            members: select.iter().any(|s| s == "members"),
        }
    }
}

pub async fn handle(
    State(sim): State<Arc<Sim>>,
    Extension(tenant): Extension<TenantHandle>,
    Query(query): Query<rounds::QueryParams>,
) -> Response {
    let tenant = lock(&tenant);
    let endpoint = Endpoint {
        resource: Resource::Groups,
        base_url: &sim.base_url,
        path: "/v1.0/groups/delta",
    };
    match endpoint.resolve::<Position>(&tenant, &query, || fresh_options(&query)) {
        Ok(resolved) => build_page(&tenant, &endpoint, resolved).into_response(),
        Err(error) => error.into_response(),
    }
}

fn fresh_options(query: &rounds::QueryParams) -> Result<FreshOptions, GraphError> {
    if query.contains_key("$filter") {
        return Err(GraphError::bad_request(
            "Request_UnsupportedQuery",
            "Unsupported query: the simulator's groups delta takes no $filter.",
        ));
    }
    let known = |name: &str| GROUP_DELTA_PROPERTIES.contains(&name);
    let select = rounds::parse_select(query, known, DEFAULT_GROUP_SELECT, "group")?;
    Ok((select, None))
}

fn build_page(tenant: &Tenant, endpoint: &Endpoint, resolved: ResolvedRound<Position>) -> Page {
    let dir = &tenant.directory;
    let wanted = Wanted::from_select(&resolved.select);
    let nominal = tenant.settings.page_size;
    let (items, step) = match &resolved.round {
        Round::Full {
            snapshot,
            page,
            position,
        } => {
            let size = rounds::varied_page_size(nominal, *page, tenant.seed ^ snapshot);
            let (items, next) = full_page(dir, &wanted, position, size);
            let step = match next {
                Some(position) => Step::Full {
                    snapshot: *snapshot,
                    page: page + 1,
                    position,
                },
                None => Step::Track { since: *snapshot },
            };
            (items, step)
        }
        Round::Changes {
            since,
            until,
            page,
            after_seq,
        } => {
            let size = rounds::varied_page_size(nominal, *page, tenant.seed ^ since);
            let (items, next) = changes_page(dir, &wanted, *until, *after_seq, size);
            let step = Step::after_changes_page(*since, *until, *page, next);
            (items, step)
        }
    };
    Page {
        context: format!("{}/v1.0/$metadata#groups", endpoint.base_url),
        items,
        link: Some(endpoint.link(tenant, &resolved, step)),
        count: None,
    }
}

/// Spends a budget of `size` entries (one per member, at least one per
/// group) and tells where to continue if groups or members remain.
fn full_page(
    dir: &Directory,
    wanted: &Wanted,
    position: &Position,
    size: usize,
) -> (Vec<Value>, Option<Position>) {
    let (from, mut resume_after) = match position {
        Position::Start => (Bound::Unbounded, None),
        Position::AfterGroup(group) => (Bound::Excluded(group.as_str()), None),
        Position::InGroup { group, after_member } => {
            (Bound::Included(group.as_str()), Some(after_member.as_str()))
        }
    };
    let mut budget = size.max(1);
    let mut items = Vec::new();
    let mut groups = dir.groups_from(from).peekable();
    while let Some((id, group)) = groups.next() {
        let limit = if wanted.members { budget } else { 0 };
        let mut members = dir.current_members_after(group, resume_after.take()).peekable();
        let on_page: Vec<(&str, MemberKind)> = members.by_ref().take(limit).collect();
        budget -= on_page.len().max(1);
        let last_member = on_page.last().map(|(member, _)| (*member).to_owned());
        let entries = wanted.members.then(|| {
            on_page
                .iter()
                .map(|(member, kind)| member_entry(member, *kind, false))
                .collect()
        });
        items.push(group_object(id, &group.name, wanted, entries));
        match last_member {
            Some(after_member) if members.peek().is_some() => {
                let group = id.to_owned();
                return (items, Some(Position::InGroup { group, after_member }));
            }
            _ if budget == 0 => {
                let next = groups.peek().map(|_| Position::AfterGroup(id.to_owned()));
                return (items, next);
            }
            _ => {}
        }
    }
    (items, None)
}

/// Reports up to `size` change index entries in `(after_seq, until]`,
/// merging consecutive changes of one group into one object.
fn changes_page(
    dir: &Directory,
    wanted: &Wanted,
    until: u64,
    after_seq: u64,
    size: usize,
) -> (Vec<Value>, Option<u64>) {
    let mut groups: Vec<(&str, Vec<Value>)> = Vec::new();
    let mut last_seq = None;
    for (seq, change) in dir.group_changes(after_seq, until).take(size) {
        last_seq = Some(seq);
        let (group_id, entry) = match change {
            GroupChange::Group(group) => (group.as_str(), None),
            GroupChange::Member { group, member } if wanted.members => {
                (group.as_str(), Some(member_change_entry(dir, group, member)))
            }
            GroupChange::Member { .. } => continue,
        };
        match groups.last_mut() {
            Some((last, entries)) if *last == group_id => entries.extend(entry),
            _ => groups.push((group_id, entry.into_iter().collect())),
        }
    }
    let items = groups
        .into_iter()
        .filter_map(|(id, entries)| {
            let group = dir.group(id)?;
            Some(group_object(
                id,
                &group.name,
                wanted,
                wanted.members.then_some(entries),
            ))
        })
        .collect();
    let next = last_seq.filter(|last| dir.group_changes(*last, until).next().is_some());
    (items, next)
}

fn member_change_entry(dir: &Directory, group: &str, member: &str) -> Value {
    // A hard-deleted user is no longer in the directory, but was a user.
    let kind = dir.member_kind(member).unwrap_or(MemberKind::User);
    let current = dir.group(group).is_some_and(|g| dir.is_current_member(g, member));
    member_entry(member, kind, !current)
}

fn member_entry(id: &str, kind: MemberKind, removed: bool) -> Value {
    let odata_type = match kind {
        MemberKind::User => "#microsoft.graph.user",
        MemberKind::Group => "#microsoft.graph.group",
    };
    let mut entry = json!({"@odata.type": odata_type, "id": id});
    if removed {
        entry["@removed"] = json!({"reason": "deleted"});
    }
    entry
}

fn group_object(id: &str, name: &str, wanted: &Wanted, members: Option<Vec<Value>>) -> Value {
    let mut object = Map::new();
    object.insert("id".into(), json!(id));
    if wanted.display_name {
        object.insert("displayName".into(), json!(name));
    }
    if let Some(members) = members {
        object.insert("members@delta".into(), Value::Array(members));
    }
    Value::Object(object)
}
