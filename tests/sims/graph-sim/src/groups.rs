//! `GET /v1.0/groups?$filter=displayName eq '…'` and
//! `GET /v1.0/groups/{id}/transitiveMembers/microsoft.graph.user`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Extension;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::errors::GraphError;
use crate::odata::parse_eq_clause;
use crate::rounds::{self, Link, Page};
use crate::server::{lock, Sim, TenantHandle};
use crate::sync_token;
use crate::user_view::{is_user_property, project_full, DEFAULT_USER_SELECT};

pub async fn list(
    State(sim): State<Arc<Sim>>,
    Extension(tenant): Extension<TenantHandle>,
    Query(query): Query<rounds::QueryParams>,
) -> Result<Page, GraphError> {
    let name = match query.get("$filter") {
        None => None,
        Some(filter) => Some(parse_eq_clause(filter, "displayName").ok_or_else(|| {
            GraphError::bad_request(
                "Request_UnsupportedQuery",
                "Unsupported query: only displayName eq '…' is supported.",
            )
        })?),
    };
    let tenant = lock(&tenant);
    let items = tenant
        .directory
        .groups()
        .filter(|(_, group)| name.as_ref().is_none_or(|n| *n == group.name))
        .map(|(id, group)| json!({"id": id, "displayName": group.name}))
        .collect();
    Ok(Page {
        context: format!("{}/v1.0/$metadata#groups", sim.base_url),
        items,
        link: None,
        count: None,
    })
}

/// What a members nextLink carries.
#[derive(Serialize, Deserialize)]
struct MembersToken {
    group: String,
    select: Vec<String>,
    after: String,
}

pub async fn transitive_members(
    State(sim): State<Arc<Sim>>,
    Extension(tenant): Extension<TenantHandle>,
    Path(group_id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<rounds::QueryParams>,
) -> Result<Page, GraphError> {
    require_advanced_query(&headers, &query)?;
    let (select, after) = match query.get("$skiptoken") {
        Some(text) => match sync_token::decode::<MembersToken>(text) {
            Some(token) if token.group == group_id => (token.select, Some(token.after)),
            _ => {
                let message = "The skip token is not valid.";
                return Err(GraphError::bad_request("Request_BadRequest", message));
            }
        },
        None => {
            let select = rounds::parse_select(&query, is_user_property, DEFAULT_USER_SELECT, "user")?;
            (select, None)
        }
    };
    let tenant = lock(&tenant);
    let dir = &tenant.directory;
    if dir.group(&group_id).is_none() {
        let message = format!(
            "Resource '{group_id}' does not exist or one of its queried reference-property objects are not present."
        );
        let error = GraphError::new(StatusCode::NOT_FOUND, "Request_ResourceNotFound", &message);
        return Err(error);
    }
    let size = tenant.settings.page_size.max(1);
    let mut ids = dir.transitive_users_page(&group_id, after.as_deref(), size + 1);
    let more = ids.len() > size;
    ids.truncate(size);
    let items: Vec<Value> = ids
        .iter()
        .filter_map(|id| dir.user(id))
        .map(|user| project_full(&user.props, &select))
        .collect();
    let link = match ids.last() {
        Some(last) if more => {
            let token = MembersToken {
                group: group_id.clone(),
                select,
                after: (*last).to_owned(),
            };
            Some(Link::Next(format!(
                "{}/v1.0/groups/{group_id}/transitiveMembers/microsoft.graph.user?$count=true&$skiptoken={}",
                sim.base_url,
                sync_token::encode(&token)
            )))
        }
        _ => None,
    };
    // Counting is O(members), so it happens once per listing, on its first page.
    let count = after.is_none().then(|| dir.transitive_user_count(&group_id));
    Ok(Page {
        context: format!("{}/v1.0/$metadata#users", sim.base_url),
        items,
        link,
        count,
    })
}

/// Casting transitive members to users is an advanced query: Graph wants
/// `ConsistencyLevel: eventual` and `$count=true` together.
fn require_advanced_query(headers: &HeaderMap, query: &rounds::QueryParams) -> Result<(), GraphError> {
    let eventual = headers
        .get("ConsistencyLevel")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("eventual"));
    let counted = query.get("$count").is_some_and(|v| v == "true");
    if eventual && counted {
        Ok(())
    } else {
        Err(GraphError::bad_request(
            "Request_BadRequest",
            "This query is only supported with the 'ConsistencyLevel: eventual' header and $count=true.",
        ))
    }
}
