//! Events to mails: the welcome mail and its copy, and the run report at the
//! tenant's level. Each mail has a deterministic id and is sent at most once.

use serde_json::json;
use usersync_bus::{Failure, Handler, Incoming};
use usersync_contract::{Event, RunCounts};
use usersync_core::{NotificationLevel, TenantConfig};
use usersync_mail::{Language, MailError, MailKind, Mailer, OutgoingMail, Templates};
use usersync_store::Store;

pub struct Notifier {
    pub store: Store,
    pub mailer: Mailer,
    pub templates: Templates,
    pub default_language: Language,
}

/// One mail to send, before rendering.
struct Planned<'a> {
    id: String,
    to: &'a str,
    kind: MailKind,
    language: Language,
    context: serde_json::Value,
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
        for mail in self.plan(&tenant.config, event) {
            self.send_once(&tenant.config, mail).await?;
        }
        Ok(())
    }
}

impl Notifier {
    fn plan<'a>(&self, tenant: &'a TenantConfig, event: &'a Event) -> Vec<Planned<'a>> {
        match event {
            Event::UserCreated {
                pbx_id,
                alias,
                first_name,
                surname,
                pstn_fixed,
                email,
                language,
                ..
            } => {
                if !tenant.welcome_mail {
                    return Vec::new();
                }
                let context = json!({
                    "first_name": first_name, "surname": surname, "alias": alias,
                    "pstn_fixed": pstn_fixed, "email": email, "company_name": tenant.name,
                });
                let language = Language::from_preferred(language.as_deref(), self.default_language);
                let mut mails = Vec::new();
                match email {
                    Some(to) => mails.push(Planned {
                        id: format!("welcome:{}:{pbx_id}", tenant.id),
                        to,
                        kind: MailKind::Welcome,
                        language,
                        context: context.clone(),
                    }),
                    None => {
                        tracing::warn!(tenant_id = %tenant.id, %alias, "created user has no mail address: no welcome mail")
                    }
                }
                if let Some(to) = &tenant.welcome_mail_copy_to {
                    mails.push(Planned {
                        id: format!("welcome-copy:{}:{pbx_id}", tenant.id),
                        to,
                        kind: MailKind::WelcomeCopy,
                        language: self.default_language,
                        context,
                    });
                }
                mails
            }
            Event::RunFinished {
                run_id,
                outcome,
                counts,
                error,
                problems,
                ..
            } => {
                let Some(to) = &tenant.error_notification_email else {
                    return Vec::new();
                };
                if !report_wanted(tenant.error_notification_level, outcome, counts) {
                    return Vec::new();
                }
                vec![Planned {
                    id: format!("report:{run_id}"),
                    to,
                    kind: MailKind::RunReport,
                    language: self.default_language,
                    context: json!({
                        "tenant_id": tenant.id, "company_name": tenant.name, "outcome": outcome,
                        "level": level_name(tenant.error_notification_level),
                        "counts": counts, "error": error,
                        "problems": problems.iter().map(|p| json!({
                            "user": p.user, "field": p.problem.field, "message": p.problem.message,
                        })).collect::<Vec<_>>(),
                    }),
                }]
            }
            // Per-user updates, deletions and failures reach the operator in the run's digest.
            Event::UserChanged { .. } => Vec::new(),
        }
    }

    async fn send_once(&self, tenant: &TenantConfig, mail: Planned<'_>) -> Result<(), Failure> {
        if self.store.mail_sent(&mail.id).await? {
            return Ok(());
        }
        let rendered = self
            .templates
            .render(mail.kind, mail.language, &mail.context)
            .map_err(Failure::reject)?;
        let outgoing = OutgoingMail {
            message_id: mail.id.replace(':', "."),
            to: mail.to.to_owned(),
            subject: rendered.subject,
            text: rendered.text,
            html: rendered.html,
        };
        match self.mailer.send(&outgoing).await {
            Ok(()) => {}
            Err(MailError::Temporary(reason)) => return Err(Failure::retry(format!("SMTP: {reason}"))),
            Err(err) => {
                return Err(Failure::reject(format!(
                    "mail {} to {} refused: {err}",
                    mail.id, mail.to
                )))
            }
        }
        self.store.record_mail_sent(&mail.id, &tenant.id, mail.to).await?;
        tracing::info!(tenant_id = %tenant.id, mail = %mail.id, "mail sent");
        Ok(())
    }
}

/// Whether the tenant's level asks for a report of this run.
fn report_wanted(level: NotificationLevel, outcome: &str, counts: &RunCounts) -> bool {
    let failed_run = outcome == "failed";
    let user_problems = counts.skipped > 0 || counts.failed > 0;
    match level {
        NotificationLevel::Error => failed_run,
        NotificationLevel::Warning => failed_run || user_problems,
        NotificationLevel::Info => true,
    }
}

fn level_name(level: NotificationLevel) -> &'static str {
    match level {
        NotificationLevel::Error => "error",
        NotificationLevel::Warning => "warning",
        NotificationLevel::Info => "info",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_widen_from_error_to_info() {
        let clean = RunCounts::default();
        let skipped = RunCounts {
            skipped: 1,
            ..RunCounts::default()
        };
        assert!(report_wanted(NotificationLevel::Error, "failed", &clean));
        assert!(!report_wanted(NotificationLevel::Error, "succeeded", &skipped));
        assert!(report_wanted(NotificationLevel::Warning, "succeeded", &skipped));
        assert!(!report_wanted(NotificationLevel::Warning, "succeeded", &clean));
        assert!(report_wanted(NotificationLevel::Info, "succeeded", &clean));
    }
}
