//! usersync-notifier: the only service that sends mail.

mod notify;
mod plan;

use std::path::PathBuf;

use anyhow::bail;
use tokio::sync::Semaphore;
use usersync_bus::ConsumeOptions;
use usersync_contract::topology::Stage;
use usersync_mail::{Language, MailConfig, Mailer, Templates, DEFAULT_SMTP_CONNECTIONS};
use usersync_runtime::{env_opt, env_or, init_tracing};
use usersync_service::Service;

/// Events handled at once. Each waits mostly on SMTP and PostgreSQL, so many
/// in flight keep the pooled SMTP connections busy. A batch event sends as
/// many of its mails at once as the SMTP pool has connections.
const PREFETCH: u16 = 32;
/// Bytes of events in hand at once, on top of [`PREFETCH`]. A batch event of
/// 100 users (some tens of KB) brings up to 200 mails, so the few that fit
/// hold far more than the sends the claims let go at once (two chunks of the
/// SMTP pool), while single events still go 32 at a time. With 32 batch
/// events in hand a 200,000-mail first sync peaked at 49 MB; with this, at
/// 36 MB, and no fewer mails/s (60,000 mails: 3,034 and 2,463 mails/s against
/// 2,185 and 1,978 with 32, taking turns on a busy disk).
const EVENT_BYTES_IN_HAND: usize = 384 * 1024;
/// Database connections: statements are short, and the claims of the sends
/// in flight are held by one more session outside the pool, so a few serve
/// every event in hand (`DATABASE_POOL_SIZE` caps it).
const POOL_SIZE: usize = 8;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    // A broken template stops the service here, not at the first send.
    let templates = Templates::load(env_opt("MAIL_TEMPLATE_DIR").map(PathBuf::from).as_deref())?;
    let default_language = match env_or("MAIL_DEFAULT_LANGUAGE", "en").as_str() {
        "sv" => Language::Sv,
        "en" => Language::En,
        other => bail!("MAIL_DEFAULT_LANGUAGE={other:?} is not a mail language: set it to `sv` or `en`"),
    };
    let connections = match env_opt("SMTP_CONNECTIONS") {
        None => DEFAULT_SMTP_CONNECTIONS,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => bail!("SMTP_CONNECTIONS={text:?} is not a number of connections: set it to what the SMTP server takes at once (default {DEFAULT_SMTP_CONNECTIONS})"),
        },
    };
    let mailer = Mailer::new(&MailConfig {
        smtp_url: env_or("SMTP_URL", "smtp://127.0.0.1:1025"),
        from: env_or("MAIL_FROM", "Usersync <noreply@localhost>"),
        connections,
    })?;
    let service = Service::start("usersync-notifier", POOL_SIZE).await?;
    let notifier = notify::Notifier {
        store: service.store.clone(),
        mailer,
        templates,
        default_language,
        // Two chunks per batch path: one sending while the next is claimed.
        batch_claims: Semaphore::new(2 * connections),
    };
    let options = ConsumeOptions {
        prefetch: PREFETCH,
        bytes_in_hand: Some(EVENT_BYTES_IN_HAND),
        max_attempts: 8,
        ..ConsumeOptions::default()
    };
    service.serve(Stage::Notifier, options, notifier, None).await
}
