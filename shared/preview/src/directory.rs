//! Reading the whole directory now: the filter groups' members and every
//! user, with the properties a sync reads. No delta state is read or kept.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value};
use usersync_core::TenantConfig;
use usersync_graph::{credentials_of, select_list, GraphClient, GraphError, PageLink};

/// Times the read starts over after Graph ended its paging (410,
/// `resyncRequired`), as a fetcher's round does, before it gives up.
const MAX_READ_RESTARTS: u32 = 3;

/// How far a read has come, for a progress line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Filter-group members listed so far.
    Members(u64),
    /// Users read so far.
    Users(u64),
    /// Users decided so far, of how many.
    Planned(u64, u64),
}

/// The directory as read now.
#[derive(Debug, Default)]
pub struct LiveDirectory {
    /// Each user's properties (annotations dropped), by object id.
    pub users: BTreeMap<String, Value>,
    /// The filter groups' transitive members; `None`: every user is in scope.
    pub members: Option<HashSet<String>>,
    /// Run-level warnings found on the way (a filter name several groups carry).
    pub warnings: Vec<String>,
}

/// Reads the tenant's directory through `graph`, which retries throttling and
/// outages and refreshes tokens as for every round.
pub async fn read_directory(
    graph: &GraphClient,
    tenant: &TenantConfig,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<LiveDirectory, GraphError> {
    let credentials = credentials_of(tenant);
    let mut directory = LiveDirectory::default();
    let names = &tenant.provider_settings.user_filter.member_of;
    if !tenant.provider_settings.user_filter.syncs_everyone() {
        let groups = graph.filter_groups(&credentials, names).await?;
        directory.warnings = groups.warnings;
        let mut members = HashSet::new();
        for group_id in &groups.ids {
            let mut url = Some(graph.members_start_url(group_id));
            while let Some(current) = url {
                let page = graph.members_page(&credentials, &current).await?;
                members.extend(page.user_ids);
                progress(Progress::Members(members.len() as u64));
                url = page.next;
            }
        }
        directory.members = Some(members);
    }
    let start = graph.users_delta_start_url(&select_list(tenant));
    let mut restarts = 0;
    let mut url = start.clone();
    loop {
        let page = match graph.users_delta_page(&credentials, &url).await {
            // A user removed meanwhile must not be kept on the strength of a
            // page from before: the read starts over.
            Err(GraphError::ResyncRequired { code, .. }) if restarts < MAX_READ_RESTARTS => {
                restarts += 1;
                tracing::warn!(%code, restarts, "Graph ended the paging mid-read: reading the whole directory again");
                directory.users.clear();
                url = start.clone();
                continue;
            }
            other => other?,
        };
        fold_users(&mut directory.users, page.users);
        progress(Progress::Users(directory.users.len() as u64));
        match page.next {
            PageLink::Next(next) => url = next,
            PageLink::Delta(_) => return Ok(directory),
        }
    }
}

/// Adds a page: a user seen again has its properties merged (Graph may return
/// one user on several pages), a removed one goes.
fn fold_users(users: &mut BTreeMap<String, Value>, page: Vec<Value>) {
    for user in page {
        let Value::Object(object) = user else { continue };
        let Some(id) = object.get("id").and_then(Value::as_str).map(str::to_owned) else {
            continue;
        };
        if object.contains_key("@removed") {
            users.remove(&id);
            continue;
        }
        let entry = users.entry(id).or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(properties) = entry else {
            continue;
        };
        for (key, value) in object {
            if !key.starts_with('@') && !key.contains("@odata") && key != "id" {
                properties.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_user_on_two_pages_is_merged_and_a_removed_one_goes() {
        let mut users = BTreeMap::new();
        fold_users(
            &mut users,
            vec![
                json!({"id": "a", "givenName": "Anna", "@odata.type": "#microsoft.graph.user"}),
                json!({"id": "b", "givenName": "Bo"}),
            ],
        );
        fold_users(
            &mut users,
            vec![
                json!({"id": "a", "surname": "Berg"}),
                json!({"id": "b", "@removed": {"reason": "changed"}}),
            ],
        );
        assert_eq!(users.len(), 1);
        assert_eq!(users["a"], json!({"givenName": "Anna", "surname": "Berg"}));
    }
}
