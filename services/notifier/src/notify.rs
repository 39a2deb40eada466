//! Events to mails: the welcome mail and its copy, the run digest at the
//! tenant's level, "resolved" mails for standing errors and client-secret
//! expiry warnings. Each mail has a deterministic id and goes through the
//! outbox in PostgreSQL: claimed (a lock held by this process's database
//! session) before the SMTP transaction, marked `transmitting` before its
//! data goes out and `sent` after the server's 250 (see docs/mail.md).

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use futures::future::join_all;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use usersync_bus::{Failure, Handler, Incoming};
use usersync_contract::{Event, RunCounts, UserProblem};
use usersync_core::{NotificationLevel, TenantConfig};
use usersync_mail::{Language, MailError, MailKind, Mailer, OutgoingMail, Templates};
use usersync_runtime::clock;
use usersync_store::{Claim, MailClaim, MailProblem, NewMail, Store};
use uuid::Uuid;

use crate::plan;

/// When a live attempt holds a mail (or this one lost its claim), the event is
/// tried again this soon: that attempt settles the mail within a few SMTP
/// commands.
const IN_FLIGHT_RETRY: Duration = Duration::from_secs(5);

pub struct Notifier {
    pub store: Store,
    pub mailer: Mailer,
    pub templates: Templates,
    pub default_language: Language,
    /// Mails of batches claimed and not yet settled, at most: a chunk of a
    /// batch claims only as the SMTP pool can soon serve it, so the batches
    /// in hand hold few locks and `sending` rows at a time.
    pub batch_claims: Semaphore,
}

/// One mail, before rendering.
struct Planned<'a> {
    id: String,
    kind: MailKind,
    to: &'a str,
    language: Language,
    run_id: Uuid,
    context: Value,
    /// What a digest names the mail by, should it not arrive.
    detail: Value,
}

impl Planned<'_> {
    fn record<'b>(&'b self, tenant_id: &'b str) -> NewMail<'b> {
        NewMail {
            id: &self.id,
            tenant_id,
            kind: self.kind.name(),
            recipient: self.to,
            run_id: Some(self.run_id),
            detail: self.detail.clone(),
        }
    }
}

impl Handler<Event> for Notifier {
    async fn handle(&self, incoming: Incoming<Event>) -> Result<(), Failure> {
        let event = &incoming.message;
        let Some(tenant) = self.store.tenant(event.tenant_id(), None).await? else {
            tracing::warn!(
                tenant_id = event.tenant_id(),
                "event for a tenant that no longer exists"
            );
            return Ok(());
        };
        self.handle_event(&tenant.config, event).await
    }
}

impl Notifier {
    async fn handle_event(&self, tenant: &TenantConfig, event: &Event) -> Result<(), Failure> {
        match event {
            Event::Batch { events, .. } => self.handle_batch(tenant, events).await,
            Event::UserCreated { .. } => {
                let Some(user) = self.welcome_user(tenant, event) else {
                    return Ok(());
                };
                // One after the other: an event in hand holds one send.
                for mail in self.welcome_mails(tenant, &user).await? {
                    let claim = self
                        .store
                        .claim_mail(&mail.record(&tenant.id), clock::now())
                        .await?;
                    self.deliver(tenant, &mail, claim).await?;
                }
                Ok(())
            }
            Event::RunFinished {
                run_id,
                outcome,
                counts,
                error,
                error_code,
                warnings,
                problems,
                ..
            } => {
                let run = FinishedRun {
                    run_id: *run_id,
                    outcome,
                    counts,
                    error: error.as_deref(),
                    error_code: error_code.as_deref(),
                    warnings,
                    problems,
                };
                self.run_finished(tenant, &run).await
            }
            // Per-user updates, deletions and failures reach the operator in the run's digest.
            Event::UserChanged { .. } => Ok(()),
        }
    }

    /// Every event of a batch is handled, whatever becomes of the others: a
    /// mail refused for good must not keep its neighbours from going out. A
    /// retry brings the whole batch back; what was sent is not sent again.
    /// The welcome mails go out together first (see [`Notifier::send_together`]),
    /// then the other events are handled in order.
    async fn handle_batch(&self, tenant: &TenantConfig, events: &[Event]) -> Result<(), Failure> {
        let mut outcomes = Outcomes::default();
        let mut mails = Vec::new();
        for user in events.iter().filter_map(|event| self.welcome_user(tenant, event)) {
            match self.welcome_mails(tenant, &user).await {
                Ok(planned) => mails.extend(planned),
                Err(failure) => outcomes.add(Err(failure)),
            }
        }
        self.send_together(tenant, &mails, &mut outcomes).await;
        for event in events {
            if !matches!(event, Event::UserCreated { .. }) {
                outcomes.add(Box::pin(self.handle_event(tenant, event)).await);
            }
        }
        outcomes.into_result()
    }

    /// Sends `mails` as many at once as the SMTP pool has connections: each
    /// chunk is claimed in one go (two statements), then its sends run
    /// concurrently, each with its own outcome.
    async fn send_together(&self, tenant: &TenantConfig, mails: &[Planned<'_>], outcomes: &mut Outcomes) {
        for chunk in mails.chunks(self.mailer.connections()) {
            let permits = u32::try_from(chunk.len()).expect("a chunk is as large as the SMTP pool");
            let _claims = self
                .batch_claims
                .acquire_many(permits)
                .await
                .expect("the notifier never closes its semaphore");
            let records: Vec<NewMail<'_>> = chunk.iter().map(|mail| mail.record(&tenant.id)).collect();
            let claims = match self.store.claim_mails(&records, clock::now()).await {
                Ok(claims) => claims,
                Err(err) => return outcomes.add(Err(err.into())),
            };
            let sends = chunk
                .iter()
                .zip(claims)
                .map(|(mail, claim)| self.deliver(tenant, mail, claim));
            for outcome in join_all(sends).await {
                outcomes.add(outcome);
            }
        }
    }
}

/// What became of a batch's events and mails: any failure to retry brings
/// the whole batch back (the first one says why); refusals are reported together.
#[derive(Default)]
struct Outcomes {
    retry: Option<Failure>,
    refused: Vec<String>,
}

impl Outcomes {
    fn add(&mut self, outcome: Result<(), Failure>) {
        match outcome {
            Ok(()) => {}
            Err(Failure::Reject { reason }) => self.refused.push(reason),
            Err(failure) => {
                self.retry.get_or_insert(failure);
            }
        }
    }

    fn into_result(self) -> Result<(), Failure> {
        if let Some(failure) = self.retry {
            return Err(failure);
        }
        if self.refused.is_empty() {
            Ok(())
        } else {
            Err(Failure::reject(self.refused.join("; ")))
        }
    }
}

struct WelcomeUser<'a> {
    run_id: Uuid,
    pbx_id: &'a str,
    alias: &'a str,
    email: Option<&'a str>,
    language: Language,
    context: Value,
}

struct FinishedRun<'a> {
    run_id: Uuid,
    outcome: &'a str,
    counts: &'a RunCounts,
    error: Option<&'a str>,
    error_code: Option<&'a str>,
    warnings: &'a [String],
    problems: &'a [UserProblem],
}

impl Notifier {
    /// The user a created-user event welcomes, if the tenant sends welcome mails.
    fn welcome_user<'a>(&self, tenant: &TenantConfig, event: &'a Event) -> Option<WelcomeUser<'a>> {
        let Event::UserCreated {
            run_id,
            pbx_id,
            alias,
            first_name,
            surname,
            pstn_fixed,
            email,
            language,
            ..
        } = event
        else {
            return None;
        };
        tenant.welcome_mail.then(|| WelcomeUser {
            run_id: *run_id,
            pbx_id,
            context: json!({
                "first_name": first_name, "surname": surname, "alias": alias,
                "pstn_fixed": pstn_fixed, "email": email, "company_name": tenant.name,
            }),
            alias,
            email: email.as_deref(),
            language: Language::from_preferred(language.as_deref(), self.default_language),
        })
    }

    /// The welcome mail to the user and its copy to the admin address, to be
    /// sent; a user without an address is recorded (and reported) here.
    async fn welcome_mails<'a>(
        &self,
        tenant: &'a TenantConfig,
        user: &WelcomeUser<'a>,
    ) -> Result<Vec<Planned<'a>>, Failure> {
        let detail = json!({"user": user.alias});
        let id = plan::welcome_id(&tenant.id, user.pbx_id);
        let mut mails = Vec::with_capacity(2);
        match user.email {
            Some(to) => mails.push(Planned {
                id,
                kind: MailKind::Welcome,
                to,
                language: user.language,
                run_id: user.run_id,
                context: user.context.clone(),
                detail: detail.clone(),
            }),
            None => {
                let record = NewMail {
                    id: &id,
                    tenant_id: &tenant.id,
                    kind: MailKind::Welcome.name(),
                    recipient: "",
                    run_id: Some(user.run_id),
                    detail: detail.clone(),
                };
                if self.store.record_mail_without_address(&record).await? {
                    tracing::warn!(tenant_id = %tenant.id, alias = user.alias, "created user has no mail address: no welcome mail; reported in the next digest");
                    count(MailKind::Welcome, "no_address");
                }
            }
        }
        if let Some(to) = &tenant.welcome_mail_copy_to {
            mails.push(Planned {
                id: plan::welcome_copy_id(&tenant.id, user.pbx_id),
                kind: MailKind::WelcomeCopy,
                to,
                language: self.default_language,
                run_id: user.run_id,
                context: user.context.clone(),
                detail,
            });
        }
        Ok(mails)
    }

    /// The digest of a run at the tenant's level, "resolved" mails for the
    /// standing errors the run ends, and a due client-secret expiry warning.
    async fn run_finished(&self, tenant: &TenantConfig, run: &FinishedRun<'_>) -> Result<(), Failure> {
        let now = clock::now();
        let today = tenant_day(tenant, now);
        let failed = run.outcome == "failed";
        let standing = match (failed, run.error_code) {
            (true, Some(code)) => Some(
                self.store
                    .open_standing_error(&tenant.id, code, run.run_id, run.error, now)
                    .await?,
            ),
            _ => None,
        };
        let resolved = if failed {
            Vec::new()
        } else {
            self.store.resolve_standing_errors(&tenant.id, run.run_id).await?
        };
        let Some(to) = tenant.error_notification_email.as_deref() else {
            return Ok(());
        };
        let level = tenant.error_notification_level;
        let reports_mail_problems = level >= NotificationLevel::Warning;
        let mail_problems =
            reports_mail_problems && !self.store.unreported_mail_problems(&tenant.id).await?.is_empty();
        let summary = plan::RunSummary {
            failed,
            counts: run.counts,
            warnings: run.warnings,
            mail_problems,
        };
        if plan::digest_wanted(level, &summary) {
            let episode = standing.as_ref().map(|s| (s.error_code.as_str(), s.opened_run));
            let proposed = plan::digest_id(&tenant.id, run.run_id, episode, today);
            let id = self.store.digest_mail_id(run.run_id, &proposed).await?;
            let standing_since = standing
                .as_ref()
                .filter(|s| s.opened_run != run.run_id)
                .map(|s| s.opened_at.format("%Y-%m-%d %H:%M UTC").to_string());
            let mut mail = Planned {
                id,
                kind: MailKind::RunReport,
                to,
                language: self.default_language,
                run_id: run.run_id,
                context: json!({
                    "tenant_id": tenant.id, "company_name": tenant.name, "run_id": run.run_id,
                    "outcome": run.outcome, "level": level.as_str(), "counts": run.counts,
                    "error": run.error, "error_code": run.error_code, "standing_since": standing_since,
                    "warnings": if level >= NotificationLevel::Warning { run.warnings } else { &[] },
                    "problems": run.problems.iter().map(|p| json!({
                        "user": p.user, "field": p.problem.field, "message": p.problem.message,
                    })).collect::<Vec<_>>(),
                    "mail_problems": [], "mails_in_flight": [],
                }),
                detail: json!({}),
            };
            let record = mail.record(&tenant.id);
            let (claim, taken) = if reports_mail_problems {
                self.store.claim_digest(&record, now).await?
            } else {
                (self.store.claim_mail(&record, now).await?, Vec::new())
            };
            // Mails of the run still on their way are named, not counted as problems.
            let (in_flight, problems): (Vec<_>, Vec<_>) = taken.iter().partition(|p| p.is_unsettled());
            mail.context["mail_problems"] = problems.into_iter().map(mail_problem).collect();
            mail.context["mails_in_flight"] = in_flight.into_iter().map(mail_problem).collect();
            self.deliver(tenant, &mail, claim).await?;
        }
        for error in &resolved {
            let mail = Planned {
                id: plan::resolved_id(&tenant.id, &error.error_code, error.opened_run),
                kind: MailKind::Resolved,
                to,
                language: self.default_language,
                run_id: run.run_id,
                context: json!({
                    "tenant_id": tenant.id, "company_name": tenant.name,
                    "error_code": error.error_code, "error": error.last_error,
                    "since": error.opened_at.format("%Y-%m-%d %H:%M UTC").to_string(),
                }),
                detail: json!({}),
            };
            let claim = self.store.claim_mail(&mail.record(&tenant.id), now).await?;
            self.deliver(tenant, &mail, claim).await?;
        }
        if let Some(expires_on) = tenant.client_secret_expires_at {
            if let Some(threshold) = plan::expiry_warning(expires_on, today) {
                let mail = Planned {
                    id: plan::expiry_id(&tenant.id, expires_on, threshold),
                    kind: MailKind::SecretExpiry,
                    to,
                    language: self.default_language,
                    run_id: run.run_id,
                    context: json!({
                        "tenant_id": tenant.id, "company_name": tenant.name,
                        "expires_on": expires_on.to_string(),
                        "days_left": (expires_on - today).num_days(),
                    }),
                    detail: json!({}),
                };
                let claim = self.store.claim_mail(&mail.record(&tenant.id), now).await?;
                self.deliver(tenant, &mail, claim).await?;
            }
        }
        Ok(())
    }

    /// Sends a claimed mail and records how it went. Temporary failures go
    /// back to the bus's retry tiers; permanent ones are recorded, reported in
    /// the tenant's next digest (welcome mails) and logged, never retried.
    async fn deliver(&self, tenant: &TenantConfig, mail: &Planned<'_>, claim: Claim) -> Result<(), Failure> {
        let mut claim = match claim {
            Claim::Send(claim) => claim,
            Claim::Settled { state } => {
                tracing::debug!(mail = %mail.id, %state, "mail already settled");
                count(mail.kind, "duplicate");
                return Ok(());
            }
            Claim::InFlight => {
                count(mail.kind, "in_flight");
                return Err(Failure::Retry {
                    reason: format!("mail {} is being sent by another attempt", mail.id),
                    after: Some(IN_FLIGHT_RETRY),
                });
            }
            Claim::Abandoned => {
                tracing::error!(tenant_id = %tenant.id, mail = %mail.id, to = mail.to,
                    "an attempt died while the mail's data went to the server; it may have arrived, so it is not sent again");
                count(mail.kind, "uncertain");
                return Ok(());
            }
        };
        let rendered = match self.templates.render(mail.kind, mail.language, &mail.context) {
            Ok(rendered) => rendered,
            Err(err) => {
                // Unsent: a DLQ replay after the template is fixed sends it.
                claim.release(&err.to_string()).await?;
                count(mail.kind, "failed");
                return Err(Failure::reject(format!("mail {}: {err}", mail.id)));
            }
        };
        let outgoing = OutgoingMail {
            message_id: mail.id.replace(':', "."),
            to: mail.to.to_owned(),
            subject: rendered.subject,
            text: rendered.text,
            html: rendered.html,
        };
        let prepared = match self.mailer.prepare(&outgoing).await {
            Ok(prepared) => prepared,
            Err(err) => return self.not_sent(tenant, mail, claim, err).await,
        };
        // Committed before the first byte of the message: should this process
        // die from here on, the mail is `uncertain`, never sent twice. Should
        // this fail, or the claim be lost (its lock session gone), `prepared`
        // is dropped and its connection closed, so nothing reaches the server.
        if !claim.transmitting().await? {
            count(mail.kind, "lost");
            return Err(Failure::Retry {
                reason: format!("the claim on mail {} was lost before its data went out", mail.id),
                after: Some(IN_FLIGHT_RETRY),
            });
        }
        match prepared.transmit().await {
            Ok(()) => {
                claim.sent(clock::now()).await?;
                count(mail.kind, "sent");
                tracing::info!(tenant_id = %tenant.id, mail = %mail.id, "mail sent");
                Ok(())
            }
            Err(err) => self.not_sent(tenant, mail, claim, err).await,
        }
    }

    /// Records a send that did not get its 250.
    async fn not_sent(
        &self,
        tenant: &TenantConfig,
        mail: &Planned<'_>,
        claim: MailClaim,
        err: MailError,
    ) -> Result<(), Failure> {
        match err {
            MailError::Temporary(reason) => {
                claim.release(&reason).await?;
                count(mail.kind, "retry");
                Err(Failure::retry(format!(
                    "mail {} to {}: {reason}",
                    mail.id, mail.to
                )))
            }
            MailError::Permanent(reason) => {
                claim.fail(&reason).await?;
                count(mail.kind, "failed");
                tracing::error!(tenant_id = %tenant.id, mail = %mail.id, to = mail.to, %reason,
                    "mail refused for good; not retried");
                Ok(())
            }
            MailError::Unconfirmed(reason) => {
                claim.uncertain(&reason).await?;
                count(mail.kind, "uncertain");
                tracing::error!(tenant_id = %tenant.id, mail = %mail.id, to = mail.to, %reason,
                    "the server may have the mail but never confirmed it; not sent again");
                Ok(())
            }
            err @ MailError::Config(_) => {
                claim.release(&err.to_string()).await?;
                count(mail.kind, "failed");
                Err(Failure::reject(format!("mail {}: {err}", mail.id)))
            }
        }
    }
}

fn count(kind: MailKind, result: &'static str) {
    metrics::counter!("usersync_mails_total", "kind" => kind.name(), "result" => result).increment(1);
}

/// The tenant's calendar day (in its schedule's time zone): "once a day" and
/// "days before expiry" are counted in it.
fn tenant_day(tenant: &TenantConfig, now: DateTime<Utc>) -> NaiveDate {
    now.with_timezone(&tenant.schedule.timezone).date_naive()
}

fn mail_problem(problem: &MailProblem) -> Value {
    json!({
        "user": problem.detail.get("user").and_then(Value::as_str).unwrap_or(&problem.id),
        "recipient": problem.recipient,
        "kind": problem.kind,
        "state": problem.state,
        "reply": problem.reply,
    })
}
