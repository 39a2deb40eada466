//! The PBX user object and the parsing/validation of POST and PATCH bodies.
//!
//! Structural problems (not an object, unknown field, wrong JSON type) are
//! `400 bad_request`; values that break a rule are `422 validation`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Every field a client may write; anything else in a body is a 400.
const WRITABLE_FIELDS: [&str; 9] = [
    "alias",
    "first_name",
    "surname",
    "pstn_fixed",
    "email",
    "caller_id",
    "template",
    "external_id",
    "attributes",
];

const ALIAS_MAX_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: String,
    pub alias: String,
    pub first_name: String,
    pub surname: String,
    pub pstn_fixed: String,
    pub email: Option<String>,
    pub caller_id: Option<String>,
    pub template: Option<String>,
    pub external_id: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The writable fields of a user about to be created, already validated
/// (except for references to company templates and numbers).
#[derive(Debug, Clone)]
pub struct NewUser {
    pub alias: String,
    pub first_name: String,
    pub surname: String,
    pub pstn_fixed: String,
    pub email: Option<String>,
    pub caller_id: Option<String>,
    pub template: Option<String>,
    pub external_id: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// A PATCH body: `None` leaves a field alone, `Some(None)` clears a nullable
/// field, and an attribute mapped to `None` is removed.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub alias: Option<String>,
    pub first_name: Option<String>,
    pub surname: Option<String>,
    pub pstn_fixed: Option<String>,
    pub email: Option<Option<String>>,
    pub caller_id: Option<Option<String>>,
    pub template: Option<Option<String>>,
    pub external_id: Option<Option<String>>,
    pub attributes: BTreeMap<String, Option<String>>,
}

impl User {
    pub fn create(id: String, fields: NewUser, now: DateTime<Utc>) -> Self {
        Self {
            id,
            alias: fields.alias,
            first_name: fields.first_name,
            surname: fields.surname,
            pstn_fixed: fields.pstn_fixed,
            email: fields.email,
            caller_id: fields.caller_id,
            template: fields.template,
            external_id: fields.external_id,
            attributes: fields.attributes,
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }

    /// A copy with the patch applied; version and timestamps are untouched.
    pub fn patched(&self, patch: &UserPatch) -> Self {
        let mut user = self.clone();
        overwrite(&mut user.alias, &patch.alias);
        overwrite(&mut user.first_name, &patch.first_name);
        overwrite(&mut user.surname, &patch.surname);
        overwrite(&mut user.pstn_fixed, &patch.pstn_fixed);
        overwrite(&mut user.email, &patch.email);
        overwrite(&mut user.caller_id, &patch.caller_id);
        overwrite(&mut user.template, &patch.template);
        overwrite(&mut user.external_id, &patch.external_id);
        for (key, value) in &patch.attributes {
            match value {
                Some(value) => user.attributes.insert(key.clone(), value.clone()),
                None => user.attributes.remove(key),
            };
        }
        user
    }
}

fn overwrite<T: Clone>(target: &mut T, replacement: &Option<T>) {
    if let Some(value) = replacement {
        *target = value.clone();
    }
}

/// Parses a request body into a JSON object holding only writable fields.
pub fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_request(format!("malformed JSON: {error}")))?;
    let Value::Object(object) = value else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    if let Some(unknown) = object.keys().find(|key| !WRITABLE_FIELDS.contains(&key.as_str())) {
        return Err(ApiError::bad_field(unknown, format!("unknown field `{unknown}`")));
    }
    Ok(object)
}

impl NewUser {
    pub fn from_object(object: &Map<String, Value>) -> Result<Self, ApiError> {
        Ok(Self {
            alias: required(object, "alias")?,
            first_name: required(object, "first_name")?,
            surname: required(object, "surname")?,
            pstn_fixed: required(object, "pstn_fixed")?,
            email: optional(object, "email")?.flatten(),
            caller_id: optional(object, "caller_id")?.flatten(),
            template: optional(object, "template")?.flatten(),
            external_id: optional(object, "external_id")?.flatten(),
            attributes: attribute_changes(object)?
                .into_iter()
                .filter_map(|(key, value)| Some((key, value?)))
                .collect(),
        })
    }
}

impl UserPatch {
    pub fn from_object(object: &Map<String, Value>) -> Result<Self, ApiError> {
        Ok(Self {
            alias: non_null(object, "alias")?,
            first_name: non_null(object, "first_name")?,
            surname: non_null(object, "surname")?,
            pstn_fixed: non_null(object, "pstn_fixed")?,
            email: optional(object, "email")?,
            caller_id: optional(object, "caller_id")?,
            template: optional(object, "template")?,
            external_id: optional(object, "external_id")?,
            attributes: attribute_changes(object)?,
        })
    }
}

/// A string field as it appears in a body: absent, `null`, or text.
enum Slot<'a> {
    Absent,
    Null,
    Text(&'a str),
}

fn slot<'a>(object: &'a Map<String, Value>, field: &str) -> Result<Slot<'a>, ApiError> {
    match object.get(field) {
        None => Ok(Slot::Absent),
        Some(Value::Null) => Ok(Slot::Null),
        Some(Value::String(text)) => Ok(Slot::Text(text)),
        Some(_) => Err(ApiError::bad_field(field, format!("{field} must be a string"))),
    }
}

/// A field that must be present and non-null (POST).
fn required(object: &Map<String, Value>, field: &str) -> Result<String, ApiError> {
    match slot(object, field)? {
        Slot::Text(text) => normalise(field, text),
        Slot::Absent | Slot::Null => Err(ApiError::validation(field, format!("{field} is required"))),
    }
}

/// A field that may be absent but never null (PATCH of a required field).
fn non_null(object: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match slot(object, field)? {
        Slot::Absent => Ok(None),
        Slot::Null => Err(ApiError::validation(field, format!("{field} cannot be null"))),
        Slot::Text(text) => normalise(field, text).map(Some),
    }
}

/// A nullable field: `None` when absent, `Some(None)` when null.
fn optional(object: &Map<String, Value>, field: &str) -> Result<Option<Option<String>>, ApiError> {
    match slot(object, field)? {
        Slot::Absent => Ok(None),
        Slot::Null => Ok(Some(None)),
        Slot::Text(text) => normalise(field, text).map(|value| Some(Some(value))),
    }
}

/// The `attributes` object as key → new value (`None` = remove the key).
fn attribute_changes(object: &Map<String, Value>) -> Result<BTreeMap<String, Option<String>>, ApiError> {
    let attributes = match object.get("attributes") {
        None => return Ok(BTreeMap::new()),
        Some(Value::Object(attributes)) => attributes,
        Some(_) => {
            return Err(ApiError::bad_field(
                "attributes",
                "attributes must be an object of strings",
            ))
        }
    };
    attributes
        .iter()
        .map(|(key, value)| {
            if key.is_empty() {
                return Err(ApiError::validation(
                    "attributes",
                    "attribute names must not be empty",
                ));
            }
            match value {
                Value::Null => Ok((key.clone(), None)),
                Value::String(text) => Ok((key.clone(), Some(text.clone()))),
                _ => Err(ApiError::bad_field(
                    "attributes",
                    format!("attribute `{key}` must be a string or null"),
                )),
            }
        })
        .collect()
}

/// Applies the per-field rule to a given value, returning what is stored.
fn normalise(field: &str, value: &str) -> Result<String, ApiError> {
    match field {
        "alias" => normalise_alias(value),
        "first_name" | "surname" => non_blank(field, value),
        "pstn_fixed" => check_pstn(value),
        "external_id" | "caller_id" | "template" => non_empty(field, value),
        _ => Ok(value.to_owned()),
    }
}

fn normalise_alias(value: &str) -> Result<String, ApiError> {
    let alias = value.to_lowercase();
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
    if alias.is_empty() || alias.len() > ALIAS_MAX_LEN || !alias.chars().all(allowed) {
        return Err(ApiError::validation(
            "alias",
            "alias must be 1-64 characters of a-z, 0-9, '.', '_' or '-'",
        ));
    }
    Ok(alias)
}

fn non_blank(field: &str, value: &str) -> Result<String, ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::validation(field, format!("{field} must not be empty")));
    }
    Ok(value.to_owned())
}

fn non_empty(field: &str, value: &str) -> Result<String, ApiError> {
    if value.is_empty() {
        return Err(ApiError::validation(
            field,
            format!("{field} must not be empty; use null"),
        ));
    }
    Ok(value.to_owned())
}

/// E.164 without `+`: Swedish numbers are `46` plus 7–9 digits, others 8–15 digits.
fn check_pstn(value: &str) -> Result<String, ApiError> {
    let digits_only = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    let length_ok = match value.strip_prefix("46") {
        Some(national) => (7..=9).contains(&national.len()),
        None => (8..=15).contains(&value.len()),
    };
    if !digits_only || !length_ok {
        return Err(ApiError::validation(
            "pstn_fixed",
            "pstn_fixed must be digits only in E.164 without '+' (Swedish: 46 then 7-9 digits)",
        ));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(object) => object,
            other => panic!("not an object: {other}"),
        }
    }

    fn minimal() -> Value {
        json!({"alias": "Anna.B", "first_name": "Anna", "surname": "B", "pstn_fixed": "46812345678"})
    }

    #[test]
    fn alias_is_lower_cased() {
        let user = NewUser::from_object(&object(minimal())).expect("valid");
        assert_eq!(user.alias, "anna.b");
    }

    #[test]
    fn pstn_rules() {
        assert!(check_pstn("4681234567").is_ok());
        assert!(check_pstn("46812345").is_err(), "Swedish with 6 digits");
        assert!(check_pstn("4681234567890").is_err(), "Swedish with 11 digits");
        assert!(check_pstn("4412345678").is_ok());
        assert!(check_pstn("1234567").is_err(), "too short");
        assert!(check_pstn("+46812345678").is_err(), "plus sign");
        assert!(check_pstn("4681234 567").is_err(), "space");
    }

    #[test]
    fn alias_rules() {
        assert!(normalise_alias(&"a".repeat(64)).is_ok());
        assert!(normalise_alias(&"a".repeat(65)).is_err());
        assert!(normalise_alias("").is_err());
        assert!(normalise_alias("anna björk").is_err());
        assert_eq!(normalise_alias("A_b-C.9").ok().as_deref(), Some("a_b-c.9"));
    }

    #[test]
    fn unknown_field_is_bad_request() {
        let error = parse_body(br#"{"alias":"a","nickname":"x"}"#).expect_err("unknown field");
        assert_eq!(error, ApiError::bad_field("nickname", "unknown field `nickname`"));
    }

    #[test]
    fn missing_required_field_is_validation() {
        let mut body = minimal();
        body.as_object_mut().map(|o| o.remove("surname"));
        let error = NewUser::from_object(&object(body)).expect_err("missing surname");
        assert_eq!(error, ApiError::validation("surname", "surname is required"));
    }

    #[test]
    fn patch_distinguishes_absent_null_and_value() {
        let patch = UserPatch::from_object(&object(json!({
            "email": null,
            "caller_id": "46812345600",
            "attributes": {"dept": "Sales", "old": null}
        })))
        .expect("valid patch");
        assert_eq!(patch.email, Some(None));
        assert_eq!(patch.caller_id, Some(Some("46812345600".into())));
        assert_eq!(patch.template, None);
        assert_eq!(patch.attributes.get("old"), Some(&None));
        assert_eq!(patch.attributes.get("dept"), Some(&Some("Sales".into())));
    }

    #[test]
    fn patch_cannot_null_a_required_field() {
        let error =
            UserPatch::from_object(&object(json!({"first_name": null}))).expect_err("null first_name");
        assert_eq!(
            error,
            ApiError::validation("first_name", "first_name cannot be null")
        );
    }
}
