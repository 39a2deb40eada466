//! Sending over SMTP with a pooled lettre transport.

use std::fmt;
use std::time::Duration;
use usersync_core::error_chain;

use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::MailError;

/// How long one SMTP command may take before the send counts as failed.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and as whom to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailConfig {
    /// `smtp://host:port` sends in plain text (add `?tls=opportunistic` or
    /// `?tls=required` for STARTTLS); `smtps://user:pass@host:port` uses TLS
    /// from the first byte.
    pub smtp_url: String,
    /// Sender, for example `Usersync <noreply@localhost>`.
    pub from: String,
}

/// One message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMail {
    /// Stable id of the event behind the mail; becomes `<{message_id}@usersync>`
    /// so a receiving system can spot a resend of the same mail.
    pub message_id: String,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// SMTP sender. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

// The transport may hold SMTP credentials, so only the sender is shown.
impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// Must be called inside a Tokio runtime: the connection pool starts a
    /// background task that closes idle connections.
    pub fn new(config: &MailConfig) -> Result<Self, MailError> {
        if tokio::runtime::Handle::try_current().is_err() {
            // lettre would panic here; an error is easier to act on.
            return Err(MailError::Config(
                "the mailer must be created inside a Tokio runtime".into(),
            ));
        }
        let from: Mailbox = config.from.parse().map_err(|err| {
            MailError::Config(format!("sender {:?} is not a mail address: {err}", config.from))
        })?;
        // lettre reads a plain smtp:// URL as "no TLS", which is what a local
        // relay or test server needs; the URL itself is not echoed as it may
        // carry a password.
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.smtp_url)
            .map_err(|err| MailError::Config(format!("invalid SMTP URL: {err}")))?
            .timeout(Some(SMTP_TIMEOUT))
            .build();
        Ok(Self { transport, from })
    }

    /// Sends one message: multipart/alternative (text + html), UTF-8 subject
    /// encoded properly, Message-ID `<{message_id}@usersync>`, Date set.
    pub async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError> {
        let message = self.build_message(mail)?;
        self.transport.send(message).await.map_err(|err| classify(&err))?;
        tracing::debug!(message_id = %mail.message_id, "mail sent");
        Ok(())
    }

    fn build_message(&self, mail: &OutgoingMail) -> Result<Message, MailError> {
        let to: Mailbox = mail
            .to
            .parse()
            .map_err(|err| MailError::Permanent(format!("invalid recipient address {:?}: {err}", mail.to)))?;
        Message::builder()
            .message_id(Some(message_id_header(&mail.message_id)))
            .date_now()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.clone())
            .multipart(MultiPart::alternative_plain_html(
                mail.text.clone(),
                mail.html.clone(),
            ))
            .map_err(|err| MailError::Permanent(format!("cannot build the message: {err}")))
    }
}

/// `<{id}@usersync>`, with any character that would break the header's
/// angle-bracket form replaced.
fn message_id_header(id: &str) -> String {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '<' | '>' | '@') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("<{safe}@usersync>")
}

/// 5xx replies and requests the client itself cannot form will fail again;
/// everything else (4xx, refused, reset, timeout, TLS hiccup) may pass later.
fn classify(err: &lettre::transport::smtp::Error) -> MailError {
    let text = error_chain(err);
    if err.is_permanent() || err.is_client() {
        MailError::Permanent(text)
    } else {
        MailError::Temporary(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_keeps_event_ids_readable() {
        assert_eq!(message_id_header("created:acme:u1"), "<created:acme:u1@usersync>");
    }

    #[test]
    fn message_id_cannot_break_out_of_its_brackets() {
        assert_eq!(message_id_header("a>b <c@d\r\n"), "<a_b__c_d__@usersync>");
    }
}
