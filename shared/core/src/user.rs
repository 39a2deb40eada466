//! The fields usersync keeps in step on a PBX user: mapping them from a
//! directory user, and the minimal patch between two versions.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::alias::normalize_alias;
use crate::mapping::SourcePath;
use crate::phone::normalize_phone;
use crate::problem::Problem;
use crate::tenant::TenantConfig;

const EMAIL: &str = "email";
const ATTRIBUTE_PREFIX: &str = "attributes.";

/// The fields usersync keeps in step on a PBX user (what is compared between
/// desired and applied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SyncedFields {
    pub alias: String,
    pub first_name: String,
    pub surname: String,
    pub pstn_fixed: String,
    pub email: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// Maps one Graph user (the merged source attributes) to the synced fields
/// using the tenant's mappings. On failure every problem is listed, each
/// naming the PBX field, the source path and raw value, and the fix.
pub fn map_user(source: &Value, tenant: &TenantConfig) -> Result<SyncedFields, Vec<Problem>> {
    let mut problems = Vec::new();
    let prefixes = &tenant.allowed_country_prefixes;
    let keep = |value: &str| Ok(value.to_owned());
    let alias = required_field(source, tenant, "alias", &mut problems, normalize_alias);
    let first_name = required_field(source, tenant, "first_name", &mut problems, keep);
    let surname = required_field(source, tenant, "surname", &mut problems, keep);
    let pstn_fixed = required_field(source, tenant, "pstn_fixed", &mut problems, |raw| {
        normalize_phone(raw, prefixes)
    });
    let email = mapped_email(source, tenant, &mut problems);
    let attributes = mapped_attributes(source, tenant);

    match (alias, first_name, surname, pstn_fixed, email) {
        (Some(alias), Some(first_name), Some(surname), Some(pstn_fixed), Some(email))
            if problems.is_empty() =>
        {
            Ok(SyncedFields {
                alias,
                first_name,
                surname,
                pstn_fixed,
                email,
                attributes,
            })
        }
        _ => Err(problems),
    }
}

/// A required PBX field read from its mapped source and normalised.
fn required_field(
    source: &Value,
    tenant: &TenantConfig,
    field: &str,
    problems: &mut Vec<Problem>,
    normalise: impl FnOnce(&str) -> Result<String, String>,
) -> Option<String> {
    let (path, raw) = required_source(source, tenant, field, problems)?;
    normalise(&raw)
        .map_err(|reason| problems.push(value_problem(field, path, &raw, &reason)))
        .ok()
}

/// The mapped source path and its value for a required PBX field.
fn required_source<'t>(
    source: &Value,
    tenant: &'t TenantConfig,
    field: &str,
    problems: &mut Vec<Problem>,
) -> Option<(&'t SourcePath, String)> {
    let Some(path) = tenant.field_mapping.get(field) else {
        problems.push(unmapped(field));
        return None;
    };
    match path.resolve(source) {
        Some(raw) => Some((path, raw)),
        None => {
            problems.push(Problem::new(
                field,
                format!("{path} is empty or missing for this user; fill it in Entra ID or map another source field"),
            ));
            None
        }
    }
}

fn unmapped(field: &str) -> Problem {
    Problem::new(
        field,
        format!("no source field is mapped; set field_mapping.{field} in the tenant file"),
    )
}

fn value_problem(field: &str, path: &SourcePath, raw: &str, reason: &str) -> Problem {
    let fix = if field == "pstn_fixed" {
        "fix the number in Entra ID"
    } else {
        "fix the value in Entra ID"
    };
    Problem::new(field, format!("{path} is \"{raw}\": {reason}; {fix}"))
}

/// `Some(None)` when no address is mapped or set; `None` after a problem.
fn mapped_email(
    source: &Value,
    tenant: &TenantConfig,
    problems: &mut Vec<Problem>,
) -> Option<Option<String>> {
    let Some(path) = tenant.user_field_mapping.get(EMAIL) else {
        return Some(None);
    };
    match path.resolve(source) {
        Some(address) if !address.contains('@') => {
            problems.push(value_problem(EMAIL, path, &address, "not a mail address"));
            None
        }
        address => Some(address),
    }
}

fn mapped_attributes(source: &Value, tenant: &TenantConfig) -> BTreeMap<String, String> {
    tenant
        .user_field_mapping
        .iter()
        .filter_map(|(target, path)| {
            let name = target.strip_prefix(ATTRIBUTE_PREFIX)?;
            Some((name.to_owned(), path.resolve(source)?))
        })
        .collect()
}

/// A PATCH body of the differences: only changed fields; attributes carry
/// changed or new keys with their value and removed keys as null; a removed
/// email is null.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FieldPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pstn_fixed: Option<String>,
    /// `Some(None)` clears the address; serialised as `null`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_even_if_null"
    )]
    pub email: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, Option<String>>,
}

/// Keeps an explicit `null` apart from an absent key (which `default` covers).
fn present_even_if_null<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

impl FieldPatch {
    pub fn is_empty(&self) -> bool {
        self == &FieldPatch::default()
    }

    /// The names of the changed fields; attributes as `attributes.<name>`.
    pub fn changed_fields(&self) -> Vec<String> {
        let plain = [
            ("alias", self.alias.is_some()),
            ("first_name", self.first_name.is_some()),
            ("surname", self.surname.is_some()),
            ("pstn_fixed", self.pstn_fixed.is_some()),
            (EMAIL, self.email.is_some()),
        ];
        plain
            .into_iter()
            .filter(|(_, changed)| *changed)
            .map(|(name, _)| name.to_owned())
            .chain(
                self.attributes
                    .keys()
                    .map(|name| format!("{ATTRIBUTE_PREFIX}{name}")),
            )
            .collect()
    }

    /// Applies the patch to `fields`, as the PBX would.
    pub fn apply_to(&self, fields: &mut SyncedFields) {
        let replacements = [
            (&self.alias, &mut fields.alias),
            (&self.first_name, &mut fields.first_name),
            (&self.surname, &mut fields.surname),
            (&self.pstn_fixed, &mut fields.pstn_fixed),
        ];
        for (new, current) in replacements {
            if let Some(new) = new {
                current.clone_from(new);
            }
        }
        if let Some(email) = &self.email {
            fields.email.clone_from(email);
        }
        for (name, value) in &self.attributes {
            match value {
                Some(value) => fields.attributes.insert(name.clone(), value.clone()),
                None => fields.attributes.remove(name),
            };
        }
    }
}

/// The minimal patch that turns `applied` into `desired`.
pub fn diff(applied: &SyncedFields, desired: &SyncedFields) -> FieldPatch {
    FieldPatch {
        alias: changed(&applied.alias, &desired.alias),
        first_name: changed(&applied.first_name, &desired.first_name),
        surname: changed(&applied.surname, &desired.surname),
        pstn_fixed: changed(&applied.pstn_fixed, &desired.pstn_fixed),
        email: changed(&applied.email, &desired.email),
        attributes: attribute_changes(&applied.attributes, &desired.attributes),
    }
}

fn changed<T: PartialEq + Clone>(applied: &T, desired: &T) -> Option<T> {
    (applied != desired).then(|| desired.clone())
}

fn attribute_changes(
    applied: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
) -> BTreeMap<String, Option<String>> {
    let set = desired
        .iter()
        .filter(|(name, value)| applied.get(*name) != Some(*value))
        .map(|(name, value)| (name.clone(), Some(value.clone())));
    let removed = applied
        .keys()
        .filter(|name| !desired.contains_key(*name))
        .map(|name| (name.clone(), None));
    set.chain(removed).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::parse_tenant_file;
    use proptest::prelude::*;
    use serde_json::json;

    fn tenant(field_mapping: Value) -> TenantConfig {
        let file = json!({
            "id": "acme", "name": "Acme AB", "type": "ad_sync", "mode": "user_sync",
            "provider_settings": {"tenant_id": "t", "client_id": "c", "client_secret": "s", "user_filter": {"memberOf": [""]}},
            "pbx_company_id": "acme",
            "field_mapping": field_mapping,
            "user_field_mapping": {"email": "mail", "attributes.mobile": "mobilePhone", "attributes.title": "jobTitle"},
        });
        parse_tenant_file(&file.to_string()).expect("valid tenant")
    }

    fn complete_tenant() -> TenantConfig {
        tenant(
            json!({"alias": "mailNickname", "first_name": "givenName", "surname": "surname", "pstn_fixed": "businessPhones[0]"}),
        )
    }

    fn graph_user() -> Value {
        json!({
            "id": "u1",
            "mailNickname": "Åsa.Öberg",
            "givenName": "Åsa",
            "surname": "Öberg",
            "businessPhones": ["+46 (0)8 12345678"],
            "mail": "asa.oberg@acme.example",
            "mobilePhone": "070-123 45 67",
            "jobTitle": null,
        })
    }

    fn problems_for(user: &Value, tenant: &TenantConfig) -> Vec<Problem> {
        map_user(user, tenant).expect_err("should be refused")
    }

    #[test]
    fn maps_a_complete_user() {
        let fields = map_user(&graph_user(), &complete_tenant()).expect("maps");
        assert_eq!(
            fields,
            SyncedFields {
                alias: "asa.oberg".into(),
                first_name: "Åsa".into(),
                surname: "Öberg".into(),
                pstn_fixed: "46812345678".into(),
                email: Some("asa.oberg@acme.example".into()),
                attributes: BTreeMap::from([("mobile".into(), "070-123 45 67".into())]),
            }
        );
    }

    #[test]
    fn a_foreign_number_is_reported_with_path_value_and_fix() {
        let mut user = graph_user();
        user["businessPhones"] = json!(["+1 425 555 0109"]);
        let found = problems_for(&user, &complete_tenant());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].field, "pstn_fixed");
        assert_eq!(
            found[0].message,
            "businessPhones[0] is \"+1 425 555 0109\": not a Swedish number (country code +1; allowed prefixes: 46); fix the number in Entra ID"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let user = json!({"mailNickname": "!!!", "givenName": "Åsa", "mail": "nobody", "businessPhones": []});
        let fields: Vec<String> = problems_for(&user, &complete_tenant())
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(fields, ["alias", "surname", "pstn_fixed", "email"]);
    }

    #[test]
    fn a_missing_value_names_the_source_path() {
        let mut user = graph_user();
        user["givenName"] = Value::Null;
        let found = problems_for(&user, &complete_tenant());
        assert_eq!(found[0].field, "first_name");
        assert!(
            found[0].message.starts_with("givenName is empty or missing"),
            "{}",
            found[0].message
        );
        assert!(
            found[0].message.contains("fill it in Entra ID"),
            "{}",
            found[0].message
        );
    }

    #[test]
    fn an_unmapped_required_field_is_a_problem() {
        let found = problems_for(
            &graph_user(),
            &tenant(json!({"alias": "mailNickname", "first_name": "givenName", "surname": "surname"})),
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].field, "pstn_fixed");
        assert!(
            found[0].message.contains("set field_mapping.pstn_fixed"),
            "{}",
            found[0].message
        );
    }

    #[test]
    fn absent_email_and_attributes_are_left_out() {
        let mut user = graph_user();
        user["mail"] = Value::Null;
        user.as_object_mut().map(|u| u.remove("mobilePhone"));
        let fields = map_user(&user, &complete_tenant()).expect("maps");
        assert_eq!(fields.email, None);
        assert!(fields.attributes.is_empty());
    }

    fn fields(alias: &str, email: Option<&str>, attributes: &[(&str, &str)]) -> SyncedFields {
        SyncedFields {
            alias: alias.into(),
            first_name: "Åsa".into(),
            surname: "Öberg".into(),
            pstn_fixed: "46812345678".into(),
            email: email.map(str::to_owned),
            attributes: attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn diff_holds_only_the_changes() {
        let applied = fields("asa", Some("a@x.se"), &[("title", "CEO"), ("mobile", "1")]);
        let desired = fields("asa.oberg", None, &[("title", "CTO"), ("room", "12")]);
        let patch = diff(&applied, &desired);
        assert_eq!(
            patch.changed_fields(),
            [
                "alias",
                "email",
                "attributes.mobile",
                "attributes.room",
                "attributes.title"
            ]
        );
        assert_eq!(
            serde_json::to_value(&patch).expect("serialise"),
            json!({"alias": "asa.oberg", "email": null, "attributes": {"title": "CTO", "room": "12", "mobile": null}})
        );
    }

    #[test]
    fn patch_serde_keeps_a_cleared_email_apart_from_an_unchanged_one() {
        let cleared = FieldPatch {
            email: Some(None),
            ..FieldPatch::default()
        };
        let text = serde_json::to_string(&cleared).expect("serialise");
        assert_eq!(text, r#"{"email":null}"#);
        assert_eq!(serde_json::from_str::<FieldPatch>(&text).expect("parse"), cleared);
        assert_eq!(
            serde_json::from_str::<FieldPatch>("{}").expect("parse"),
            FieldPatch::default()
        );
    }

    const FIELDS_REPORTED: [&str; 5] = ["alias", "first_name", "surname", "pstn_fixed", "email"];

    fn arb_fields() -> impl Strategy<Value = SyncedFields> {
        let text = "[a-c]{0,2}";
        (
            text,
            text,
            text,
            text,
            proptest::option::of(text),
            proptest::collection::btree_map("[a-c]{1,2}", text, 0..4),
        )
            .prop_map(
                |(alias, first_name, surname, pstn_fixed, email, attributes)| SyncedFields {
                    alias,
                    first_name,
                    surname,
                    pstn_fixed,
                    email,
                    attributes,
                },
            )
    }

    proptest! {
        #[test]
        fn applying_the_diff_gives_the_desired_fields(applied in arb_fields(), desired in arb_fields()) {
            let patch = diff(&applied, &desired);
            let mut patched = applied.clone();
            patch.apply_to(&mut patched);
            prop_assert_eq!(patched, desired.clone());
            prop_assert_eq!(patch.is_empty(), applied == desired);
        }

        #[test]
        fn a_diff_with_itself_is_empty(fields in arb_fields()) {
            let patch = diff(&fields, &fields);
            prop_assert!(patch.is_empty());
            prop_assert!(patch.changed_fields().is_empty());
        }

        #[test]
        fn a_diff_applied_twice_changes_nothing_more(applied in arb_fields(), desired in arb_fields()) {
            let mut once = applied.clone();
            diff(&applied, &desired).apply_to(&mut once);
            let mut twice = once.clone();
            diff(&applied, &desired).apply_to(&mut twice);
            prop_assert_eq!(&once, &twice);
            prop_assert!(diff(&once, &desired).is_empty());
        }

        #[test]
        fn mapping_is_deterministic_and_every_refusal_has_a_reason(
            nickname in "\\PC{0,20}",
            given in proptest::option::of("\\PC{0,10}"),
            phone in prop_oneof![Just("08-123 456 78".to_owned()), Just("+1 425 555 0109".to_owned()), "[0-9 +()-]{0,14}"],
            mail in proptest::option::of("[a-z@.]{0,10}"),
        ) {
            let user = json!({"mailNickname": nickname, "givenName": given, "surname": "Ek",
                              "businessPhones": [phone], "mail": mail});
            let tenant = complete_tenant();
            let first = map_user(&user, &tenant);
            prop_assert_eq!(&first, &map_user(&user.clone(), &tenant));
            if let Err(problems) = first {
                prop_assert!(!problems.is_empty());
                for problem in problems {
                    prop_assert!(FIELDS_REPORTED.contains(&problem.field.as_str()), "{}", problem);
                    prop_assert!(problem.message.contains("Entra ID") || problem.message.contains("tenant file"), "{}", problem);
                }
            }
        }

        #[test]
        fn patches_survive_a_json_round_trip(applied in arb_fields(), desired in arb_fields()) {
            let patch = diff(&applied, &desired);
            let text = serde_json::to_string(&patch).expect("serialise");
            prop_assert_eq!(serde_json::from_str::<FieldPatch>(&text).expect("parse"), patch);
        }
    }
}
