//! The Graph client: tokens, delta pages, groups and members (subscriptions
//! in `subscriptions.rs`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use url::Url;

use crate::pages::{Collection, DirectoryObject};
use crate::retry::{self, transport_error, AttemptError, RetryHook};
use crate::token::{self, TokenCache, TokenKey};
use crate::{
    response, urls, Credentials, DeltaPage, GraphConfig, GraphError, GroupsDeltaPage, MembersPage,
    ResolvedGroup, RetryEvent,
};

/// A hung connection must not stall a tenant's run forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Client of Microsoft Graph and the Entra ID token endpoint; cheap to clone.
#[derive(Clone)]
pub struct GraphClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    config: GraphConfig,
    tokens: TokenCache,
    retry_hook: Option<RetryHook>,
}

/// Whether a request needs Graph's advanced query mode (`$count` on members).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Consistency {
    Default,
    Eventual,
}

impl GraphClient {
    pub fn new(config: GraphConfig) -> Self {
        Self::build(config, None)
    }

    /// Like [`GraphClient::new`], and calls `hook` before every retry wait, e.g. to
    /// count throttling in a metric.
    pub fn with_retry_hook(config: GraphConfig, hook: impl Fn(&RetryEvent) + Send + Sync + 'static) -> Self {
        Self::build(config, Some(Arc::new(hook)))
    }

    fn build(config: GraphConfig, retry_hook: Option<RetryHook>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("usersync-graph/", env!("CARGO_PKG_VERSION")))
            .build()
            // Only fails if the TLS backend cannot initialise: nothing can work then.
            .expect("HTTP client with the built-in rustls configuration");
        Self {
            inner: Arc::new(Inner {
                http,
                config,
                tokens: TokenCache::default(),
                retry_hook,
            }),
        }
    }

    pub fn config(&self) -> &GraphConfig {
        &self.inner.config
    }

    /// Client-credentials token, cached per (tenant_id, client_id, secret
    /// fingerprint) until 5 minutes before expiry.
    pub async fn token(&self, creds: &Credentials) -> Result<String, GraphError> {
        let key = TokenKey::of(creds);
        if let Some(token) = self.inner.tokens.get(&key) {
            return Ok(token);
        }
        let login_base_url = &self.inner.config.login_base_url;
        let grant = self
            .with_retries(|| token::request_token(&self.inner.http, login_base_url, creds))
            .await?;
        tracing::debug!(tenant_id = %creds.tenant_id, "fetched a Graph access token");
        self.inner.tokens.put(key, &grant);
        Ok(grant.access_token.expose_secret().to_string())
    }

    /// First URL of a full users delta round; always selects `id` and `accountEnabled`.
    pub fn users_delta_start_url(&self, select: &[String]) -> String {
        urls::users_delta_start(&self.inner.config.graph_base_url, select)
    }

    /// One page of a delta round, from a next or delta link exactly as given.
    pub async fn users_delta_page(&self, creds: &Credentials, url: &str) -> Result<DeltaPage, GraphError> {
        let (page, path) = self.get(creds, url, Consistency::Default).await?;
        DeltaPage::from_collection(page, &path)
    }

    /// First URL of a groups delta round without a token (every group, every member).
    pub fn groups_delta_start_url(&self) -> String {
        urls::groups_delta_start(&self.inner.config.graph_base_url)
    }

    /// One page of a groups delta round, from a next or delta link exactly as given.
    pub async fn groups_delta_page(
        &self,
        creds: &Credentials,
        url: &str,
    ) -> Result<GroupsDeltaPage, GraphError> {
        let (page, path) = self.get(creds, url, Consistency::Default).await?;
        GroupsDeltaPage::from_collection(page, &path)
    }

    /// The ids of the groups carrying each display name, one entry per name.
    pub async fn resolve_groups(
        &self,
        creds: &Credentials,
        names: &[String],
    ) -> Result<Vec<ResolvedGroup>, GraphError> {
        let mut resolved = Vec::with_capacity(names.len());
        for name in names {
            let ids = self.group_ids_named(creds, name).await?;
            if ids.is_empty() {
                tracing::info!(group = %name, "no Entra ID group has this display name");
            }
            resolved.push(ResolvedGroup {
                name: name.clone(),
                ids,
            });
        }
        Ok(resolved)
    }

    async fn group_ids_named(&self, creds: &Credentials, name: &str) -> Result<Vec<String>, GraphError> {
        let mut ids = Vec::new();
        let mut link = Some(urls::group_by_name(&self.inner.config.graph_base_url, name));
        while let Some(url) = link {
            let (page, _): (Collection<DirectoryObject>, _) =
                self.get(creds, &url, Consistency::Default).await?;
            ids.extend(page.value.into_iter().map(|group| group.id));
            link = page.next_link;
        }
        Ok(ids)
    }

    /// First page URL of a group's transitive user members.
    pub fn members_start_url(&self, group_id: &str) -> String {
        urls::members_start(&self.inner.config.graph_base_url, group_id)
    }

    /// One page of a group's transitive user members.
    pub async fn members_page(&self, creds: &Credentials, url: &str) -> Result<MembersPage, GraphError> {
        let (page, _) = self.get(creds, url, Consistency::Eventual).await?;
        Ok(MembersPage::from(page))
    }

    /// GET of a collection page with retries and token refresh, and the
    /// request's path (for messages: the query may carry a delta token).
    async fn get<T: DeserializeOwned>(
        &self,
        creds: &Credentials,
        link: &str,
        consistency: Consistency,
    ) -> Result<(Collection<T>, String), GraphError> {
        let url = urls::trusted_link(&self.inner.config.graph_base_url, link)?;
        let page = self
            .with_fresh_token(creds, || self.get_once(creds, &url, consistency))
            .await?;
        Ok((page, url.path().to_owned()))
    }

    async fn get_once<T: DeserializeOwned>(
        &self,
        creds: &Credentials,
        url: &Url,
        consistency: Consistency,
    ) -> Result<Collection<T>, AttemptError> {
        let token = self.token(creds).await?;
        let mut request = self.inner.http.get(url.clone()).bearer_auth(token);
        if consistency == Consistency::Eventual {
            request = request.header("ConsistencyLevel", "eventual");
        }
        let sent = self.timed_send(request).await?;
        response::read_page(&self.inner.config.graph_base_url, url, sent).await
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// Sends a request, counted and timed in the Graph request metrics.
    pub(crate) async fn timed_send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, AttemptError> {
        let started = std::time::Instant::now();
        let sent = request.send().await;
        let status = match &sent {
            Ok(response) => response.status().as_u16().to_string(),
            Err(_) => "error".to_owned(),
        };
        metrics::counter!("usersync_graph_requests_total", "status" => status).increment(1);
        metrics::histogram!("usersync_graph_request_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        sent.map_err(transport_error)
    }

    /// `attempt` with retries; a 401 means the token went stale early, so it
    /// is dropped and the request tried once more with a fresh one.
    pub(crate) async fn with_fresh_token<T, F, Fut>(
        &self,
        creds: &Credentials,
        mut attempt: F,
    ) -> Result<T, GraphError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, AttemptError>>,
    {
        match self.with_retries(&mut attempt).await {
            Err(GraphError::Http { status: 401, .. }) => {
                tracing::info!(tenant_id = %creds.tenant_id, "Graph rejected the access token; fetching a new one");
                self.inner.tokens.forget(&TokenKey::of(creds));
                self.with_retries(attempt).await
            }
            outcome => outcome,
        }
    }

    async fn with_retries<T, F, Fut>(&self, attempt: F) -> Result<T, GraphError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, AttemptError>>,
    {
        let hook = self.inner.retry_hook.as_ref();
        retry::with_retries(&self.inner.config.retry, hook, attempt).await
    }
}

impl fmt::Debug for GraphClient {
    /// Shows the configuration only: never cached tokens.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}
