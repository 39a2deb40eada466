//! The PBX client's answer parsing on arbitrary statuses, headers and bodies:
//! it never panics, never takes an answer for success unless it has the
//! call's status and the contract's shape, and every error says something.

use proptest::prelude::*;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::StatusCode;
use usersync_pbx::{Answer, Items, Number, PbxError, PbxUser, Template, UsersPage};

/// Bodies that come close to the contract's shapes, as well as noise.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let user = r#"{"id":"u1","alias":"a","first_name":"A","surname":"B","pstn_fixed":"4612345678","email":null,"caller_id":null,"template":null,"external_id":null,"attributes":{},"version":1}"#;
    let near = prop_oneof![
        Just(user.to_owned()),
        Just(format!(r#"{{"items":[{user}],"next_cursor":null}}"#)),
        Just(r#"{"items":[{"id":"t1","name":"Standard"}]}"#.to_owned()),
        Just(r#"{"items":[{"number":"4681000000","kind":"main"}]}"#.to_owned()),
        Just(r#"{"error":"conflict","message":"taken","field":"alias","existing_id":"u9"}"#.to_owned()),
        Just(r#"{"error":"unavailable","message":" ","field":null,"existing_id":null}"#.to_owned()),
        Just("<html><body>proxy</body></html>".to_owned()),
    ];
    prop_oneof![
        any::<Vec<u8>>(),
        ".*".prop_map(String::into_bytes),
        // A near-miss cut anywhere, or with a field's text changed.
        (near.clone(), any::<prop::sample::Index>()).prop_map(|(text, cut)| {
            let bytes = text.into_bytes();
            let at = cut.index(bytes.len() + 1);
            bytes[..at].to_vec()
        }),
        (near, "[a-z\"{}:0-9]{0,8}", any::<prop::sample::Index>()).prop_map(|(text, junk, at)| {
            let mut text = text;
            let mut at = at.index(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.insert_str(at, &junk);
            text.into_bytes()
        }),
    ]
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    (
        proptest::option::of("[ -~]{0,40}"),
        proptest::option::of("[ -~]{0,40}"),
        proptest::option::of("[ -~]{0,40}"),
    )
        .prop_map(|(content_type, location, retry_after)| {
            let mut headers = HeaderMap::new();
            for (name, value) in [
                (CONTENT_TYPE, content_type),
                (LOCATION, location),
                (RETRY_AFTER, retry_after),
            ] {
                if let Some(value) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
                    headers.insert(name, value);
                }
            }
            headers
        })
}

fn answer() -> impl Strategy<Value = Answer> {
    (
        prop_oneof![
            100u16..=999,
            Just(200),
            Just(201),
            Just(204),
            Just(302),
            Just(409)
        ],
        headers(),
        body(),
    )
        .prop_map(|(status, headers, body)| Answer {
            request: "POST /v1/companies/acme/users".into(),
            status: StatusCode::from_u16(status).expect("100-999 is a status"),
            headers,
            body,
        })
}

/// Every error has a message, and names the status the PBX answered.
fn check_error(answer: &Answer, err: &PbxError) {
    assert!(!err.message.trim().is_empty(), "an empty message for {answer:?}");
    assert_eq!(err.status, Some(answer.status.as_u16()), "the status is kept");
    let text = err.to_string();
    assert!(text.contains(&answer.status.as_u16().to_string()), "{text}");
}

fn check<T: usersync_pbx::Shape + std::fmt::Debug>(answer: &Answer, expected: StatusCode) {
    match answer.json::<T>(expected) {
        Ok(_) => assert_eq!(answer.status, expected, "success only with the call's status"),
        Err(err) => check_error(answer, &err),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parsing_any_answer_never_panics_and_every_error_says_why(answer in answer()) {
        check::<PbxUser>(&answer, StatusCode::CREATED);
        check::<PbxUser>(&answer, StatusCode::OK);
        check::<UsersPage>(&answer, StatusCode::OK);
        check::<Items<Template>>(&answer, StatusCode::OK);
        check::<Items<Number>>(&answer, StatusCode::OK);
        match answer.empty(StatusCode::NO_CONTENT) {
            Ok(()) => prop_assert_eq!(answer.status, StatusCode::NO_CONTENT),
            Err(err) => check_error(&answer, &err),
        }
        check_error(&answer, &answer.error());
    }

    #[test]
    fn a_success_status_with_a_body_not_of_the_shape_is_malformed_and_transient(body in body()) {
        let answer = Answer {
            request: "GET /v1/companies/acme/users".into(),
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body,
        };
        if let Err(err) = answer.json::<UsersPage>(StatusCode::OK) {
            prop_assert_eq!(&err.kind, &usersync_pbx::PbxErrorKind::Malformed);
            prop_assert!(err.is_transient());
            prop_assert!(err.to_string().starts_with("PBX answered 200 to GET /v1/companies/acme/users with "), "{}", err);
        }
    }
}
