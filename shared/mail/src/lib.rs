//! Mail for usersync: the built-in (overridable) templates and an SMTP sender.

mod error;
mod mailer;
mod templates;

pub use error::MailError;
pub use mailer::{MailConfig, Mailer, OutgoingMail, Prepared, DEFAULT_SMTP_CONNECTIONS};
pub use templates::{Language, MailKind, Rendered, Templates};
