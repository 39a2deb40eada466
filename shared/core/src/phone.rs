//! Phone number normalisation to E.164 digits, backed by libphonenumber data.

use phonenumber::{country, Mode, PhoneNumber};

mod ranges;

/// The country code whose numbers the PBX documents a digit count for.
const SWEDEN: &str = "46";

/// Normalises a free-text phone number to E.164 digits without '+', reading
/// national numbers as Swedish.
///
/// `"+46 8 123 456 78"`, `"08-123 456 78"`, `"+46 (0)8 12345678"` and
/// `"0046812345678"` all give `"46812345678"`. Refuses (with a reason a person
/// can act on) what cannot be parsed, what is not a valid number, numbers with
/// an extension, and numbers whose country code is not in `allowed_prefixes`.
pub fn normalize_phone(raw: &str, allowed_prefixes: &[String]) -> Result<String, String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err("the number is empty".into());
    }
    // libphonenumber itself drops a "(0)" trunk prefix written after the
    // country code, as in "+46 (0)8 …" (the tests pin this).
    let number = phonenumber::parse(Some(country::Id::SE), trimmed)
        .map_err(|err| format!("not a phone number ({err})"))?;
    if number.extension().is_some() {
        return Err("has an extension, which a PSTN number cannot carry".into());
    }
    if !ranges::is_valid(&number) {
        return Err("not a valid phone number (wrong length or unknown number range)".into());
    }
    check_country(&number, allowed_prefixes)?;
    let digits = e164_digits(&number);
    check_swedish_length(&digits)?;
    Ok(digits)
}

fn check_country(number: &PhoneNumber, allowed_prefixes: &[String]) -> Result<(), String> {
    let code = number.code().value().to_string();
    if allowed_prefixes.contains(&code) {
        return Ok(());
    }
    let allowed = allowed_prefixes.join(", ");
    if allowed_prefixes == [SWEDEN] {
        Err(format!(
            "not a Swedish number (country code +{code}; allowed prefixes: {allowed})"
        ))
    } else {
        Err(format!(
            "country code +{code} is not allowed (allowed prefixes: {allowed})"
        ))
    }
}

fn e164_digits(number: &PhoneNumber) -> String {
    number
        .format()
        .mode(Mode::E164)
        .to_string()
        .trim_start_matches('+')
        .to_owned()
}

/// The PBX accepts Swedish numbers only as 46 followed by 7–9 digits.
fn check_swedish_length(digits: &str) -> Result<(), String> {
    match digits.strip_prefix(SWEDEN) {
        Some(national) if !(7..=9).contains(&national.len()) => Err(format!(
            "a Swedish number of {} digits after 46; the PBX takes 7–9",
            national.len()
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweden() -> Vec<String> {
        vec![SWEDEN.to_owned()]
    }

    #[test]
    fn normalises_the_common_swedish_spellings() {
        for raw in [
            "+46 8 123 456 78",
            "08-123 456 78",
            "+46 (0)8 12345678",
            "0046812345678",
            "+46812345678",
            " 08 123 456 78 ",
        ] {
            assert_eq!(
                normalize_phone(raw, &sweden()).as_deref(),
                Ok("46812345678"),
                "{raw}"
            );
        }
    }

    #[test]
    fn normalises_a_swedish_mobile_number() {
        assert_eq!(
            normalize_phone("070-123 45 67", &sweden()).as_deref(),
            Ok("46701234567")
        );
        assert_eq!(
            normalize_phone("+46 (0)70-123 45 67", &sweden()).as_deref(),
            Ok("46701234567")
        );
    }

    #[test]
    fn refuses_a_foreign_number_naming_the_allowed_prefixes() {
        let err = normalize_phone("+1 425 555 0109", &sweden()).expect_err("foreign");
        assert!(err.contains("not a Swedish number"), "{err}");
        assert!(err.contains("allowed prefixes: 46"), "{err}");
    }

    #[test]
    fn accepts_a_foreign_number_when_its_prefix_is_allowed() {
        let allowed = vec![SWEDEN.to_owned(), "47".to_owned()];
        assert_eq!(
            normalize_phone("+47 22 12 34 56", &allowed).as_deref(),
            Ok("4722123456")
        );
        let err = normalize_phone("+45 33 12 34 56", &allowed).expect_err("danish");
        assert!(err.contains("+45 is not allowed"), "{err}");
    }

    #[test]
    fn refuses_garbage_and_invalid_numbers() {
        for raw in ["", "   ", "call me", "12", "08-1"] {
            assert!(normalize_phone(raw, &sweden()).is_err(), "{raw}");
        }
    }

    #[test]
    fn refuses_a_number_with_an_extension() {
        let err = normalize_phone("+46 8 123 456 78 ext. 12", &sweden()).expect_err("ext");
        assert!(err.contains("extension"), "{err}");
    }
}
