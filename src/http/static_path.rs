//! Where a request for a static file leads, sans-IO: whether a request path falls under
//! a mount's URL prefix, and the path below the mount's directory it names, refusing
//! every way out of that directory. Pure functions on bytes: no file system here (the
//! server opens what this returns beneath the directory's descriptor, so the kernel
//! checks again: `server/static_files.rs`).

/// The rest of `path` after the mount `prefix` (`/static`), if the path is under it:
/// the prefix itself or the prefix followed by `/`. Matched byte for byte on the path as
/// the client sent it (so `/stat%69c/` is not under `/static`: it goes to the
/// application, as it would without a mount). `prefix` has no trailing slash.
pub fn under_prefix<'a>(prefix: &[u8], path: &'a [u8]) -> Option<&'a [u8]> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest[0] == b'/').then_some(rest)
}

/// A path below a mount's directory, made of checked segments joined by `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticPath {
    /// Empty for the directory itself.
    pub relative: Vec<u8>,
    /// The request asked for a directory: it ended with `/` (the mount itself named
    /// without one is asked for as a file, and redirected if it has an index).
    pub directory: bool,
}

/// Why a path is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An attempt to leave the directory or a malformed path: `.` or `..` segments
    /// (plain or percent-encoded), an encoded `/`, backslashes, NUL or other control
    /// bytes, empty segments (`//`), broken percent escapes. Never opened (with
    /// `static_fallthrough` the application gets the request, as without a mount).
    Escape,
    /// A dotfile or a path through a dot-directory (`.env`, `.git/config`): never served
    /// from the mount, though `static_fallthrough` passes it to the application.
    Hidden,
}

/// The path below the mount that `rest` (what `under_prefix` returned) names.
pub fn resolve(rest: &[u8]) -> Result<StaticPath, Refusal> {
    let Some(rest) = rest.strip_prefix(b"/") else {
        // The mount itself named without its slash (`/static`): the directory, asked
        // for as a file (with `static_index`, redirected to `/static/`).
        return Ok(StaticPath {
            relative: Vec::new(),
            directory: false,
        });
    };
    let mut relative = Vec::with_capacity(rest.len());
    let mut hidden = false;
    let segments: Vec<&[u8]> = rest.split(|&b| b == b'/').collect();
    let last = segments.len() - 1;
    for (i, raw) in segments.into_iter().enumerate() {
        if raw.is_empty() {
            if i == last && !hidden {
                // A trailing slash: the request is for a directory.
                return Ok(StaticPath {
                    relative,
                    directory: true,
                });
            }
            if i == last {
                return Err(Refusal::Hidden);
            }
            return Err(Refusal::Escape);
        }
        let segment = decode_segment(raw)?;
        match check_segment(&segment)? {
            Segment::Plain => {}
            Segment::Dotted => hidden = true,
        }
        if i > 0 {
            relative.push(b'/');
        }
        relative.extend_from_slice(&segment);
    }
    if hidden {
        return Err(Refusal::Hidden);
    }
    Ok(StaticPath {
        relative,
        directory: false,
    })
}

/// What a decoded segment is.
enum Segment {
    Plain,
    /// Starts with a dot (and is not `.` or `..`).
    Dotted,
}

fn check_segment(segment: &[u8]) -> Result<Segment, Refusal> {
    if segment == b"." || segment == b".." {
        return Err(Refusal::Escape);
    }
    if segment
        .iter()
        .any(|&b| b == b'/' || b == b'\\' || b < 0x20 || b == 0x7f)
    {
        return Err(Refusal::Escape);
    }
    Ok(if segment[0] == b'.' {
        Segment::Dotted
    } else {
        Segment::Plain
    })
}

/// Percent-decodes one segment strictly: a `%` not followed by two hex digits is a
/// malformed path, not a literal `%`.
fn decode_segment(raw: &[u8]) -> Result<Vec<u8>, Refusal> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let (Some(&h), Some(&l)) = (raw.get(i + 1), raw.get(i + 2)) else {
                return Err(Refusal::Escape);
            };
            let (Some(h), Some(l)) = (hex(h), hex(l)) else {
                return Err(Refusal::Escape);
            };
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(relative: &str) -> Result<StaticPath, Refusal> {
        Ok(StaticPath {
            relative: relative.as_bytes().to_vec(),
            directory: false,
        })
    }

    #[test]
    fn prefix_matches_at_segment_boundaries() {
        assert_eq!(under_prefix(b"/static", b"/static"), Some(&b""[..]));
        assert_eq!(
            under_prefix(b"/static", b"/static/a.css"),
            Some(&b"/a.css"[..])
        );
        assert_eq!(under_prefix(b"/static", b"/staticfoo"), None);
        assert_eq!(under_prefix(b"/static", b"/Static/a.css"), None);
        assert_eq!(under_prefix(b"/static", b"/stat%69c/a.css"), None);
        assert_eq!(under_prefix(b"", b"/a.css"), Some(&b"/a.css"[..]));
    }

    #[test]
    fn plain_paths_resolve() {
        assert_eq!(resolve(b"/a.css"), file("a.css"));
        assert_eq!(
            resolve(b"/css/site.3f9c2e1b.css"),
            file("css/site.3f9c2e1b.css")
        );
        assert_eq!(resolve(b"/with%20space.txt"), file("with space.txt"));
        assert_eq!(resolve(b"/caf%C3%A9.txt"), file("caf\u{e9}.txt"));
        assert_eq!(resolve(b"/a..b"), file("a..b"));
        assert_eq!(resolve(b"/a%2Eb"), file("a.b"));
    }

    #[test]
    fn directories_resolve() {
        let dir = |r: &str| {
            Ok(StaticPath {
                relative: r.as_bytes().to_vec(),
                directory: true,
            })
        };
        assert_eq!(resolve(b""), file(""));
        assert_eq!(resolve(b"/"), dir(""));
        assert_eq!(resolve(b"/docs/"), dir("docs"));
        assert_eq!(resolve(b"/docs/api/"), dir("docs/api"));
    }

    #[test]
    fn escapes_are_refused() {
        for path in [
            &b"/.."[..],
            b"/../secret",
            b"/a/../../secret",
            b"/./a",
            b"/%2e%2e/secret",
            b"/%2E%2E/secret",
            b"/.%2e/secret",
            b"/%2e./secret",
            b"/..%2fsecret",
            b"/..%2Fsecret",
            b"/%2fetc%2fpasswd",
            b"/..%5csecret",
            b"/..\\secret",
            b"/a\\..\\..\\secret",
            b"//etc/passwd",
            b"/a//b",
            b"/a%00.txt",
            b"/a\x00.txt",
            b"/a%0a.txt",
            b"/a%7f",
            b"/%",
            b"/%2",
            b"/%zz",
            b"/a%2",
            b"/%252e%252e/secret",
        ] {
            let got = resolve(path);
            // `%252e` decodes once to `%2e`, a file literally named so: harmless.
            if path == b"/%252e%252e/secret" {
                assert_eq!(got, file("%2e%2e/secret"));
                continue;
            }
            assert_eq!(
                got,
                Err(Refusal::Escape),
                "{:?}",
                String::from_utf8_lossy(path)
            );
        }
    }

    #[test]
    fn dotfiles_are_hidden() {
        for path in [
            &b"/.env"[..],
            b"/.git/config",
            b"/a/.htaccess",
            b"/%2egit/HEAD",
            b"/.well-known/x",
        ] {
            assert_eq!(resolve(path), Err(Refusal::Hidden), "{path:?}");
        }
        // An escape anywhere wins over a dotfile before it.
        assert_eq!(resolve(b"/.git/../../x"), Err(Refusal::Escape));
    }
}
