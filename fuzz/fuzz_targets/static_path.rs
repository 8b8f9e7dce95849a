//! Fuzzes the static-file rules on arbitrary bytes: path resolution below a mount
//! (`http/static_path.rs`) and the validators (`http/conditional.rs`, `http/date.rs`).
//!
//! Checks: nothing panics; a resolved path is relative, has no empty, `.`, `..` or
//! dot-leading segment and no backslash or control byte (so joined to the mount's
//! directory it names something below it); a satisfiable range lies inside the file;
//! a parsed date formats back to a date that parses to the same second.

#![no_main]

use libfuzzer_sys::fuzz_target;

use _tapster::http::conditional::{self, RangeAsk};
use _tapster::http::date::{format_imf_fixdate, parse_http_date};
use _tapster::http::static_path::resolve;

fuzz_target!(|data: &[u8]| {
    if let Ok(found) = resolve(data) {
        let rel = &found.relative;
        assert!(!rel.starts_with(b"/"));
        if !rel.is_empty() {
            for segment in rel.split(|&b| b == b'/') {
                assert!(!segment.is_empty());
                assert!(!segment.starts_with(b"."));
                assert!(!segment.iter().any(|&b| b == b'\\' || b < 0x20 || b == 0x7f));
            }
        }
    }
    let size = data.len() as u64 * 7;
    if let RangeAsk::One { first, last } = conditional::range(data, size) {
        assert!(first <= last && last < size);
    }
    if let Some(secs) = parse_http_date(data) {
        assert_eq!(parse_http_date(&format_imf_fixdate(secs)), Some(secs));
    }
    let _ = conditional::accepted_codings(data);
    let _ = conditional::none_match(data, b"\"1-2-3\"");
});
