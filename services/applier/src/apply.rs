//! One change batch: each change under its user's row lock, checked against the
//! current desired version, written to the PBX, then recorded.

use anyhow::Context;
use futures::{stream, StreamExt};
use usersync_bus::{Bus, Failure, Handler, Incoming};
use usersync_contract::{topology::Stage, Change, ChangeBatch, Event};
use usersync_core::{Action, SyncedFields, TenantConfig};
use usersync_pbx::{NewUser, PbxClient, PbxError};
use usersync_store::{ChangeRecord, LockedUser, SecretKey, Store};
use uuid::Uuid;

/// PBX calls in flight at once for one batch (one tenant).
pub const CALLS_PER_BATCH: usize = 8;

pub struct PbxTarget {
    pub api_url: Option<String>,
    pub api_token: Option<String>,
}

pub struct Applier {
    pub store: Store,
    pub bus: Bus,
    pub http: reqwest::Client,
    pub default_pbx: PbxTarget,
    pub key: Option<SecretKey>,
}

/// How one change went, before it is recorded.
enum Written {
    Done(ChangeRecord, Option<Box<Event>>),
    /// Worth another try later (the PBX was busy or unreachable).
    Transient(PbxError),
}

impl Handler<ChangeBatch> for Applier {
    async fn handle(&self, incoming: Incoming<ChangeBatch>) -> Result<(), Failure> {
        let batch = &incoming.message;
        let tenant = self.tenant(&batch.tenant_id).await?;
        let pbx = match self.pbx_for(&tenant) {
            Ok(pbx) => pbx,
            Err(reason) => {
                // Nothing of this run can be written: end it, say why, and let the batch go.
                if let Some(event) = self
                    .store
                    .fail_run(batch.run_id, "pbx.not_configured", &reason)
                    .await?
                {
                    self.bus
                        .send(Stage::Notifier, &event, &event.message_id())
                        .await?;
                }
                return Ok(());
            }
        };
        let last_attempt = incoming.is_last_attempt();
        let writes: Vec<_> = batch
            .changes
            .iter()
            .map(|change| self.apply(batch.run_id, &tenant, &pbx, change, last_attempt))
            .collect();
        let results: Vec<Result<Option<PbxError>, anyhow::Error>> = stream::iter(writes)
            .buffer_unordered(CALLS_PER_BATCH)
            .collect()
            .await;
        let mut retry = None;
        for result in results {
            match result {
                Ok(None) => {}
                Ok(Some(transient)) => retry = Some(transient),
                Err(err) => return Err(err.into()),
            }
        }
        match retry {
            None => Ok(()),
            Some(err) => Err(Failure::Retry {
                after: err.retry_after(),
                reason: err.describe(),
            }),
        }
    }
}

impl Applier {
    async fn tenant(&self, tenant_id: &str) -> anyhow::Result<TenantConfig> {
        Ok(self
            .store
            .require_tenant(tenant_id, self.key.as_ref())
            .await?
            .config)
    }

    /// The tenant's own PBX, else the one from the environment.
    fn pbx_for(&self, tenant: &TenantConfig) -> Result<PbxClient, String> {
        let (url, token) = match &tenant.pbx {
            Some(pbx) => (Some(pbx.api_url.clone()), Some(pbx.api_token.clone())),
            None => (
                self.default_pbx.api_url.clone(),
                self.default_pbx.api_token.clone(),
            ),
        };
        let url =
            url.ok_or("no PBX API URL: set PBX_API_URL for the applier, or the tenant's pbx.api_url")?;
        let token = token
            .ok_or("no PBX API token: set PBX_API_TOKEN for the applier, or the tenant's pbx.api_token")?;
        Ok(PbxClient::with_http(self.http.clone(), &url, &token))
    }

    /// Applies one change in its own transaction. Returns the transient error
    /// when the change should be tried again.
    async fn apply(
        &self,
        run_id: Uuid,
        tenant: &TenantConfig,
        pbx: &PbxClient,
        change: &Change,
        last_attempt: bool,
    ) -> anyhow::Result<Option<PbxError>> {
        let mut client = self.store.client().await?;
        let tx = client.transaction().await.context("starting a transaction")?;
        let Some(locked) = Store::lock_user(&tx, run_id, &tenant.id, &change.object_id).await? else {
            return Ok(None);
        };
        if locked.outcome != "pending" {
            return Ok(None);
        }
        // Another run planned the same change and it is done, or the user has
        // moved on since: either way this change has nothing left to write.
        let stale = locked.sync.desired_version != change.desired_version
            || locked.sync.applied_version >= change.desired_version;
        let written = if stale {
            Written::Done(ChangeRecord::Superseded, None)
        } else {
            self.write(run_id, tenant, pbx, change, &locked).await
        };
        let (record, event) = match written {
            Written::Done(record, event) => (record, event),
            Written::Transient(err) if !last_attempt => return Ok(Some(err)),
            Written::Transient(err) => (
                ChangeRecord::Failed {
                    reason: err.describe(),
                },
                None,
            ),
        };
        if let ChangeRecord::Failed { reason } = &record {
            tracing::warn!(tenant_id = %tenant.id, object_id = %change.object_id, %reason, "change failed");
        }
        let finished = Store::record_change(
            &tx,
            run_id,
            &tenant.id,
            &change.object_id,
            change.desired_version,
            &record,
        )
        .await?;
        // Events go out before the commit: if the commit fails the change is
        // redone, and the events' deterministic ids keep the mails single.
        for event in event.as_deref().into_iter().chain(finished.iter()) {
            self.bus.send(Stage::Notifier, event, &event.message_id()).await?;
        }
        tx.commit().await.context("recording the change")?;
        Ok(None)
    }

    async fn write(
        &self,
        run_id: Uuid,
        tenant: &TenantConfig,
        pbx: &PbxClient,
        change: &Change,
        locked: &LockedUser,
    ) -> Written {
        let company = &tenant.pbx_company_id;
        let result = match &change.action {
            Action::None => return Written::Done(ChangeRecord::Superseded, None),
            Action::Create { fields } => {
                let user = new_user(tenant, &change.object_id, fields);
                let key = format!(
                    "usersync:{}:{}:{}",
                    tenant.id, change.object_id, change.desired_version
                );
                pbx.create_user(company, &user, &key).await.map(|created| {
                    let event = welcome_event(tenant, run_id, change, &created.id, fields, locked);
                    (
                        ChangeRecord::Created {
                            pbx_id: created.id,
                            fields: fields.clone(),
                        },
                        Some(Box::new(event)),
                    )
                })
            }
            Action::Update { pbx_id, patch } => {
                let body = serde_json::to_value(patch).unwrap_or_default();
                let fields = locked.sync.desired.clone().unwrap_or_default();
                pbx.update_user(company, pbx_id, &body, None)
                    .await
                    .map(|_| (ChangeRecord::Updated { fields }, None))
            }
            Action::Delete { pbx_id } => pbx
                .delete_user(company, pbx_id)
                .await
                .map(|_| (ChangeRecord::Deleted, None)),
        };
        match result {
            Ok((record, event)) => Written::Done(record, event),
            Err(err) if err.is_transient() => Written::Transient(err),
            Err(err) => Written::Done(
                ChangeRecord::Failed {
                    reason: err.describe(),
                },
                None,
            ),
        }
    }
}

fn new_user(tenant: &TenantConfig, object_id: &str, fields: &SyncedFields) -> NewUser {
    NewUser {
        alias: fields.alias.clone(),
        first_name: fields.first_name.clone(),
        surname: fields.surname.clone(),
        pstn_fixed: fields.pstn_fixed.clone(),
        email: fields.email.clone(),
        caller_id: tenant.default_caller_id.clone(),
        template: tenant.default_template.clone(),
        external_id: Some(object_id.to_owned()),
        attributes: fields.attributes.clone(),
    }
}

fn welcome_event(
    tenant: &TenantConfig,
    run_id: Uuid,
    change: &Change,
    pbx_id: &str,
    fields: &SyncedFields,
    locked: &LockedUser,
) -> Event {
    Event::UserCreated {
        tenant_id: tenant.id.clone(),
        run_id,
        object_id: change.object_id.clone(),
        pbx_id: pbx_id.to_owned(),
        alias: fields.alias.clone(),
        first_name: fields.first_name.clone(),
        surname: fields.surname.clone(),
        pstn_fixed: fields.pstn_fixed.clone(),
        email: fields.email.clone().or_else(|| locked.mail.clone()),
        language: locked.language.clone(),
    }
}
