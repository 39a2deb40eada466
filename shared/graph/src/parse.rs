//! The page parsers on their own, exactly as the client applies them to the
//! body of a `200`: for property tests and tools that hold a saved answer.

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;
use url::Url;

use crate::pages::{Collection, DirectoryObject, RawGroupDelta};
use crate::retry::AttemptError;
use crate::{response, DeltaPage, GraphError, GroupsDeltaPage, MembersPage};

/// A users delta page answered to `request_url`; links must point at `graph_base_url`.
pub fn users_delta_page(
    graph_base_url: &str,
    request_url: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<DeltaPage, GraphError> {
    let (page, path) = decode::<Value>(graph_base_url, request_url, content_type, body)?;
    DeltaPage::from_collection(page, &path)
}

/// A groups delta page answered to `request_url`.
pub fn groups_delta_page(
    graph_base_url: &str,
    request_url: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<GroupsDeltaPage, GraphError> {
    let (page, path) = decode::<RawGroupDelta>(graph_base_url, request_url, content_type, body)?;
    GroupsDeltaPage::from_collection(page, &path)
}

/// A page of a group's members answered to `request_url`.
pub fn members_page(
    graph_base_url: &str,
    request_url: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<MembersPage, GraphError> {
    let (page, _) = decode::<DirectoryObject>(graph_base_url, request_url, content_type, body)?;
    Ok(MembersPage::from(page))
}

/// One attempt's verdict; a body the client would retry is refused here.
fn decode<T: DeserializeOwned>(
    graph_base_url: &str,
    request_url: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(Collection<T>, String), GraphError> {
    let url = Url::parse(request_url).map_err(|error| GraphError::InvalidLink {
        reason: format!("request URL is not an absolute URL: {error}"),
    })?;
    match response::decode_page(graph_base_url, &url, StatusCode::OK, content_type, body) {
        Ok(page) => Ok((page, url.path().to_owned())),
        Err(AttemptError::Stop(error)) => Err(error),
        Err(AttemptError::Retry(transient)) => Err(GraphError::InvalidResponse {
            reason: transient.reason,
        }),
    }
}
