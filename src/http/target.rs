//! The request target as the application sees it, sans-IO: path and query apart (no
//! fragment; absolute-form loses its scheme and authority), the authority of an
//! absolute-form target, percent-decoding, the leading-slash collapse and the
//! `url_prefix` cut that make PATH_INFO. Pure functions on bytes.

use std::borrow::Cow;

use super::request::has_http_scheme;

/// Splits a request target into (path, query), dropping any fragment. Absolute-form
/// targets lose their scheme and authority; `*` stays `*`.
pub fn split_target(target: &[u8]) -> (&[u8], &[u8]) {
    let without_fragment = match memchr::memchr(b'#', target) {
        Some(i) => &target[..i],
        None => target,
    };
    let (path, query) = match memchr::memchr(b'?', without_fragment) {
        Some(i) => (&without_fragment[..i], &without_fragment[i + 1..]),
        None => (without_fragment, &b""[..]),
    };
    if !path.starts_with(b"/") && has_http_scheme(path) {
        let after_scheme = memchr::memmem::find(path, b"://").map_or(0, |i| i + 3);
        let rest = &path[after_scheme..];
        let path = match memchr::memchr(b'/', rest) {
            Some(i) => &rest[i..],
            None => &b""[..],
        };
        return (path, query);
    }
    (path, query)
}

/// The authority (`host[:port]`) of an absolute-form target, `None` for other forms.
pub fn absolute_form_authority(target: &[u8]) -> Option<&[u8]> {
    if target.starts_with(b"/") || !has_http_scheme(target) {
        return None;
    }
    let after_scheme = memchr::memmem::find(target, b"://")? + 3;
    let rest = &target[after_scheme..];
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// `%XX` sequences become bytes; anything else (including a bad `%`) is kept as is.
pub fn percent_decode(path: &[u8]) -> Cow<'_, [u8]> {
    if !path.contains(&b'%') {
        return Cow::Borrowed(path);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%' && i + 2 < path.len() {
            if let (Some(h), Some(l)) = (hex(path[i + 1]), hex(path[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(path[i]);
        i += 1;
    }
    Cow::Owned(out)
}

/// `///a//b` → `/a//b`: only the leading run of slashes collapses.
pub fn collapse_leading_slashes(path: &[u8]) -> &[u8] {
    let slashes = path.iter().take_while(|&&b| b == b'/').count();
    if slashes > 1 {
        &path[slashes - 1..]
    } else {
        path
    }
}

/// PATH_INFO under `url_prefix`: `""` for the prefix itself, the rest for paths below it,
/// and the path unchanged otherwise.
pub fn strip_prefix<'a>(path: &'a [u8], prefix: &[u8]) -> &'a [u8] {
    if prefix.is_empty() {
        return path;
    }
    if path == prefix {
        return b"";
    }
    if path.starts_with(prefix) && path.get(prefix.len()) == Some(&b'/') {
        return &path[prefix.len()..];
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(split_target(b"/a/b?x=1&y"), (&b"/a/b"[..], &b"x=1&y"[..]));
        assert_eq!(split_target(b"/a#frag?x"), (&b"/a"[..], &b""[..]));
        assert_eq!(split_target(b"http://h:99/p?q"), (&b"/p"[..], &b"q"[..]));
        assert_eq!(split_target(b"http://h"), (&b""[..], &b""[..]));
        assert_eq!(split_target(b"*"), (&b"*"[..], &b""[..]));
        assert_eq!(split_target(b"//x/y?z"), (&b"//x/y"[..], &b"z"[..]));
    }

    #[test]
    fn authorities() {
        assert_eq!(
            absolute_form_authority(b"http://h:99/p?q"),
            Some(&b"h:99"[..])
        );
        assert_eq!(
            absolute_form_authority(b"https://example.com"),
            Some(&b"example.com"[..])
        );
        assert_eq!(
            absolute_form_authority(b"http://e.com?x"),
            Some(&b"e.com"[..])
        );
        assert_eq!(absolute_form_authority(b"/p"), None);
        assert_eq!(absolute_form_authority(b"*"), None);
    }

    #[test]
    fn decoding() {
        assert_eq!(&*percent_decode(b"/a%2Fb%e9%zz%4"), b"/a/b\xe9%zz%4");
        assert_eq!(&*percent_decode(b"/%"), b"/%");
        assert_eq!(&*percent_decode(b"/%4"), b"/%4");
        assert_eq!(&*percent_decode(b"/%41"), b"/A");
        assert_eq!(collapse_leading_slashes(b"///abc"), b"/abc");
        assert_eq!(collapse_leading_slashes(b"//x//y"), b"/x//y");
        assert_eq!(collapse_leading_slashes(b"/x"), b"/x");
    }

    #[test]
    fn prefixes() {
        assert_eq!(strip_prefix(b"/app", b"/app"), b"");
        assert_eq!(strip_prefix(b"/app/x", b"/app"), b"/x");
        assert_eq!(strip_prefix(b"/apple", b"/app"), b"/apple");
        assert_eq!(strip_prefix(b"/x", b""), b"/x");
    }
}
