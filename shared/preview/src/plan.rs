//! Planning the directory as read now against the stored applied state, with
//! the planner's two passes (survey, then each user) — the same functions the
//! differ runs, so the same decisions and reasons.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use usersync_core::TenantConfig;
use usersync_planner::{plan_line, PlanLine, Planner, SurveyPass, PLAN_PAGE};
use usersync_store::{ClaimSession, ReconcileRow, Round, Store};

use crate::{LiveDirectory, Progress};

/// Where the plan's lines go, a page at a time (in memory for the CLI, to
/// the previews table for the API).
pub trait LinePage {
    fn page(&mut self, lines: Vec<PlanLine>) -> impl std::future::Future<Output = anyhow::Result<()>> + Send;
}

impl LinePage for Vec<PlanLine> {
    async fn page(&mut self, lines: Vec<PlanLine>) -> anyhow::Result<()> {
        self.extend(lines);
        Ok(())
    }
}

/// What the whole plan comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivePlan {
    pub as_of: DateTime<Utc>,
    /// Users per decision (create, update, delete, skip, held, pending_deletion, none).
    pub summary: BTreeMap<&'static str, u64>,
    /// Run-level warnings: duplicate group names, conflicts, a deletion hold.
    pub warnings: Vec<String>,
}

impl LivePlan {
    pub fn summary_json(&self) -> Value {
        json!(self.summary)
    }
}

/// Decides every user of `live` and of the stored state with `tenant`'s
/// settings (saved or not) as of `now`; writes nothing but the planner's
/// session-local claims table.
pub async fn plan_live(
    store: &Store,
    tenant: &TenantConfig,
    live: &LiveDirectory,
    now: DateTime<Utc>,
    progress: &(dyn Fn(Progress) + Send + Sync),
    sink: &mut impl LinePage,
) -> anyhow::Result<LivePlan> {
    let planner = Planner {
        store,
        tenant,
        // No round: membership comes from the live read below.
        round: Round {
            run_id: uuid::Uuid::nil(),
            round_id: uuid::Uuid::nil(),
        },
        scoped: live.members.is_some(),
        now,
    };
    let mut pass = SurveyPass::start(&planner).await?;
    let mut rows = LiveRows::new(&tenant.id, live);
    while let Some(page) = rows.next_page(Reader::Session(&mut pass.claims)).await? {
        pass.add(&page).await?;
    }
    let survey = pass.finish().await?;
    let approved = store.has_open_deletion_approval(&tenant.id).await?;
    let hold = survey.hold_reason(tenant, approved);

    let total = rows.count;
    let mut summary: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut planned = 0;
    let mut rows = LiveRows::new(&tenant.id, live);
    while let Some(page) = rows.next_page(Reader::Store(store)).await? {
        let lines: Vec<PlanLine> = page
            .iter()
            .map(|row| plan_line(row, &planner.plan_one(&survey, hold.as_deref(), row), now))
            .collect();
        for line in &lines {
            *summary.entry(line.decision).or_default() += 1;
        }
        planned += lines.len() as u64;
        sink.page(lines).await?;
        progress(Progress::Planned(planned, total));
    }
    let mut warnings = live.warnings.clone();
    warnings.extend(survey.warnings(hold.as_deref()));
    Ok(LivePlan {
        as_of: now,
        summary,
        warnings,
    })
}

/// Where stored sync rows are read: during the survey on the claims
/// session's own connection (a survey holding one connection never waits for
/// a second, so concurrent previews cannot starve a small pool), else the pool.
enum Reader<'a> {
    Store(&'a Store),
    Session(&'a mut ClaimSession),
}

/// The planner's rows from the live directory: first every user read now
/// (with its stored sync state), then every stored user the directory no
/// longer has (gone from Entra: removed). Pages of [`PLAN_PAGE`]; the order
/// never depends on the database's collation.
struct LiveRows<'a> {
    tenant_id: &'a str,
    live: &'a LiveDirectory,
    users: std::collections::btree_map::Iter<'a, String, Value>,
    /// Where the pass over stored users goes on from; `None` while live users remain.
    stored_after: Option<String>,
    done: bool,
    /// Rows given so far.
    count: u64,
}

impl<'a> LiveRows<'a> {
    fn new(tenant_id: &'a str, live: &'a LiveDirectory) -> Self {
        LiveRows {
            tenant_id,
            live,
            users: live.users.iter(),
            stored_after: None,
            done: false,
            count: 0,
        }
    }

    async fn next_page(&mut self, mut reader: Reader<'_>) -> anyhow::Result<Option<Vec<ReconcileRow>>> {
        while !self.done {
            let page = match &self.stored_after {
                None => self.live_page(&mut reader).await?,
                Some(after) => self.gone_page(&mut reader, after.clone()).await?,
            };
            if let Some(page) = page.filter(|p| !p.is_empty()) {
                self.count += page.len() as u64;
                return Ok(Some(page));
            }
        }
        Ok(None)
    }

    /// The next live users; an empty page when a stored user's page had none gone.
    async fn live_page(&mut self, reader: &mut Reader<'_>) -> anyhow::Result<Option<Vec<ReconcileRow>>> {
        let users: Vec<(&String, &Value)> = self.users.by_ref().take(PLAN_PAGE as usize).collect();
        if users.is_empty() {
            self.stored_after = Some(String::new());
            return Ok(None);
        }
        let ids: Vec<String> = users.iter().map(|(id, _)| (*id).clone()).collect();
        let mut stored = match reader {
            Reader::Store(store) => store.sync_rows_of(self.tenant_id, &ids).await?,
            Reader::Session(session) => session.sync_rows_of(self.tenant_id, &ids).await?,
        };
        let members = self.live.members.as_ref();
        Ok(Some(
            users
                .into_iter()
                .map(|(id, source)| ReconcileRow {
                    object_id: id.clone(),
                    source: source.clone(),
                    removed: false,
                    member: members.is_none_or(|m| m.contains(id)),
                    sync: stored.remove(id),
                })
                .collect(),
        ))
    }

    /// The next stored users the directory no longer has.
    async fn gone_page(
        &mut self,
        reader: &mut Reader<'_>,
        after: String,
    ) -> anyhow::Result<Option<Vec<ReconcileRow>>> {
        let stored = match reader {
            Reader::Store(store) => store.sync_rows_page(self.tenant_id, &after, PLAN_PAGE).await?,
            Reader::Session(session) => session.sync_rows_page(self.tenant_id, &after, PLAN_PAGE).await?,
        };
        let Some((last, _)) = stored.last() else {
            self.done = true;
            return Ok(None);
        };
        self.stored_after = Some(last.clone());
        Ok(Some(
            stored
                .into_iter()
                .filter(|(id, _)| !self.live.users.contains_key(id))
                .map(|(object_id, sync)| ReconcileRow {
                    object_id,
                    source: Value::Object(Default::default()),
                    removed: true,
                    member: false,
                    sync: Some(sync),
                })
                .collect(),
        ))
    }
}
