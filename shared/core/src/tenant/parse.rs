//! Validation of a tenant file, collecting every problem in one pass.

use std::collections::BTreeMap;

use chrono::{NaiveDate, NaiveTime};
use chrono_tz::Tz;
use serde_json::Value;

use super::serde_formats::hour_minute;
use super::values::{syntax_error, Field, Obj, Problems};
use super::{
    default_allowed_country_prefixes, AdoptMatch, DeletionGuard, FieldMapping, Mode, NotificationLevel,
    PbxLimits, PbxOverride, ProviderSettings, Schedule, TenantConfig, TenantType, UserFilter,
    DEFAULT_DELETE_AFTER_DAYS,
};
use crate::mapping::SourcePath;
use crate::problem::Problem;

/// The field name used for problems with the document as a whole.
const DOCUMENT: &str = "tenant file";

const TOP_LEVEL_KEYS: &[&str] = &[
    "id",
    "name",
    "type",
    "mode",
    "welcome_mail",
    "welcome_mail_copy_to",
    "delete_after_days",
    "error_notification_email",
    "error_notification_level",
    "provider_settings",
    "pbx_company_id",
    "default_caller_id",
    "default_template",
    "field_mapping",
    "user_field_mapping",
    "schedule",
    "pbx",
    "client_secret_expires_at",
    "deletion_guard",
    "allowed_country_prefixes",
    "adopt_match",
    "pbx_limits",
    "change_notifications",
];

const PROVIDER_SETTINGS_EXAMPLE: &str =
    r#"{"tenant_id":"…","client_id":"…","client_secret":"…","user_filter":{"memberOf":["Telephony"]}}"#;
const MEMBER_OF_EXAMPLE: &str = r#"["Telephony"] (or [""] for every user)"#;
const FIELD_MAPPING_EXAMPLE: &str = r#"{"alias": "mailNickname", "first_name": "givenName", "surname": "surname", "pstn_fixed": "businessPhones[0]"}"#;

/// Parses and validates a tenant file.
///
/// `provider_settings` may be an object or a string holding that JSON exactly
/// as pasted in the portal. On failure every problem found is returned, each
/// naming the field path, the cause and the fix.
pub fn parse_tenant_file(text: &str) -> Result<TenantConfig, Vec<Problem>> {
    let document: Value =
        serde_json::from_str(text).map_err(|err| vec![Problem::new(DOCUMENT, syntax_error(&err))])?;
    let Value::Object(root) = &document else {
        return Err(vec![Problem::new(
            DOCUMENT,
            r#"must be a JSON object; wrap the settings in { }, e.g. {"id": "acme", "name": "Acme AB", …}"#,
        )]);
    };
    let mut problems = Problems::new();
    let config = read_tenant(&Obj::root(root), &mut problems);
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(problems.into_iter().map(naming_empty_keys).collect()),
    }
}

/// A top-level key may be empty (`{"": 1}`, found by fuzzing): its problem
/// would name no field at all, so the empty key is shown as `""`.
fn naming_empty_keys(mut problem: Problem) -> Problem {
    if problem.field.is_empty() {
        problem.field = "\"\"".to_owned();
    }
    problem
}

/// Reads every field before combining them, so that all problems are found.
fn read_tenant(root: &Obj, out: &mut Problems) -> Option<TenantConfig> {
    root.refuse_unknown_keys(TOP_LEVEL_KEYS, out);
    let id = root
        .required("id", r#""acme""#, out)
        .and_then(|f| f.parsed(r#""acme""#, out, check_tenant_id));
    let name = required_text(root, "name", r#""Acme AB""#, out);
    let kind = root
        .required("type", r#""ad_sync""#, out)
        .and_then(|f| f.choice(&[("ad_sync", TenantType::AdSync)], out));
    let mode = root
        .required("mode", r#""user_sync""#, out)
        .and_then(|f| f.choice(&mode_names(), out));
    let welcome_mail = root.optional("welcome_mail").map(|f| f.boolean(out));
    let welcome_mail_copy_to = optional_mail(root, "welcome_mail_copy_to", out);
    let delete_after_days = root.optional("delete_after_days").map(|f| f.count("7", out));
    let error_notification_email = optional_mail(root, "error_notification_email", out);
    let error_notification_level = root
        .optional("error_notification_level")
        .map(|f| f.choice(&level_names(), out));
    let provider_settings = root
        .required("provider_settings", PROVIDER_SETTINGS_EXAMPLE, out)
        .and_then(|f| read_provider_settings(&f, out));
    let pbx_company_id = required_text(root, "pbx_company_id", r#""acme""#, out);
    let default_caller_id = root
        .optional("default_caller_id")
        .map(|f| f.parsed(r#""46812345600""#, out, check_caller_id));
    let default_template = root
        .optional("default_template")
        .map(|f| f.text(r#""standard""#, out).map(str::to_owned));
    let field_mapping = root
        .required("field_mapping", FIELD_MAPPING_EXAMPLE, out)
        .and_then(|f| read_field_mapping(&f, out));
    let user_field_mapping = root
        .optional("user_field_mapping")
        .map(|f| read_user_field_mapping(&f, out));
    let schedule = root.optional("schedule").map(|f| read_schedule(&f, out));
    let pbx = root.optional("pbx").map(|f| read_pbx(&f, out));
    let client_secret_expires_at = root
        .optional("client_secret_expires_at")
        .map(|f| f.parsed(r#""2025-12-31""#, out, check_date));
    let deletion_guard = root
        .optional("deletion_guard")
        .map(|f| read_deletion_guard(&f, out));
    let allowed_country_prefixes = root
        .optional("allowed_country_prefixes")
        .map(|f| read_country_prefixes(&f, out));
    let adopt_match = root.optional("adopt_match").map(|f| {
        let names: Vec<_> = AdoptMatch::ALL.into_iter().map(|m| (m.as_str(), m)).collect();
        f.choice(&names, out)
    });
    let pbx_limits = root.optional("pbx_limits").map(|f| read_pbx_limits(&f, out));
    let change_notifications = root.optional("change_notifications").map(|f| f.boolean(out));

    Some(TenantConfig {
        id: id?,
        name: name?,
        kind: kind?,
        mode: mode?,
        welcome_mail: welcome_mail.unwrap_or(Some(false))?,
        welcome_mail_copy_to: absent_or_valid(welcome_mail_copy_to)?,
        delete_after_days: delete_after_days.unwrap_or(Some(DEFAULT_DELETE_AFTER_DAYS))?,
        error_notification_email: absent_or_valid(error_notification_email)?,
        error_notification_level: error_notification_level.unwrap_or(Some(NotificationLevel::default()))?,
        provider_settings: provider_settings?,
        pbx_company_id: pbx_company_id?,
        default_caller_id: absent_or_valid(default_caller_id)?,
        default_template: absent_or_valid(default_template)?,
        field_mapping: field_mapping?,
        user_field_mapping: user_field_mapping.unwrap_or(Some(BTreeMap::new()))?,
        schedule: schedule.unwrap_or(Some(Schedule::default()))?,
        pbx: absent_or_valid(pbx)?,
        client_secret_expires_at: absent_or_valid(client_secret_expires_at)?,
        deletion_guard: deletion_guard.unwrap_or(Some(DeletionGuard::default()))?,
        allowed_country_prefixes: allowed_country_prefixes
            .unwrap_or(Some(default_allowed_country_prefixes()))?,
        adopt_match: adopt_match.unwrap_or(Some(AdoptMatch::default()))?,
        pbx_limits: pbx_limits.unwrap_or(Some(PbxLimits::default()))?,
        change_notifications: change_notifications.unwrap_or(Some(false))?,
    })
}

/// An optional field read as `Some(valid)` when present: absent gives
/// `Some(None)`, present but invalid gives `None` (a problem was recorded).
fn absent_or_valid<T>(read: Option<Option<T>>) -> Option<Option<T>> {
    read.map_or(Some(None), |valid| valid.map(Some))
}

fn mode_names() -> Vec<(&'static str, Mode)> {
    Mode::ALL.into_iter().map(|m| (m.as_str(), m)).collect()
}

fn level_names() -> Vec<(&'static str, NotificationLevel)> {
    NotificationLevel::ALL
        .into_iter()
        .map(|l| (l.as_str(), l))
        .collect()
}

fn required_text(obj: &Obj, key: &str, example: &str, out: &mut Problems) -> Option<String> {
    obj.required(key, example, out)
        .and_then(|f| f.text(example, out))
        .map(str::to_owned)
}

fn optional_mail(obj: &Obj, key: &str, out: &mut Problems) -> Option<Option<String>> {
    obj.optional(key)
        .map(|f| f.parsed(r#""it@acme.example""#, out, check_mail_address))
}

fn read_provider_settings(field: &Field, out: &mut Problems) -> Option<ProviderSettings> {
    match field.value {
        Value::String(pasted) => {
            // The surrounding-space check reports, but parsing goes on so that
            // problems inside the JSON are found in the same pass.
            field.text(PROVIDER_SETTINGS_EXAMPLE, out);
            if pasted.trim().is_empty() {
                return None;
            }
            match serde_json::from_str::<Value>(pasted) {
                Ok(inner) => read_provider_object(&Field::new(field.path.clone(), &inner), out),
                Err(err) => {
                    out.push(Problem::new(
                        field.path.clone(),
                        format!(
                            "is a string that {}; paste the Provider Settings JSON exactly, e.g. {PROVIDER_SETTINGS_EXAMPLE}",
                            syntax_error(&err)
                        ),
                    ));
                    None
                }
            }
        }
        _ => read_provider_object(field, out),
    }
}

fn read_provider_object(field: &Field, out: &mut Problems) -> Option<ProviderSettings> {
    let settings = field.object(PROVIDER_SETTINGS_EXAMPLE, out)?;
    settings.refuse_unknown_keys(&["tenant_id", "client_id", "client_secret", "user_filter"], out);
    let tenant_id = required_text(
        &settings,
        "tenant_id",
        r#""<Directory (tenant) ID from Azure>""#,
        out,
    );
    let client_id = required_text(
        &settings,
        "client_id",
        r#""<Application (client) ID from Azure>""#,
        out,
    );
    let client_secret = required_text(
        &settings,
        "client_secret",
        r#""<client secret value from Azure>""#,
        out,
    );
    let user_filter = settings
        .required(
            "user_filter",
            &format!(r#"{{"memberOf": {MEMBER_OF_EXAMPLE}}}"#),
            out,
        )
        .and_then(|f| read_user_filter(&f, out));
    Some(ProviderSettings {
        tenant_id: tenant_id?,
        client_id: client_id?,
        client_secret: client_secret?,
        user_filter: user_filter?,
    })
}

fn read_user_filter(field: &Field, out: &mut Problems) -> Option<UserFilter> {
    let filter = field.object(r#"{"memberOf": ["Telephony"]}"#, out)?;
    filter.refuse_unknown_keys(&["memberOf"], out);
    let groups = filter
        .required("memberOf", MEMBER_OF_EXAMPLE, out)?
        .array(MEMBER_OF_EXAMPLE, out)?;
    if groups == [Value::String(String::new())] {
        return Some(UserFilter::default());
    }
    let path = filter.field_path("memberOf");
    let names: Vec<Option<String>> = groups
        .iter()
        .enumerate()
        .map(|(index, group)| {
            Field::new(format!("{path}[{index}]"), group)
                .text(r#""Telephony" (use [""] alone for every user)"#, out)
                .map(str::to_owned)
        })
        .collect();
    Some(UserFilter {
        member_of: names.into_iter().collect::<Option<_>>()?,
    })
}

fn read_field_mapping(field: &Field, out: &mut Problems) -> Option<FieldMapping> {
    let mapping = field.object(FIELD_MAPPING_EXAMPLE, out)?;
    mapping.refuse_unknown_keys(&FieldMapping::FIELDS, out);
    let mut read = |key: &str| absent_or_valid(mapping.optional(key).map(|f| source_path(&f, out)));
    let (alias, first_name, surname, pstn_fixed) = (
        read("alias"),
        read("first_name"),
        read("surname"),
        read("pstn_fixed"),
    );
    Some(FieldMapping {
        alias: alias?,
        first_name: first_name?,
        surname: surname?,
        pstn_fixed: pstn_fixed?,
    })
}

fn source_path(field: &Field, out: &mut Problems) -> Option<SourcePath> {
    field.parsed(r#""givenName""#, out, SourcePath::parse)
}

fn read_user_field_mapping(field: &Field, out: &mut Problems) -> Option<BTreeMap<String, SourcePath>> {
    let mapping = field.object(r#"{"email": "mail", "attributes.title": "jobTitle"}"#, out)?;
    let mut paths = BTreeMap::new();
    let mut complete = true;
    for (target, value) in mapping.entries() {
        let entry = Field::new(mapping.field_path(target), value);
        if let Err(message) = check_user_field_target(target) {
            out.push(Problem::new(entry.path.clone(), message));
            complete = false;
        }
        match source_path(&entry, out) {
            Some(path) => {
                paths.insert(target.clone(), path);
            }
            None => complete = false,
        }
    }
    complete.then_some(paths)
}

fn read_schedule(field: &Field, out: &mut Problems) -> Option<Schedule> {
    let schedule = field.object(r#"{"at": "02:00", "timezone": "Europe/Stockholm"}"#, out)?;
    schedule.refuse_unknown_keys(&["at", "timezone"], out);
    let defaults = Schedule::default();
    let at = schedule
        .optional("at")
        .map(|f| f.parsed(r#""02:00""#, out, check_hour_minute));
    let timezone = schedule
        .optional("timezone")
        .map(|f| f.parsed(r#""Europe/Stockholm""#, out, check_time_zone));
    Some(Schedule {
        at: at.unwrap_or(Some(defaults.at))?,
        timezone: timezone.unwrap_or(Some(defaults.timezone))?,
    })
}

fn read_pbx(field: &Field, out: &mut Problems) -> Option<PbxOverride> {
    let example = r#"{"api_url": "https://pbx.example/api", "api_token": "…"}"#;
    let pbx = field.object(example, out)?;
    pbx.refuse_unknown_keys(&["api_url", "api_token"], out);
    let api_url = pbx
        .required("api_url", r#""https://pbx.example/api""#, out)
        .and_then(|f| f.parsed(r#""https://pbx.example/api""#, out, check_http_url));
    let api_token = required_text(&pbx, "api_token", r#""<PBX API token>""#, out);
    Some(PbxOverride {
        api_url: api_url?,
        api_token: api_token?,
    })
}

fn read_deletion_guard(field: &Field, out: &mut Problems) -> Option<DeletionGuard> {
    let guard = field.object(r#"{"max_percent": 10, "min_users": 10}"#, out)?;
    guard.refuse_unknown_keys(&["max_percent", "min_users"], out);
    let defaults = DeletionGuard::default();
    let max_percent = guard.optional("max_percent").map(|f| {
        let percent = f.count("10", out)?;
        if percent > 100 {
            out.push(Problem::new(
                f.path.clone(),
                format!("{percent} is not a percentage; give a whole number from 0 to 100, e.g. 10"),
            ));
            return None;
        }
        Some(percent)
    });
    let min_users = guard.optional("min_users").map(|f| f.count("10", out));
    Some(DeletionGuard {
        max_percent: max_percent.unwrap_or(Some(defaults.max_percent))?,
        min_users: min_users.unwrap_or(Some(defaults.min_users))?,
    })
}

fn read_pbx_limits(field: &Field, out: &mut Problems) -> Option<PbxLimits> {
    let example = r#"{"max_in_flight": 8, "requests_per_second": 20}"#;
    let limits = field.object(example, out)?;
    limits.refuse_unknown_keys(&["max_in_flight", "requests_per_second"], out);
    let max_in_flight = limits.optional("max_in_flight").map(|f| {
        let count = f.count("8", out)?;
        if (1..=PbxLimits::MAX_IN_FLIGHT_LIMIT).contains(&count) {
            return Some(count);
        }
        out.push(Problem::new(
            f.path.clone(),
            format!(
                "is {count}; allow 1 to {} calls in flight, e.g. 8",
                PbxLimits::MAX_IN_FLIGHT_LIMIT
            ),
        ));
        None
    });
    let requests_per_second = limits
        .optional("requests_per_second")
        .map(|f| match f.value.as_f64() {
            Some(rate) if rate > 0.0 && rate.is_finite() => Some(rate),
            Some(rate) => {
                out.push(Problem::new(
                    f.path.clone(),
                    format!("is {rate}; give a rate above 0, e.g. 20, or leave the key out for no limit"),
                ));
                None
            }
            None => {
                out.push(Problem::new(
                    f.path.clone(),
                    "must be a number of calls per second, e.g. 20 (without quotes)",
                ));
                None
            }
        });
    Some(PbxLimits {
        max_in_flight: absent_or_valid(max_in_flight)?,
        requests_per_second: absent_or_valid(requests_per_second)?,
    })
}

fn read_country_prefixes(field: &Field, out: &mut Problems) -> Option<Vec<String>> {
    let example = r#"["46"]"#;
    let items = field.array(example, out)?;
    if items.is_empty() {
        out.push(Problem::new(
            field.path.clone(),
            r#"is empty, so every phone number would be refused; list at least one country code, e.g. ["46"]"#,
        ));
        return None;
    }
    let prefixes: Vec<Option<String>> = items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            Field::new(format!("{}[{index}]", field.path), item).parsed(r#""46""#, out, check_country_prefix)
        })
        .collect();
    prefixes.into_iter().collect()
}

fn check_tenant_id(id: &str) -> Result<String, String> {
    let mut chars = id.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if first_ok && rest_ok && id.len() <= 63 {
        Ok(id.to_owned())
    } else {
        Err(format!(
            "\"{id}\" is not a valid tenant id; use 1–63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit, e.g. \"acme\""
        ))
    }
}

/// Simple and strict: one '@', a local part, a dotted domain, no spaces.
pub(crate) fn check_mail_address(address: &str) -> Result<String, String> {
    let valid = match address.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains("..")
                && !address.chars().any(char::is_whitespace)
        }
        None => false,
    };
    if valid {
        Ok(address.to_owned())
    } else {
        Err(format!(
            "\"{address}\" is not a valid mail address; write one address like \"it@acme.example\""
        ))
    }
}

/// A caller id is one of the company's Swedish numbers: 46 and 7–9 digits.
fn check_caller_id(number: &str) -> Result<String, String> {
    let national = number.strip_prefix("46").unwrap_or_default();
    if number.bytes().all(|b| b.is_ascii_digit()) && (7..=9).contains(&national.len()) {
        Ok(number.to_owned())
    } else {
        Err(format!(
            "\"{number}\" is not a caller id; write the number as digits only: 46 then 7–9 digits, without '+' or spaces, e.g. \"46812345600\""
        ))
    }
}

fn check_user_field_target(target: &str) -> Result<(), String> {
    let attribute_ok = |name: &str| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    };
    match target.strip_prefix("attributes.") {
        _ if target == "email" => Ok(()),
        Some(name) if attribute_ok(name) => Ok(()),
        _ => Err(format!(
            "\"{target}\" is not a PBX field that can be mapped; use \"email\" or \"attributes.<name>\" (name of letters, digits, '_', '.', '-'), e.g. \"attributes.mobile\""
        )),
    }
}

fn check_hour_minute(text: &str) -> Result<NaiveTime, String> {
    let refusal =
        || format!("\"{text}\" is not a time of day; write it as HH:MM on a 24-hour clock, e.g. \"02:00\"");
    if text.len() != 5 {
        return Err(refusal());
    }
    NaiveTime::parse_from_str(text, hour_minute::FORMAT).map_err(|_| refusal())
}

fn check_time_zone(name: &str) -> Result<Tz, String> {
    name.parse().map_err(|_| {
        format!("\"{name}\" is not a known IANA time zone; use a name such as \"Europe/Stockholm\"")
    })
}

fn check_date(text: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .filter(|_| text.len() == 10)
        .ok_or_else(|| format!("\"{text}\" is not a date; write it as YYYY-MM-DD, e.g. \"2025-12-31\""))
}

fn check_http_url(text: &str) -> Result<String, String> {
    let refusal = |cause: &str| {
        format!("\"{text}\" {cause}; give the PBX API's base address, e.g. \"https://pbx.example/api\"")
    };
    let url = url::Url::parse(text).map_err(|err| refusal(&format!("is not a URL ({err})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(refusal("must start with http:// or https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(refusal("has no host name"));
    }
    Ok(text.to_owned())
}

fn check_country_prefix(prefix: &str) -> Result<String, String> {
    let digits = prefix.bytes().all(|b| b.is_ascii_digit());
    if digits && (1..=3).contains(&prefix.len()) && !prefix.starts_with('0') {
        Ok(prefix.to_owned())
    } else {
        Err(format!(
            "\"{prefix}\" is not a country code; write 1–3 digits without '+' or leading zeros, e.g. \"46\""
        ))
    }
}
