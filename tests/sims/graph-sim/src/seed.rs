//! Deterministic, realistic directory content: the same seed always yields
//! byte-identical users with the same ids.

use serde_json::{json, Value};
use uuid::Builder;

use crate::directory::Props;

/// The one directory extension every seeded user carries.
pub const COST_CENTER_EXTENSION: &str = "extension_b7a1c3d2e4f54a6b8c9d0e1f2a3b4c5d_costCenter";

/// Id streams keep user ids and group ids of one seed apart.
#[derive(Clone, Copy)]
pub enum IdStream {
    User = 1,
    Group = 2,
}

const FIRST_NAMES: &[&str] = &[
    "Anna", "Åsa", "Björn", "Erik", "Lars", "Karin", "Maria", "Johan", "Sofia", "Mikael", "Elin", "Linnéa",
    "Jörgen", "Göran", "Märta", "Pär", "Ingrid", "Oskar", "Ebba", "Mohammed", "Fatima", "Ali", "Aisha",
    "Jean-Luc", "Zoë", "Chloé", "José", "Łukasz", "Søren", "Niamh", "Wei", "Yuki", "Priya", "Olga", "Dmitri",
    "Hannah", "Jürgen", "Renée", "Ömer", "Ana",
];

const LAST_NAMES: &[&str] = &[
    "Andersson",
    "Johansson",
    "Karlsson",
    "Nilsson",
    "Eriksson",
    "Larsson",
    "Lindqvist",
    "Öberg",
    "Jönsson",
    "Åberg",
    "Ström",
    "Björk",
    "Sjögren",
    "Hedlund",
    "Lindström",
    "Bergström",
    "Müller",
    "Schröder",
    "O'Brien",
    "García",
    "Núñez",
    "Kowalski",
    "Nguyen",
    "Yılmaz",
    "Dubois",
    "Ferrari",
    "Andrić",
    "Singh",
    "Khan",
    "Lefèvre",
    "Söderberg",
    "Fältskog",
];

const DEPARTMENTS: &[&str] = &[
    "Sales",
    "Customer Service",
    "Finance",
    "IT",
    "Human Resources",
    "Marketing",
    "Logistics",
    "Legal",
    "Research & Development",
    "Facilities",
];

const JOB_TITLES: &[&str] = &[
    "Account Manager",
    "Support Engineer",
    "Controller",
    "System Administrator",
    "HR Partner",
    "Marketing Specialist",
    "Warehouse Coordinator",
    "Legal Counsel",
    "Software Developer",
    "Receptionist",
    "Team Lead",
    "Säljare",
];

const OFFICES: &[&str] = &[
    "Stockholm HQ",
    "Stockholm Kista",
    "Göteborg",
    "Malmö",
    "Uppsala",
    "Remote",
];

/// Stockholm subscriber numbers are 8 digits and must not start with 0.
const SUBSCRIBER_BASE: u64 = 10_000_000;
const SUBSCRIBER_RANGE: u64 = 90_000_000;
const MOBILE_RANGE: u64 = 10_000_000;
/// A prime step: coprime with both ranges, so every index below the range
/// maps to a different number.
const NUMBER_STEP: u64 = 7_919;

/// Mixes bits well enough for test data; a bijection on u64.
pub fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A GUID derived from seed, stream and index (formatted like a v4 UUID).
pub fn guid(seed: u64, stream: IdStream, index: u64) -> String {
    let base = splitmix64(seed ^ splitmix64(stream as u64));
    let high = splitmix64(base ^ index);
    let low = splitmix64(high ^ base.rotate_left(17));
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&high.to_be_bytes());
    bytes[8..].copy_from_slice(&low.to_be_bytes());
    Builder::from_random_bytes(bytes).into_uuid().to_string()
}

/// Accepts the 8-4-4-4-12 hex form that Entra uses for tenant ids.
pub fn looks_like_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths = [8, 4, 4, 4, 12];
    groups.len() == lengths.len()
        && groups
            .iter()
            .zip(lengths)
            .all(|(g, len)| g.len() == len && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Name tables with a precomputed ASCII form for mail nicknames.
pub struct NameTables {
    first: Vec<(&'static str, String)>,
    last: Vec<(&'static str, String)>,
}

impl NameTables {
    pub fn new() -> Self {
        let fold = |names: &[&'static str]| {
            names
                .iter()
                .map(|name| (*name, ascii_nickname_part(name)))
                .collect()
        };
        NameTables {
            first: fold(FIRST_NAMES),
            last: fold(LAST_NAMES),
        }
    }
}

fn ascii_nickname_part(name: &str) -> String {
    deunicode::deunicode(name)
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn pick<T>(items: &[T], hash: u64) -> &T {
    // Tables are non-empty constants; the modulo keeps the index in range.
    &items[(hash % items.len() as u64) as usize]
}

/// Builds the `index`-th seeded user of a tenant.
pub fn seeded_user(names: &NameTables, seed: u64, domain: &str, index: u64) -> Props {
    let hash = splitmix64(seed.rotate_left(32) ^ index);
    let (first, first_ascii) = pick(&names.first, hash);
    let (last, last_ascii) = pick(&names.last, hash >> 20);
    let nickname = format!("{first_ascii}.{last_ascii}{index}");
    let upn = format!("{nickname}@{domain}");
    let department = *pick(DEPARTMENTS, hash >> 8);
    let language = if hash.is_multiple_of(5) { "en-US" } else { "sv-SE" };
    let cost_center = format!("CC-{:04}", (hash >> 40) % 10_000);
    let user = json!({
        "id": guid(seed, IdStream::User, index),
        "displayName": format!("{first} {last}"),
        "givenName": first,
        "surname": last,
        "mailNickname": nickname,
        "userPrincipalName": upn,
        "mail": upn,
        "businessPhones": [stockholm_number(seed, index)],
        "mobilePhone": mobile_number(seed, index),
        "jobTitle": pick(JOB_TITLES, hash >> 12),
        "department": department,
        "officeLocation": pick(OFFICES, hash >> 16),
        "preferredLanguage": language,
        "employeeId": format!("E{:07}", index + 1),
        "accountEnabled": true,
        "onPremisesExtensionAttributes": extension_attributes(department, &cost_center, hash),
        COST_CENTER_EXTENSION: cost_center,
    });
    match user {
        Value::Object(props) => props,
        _ => Props::new(),
    }
}

/// Generates `count` users; 100,000 take a fraction of a second in release.
pub fn seeded_users(seed: u64, domain: &str, count: u64) -> Vec<Props> {
    let names = NameTables::new();
    (0..count)
        .map(|index| seeded_user(&names, seed, domain, index))
        .collect()
}

fn extension_attributes(department: &str, cost_center: &str, hash: u64) -> Value {
    let mut attributes = serde_json::Map::new();
    for n in 1..=15 {
        attributes.insert(format!("extensionAttribute{n}"), Value::Null);
    }
    attributes.insert("extensionAttribute1".into(), json!(cost_center));
    attributes.insert("extensionAttribute2".into(), json!(department));
    if hash.is_multiple_of(3) {
        attributes.insert("extensionAttribute5".into(), json!("PBX"));
    }
    Value::Object(attributes)
}

/// A unique Stockholm landline (08 + 8 digits), in one of five real-world styles.
fn stockholm_number(seed: u64, index: u64) -> String {
    let offset = seed % SUBSCRIBER_RANGE;
    let subscriber = SUBSCRIBER_BASE + (offset + index.wrapping_mul(NUMBER_STEP)) % SUBSCRIBER_RANGE;
    let d = subscriber.to_string();
    match index % 5 {
        0 => format!("+46 8 {} {} {}", &d[..3], &d[3..6], &d[6..]),
        1 => format!("08-{} {} {}", &d[..3], &d[3..6], &d[6..]),
        2 => format!("+46 (0)8 {d}"),
        3 => format!("00468{d}"),
        _ => format!("08 {} {} {}", &d[..3], &d[3..5], &d[5..]),
    }
}

/// A unique Swedish mobile number in the 070 series.
fn mobile_number(seed: u64, index: u64) -> String {
    let offset = seed % MOBILE_RANGE;
    let subscriber = (offset + index.wrapping_mul(NUMBER_STEP)) % MOBILE_RANGE;
    let d = format!("{subscriber:07}");
    format!("+46 70 {} {} {}", &d[..3], &d[3..5], &d[5..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn digits(text: &str) -> String {
        text.chars().filter(char::is_ascii_digit).collect()
    }

    #[test]
    fn same_seed_gives_identical_users() {
        let a = seeded_users(7, "example.com", 50);
        let b = seeded_users(7, "example.com", 50);
        assert_eq!(a, b);
        assert_ne!(a, seeded_users(8, "example.com", 50));
    }

    #[test]
    fn ids_nicknames_and_numbers_are_unique() {
        let users = seeded_users(42, "example.com", 20_000);
        for key in ["id", "mailNickname", "mobilePhone", "businessPhones"] {
            let values: HashSet<String> = users.iter().map(|u| u[key].to_string()).collect();
            assert_eq!(values.len(), users.len(), "{key} repeats");
        }
        let normalised: HashSet<String> = users
            .iter()
            .map(|u| digits(u["businessPhones"][0].as_str().unwrap_or_default()))
            .map(|d| d.trim_start_matches("0046").trim_start_matches("46").to_owned())
            .map(|d| d.trim_start_matches('0').to_owned())
            .collect();
        assert_eq!(normalised.len(), users.len(), "same number in two styles");
    }

    #[test]
    fn business_numbers_are_valid_stockholm_numbers() {
        for user in seeded_users(3, "example.com", 10) {
            let raw = user["businessPhones"][0].as_str().unwrap_or_default();
            let national = digits(&raw.replace("(0)", ""));
            let national = national
                .strip_prefix("0046")
                .or_else(|| national.strip_prefix("46"))
                .map_or(national.clone(), |rest| format!("0{rest}"));
            assert_eq!(national.len(), 10, "{raw}");
            assert!(national.starts_with("08"), "{raw}");
            assert_ne!(national.as_bytes()[2], b'0', "{raw}");
        }
    }

    #[test]
    fn guids_look_like_guids() {
        let id = guid(1, IdStream::Group, 0);
        assert!(looks_like_guid(&id), "{id}");
        assert!(!looks_like_guid("contoso.onmicrosoft.com"));
        assert_ne!(id, guid(1, IdStream::User, 0));
    }
}
