//! Before a run's first create: the tenant's template and caller id must exist
//! in its PBX company, and the company's users without an owner are listed so
//! that creates can adopt them. Done once per run (recorded in the database),
//! remembered per replica.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;
use serde_json::Value;
use usersync_core::{AdoptMatch, TenantConfig};
use usersync_pbx::{PbxClient, PbxError, PbxErrorKind, PbxUser};
use usersync_store::{PbxCheck, Store};
use uuid::Uuid;

use crate::limits::Gate;

/// Users per page when listing a company.
const LIST_PAGE: u32 = 1000;
/// Runs remembered per replica before the memory is cleared.
const REMEMBERED_RUNS: usize = 1024;

/// Why the check did not pass.
pub enum CheckFailure {
    /// The run cannot write for this tenant: fail it with this code and reason.
    Run { code: &'static str, reason: String },
    /// The PBX was busy or unreachable: try again later.
    Transient(PbxError),
}

#[derive(Default)]
pub struct Prechecks {
    passed: Mutex<HashMap<Uuid, PbxCheck>>,
}

impl Prechecks {
    /// The run's check, made now if it was not. Its calls go through the
    /// tenant's gate and wait out the 429s they meet until `until`.
    pub async fn ensure(
        &self,
        store: &Store,
        run_id: Uuid,
        tenant: &TenantConfig,
        pbx: &PbxClient,
        gate: &Gate,
        until: Instant,
    ) -> anyhow::Result<Result<PbxCheck, CheckFailure>> {
        if let Some(check) = self.passed.lock().get(&run_id) {
            return Ok(Ok(check.clone()));
        }
        let check = match store.pbx_check(run_id).await? {
            Some(check) => check,
            None => match check_pbx(store, run_id, tenant, &Calls { pbx, gate, until }).await? {
                Ok(check) => {
                    store.save_pbx_check(run_id, &check).await?;
                    tracing::info!(tenant_id = %tenant.id, %run_id, template_id = ?check.template_id, "PBX checked before the first create");
                    check
                }
                Err(failure) => return Ok(Err(failure)),
            },
        };
        let mut passed = self.passed.lock();
        if passed.len() >= REMEMBERED_RUNS {
            passed.clear();
        }
        passed.insert(run_id, check.clone());
        Ok(Ok(check))
    }
}

/// The PBX as the check calls it: through the tenant's gate, until a deadline.
struct Calls<'a> {
    pbx: &'a PbxClient,
    gate: &'a Gate,
    until: Instant,
}

async fn check_pbx(
    store: &Store,
    run_id: Uuid,
    tenant: &TenantConfig,
    calls: &Calls<'_>,
) -> anyhow::Result<Result<PbxCheck, CheckFailure>> {
    let Calls { pbx, gate, until } = *calls;
    let company = &tenant.pbx_company_id;
    let template_id = match &tenant.default_template {
        None => None,
        Some(wanted) => {
            let templates = match gate.call(until, || pbx.list_templates(company)).await {
                Ok(templates) => templates,
                Err(err) => return Ok(Err(failure(tenant, err))),
            };
            // By id first; a name is mapped to its id for the create.
            let found = templates
                .iter()
                .find(|t| &t.id == wanted)
                .or_else(|| templates.iter().find(|t| &t.name == wanted))
                .or_else(|| templates.iter().find(|t| t.name.eq_ignore_ascii_case(wanted)));
            match found {
                Some(template) => Some(template.id.clone()),
                None => {
                    let known: Vec<String> = templates
                        .iter()
                        .map(|t| format!("{} ({})", t.id, t.name))
                        .collect();
                    return Ok(Err(CheckFailure::Run {
                        code: "pbx.bad_template",
                        reason: format!(
                            "default_template \"{wanted}\" is not a template of PBX company {company} (it has: {}); set default_template in the tenant file to one of their ids or names",
                            list_or_none(&known)
                        ),
                    }));
                }
            }
        }
    };
    if let Some(caller_id) = &tenant.default_caller_id {
        let numbers = match gate.call(until, || pbx.list_numbers(company)).await {
            Ok(numbers) => numbers,
            Err(err) => return Ok(Err(failure(tenant, err))),
        };
        if !numbers.iter().any(|n| &n.number == caller_id) {
            let known: Vec<String> = numbers.iter().map(|n| n.number.clone()).collect();
            return Ok(Err(CheckFailure::Run {
                code: "pbx.bad_caller_id",
                reason: format!(
                    "default_caller_id \"{caller_id}\" is not one of PBX company {company}'s numbers (it has: {}); set default_caller_id in the tenant file to one of them",
                    list_or_none(&known)
                ),
            }));
        }
    }
    if let Err(err) = list_unowned(store, run_id, tenant, calls).await? {
        return Ok(Err(failure(tenant, err)));
    }
    Ok(Ok(PbxCheck { template_id }))
}

/// Stores the company's users without an owner, page by page, by match value.
async fn list_unowned(
    store: &Store,
    run_id: Uuid,
    tenant: &TenantConfig,
    calls: &Calls<'_>,
) -> anyhow::Result<Result<(), PbxError>> {
    let mut cursor: Option<String> = None;
    loop {
        let page = calls.gate.call(calls.until, || {
            calls
                .pbx
                .list_users_page(&tenant.pbx_company_id, LIST_PAGE, cursor.as_deref())
        });
        let page = match page.await {
            Ok(page) => page,
            Err(err) => return Ok(Err(err)),
        };
        let unowned: Vec<(String, Value)> = page
            .items
            .iter()
            .filter(|user| user.external_id.is_none())
            .filter_map(|user| {
                let value = pbx_match_value(tenant.adopt_match, user)?;
                Some((value, serde_json::to_value(user).ok()?))
            })
            .collect();
        store.save_unowned(run_id, &unowned).await?;
        match page.next_cursor {
            Some(next) if cursor.as_deref() != Some(next.as_str()) => cursor = Some(next),
            _ => return Ok(Ok(())),
        }
    }
}

/// The value a PBX user is matched by, normalised like the directory side.
pub fn pbx_match_value(by: AdoptMatch, user: &PbxUser) -> Option<String> {
    let value = match by {
        AdoptMatch::Alias => Some(user.alias.to_lowercase()),
        AdoptMatch::Email => user.email.as_deref().map(str::to_lowercase),
        AdoptMatch::PstnFixed => Some(user.pstn_fixed.clone()),
    };
    value.filter(|v| !v.is_empty())
}

fn failure(tenant: &TenantConfig, err: PbxError) -> CheckFailure {
    let company = &tenant.pbx_company_id;
    match err.kind {
        _ if err.is_transient() => CheckFailure::Transient(err),
        PbxErrorKind::Unauthorized => CheckFailure::Run {
            code: "pbx.unauthorized",
            reason: unauthorized_reason(tenant, &err),
        },
        PbxErrorKind::NotFound => CheckFailure::Run {
            code: "pbx.unknown_company",
            reason: format!(
                "the PBX has no company \"{company}\" ({}); check pbx_company_id in the tenant file",
                err.describe()
            ),
        },
        _ => CheckFailure::Run {
            code: "pbx.check_failed",
            reason: format!(
                "checking PBX company {company} before the first create failed: {}",
                err.describe()
            ),
        },
    }
}

/// What to tell the operator when the PBX refuses the token.
pub fn unauthorized_reason(tenant: &TenantConfig, err: &PbxError) -> String {
    let where_token = if tenant.pbx.is_some() {
        "the tenant file's pbx.api_token"
    } else {
        "PBX_API_TOKEN of the applier (or give the tenant its own pbx.api_token)"
    };
    format!(
        "the PBX refused the API token for company {} ({}); set a valid token in {where_token}",
        tenant.pbx_company_id,
        err.describe()
    )
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}
