//! Whether a parsed number lies in a range libphonenumber lists as in use,
//! checked against DFAs built once per country code.
//!
//! `phonenumber::is_valid` answers the same question, but runs every number
//! type's expression as an unanchored lazy-DFA search behind one process-wide
//! mutex: no two threads validate at once, and each thread's DFA cache grows
//! with the variety of numbers seen (in the differ, about 5 MB more at
//! 100,000 users than at 1,000). The same expressions built into anchored,
//! fully compiled DFAs take memory fixed at build time and no lock. The
//! answer is libphonenumber's: the same expressions, lengths and rule (the
//! general description and at least one number type must match at the start
//! of the national number); the tests compare the two over every Swedish
//! number range.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use phonenumber::metadata::{Descriptor, Metadata, DATABASE};
use phonenumber::PhoneNumber;
use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input};

/// `true` when the number is in a range in use, as libphonenumber decides.
pub(super) fn is_valid(number: &PhoneNumber) -> bool {
    match ranges_for(number.code().value()) {
        Some(ranges) => ranges.contain(&number.national().to_string()),
        None => phonenumber::is_valid(number),
    }
}

/// Built on first use per country code. `None` where a code is shared by
/// several regions (libphonenumber picks the region by leading digits) or a
/// DFA could not be built: those numbers go to `phonenumber::is_valid`.
type Countries = RwLock<HashMap<u16, Option<Arc<CountryRanges>>>>;

static COUNTRIES: LazyLock<Countries> = LazyLock::new(Default::default);

fn ranges_for(code: u16) -> Option<Arc<CountryRanges>> {
    if let Some(known) = COUNTRIES.read().expect("ranges lock").get(&code) {
        return known.clone();
    }
    let built = match DATABASE.by_code(&code).as_deref() {
        Some([metadata]) => CountryRanges::build(metadata).map(Arc::new),
        _ => None,
    };
    COUNTRIES
        .write()
        .expect("ranges lock")
        .entry(code)
        .or_insert(built)
        .clone()
}

struct CountryRanges {
    general: Range,
    types: Vec<Range>,
}

impl CountryRanges {
    fn build(metadata: &Metadata) -> Option<Self> {
        let descriptors = metadata.descriptors();
        let types = [
            descriptors.premium_rate(),
            descriptors.toll_free(),
            descriptors.shared_cost(),
            descriptors.voip(),
            descriptors.personal_number(),
            descriptors.pager(),
            descriptors.uan(),
            descriptors.voicemail(),
            descriptors.fixed_line(),
            descriptors.mobile(),
        ];
        Some(Self {
            general: Range::build(descriptors.general())?,
            types: types
                .into_iter()
                .flatten()
                .map(Range::build)
                .collect::<Option<_>>()?,
        })
    }

    fn contain(&self, national: &str) -> bool {
        self.general.matches(national) && self.types.iter().any(|range| range.matches(national))
    }
}

/// One descriptor: its possible lengths and its expression, matched from the
/// first digit (libphonenumber accepts a match that starts there).
struct Range {
    lengths: Vec<u16>,
    dfa: dense::DFA<Vec<u32>>,
}

impl Range {
    fn build(descriptor: &Descriptor) -> Option<Self> {
        // Whitespace is layout in libphonenumber's expressions, as in the
        // crate. National numbers are ASCII digits, so `\d` need not cover
        // Unicode digits, which keeps each DFA small.
        let dfa = dense::Builder::new()
            .syntax(syntax::Config::new().unicode(false).ignore_whitespace(true))
            .configure(dense::Config::new().start_kind(StartKind::Anchored))
            .build(descriptor.national_number().as_str())
            .ok()?;
        Some(Self {
            lengths: descriptor.possible_length().to_vec(),
            dfa,
        })
    }

    fn matches(&self, national: &str) -> bool {
        if !self.lengths.is_empty() && !self.lengths.contains(&(national.len() as u16)) {
            return false;
        }
        let input = Input::new(national).anchored(Anchored::Yes).earliest(true);
        matches!(self.dfa.try_search_fwd(&input), Ok(Some(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonenumber::country;

    /// Every Swedish range of three leading digits at each length from 5 to
    /// 11, with varied digits after: the answer must be libphonenumber's.
    #[test]
    fn agrees_with_libphonenumber_on_swedish_numbers() {
        let mut tails = 0x2545_f491_4f6c_dd1d_u64;
        let (mut valid, mut checked) = (0, 0);
        for prefix in 100..1000u64 {
            for length in 5..=11u32 {
                for _ in 0..3 {
                    tails ^= tails << 13;
                    tails ^= tails >> 7;
                    tails ^= tails << 17;
                    let rest = 10u64.pow(length - 3);
                    let national = prefix * rest + tails % rest;
                    let number = phonenumber::parse(Some(country::Id::SE), format!("+46{national}"))
                        .expect("digits parse");
                    let expected = phonenumber::is_valid(&number);
                    assert_eq!(is_valid(&number), expected, "+46{national}");
                    valid += usize::from(expected);
                    checked += 1;
                }
            }
        }
        // Both answers occur often enough for the comparison to mean something.
        assert!(
            valid > checked / 10 && valid < checked * 9 / 10,
            "{valid} of {checked}"
        );
    }

    /// Countries with a code of their own go through the DFAs, valid and
    /// invalid numbers alike.
    #[test]
    fn agrees_with_libphonenumber_in_other_single_region_countries() {
        let mut valid = 0;
        for raw in [
            "+45 33 12 34 56",
            "+45 33 12 34 5",
            "+49 30 123456",
            "+49 30 1",
            "+800 1234 5678",
            "+800 1234 567",
        ] {
            let number = phonenumber::parse(None, raw).expect(raw);
            assert!(ranges_for(number.code().value()).is_some(), "{raw}: no DFAs");
            let expected = phonenumber::is_valid(&number);
            assert_eq!(is_valid(&number), expected, "{raw}");
            valid += usize::from(expected);
        }
        assert_eq!(valid, 3, "one valid and one invalid number per country");
    }

    /// Codes shared by several regions are left to libphonenumber, which
    /// picks the region first.
    #[test]
    fn leaves_shared_country_codes_to_libphonenumber() {
        for (code, raw) in [
            (1, "+1 425 555 0109"),
            (44, "+44 1481 256789"),
            (47, "+47 22 12 34 56"),
        ] {
            assert!(ranges_for(code).is_none(), "+{code}");
            let number = phonenumber::parse(None, raw).expect(raw);
            assert_eq!(is_valid(&number), phonenumber::is_valid(&number), "{raw}");
        }
    }

    #[test]
    fn builds_swedish_ranges_of_fixed_small_size() {
        let ranges = ranges_for(46).expect("Sweden has one region");
        let bytes: usize = std::iter::once(&ranges.general)
            .chain(&ranges.types)
            .map(|range| range.dfa.memory_usage())
            .sum();
        assert!(bytes < 1 << 20, "{bytes} bytes");
    }
}
