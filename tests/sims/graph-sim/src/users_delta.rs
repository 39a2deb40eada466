//! `GET /v1.0/users/delta`: full rounds paged by user id, delta rounds paged
//! over the change index.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::Value;

use crate::directory::{Directory, UserRecord, UserState};
use crate::errors::GraphError;
use crate::odata::parse_id_filter;
use crate::rounds::{self, Endpoint, FreshOptions, Page, ResolvedRound, Round};
use crate::server::{lock, Sim, TenantHandle};
use crate::sync_token::{Resource, Step};
use crate::tenant::Tenant;
use crate::user_view::{is_user_property, project_changes, project_full, removed, DEFAULT_USER_SELECT};

/// Position in a full round: the id of the last user sent.
type Position = Option<String>;

pub async fn handle(
    State(sim): State<Arc<Sim>>,
    Extension(tenant): Extension<TenantHandle>,
    Query(query): Query<rounds::QueryParams>,
) -> Response {
    let tenant = lock(&tenant);
    let endpoint = Endpoint {
        resource: Resource::Users,
        base_url: &sim.base_url,
        path: "/v1.0/users/delta",
    };
    match endpoint.resolve::<Position>(&tenant, &query, || fresh_options(&query)) {
        Ok(resolved) => build_page(&tenant, &endpoint, resolved).into_response(),
        Err(error) => error.into_response(),
    }
}

fn fresh_options(query: &rounds::QueryParams) -> Result<FreshOptions, GraphError> {
    let select = rounds::parse_select(query, is_user_property, DEFAULT_USER_SELECT, "user")?;
    let filter_ids = match query.get("$filter") {
        None => None,
        Some(filter) => Some(parse_id_filter(filter).ok_or_else(|| {
            GraphError::bad_request(
                "Request_UnsupportedQuery",
                "Unsupported query: delta supports only up to 50 'id eq' clauses joined with 'or'.",
            )
        })?),
    };
    Ok((select, filter_ids))
}

fn build_page(tenant: &Tenant, endpoint: &Endpoint, resolved: ResolvedRound<Position>) -> Page {
    let dir = &tenant.directory;
    let nominal = tenant.settings.page_size;
    let (items, step) = match &resolved.round {
        Round::Full {
            snapshot,
            page,
            position,
        } => {
            let size = rounds::varied_page_size(nominal, *page, tenant.seed ^ snapshot);
            let (items, next) = full_page(dir, &resolved, position.as_deref(), size);
            let step = match next {
                Some(position) => Step::Full {
                    snapshot: *snapshot,
                    page: page + 1,
                    position: Some(position),
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
            let (items, next) = changes_page(dir, &resolved, *since, *until, *after_seq, size);
            let step = Step::after_changes_page(*since, *until, *page, next);
            (items, step)
        }
    };
    Page {
        context: format!("{}/v1.0/$metadata#users", endpoint.base_url),
        items,
        link: Some(endpoint.link(tenant, &resolved, step)),
        count: None,
    }
}

/// Up to `size` active users after `position`, and the position to continue
/// from if more remain. Costs O(size · log n).
fn full_page(
    dir: &Directory,
    resolved: &ResolvedRound<Position>,
    position: Option<&str>,
    size: usize,
) -> (Vec<Value>, Option<String>) {
    let candidates: Box<dyn Iterator<Item = (&str, &UserRecord)>> = match &resolved.filter_ids {
        Some(ids) => Box::new(
            ids.iter()
                .map(String::as_str)
                .filter(move |id| position.is_none_or(|p| *id > p))
                .filter_map(|id| dir.active_user(id).map(|user| (id, user))),
        ),
        None => Box::new(dir.active_users_after(position)),
    };
    let mut users: Vec<_> = candidates.take(size + 1).collect();
    let more = users.len() > size;
    users.truncate(size);
    let next = if more {
        users.last().map(|(id, _)| (*id).to_owned())
    } else {
        None
    };
    let items = users
        .iter()
        .map(|(_, user)| project_full(&user.props, &resolved.select))
        .collect();
    (items, next)
}

/// Reports up to `size` change index entries in `(after_seq, until]`, and
/// the sequence to continue after if more remain. Costs O(size · log n).
fn changes_page(
    dir: &Directory,
    resolved: &ResolvedRound<Position>,
    since: u64,
    until: u64,
    after_seq: u64,
    size: usize,
) -> (Vec<Value>, Option<u64>) {
    let mut items = Vec::new();
    let mut last_seq = None;
    for (seq, id) in dir.user_changes(after_seq, until).take(size) {
        last_seq = Some(seq);
        let wanted = resolved
            .filter_ids
            .as_ref()
            .is_none_or(|ids| ids.binary_search_by(|x| x.as_str().cmp(id)).is_ok());
        if wanted {
            items.extend(change_entry(dir, id, since, &resolved.select));
        }
    }
    let next = last_seq.filter(|last| dir.user_changes(*last, until).next().is_some());
    (items, next)
}

fn change_entry(dir: &Directory, id: &str, since: u64, select: &[String]) -> Option<Value> {
    match dir.user_state(id)? {
        UserState::Active(user) if user.created_after(since) => Some(project_full(&user.props, select)),
        UserState::Active(user) => project_changes(user, since, select),
        UserState::SoftDeleted => Some(removed(id, "changed")),
        UserState::HardDeleted => Some(removed(id, "deleted")),
    }
}
