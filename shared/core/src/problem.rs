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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_field_then_message() {
        let problem = Problem::new("schedule.at", "must be HH:MM");
        assert_eq!(problem.to_string(), "schedule.at: must be HH:MM");
    }
}
