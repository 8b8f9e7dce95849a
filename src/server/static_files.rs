//! Static files (`static` mounts), answered by the I/O thread that read the request: the
//! application never sees a request under a mount's prefix (unless `static_fallthrough`
//! passes on one the mount does not serve). It owns the mounts' directory descriptors,
//! opening a file beneath one without leaving it, and the response head; the path rules
//! and the validators are `http/`'s pure functions, and the bytes go out through the
//! `Responder` with `sendfile(2)`. No Python here, and nothing that blocks on the network.
//!
//! Opening and `fstat` are the only file-system calls per request (plus one open per
//! precompressed variant the client accepts); the descriptor is the one sent from, so
//! nothing can change between the check and the send except the file's contents.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;

use super::responder::{Delivery, FileSegment, Part, Responder, SENDFILE_RESPONSES};
use crate::config::{StaticConfig, StaticOpen};
use crate::http::conditional::{self, Coding, RangeAsk};
use crate::http::date::format_imf_fixdate;
use crate::http::request::RequestHead;
use crate::http::response::{write_head, Framing, FramingInput, ServerHeader};
use crate::http::static_path::{self, Refusal, StaticPath};
use crate::http::target::split_target;

/// `Cache-Control` for names matching `static_immutable_pattern`: a year, immutable.
const IMMUTABLE: &[u8] = b"public, max-age=31536000, immutable";
/// The page of a 404 (and the body of a 405).
const NOT_FOUND_BODY: &[u8] = b"Not Found\r\n";
const NOT_ALLOWED_BODY: &[u8] = b"Method Not Allowed\r\n";

/// The mounts of one server, opened once at start-up.
pub struct StaticFiles {
    mounts: Vec<Mount>,
    fallthrough: bool,
    index: bool,
    open: StaticOpen,
    /// `Cache-Control` of files that are not immutable.
    cache_control: Vec<u8>,
    immutable: Option<regex_lite::Regex>,
    /// `openat2(2)` is missing (kernels before 5.6, some sandboxes): walk the path one
    /// component at a time with `O_NOFOLLOW` instead, which refuses every symlink.
    no_openat2: AtomicBool,
}

struct Mount {
    /// `/static` (no trailing slash; empty for a mount at the root).
    prefix: Vec<u8>,
    /// The directory, opened `O_PATH | O_DIRECTORY`.
    root: OwnedFd,
}

/// What the connection does with a request.
pub enum Route {
    /// Not for a mount (or passed on by `static_fallthrough`): dispatch it.
    Application,
    /// The mount answers it.
    Answer(Answer),
}

/// A static response: its head, and the part of the file that follows it (nothing for
/// HEAD, 304, 404...).
pub struct Answer {
    pub head: Vec<u8>,
    pub status: u16,
    pub body: Option<FileSegment>,
    /// Bytes of a server page that follow the head (404, 405), when there is no file.
    pub page: &'static [u8],
    pub keep_alive: bool,
}

/// Hands `answer` to the connection's responder: a head alone (or with a page's few
/// bytes) in one direct write; a head and a file queued together, for the connection
/// task to send the head with `MSG_MORE` and then the file with `sendfile(2)`, so that
/// a small file leaves in one segment with its head.
pub fn send(responder: &Responder, answer: Answer) {
    responder.note_head(answer.status, answer.head.len());
    let parts = [
        Part::Shared(Bytes::from(answer.head)),
        Part::Borrowed(answer.page),
    ];
    let delivery = match answer.body {
        Some(_) => Delivery::Queued,
        None => Delivery::Direct,
    };
    if responder.send(&parts, delivery).is_err() {
        return;
    }
    if let Some(segment) = answer.body {
        SENDFILE_RESPONSES.fetch_add(1, Ordering::Relaxed);
        if responder.send_file(segment).is_err() {
            return;
        }
    }
    responder.finish(answer.keep_alive);
}

/// The request facts that shape a response head.
struct Exchange<'a> {
    head: &'a RequestHead,
    keep_alive: bool,
    ident: Option<&'a str>,
}

/// A file opened for a request: its descriptor and what `fstat` said.
struct Opened {
    file: File,
    size: u64,
    modified_secs: u64,
    etag: Vec<u8>,
}

/// Why a file could not be opened for a request.
enum Missing {
    /// Absent, not a regular file, a symlink out of the root...: not found.
    NotFound,
    /// A directory (for `static_index`'s redirect).
    Directory,
}

impl StaticFiles {
    /// Opens every mount's directory; the error names the bad entry.
    pub fn open(config: &StaticConfig) -> Result<Option<StaticFiles>, String> {
        if config.mounts.is_empty() {
            return Ok(None);
        }
        let mut mounts = Vec::with_capacity(config.mounts.len());
        for mount in &config.mounts {
            let root = open_directory(&mount.directory).map_err(|err| {
                format!(
                    "static: cannot open the directory {} of {}: {err}",
                    mount.directory.display(),
                    mount.prefix
                )
            })?;
            mounts.push(Mount {
                prefix: mount.prefix.trim_end_matches('/').as_bytes().to_vec(),
                root,
            });
        }
        // The longest prefix first: `/static/admin` wins over `/static`.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.prefix.len()));
        let immutable = match &config.immutable_pattern {
            Some(pattern) => Some(regex_lite::Regex::new(pattern).map_err(|err| {
                format!(
                    "static_immutable_pattern {pattern:?} is not a valid regular expression: {err}"
                )
            })?),
            None => None,
        };
        Ok(Some(StaticFiles {
            mounts,
            fallthrough: config.fallthrough,
            index: config.index,
            open: config.open,
            cache_control: cache_control(config.max_age),
            immutable,
            no_openat2: AtomicBool::new(false),
        }))
    }

    /// Decides what happens to a request: whether a mount answers it, and how.
    pub fn route(&self, head: &RequestHead, keep_alive: bool, ident: Option<&str>) -> Route {
        let (path, _query) = split_target(head.target());
        let Some((mount, rest)) = self
            .mounts
            .iter()
            .find_map(|m| static_path::under_prefix(&m.prefix, path).map(|rest| (m, rest)))
        else {
            return Route::Application;
        };
        let exchange = Exchange {
            head,
            keep_alive,
            ident,
        };
        let wanted = match static_path::resolve(rest) {
            Ok(wanted) => wanted,
            Err(Refusal::Escape) => return Route::Answer(exchange.page(404, NOT_FOUND_BODY)),
            Err(Refusal::Hidden) => return self.not_found(&exchange),
        };
        let readable = matches!(head.method(), b"GET" | b"HEAD");
        if !readable && !self.fallthrough {
            return Route::Answer(exchange.page(405, NOT_ALLOWED_BODY));
        }
        let opened = match self.open_file(mount, &wanted) {
            Ok(opened) => opened,
            Err(Missing::Directory) if !wanted.directory && self.index => {
                return self.redirect_to_directory(&exchange, mount, &wanted, path);
            }
            Err(_) => return self.not_found(&exchange),
        };
        if !readable {
            return Route::Answer(exchange.page(405, NOT_ALLOWED_BODY));
        }
        Route::Answer(self.file_response(&exchange, mount, &wanted, opened))
    }

    fn not_found(&self, exchange: &Exchange<'_>) -> Route {
        if self.fallthrough {
            Route::Application
        } else {
            Route::Answer(exchange.page(404, NOT_FOUND_BODY))
        }
    }

    /// `static_index` and a directory named without its trailing slash: 301 to the
    /// name with it (so relative links in its index.html work), if it has an index.
    fn redirect_to_directory(
        &self,
        exchange: &Exchange<'_>,
        mount: &Mount,
        wanted: &StaticPath,
        path: &[u8],
    ) -> Route {
        let as_directory = StaticPath {
            relative: wanted.relative.clone(),
            directory: true,
        };
        if self.open_file(mount, &as_directory).is_err() {
            return self.not_found(exchange);
        }
        let (_, query) = split_target(exchange.head.target());
        let mut location = path.to_vec();
        location.push(b'/');
        if !query.is_empty() {
            location.push(b'?');
            location.extend_from_slice(query);
        }
        let mut fields = Vec::with_capacity(location.len() + 16);
        push_field(&mut fields, b"Location", &location);
        Route::Answer(exchange.answer(301, &fields, None, 0))
    }

    /// Opens what `wanted` names below `mount` (a directory's index.html with
    /// `static_index`), as a regular file.
    fn open_file(&self, mount: &Mount, wanted: &StaticPath) -> Result<Opened, Missing> {
        let file = self.open_beneath(mount.root.as_raw_fd(), &wanted.relative)?;
        let meta = file.metadata().map_err(|_| Missing::NotFound)?;
        if meta.is_dir() {
            if !wanted.directory || !self.index {
                return Err(Missing::Directory);
            }
            return opened(self.open_beneath(file.as_raw_fd(), b"index.html")?);
        }
        if wanted.directory {
            // `/a.css/`: not a directory.
            return Err(Missing::NotFound);
        }
        opened_with(file, &meta)
    }

    /// Opens `relative` (checked segments, or empty for `dir` itself) beneath the
    /// directory `dir`, never outside it.
    fn open_beneath(&self, dir: RawFd, relative: &[u8]) -> Result<File, Missing> {
        let relative: &[u8] = if relative.is_empty() { b"." } else { relative };
        let path = CString::new(relative).map_err(|_| Missing::NotFound)?;
        let result = match self.open {
            StaticOpen::FollowSymlinks => openat(dir, &path, 0),
            StaticOpen::Beneath if !self.no_openat2.load(Ordering::Relaxed) => {
                match openat2_beneath(dir, &path) {
                    Err(err) if err.raw_os_error() == Some(libc::ENOSYS) => {
                        self.no_openat2.store(true, Ordering::Relaxed);
                        open_walking(dir, relative)
                    }
                    other => other,
                }
            }
            StaticOpen::Beneath => open_walking(dir, relative),
        };
        result.map_err(|_| Missing::NotFound)
    }

    /// The response for a file: negotiated, validated, ranged.
    fn file_response(
        &self,
        exchange: &Exchange<'_>,
        mount: &Mount,
        wanted: &StaticPath,
        identity: Opened,
    ) -> Answer {
        let head = exchange.head;
        let range_value = head.field(b"range").filter(|_| head.method() == b"GET");
        // A Range applies to the identity file; otherwise a precompressed variant may.
        let (chosen, coding) = match (range_value, head.field(b"accept-encoding")) {
            (None, Some(accept)) if !wanted.directory => {
                match self.variant(mount, &wanted.relative, accept) {
                    Some((variant, coding)) => (variant, Some(coding)),
                    None => (identity, None),
                }
            }
            _ => (identity, None),
        };
        let mut fields = Vec::with_capacity(320);
        push_field(&mut fields, b"Content-Type", &content_type(wanted));
        if let Some(coding) = coding {
            push_field(&mut fields, b"Content-Encoding", coding.token());
        }
        push_field(&mut fields, b"Vary", b"Accept-Encoding");
        push_field(&mut fields, b"ETag", &chosen.etag);
        push_field(
            &mut fields,
            b"Last-Modified",
            &format_imf_fixdate(chosen.modified_secs),
        );
        push_field(
            &mut fields,
            b"Cache-Control",
            self.cache_control_for(wanted),
        );
        if self.not_modified(head, &chosen) {
            return exchange.answer(304, &fields, None, 0);
        }
        push_field(&mut fields, b"Accept-Ranges", b"bytes");
        let ranged = range_value
            .filter(|_| {
                head.field(b"if-range").is_none_or(|v| {
                    conditional::if_range_holds(v, &chosen.etag, chosen.modified_secs)
                })
            })
            .map_or(RangeAsk::Whole, |v| conditional::range(v, chosen.size));
        let size = chosen.size;
        let file = Arc::new(chosen.file);
        match ranged {
            RangeAsk::One { first, last } => {
                let content_range = format!("bytes {first}-{last}/{size}");
                push_field(&mut fields, b"Content-Range", content_range.as_bytes());
                let len = last - first + 1;
                exchange.answer(206, &fields, Some((file, first)), len)
            }
            RangeAsk::Unsatisfiable => {
                push_field(
                    &mut fields,
                    b"Content-Range",
                    format!("bytes */{size}").as_bytes(),
                );
                exchange.answer(416, &fields, None, 0)
            }
            RangeAsk::Whole | RangeAsk::Several => {
                exchange.answer(200, &fields, Some((file, 0)), size)
            }
        }
    }

    /// The precompressed variant the client prefers among those that exist.
    fn variant(&self, mount: &Mount, relative: &[u8], accept: &[u8]) -> Option<(Opened, Coding)> {
        let weights = conditional::accepted_codings(accept);
        let mut candidates: Vec<(u16, Coding)> = Coding::ALL
            .into_iter()
            .zip(weights)
            .filter(|&(_, w)| w > 0)
            .map(|(c, w)| (w, c))
            .collect();
        // By weight, then in `Coding::ALL`'s order of preference (the sort is stable).
        candidates.sort_by_key(|&(w, _)| std::cmp::Reverse(w));
        candidates.into_iter().find_map(|(_, coding)| {
            let mut name = relative.to_vec();
            name.extend_from_slice(coding.suffix());
            let file = self.open_beneath(mount.root.as_raw_fd(), &name).ok()?;
            opened(file).ok().map(|o| (o, coding))
        })
    }

    /// `If-None-Match` (or, without it, `If-Modified-Since`) says the client's copy is
    /// current.
    fn not_modified(&self, head: &RequestHead, file: &Opened) -> bool {
        match head.field(b"if-none-match") {
            Some(tags) => conditional::none_match(tags, &file.etag),
            None => head
                .field(b"if-modified-since")
                .is_some_and(|since| conditional::not_modified_since(since, file.modified_secs)),
        }
    }

    fn cache_control_for(&self, wanted: &StaticPath) -> &[u8] {
        match &self.immutable {
            Some(pattern) if pattern.is_match(&String::from_utf8_lossy(&wanted.relative)) => {
                IMMUTABLE
            }
            _ => &self.cache_control,
        }
    }
}

impl Exchange<'_> {
    /// A complete answer: status, the mount's fields, and `len` bytes of `file` from
    /// its offset (nothing for HEAD).
    fn answer(
        &self,
        status: u16,
        fields: &[u8],
        file: Option<(Arc<File>, u64)>,
        len: u64,
    ) -> Answer {
        let framing = Framing::decide(FramingInput {
            version: self.head.version,
            head_request: self.head.is_head(),
            client_keep_alive: self.keep_alive,
            status,
            content_length: Some(len),
        });
        let mut head = Vec::with_capacity(fields.len() + 160);
        write_head(
            &mut head,
            self.head.version,
            status_line(status),
            fields,
            false,
            self.server_header(),
            &framing,
        );
        let body = file
            .filter(|_| !self.head.is_head() && len > 0)
            .map(|(file, offset)| FileSegment { file, offset, len });
        Answer {
            head,
            status,
            body,
            page: b"",
            keep_alive: framing.keep_alive,
        }
    }

    /// A short text page (404, 405), keeping the connection open.
    fn page(&self, status: u16, body: &'static [u8]) -> Answer {
        let mut fields = Vec::with_capacity(96);
        push_field(&mut fields, b"Content-Type", b"text/plain; charset=utf-8");
        if status == 405 {
            push_field(&mut fields, b"Allow", b"GET, HEAD");
        }
        let mut answer = self.answer(status, &fields, None, body.len() as u64);
        if !self.head.is_head() {
            answer.page = body;
        }
        answer
    }

    fn server_header(&self) -> ServerHeader<'_> {
        match self.ident {
            Some(ident) => ServerHeader::Server(ident.as_bytes()),
            None => ServerHeader::None,
        }
    }
}

fn status_line(status: u16) -> &'static [u8] {
    match status {
        200 => b"200 OK",
        206 => b"206 Partial Content",
        301 => b"301 Moved Permanently",
        304 => b"304 Not Modified",
        404 => b"404 Not Found",
        405 => b"405 Method Not Allowed",
        _ => b"416 Range Not Satisfiable",
    }
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `static_max_age`: `public, max-age=N`, or `no-cache` for 0 (revalidate every time).
fn cache_control(max_age: u64) -> Vec<u8> {
    match max_age {
        0 => b"no-cache".to_vec(),
        n => format!("public, max-age={n}").into_bytes(),
    }
}

/// The type of the file by its extension (of the identity name, not a variant's),
/// with `charset=utf-8` for text.
fn content_type(wanted: &StaticPath) -> Vec<u8> {
    let name: &[u8] = if wanted.directory {
        b"index.html"
    } else {
        &wanted.relative
    };
    let path = Path::new(std::ffi::OsStr::from_bytes(name));
    let mime = mime_guess::from_path(path)
        .first_raw()
        .unwrap_or("application/octet-stream");
    let texty = mime.starts_with("text/")
        || matches!(
            mime,
            "application/javascript"
                | "application/json"
                | "application/xml"
                | "image/svg+xml"
                | "application/manifest+json"
        );
    if texty {
        format!("{mime}; charset=utf-8").into_bytes()
    } else {
        mime.as_bytes().to_vec()
    }
}

/// A regular file's facts; anything else (a directory, a FIFO, a device) is not found.
fn opened(file: File) -> Result<Opened, Missing> {
    let meta = file.metadata().map_err(|_| Missing::NotFound)?;
    opened_with(file, &meta)
}

fn opened_with(file: File, meta: &std::fs::Metadata) -> Result<Opened, Missing> {
    if !meta.is_file() {
        return Err(Missing::NotFound);
    }
    Ok(Opened {
        size: meta.len(),
        modified_secs: modified_secs(meta),
        etag: etag_of(meta),
        file,
    })
}

fn modified_secs(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

fn etag_of(meta: &std::fs::Metadata) -> Vec<u8> {
    let nanos = u128::try_from(meta.mtime()).unwrap_or(0) * 1_000_000_000
        + u128::try_from(meta.mtime_nsec()).unwrap_or(0);
    conditional::entity_tag(meta.len(), nanos, meta.ino())
}

/// Flags of every open: read-only, not inherited, never a controlling terminal, and
/// never waiting (a FIFO opens at once and is then refused as not a regular file).
const OPEN_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;

fn open_directory(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the path"))?;
    // SAFETY: `c` is a valid NUL-terminated string; the result is checked.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn openat(dir: RawFd, path: &CString, extra: libc::c_int) -> io::Result<File> {
    // SAFETY: `dir` is an open descriptor for the duration of the call, `path` a valid
    // NUL-terminated string; the result is checked.
    let fd = unsafe { libc::openat(dir, path.as_ptr(), OPEN_FLAGS | extra) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `openat2(2)` with `RESOLVE_BENEATH`: the kernel refuses any resolution that would
/// leave `dir` (`..`, absolute symlinks, symlinks pointing outside) and magic links.
fn openat2_beneath(dir: RawFd, path: &CString) -> io::Result<File> {
    // SAFETY: `open_how` is plain data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = OPEN_FLAGS as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `dir` is open, `path` is NUL-terminated, `how` is a valid `open_how` of
    // the size passed; the result is checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd as RawFd) })
}

/// Without `openat2`: one component at a time, each with `O_NOFOLLOW` (every symlink
/// refused), directories with `O_DIRECTORY`.
fn open_walking(dir: RawFd, relative: &[u8]) -> io::Result<File> {
    let mut components = relative.split(|&b| b == b'/').peekable();
    let mut current: Option<File> = None;
    while let Some(component) = components.next() {
        let name =
            CString::new(component).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let at = current.as_ref().map_or(dir, File::as_raw_fd);
        let last = components.peek().is_none();
        let extra = if last {
            libc::O_NOFOLLOW
        } else {
            libc::O_NOFOLLOW | libc::O_DIRECTORY
        };
        current = Some(openat(at, &name, extra)?);
    }
    current.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
}

#[cfg(test)]
mod tests {
    //! The two ways of opening beneath a directory, on a real tree: `openat2` with
    //! `RESOLVE_BENEATH`, and the component walk used where `openat2` is missing.

    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    struct Tree {
        _dir: tempfile::TempDir,
        root: OwnedFd,
    }

    fn tree() -> Tree {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let base = dir.path();
        std::fs::create_dir_all(base.join("root/sub")).unwrap();
        std::fs::write(base.join("root/a.txt"), b"inside").unwrap();
        std::fs::write(base.join("root/sub/b.txt"), b"deeper").unwrap();
        std::fs::write(base.join("secret.txt"), b"outside").unwrap();
        symlink("a.txt", base.join("root/relative-in")).unwrap();
        symlink("../secret.txt", base.join("root/relative-out")).unwrap();
        symlink(base.join("root/a.txt"), base.join("root/absolute-in")).unwrap();
        let root = open_directory(&base.join("root")).expect("the root opens");
        Tree { _dir: dir, root }
    }

    fn read(file: io::Result<File>) -> Option<String> {
        let mut text = String::new();
        file.ok()?.read_to_string(&mut text).ok()?;
        Some(text)
    }

    fn c(path: &str) -> CString {
        CString::new(path).unwrap()
    }

    #[test]
    fn openat2_stays_beneath_the_directory() {
        let t = tree();
        let fd = t.root.as_raw_fd();
        assert_eq!(
            read(openat2_beneath(fd, &c("a.txt"))).as_deref(),
            Some("inside")
        );
        assert_eq!(
            read(openat2_beneath(fd, &c("sub/b.txt"))).as_deref(),
            Some("deeper")
        );
        assert_eq!(
            read(openat2_beneath(fd, &c("relative-in"))).as_deref(),
            Some("inside")
        );
        // Out of the directory, whatever the path or the link says.
        for escape in [
            "relative-out",
            "absolute-in",
            "../secret.txt",
            "/etc/passwd",
            "sub/../../secret.txt",
        ] {
            assert!(openat2_beneath(fd, &c(escape)).is_err(), "{escape}");
        }
    }

    #[test]
    fn the_walk_refuses_every_symlink() {
        let t = tree();
        let fd = t.root.as_raw_fd();
        assert_eq!(read(open_walking(fd, b"a.txt")).as_deref(), Some("inside"));
        assert_eq!(
            read(open_walking(fd, b"sub/b.txt")).as_deref(),
            Some("deeper")
        );
        assert!(open_walking(fd, b".").is_ok());
        for refused in [
            &b"relative-in"[..],
            b"relative-out",
            b"absolute-in",
            b"a.txt/x",
        ] {
            assert!(open_walking(fd, refused).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn following_symlinks_reaches_outside() {
        let t = tree();
        let fd = t.root.as_raw_fd();
        assert_eq!(
            read(openat(fd, &c("relative-out"), 0)).as_deref(),
            Some("outside")
        );
    }
}
