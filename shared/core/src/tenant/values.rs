//! Reading a `serde_json::Value` document field by field, collecting every
//! problem instead of stopping at the first.

use serde_json::{Map, Value};

use crate::problem::Problem;

pub(super) type Problems = Vec<Problem>;

/// A JSON object being read, with its path in the document for messages.
pub(super) struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

/// One present, non-null value and its path.
pub(super) struct Field<'a> {
    pub path: String,
    pub value: &'a Value,
}

impl<'a> Obj<'a> {
    pub fn root(map: &'a Map<String, Value>) -> Self {
        Obj {
            path: String::new(),
            map,
        }
    }

    pub fn field_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn entries(&self) -> impl Iterator<Item = (&'a String, &'a Value)> {
        self.map.iter()
    }

    /// Refuses every key not in `known`, suggesting the nearest known one.
    pub fn refuse_unknown_keys(&self, known: &[&str], out: &mut Problems) {
        for key in self.map.keys().filter(|key| !known.contains(&key.as_str())) {
            let hint = match nearest(key, known) {
                Some(near) => format!("did you mean \"{near}\"? "),
                None => String::new(),
            };
            out.push(Problem::new(
                self.field_path(key),
                format!(
                    "unknown key; {hint}remove it or correct the spelling (known keys: {})",
                    known.join(", ")
                ),
            ));
        }
    }

    /// The value at `key`, treating null like absence.
    pub fn optional(&self, key: &str) -> Option<Field<'a>> {
        self.map
            .get(key)
            .filter(|value| !value.is_null())
            .map(|value| Field {
                path: self.field_path(key),
                value,
            })
    }

    /// The value at `key`; refuses absence and null, showing `example`.
    pub fn required(&self, key: &str, example: &str, out: &mut Problems) -> Option<Field<'a>> {
        let found = self.optional(key);
        if found.is_none() {
            let cause = if self.map.contains_key(key) {
                "is null"
            } else {
                "is missing"
            };
            out.push(Problem::new(
                self.field_path(key),
                format!("{cause}; add it, e.g. \"{key}\": {example}"),
            ));
        }
        found
    }
}

impl<'a> Field<'a> {
    pub fn new(path: String, value: &'a Value) -> Self {
        Field { path, value }
    }

    fn refuse(&self, message: String, out: &mut Problems) {
        out.push(Problem::new(self.path.clone(), message));
    }

    fn refuse_type(&self, expected: &str, example: &str, out: &mut Problems) {
        self.refuse(
            format!(
                "must be {expected}, not {}; write it like {example}",
                kind_name(self.value)
            ),
            out,
        );
    }

    /// A string that is not blank, has no surrounding spaces and no control
    /// characters. The value is never echoed: it may be a secret.
    pub fn text(&self, example: &str, out: &mut Problems) -> Option<&'a str> {
        let Value::String(text) = self.value else {
            self.refuse_type("a string", example, out);
            return None;
        };
        match text_problem(text) {
            Some(TextProblem::Empty) => self.refuse(format!("is empty; give a value, e.g. {example}"), out),
            Some(TextProblem::SurroundingSpace) => self.refuse(
                "has leading or trailing spaces; remove them (copy the value without extra spaces)".into(),
                out,
            ),
            Some(TextProblem::ControlCharacter) => self.refuse(
                "contains a control character such as a line break or tab; remove it".into(),
                out,
            ),
            None => return Some(text),
        }
        None
    }

    /// A clean string turned into `T` by `check`, whose error message must
    /// say both what is wrong and how to fix it.
    pub fn parsed<T>(
        &self,
        example: &str,
        out: &mut Problems,
        check: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.text(example, out)?;
        check(text).map_err(|message| self.refuse(message, out)).ok()
    }

    pub fn boolean(&self, out: &mut Problems) -> Option<bool> {
        let flag = self.value.as_bool();
        if flag.is_none() {
            self.refuse_type("true or false", "true (without quotes)", out);
        }
        flag
    }

    pub fn object(&self, example: &str, out: &mut Problems) -> Option<Obj<'a>> {
        match self.value {
            Value::Object(map) => Some(Obj {
                path: self.path.clone(),
                map,
            }),
            _ => {
                self.refuse_type("an object", example, out);
                None
            }
        }
    }

    pub fn array(&self, example: &str, out: &mut Problems) -> Option<&'a [Value]> {
        match self.value {
            Value::Array(items) => Some(items),
            _ => {
                self.refuse_type("a list", example, out);
                None
            }
        }
    }

    /// One of a fixed set of names.
    pub fn choice<T: Copy>(&self, options: &[(&str, T)], out: &mut Problems) -> Option<T> {
        let names: Vec<String> = options.iter().map(|(name, _)| format!("\"{name}\"")).collect();
        let names = names.join(", ");
        let text = self.text(&names, out)?;
        let found = options.iter().find(|(name, _)| *name == text);
        if found.is_none() {
            self.refuse(format!("unknown value \"{text}\"; use one of {names}"), out);
        }
        found.map(|(_, value)| *value)
    }

    /// A whole number from 0 to `u32::MAX`.
    pub fn count(&self, example: &str, out: &mut Problems) -> Option<u32> {
        let Value::Number(number) = self.value else {
            self.refuse_type("a whole number", example, out);
            return None;
        };
        let refusal = if let Some(count) = number.as_u64() {
            match u32::try_from(count) {
                Ok(count) => return Some(count),
                Err(_) => "is too large",
            }
        } else if number.as_i64().is_some() {
            "is negative"
        } else {
            "is not a whole number"
        };
        self.refuse(
            format!("{refusal}; give a whole number of 0 or more, e.g. {example}"),
            out,
        );
        None
    }
}

enum TextProblem {
    Empty,
    SurroundingSpace,
    ControlCharacter,
}

fn text_problem(text: &str) -> Option<TextProblem> {
    if text.is_empty() {
        Some(TextProblem::Empty)
    } else if text.trim() != text {
        Some(TextProblem::SurroundingSpace)
    } else if text.chars().any(char::is_control) {
        Some(TextProblem::ControlCharacter)
    } else {
        None
    }
}

fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "true/false",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The known key closest in spelling to `key`, when it is a likely typo.
fn nearest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    const MAX_TYPO_DISTANCE: usize = 2;
    known
        .iter()
        .map(|candidate| (strsim::levenshtein(key, candidate), *candidate))
        .filter(|(distance, _)| *distance <= MAX_TYPO_DISTANCE)
        .min()
        .map(|(_, candidate)| candidate)
}

/// A syntax error message with its position, for the whole file or a string
/// holding JSON.
pub(super) fn syntax_error(err: &serde_json::Error) -> String {
    let full = err.to_string();
    let cause = full.rfind(" at line ").map_or(full.as_str(), |end| &full[..end]);
    format!(
        "is not valid JSON: {cause} at line {}, column {}; fix the syntax there",
        err.line(),
        err.column()
    )
}
