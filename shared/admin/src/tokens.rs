//! API tokens: 256 random bits, shown once, stored as their sha256.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use usersync_store::{ApiTokenRow, Store};

use crate::{AdminError, AdminResult};

/// Every token starts so, which makes one easy to recognise in a leak scan.
pub const TOKEN_PREFIX: &str = "usk_";

/// A token as listed: never the token itself.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub id: String,
    /// The tenant it may see, or `all`.
    pub scope: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<ApiTokenRow> for TokenInfo {
    fn from(row: ApiTokenRow) -> Self {
        TokenInfo {
            scope: row.tenant_id.unwrap_or_else(|| "all".to_owned()),
            id: row.id,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
        }
    }
}

/// A token just made: the only time its text is known.
#[derive(Debug, Clone, Serialize)]
pub struct NewToken {
    pub id: String,
    pub scope: String,
    pub token: String,
}

/// The hex sha256 the store keeps of a token.
pub fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates a token for one tenant (`Some`) or every tenant (`None`). A tenant
/// scope need not exist yet: its admin creates it with the token.
pub async fn create(store: &Store, tenant_id: Option<&str>) -> AdminResult<NewToken> {
    if let Some(id) = tenant_id {
        if id.trim().is_empty() {
            return Err(AdminError::Conflict(
                "--tenant needs a tenant id, e.g. --tenant acme; use --all for the operator's token".into(),
            ));
        }
    }
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
    let mut id_bytes = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut id_bytes);
    let id = format!(
        "tok_{}",
        id_bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    store
        .insert_api_token(&id, &token_hash(&token), tenant_id)
        .await?;
    Ok(NewToken {
        id,
        scope: tenant_id.unwrap_or("all").to_owned(),
        token,
    })
}

pub async fn list(store: &Store) -> AdminResult<Vec<TokenInfo>> {
    Ok(store
        .api_tokens()
        .await?
        .into_iter()
        .map(TokenInfo::from)
        .collect())
}

pub async fn revoke(store: &Store, id: &str) -> AdminResult<()> {
    if store.revoke_api_token(id).await? {
        Ok(())
    } else {
        Err(AdminError::NotFound(format!(
            "no API token {id:?}: `usersync api-token list` shows the ids"
        )))
    }
}

/// The token's row when it is known (and marks it used), else `None`.
pub async fn authenticate(store: &Store, token: &str) -> AdminResult<Option<ApiTokenRow>> {
    if !token.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    Ok(store.use_api_token(&token_hash(token)).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_hex_sha256() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
