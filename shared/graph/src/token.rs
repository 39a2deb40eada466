//! Client-credentials tokens from Entra ID, and their cache.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::retry::{is_transient_status, retry_after, transport_error, AttemptError, Transient};
use crate::{urls, AuthFailure, AuthFailureKind, Credentials, GraphError};

/// The resource whose permissions the token carries.
const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
/// A token is renewed this long before Entra ID says it expires.
const RENEW_BEFORE_EXPIRY: Duration = Duration::from_secs(300);

/// Identifies one application identity; the secret only by its hash, so a rotated
/// secret gets a fresh token and the cache never holds the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TokenKey {
    tenant_id: String,
    client_id: String,
    secret_fingerprint: [u8; 32],
}

impl TokenKey {
    pub(crate) fn of(creds: &Credentials) -> Self {
        Self {
            tenant_id: creds.tenant_id.clone(),
            client_id: creds.client_id.clone(),
            secret_fingerprint: Sha256::digest(creds.client_secret.as_bytes()).into(),
        }
    }
}

struct CachedToken {
    token: SecretString,
    renew_at: Instant,
}

/// Access tokens by identity, each until shortly before it expires.
#[derive(Default)]
pub(crate) struct TokenCache {
    entries: Mutex<HashMap<TokenKey, CachedToken>>,
}

impl TokenCache {
    pub(crate) fn get(&self, key: &TokenKey) -> Option<String> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let cached = entries.get(key)?;
        (Instant::now() < cached.renew_at).then(|| cached.token.expose_secret().to_string())
    }

    pub(crate) fn put(&self, key: TokenKey, grant: &TokenGrant) {
        let Some(lifetime) = grant.lifetime.checked_sub(RENEW_BEFORE_EXPIRY) else {
            return; // too short-lived to be worth keeping
        };
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        // Drop stale entries (e.g. of rotated secrets) so the map cannot grow without bound.
        entries.retain(|_, cached| cached.renew_at > now);
        entries.insert(
            key,
            CachedToken {
                token: grant.access_token.clone(),
                renew_at: now + lifetime,
            },
        );
    }

    pub(crate) fn forget(&self, key: &TokenKey) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.remove(key);
    }
}

/// A token as issued.
pub(crate) struct TokenGrant {
    pub access_token: SecretString,
    pub lifetime: Duration,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    /// A number from the v2.0 endpoint; some identity servers send it as a string.
    #[serde(deserialize_with = "seconds")]
    expires_in: u64,
}

fn seconds<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seconds {
        Number(u64),
        Text(String),
    }
    match Seconds::deserialize(deserializer)? {
        Seconds::Number(n) => Ok(n),
        Seconds::Text(text) => text.trim().parse().map_err(serde::de::Error::custom),
    }
}

/// The OAuth error body of a refused token request.
#[derive(Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_codes: Vec<u64>,
}

/// One token request; the caller retries transient failures.
pub(crate) async fn request_token(
    http: &reqwest::Client,
    login_base_url: &str,
    creds: &Credentials,
) -> Result<TokenGrant, AttemptError> {
    let form = [
        ("client_id", creds.client_id.as_str()),
        ("client_secret", creds.client_secret.as_str()),
        ("grant_type", "client_credentials"),
        ("scope", GRAPH_SCOPE),
    ];
    let response = http
        .post(urls::token_endpoint(login_base_url, &creds.tenant_id))
        .form(&form)
        .send()
        .await
        .map_err(transport_error)?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(transport_error)?;
    if status.is_success() {
        return parse_grant(&body).map_err(AttemptError::Stop);
    }
    if is_transient_status(status) {
        return Err(AttemptError::Retry(Transient {
            status: Some(status.as_u16()),
            reason: format!("token endpoint answered HTTP {status}"),
            retry_after: retry_after(&headers),
            bad_body: false,
        }));
    }
    Err(AttemptError::Stop(refusal(status.as_u16(), &body, creds)))
}

fn parse_grant(body: &[u8]) -> Result<TokenGrant, GraphError> {
    let response: TokenResponse =
        serde_json::from_slice(body).map_err(|error| GraphError::InvalidResponse {
            reason: format!("token response: {error}"),
        })?;
    Ok(TokenGrant {
        access_token: response.access_token.into(),
        lifetime: Duration::from_secs(response.expires_in),
    })
}

/// Classifies a refusal on `error` and `error_codes` only: the description is
/// free text for humans and may change at any time.
fn refusal(status: u16, body: &[u8], creds: &Credentials) -> GraphError {
    let (error, codes) = match serde_json::from_slice::<OAuthError>(body) {
        Ok(parsed) => (parsed.error, parsed.error_codes),
        Err(_) => (format!("http_{status}"), Vec::new()),
    };
    GraphError::Auth(AuthFailure {
        kind: AuthFailureKind::classify(&error, &codes),
        error,
        codes,
        status,
        tenant_id: creds.tenant_id.clone(),
        client_id: creds.client_id.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_may_be_a_number_or_a_numeric_string() {
        let number: TokenResponse =
            serde_json::from_str(r#"{"access_token":"a","expires_in":3599}"#).unwrap();
        let text: TokenResponse =
            serde_json::from_str(r#"{"access_token":"a","expires_in":"3599"}"#).unwrap();
        assert_eq!((number.expires_in, text.expires_in), (3599, 3599));
        assert!(
            serde_json::from_str::<TokenResponse>(r#"{"access_token":"a","expires_in":"soon"}"#).is_err()
        );
    }

    fn creds(secret: &str) -> Credentials {
        Credentials {
            tenant_id: "tenant".into(),
            client_id: "client".into(),
            client_secret: secret.into(),
        }
    }

    fn grant(lifetime: Duration) -> TokenGrant {
        TokenGrant {
            access_token: SecretString::from("token-1"),
            lifetime,
        }
    }

    #[test]
    fn cached_token_is_keyed_by_the_secret_too() {
        let cache = TokenCache::default();
        cache.put(TokenKey::of(&creds("a")), &grant(Duration::from_secs(3599)));
        assert_eq!(cache.get(&TokenKey::of(&creds("a"))).as_deref(), Some("token-1"));
        assert_eq!(cache.get(&TokenKey::of(&creds("b"))), None);
    }

    #[test]
    fn short_lived_tokens_are_not_cached() {
        let cache = TokenCache::default();
        cache.put(TokenKey::of(&creds("a")), &grant(Duration::from_secs(200)));
        assert_eq!(cache.get(&TokenKey::of(&creds("a"))), None);
    }

    #[test]
    fn forgotten_token_is_gone() {
        let cache = TokenCache::default();
        let key = TokenKey::of(&creds("a"));
        cache.put(key.clone(), &grant(Duration::from_secs(3599)));
        cache.forget(&key);
        assert_eq!(cache.get(&key), None);
    }

    #[test]
    fn refusal_without_an_oauth_body_is_other() {
        let error = refusal(404, b"<html>not found</html>", &creds("s"));
        let GraphError::Auth(failure) = error else {
            panic!("expected Auth, got {error:?}");
        };
        assert_eq!(failure.kind, AuthFailureKind::Other);
        assert_eq!(failure.error, "http_404");
    }
}
