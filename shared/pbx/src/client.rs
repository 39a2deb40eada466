//! HTTP client for the PBX user API. One call, one request: no retries here.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};

use crate::answer::{Answer, Shape};
use crate::error::{PbxError, PbxErrorKind};
use crate::model::{Items, NewUser, Number, PbxUser, Template, UserFilter, UsersPage};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The contract's bounds for `limit`; asking outside them would earn a 400.
const PAGE_LIMIT_RANGE: (u32, u32) = (1, 1000);

/// Everything but RFC 3986 "unreserved" characters is escaped in path
/// segments and query values, so ids can never change the URL's shape.
const URL_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Client for one PBX base URL and token. Cheap to clone.
#[derive(Clone)]
pub struct PbxClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: String,
    token: SecretString,
}

impl fmt::Debug for PbxClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PbxClient")
            .field("base_url", &self.inner.base_url)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl PbxClient {
    /// A client with its own connection pool and the standard timeouts.
    pub fn new(base_url: &str, token: &str) -> Result<Self, PbxError> {
        check_base_url(base_url)?;
        Ok(Self::with_http(Self::http()?, base_url, token))
    }

    /// The `reqwest::Client` to share between tenants' clients: the standard
    /// timeouts, and redirects are not followed (the contract has none, and
    /// a redirect must not take a request, let alone the token, elsewhere).
    pub fn http() -> Result<reqwest::Client, PbxError> {
        reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| PbxError::from_reqwest(&err))
    }

    /// A client on a shared `reqwest::Client`, so tenants share one pool.
    /// Use one from [`PbxClient::http`]: a client that follows redirects
    /// sends requests (not the token: reqwest drops it) to wherever one
    /// points; the answer from there is refused (see `read`), but a failure
    /// to reach there looks like a transport error of the PBX.
    pub fn with_http(http: reqwest::Client, base_url: &str, token: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                base_url: base_url.trim_end_matches('/').to_string(),
                token: SecretString::from(token),
            }),
        }
    }

    pub async fn list_templates(&self, company: &str) -> Result<Vec<Template>, PbxError> {
        let url = self.company_url(company, &["templates"], &[])?;
        let items: Items<Template> = self.call(Method::GET, &url, StatusCode::OK, |r| r).await?;
        Ok(items.items)
    }

    pub async fn list_numbers(&self, company: &str) -> Result<Vec<Number>, PbxError> {
        let url = self.company_url(company, &["numbers"], &[])?;
        let items: Items<Number> = self.call(Method::GET, &url, StatusCode::OK, |r| r).await?;
        Ok(items.items)
    }

    /// Creates a user. Repeating the call with the same `idempotency_key` and
    /// body returns the first answer and creates nothing new.
    pub async fn create_user(
        &self,
        company: &str,
        user: &NewUser,
        idempotency_key: &str,
    ) -> Result<PbxUser, PbxError> {
        let url = self.company_url(company, &["users"], &[])?;
        self.call(Method::POST, &url, StatusCode::CREATED, |r| {
            r.header("Idempotency-Key", idempotency_key).json(user)
        })
        .await
    }

    /// Changes the given fields. With `if_match`, a stale version fails with
    /// [`PbxErrorKind::Stale`] instead of overwriting a newer change.
    pub async fn update_user(
        &self,
        company: &str,
        id: &str,
        patch: &serde_json::Value,
        if_match: Option<i64>,
    ) -> Result<PbxUser, PbxError> {
        let url = self.company_url(company, &["users", id], &[])?;
        self.call(Method::PATCH, &url, StatusCode::OK, |r| {
            let r = r.json(patch);
            match if_match {
                Some(version) => r.header(reqwest::header::IF_MATCH, version.to_string()),
                None => r,
            }
        })
        .await
    }

    /// 404 counts as done: Ok(false) when it was already gone, Ok(true) when deleted now.
    pub async fn delete_user(&self, company: &str, id: &str) -> Result<bool, PbxError> {
        let url = self.company_url(company, &["users", id], &[])?;
        let answer = self.send(Method::DELETE, &url, |r| r).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        answer.empty(StatusCode::NO_CONTENT).map(|()| true)
    }

    /// The user, or None when the PBX does not know the id.
    pub async fn get_user(&self, company: &str, id: &str) -> Result<Option<PbxUser>, PbxError> {
        let url = self.company_url(company, &["users", id], &[])?;
        let answer = self.send(Method::GET, &url, |r| r).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        answer.json(StatusCode::OK).map(Some)
    }

    /// Users matching a unique key (normally zero or one), across all pages.
    pub async fn find_users(&self, company: &str, filter: UserFilter) -> Result<Vec<PbxUser>, PbxError> {
        let (key, value) = filter.query_pair();
        let limit = PAGE_LIMIT_RANGE.1.to_string();
        let mut found = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut query = vec![(key, value), ("limit", limit.as_str())];
            if let Some(cursor) = &cursor {
                query.push(("cursor", cursor));
            }
            let url = self.company_url(company, &["users"], &query)?;
            let page: UsersPage = self.call(Method::GET, &url, StatusCode::OK, |r| r).await?;
            found.extend(page.items);
            match page.next_cursor {
                // A cursor that does not move would loop forever.
                Some(next) if cursor.as_deref() != Some(next.as_str()) => cursor = Some(next),
                _ => return Ok(found),
            }
        }
    }

    /// One page of users; pass the previous page's `next_cursor` to go on.
    /// `limit` is kept within the contract's 1–1000.
    pub async fn list_users_page(
        &self,
        company: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<UsersPage, PbxError> {
        let limit = limit.clamp(PAGE_LIMIT_RANGE.0, PAGE_LIMIT_RANGE.1).to_string();
        let mut query = vec![("limit", limit.as_str())];
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor));
        }
        let url = self.company_url(company, &["users"], &query)?;
        self.call(Method::GET, &url, StatusCode::OK, |r| r).await
    }

    /// Sends a request and decodes the body of the `expected` status; any
    /// other status, or a body not of the contract's shape, is an error.
    async fn call<T: Shape>(
        &self,
        method: Method,
        url: &str,
        expected: StatusCode,
        build: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Result<T, PbxError> {
        self.send(method, url, build).await?.json(expected)
    }

    /// Sends one authenticated request and reads its whole answer; only
    /// failures to get one are errors here.
    async fn send(
        &self,
        method: Method,
        url: &str,
        build: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Result<Answer, PbxError> {
        let request = request_line(&method, url);
        let response = self.exchange(method, url, build).await;
        read(request, url, response?).await
    }

    /// One authenticated request, measured; only failures to get an answer are errors here.
    async fn exchange(
        &self,
        method: Method,
        url: &str,
        build: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, PbxError> {
        let request = self
            .inner
            .http
            .request(method.clone(), url)
            .bearer_auth(self.inner.token.expose_secret());
        let started = Instant::now();
        let result = build(request).send().await;
        let elapsed = started.elapsed();
        let elapsed_ms = elapsed.as_millis();
        let status = match &result {
            Ok(response) => response.status().as_u16().to_string(),
            Err(_) => "transport".to_owned(),
        };
        let method_label = method.as_str().to_owned();
        metrics::counter!("usersync_pbx_requests_total", "method" => method_label.clone(), "status" => status)
            .increment(1);
        metrics::histogram!("usersync_pbx_request_duration_seconds", "method" => method_label)
            .record(elapsed.as_secs_f64());
        match result {
            Ok(response) => {
                tracing::debug!(%method, url, status = response.status().as_u16(), elapsed_ms, "PBX call");
                Ok(response)
            }
            Err(err) => {
                let err = PbxError::from_reqwest(&err).with_request(&request_line(&method, url));
                tracing::debug!(%method, url, elapsed_ms, error = %err, "PBX call failed");
                Err(err)
            }
        }
    }

    /// `{base}/v1/companies/{company}/{segments…}?{query}`, every piece escaped.
    fn company_url(
        &self,
        company: &str,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<String, PbxError> {
        let mut url = format!("{}/v1/companies/{}", self.inner.base_url, segment(company)?);
        for part in segments {
            url.push('/');
            url.push_str(&segment(part)?);
        }
        for (index, (key, value)) in query.iter().enumerate() {
            url.push(if index == 0 { '?' } else { '&' });
            url.push_str(key);
            url.push('=');
            url.extend(utf8_percent_encode(value, URL_COMPONENT));
        }
        Ok(url)
    }
}

/// One escaped path segment. Empty and dot segments are refused: URL
/// normalisation would otherwise turn them into a different resource.
fn segment(raw: &str) -> Result<String, PbxError> {
    if matches!(raw, "" | "." | "..") {
        return Err(PbxError::without_status(
            PbxErrorKind::BadRequest,
            format!("refusing to use {raw:?} as a company or user id"),
        ));
    }
    Ok(utf8_percent_encode(raw, URL_COMPONENT).to_string())
}

fn check_base_url(base_url: &str) -> Result<(), PbxError> {
    let parsed = reqwest::Url::parse(base_url).map_err(|err| {
        PbxError::without_status(
            PbxErrorKind::Unexpected,
            format!("invalid PBX base URL {base_url:?}: {err}"),
        )
    })?;
    match parsed.scheme() {
        "http" | "https" => Ok(()),
        other => Err(PbxError::without_status(
            PbxErrorKind::Unexpected,
            format!("PBX base URL must be http or https, not {other}"),
        )),
    }
}

/// `METHOD /path` for messages: no host, no query (ids stay, the token is never in a URL).
fn request_line(method: &Method, url: &str) -> String {
    let path = Url::parse(url).map_or_else(|_| url.to_owned(), |parsed| parsed.path().to_owned());
    format!("{method} {path}")
}

/// Reads the whole answer. A body cut short (the connection lost mid-body)
/// is a transport error naming how much arrived; an answer from another URL
/// than asked (a `reqwest::Client` that follows redirects) is refused.
async fn read(request: String, url: &str, mut response: Response) -> Result<Answer, PbxError> {
    let status = response.status();
    if Url::parse(url).ok().as_ref() != Some(response.url()) {
        let detail = format!(
            "from {} after a redirect that the contract does not have; use a client that does not follow redirects (PbxClient::http) and check the PBX API URL",
            response.url()
        );
        return Err(
            PbxError::answered(PbxErrorKind::Unexpected, status.as_u16(), detail).with_request(&request),
        );
    }
    let headers = response.headers().clone();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(err) => {
                let detail = format!(
                    "the connection was cut after {} bytes of the body: {}",
                    body.len(),
                    usersync_core::error_chain(&err)
                );
                return Err(
                    PbxError::answered(PbxErrorKind::Transport, status.as_u16(), detail)
                        .with_request(&request),
                );
            }
        }
    }
    Ok(Answer {
        request,
        status,
        headers,
        body,
    })
}
