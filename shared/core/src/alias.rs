//! PBX alias normalisation.

use deunicode::deunicode;

const MAX_ALIAS_CHARS: usize = 64;

/// Normalises a directory value into a PBX alias: diacritics folded
/// (`Åsa.Öberg` → `asa.oberg`), lower case, each run of whitespace becomes
/// one '.', and characters outside `[a-z0-9._-]` are dropped.
///
/// Refuses when nothing valid remains or the result is longer than 64.
pub fn normalize_alias(raw: &str) -> Result<String, String> {
    let folded = deunicode(raw).to_lowercase();
    let alias = folded
        .split_whitespace()
        .map(keep_alias_chars)
        .collect::<Vec<_>>()
        .join(".");
    let length = alias.chars().count();
    if alias.trim_matches('.').is_empty() {
        Err("no letters or digits usable in an alias remain (allowed: a-z, 0-9, '.', '_', '-')".into())
    } else if length > MAX_ALIAS_CHARS {
        Err(format!(
            "is {length} characters long; the PBX allows at most {MAX_ALIAS_CHARS}"
        ))
    } else {
        Ok(alias)
    }
}

fn keep_alias_chars(word: &str) -> String {
    word.chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn folds_diacritics_and_lowercases() {
        assert_eq!(normalize_alias("Åsa.Öberg").as_deref(), Ok("asa.oberg"));
        assert_eq!(normalize_alias("Jürgen_Groß").as_deref(), Ok("jurgen_gross"));
    }

    #[test]
    fn turns_spaces_into_dots_and_drops_other_characters() {
        assert_eq!(
            normalize_alias("  Anna  Maria Ek ").as_deref(),
            Ok("anna.maria.ek")
        );
        assert_eq!(normalize_alias("o'brien+test").as_deref(), Ok("obrientest"));
        assert_eq!(normalize_alias("per-olof").as_deref(), Ok("per-olof"));
    }

    #[test]
    fn refuses_when_nothing_valid_remains() {
        for raw in ["", "   ", "!!!", "'+'", " . "] {
            assert!(normalize_alias(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn refuses_aliases_longer_than_64() {
        assert!(normalize_alias(&"a".repeat(64)).is_ok());
        let err = normalize_alias(&"a".repeat(65)).expect_err("too long");
        assert!(err.contains("at most 64"), "{err}");
    }

    proptest! {
        #[test]
        fn output_always_fits_the_pbx_rules(raw in "\\PC{0,80}") {
            if let Ok(alias) = normalize_alias(&raw) {
                prop_assert!((1..=64).contains(&alias.len()));
                prop_assert!(alias.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')));
            }
        }

        #[test]
        fn normalising_twice_changes_nothing(raw in "\\PC{0,40}") {
            if let Ok(alias) = normalize_alias(&raw) {
                prop_assert_eq!(normalize_alias(&alias), Ok(alias.clone()));
            }
        }
    }
}
