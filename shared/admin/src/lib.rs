//! What the operator's CLI and the HTTP API both do, written once. Each
//! function returns data (serialisable as the CLI's `--json` and the API's
//! bodies); printing, status codes and arguments are the callers'.

pub mod approve;
pub mod pbx;
pub mod plan;
pub mod resync;
pub mod status;
pub mod tenants;
pub mod tokens;

use usersync_core::Problem;

/// Why an admin call was refused, in kinds a caller can map to exit codes
/// or HTTP statuses. Each message says what to do.
#[derive(Debug)]
pub enum AdminError {
    /// No such tenant, user or run.
    NotFound(String),
    /// The input names more than one thing, or the state does not allow it.
    Conflict(String),
    /// The tenant file has problems; nothing was saved.
    Invalid(Vec<Problem>),
    /// The write was made from a version that is no longer current.
    Stale(String),
    /// A server the call needs (the PBX) did not answer usably.
    Upstream(String),
    Other(anyhow::Error),
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminError::NotFound(text)
            | AdminError::Conflict(text)
            | AdminError::Stale(text)
            | AdminError::Upstream(text) => f.write_str(text),
            AdminError::Invalid(problems) => {
                let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "{}\n{} problem(s); nothing was saved",
                    lines.join("\n"),
                    problems.len()
                )
            }
            AdminError::Other(err) => write!(f, "{err:#}"),
        }
    }
}

impl std::error::Error for AdminError {}

impl From<anyhow::Error> for AdminError {
    fn from(err: anyhow::Error) -> Self {
        AdminError::Other(err)
    }
}

pub type AdminResult<T> = Result<T, AdminError>;

/// The message for a tenant that is not there.
pub fn no_tenant(id: &str) -> AdminError {
    AdminError::NotFound(format!(
        "no tenant {id:?}: create it with `usersync tenant apply FILE` or PUT /v1/tenants/{id}"
    ))
}

/// Loads a tenant (secrets masked) or says it is missing.
pub async fn require_tenant(
    store: &usersync_store::Store,
    id: &str,
) -> AdminResult<usersync_store::StoredTenant> {
    store.tenant(id, None).await?.ok_or_else(|| no_tenant(id))
}
