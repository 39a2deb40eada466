//! Errors of the Graph client, worded for the operator who has to fix them.

/// Everything that can go wrong talking to Entra ID and Microsoft Graph.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// Token request refused; the kind is decided from `error` and `error_codes`,
    /// never from the free-text description.
    #[error("{}", .0.operator_message())]
    Auth(AuthFailure),

    /// 403 `Authorization_RequestDenied` from Graph: admin consent missing.
    #[error(
        "admin consent for the application permissions User.Read.All and Group.Read.All is \
         missing: a Global Administrator must grant admin consent in Azure (API permissions) \
         (Graph said: {message})"
    )]
    ConsentMissing { message: String },

    /// The delta state is no longer valid: start a full round, from `restart_url`
    /// when Graph named one.
    #[error("delta state is no longer valid ({code}): a full sync round is needed")]
    ResyncRequired {
        code: String,
        restart_url: Option<String>,
    },

    /// Retries exhausted (throttling, outage or transport errors).
    #[error("Microsoft Graph unavailable after {attempts} attempt(s): {last}")]
    Unavailable { attempts: usize, last: String },

    /// Any other HTTP error, with the code and message of the error body.
    #[error("Microsoft Graph refused the request: HTTP {status} {code}: {message}")]
    Http {
        status: u16,
        code: String,
        message: String,
    },

    /// No group carries a name the tenant's `memberOf` filter gives.
    #[error(
        "no group named {name:?} in the directory: check provider_settings.user_filter.memberOf \
         (names are group display names)"
    )]
    GroupNotFound { name: String },

    /// 404 on a subscription: Graph no longer has it (expired or removed);
    /// create it again.
    #[error("Microsoft Graph has no subscription {subscription_id} (HTTP 404: {message}): it expired or was removed; it is created again")]
    SubscriptionNotFound {
        subscription_id: String,
        message: String,
    },

    /// 400 `ValidationError` creating a subscription: Graph's validation
    /// request to the notification URL failed or timed out.
    #[error(
        "Graph could not validate the notification URL {url}: {message}; check that \
         USERSYNC_PUBLIC_URL reaches usersync-api from the internet"
    )]
    NotificationUrlRejected { url: String, message: String },

    /// A success answer whose body is not what Graph documents.
    #[error("unexpected response from Microsoft Graph: {reason}")]
    InvalidResponse { reason: String },

    /// A link that is not a URL, or that points away from the configured Graph
    /// host (the access token is never sent anywhere else).
    #[error("unusable Graph link: {reason}")]
    InvalidLink { reason: String },
}

impl GraphError {
    /// A stable key for the cause, so the same standing error is recognised
    /// across runs (`entra.7000222`, `graph.consent_missing`, …).
    pub fn code(&self) -> String {
        match self {
            GraphError::Auth(failure) => match failure.codes.first() {
                Some(code) => format!("entra.{code}"),
                None => format!("entra.{}", failure.error),
            },
            GraphError::ConsentMissing { .. } => "graph.consent_missing".to_owned(),
            GraphError::ResyncRequired { .. } => "graph.resync_required".to_owned(),
            GraphError::Unavailable { .. } => "graph.unavailable".to_owned(),
            GraphError::Http { status, .. } => format!("graph.http_{status}"),
            GraphError::GroupNotFound { .. } => "graph.group_not_found".to_owned(),
            GraphError::InvalidResponse { .. } => "graph.invalid_response".to_owned(),
            GraphError::InvalidLink { .. } => "graph.invalid_link".to_owned(),
            GraphError::SubscriptionNotFound { .. } => "graph.subscription_not_found".to_owned(),
            GraphError::NotificationUrlRejected { .. } => "graph.notification_url_rejected".to_owned(),
        }
    }
}

/// A refused client-credentials token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    pub kind: AuthFailureKind,
    /// The OAuth `error` field, e.g. `invalid_client`.
    pub error: String,
    /// The `error_codes` field (AADSTS numbers).
    pub codes: Vec<u64>,
    /// HTTP status of the token endpoint's answer.
    pub status: u16,
    /// The tenant and application the request was for (neither is secret).
    pub tenant_id: String,
    pub client_id: String,
}

/// Why Entra ID refused to issue a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailureKind {
    /// AADSTS7000215
    WrongSecret,
    /// AADSTS7000222
    ExpiredSecret,
    /// AADSTS700016
    UnknownApplication,
    /// AADSTS90002
    UnknownTenant,
    /// AADSTS900023
    MalformedTenantId,
    Other,
}

impl AuthFailureKind {
    /// Classifies from the AADSTS codes first, then from the OAuth `error` field.
    pub fn classify(error: &str, codes: &[u64]) -> Self {
        codes
            .iter()
            .find_map(|&code| Self::from_code(code))
            .unwrap_or_else(|| Self::from_error(error))
    }

    fn from_code(code: u64) -> Option<Self> {
        match code {
            7_000_215 => Some(Self::WrongSecret),
            7_000_222 => Some(Self::ExpiredSecret),
            700_016 => Some(Self::UnknownApplication),
            90_002 => Some(Self::UnknownTenant),
            900_023 => Some(Self::MalformedTenantId),
            _ => None,
        }
    }

    fn from_error(error: &str) -> Self {
        match error {
            "invalid_tenant" => Self::UnknownTenant,
            _ => Self::Other,
        }
    }
}

impl AuthFailure {
    /// What went wrong and which tenant-file field to change.
    pub fn operator_message(&self) -> String {
        let (tenant, client) = (&self.tenant_id, &self.client_id);
        match self.kind {
            AuthFailureKind::WrongSecret => "client secret is wrong (AADSTS7000215): copy the \
                secret's Value (not its Secret ID) from Azure (App registrations → Certificates \
                & secrets) and update provider_settings.client_secret"
                .to_string(),
            AuthFailureKind::ExpiredSecret => "client secret expired (AADSTS7000222): create a \
                new client secret in Azure (App registrations → Certificates & secrets) and \
                update provider_settings.client_secret"
                .to_string(),
            AuthFailureKind::UnknownApplication => format!(
                "application (client_id) {client} not found in tenant {tenant} (AADSTS700016): \
                 check provider_settings.client_id and that the app is registered in this tenant"
            ),
            AuthFailureKind::UnknownTenant => {
                format!("tenant {tenant} does not exist (AADSTS90002): check provider_settings.tenant_id")
            }
            AuthFailureKind::MalformedTenantId => format!(
                "tenant id {tenant:?} is malformed (AADSTS900023): provider_settings.tenant_id \
                 must be the Directory (tenant) ID, a GUID, or a verified domain name"
            ),
            AuthFailureKind::Other => format!(
                "Entra ID refused the token request (HTTP {}, error {}, codes {:?}): check \
                 provider_settings.tenant_id, client_id and client_secret",
                self.status, self.error, self.codes
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_decide_over_the_error_field() {
        assert_eq!(
            AuthFailureKind::classify("invalid_tenant", &[7_000_222]),
            AuthFailureKind::ExpiredSecret
        );
        assert_eq!(
            AuthFailureKind::classify("invalid_request", &[1, 900_023]),
            AuthFailureKind::MalformedTenantId
        );
    }

    #[test]
    fn error_field_is_the_fallback() {
        assert_eq!(
            AuthFailureKind::classify("invalid_tenant", &[]),
            AuthFailureKind::UnknownTenant
        );
        assert_eq!(
            AuthFailureKind::classify("invalid_client", &[42]),
            AuthFailureKind::Other
        );
    }

    #[test]
    fn messages_name_the_field_to_change() {
        let failure = AuthFailure {
            kind: AuthFailureKind::UnknownTenant,
            error: "invalid_tenant".into(),
            codes: vec![90_002],
            status: 400,
            tenant_id: "contoso.example".into(),
            client_id: "app".into(),
        };
        let message = GraphError::Auth(failure).to_string();
        assert!(message.contains("contoso.example"), "{message}");
        assert!(message.contains("provider_settings.tenant_id"), "{message}");
    }
}
