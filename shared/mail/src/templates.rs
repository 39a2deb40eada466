//! Mail templates: built into the binary, each one overridable by a file of
//! the same name, and all checked when loaded so a broken one never surfaces
//! at send time.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::Path;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde_json::{json, Value};

use crate::MailError;

/// Lists the built-in templates, embedding each file from `templates/`.
macro_rules! built_in {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../templates/", $name)))),*]
    };
}

/// Every template, as `<kind>.<lang>.<part>`; overrides use the same names.
const BUILT_IN: &[(&str, &str)] = built_in![
    "welcome.sv.subject.txt",
    "welcome.sv.txt",
    "welcome.sv.html",
    "welcome.en.subject.txt",
    "welcome.en.txt",
    "welcome.en.html",
    "welcome_copy.sv.subject.txt",
    "welcome_copy.sv.txt",
    "welcome_copy.sv.html",
    "welcome_copy.en.subject.txt",
    "welcome_copy.en.txt",
    "welcome_copy.en.html",
    "run_report.sv.subject.txt",
    "run_report.sv.txt",
    "run_report.sv.html",
    "run_report.en.subject.txt",
    "run_report.en.txt",
    "run_report.en.html",
    "resolved.sv.subject.txt",
    "resolved.sv.txt",
    "resolved.sv.html",
    "resolved.en.subject.txt",
    "resolved.en.txt",
    "resolved.en.html",
    "secret_expiry.sv.subject.txt",
    "secret_expiry.sv.txt",
    "secret_expiry.sv.html",
    "secret_expiry.en.subject.txt",
    "secret_expiry.en.txt",
    "secret_expiry.en.html",
];

/// Which mail to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MailKind {
    /// To the new user: `{first_name, surname, alias, pstn_fixed, company_name}`.
    Welcome,
    /// To the admin copy address: the welcome fields plus `email` (may be null).
    WelcomeCopy,
    /// Digest to the error address: `{tenant_id, company_name, run_id, outcome,
    /// level, counts: {created, updated, deleted, skipped, failed, held},
    /// error, error_code, standing_since, warnings: [text],
    /// problems: [{user, field, message}],
    /// mail_problems: [{user, recipient, kind, state, reply}],
    /// mails_in_flight: [{user, recipient, kind, state}]}`.
    RunReport,
    /// A standing error is over: `{tenant_id, company_name, error_code, error, since}`.
    Resolved,
    /// The Entra client secret expires soon: `{tenant_id, company_name,
    /// expires_on, days_left}`.
    SecretExpiry,
}

impl MailKind {
    pub const ALL: [MailKind; 5] = [
        Self::Welcome,
        Self::WelcomeCopy,
        Self::RunReport,
        Self::Resolved,
        Self::SecretExpiry,
    ];

    /// The kind's name in templates, metrics and the mail table.
    pub fn name(self) -> &'static str {
        match self {
            Self::Welcome => "welcome",
            Self::WelcomeCopy => "welcome_copy",
            Self::RunReport => "digest",
            Self::Resolved => "resolved",
            Self::SecretExpiry => "secret_expiry",
        }
    }

    fn file_stem(self) -> &'static str {
        match self {
            Self::Welcome => "welcome",
            Self::WelcomeCopy => "welcome_copy",
            Self::RunReport => "run_report",
            Self::Resolved => "resolved",
            Self::SecretExpiry => "secret_expiry",
        }
    }

    /// Contexts a template must render with at load: one with every optional
    /// value present and one with them all absent, so both branches are tried.
    fn sample_contexts(self) -> [Value; 2] {
        let user = json!({
            "first_name": "Anna",
            "surname": "Berg",
            "alias": "anna.berg",
            "pstn_fixed": "46812345678",
            "company_name": "Exempel AB",
        });
        match self {
            Self::Welcome => [user.clone(), user],
            Self::WelcomeCopy => [
                with(&user, "email", json!("anna.berg@example.com")),
                with(&user, "email", Value::Null),
            ],
            Self::RunReport => {
                let report = json!({
                    "tenant_id": "exempel",
                    "company_name": "Exempel AB",
                    "run_id": "00000000-0000-0000-0000-000000000000",
                    "outcome": "partial",
                    "level": "warning",
                    "counts": {"created": 1, "updated": 2, "deleted": 0, "skipped": 1, "failed": 1, "held": 0},
                    "problems": [],
                    "mail_problems": [],
                    "mails_in_flight": [],
                    "warnings": [],
                    "error": null,
                    "error_code": null,
                    "standing_since": null,
                });
                let problem = json!({"user": "anna.berg", "field": "pstn_fixed", "message": "not a number"});
                let mail_problems = json!([
                    {"user": "anna.berg", "recipient": "", "kind": "welcome", "state": "no_address", "reply": null},
                    {"user": "bo.ek", "recipient": "bo@example.com", "kind": "welcome", "state": "failed", "reply": "550 no such user"},
                    {"user": "cia.ny", "recipient": "cia@example.com", "kind": "welcome_copy", "state": "uncertain", "reply": null},
                ]);
                let mut troubled = with(&report, "problems", json!([problem]));
                troubled = with(&troubled, "mail_problems", mail_problems);
                let in_flight = json!([{"user": "dan.ek", "recipient": "dan@example.com", "kind": "welcome", "state": "pending"}]);
                troubled = with(&troubled, "mails_in_flight", in_flight);
                troubled = with(&troubled, "warnings", json!(["group Telephony matches 2 groups"]));
                troubled = with(
                    &troubled,
                    "counts",
                    json!({"created": 1, "updated": 2, "deleted": 0, "skipped": 1, "failed": 1, "held": 12}),
                );
                troubled = with(&troubled, "error_code", json!("pbx.unreachable"));
                troubled = with(&troubled, "standing_since", json!("2026-01-02 03:04 UTC"));
                [with(&troubled, "error", json!("PBX unreachable")), report]
            }
            Self::Resolved => {
                let resolved = json!({
                    "tenant_id": "exempel",
                    "company_name": "Exempel AB",
                    "error_code": "entra.7000222",
                    "error": "client secret expired",
                    "since": "2026-01-02 03:04 UTC",
                });
                [resolved.clone(), with(&resolved, "error", Value::Null)]
            }
            Self::SecretExpiry => {
                let expiry = json!({
                    "tenant_id": "exempel",
                    "company_name": "Exempel AB",
                    "expires_on": "2026-02-01",
                    "days_left": 14,
                });
                [expiry.clone(), with(&expiry, "days_left", json!(0))]
            }
        }
    }
}

fn with(base: &Value, key: &str, value: Value) -> Value {
    let mut copy = base.clone();
    copy[key] = value;
    copy
}

/// Language of a mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    Sv,
    En,
}

impl Language {
    pub const ALL: [Language; 2] = [Self::Sv, Self::En];

    pub fn code(self) -> &'static str {
        match self {
            Self::Sv => "sv",
            Self::En => "en",
        }
    }

    /// Picks the language from a directory `preferredLanguage` tag such as
    /// "sv-SE" or "en-US"; anything else (or nothing) gives `default`.
    pub fn from_preferred(tag: Option<&str>, default: Language) -> Language {
        let primary = tag
            .map(str::trim)
            .and_then(|tag| tag.split(['-', '_']).next())
            .unwrap_or_default();
        Self::ALL
            .into_iter()
            .find(|lang| primary.eq_ignore_ascii_case(lang.code()))
            .unwrap_or(default)
    }
}

#[derive(Debug, Clone, Copy)]
enum Part {
    Subject,
    Text,
    Html,
}

impl Part {
    const ALL: [Part; 3] = [Self::Subject, Self::Text, Self::Html];

    fn suffix(self) -> &'static str {
        match self {
            Self::Subject => "subject.txt",
            Self::Text => "txt",
            Self::Html => "html",
        }
    }
}

fn template_name(kind: MailKind, lang: Language, part: Part) -> String {
    format!("{}.{}.{}", kind.file_stem(), lang.code(), part.suffix())
}

/// A rendered mail, ready for [`crate::OutgoingMail`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// One line, whitespace collapsed.
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The compiled set of mail templates.
#[derive(Debug, Clone)]
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Built-in templates (embedded with include_str!), optionally overridden
    /// by files in `dir` with the same names. Every template is compiled and
    /// trial-rendered here: a broken one is refused with its file and line.
    pub fn load(dir: Option<&Path>) -> Result<Templates, MailError> {
        if let Some(dir) = dir {
            if !dir.is_dir() {
                return Err(MailError::Config(format!(
                    "template directory {} does not exist",
                    dir.display()
                )));
            }
        }
        let mut env = new_environment();
        let mut origins = HashMap::new();
        for &(name, built_in) in BUILT_IN {
            let (source, origin) = template_source(dir, name, built_in)?;
            env.add_template_owned(name, source)
                .map_err(|err| template_error(&origin, &err))?;
            origins.insert(name.to_string(), origin);
        }
        let templates = Templates { env };
        templates.trial_render(&origins)?;
        Ok(templates)
    }

    /// Renders one mail. A context missing a value the template prints is an
    /// error ([`MailError::Config`]), not a blank in the mail.
    pub fn render(&self, kind: MailKind, lang: Language, ctx: &Value) -> Result<Rendered, MailError> {
        let part = |part| {
            let name = template_name(kind, lang, part);
            self.render_part(&name, ctx)
                .map_err(|err| template_error(&name, &err))
        };
        Ok(Rendered {
            subject: one_line(&part(Part::Subject)?),
            text: part(Part::Text)?,
            html: part(Part::Html)?,
        })
    }

    fn render_part(&self, name: &str, ctx: &Value) -> Result<String, minijinja::Error> {
        self.env.get_template(name)?.render(ctx)
    }

    /// Renders every template with sample data, so a misspelt variable or an
    /// unknown filter in an override fails now rather than when mail is due.
    fn trial_render(&self, origins: &HashMap<String, String>) -> Result<(), MailError> {
        for kind in MailKind::ALL {
            for ctx in kind.sample_contexts() {
                for lang in Language::ALL {
                    for part in Part::ALL {
                        let name = template_name(kind, lang, part);
                        if let Err(err) = self.render_part(&name, &ctx) {
                            let failing = err.name().unwrap_or(&name);
                            let origin = origins.get(failing).map_or(failing, String::as_str);
                            return Err(template_error(origin, &err));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn new_environment() -> Environment<'static> {
    let mut env = Environment::new();
    // Printing an unknown variable is an error (caught by the trial render);
    // testing one in `if` is allowed, for optional values.
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env
}

/// The template's source and where it came from (for error messages): the
/// override file when there is one, else the built-in text.
fn template_source(dir: Option<&Path>, name: &str, built_in: &str) -> Result<(String, String), MailError> {
    if let Some(path) = dir.map(|dir| dir.join(name)) {
        if let Some(source) = read_override(&path)? {
            return Ok((source, path.display().to_string()));
        }
    }
    Ok((built_in.to_string(), name.to_string()))
}

/// The override's source, or None when there is no such file.
fn read_override(path: &Path) -> Result<Option<String>, MailError> {
    match std::fs::read_to_string(path) {
        Ok(source) => Ok(Some(source)),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
        Err(err) => Err(MailError::Config(format!(
            "cannot read template {}: {err}",
            path.display()
        ))),
    }
}

fn template_error(origin: &str, err: &minijinja::Error) -> MailError {
    let place = match err.line() {
        Some(line) => format!("{origin}, line {line}"),
        None => origin.to_string(),
    };
    let detail = err.detail().map(|d| format!(": {d}")).unwrap_or_default();
    MailError::Config(format!("template {place}: {}{detail}", err.kind()))
}

/// A subject is one header line whatever the template's line breaks.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
