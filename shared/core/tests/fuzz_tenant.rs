//! Property tests of the tenant file parser: arbitrary text, and the example
//! tenant file with random mutations. It never panics, every refusal names a
//! field and a reason, and every accepted file round-trips.
//!
//! 256 cases per property by default; `PROPTEST_CASES=10000` for a long run.

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Map, Value};
use usersync_core::{parse_tenant_file, Problem};

const EXAMPLE: &str = include_str!("../../../examples/tenant.json");
/// The name the parser gives problems of the document as a whole.
const DOCUMENT: &str = "tenant file";

/// Any JSON value, strings with any unicode (control characters included).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "[a-zA-Z_.\\[\\]0-9]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z_.]{0,10}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Remove(Index),
    Replace(Index, Value),
    /// Puts `text` at a position inside the string found at the path.
    Insert(Index, Index, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let odd_text = prop_oneof![
        any::<String>(),
        "[\\x00-\\x1f\\x7f\u{200b}\u{feff}\u{202e} ]{1,3}",
        "[\u{0}-\u{10ffff}]{1,4}",
    ];
    prop_oneof![
        any::<Index>().prop_map(Mutation::Remove),
        (any::<Index>(), json_value()).prop_map(|(at, value)| Mutation::Replace(at, value)),
        (any::<Index>(), any::<Index>(), odd_text)
            .prop_map(|(at, pos, text)| Mutation::Insert(at, pos, text)),
    ]
}

/// A step into a JSON value.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Item(usize),
}

fn paths(value: &Value, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    let children: Vec<(Step, &Value)> = match value {
        Value::Object(map) => map.iter().map(|(k, v)| (Step::Key(k.clone()), v)).collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (Step::Item(i), v))
            .collect(),
        _ => return,
    };
    for (step, child) in children {
        prefix.push(step);
        out.push(prefix.clone());
        paths(child, prefix, out);
        prefix.pop();
    }
}

fn get_mut<'a>(value: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |value, step| match step {
        Step::Key(key) => value.get_mut(key.as_str()),
        Step::Item(index) => value.get_mut(*index),
    })
}

fn apply(document: &mut Value, mutation: &Mutation) {
    let mut all = Vec::new();
    paths(document, &mut Vec::new(), &mut all);
    if all.is_empty() {
        return;
    }
    match mutation {
        Mutation::Remove(at) => {
            let path = at.get(&all);
            let (last, parent) = path.split_last().expect("paths are never empty");
            match (get_mut(document, parent), last) {
                (Some(Value::Object(map)), Step::Key(key)) => {
                    map.remove(key);
                }
                (Some(Value::Array(items)), Step::Item(index)) => {
                    items.remove(*index);
                }
                _ => {}
            }
        }
        Mutation::Replace(at, value) => {
            if let Some(slot) = get_mut(document, at.get::<Vec<Step>>(&all)) {
                *slot = value.clone();
            }
        }
        Mutation::Insert(at, position, text) => {
            if let Some(Value::String(string)) = get_mut(document, at.get::<Vec<Step>>(&all)) {
                let boundaries: Vec<usize> = string
                    .char_indices()
                    .map(|(i, _)| i)
                    .chain([string.len()])
                    .collect();
                string.insert_str(*position.get(&boundaries), text);
            }
        }
    }
}

/// The example with `provider_settings` as an object, so mutations reach into it.
fn example() -> Value {
    let mut document: Value = serde_json::from_str(EXAMPLE).expect("the example is JSON");
    let pasted = document["provider_settings"]
        .as_str()
        .expect("pasted as a string")
        .to_owned();
    document["provider_settings"] = serde_json::from_str(&pasted).expect("its provider_settings is JSON");
    document
}

/// Every refusal names a field of the document (or the document) and says why.
fn check_refusal(problems: &[Problem], document: Option<&Map<String, Value>>) -> Result<(), TestCaseError> {
    prop_assert!(!problems.is_empty(), "a refusal without any problem");
    for problem in problems {
        prop_assert!(!problem.field.trim().is_empty(), "no field: {problem:?}");
        prop_assert!(!problem.message.trim().is_empty(), "no reason: {problem:?}");
        if let Some(document) = document {
            let top = problem.field.split(['.', '[']).next().unwrap_or_default();
            prop_assert!(
                problem.field == DOCUMENT
                    || document.contains_key(top)
                    || EXAMPLE.contains(&format!("\"{top}\"")),
                "{problem:?} names no field of the file"
            );
        }
    }
    Ok(())
}

/// An accepted file, serialised, parses again to the same tenant.
fn check_round_trip(config: &usersync_core::TenantConfig) -> Result<(), TestCaseError> {
    let text = serde_json::to_string(config).expect("a tenant serialises");
    match parse_tenant_file(&text) {
        Ok(again) => prop_assert_eq!(&again, config),
        Err(problems) => prop_assert!(false, "{text} no longer parses: {problems:?}"),
    }
    Ok(())
}

#[test]
fn the_example_is_accepted_and_round_trips() {
    let config = parse_tenant_file(EXAMPLE).expect("the example tenant file");
    check_round_trip(&config).expect("round trip");
    let config = parse_tenant_file(&example().to_string()).expect("provider_settings as an object");
    check_round_trip(&config).expect("round trip");
}

proptest! {
    // The default case count (256, or PROPTEST_CASES); failures are kept next to this file.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("tests/fuzz_tenant.proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_text_never_panics_and_refusals_have_reasons(text in any::<String>()) {
        match parse_tenant_file(&text) {
            Ok(config) => check_round_trip(&config)?,
            Err(problems) => check_refusal(&problems, None)?,
        }
    }

    #[test]
    fn arbitrary_json_never_panics_and_refusals_have_reasons(value in json_value()) {
        match parse_tenant_file(&value.to_string()) {
            Ok(config) => check_round_trip(&config)?,
            Err(problems) => check_refusal(&problems, None)?,
        }
    }

    #[test]
    fn a_mutated_example_is_refused_with_reasons_or_round_trips(
        mutations in prop::collection::vec(mutation(), 1..4),
        pasted in any::<bool>(),
    ) {
        let mut document = example();
        for mutation in &mutations {
            apply(&mut document, mutation);
        }
        // As the portal pastes it: the provider settings as a string of JSON.
        if pasted {
            if let Some(settings) = document.get_mut("provider_settings") {
                if settings.is_object() {
                    *settings = Value::from(settings.to_string());
                }
            }
        }
        match parse_tenant_file(&document.to_string()) {
            Ok(config) => check_round_trip(&config)?,
            Err(problems) => check_refusal(&problems, document.as_object())?,
        }
    }
}
