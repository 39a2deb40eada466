use serde_json::{json, Map, Value};

use super::*;
use crate::problem::Problem;

const PORTAL_EXAMPLE_GROUPS: &str = r#"{"tenant_id":"id123","client_id":"id123","client_secret":"hidden","user_filter":{"memberOf":["group1","group2"]}}"#;
const PORTAL_EXAMPLE_EVERYONE: &str =
    r#"{"tenant_id":"id123","client_id":"id123","client_secret":"hidden","user_filter":{"memberOf":[""]}}"#;

fn full_example() -> Value {
    json!({
        "id": "acme",
        "name": "Acme AB",
        "type": "ad_sync",
        "mode": "user_sync",
        "welcome_mail": true,
        "welcome_mail_copy_to": "pbx-admin@acme.example",
        "delete_after_days": 7,
        "error_notification_email": "it@acme.example",
        "error_notification_level": "warning",
        "provider_settings": {"tenant_id":"t-1","client_id":"c-1","client_secret":"s3cret","user_filter":{"memberOf":["Telephony"]}},
        "pbx_company_id": "acme",
        "default_caller_id": "46812345600",
        "default_template": "standard",
        "field_mapping": {"alias": "mailNickname", "first_name": "givenName", "surname": "surname", "pstn_fixed": "businessPhones[0]"},
        "user_field_mapping": {"email": "mail", "attributes.mobile": "mobilePhone", "attributes.title": "jobTitle"},
        "schedule": {"at": "02:00", "timezone": "Europe/Stockholm"}
    })
}

fn minimal_example() -> Value {
    json!({
        "id": "acme",
        "name": "Acme AB",
        "type": "ad_sync",
        "mode": "pause",
        "provider_settings": PORTAL_EXAMPLE_GROUPS,
        "pbx_company_id": "acme",
        "field_mapping": {}
    })
}

/// The full example with one change applied to its top-level object.
fn edited(change: impl FnOnce(&mut Map<String, Value>)) -> String {
    let mut document = full_example();
    if let Value::Object(map) = &mut document {
        change(map);
    }
    document.to_string()
}

fn set(key: &str, value: Value) -> String {
    edited(|map| {
        map.insert(key.to_owned(), value);
    })
}

fn set_in(object: &str, key: &str, value: Value) -> String {
    edited(|map| {
        if let Some(Value::Object(inner)) = map.get_mut(object) {
            inner.insert(key.to_owned(), value);
        }
    })
}

fn parse_ok(text: &str) -> TenantConfig {
    match parse_tenant_file(text) {
        Ok(config) => config,
        Err(problems) => panic!("refused: {problems:#?}"),
    }
}

fn problems(text: &str) -> Vec<Problem> {
    parse_tenant_file(text).expect_err("the file should be refused")
}

/// Asserts a problem names `field` and its message carries `fix` (the part
/// that tells the operator what to do).
fn assert_refused(text: &str, field: &str, fix: &str) {
    let found = problems(text);
    assert!(
        found.iter().any(|p| p.field == field && p.message.contains(fix)),
        "expected a problem on {field} suggesting {fix:?}, got {found:#?}"
    );
}

#[test]
fn accepts_the_documented_example() {
    let config = parse_ok(&full_example().to_string());
    assert_eq!(config.id, "acme");
    assert_eq!(config.kind, TenantType::AdSync);
    assert_eq!(config.mode, Mode::UserSync);
    assert!(config.welcome_mail);
    assert_eq!(config.error_notification_level, NotificationLevel::Warning);
    assert_eq!(config.provider_settings.user_filter.member_of, ["Telephony"]);
    assert!(config.field_mapping.is_complete());
    assert_eq!(config.user_field_mapping.len(), 3);
    assert_eq!(config.schedule, Schedule::default());
}

#[test]
fn fills_defaults_for_absent_optional_fields() {
    let config = parse_ok(&minimal_example().to_string());
    assert!(!config.welcome_mail);
    assert_eq!(config.delete_after_days, 7);
    assert_eq!(config.error_notification_level, NotificationLevel::Error);
    assert_eq!(config.schedule.at.format("%H:%M").to_string(), "02:00");
    assert_eq!(config.schedule.timezone, chrono_tz::Europe::Stockholm);
    assert_eq!(config.allowed_country_prefixes, ["46"]);
    assert_eq!(config.pbx, None);
    assert!(config.user_field_mapping.is_empty());
}

#[test]
fn accepts_portal_example_with_groups_as_a_string() {
    let config = parse_ok(&set("provider_settings", json!(PORTAL_EXAMPLE_GROUPS)));
    let settings = &config.provider_settings;
    assert_eq!(settings.tenant_id, "id123");
    assert_eq!(settings.client_id, "id123");
    assert_eq!(settings.client_secret, "hidden");
    assert_eq!(settings.user_filter.member_of, ["group1", "group2"]);
}

#[test]
fn accepts_portal_example_without_groups_as_a_string() {
    let config = parse_ok(&set("provider_settings", json!(PORTAL_EXAMPLE_EVERYONE)));
    assert!(config.provider_settings.user_filter.member_of.is_empty());
    assert!(config.provider_settings.user_filter.syncs_everyone());
}

#[test]
fn accepts_an_empty_group_list_as_everyone() {
    let config = parse_ok(&set_in(
        "provider_settings",
        "user_filter",
        json!({"memberOf": []}),
    ));
    assert!(config.provider_settings.user_filter.syncs_everyone());
}

#[test]
fn accepts_an_incomplete_field_mapping() {
    let config = parse_ok(&set(
        "field_mapping",
        json!({"first_name": "givenName", "surname": null}),
    ));
    assert!(!config.field_mapping.is_complete());
    assert_eq!(config.field_mapping.missing(), ["alias", "surname", "pstn_fixed"]);
}

#[test]
fn accepts_the_optional_extras() {
    let config = parse_ok(&edited(|map| {
        map.insert(
            "pbx".into(),
            json!({"api_url": "https://pbx.example/api", "api_token": "tok"}),
        );
        map.insert("client_secret_expires_at".into(), json!("2025-12-31"));
        map.insert("allowed_country_prefixes".into(), json!(["46", "47"]));
        map.insert("delete_after_days".into(), json!(0));
        map.insert("schedule".into(), json!({"timezone": "UTC"}));
    }));
    assert_eq!(config.pbx.as_ref().map(|p| p.api_token.as_str()), Some("tok"));
    assert_eq!(
        config.client_secret_expires_at,
        NaiveDate::from_ymd_opt(2025, 12, 31)
    );
    assert_eq!(config.allowed_country_prefixes, ["46", "47"]);
    assert_eq!(config.delete_after_days, 0);
    assert_eq!(config.schedule.timezone, chrono_tz::UTC);
    assert_eq!(config.schedule.at, Schedule::default().at);
}

#[test]
fn serialised_config_parses_back_to_itself() {
    let config = parse_ok(&edited(|map| {
        map.insert(
            "pbx".into(),
            json!({"api_url": "http://127.0.0.1:8082", "api_token": "tok"}),
        );
        map.insert("client_secret_expires_at".into(), json!("2026-03-01"));
    }));
    let text = serde_json::to_string(&config).expect("serialise");
    assert_eq!(parse_ok(&text), config);
    let via_serde: TenantConfig = serde_json::from_str(&text).expect("deserialise");
    assert_eq!(via_serde, config);
}

#[test]
fn masked_hides_every_secret() {
    let config = parse_ok(&set(
        "pbx",
        json!({"api_url": "https://pbx.example", "api_token": "tok"}),
    ));
    let masked = config.masked();
    assert_eq!(masked.provider_settings.client_secret, MASK);
    assert_eq!(masked.pbx.as_ref().map(|p| p.api_token.as_str()), Some(MASK));
    assert_eq!(
        masked.provider_settings.client_id,
        config.provider_settings.client_id
    );
    let shown = serde_json::to_string(&masked).expect("serialise");
    assert!(!shown.contains("s3cret") && !shown.contains("\"tok\""), "{shown}");
}

#[test]
fn debug_output_hides_every_secret() {
    let config = parse_ok(&set(
        "pbx",
        json!({"api_url": "https://pbx.example", "api_token": "tok"}),
    ));
    let debug = format!("{config:?}");
    assert!(!debug.contains("s3cret") && !debug.contains("\"tok\""), "{debug}");
    assert!(debug.contains(MASK));
}

#[test]
fn mapped_source_paths_cover_both_mappings_without_repeats() {
    let config = parse_ok(&set_in(
        "user_field_mapping",
        "attributes.nick",
        json!("mailNickname"),
    ));
    let paths: Vec<&str> = config.mapped_source_paths().iter().map(|p| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "businessPhones[0]",
            "givenName",
            "jobTitle",
            "mail",
            "mailNickname",
            "mobilePhone",
            "surname"
        ]
    );
}

#[test]
fn notification_levels_order_from_fewest_mails() {
    assert!(NotificationLevel::Error < NotificationLevel::Warning);
    assert!(NotificationLevel::Warning < NotificationLevel::Info);
}

#[test]
fn collects_every_problem_not_just_the_first() {
    let text = edited(|map| {
        map.remove("id");
        map.insert("mode".into(), json!("sync"));
        map.insert("delete_after_days".into(), json!(-1));
        map.insert(
            "schedule".into(),
            json!({"at": "2am", "timezone": "Mars/Olympus"}),
        );
    });
    let fields: Vec<String> = problems(&text).into_iter().map(|p| p.field).collect();
    for expected in [
        "id",
        "mode",
        "delete_after_days",
        "schedule.at",
        "schedule.timezone",
    ] {
        assert!(
            fields.iter().any(|f| f == expected),
            "{expected} missing from {fields:?}"
        );
    }
}

// ---- refusals: each names the field and says how to fix it ----

#[test]
fn refuses_broken_json_with_its_position() {
    let found = problems("{\n  \"id\": \"acme\",\n  \"name\" \"Acme\"\n}");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].field, "tenant file");
    assert!(
        found[0].message.contains("line 3, column"),
        "{}",
        found[0].message
    );
    assert!(
        found[0].message.contains("fix the syntax"),
        "{}",
        found[0].message
    );
}

#[test]
fn refuses_a_top_level_that_is_not_an_object() {
    assert_refused("[1, 2]", "tenant file", "wrap the settings in { }");
}

#[test]
fn refuses_unknown_top_level_keys_suggesting_the_spelling() {
    assert_refused(
        &set("delete_after_day", json!(7)),
        "delete_after_day",
        "did you mean \"delete_after_days\"",
    );
    assert_refused(&set("colour", json!("red")), "colour", "remove it");
}

#[test]
fn refuses_each_missing_required_key() {
    for key in [
        "id",
        "name",
        "type",
        "mode",
        "provider_settings",
        "pbx_company_id",
        "field_mapping",
    ] {
        let text = edited(|map| {
            map.remove(key);
        });
        assert_refused(&text, key, &format!("add it, e.g. \"{key}\":"));
    }
}

#[test]
fn refuses_null_for_a_required_key() {
    assert_refused(&set("name", Value::Null), "name", "add it");
}

#[test]
fn refuses_a_tenant_id_with_capitals_or_spaces() {
    assert_refused(&set("id", json!("Acme")), "id", "a-z, 0-9");
    assert_refused(&set("id", json!("a".repeat(64))), "id", "1–63 characters");
}

#[test]
fn refuses_wrong_types() {
    assert_refused(
        &set("name", json!(42)),
        "name",
        "must be a string, not a number; write it like",
    );
    assert_refused(
        &set("welcome_mail", json!("yes")),
        "welcome_mail",
        "true (without quotes)",
    );
    assert_refused(
        &set("field_mapping", json!("givenName")),
        "field_mapping",
        "must be an object",
    );
}

#[test]
fn refuses_surrounding_spaces() {
    assert_refused(&set("name", json!(" Acme AB")), "name", "remove them");
}

#[test]
fn refuses_control_characters() {
    assert_refused(&set("name", json!("Acme\nAB")), "name", "remove it");
}

#[test]
fn refuses_empty_required_strings() {
    assert_refused(
        &set("pbx_company_id", json!("")),
        "pbx_company_id",
        "give a value",
    );
}

#[test]
fn refuses_unknown_type() {
    assert_refused(&set("type", json!("ldap_sync")), "type", "use one of \"ad_sync\"");
}

#[test]
fn refuses_unknown_mode() {
    assert_refused(
        &set("mode", json!("UserSync")),
        "mode",
        "\"pause\", \"user_sync\", \"new_users_only\"",
    );
}

#[test]
fn refuses_unknown_notification_level() {
    assert_refused(
        &set("error_notification_level", json!("debug")),
        "error_notification_level",
        "\"error\", \"warning\", \"info\"",
    );
}

#[test]
fn refuses_negative_delete_after_days() {
    assert_refused(
        &set("delete_after_days", json!(-3)),
        "delete_after_days",
        "whole number of 0 or more",
    );
}

#[test]
fn refuses_fractional_delete_after_days() {
    assert_refused(
        &set("delete_after_days", json!(1.5)),
        "delete_after_days",
        "whole number of 0 or more",
    );
    assert_refused(
        &set("delete_after_days", json!("7")),
        "delete_after_days",
        "must be a whole number",
    );
}

#[test]
fn refuses_a_caller_id_that_is_not_swedish_digits() {
    for bad in [
        "+46812345600",
        "4681234",
        "0812345600",
        "468123456001",
        "46 8 1234560",
    ] {
        assert_refused(
            &set("default_caller_id", json!(bad)),
            "default_caller_id",
            "46 then 7–9 digits",
        );
    }
}

#[test]
fn refuses_malformed_mail_addresses() {
    for bad in [
        "it.acme.example",
        "@acme.example",
        "it@acme",
        "it@@acme.example",
        "it@acme..example",
        "i t@acme.example",
    ] {
        assert_refused(
            &set("error_notification_email", json!(bad)),
            "error_notification_email",
            "write one address like",
        );
    }
    assert_refused(
        &set("welcome_mail_copy_to", json!("admin")),
        "welcome_mail_copy_to",
        "write one address like",
    );
}

#[test]
fn refuses_provider_settings_string_that_is_not_json() {
    let pasted = r#"{"tenant_id":"id123","client_id":"id123""#;
    assert_refused(
        &set("provider_settings", json!(pasted)),
        "provider_settings",
        "column",
    );
    assert_refused(
        &set("provider_settings", json!(pasted)),
        "provider_settings",
        "paste the Provider Settings JSON exactly",
    );
}

#[test]
fn refuses_provider_settings_of_the_wrong_type() {
    assert_refused(
        &set("provider_settings", json!(["id123"])),
        "provider_settings",
        "must be an object",
    );
}

#[test]
fn refuses_spaces_inside_pasted_provider_settings() {
    let pasted = r#"{"tenant_id":"id123 ","client_id":"id123","client_secret":"hidden","user_filter":{"memberOf":[""]}}"#;
    assert_refused(
        &set("provider_settings", json!(pasted)),
        "provider_settings.tenant_id",
        "remove them",
    );
}

#[test]
fn refuses_spaces_around_the_pasted_provider_settings() {
    let pasted = format!("{PORTAL_EXAMPLE_GROUPS} ");
    assert_refused(
        &set("provider_settings", json!(pasted)),
        "provider_settings",
        "remove them",
    );
}

#[test]
fn refuses_a_missing_or_empty_client_secret_without_echoing_it() {
    assert_refused(
        &set_in("provider_settings", "client_secret", json!("")),
        "provider_settings.client_secret",
        "give a value",
    );
    let text = edited(|map| {
        if let Some(Value::Object(settings)) = map.get_mut("provider_settings") {
            settings.remove("client_secret");
        }
    });
    assert_refused(&text, "provider_settings.client_secret", "add it");
    let found = problems(&set_in("provider_settings", "client_secret", json!(" s3cret")));
    assert!(found.iter().all(|p| !p.message.contains("s3cret")), "{found:?}");
}

#[test]
fn refuses_unknown_keys_inside_provider_settings() {
    assert_refused(
        &set_in("provider_settings", "clientid", json!("x")),
        "provider_settings.clientid",
        "did you mean \"client_id\"",
    );
}

#[test]
fn refuses_unknown_keys_inside_user_filter() {
    let filter = json!({"memberOf": ["Telephony"], "department": "Sales"});
    assert_refused(
        &set_in("provider_settings", "user_filter", filter),
        "provider_settings.user_filter.department",
        "remove it",
    );
}

#[test]
fn refuses_a_missing_user_filter_suggesting_everyone() {
    let text = edited(|map| {
        if let Some(Value::Object(settings)) = map.get_mut("provider_settings") {
            settings.remove("user_filter");
        }
    });
    assert_refused(&text, "provider_settings.user_filter", r#"[""] for every user"#);
}

#[test]
fn refuses_bad_member_of_entries() {
    let filter = json!({"memberOf": ["Telephony", " Sales", ""]});
    let text = set_in("provider_settings", "user_filter", filter);
    assert_refused(&text, "provider_settings.user_filter.memberOf[1]", "remove them");
    assert_refused(
        &text,
        "provider_settings.user_filter.memberOf[2]",
        r#"use [""] alone for every user"#,
    );
    let not_a_list = set_in(
        "provider_settings",
        "user_filter",
        json!({"memberOf": "Telephony"}),
    );
    assert_refused(
        &not_a_list,
        "provider_settings.user_filter.memberOf",
        "must be a list",
    );
}

#[test]
fn refuses_unknown_keys_inside_field_mapping() {
    assert_refused(
        &set_in("field_mapping", "last_name", json!("surname")),
        "field_mapping.last_name",
        "known keys: alias, first_name, surname, pstn_fixed",
    );
}

#[test]
fn refuses_an_unparsable_source_path() {
    assert_refused(
        &set_in("field_mapping", "pstn_fixed", json!("businessPhones[first]")),
        "field_mapping.pstn_fixed",
        "e.g. givenName, businessPhones[0]",
    );
    assert_refused(
        &set_in("user_field_mapping", "email", json!("mail..address")),
        "user_field_mapping.email",
        "e.g. givenName",
    );
}

#[test]
fn refuses_an_unknown_user_field_target() {
    assert_refused(
        &set_in("user_field_mapping", "mobile", json!("mobilePhone")),
        "user_field_mapping.mobile",
        "use \"email\" or \"attributes.<name>\"",
    );
    assert_refused(
        &set_in("user_field_mapping", "attributes.", json!("mobilePhone")),
        "user_field_mapping.attributes.",
        "e.g. \"attributes.mobile\"",
    );
    assert_refused(
        &set_in("user_field_mapping", "attributes.a b", json!("mobilePhone")),
        "user_field_mapping.attributes.a b",
        "e.g. \"attributes.mobile\"",
    );
}

#[test]
fn refuses_schedule_at_not_hh_mm() {
    for bad in ["2:00", "24:00", "02:00:00", "0200", "two"] {
        assert_refused(
            &set_in("schedule", "at", json!(bad)),
            "schedule.at",
            "HH:MM on a 24-hour clock",
        );
    }
}

#[test]
fn refuses_an_unknown_time_zone() {
    assert_refused(
        &set_in("schedule", "timezone", json!("Europe/Stokholm")),
        "schedule.timezone",
        "such as \"Europe/Stockholm\"",
    );
}

#[test]
fn refuses_unknown_keys_inside_schedule() {
    assert_refused(
        &set_in("schedule", "tz", json!("UTC")),
        "schedule.tz",
        "remove it",
    );
}

#[test]
fn refuses_a_bad_pbx_override() {
    let pbx = json!({"api_url": "ftp://pbx.example", "api_tokn": "x"});
    let text = set("pbx", pbx);
    assert_refused(&text, "pbx.api_url", "must start with http:// or https://");
    assert_refused(&text, "pbx.api_tokn", "did you mean \"api_token\"");
    assert_refused(&text, "pbx.api_token", "add it");
    assert_refused(
        &set("pbx", json!({"api_url": "pbx.example", "api_token": "x"})),
        "pbx.api_url",
        "e.g. \"https://pbx.example/api\"",
    );
}

#[test]
fn refuses_a_malformed_secret_expiry_date() {
    assert_refused(
        &set("client_secret_expires_at", json!("31/12/2025")),
        "client_secret_expires_at",
        "YYYY-MM-DD",
    );
}

#[test]
fn refuses_bad_country_prefixes() {
    assert_refused(
        &set("allowed_country_prefixes", json!([])),
        "allowed_country_prefixes",
        "list at least one country code",
    );
    assert_refused(
        &set("allowed_country_prefixes", json!(["+46"])),
        "allowed_country_prefixes[0]",
        "without '+'",
    );
}

#[test]
fn accepts_both_portal_forms_verbatim_as_objects() {
    for (pasted, groups) in [
        (PORTAL_EXAMPLE_GROUPS, vec!["group1", "group2"]),
        (PORTAL_EXAMPLE_EVERYONE, vec![]),
    ] {
        let object: Value = serde_json::from_str(pasted).expect("the portal text is JSON");
        let config = parse_ok(&set("provider_settings", object));
        assert_eq!(config.provider_settings.tenant_id, "id123");
        assert_eq!(config.provider_settings.client_secret, "hidden");
        assert_eq!(config.provider_settings.user_filter.member_of, groups);
    }
}

#[test]
fn the_deletion_guard_defaults_to_ten_percent_and_ten_users() {
    let config = parse_ok(&minimal_example().to_string());
    assert_eq!(config.deletion_guard, DeletionGuard::default());
    assert_eq!(config.deletion_guard.max_percent, 10);
    assert_eq!(config.deletion_guard.min_users, 10);
    let config = parse_ok(&set("deletion_guard", json!({"max_percent": 25})));
    assert_eq!(
        config.deletion_guard,
        DeletionGuard {
            max_percent: 25,
            min_users: 10
        }
    );
}

#[test]
fn the_deletion_guard_trips_only_above_both_thresholds() {
    let guard = DeletionGuard::default();
    assert!(!guard.trips(10, 100), "exactly 10% is allowed");
    assert!(guard.trips(11, 100));
    assert!(!guard.trips(9, 20), "fewer than 10 users never trips");
    assert!(guard.trips(10, 20));
    assert!(!guard.trips(0, 0));
    let off = DeletionGuard {
        max_percent: 100,
        min_users: 0,
    };
    assert!(!off.trips(50, 50), "100% can never be exceeded");
    let strict = DeletionGuard {
        max_percent: 0,
        min_users: 1,
    };
    assert!(strict.trips(1, 1000));
    let reason = guard.reason("acme", 30, 100);
    assert!(reason.contains("30 of 100"), "{reason}");
    assert!(reason.contains("usersync approve-deletions acme"), "{reason}");
}

#[test]
fn refuses_a_bad_deletion_guard() {
    assert_refused(
        &set("deletion_guard", json!({"max_percent": 120})),
        "deletion_guard.max_percent",
        "from 0 to 100",
    );
    assert_refused(
        &set("deletion_guard", json!({"min_users": -1})),
        "deletion_guard.min_users",
        "whole number of 0 or more",
    );
    assert_refused(
        &set("deletion_guard", json!({"max_percnt": 5})),
        "deletion_guard.max_percnt",
        "did you mean \"max_percent\"",
    );
    assert_refused(
        &set("deletion_guard", json!(10)),
        "deletion_guard",
        "must be an object",
    );
}

#[test]
fn refuses_a_mapping_that_targets_an_unknown_pbx_field() {
    assert_refused(
        &set_in("field_mapping", "phone", json!("businessPhones[0]")),
        "field_mapping.phone",
        "remove it or correct the spelling",
    );
    assert_refused(
        &set_in("user_field_mapping", "caller_id", json!("mobilePhone")),
        "user_field_mapping.caller_id",
        "use \"email\" or \"attributes.<name>\"",
    );
}

#[test]
fn refuses_a_control_character_inside_the_pasted_provider_settings() {
    let pasted = r#"{"tenant_id":"id123","client_id":"id\t123","client_secret":"hidden","user_filter":{"memberOf":[""]}}"#;
    assert_refused(
        &set("provider_settings", json!(pasted)),
        "provider_settings.client_id",
        "control character",
    );
}

#[test]
fn refuses_empty_provider_values_naming_each() {
    let pasted =
        r#"{"tenant_id":"","client_id":"","client_secret":"hidden","user_filter":{"memberOf":[""]}}"#;
    let text = set("provider_settings", json!(pasted));
    assert_refused(&text, "provider_settings.tenant_id", "give a value");
    assert_refused(&text, "provider_settings.client_id", "give a value");
}

#[test]
fn refuses_a_caller_id_with_letters_or_a_missing_prefix() {
    for bad in ["46812345abc", "812345600", "4712345678"] {
        assert_refused(
            &set("default_caller_id", json!(bad)),
            "default_caller_id",
            "46 then 7–9 digits",
        );
    }
}

#[test]
fn refuses_a_time_zone_that_is_an_abbreviation_or_offset() {
    for bad in ["CET+1", "Stockholm", "europe/stockholm"] {
        assert_refused(
            &set_in("schedule", "timezone", json!(bad)),
            "schedule.timezone",
            "not a known IANA time zone",
        );
    }
}

#[test]
fn every_refusal_names_a_field_and_says_what_to_do() {
    // A file wrong in every way: each problem must name a field and carry a fix.
    let text = edited(|map| {
        map.insert("id".into(), json!("Acme Corp"));
        map.insert("name".into(), json!(" Acme"));
        map.insert("type".into(), json!("ldap"));
        map.insert("mode".into(), json!("sync"));
        map.insert("welcome_mail".into(), json!("yes"));
        map.insert("welcome_mail_copy_to".into(), json!("admin"));
        map.insert("delete_after_days".into(), json!(-7));
        map.insert("error_notification_email".into(), json!("it@"));
        map.insert("error_notification_level".into(), json!("debug"));
        map.insert("provider_settings".into(), json!("{not json"));
        map.insert("pbx_company_id".into(), json!(""));
        map.insert("default_caller_id".into(), json!("+4681234"));
        map.insert("default_template".into(), json!("std\n"));
        map.insert("field_mapping".into(), json!({"alias": "a..b", "phone": "x"}));
        map.insert("user_field_mapping".into(), json!({"mobile": "mobilePhone"}));
        map.insert("schedule".into(), json!({"at": "25:00", "timezone": "Mars/Base"}));
        map.insert("pbx".into(), json!({"api_url": "ftp://x"}));
        map.insert("client_secret_expires_at".into(), json!("tomorrow"));
        map.insert("deletion_guard".into(), json!({"max_percent": 101}));
        map.insert("allowed_country_prefixes".into(), json!(["+46"]));
        map.insert("extra".into(), json!(1));
    });
    let found = problems(&text);
    assert!(found.len() >= 22, "{found:#?}");
    let fix_words = [
        "use",
        "give",
        "write",
        "remove",
        "add",
        "fix",
        "paste",
        "did you mean",
        "list",
    ];
    for problem in &found {
        assert!(!problem.field.is_empty(), "{problem:?}");
        assert!(
            fix_words.iter().any(|w| problem.message.contains(w)),
            "no fix in {problem}"
        );
    }
}

#[test]
fn adopt_match_and_pbx_limits_default_and_parse() {
    let config = parse_ok(&full_example().to_string());
    assert_eq!(config.adopt_match, AdoptMatch::Alias);
    assert_eq!(config.pbx_limits, PbxLimits::default());
    assert_eq!(
        config.pbx_limits.max_in_flight(),
        PbxLimits::DEFAULT_MAX_IN_FLIGHT
    );

    let config = parse_ok(&edited(|map| {
        map.insert("adopt_match".into(), json!("pstn_fixed"));
        map.insert(
            "pbx_limits".into(),
            json!({"max_in_flight": 3, "requests_per_second": 12.5}),
        );
    }));
    assert_eq!(config.adopt_match, AdoptMatch::PstnFixed);
    assert_eq!(config.pbx_limits.max_in_flight(), 3);
    assert_eq!(config.pbx_limits.requests_per_second, Some(12.5));
    let text = serde_json::to_string(&config).expect("serialise");
    assert_eq!(parse_ok(&text), config);
}

#[test]
fn bad_adopt_match_and_pbx_limits_are_refused_with_the_fix() {
    assert_refused(
        &set("adopt_match", json!("phone")),
        "adopt_match",
        "\"pstn_fixed\"",
    );
    assert_refused(
        &set("pbx_limits", json!({"max_in_flight": 0})),
        "pbx_limits.max_in_flight",
        "allow 1 to 256",
    );
    assert_refused(
        &set("pbx_limits", json!({"requests_per_second": -2})),
        "pbx_limits.requests_per_second",
        "above 0",
    );
    assert_refused(
        &set("pbx_limits", json!({"requests_per_second": "fast"})),
        "pbx_limits.requests_per_second",
        "calls per second",
    );
    assert_refused(
        &set("pbx_limits", json!({"max_inflight": 4})),
        "pbx_limits.max_inflight",
        "max_in_flight",
    );
}
