//! Property tests of the static-file rules (`static_path`, `conditional`, `date`): no
//! input panics, a resolved path can never name anything outside its directory, and
//! what is parsed stays within the file it describes.

use proptest::prelude::*;

use super::conditional::{self, accepted_codings, preference, Coding, RangeAsk};
use super::date::{format_imf_fixdate, parse_http_date};
use super::static_path::{resolve, Refusal};

/// Paths built from the pieces an attacker would use.
fn hostile_path() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"/".to_vec()),
        Just(b"..".to_vec()),
        Just(b".".to_vec()),
        Just(b"%2e".to_vec()),
        Just(b"%2E".to_vec()),
        Just(b"%2f".to_vec()),
        Just(b"%5c".to_vec()),
        Just(b"\\".to_vec()),
        Just(b"%00".to_vec()),
        Just(b"%".to_vec()),
        Just(b"%25".to_vec()),
        Just(b"%c0%ae".to_vec()),
        Just(b"a".to_vec()),
        Just(b"etc".to_vec()),
        Just(b".git".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..4),
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|pieces| {
        let mut path = b"/".to_vec();
        pieces.into_iter().for_each(|p| path.extend(p));
        path
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn a_resolved_path_stays_below_its_directory(path in hostile_path()) {
        if let Ok(found) = resolve(&path) {
            let rel = &found.relative;
            prop_assert!(!rel.starts_with(b"/"), "absolute: {rel:?}");
            for segment in rel.split(|&b| b == b'/') {
                prop_assert!(!segment.is_empty() || rel.is_empty(), "empty segment in {rel:?}");
                prop_assert!(segment != b"." && segment != b"..", "dot segment in {rel:?}");
                prop_assert!(!segment.starts_with(b"."), "dotfile in {rel:?}");
                prop_assert!(!segment.iter().any(|&b| b == b'\\' || b < 0x20 || b == 0x7f), "{rel:?}");
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(path in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = resolve(&path);
        let _ = parse_http_date(&path);
        let _ = accepted_codings(&path);
        let _ = conditional::range(&path, 1000);
        let _ = conditional::none_match(&path, b"\"1-2-3\"");
        let _ = conditional::if_range_holds(&path, b"\"1-2-3\"", 0, 0);
        let _ = conditional::any_match(&path, b"\"1-2-3\"");
        let _ = conditional::unmodified_since(&path, 0);
    }

    #[test]
    fn a_range_is_inside_the_file(first in 0u64..3000, len in 0u64..3000, size in 0u64..2000, suffix in any::<bool>()) {
        let value = if suffix {
            format!("bytes=-{len}")
        } else {
            format!("bytes={first}-{}", first + len)
        };
        match conditional::range(value.as_bytes(), size) {
            RangeAsk::One { first: f, last } => {
                prop_assert!(f <= last && last < size, "{value} of {size}: {f}-{last}");
            }
            RangeAsk::Unsatisfiable => {
                prop_assert!(size == 0 || (!suffix && first >= size) || (suffix && len == 0));
            }
            other => prop_assert!(false, "{value}: {other:?}"),
        }
    }

    #[test]
    fn dates_round_trip(secs in 0u64..253_402_300_799) {
        prop_assert_eq!(parse_http_date(&format_imf_fixdate(secs)), Some(secs));
    }

    #[test]
    fn the_preference_is_every_acceptable_coding_heaviest_first(value in "[a-z*, ;=.0-9]{0,40}") {
        let weights = accepted_codings(value.as_bytes());
        let order = preference(weights);
        let weight = |c: Coding| weights[Coding::ALL.iter().position(|x| *x == c).unwrap_or(0)];
        prop_assert_eq!(order.len(), weights.iter().filter(|&&w| w > 0).count());
        for pair in order.windows(2) {
            prop_assert!(weight(pair[0]) >= weight(pair[1]), "{value}: {order:?}");
        }
    }
}

#[test]
fn refusals_are_never_confused() {
    // A hidden file behind an escape is an escape; an escape behind a hidden one too.
    assert_eq!(resolve(b"/.env/%2e%2e"), Err(Refusal::Escape));
}
