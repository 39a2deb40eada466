//! One round: resolve the filter groups, page their members and the users
//! delta, publish every page with confirms, then the end of the round.

use std::collections::HashSet;

use serde_json::Value;
use tracing::Instrument;
use usersync_bus::{Bus, Failure, Handler, Incoming};
use usersync_contract::{
    topology::{Lane, Stage},
    DirectoryPage, GroupsRound, PageBody, ResyncRequest,
};
use usersync_core::TenantConfig;
use usersync_graph::{credentials_of, select_list, Credentials, GraphClient, GraphError, PageLink};
use usersync_store::{RunStart, RunState, SecretKey, Store};
use uuid::Uuid;

use crate::groups::{self, GroupsScan};

/// Times a run reads the whole directory again after Graph ended the
/// paging of a full round, before the run fails.
const MAX_ROUND_RESTARTS: u32 = 3;

/// Users in one page message to the differ. A Graph page holds up to 999
/// users, about a megabyte of JSON; the differ decodes, folds and binds a
/// message at several times its size, with the next few already pushed to it
/// by the broker. With whole pages its peak memory grew by 30-45 % from a
/// 1,000-user tenant to a 100,000-user one; with messages of 250 users, by
/// 12-18 % (of 500, 19-20 %). A message costs the differ a transaction, so
/// smaller ones would cost the first sync time.
const USERS_PER_MESSAGE: usize = 250;

pub struct Fetcher {
    pub store: Store,
    pub bus: Bus,
    pub graph: GraphClient,
    pub key: SecretKey,
}

/// Why a round stopped short.
enum RoundError {
    /// The directory refused or failed: the run fails, with a stable code and a
    /// reason for the operator.
    Directory { code: String, reason: String },
    /// Our own infrastructure failed: try the request again.
    Infrastructure(anyhow::Error),
    /// Graph ended a full round's paging (410, `resyncRequired`): read the
    /// directory again in a new round.
    Expired { code: String },
}

impl From<anyhow::Error> for RoundError {
    fn from(err: anyhow::Error) -> Self {
        RoundError::Infrastructure(err)
    }
}

impl From<GraphError> for RoundError {
    fn from(err: GraphError) -> Self {
        RoundError::Directory {
            code: err.code(),
            reason: err.to_string(),
        }
    }
}

impl Handler<ResyncRequest> for Fetcher {
    async fn handle(&self, incoming: Incoming<ResyncRequest>) -> Result<(), Failure> {
        let request = &incoming.message;
        let Some(tenant) = self.store.tenant(&request.tenant_id, Some(&self.key)).await? else {
            return Err(Failure::reject(format!(
                "no tenant {:?}: create it with `usersync tenant apply FILE`",
                request.tenant_id
            )));
        };
        let (run_id, start) = match follow_up_start(incoming.message_id.as_deref()) {
            Some((run_id, number)) => {
                let start = self
                    .store
                    .start_follow_up(run_id, &request.tenant_id, number)
                    .await?;
                (run_id, start)
            }
            None => {
                let run_id = run_id_for(incoming.message_id.as_deref());
                let start = self
                    .store
                    .start_run(run_id, &request.tenant_id, &request.trigger, request.full)
                    .await?;
                (run_id, start)
            }
        };
        match start {
            RunStart::Started | RunStart::Resumed => {}
            RunStart::AlreadyFetched => return Ok(()),
            RunStart::Coalesced(active) => {
                tracing::info!(tenant_id = %request.tenant_id, %active, "a run is already in progress and has not read its round; request joined it");
                return Ok(());
            }
            RunStart::Queued(queued) => {
                tracing::info!(tenant_id = %request.tenant_id, %queued, "the run in progress has read its round; request served by the follow-up run queued after it");
                return Ok(());
            }
        }
        // Instrumented, not entered: the span must follow the future across awaits.
        let span = tracing::info_span!("round", tenant_id = %request.tenant_id, %run_id);
        match self.round(run_id, &tenant.config).instrument(span.clone()).await {
            Ok(()) => Ok(()),
            Err(RoundError::Infrastructure(err)) => Err(err.into()),
            Err(RoundError::Directory { code, reason }) => {
                tracing::warn!(parent: &span, %code, %reason, "run failed");
                self.fail(run_id, &code, &reason).await?;
                Ok(())
            }
            Err(RoundError::Expired { code }) => {
                let reason = format!(
                    "Microsoft Graph ended the paging of the directory mid-round {} times in a row ({code}); the next run reads it again",
                    MAX_ROUND_RESTARTS + 1
                );
                tracing::warn!(parent: &span, %code, %reason, "run failed");
                self.fail(run_id, "graph.resync_required", &reason).await?;
                Ok(())
            }
        }
    }
}

impl Fetcher {
    /// Takes a token, records that the round starts reading, then reads it.
    async fn round(&self, run_id: Uuid, tenant: &TenantConfig) -> Result<(), RoundError> {
        // The token is not the directory: until it is here, requests join this run.
        self.graph.token(&credentials_of(tenant)).await?;
        // From now on requests queue a follow-up. The run's record says whether
        // to read everything (so may a request that joined it), and the tenant
        // file is read again: a change made before a request that joined is in
        // this round.
        let full = self.store.mark_round_started(run_id).await?;
        let tenant = self
            .store
            .tenant(&tenant.id, Some(&self.key))
            .await?
            .ok_or_else(|| anyhow::anyhow!("tenant {:?} is gone", tenant.id))?;
        if full {
            self.store.drop_delta_state(&tenant.config.id).await?;
        }
        self.warn_of_failing_subscriptions(run_id, &tenant.config).await?;
        let mut delta_link = tenant.delta_link.filter(|_| !full);
        let mut restarts = 0;
        loop {
            match self.read_round(run_id, &tenant.config, delta_link.take()).await {
                Err(RoundError::Expired { code }) if restarts < MAX_ROUND_RESTARTS => {
                    restarts += 1;
                    tracing::warn!(%code, restarts, "Graph ended the paging mid-round: reading the whole directory again");
                }
                other => return other,
            }
        }
    }

    /// While a subscription of a tenant with notifications on cannot be created
    /// or renewed, every run says so (the digest at level `warning` names it).
    async fn warn_of_failing_subscriptions(&self, run_id: Uuid, tenant: &TenantConfig) -> anyhow::Result<()> {
        if !tenant.change_notifications {
            return Ok(());
        }
        for row in self.store.graph_subscriptions(Some(&tenant.id), None).await? {
            if let Some(warning) = crate::subscriptions::run_warning(&row) {
                tracing::warn!(%warning);
                self.store.add_run_warning(run_id, &warning).await?;
            }
        }
        Ok(())
    }

    /// `delta_link`: where the users delta goes on from; none for a full round.
    async fn read_round(
        &self,
        run_id: Uuid,
        tenant: &TenantConfig,
        delta_link: Option<String>,
    ) -> Result<(), RoundError> {
        let run = self
            .store
            .run(run_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("run {run_id} is not recorded"))?;
        let round = RoundPublisher {
            bus: &self.bus,
            run_id,
            round_id: Uuid::new_v4(),
            tenant_id: &tenant.id,
            // The whole run takes the lane of its trigger, page after page.
            lane: Lane::for_trigger(&run.trigger),
        };
        // Before its first page: from now on the pages of any earlier round
        // (of a fetcher killed mid-round, or a restarted paging) change nothing.
        let ids = usersync_store::Round {
            run_id,
            round_id: round.round_id,
        };
        self.store.begin_round(&tenant.id, ids).await?;
        let credentials = credentials_of(tenant);
        let mut pages = 0u32;
        let scoped = !tenant.provider_settings.user_filter.member_of.is_empty();
        let groups = if scoped {
            let fresh = delta_link.is_none();
            Some(
                self.track_groups(&round, tenant, &credentials, fresh, &mut pages)
                    .await?,
            )
        } else {
            None
        };
        let start = self.graph.users_delta_start_url(&select_list(tenant));
        let mut full_round = delta_link.is_none();
        let mut url = delta_link.unwrap_or_else(|| start.clone());
        let delta_link = loop {
            let page = match self.graph.users_delta_page(&credentials, &url).await {
                Err(GraphError::ResyncRequired { code, .. }) if !full_round => {
                    tracing::warn!(%code, "delta state no longer valid: reading the whole directory");
                    full_round = true;
                    url = start.clone();
                    continue;
                }
                // Graph ended the paging of a full round (a nextLink expired):
                // the round starts over, so a user removed meanwhile is not
                // kept on the strength of a page from before.
                Err(GraphError::ResyncRequired { code, .. }) => return Err(RoundError::Expired { code }),
                other => other?,
            };
            for users in page_messages(page.users) {
                round.send(PageBody::Users { page: pages, users }).await?;
                pages += 1;
            }
            match page.next {
                PageLink::Next(next) => url = next,
                PageLink::Delta(link) => break link,
            }
        };
        round
            .send(PageBody::RoundComplete {
                pages,
                full_round,
                scoped,
                delta_link,
                groups,
            })
            .await?;
        self.store.set_run_state(run_id, RunState::Differing).await?;
        tracing::info!(pages, full_round, "round published");
        Ok(())
    }

    /// Reads the groups delta (from the stored link, or from scratch on a fresh
    /// round or a changed filter) and lists the filter groups' transitive
    /// members again when a group that decides scope changed.
    async fn track_groups(
        &self,
        round: &RoundPublisher<'_>,
        tenant: &TenantConfig,
        credentials: &Credentials,
        fresh_round: bool,
        pages: &mut u32,
    ) -> Result<GroupsRound, RoundError> {
        let filter_ids = self
            .resolve_filter_groups(round.run_id, tenant, credentials)
            .await?;
        let stored = match fresh_round {
            true => None,
            false => self
                .store
                .groups_state(&tenant.id)
                .await?
                .filter(|state| state.filter_group_ids == filter_ids),
        };
        let start = self.graph.groups_delta_start_url();
        let mut fresh_scan = stored.is_none();
        let mut url = stored
            .as_ref()
            .map_or_else(|| start.clone(), |state| state.delta_link.clone());
        let mut scan = GroupsScan::default();
        let delta_link = loop {
            let page = match self.graph.groups_delta_page(credentials, &url).await {
                Err(GraphError::ResyncRequired { code, .. }) if !fresh_scan => {
                    tracing::warn!(%code, "groups delta state no longer valid: reading every group");
                    fresh_scan = true;
                    scan = GroupsScan::default();
                    url = start.clone();
                    continue;
                }
                other => other?,
            };
            scan.add_page(&page);
            match page.next {
                PageLink::Next(next) => url = next,
                PageLink::Delta(link) => break link,
            }
        };
        let mut known = filter_ids.clone();
        if let (false, Some(state)) = (fresh_scan, &stored) {
            known.extend(state.nested_group_ids.iter().cloned());
        }
        let scope_groups = groups::reachable(known, &scan.edges);
        let relisted = groups::needs_relisting(fresh_scan, &scope_groups, &scan);
        if relisted {
            *pages = self
                .publish_members(round, credentials, &filter_ids, *pages)
                .await?;
        }
        tracing::info!(
            relisted,
            scope_groups = scope_groups.len(),
            "filter group membership read"
        );
        let nested_group_ids = scope_groups
            .into_iter()
            .filter(|id| !filter_ids.contains(id))
            .collect();
        Ok(GroupsRound {
            delta_link,
            filter_group_ids: filter_ids,
            nested_group_ids,
            relisted,
        })
    }

    /// The ids of the groups named in `memberOf`, sorted; a name matching none fails the run.
    async fn resolve_filter_groups(
        &self,
        run_id: Uuid,
        tenant: &TenantConfig,
        credentials: &Credentials,
    ) -> Result<Vec<String>, RoundError> {
        let names = &tenant.provider_settings.user_filter.member_of;
        let groups = self.graph.filter_groups(credentials, names).await?;
        for warning in &groups.warnings {
            tracing::warn!(%warning);
            self.store.add_run_warning(run_id, warning).await?;
        }
        Ok(groups.ids)
    }

    /// Publishes the transitive members of the filter groups; returns the next page number.
    async fn publish_members(
        &self,
        round: &RoundPublisher<'_>,
        credentials: &Credentials,
        group_ids: &[String],
        mut pages: u32,
    ) -> Result<u32, RoundError> {
        for group_id in group_ids {
            let mut url = Some(self.graph.members_start_url(group_id));
            while let Some(current) = url {
                let page = self.graph.members_page(credentials, &current).await?;
                round
                    .send(PageBody::Members {
                        page: pages,
                        member_ids: page.user_ids,
                    })
                    .await?;
                pages += 1;
                url = page.next;
            }
        }
        Ok(pages)
    }

    async fn fail(&self, run_id: Uuid, code: &str, reason: &str) -> anyhow::Result<()> {
        if let Some(event) = self.store.fail_run(run_id, code, reason).await? {
            self.bus
                .send(Stage::Notifier, &event, &event.message_id())
                .await?;
        }
        Ok(())
    }
}

/// Publishes the pages of one round to the differ.
struct RoundPublisher<'a> {
    bus: &'a Bus,
    run_id: Uuid,
    round_id: Uuid,
    tenant_id: &'a str,
    lane: Lane,
}

impl RoundPublisher<'_> {
    async fn send(&self, body: PageBody) -> anyhow::Result<()> {
        let page = DirectoryPage {
            run_id: self.run_id,
            round_id: self.round_id,
            tenant_id: self.tenant_id.to_owned(),
            body,
        };
        self.bus
            .send_in(Stage::Differ, self.lane, &page, &page.message_id())
            .await
    }
}

/// The page messages one Graph page of users is sent as: at most
/// [`USERS_PER_MESSAGE`] users each, in Graph's order; an empty page is one
/// empty message. A page that lists a user twice goes whole, as the differ
/// folds a later entry over an earlier one only within a message.
fn page_messages(users: Vec<Value>) -> Vec<Vec<Value>> {
    if users.len() <= USERS_PER_MESSAGE || lists_a_user_twice(&users) {
        return vec![users];
    }
    let count = users.len().div_ceil(USERS_PER_MESSAGE);
    let mut users = users.into_iter();
    (0..count)
        .map(|_| users.by_ref().take(USERS_PER_MESSAGE).collect())
        .collect()
}

fn lists_a_user_twice(users: &[Value]) -> bool {
    let mut ids = HashSet::with_capacity(users.len());
    !users
        .iter()
        .filter_map(|user| user.get("id").and_then(Value::as_str))
        .all(|id| ids.insert(id))
}

/// The run id: the request's message id when it is a UUID (the CLI sends one),
/// derived from it otherwise, so a redelivered request resumes the same run.
fn run_id_for(message_id: Option<&str>) -> Uuid {
    match message_id {
        Some(id) => Uuid::parse_str(id).unwrap_or_else(|_| Uuid::new_v5(&Uuid::NAMESPACE_OID, id.as_bytes())),
        None => Uuid::new_v4(),
    }
}

/// Prefix of the message id of a queued follow-up's start request:
/// `follow-up:<run id>:<start request number>` (see `schedule.rs`).
pub const FOLLOW_UP_PREFIX: &str = "follow-up:";

pub fn follow_up_message_id(run_id: Uuid, number: i32) -> String {
    format!("{FOLLOW_UP_PREFIX}{run_id}:{number}")
}

/// The run and start request number of a follow-up's start request.
fn follow_up_start(message_id: Option<&str>) -> Option<(Uuid, i32)> {
    let (run_id, number) = message_id?.strip_prefix(FOLLOW_UP_PREFIX)?.split_once(':')?;
    Some((Uuid::parse_str(run_id).ok()?, number.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(ids: impl IntoIterator<Item = usize>) -> Vec<Value> {
        ids.into_iter()
            .map(|id| serde_json::json!({"id": format!("u{id}")}))
            .collect()
    }

    #[test]
    fn a_graph_page_goes_in_messages_of_at_most_the_limit_in_order() {
        let messages = page_messages(users(0..999));
        let sizes: Vec<usize> = messages.iter().map(Vec::len).collect();
        assert_eq!(sizes, [250, 250, 250, 249]);
        assert_eq!(messages.concat(), users(0..999));
        assert_eq!(page_messages(users(0..250)), [users(0..250)]);
        assert_eq!(page_messages(users(0..251)), [users(0..250), users(250..251)]);
    }

    #[test]
    fn an_empty_page_is_one_empty_message() {
        assert_eq!(page_messages(Vec::new()), [Vec::<Value>::new()]);
    }

    #[test]
    fn a_page_that_lists_a_user_twice_goes_whole() {
        let page = users((0..600).chain([3]));
        assert_eq!(page_messages(page.clone()), [page]);
    }

    #[test]
    fn a_follow_up_start_request_names_its_run_and_number() {
        let run = Uuid::new_v4();
        assert_eq!(
            follow_up_start(Some(&follow_up_message_id(run, 3))),
            Some((run, 3))
        );
        assert_eq!(follow_up_start(Some(&run.to_string())), None);
        assert_eq!(follow_up_start(Some("follow-up:not-a-uuid:1")), None);
        assert_eq!(follow_up_start(None), None);
    }

    #[test]
    fn run_ids_follow_the_message_id() {
        let uuid = Uuid::new_v4();
        assert_eq!(run_id_for(Some(&uuid.to_string())), uuid);
        assert_eq!(run_id_for(Some("abc")), run_id_for(Some("abc")));
        assert_ne!(run_id_for(Some("abc")), run_id_for(Some("abd")));
    }
}
