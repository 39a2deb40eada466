//! Source paths: where in a Graph user object a mapped value is read from.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

const VALID_EXAMPLES: &str =
    "e.g. givenName, businessPhones[0] or onPremisesExtensionAttributes.extensionAttribute3";

/// A source path into a Graph user object: `givenName`, `businessPhones[0]`,
/// `onPremisesExtensionAttributes.extensionAttribute3`, `extension_<appid>_<name>`.
///
/// Serialises as the path string. Only canonical spellings parse, so two
/// paths are equal exactly when their strings are.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourcePath {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Segment {
    Property(String),
    Index(usize),
}

impl SourcePath {
    /// Parses a path; the error says what is wrong and shows valid examples.
    pub fn parse(s: &str) -> Result<SourcePath, String> {
        let segments = parse_segments(s).map_err(|reason| {
            format!(
                "\"{s}\" is not a valid source path: {reason}; write a Graph user property, {VALID_EXAMPLES}"
            )
        })?;
        Ok(SourcePath {
            text: s.to_owned(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The top-level Graph property to `$select` (e.g. `businessPhones`).
    pub fn top_level_property(&self) -> &str {
        let end = self.text.find(['.', '[']).unwrap_or(self.text.len());
        &self.text[..end]
    }

    /// The value at this path as text: strings trimmed, numbers and booleans
    /// as text; null, missing, blank strings, arrays and objects give `None`.
    pub fn resolve(&self, user: &Value) -> Option<String> {
        let value = self
            .segments
            .iter()
            .try_fold(user, |current, segment| match segment {
                Segment::Property(name) => current.get(name.as_str()),
                Segment::Index(index) => current.get(*index),
            })?;
        scalar_text(value)
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => {
            let trimmed = s.trim();
            (!trimmed.is_empty()).then(|| trimmed.to_owned())
        }
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// Grammar: `name ('[' index ']')* ('.' name ('[' index ']')*)*`, where a
/// name is `[A-Za-z_][A-Za-z0-9_]*` and an index has no leading zeros.
fn parse_segments(s: &str) -> Result<Vec<Segment>, String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    let mut segments = Vec::new();
    for part in s.split('.') {
        parse_part(part, &mut segments)?;
    }
    Ok(segments)
}

fn parse_part(part: &str, segments: &mut Vec<Segment>) -> Result<(), String> {
    let name_end = part.find('[').unwrap_or(part.len());
    let (name, mut rest) = part.split_at(name_end);
    check_property_name(name)?;
    segments.push(Segment::Property(name.to_owned()));
    while !rest.is_empty() {
        let close = rest
            .find(']')
            .ok_or_else(|| format!("'[' after \"{name}\" is never closed"))?;
        segments.push(Segment::Index(parse_index(&rest[1..close])?));
        rest = &rest[close + 1..];
        if !rest.is_empty() && !rest.starts_with('[') {
            return Err(format!("unexpected \"{rest}\" after an index"));
        }
    }
    Ok(())
}

fn check_property_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    match chars.next() {
        None => Err("a property name is empty (check for a doubled or stray '.')".into()),
        Some(first) if !(first.is_ascii_alphabetic() || first == '_') => Err(format!(
            "property name \"{name}\" must start with a letter or '_'"
        )),
        Some(_) => match chars.find(|c| !(c.is_ascii_alphanumeric() || *c == '_')) {
            Some(bad) => Err(format!("property name \"{name}\" contains '{bad}'")),
            None => Ok(()),
        },
    }
}

fn parse_index(digits: &str) -> Result<usize, String> {
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !canonical {
        return Err(format!("index \"[{digits}]\" must be a whole number such as [0]"));
    }
    digits
        .parse()
        .map_err(|_| format!("index \"[{digits}]\" is too large"))
}

impl fmt::Display for SourcePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for SourcePath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SourcePath::parse(s)
    }
}

impl Serialize for SourcePath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for SourcePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        SourcePath::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(s: &str) -> SourcePath {
        SourcePath::parse(s).expect("valid path")
    }

    #[test]
    fn parses_the_documented_shapes() {
        for s in [
            "givenName",
            "businessPhones[0]",
            "onPremisesExtensionAttributes.extensionAttribute3",
            "extension_0a1b2c3d4e5f_costCenter",
        ] {
            assert_eq!(path(s).as_str(), s);
            assert_eq!(path(s).to_string(), s);
        }
    }

    #[test]
    fn refuses_malformed_paths_with_an_example() {
        for s in [
            "",
            " givenName",
            "given Name",
            "a..b",
            ".a",
            "a.",
            "a[",
            "a[]",
            "a[x]",
            "a[01]",
            "a[-1]",
            "a[0]b",
            "1abc",
            "[0]",
            "a-b",
        ] {
            let err = SourcePath::parse(s).expect_err(s);
            assert!(err.contains("e.g. givenName"), "{s}: {err}");
        }
    }

    #[test]
    fn top_level_property_strips_nesting_and_indexes() {
        assert_eq!(path("businessPhones[0]").top_level_property(), "businessPhones");
        assert_eq!(
            path("onPremisesExtensionAttributes.extensionAttribute3").top_level_property(),
            "onPremisesExtensionAttributes"
        );
        assert_eq!(path("givenName").top_level_property(), "givenName");
    }

    #[test]
    fn resolves_scalars_as_trimmed_text() {
        let user = json!({
            "givenName": "  Åsa ",
            "businessPhones": ["+46 8 123 456 78"],
            "onPremisesExtensionAttributes": {"extensionAttribute3": "x3"},
            "employeeNumber": 42,
            "accountEnabled": true,
        });
        assert_eq!(path("givenName").resolve(&user).as_deref(), Some("Åsa"));
        assert_eq!(
            path("businessPhones[0]").resolve(&user).as_deref(),
            Some("+46 8 123 456 78")
        );
        assert_eq!(
            path("onPremisesExtensionAttributes.extensionAttribute3")
                .resolve(&user)
                .as_deref(),
            Some("x3")
        );
        assert_eq!(path("employeeNumber").resolve(&user).as_deref(), Some("42"));
        assert_eq!(path("accountEnabled").resolve(&user).as_deref(), Some("true"));
    }

    #[test]
    fn resolves_absent_blank_and_structured_values_to_none() {
        let user = json!({
            "mail": null,
            "surname": "   ",
            "businessPhones": [],
            "onPremisesExtensionAttributes": {"extensionAttribute1": null},
        });
        for s in [
            "mail",
            "surname",
            "businessPhones",
            "businessPhones[0]",
            "onPremisesExtensionAttributes",
            "onPremisesExtensionAttributes.extensionAttribute1",
            "onPremisesExtensionAttributes.extensionAttribute2",
            "missing.deeper",
            "surname[0]",
        ] {
            assert_eq!(path(s).resolve(&user), None, "{s}");
        }
    }

    #[test]
    fn serde_round_trips_as_the_path_string() {
        let p = path("businessPhones[0]");
        let json = serde_json::to_string(&p).expect("serialise");
        assert_eq!(json, "\"businessPhones[0]\"");
        let back: SourcePath = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, p);
        assert!(serde_json::from_str::<SourcePath>("\"a..b\"").is_err());
    }
}
