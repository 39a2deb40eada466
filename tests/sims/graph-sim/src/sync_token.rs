//! Opaque `$skiptoken` / `$deltatoken` values. A token carries everything
//! needed to continue (resource, select list, snapshot, position), because
//! clients follow links exactly as given and send no query options of their own.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Resource {
    Users,
    Groups,
}

/// Who issued a token and when: lets the tenant decide whether it expired.
#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
pub struct Stamp {
    /// Changes whenever the tenant is replaced.
    pub instance: u64,
    /// Bumped by the control call that expires all delta tokens.
    pub generation: u32,
    /// Seconds on the tenant's simulated clock.
    pub issued_at: u64,
}

/// Where a link leads.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Step<P> {
    /// A deltaLink: the next round returns changes after `since`.
    Track { since: u64 },
    /// A page of a full round that started at sequence `snapshot`.
    Full { snapshot: u64, page: u32, position: P },
    /// A page of a delta round over changes in `(since, until]`, continuing after `after_seq`.
    Changes {
        since: u64,
        until: u64,
        page: u32,
        after_seq: u64,
    },
}

impl<P> Step<P> {
    /// Where a delta round over `(since, until]` goes after its page `page`:
    /// on after `after_seq` when changes remain, else to a deltaLink at `until`.
    pub fn after_changes_page(since: u64, until: u64, page: u32, after_seq: Option<u64>) -> Step<P> {
        match after_seq {
            Some(after_seq) => Step::Changes {
                since,
                until,
                page: page + 1,
                after_seq,
            },
            None => Step::Track { since: until },
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SyncToken<P> {
    pub resource: Resource,
    pub stamp: Stamp,
    pub select: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_ids: Option<Vec<String>>,
    pub step: Step<P>,
}

pub fn encode<T: Serialize>(value: &T) -> String {
    // Serialising plain data structures to JSON cannot fail.
    let json = serde_json::to_vec(value).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

pub fn decode<T: DeserializeOwned>(text: &str) -> Option<T> {
    let json = URL_SAFE_NO_PAD.decode(text).ok()?;
    serde_json::from_slice(&json).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_rejected() {
        let token = SyncToken {
            resource: Resource::Users,
            stamp: Stamp {
                instance: 1,
                generation: 2,
                issued_at: 3,
            },
            select: vec!["displayName".into()],
            filter_ids: None,
            step: Step::Full {
                snapshot: 4,
                page: 5,
                position: Some("abc".to_owned()),
            },
        };
        let text = encode(&token);
        assert!(text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        let back: SyncToken<Option<String>> = decode(&text).unwrap();
        assert_eq!(back.step, token.step);
        assert!(decode::<SyncToken<Option<String>>>("not-a-token").is_none());
    }
}
