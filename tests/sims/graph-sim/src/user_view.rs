//! How users look on the wire: which properties exist and how a `$select`
//! projects a stored user into a Graph object.

use serde_json::{json, Map, Value};

use crate::directory::{Props, UserRecord};

/// What Graph returns when no `$select` is given.
pub const DEFAULT_USER_SELECT: &[&str] = &[
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
];

const USER_PROPERTIES: &[&str] = &[
    "id",
    "accountEnabled",
    "businessPhones",
    "city",
    "companyName",
    "country",
    "department",
    "displayName",
    "employeeId",
    "employeeType",
    "givenName",
    "jobTitle",
    "mail",
    "mailNickname",
    "mobilePhone",
    "officeLocation",
    "onPremisesExtensionAttributes",
    "onPremisesSamAccountName",
    "otherMails",
    "preferredLanguage",
    "surname",
    "usageLocation",
    "userPrincipalName",
    "userType",
];

/// Standard properties, plus any directory extension `extension_{appId}_{name}`.
pub fn is_user_property(name: &str) -> bool {
    USER_PROPERTIES.contains(&name) || is_directory_extension(name)
}

fn is_directory_extension(name: &str) -> bool {
    name.strip_prefix("extension_")
        .and_then(|rest| rest.split_once('_'))
        .is_some_and(|(app, prop)| !app.is_empty() && !prop.is_empty())
}

fn user_id(props: &Props) -> Value {
    props.get("id").cloned().unwrap_or(Value::Null)
}

/// The whole user as selected: unset standard properties come as `null`,
/// unset directory extensions are left out (as Graph does).
pub fn project_full(props: &Props, select: &[String]) -> Value {
    let mut object = Map::new();
    object.insert("id".into(), user_id(props));
    for name in select.iter().filter(|n| n.as_str() != "id") {
        match props.get(name) {
            Some(value) => {
                object.insert(name.clone(), value.clone());
            }
            None if !is_directory_extension(name) => {
                object.insert(name.clone(), Value::Null);
            }
            None => {}
        }
    }
    Value::Object(object)
}

/// `id` plus the selected properties changed after `since` (cleared ones as
/// explicit `null`); `None` when no selected property changed.
pub fn project_changes(user: &UserRecord, since: u64, select: &[String]) -> Option<Value> {
    let mut object = Map::new();
    for name in user
        .changed_after(since)
        .filter(|n| select.iter().any(|s| s == n))
    {
        let value = user.props.get(name).cloned().unwrap_or(Value::Null);
        object.insert(name.to_owned(), value);
    }
    if object.is_empty() {
        return None;
    }
    object.insert("id".into(), user_id(&user.props));
    Some(Value::Object(object))
}

/// A removal entry: `reason` is `changed` (soft delete) or `deleted` (gone for good).
pub fn removed(id: &str, reason: &str) -> Value {
    json!({"id": id, "@removed": {"reason": reason}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_nulls_unset_standard_properties_only() {
        let props = match json!({"id": "u1", "displayName": "Åsa"}) {
            Value::Object(map) => map,
            _ => Props::new(),
        };
        let select = vec![
            "displayName".to_owned(),
            "mobilePhone".to_owned(),
            "extension_abc_costCenter".to_owned(),
        ];
        assert_eq!(
            project_full(&props, &select),
            json!({"id": "u1", "displayName": "Åsa", "mobilePhone": null})
        );
    }

    #[test]
    fn directory_extensions_are_known_properties() {
        assert!(is_user_property("extension_b7a1_costCenter"));
        assert!(!is_user_property("extension_"));
        assert!(!is_user_property("favouriteColour"));
    }
}
