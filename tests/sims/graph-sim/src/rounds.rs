//! Mechanics shared by `users/delta` and `groups/delta`: turning the query
//! string into a round to serve, and building the page envelope with its
//! nextLink or deltaLink.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::errors::GraphError;
use crate::seed::splitmix64;
use crate::sync_token::{self, Resource, Step, SyncToken};
use crate::tenant::{ExpiryStyle, Tenant, TokenProblem};

/// The raw query string options (`$select`, `$skiptoken`, …), percent-decoded.
pub type QueryParams = HashMap<String, String>;

/// The part of a round that a page continues.
pub enum Round<P> {
    Full {
        snapshot: u64,
        page: u32,
        position: P,
    },
    Changes {
        since: u64,
        until: u64,
        page: u32,
        after_seq: u64,
    },
}

/// A round resolved from the request, plus the options every link repeats.
pub struct ResolvedRound<P> {
    pub select: Vec<String>,
    pub filter_ids: Option<Vec<String>>,
    pub round: Round<P>,
}

/// Options of a fresh round (no token): select list and optional id filter.
pub type FreshOptions = (Vec<String>, Option<Vec<String>>);

/// Where a resource lives and what its tokens are called.
pub struct Endpoint<'a> {
    pub resource: Resource,
    pub base_url: &'a str,
    pub path: &'static str,
}

impl Endpoint<'_> {
    /// Resolves `$skiptoken`, `$deltatoken` (including `latest`) or a fresh
    /// round. `fresh` parses `$select`/`$filter`, only when no token is given.
    pub fn resolve<P: DeserializeOwned + Default>(
        &self,
        tenant: &Tenant,
        query: &QueryParams,
        fresh: impl FnOnce() -> Result<FreshOptions, GraphError>,
    ) -> Result<ResolvedRound<P>, GraphError> {
        let seq = tenant.directory.seq();
        let delta_token = query.get("$deltatoken").map(String::as_str);
        if delta_token == Some("latest") {
            let (select, filter_ids) = fresh()?;
            let round = changes_from(seq, seq);
            return Ok(ResolvedRound {
                select,
                filter_ids,
                round,
            });
        }
        let Some(text) = query.get("$skiptoken").map(String::as_str).or(delta_token) else {
            let (select, filter_ids) = fresh()?;
            let round = Round::Full {
                snapshot: seq,
                page: 0,
                position: P::default(),
            };
            return Ok(ResolvedRound {
                select,
                filter_ids,
                round,
            });
        };
        let token: SyncToken<P> = sync_token::decode(text).ok_or_else(invalid_token)?;
        if token.resource != self.resource {
            return Err(invalid_token());
        }
        match tenant.check_stamp(&token.stamp) {
            Err(TokenProblem::Expired) => {
                let restart = self.restart_url(&token.select);
                return Err(expired(tenant.settings.expiry_style, &restart));
            }
            Err(TokenProblem::Invalid) => return Err(invalid_token()),
            Ok(()) => {}
        }
        let round = match token.step {
            Step::Track { since } if since <= seq => changes_from(since, seq),
            Step::Full {
                snapshot,
                page,
                position,
            } if snapshot <= seq => Round::Full {
                snapshot,
                page,
                position,
            },
            Step::Changes {
                since,
                until,
                page,
                after_seq,
            } if until <= seq => Round::Changes {
                since,
                until,
                page,
                after_seq,
            },
            _ => return Err(invalid_token()),
        };
        Ok(ResolvedRound {
            select: token.select,
            filter_ids: token.filter_ids,
            round,
        })
    }

    /// The URL of a fresh full round with the same `$select`.
    fn restart_url(&self, select: &[String]) -> String {
        let base = format!("{}{}", self.base_url, self.path);
        if select.is_empty() {
            base
        } else {
            format!("{base}?$select={}", select.join(","))
        }
    }

    /// The nextLink or deltaLink that continues `resolved` at `step`.
    pub fn link<P: Serialize>(&self, tenant: &Tenant, resolved: &ResolvedRound<P>, step: Step<P>) -> Link {
        let is_delta = matches!(step, Step::Track { .. });
        let token = SyncToken {
            resource: self.resource,
            stamp: tenant.stamp(),
            select: resolved.select.clone(),
            filter_ids: resolved.filter_ids.clone(),
            step,
        };
        let text = sync_token::encode(&token);
        let base = format!("{}{}", self.base_url, self.path);
        if is_delta {
            Link::Delta(format!("{base}?$deltatoken={text}"))
        } else {
            Link::Next(format!("{base}?$skiptoken={text}"))
        }
    }
}

fn changes_from<P>(since: u64, until: u64) -> Round<P> {
    Round::Changes {
        since,
        until,
        page: 0,
        after_seq: since,
    }
}

fn invalid_token() -> GraphError {
    GraphError::bad_request("syncStateInvalid", "The delta or skip token is not valid.")
}

fn expired(style: ExpiryStyle, restart_url: &str) -> GraphError {
    let message = "The sync state has expired; start a new round without a token.";
    match style {
        ExpiryStyle::Gone => {
            GraphError::new(StatusCode::GONE, "resyncRequired", message).with_location(restart_url)
        }
        ExpiryStyle::SyncStateNotFound => GraphError::bad_request("syncStateNotFound", message),
        ExpiryStyle::SyncStateInvalid => GraphError::bad_request("syncStateInvalid", message),
        ExpiryStyle::ResyncRequired => GraphError::bad_request("resyncRequired", message),
    }
}

/// Varies the page size between half and all of `nominal`, deterministically
/// per page, so that clients cannot come to rely on a fixed size.
pub fn varied_page_size(nominal: usize, page: u32, salt: u64) -> usize {
    let nominal = nominal.max(1);
    let half = nominal.div_ceil(2);
    let spread = (nominal - half + 1) as u64;
    half + (splitmix64(salt ^ u64::from(page)) % spread) as usize
}

/// Parses a `$select` list, checking every name with `known`.
pub fn parse_select(
    query: &QueryParams,
    known: impl Fn(&str) -> bool,
    default: &[&str],
    type_name: &str,
) -> Result<Vec<String>, GraphError> {
    let Some(list) = query.get("$select") else {
        return Ok(default.iter().map(|name| (*name).to_owned()).collect());
    };
    let mut names = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !known(name) {
            let message =
                format!("Could not find a property named '{name}' on type 'microsoft.graph.{type_name}'.");
            return Err(GraphError::bad_request("Request_BadRequest", &message));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

pub enum Link {
    Next(String),
    Delta(String),
}

/// One page of a Graph collection.
pub struct Page {
    pub context: String,
    pub items: Vec<Value>,
    pub link: Option<Link>,
    pub count: Option<usize>,
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("@odata.context".into(), Value::String(self.context));
        if let Some(count) = self.count {
            body.insert("@odata.count".into(), Value::from(count));
        }
        match self.link {
            Some(Link::Next(url)) => body.insert("@odata.nextLink".into(), Value::String(url)),
            Some(Link::Delta(url)) => body.insert("@odata.deltaLink".into(), Value::String(url)),
            None => None,
        };
        body.insert("value".into(), Value::Array(self.items));
        Json(Value::Object(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_vary_within_bounds() {
        let sizes: Vec<usize> = (0..50).map(|page| varied_page_size(100, page, 7)).collect();
        assert!(sizes.iter().all(|s| (50..=100).contains(s)));
        assert!(sizes.iter().any(|s| *s != sizes[0]));
        assert_eq!(varied_page_size(1, 3, 9), 1);
    }
}
