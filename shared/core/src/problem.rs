//! A single refusal, shaped so an operator can act on it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One refusal: which field, what is wrong, how to fix it.
///
/// Displays as `"{field}: {message}"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for Problem {}

/// An error and its causes on one line, `outer: cause: root cause`. Client
/// errors (reqwest, lettre) put the useful part in their causes.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_field_then_message() {
        let problem = Problem::new("schedule.at", "must be HH:MM");
        assert_eq!(problem.to_string(), "schedule.at: must be HH:MM");
    }
}
