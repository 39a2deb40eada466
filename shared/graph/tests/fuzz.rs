//! Property tests of the Graph page parsers, as the client applies them to the
//! body of a `200`: arbitrary bytes, and arbitrary JSON shaped like pages. They
//! never panic; every refusal has a code and a message that names the request
//! and the problem (and never the query, which may carry a delta token).
//!
//! 256 cases per property by default; `PROPTEST_CASES=10000` for a long run.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Map, Value};
use usersync_graph::{parse, GraphError, PageLink};

const BASE: &str = "http://127.0.0.1:8081/v1.0";
const REQUEST: &str = "http://127.0.0.1:8081/v1.0/users/delta?$deltatoken=tok-SECRET";
const PATH: &str = "/v1.0/users/delta";
/// Words of which a refusal must name at least one: the key, or what the body is.
const NAMES: [&str; 7] = [
    "`value`",
    "`id`",
    "@odata.nextLink",
    "@odata.deltaLink",
    "not JSON",
    "body is",
    "item ",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z@.]{0,8}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A link: on the Graph host, on another origin, or any string.
fn link() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-z0-9=&$?/]{0,20}".prop_map(|rest| Value::from(format!("{BASE}/users/delta{rest}"))),
        ("(https?)://[a-z0-9.]{1,12}(:[0-9]{1,5})?", "[a-z0-9=&$?/]{0,12}")
            .prop_map(|(origin, rest)| Value::from(format!("{origin}/v1.0/{rest}"))),
        any::<String>().prop_map(Value::from),
        json_value(),
    ]
}

/// An item of `value`: mostly a user, sometimes without `id` or with an odd one.
fn item() -> impl Strategy<Value = Value> {
    let id = prop_oneof![
        4 => "[a-f0-9-]{1,12}".prop_map(Value::from),
        1 => json_value(),
    ];
    (
        prop::option::weighted(0.9, id),
        prop::collection::btree_map("[a-zA-Z@]{1,10}", json_value(), 0..3),
    )
        .prop_map(|(id, rest)| {
            let mut user: Map<String, Value> = rest.into_iter().collect();
            user.remove("id");
            if let Some(id) = id {
                user.insert("id".to_owned(), id);
            }
            Value::Object(user)
        })
}

/// A page: `value` (an array of items, or anything), links, and stray keys; each may be absent.
fn page() -> impl Strategy<Value = Value> {
    let value = prop_oneof![
        4 => prop::collection::vec(item(), 0..5).prop_map(Value::from),
        1 => json_value(),
    ];
    (
        prop::option::weighted(0.9, value),
        prop::option::of(link()),
        prop::option::of(link()),
        prop::collection::btree_map("[a-z@.]{1,12}", json_value(), 0..3),
    )
        .prop_map(|(value, next, delta, extra)| {
            let mut page: Map<String, Value> = extra.into_iter().collect();
            for (key, field) in [
                ("value", value),
                ("@odata.nextLink", next),
                ("@odata.deltaLink", delta),
            ] {
                match field {
                    Some(field) => page.insert(key.to_owned(), field),
                    None => page.remove(key),
                };
            }
            Value::Object(page)
        })
}

fn check_refusal(error: &GraphError) -> Result<(), TestCaseError> {
    let message = error.to_string();
    prop_assert!(!error.code().is_empty());
    prop_assert!(message.contains(PATH), "the request is not named: {message}");
    prop_assert!(!message.contains("SECRET"), "the query is shown: {message}");
    prop_assert!(
        NAMES.iter().any(|name| message.contains(name)),
        "the problem is not named: {message}"
    );
    Ok(())
}

/// An accepted page holds only links to the Graph host.
fn check_link(link: &PageLink) -> Result<(), TestCaseError> {
    let (PageLink::Next(url) | PageLink::Delta(url)) = link;
    let parsed = url::Url::parse(url).map_err(|e| TestCaseError::fail(format!("{url}: {e}")))?;
    prop_assert_eq!(parsed.origin().ascii_serialization(), "http://127.0.0.1:8081");
    Ok(())
}

fn every_parser(body: &[u8], content_type: Option<&str>) -> Result<(), TestCaseError> {
    match parse::users_delta_page(BASE, REQUEST, content_type, body) {
        Ok(page) => check_link(&page.next)?,
        Err(error) => check_refusal(&error)?,
    }
    match parse::groups_delta_page(BASE, REQUEST, content_type, body) {
        Ok(page) => check_link(&page.next)?,
        Err(error) => check_refusal(&error)?,
    }
    match parse::members_page(BASE, REQUEST, content_type, body) {
        Ok(page) => {
            if let Some(next) = &page.next {
                check_link(&PageLink::Next(next.clone()))?;
            }
        }
        Err(error) => check_refusal(&error)?,
    }
    Ok(())
}

#[test]
fn a_documented_page_is_accepted() {
    let body = serde_json::json!({
        "@odata.context": "x",
        "value": [{"id": "u1", "displayName": "Ada"}, {"id": "u2", "@removed": {"reason": "deleted"}}],
        "@odata.deltaLink": format!("{BASE}/users/delta?$deltatoken=n"),
    });
    let page = parse::users_delta_page(
        BASE,
        REQUEST,
        Some("application/json"),
        body.to_string().as_bytes(),
    )
    .expect("a documented page");
    assert_eq!(page.users.len(), 2);
    assert!(matches!(page.next, PageLink::Delta(_)));
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("tests/fuzz.proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic_and_refusals_name_the_problem(body in prop::collection::vec(any::<u8>(), 0..256)) {
        every_parser(&body, Some("text/html"))?;
    }

    #[test]
    fn arbitrary_json_never_panics_and_refusals_name_the_problem(value in json_value()) {
        every_parser(value.to_string().as_bytes(), None)?;
    }

    #[test]
    fn page_shaped_json_is_accepted_only_whole_and_on_the_graph_host(page in page()) {
        let body = page.to_string();
        every_parser(body.as_bytes(), Some("application/json"))?;
        let value = page.get("value").and_then(Value::as_array);
        let well_formed = value.is_some_and(|items| {
            items.iter().all(|item| item.get("id").and_then(Value::as_str).is_some_and(|id| !id.is_empty()))
        });
        let outcome = parse::users_delta_page(BASE, REQUEST, None, body.as_bytes());
        if let Ok(delta) = &outcome {
            prop_assert_eq!(Some(delta.users.len()), value.map(Vec::len));
        }
        if !well_formed {
            prop_assert!(outcome.is_err(), "accepted a page without a whole `value`: {body}");
        }
    }
}
