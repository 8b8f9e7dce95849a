//! HTTP validators and negotiation for static files, sans-IO (RFC 9110 sections 12.5.3,
//! 13 and 14): entity tags, `If-None-Match`, `If-Modified-Since`, `If-Range`, `Range`
//! and `Accept-Encoding`. Pure functions of header values and a file's facts: nothing
//! here opens a file.

use smallvec::SmallVec;

use super::date::parse_http_date;
use super::request::{list_elements, trim_ows};

/// A strong entity tag from a file's size, modification time (nanoseconds) and inode:
/// `"<size>-<mtime>-<inode>"` in hex, quotes included. A file rewritten in place with
/// the same size within one clock tick keeps its tag; any other change gives a new one.
pub fn entity_tag(size: u64, mtime_nanos: u128, inode: u64) -> Vec<u8> {
    format!("\"{size:x}-{mtime_nanos:x}-{inode:x}\"").into_bytes()
}

/// Whether an `If-Match` value matches `etag` (strong comparison: a weak tag never
/// matches; `*` matches any current representation).
pub fn any_match(value: &[u8], etag: &[u8]) -> bool {
    trim_ows(value) == b"*" || entity_tags(value).any(|tag| trim_ows(tag) == etag)
}

/// Whether an `If-Unmodified-Since` date still holds: the file was not modified after
/// it. A malformed date is ignored (the condition holds).
pub fn unmodified_since(value: &[u8], modified_secs: u64) -> bool {
    parse_http_date(value).is_none_or(|since| modified_secs <= since)
}

/// Whether an `If-None-Match` value matches `etag` (weak comparison: `W/` is ignored on
/// either side; `*` matches any current representation).
pub fn none_match(value: &[u8], etag: &[u8]) -> bool {
    let ours = opaque_tag(etag);
    if trim_ows(value) == b"*" {
        return true;
    }
    entity_tags(value).any(|tag| opaque_tag(tag) == ours)
}

/// Whether an `If-Modified-Since` date says the client's copy is current: the file was
/// not modified after it. A malformed date is ignored (the condition is false).
pub fn not_modified_since(value: &[u8], modified_secs: u64) -> bool {
    parse_http_date(value).is_some_and(|since| modified_secs <= since)
}

/// Whether an `If-Range` value lets a `Range` apply: a strong entity tag equal to ours,
/// or a date equal to our `Last-Modified` when that is a strong validator, at least a
/// second before `now_secs` (RFC 9110 section 13.1.5: a file written twice within one
/// second keeps its date). Anything else (a weak tag, another date, garbage) means:
/// send the whole file.
pub fn if_range_holds(value: &[u8], etag: &[u8], modified_secs: u64, now_secs: u64) -> bool {
    let value = trim_ows(value);
    if value.starts_with(b"\"") {
        return value == etag;
    }
    if value.starts_with(b"W/") {
        return false;
    }
    parse_http_date(value) == Some(modified_secs) && modified_secs < now_secs.saturating_sub(1)
}

/// The entity tags of a list such as `"a", W/"b"`, split at every comma (an entity tag
/// cannot hold one; a tag that does simply matches nothing).
fn entity_tags(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    list_elements(value)
}

/// An entity tag without its weakness indicator.
fn opaque_tag(tag: &[u8]) -> &[u8] {
    let tag = trim_ows(tag);
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// What a `Range` header asks of a representation of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAsk {
    /// No usable range (absent, another unit, malformed): the whole file, 200.
    Whole,
    /// One satisfiable range, first and last byte inclusive: 206.
    One { first: u64, last: u64 },
    /// Several ranges: served as the whole file, 200 (no multipart/byteranges).
    Several,
    /// A well-formed range set none of which overlaps the file: 416.
    Unsatisfiable,
}

/// Parses a `Range` value (`bytes=0-99`, `bytes=500-`, `bytes=-500`) against a file of
/// `size` bytes. Ranges are clipped to the file; a set with several ranges, even
/// overlapping ones, is `Several`.
pub fn range(value: &[u8], size: u64) -> RangeAsk {
    let value = trim_ows(value);
    let Some(set) = strip_prefix_ignore_case(value, b"bytes=") else {
        return RangeAsk::Whole;
    };
    let mut specs = Vec::new();
    for spec in set.split(|&b| b == b',') {
        let spec = trim_ows(spec);
        if spec.is_empty() {
            continue;
        }
        match parse_spec(spec) {
            Some(s) => specs.push(s),
            None => return RangeAsk::Whole,
        }
    }
    match specs.as_slice() {
        [] => RangeAsk::Whole,
        [one] => match one.clip(size) {
            Some((first, last)) => RangeAsk::One { first, last },
            None => RangeAsk::Unsatisfiable,
        },
        several => {
            if several.iter().all(|s| s.clip(size).is_none()) {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::Several
            }
        }
    }
}

/// One range-spec.
#[derive(Debug, Clone, Copy)]
enum Spec {
    /// `first-` or `first-last`.
    From { first: u64, last: Option<u64> },
    /// `-suffix`: the last `suffix` bytes.
    Suffix(u64),
}

impl Spec {
    /// The inclusive byte range of a `size`-byte file this selects, if any.
    fn clip(self, size: u64) -> Option<(u64, u64)> {
        match self {
            Spec::From { first, last } => {
                if first >= size {
                    return None;
                }
                let last = last.map_or(size - 1, |l| l.min(size - 1));
                Some((first, last))
            }
            Spec::Suffix(0) => None,
            Spec::Suffix(n) => (size > 0).then(|| (size.saturating_sub(n), size - 1)),
        }
    }
}

fn parse_spec(spec: &[u8]) -> Option<Spec> {
    let dash = memchr::memchr(b'-', spec)?;
    let (first, last) = (&spec[..dash], &spec[dash + 1..]);
    if first.is_empty() {
        return Some(Spec::Suffix(number(last)?));
    }
    let first = number(first)?;
    let last = if last.is_empty() {
        None
    } else {
        Some(number(last)?)
    };
    if last.is_some_and(|l| l < first) {
        return None;
    }
    Some(Spec::From { first, last })
}

/// Decimal digits, saturating at `u64::MAX` (a position past any file).
fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

fn strip_prefix_ignore_case<'a>(value: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (value.len() >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &value[prefix.len()..])
}

/// A content coding a precompressed variant may have, in order of preference when the
/// client weighs them equally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Brotli,
    Zstd,
    Gzip,
}

impl Coding {
    pub const ALL: [Coding; 3] = [Coding::Brotli, Coding::Zstd, Coding::Gzip];

    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static [u8] {
        match self {
            Coding::Brotli => b"br",
            Coding::Zstd => b"zstd",
            Coding::Gzip => b"gzip",
        }
    }

    /// The suffix of the variant beside the file (`app.js.br`).
    pub fn suffix(self) -> &'static [u8] {
        match self {
            Coding::Brotli => b".br",
            Coding::Zstd => b".zst",
            Coding::Gzip => b".gz",
        }
    }
}

/// The weight (q-value, in thousandths) `Accept-Encoding` gives each coding: a listed
/// coding its own weight, an unlisted one the weight of `*` if present, else 0. A
/// malformed q-value counts as 0 (not acceptable).
pub fn accepted_codings(value: &[u8]) -> [u16; 3] {
    let mut weights = [None::<u16>; 3];
    let mut star = None::<u16>;
    for element in list_elements(value) {
        let mut params = element.split(|&b| b == b';');
        let name = trim_ows(params.next().unwrap_or_default());
        let q = params
            .map(trim_ows)
            .find_map(|p| strip_prefix_ignore_case(p, b"q="))
            .map_or(Some(1000), qvalue)
            .unwrap_or(0);
        if name == b"*" {
            star = Some(q);
            continue;
        }
        let listed = Coding::ALL.iter().position(|c| {
            name.eq_ignore_ascii_case(c.token())
                || (*c == Coding::Gzip && name.eq_ignore_ascii_case(b"x-gzip"))
        });
        if let Some(i) = listed {
            weights[i] = Some(q);
        }
    }
    weights.map(|w| w.or(star).unwrap_or(0))
}

/// The acceptable codings (weight above 0), the one the client weighs most first,
/// `br`, then `zstd`, then `gzip` among equals: the order in which to look for
/// variants.
pub fn preference(weights: [u16; 3]) -> SmallVec<[Coding; 3]> {
    let mut ranked: SmallVec<[(u16, Coding); 3]> = Coding::ALL
        .into_iter()
        .zip(weights)
        .filter(|&(_, w)| w > 0)
        .map(|(c, w)| (w, c))
        .collect();
    // Stable: equal weights keep `Coding::ALL`'s order.
    ranked.sort_by_key(|&(w, _)| std::cmp::Reverse(w));
    ranked.into_iter().map(|(_, c)| c).collect()
}

/// A q-value (`0`, `0.5`, `1`, `1.000`) in thousandths; `None` if malformed.
fn qvalue(text: &[u8]) -> Option<u16> {
    match text {
        [b'0'] => Some(0),
        [b'1'] => Some(1000),
        [b'0', b'.', frac @ ..] if frac.len() <= 3 && frac.iter().all(u8::is_ascii_digit) => {
            let mut n = 0u16;
            for i in 0..3 {
                n = n * 10 + frac.get(i).map_or(0, |d| u16::from(d - b'0'));
            }
            Some(n)
        }
        [b'1', b'.', frac @ ..] if frac.len() <= 3 && frac.iter().all(|&d| d == b'0') => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: &[u8] = b"\"400-1-2\"";

    #[test]
    fn entity_tags_differ_by_size_time_and_inode() {
        let a = entity_tag(1024, 1, 2);
        assert_eq!(a, TAG);
        assert_ne!(a, entity_tag(1025, 1, 2));
        assert_ne!(a, entity_tag(1024, 2, 2));
        assert_ne!(a, entity_tag(1024, 1, 3));
    }

    #[test]
    fn if_none_match_compares_weakly() {
        assert!(none_match(TAG, TAG));
        assert!(none_match(b"W/\"400-1-2\"", TAG));
        assert!(none_match(b"\"x\", \"400-1-2\"", TAG));
        assert!(none_match(b" * ", TAG));
        assert!(!none_match(b"\"x\"", TAG));
        assert!(!none_match(b"", TAG));
        assert!(!none_match(b"400-1-2", TAG));
    }

    #[test]
    fn if_modified_since() {
        let date = b"Sun, 06 Nov 1994 08:49:37 GMT";
        assert!(not_modified_since(date, 784_111_777));
        assert!(not_modified_since(date, 784_111_776));
        assert!(!not_modified_since(date, 784_111_778));
        assert!(!not_modified_since(b"garbage", 0));
    }

    #[test]
    fn if_range_needs_a_strong_match_or_the_exact_date() {
        let date = b"Sun, 06 Nov 1994 08:49:37 GMT";
        let now = 784_200_000;
        assert!(if_range_holds(TAG, TAG, 0, now));
        assert!(!if_range_holds(b"W/\"400-1-2\"", TAG, 0, now));
        assert!(!if_range_holds(b"\"other\"", TAG, 0, now));
        assert!(if_range_holds(date, TAG, 784_111_777, now));
        assert!(!if_range_holds(date, TAG, 784_111_778, now));
        assert!(!if_range_holds(b"nonsense", TAG, 0, now));
        // A date is a weak validator within a second of the file's change.
        assert!(!if_range_holds(date, TAG, 784_111_777, 784_111_778));
    }

    #[test]
    fn ranges_at_the_edges() {
        let one = |first, last| RangeAsk::One { first, last };
        assert_eq!(range(b"bytes=0-0", 1000), one(0, 0));
        assert_eq!(range(b"bytes=999-999", 1000), one(999, 999));
        assert_eq!(range(b"bytes=999-", 1000), one(999, 999));
        assert_eq!(range(b"bytes=-500", 1000), one(500, 999));
        assert_eq!(range(b"bytes=-5000", 1000), one(0, 999));
        assert_eq!(range(b"bytes=500-5000", 1000), one(500, 999));
        assert_eq!(range(b"BYTES = 1-2", 1000), RangeAsk::Whole);
        assert_eq!(range(b"Bytes=1-2", 1000), one(1, 2));
        assert_eq!(range(b"bytes=1000-", 1000), RangeAsk::Unsatisfiable);
        assert_eq!(range(b"bytes=1000-2000", 1000), RangeAsk::Unsatisfiable);
        assert_eq!(range(b"bytes=-0", 1000), RangeAsk::Unsatisfiable);
        assert_eq!(range(b"bytes=0-", 0), RangeAsk::Unsatisfiable);
        assert_eq!(range(b"bytes=-1", 0), RangeAsk::Unsatisfiable);
        assert_eq!(
            range(b"bytes=99999999999999999999999-", 10),
            RangeAsk::Unsatisfiable
        );
        assert_eq!(range(b"bytes=0-99999999999999999999999", 10), one(0, 9));
    }

    #[test]
    fn other_range_forms() {
        assert_eq!(range(b"bytes=0-1,5-6", 1000), RangeAsk::Several);
        assert_eq!(range(b"bytes=0-1, 2000-3000", 1000), RangeAsk::Several);
        assert_eq!(range(b"bytes=2000-,3000-", 1000), RangeAsk::Unsatisfiable);
        for ignored in [
            &b""[..],
            b"bytes=",
            b"bytes=5-1",
            b"bytes=a-b",
            b"items=0-1",
            b"bytes=0-1-2",
            b"bytes=--1",
            b"bytes=1",
        ] {
            assert_eq!(range(ignored, 1000), RangeAsk::Whole, "{ignored:?}");
        }
    }

    #[test]
    fn accept_encoding_weights() {
        assert_eq!(
            accepted_codings(b"gzip, deflate, br, zstd"),
            [1000, 1000, 1000]
        );
        assert_eq!(accepted_codings(b"gzip;q=1.0, br;q=0.5"), [500, 0, 1000]);
        assert_eq!(accepted_codings(b"*;q=0.1, br;q=0"), [0, 100, 100]);
        assert_eq!(accepted_codings(b"x-gzip"), [0, 0, 1000]);
        assert_eq!(accepted_codings(b"BR;Q=0.3"), [300, 0, 0]);
        assert_eq!(accepted_codings(b"br;q=2, gzip;q=0.0001"), [0, 0, 0]);
        assert_eq!(accepted_codings(b"identity"), [0, 0, 0]);
        assert_eq!(accepted_codings(b""), [0, 0, 0]);
    }

    #[test]
    fn preference_honours_weights_then_prefers_br() {
        use Coding::*;
        assert_eq!(
            preference([1000, 1000, 1000]).as_slice(),
            [Brotli, Zstd, Gzip]
        );
        assert_eq!(preference([500, 0, 1000]).as_slice(), [Gzip, Brotli]);
        assert_eq!(preference([100, 900, 100]).as_slice(), [Zstd, Brotli, Gzip]);
        assert!(preference([0, 0, 0]).is_empty());
    }

    #[test]
    fn if_match_compares_strongly() {
        assert!(any_match(TAG, TAG));
        assert!(any_match(b"\"x\", \"400-1-2\"", TAG));
        assert!(any_match(b"*", TAG));
        assert!(!any_match(b"W/\"400-1-2\"", TAG));
        assert!(!any_match(b"\"x\"", TAG));
    }

    #[test]
    fn if_unmodified_since() {
        let date = b"Sun, 06 Nov 1994 08:49:37 GMT";
        assert!(unmodified_since(date, 784_111_777));
        assert!(!unmodified_since(date, 784_111_778));
        assert!(unmodified_since(b"garbage", 784_111_778));
    }
}
