//! Building Graph and Entra ID URLs.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use url::Url;

use crate::GraphError;

/// Everything except RFC 3986 unreserved characters is escaped, which is safe both
/// in a path segment and in a query value.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Properties every delta round needs, whatever the mapping selects.
const ALWAYS_SELECTED: [&str; 2] = ["id", "accountEnabled"];

fn encode(component: &str) -> String {
    utf8_percent_encode(component, COMPONENT).to_string()
}

fn trimmed(base: &str) -> &str {
    base.trim_end_matches('/')
}

pub(crate) fn token_endpoint(login_base_url: &str, tenant_id: &str) -> String {
    format!(
        "{}/{}/oauth2/v2.0/token",
        trimmed(login_base_url),
        encode(tenant_id)
    )
}

pub(crate) fn users_delta_start(graph_base_url: &str, select: &[String]) -> String {
    let mut properties: Vec<&str> = ALWAYS_SELECTED.to_vec();
    for property in select.iter().map(|p| p.trim()) {
        if !property.is_empty() && !properties.contains(&property) {
            properties.push(property);
        }
    }
    let select = properties
        .iter()
        .map(|property| encode(property))
        .collect::<Vec<_>>()
        .join(",");
    format!("{}/users/delta?$select={select}", trimmed(graph_base_url))
}

/// OData string literals double an embedded quote.
pub(crate) fn group_by_name(graph_base_url: &str, name: &str) -> String {
    let filter = format!("displayName eq '{}'", name.replace('\'', "''"));
    format!(
        "{}/groups?$filter={}&$select=id,displayName",
        trimmed(graph_base_url),
        encode(&filter)
    )
}

pub(crate) fn members_start(graph_base_url: &str, group_id: &str) -> String {
    format!(
        "{}/groups/{}/transitiveMembers/microsoft.graph.user?$count=true&$select=id",
        trimmed(graph_base_url),
        encode(group_id)
    )
}

/// Only what membership tracking needs: the groups delta with `members@delta`.
pub(crate) fn groups_delta_start(graph_base_url: &str) -> String {
    format!(
        "{}/groups/delta?$select=displayName,members",
        trimmed(graph_base_url)
    )
}

/// `/subscriptions`, or `/subscriptions/{id}{tail}` (e.g. `/reauthorize`).
pub(crate) fn subscription(graph_base_url: &str, id: Option<&str>, tail: &str) -> String {
    match id {
        Some(id) => format!("{}/subscriptions/{}{tail}", trimmed(graph_base_url), encode(id)),
        None => format!("{}/subscriptions", trimmed(graph_base_url)),
    }
}

/// Parses a link and checks it points at the configured Graph host, so the access
/// token is never sent anywhere else.
pub(crate) fn trusted_link(graph_base_url: &str, link: &str) -> Result<Url, GraphError> {
    let base = Url::parse(graph_base_url).map_err(|error| GraphError::InvalidLink {
        reason: format!("graph_base_url {graph_base_url:?} is not a URL: {error}"),
    })?;
    let url = Url::parse(link).map_err(|error| GraphError::InvalidLink {
        reason: format!("not an absolute URL: {error}"),
    })?;
    if !same_server(&url, &base) {
        return Err(GraphError::InvalidLink {
            reason: format!(
                "{} is not the configured Graph host {}",
                url.origin().ascii_serialization(),
                base.origin().ascii_serialization()
            ),
        });
    }
    Ok(url)
}

/// Same origin; on this machine `localhost`, `127.0.0.1` and `::1` count as one
/// host (a local Graph, such as a test double, may name itself either way).
fn same_server(url: &Url, base: &Url) -> bool {
    if url.origin() == base.origin() {
        return true;
    }
    let loopback = |u: &Url| match u.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    url.scheme() == base.scheme()
        && url.port_or_known_default() == base.port_or_known_default()
        && loopback(url)
        && loopback(base)
}

/// A `Location` header may be relative; it is resolved against the request URL.
pub(crate) fn resolve_location(request: &Url, location: &str) -> Option<String> {
    request.join(location).ok().map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRAPH: &str = "https://graph.microsoft.com/v1.0/";

    #[test]
    fn delta_start_always_selects_id_and_account_enabled_once() {
        let select = ["displayName", "id", "mail", "displayName", " "].map(String::from);
        assert_eq!(
            users_delta_start(GRAPH, &select),
            "https://graph.microsoft.com/v1.0/users/delta?$select=id,accountEnabled,displayName,mail"
        );
    }

    #[test]
    fn group_filter_doubles_quotes_and_percent_encodes() {
        assert_eq!(
            group_by_name(GRAPH, "R&D O'Neil"),
            "https://graph.microsoft.com/v1.0/groups?$filter=displayName%20eq%20%27R%26D%20O%27%27Neil%27&$select=id,displayName"
        );
    }

    #[test]
    fn tenant_id_cannot_escape_its_path_segment() {
        assert_eq!(
            token_endpoint("https://login.microsoftonline.com", "a/b?c"),
            "https://login.microsoftonline.com/a%2Fb%3Fc/oauth2/v2.0/token"
        );
    }

    #[test]
    fn links_to_other_hosts_are_refused() {
        assert!(trusted_link(GRAPH, "https://graph.microsoft.com/v1.0/users/delta?x=1").is_ok());
        assert!(trusted_link(GRAPH, "https://evil.example/v1.0/users/delta").is_err());
        assert!(trusted_link(GRAPH, "http://graph.microsoft.com/v1.0/users").is_err());
        assert!(trusted_link(GRAPH, "/v1.0/users").is_err());
    }

    #[test]
    fn loopback_names_are_one_local_host_but_ports_still_count() {
        let local = "http://127.0.0.1:8081/v1.0";
        assert!(trusted_link(local, "http://localhost:8081/v1.0/users/delta?x=1").is_ok());
        assert!(trusted_link(local, "http://[::1]:8081/v1.0/users/delta").is_ok());
        assert!(trusted_link(local, "http://localhost:9999/v1.0/users/delta").is_err());
        assert!(trusted_link(local, "http://10.0.0.1:8081/v1.0/users/delta").is_err());
    }

    #[test]
    fn relative_location_is_resolved() {
        let request = Url::parse("https://graph.microsoft.com/v1.0/users/delta?$deltatoken=x").expect("url");
        assert_eq!(
            resolve_location(&request, "/v1.0/users/delta?$select=id").as_deref(),
            Some("https://graph.microsoft.com/v1.0/users/delta?$select=id")
        );
    }
}
