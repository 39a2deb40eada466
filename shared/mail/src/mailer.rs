//! Sending over SMTP on pooled connections, in two steps: [`Mailer::prepare`]
//! runs MAIL FROM, RCPT TO and DATA, so the caller can record that the message
//! data is about to go out before [`Prepared::transmit`] sends it. A crash
//! before that record means the server has nothing; after it, it may have
//! the mail (see docs/mail.md). A server that offers PIPELINING (RFC 2920)
//! gets the three commands in one write and answers them together: one round
//! trip before the 354 instead of three.

use std::fmt;
use std::time::Duration;
use usersync_core::error_chain;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Tls, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use lettre::Message;
use url::Url;

use crate::MailError;

/// How long one SMTP command may take before the send counts as failed.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections kept open to the server by default (`SMTP_CONNECTIONS`).
pub const DEFAULT_SMTP_CONNECTIONS: usize = 32;
/// A connection idle longer than this is checked with NOOP before reuse, as
/// servers close idle sessions.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// Where and as whom to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailConfig {
    /// `smtp://host:port` sends in plain text (add `?tls=opportunistic` or
    /// `?tls=required` for STARTTLS); `smtps://user:pass@host:port` uses TLS
    /// from the first byte.
    pub smtp_url: String,
    /// Sender, for example `Usersync <noreply@localhost>`.
    pub from: String,
    /// Connections kept open to the server, at most: as many sends are in
    /// flight at once. Size it to what the server takes (its concurrent
    /// sessions per client).
    pub connections: usize,
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
    pool: managed::Pool<Server>,
    from: Mailbox,
    connections: usize,
}

// The server may carry SMTP credentials, so only the sender is shown.
impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

/// The SMTP server as `SMTP_URL` names it, read as lettre's `from_url` reads it.
struct Server {
    host: String,
    port: u16,
    tls: Tls,
    credentials: Option<Credentials>,
    hello: ClientId,
}

impl Server {
    fn from_url(text: &str) -> Result<Server, MailError> {
        // The URL itself is not echoed as it may carry a password.
        let invalid = |why: &str| {
            MailError::Config(format!(
                "invalid SMTP_URL: {why}; expected smtp://host:port, smtp://host:port?tls=required or smtps://user:password@host:port"
            ))
        };
        let url = Url::parse(text).map_err(|err| invalid(&err.to_string()))?;
        let host = url.host_str().ok_or_else(|| invalid("no host"))?.to_owned();
        let tls_mode = url
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let parameters = || {
            TlsParameters::new(host.clone())
                .map_err(|err| MailError::Config(format!("TLS for {host}: {err}")))
        };
        let (port, tls) = match (url.scheme(), tls_mode.as_deref()) {
            ("smtp", None) => (25, Tls::None),
            ("smtp", Some("required")) => (587, Tls::Required(parameters()?)),
            ("smtp", Some("opportunistic")) => (587, Tls::Opportunistic(parameters()?)),
            ("smtps", _) => (465, Tls::Wrapper(parameters()?)),
            (scheme, tls) => {
                return Err(invalid(&format!(
                    "scheme {scheme:?} with tls={tls:?} is not known"
                )))
            }
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let credentials = url
            .password()
            .map(|password| Credentials::new(decode(url.username()), decode(password)));
        let hello = match url.path().trim_matches('/') {
            "" => ClientId::default(),
            name => ClientId::Domain(name.to_owned()),
        };
        Ok(Server {
            port: url.port().unwrap_or(port),
            host,
            tls,
            credentials,
            hello,
        })
    }
}

impl Server {
    /// Opens a session: TCP (with TLS from the first byte for `smtps`), EHLO.
    async fn connect(&self) -> Result<AsyncSmtpConnection, MailError> {
        let address = (self.host.as_str(), self.port);
        if let Tls::Wrapper(parameters) = &self.tls {
            return AsyncSmtpConnection::connect_tokio1(
                address,
                Some(SMTP_TIMEOUT),
                &self.hello,
                Some(parameters.clone()),
                None,
            )
            .await
            .map_err(|err| classify(&err));
        }
        let unreachable = |why: String| {
            MailError::Temporary(format!(
                "connecting to the SMTP server {}:{}: {why}",
                self.host, self.port
            ))
        };
        let stream = tokio::time::timeout(SMTP_TIMEOUT, tokio::net::TcpStream::connect(address))
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|err| unreachable(err.to_string()))?;
        // lettre writes a message's final dot apart from its data: with
        // Nagle's algorithm that write would wait for the server to
        // acknowledge the data (a delayed ACK, tens of ms a mail).
        stream
            .set_nodelay(true)
            .map_err(|err| unreachable(err.to_string()))?;
        AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello)
            .await
            .map_err(|err| classify(&err))
    }
}

/// A pooled SMTP session and what its server offers beyond lettre's own
/// extensions.
struct Session {
    smtp: AsyncSmtpConnection,
    /// The server takes MAIL FROM, RCPT TO and DATA in one write.
    pipelining: bool,
}

/// Whether the server's EHLO answer offers PIPELINING. lettre's server info
/// keeps only the extensions lettre itself uses, so the session asks again
/// (EHLO may be repeated; it starts no transaction).
async fn offers_pipelining(
    connection: &mut AsyncSmtpConnection,
    hello: &ClientId,
) -> Result<bool, lettre::transport::smtp::Error> {
    let answer = connection.command(Ehlo::new(hello.clone())).await?;
    let offered = answer.message().skip(1).any(|line| {
        line.split_whitespace()
            .next()
            .is_some_and(|keyword| keyword.eq_ignore_ascii_case("PIPELINING"))
    });
    Ok(offered)
}

impl managed::Manager for Server {
    type Type = Session;
    type Error = MailError;

    /// A session ready for MAIL FROM: connected, STARTTLS and AUTH as configured.
    async fn create(&self) -> Result<Session, MailError> {
        let mut connection = self.connect().await?;
        let failed = |err: lettre::transport::smtp::Error| classify(&err);
        match &self.tls {
            Tls::Opportunistic(parameters) if connection.can_starttls() => {
                connection
                    .starttls(parameters.clone(), &self.hello)
                    .await
                    .map_err(failed)?;
            }
            Tls::Required(parameters) => connection
                .starttls(parameters.clone(), &self.hello)
                .await
                .map_err(failed)?,
            _ => {}
        }
        // Asked before AUTH, so the repeated EHLO cannot touch the login.
        let pipelining = offers_pipelining(&mut connection, &self.hello)
            .await
            .map_err(failed)?;
        if let Some(credentials) = &self.credentials {
            connection
                .auth(DEFAULT_MECHANISMS, credentials)
                .await
                .map_err(failed)?;
        }
        Ok(Session {
            smtp: connection,
            pipelining,
        })
    }

    async fn recycle(&self, session: &mut Session, metrics: &Metrics) -> RecycleResult<MailError> {
        let connection = &mut session.smtp;
        if connection.has_broken() {
            return Err(RecycleError::message("the SMTP connection broke"));
        }
        if metrics.last_used() > IDLE_CHECK && !connection.test_connected().await {
            return Err(RecycleError::message("the SMTP server closed the connection"));
        }
        Ok(())
    }
}

type Connection = managed::Object<Server>;

/// An SMTP transaction whose DATA the server has accepted (354): nothing of
/// the message has reached the server yet. Dropped without
/// [`Prepared::transmit`], the connection is closed, so the server discards
/// the transaction.
pub struct Prepared {
    connection: Option<Connection>,
    message: Vec<u8>,
}

impl Prepared {
    /// Sends the message data and the final dot. An error with no reply from
    /// the server (network, timeout) is [`MailError::Unconfirmed`]: the server
    /// may have the mail.
    pub async fn transmit(mut self) -> Result<(), MailError> {
        let connection = self
            .connection
            .as_mut()
            .expect("a prepared transaction has its connection");
        match connection.smtp.message(&self.message).await {
            Ok(_) => {
                // Back to the pool: the session is ready for the next MAIL FROM.
                self.connection.take();
                Ok(())
            }
            Err(err) if err.is_transient() || err.is_permanent() => Err(classify(&err)),
            Err(err) => Err(MailError::Unconfirmed(error_chain(&err))),
        }
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // Mid-transaction: never handed to another send.
        if let Some(connection) = self.connection.take() {
            drop(managed::Object::take(connection));
        }
    }
}

impl Mailer {
    /// Reads the configuration; connects only when the first mail is sent.
    pub fn new(config: &MailConfig) -> Result<Self, MailError> {
        let from: Mailbox = config.from.parse().map_err(|err| {
            MailError::Config(format!("sender {:?} is not a mail address: {err}", config.from))
        })?;
        let server = Server::from_url(&config.smtp_url)?;
        if config.connections == 0 {
            return Err(MailError::Config(
                "the SMTP connection pool needs at least one connection".into(),
            ));
        }
        let pool = managed::Pool::builder(server)
            .max_size(config.connections)
            .build()
            .map_err(|err| MailError::Config(format!("the SMTP connection pool: {err}")))?;
        Ok(Self {
            pool,
            from,
            connections: config.connections,
        })
    }

    /// Sends that can be in flight at once: the pool's connections.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// Sends one message at once (see [`Mailer::prepare`]).
    pub async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError> {
        self.prepare(mail).await?.transmit().await
    }

    /// Builds the message (multipart/alternative, text + html, UTF-8 subject
    /// encoded properly, Message-ID `<{message_id}@usersync>`, Date set) and
    /// opens its SMTP transaction up to the server's 354 to DATA.
    pub async fn prepare(&self, mail: &OutgoingMail) -> Result<Prepared, MailError> {
        let message = self.build_message(mail)?;
        let mut connection = self.pool.get().await.map_err(|err| match err {
            managed::PoolError::Backend(err) => err,
            other => MailError::Temporary(format!("no SMTP connection: {other}")),
        })?;
        let envelope = message.envelope().clone();
        let body = message.formatted();
        let mut options = Vec::new();
        let non_ascii = envelope
            .from()
            .into_iter()
            .chain(envelope.to())
            .any(|a| !AsRef::<str>::as_ref(a).is_ascii());
        if non_ascii {
            if !connection
                .smtp
                .server_info()
                .supports_feature(Extension::SmtpUtfEight)
            {
                return Err(MailError::Permanent(
                    "the address is not ASCII and the SMTP server does not support SMTPUTF8".into(),
                ));
            }
            options.push(MailParameter::SmtpUtfEight);
        }
        if !body.is_ascii() {
            if !connection
                .smtp
                .server_info()
                .supports_feature(Extension::EightBitMime)
            {
                return Err(MailError::Permanent(
                    "the message is not ASCII and the SMTP server does not support 8BITMIME".into(),
                ));
            }
            options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        let mail = Mail::new(envelope.from().cloned(), options);
        let recipients: Vec<Rcpt> = envelope
            .to()
            .iter()
            .map(|to| Rcpt::new(to.clone(), Vec::new()))
            .collect();
        let session = &mut *connection;
        let opened = if session.pipelining {
            pipelined_open(&mut session.smtp, mail, &recipients).await
        } else {
            stepwise_open(&mut session.smtp, mail, &recipients).await
        };
        match opened {
            Ok(_) => Ok(Prepared {
                connection: Some(connection),
                message: body,
            }),
            Err(err) => {
                // The session is mid-transaction: closed, not reused.
                connection.smtp.abort().await;
                drop(managed::Object::take(connection));
                Err(classify(&err))
            }
        }
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

/// MAIL FROM, RCPT TO and DATA, each after the answer to the one before.
async fn stepwise_open(
    smtp: &mut AsyncSmtpConnection,
    mail: Mail,
    recipients: &[Rcpt],
) -> Result<Response, lettre::transport::smtp::Error> {
    smtp.command(mail).await?;
    for rcpt in recipients {
        smtp.command(rcpt).await?;
    }
    smtp.command(Data).await
}

/// MAIL FROM, RCPT TO and DATA in one write (RFC 2920: DATA ends the group),
/// then their answers in order. A refused recipient fails the send as in
/// [`stepwise_open`]; the server has refused the DATA too (no valid
/// recipient), and the session is closed: one that took the DATA anyway
/// gets no final dot, so it keeps nothing.
async fn pipelined_open(
    smtp: &mut AsyncSmtpConnection,
    mail: Mail,
    recipients: &[Rcpt],
) -> Result<Response, lettre::transport::smtp::Error> {
    let mut group = mail.to_string();
    for rcpt in recipients {
        group.push_str(&rcpt.to_string());
    }
    group.push_str(&Data.to_string());
    smtp.command(group).await?;
    for _ in recipients {
        smtp.read_response().await?;
    }
    smtp.read_response().await
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
