//! Static files (`static` mounts), answered by the I/O thread that read the request: the
//! application never sees a request under a mount's prefix (unless `static_fallthrough`
//! passes on one the mount does not serve). It owns the mounts, the choice of what to
//! send (which representation, which status) and the response head; the path rules and
//! the validators are `http/`'s pure functions, opening beneath a directory is
//! `static_open.rs`'s, and the bytes go out through the `Responder` with `sendfile(2)`.
//! No Python here, and nothing that waits on the network.
//!
//! Per request: an open and an `fstat` of the file (and of each precompressed variant
//! the client would take, until one exists; a directory's `index.html` is a second
//! open). The descriptor checked is the one sent from: nothing can be swapped between
//! the check and the send, only the file's contents can change.

use std::borrow::Cow;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::ratelimit::{suppressed_note, SharedRateLimit, Verdict};
use super::responder::{Delivery, FileSegment, Part, Responder};
use super::static_open::{open_directory, Missing, Opener};
use crate::config::StaticConfig;
use crate::http::conditional::{self, Coding, RangeAsk};
use crate::http::date::{format_imf_fixdate, now_secs};
use crate::http::request::RequestHead;
use crate::http::response::{push_field, write_head, Framing, FramingInput, ServerHeader};
use crate::http::static_path::{self, StaticPath};
use crate::http::target::split_target;

/// `Cache-Control` for names matching `static_immutable_pattern`: a year, immutable.
const IMMUTABLE: &[u8] = b"public, max-age=31536000, immutable";
/// How often a failing open is logged at most.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The mounts of one server, opened once at start-up.
pub struct StaticFiles {
    mounts: Vec<Mount>,
    fallthrough: bool,
    index: bool,
    opener: Opener,
    /// Why the opener is not `openat2`, for the log at start-up.
    opener_note: Option<String>,
    /// `Cache-Control` of files that are not immutable.
    cache_control: Vec<u8>,
    immutable: Option<regex_lite::Regex>,
    /// Opens that failed for want of resources, logged at most every `REPORT_EVERY`.
    failures: SharedRateLimit,
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

/// A static response: its head, and what follows it.
pub struct Answer {
    pub head: Vec<u8>,
    pub status: u16,
    /// The part of the file after the head (nothing for HEAD, 304, 404...).
    pub body: Option<FileSegment>,
    /// The few bytes of a page (404, 405...) after the head, when there is no file.
    pub page: &'static [u8],
    pub keep_alive: bool,
    /// What the operator should hear of (an open that failed for want of resources).
    pub problem: Option<String>,
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
        if responder.send_file(segment).is_err() {
            return;
        }
    }
    responder.finish(answer.keep_alive);
}

/// The statuses a mount answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    PartialContent,
    MovedPermanently,
    NotModified,
    NotFound,
    MethodNotAllowed,
    PreconditionFailed,
    RangeNotSatisfiable,
    ServiceUnavailable,
}

impl Status {
    fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::PartialContent => 206,
            Status::MovedPermanently => 301,
            Status::NotModified => 304,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::PreconditionFailed => 412,
            Status::RangeNotSatisfiable => 416,
            Status::ServiceUnavailable => 503,
        }
    }

    fn line(self) -> &'static [u8] {
        match self {
            Status::Ok => b"200 OK",
            Status::PartialContent => b"206 Partial Content",
            Status::MovedPermanently => b"301 Moved Permanently",
            Status::NotModified => b"304 Not Modified",
            Status::NotFound => b"404 Not Found",
            Status::MethodNotAllowed => b"405 Method Not Allowed",
            Status::PreconditionFailed => b"412 Precondition Failed",
            Status::RangeNotSatisfiable => b"416 Range Not Satisfiable",
            Status::ServiceUnavailable => b"503 Service Unavailable",
        }
    }

    /// The body of the server's page for this status.
    fn page(self) -> &'static [u8] {
        match self {
            Status::NotFound => b"Not Found\r\n",
            Status::MethodNotAllowed => b"Method Not Allowed\r\n",
            Status::PreconditionFailed => b"Precondition Failed\r\n",
            Status::ServiceUnavailable => b"Service Unavailable\r\n",
            _ => b"",
        }
    }
}

/// A file opened for a request, and what `fstat` said of it.
struct Opened {
    file: File,
    /// Its path below the mount (a directory's `index.html` included): what its type,
    /// its variants and the immutable pattern are taken from.
    name: Vec<u8>,
    size: u64,
    /// Modification time, never later than now (RFC 9110 section 8.8.2.1).
    modified_secs: u64,
    etag: Vec<u8>,
}

/// The representation chosen for a request.
struct Chosen {
    file: Opened,
    coding: Option<Coding>,
    /// The `Range` that applies to it (only ever to the identity file).
    range: RangeAsk,
}

/// What the validators of a request say (RFC 9110 section 13.2.2).
enum Precondition {
    Proceed,
    NotModified,
    Failed,
}

impl StaticFiles {
    /// Opens every mount's directory; the error names the bad entry.
    pub fn open(config: &StaticConfig) -> Result<Option<StaticFiles>, String> {
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
        let Some(first) = mounts.first() else {
            return Ok(None);
        };
        let (opener, opener_note) = Opener::choose(config.open, &first.root);
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
            opener,
            opener_note,
            cache_control: cache_control(config.max_age),
            immutable,
            failures: SharedRateLimit::new(REPORT_EVERY),
        }))
    }

    /// A warning for the log at start-up, when files are not opened with `openat2`.
    pub fn opener_note(&self) -> Option<&str> {
        self.opener_note.as_deref()
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
            now_secs: now_secs(),
        };
        let wanted = match static_path::resolve(rest) {
            Ok(wanted) => wanted,
            // Nothing was opened: the application may make of the path what it will.
            Err(_) if self.fallthrough => return Route::Application,
            Err(_) => return Route::Answer(exchange.page(Status::NotFound)),
        };
        let readable = matches!(head.method(), b"GET" | b"HEAD");
        if !readable && !self.fallthrough {
            return Route::Answer(exchange.page(Status::MethodNotAllowed));
        }
        match self.open_file(mount, &wanted, exchange.now_secs) {
            Ok(_) if !readable => Route::Answer(exchange.page(Status::MethodNotAllowed)),
            Ok(opened) => Route::Answer(self.file_response(&exchange, mount, opened)),
            Err(Missing::Unavailable(err)) => {
                Route::Answer(self.unavailable(&exchange, path, &err))
            }
            Err(Missing::Directory) if readable && self.index => {
                self.redirect_to_directory(&exchange, mount, &wanted, path)
            }
            Err(_) => self.not_found(&exchange),
        }
    }

    fn not_found(&self, exchange: &Exchange<'_>) -> Route {
        if self.fallthrough {
            Route::Application
        } else {
            Route::Answer(exchange.page(Status::NotFound))
        }
    }

    /// 503, never cached, and a line for the operator (rate-limited).
    fn unavailable(&self, exchange: &Exchange<'_>, path: &[u8], err: &std::io::Error) -> Answer {
        let mut answer = exchange.page(Status::ServiceUnavailable);
        if let Verdict::Say { suppressed } = self.failures.hit() {
            answer.problem = Some(format!(
                "Could not open a static file for {}: {err}{}",
                String::from_utf8_lossy(path),
                suppressed_note(suppressed)
            ));
        }
        answer
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
        if self
            .open_file(mount, &as_directory, exchange.now_secs)
            .is_err()
        {
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
        Route::Answer(exchange.answer(Status::MovedPermanently, &fields, None, 0))
    }

    /// Opens what `wanted` names below `mount` (a directory's index.html with
    /// `static_index`), as a regular file.
    fn open_file(&self, mount: &Mount, wanted: &StaticPath, now: u64) -> Result<Opened, Missing> {
        let file = self.opener.open(mount.root.as_raw_fd(), &wanted.relative)?;
        let meta = file.metadata().map_err(|_| Missing::NotFound)?;
        if !meta.is_dir() {
            if wanted.directory {
                // `/a.css/`: not a directory.
                return Err(Missing::NotFound);
            }
            return opened(file, &meta, wanted.relative.clone(), now);
        }
        if !wanted.directory || !self.index {
            return Err(Missing::Directory);
        }
        let index = self.opener.open(file.as_raw_fd(), b"index.html")?;
        let meta = index.metadata().map_err(|_| Missing::NotFound)?;
        let mut name = wanted.relative.clone();
        if !name.is_empty() {
            name.push(b'/');
        }
        name.extend_from_slice(b"index.html");
        opened(index, &meta, name, now)
    }

    /// The response for a file: negotiated, validated, ranged.
    fn file_response(&self, exchange: &Exchange<'_>, mount: &Mount, identity: Opened) -> Answer {
        let chosen = self.choose(exchange, mount, identity);
        let mut fields = Vec::with_capacity(320);
        push_field(&mut fields, b"Vary", b"Accept-Encoding");
        push_field(&mut fields, b"ETag", &chosen.file.etag);
        push_field(
            &mut fields,
            b"Last-Modified",
            &format_imf_fixdate(chosen.file.modified_secs),
        );
        push_field(
            &mut fields,
            b"Cache-Control",
            self.cache_control_for(&chosen.file.name),
        );
        match preconditions(exchange.head, &chosen.file) {
            Precondition::Proceed => {}
            Precondition::NotModified => {
                return exchange.answer(Status::NotModified, &fields, None, 0)
            }
            Precondition::Failed => return exchange.page(Status::PreconditionFailed),
        }
        push_field(
            &mut fields,
            b"Content-Type",
            &content_type(&chosen.file.name),
        );
        match chosen.coding {
            Some(coding) => push_field(&mut fields, b"Content-Encoding", coding.token()),
            // Ranges are only ever of the identity file.
            None => push_field(&mut fields, b"Accept-Ranges", b"bytes"),
        }
        ranged(exchange, chosen, fields)
    }

    /// Which representation to send: the identity file when a `Range` applies to it,
    /// else the precompressed variant the client prefers among those that exist (and
    /// are not older than the file: a stale `.gz` is never preferred to its source).
    fn choose(&self, exchange: &Exchange<'_>, mount: &Mount, identity: Opened) -> Chosen {
        let head = exchange.head;
        let range = match head.field(b"range").filter(|_| head.method() == b"GET") {
            Some(value) if if_range_allows(head, &identity, exchange.now_secs) => {
                conditional::range(value, identity.size)
            }
            _ => RangeAsk::Whole,
        };
        if matches!(range, RangeAsk::One { .. } | RangeAsk::Unsatisfiable) {
            return Chosen {
                file: identity,
                coding: None,
                range,
            };
        }
        let Some(accept) = combined(head, b"accept-encoding") else {
            return Chosen {
                file: identity,
                coding: None,
                range,
            };
        };
        for coding in conditional::preference(conditional::accepted_codings(&accept)) {
            let mut name = identity.name.clone();
            name.extend_from_slice(coding.suffix());
            let Ok(file) = self.opener.open(mount.root.as_raw_fd(), &name) else {
                continue;
            };
            let Ok(meta) = file.metadata() else { continue };
            let Ok(mut variant) = opened(file, &meta, name, exchange.now_secs) else {
                continue;
            };
            if variant.modified_secs < identity.modified_secs {
                continue;
            }
            // Typed and matched by the identity file's name.
            variant.name = identity.name;
            return Chosen {
                file: variant,
                coding: Some(coding),
                range: RangeAsk::Whole,
            };
        }
        Chosen {
            file: identity,
            coding: None,
            range,
        }
    }

    fn cache_control_for(&self, name: &[u8]) -> &[u8] {
        match &self.immutable {
            Some(pattern) if pattern.is_match(&String::from_utf8_lossy(name)) => IMMUTABLE,
            _ => &self.cache_control,
        }
    }
}

/// The answer for a representation whose preconditions passed: 206 or 416 when a
/// range applies, else 200 with all of it.
fn ranged(exchange: &Exchange<'_>, chosen: Chosen, mut fields: Vec<u8>) -> Answer {
    let size = chosen.file.size;
    let file = Arc::new(chosen.file.file);
    match chosen.range {
        RangeAsk::One { first, last } => {
            push_field(
                &mut fields,
                b"Content-Range",
                format!("bytes {first}-{last}/{size}").as_bytes(),
            );
            exchange.answer(
                Status::PartialContent,
                &fields,
                Some((file, first)),
                last - first + 1,
            )
        }
        RangeAsk::Unsatisfiable => {
            // Nothing a cache should keep, nor validators of a body it does not carry.
            let mut fields = Vec::with_capacity(96);
            push_field(
                &mut fields,
                b"Content-Range",
                format!("bytes */{size}").as_bytes(),
            );
            push_field(&mut fields, b"Cache-Control", b"no-store");
            exchange.answer(Status::RangeNotSatisfiable, &fields, None, 0)
        }
        RangeAsk::Whole | RangeAsk::Several => {
            exchange.answer(Status::Ok, &fields, Some((file, 0)), size)
        }
    }
}

/// RFC 9110 section 13.2.2, in its order: `If-Match`, else `If-Unmodified-Since`
/// (412 when they fail); then `If-None-Match`, else `If-Modified-Since` (304).
fn preconditions(head: &RequestHead, file: &Opened) -> Precondition {
    let holds = match combined(head, b"if-match") {
        Some(tags) => conditional::any_match(&tags, &file.etag),
        None => head
            .field(b"if-unmodified-since")
            .is_none_or(|since| conditional::unmodified_since(since, file.modified_secs)),
    };
    if !holds {
        return Precondition::Failed;
    }
    let current = match combined(head, b"if-none-match") {
        Some(tags) => conditional::none_match(&tags, &file.etag),
        None => head
            .field(b"if-modified-since")
            .is_some_and(|since| conditional::not_modified_since(since, file.modified_secs)),
    };
    if current {
        Precondition::NotModified
    } else {
        Precondition::Proceed
    }
}

/// Whether `If-Range` (if any) lets a range of `identity` be sent.
fn if_range_allows(head: &RequestHead, identity: &Opened, now: u64) -> bool {
    head.field(b"if-range")
        .is_none_or(|v| conditional::if_range_holds(v, &identity.etag, identity.modified_secs, now))
}

/// A list-valued field's value, its lines joined with `, ` when it came in several.
fn combined<'a>(head: &'a RequestHead, name: &[u8]) -> Option<Cow<'a, [u8]>> {
    let mut values = head
        .fields()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v);
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(Cow::Borrowed(first));
    };
    let mut joined = [first, second].join(&b", "[..]);
    for more in values {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(more);
    }
    Some(Cow::Owned(joined))
}

/// The request facts that shape a response head.
struct Exchange<'a> {
    head: &'a RequestHead,
    keep_alive: bool,
    ident: Option<&'a str>,
    now_secs: u64,
}

impl Exchange<'_> {
    /// A complete answer: status, the mount's fields, and `len` bytes of `file` from
    /// its offset (nothing for HEAD).
    fn answer(
        &self,
        status: Status,
        fields: &[u8],
        file: Option<(Arc<File>, u64)>,
        len: u64,
    ) -> Answer {
        let framing = Framing::decide(FramingInput {
            version: self.head.version,
            head_request: self.head.is_head(),
            client_keep_alive: self.keep_alive,
            status: status.code(),
            content_length: Some(len),
        });
        let mut head = Vec::with_capacity(fields.len() + 160);
        let server = match self.ident {
            Some(ident) => ServerHeader::Server(ident.as_bytes()),
            None => ServerHeader::None,
        };
        write_head(
            &mut head,
            self.head.version,
            status.line(),
            fields,
            false,
            server,
            &framing,
        );
        let body = file
            .filter(|_| !self.head.is_head() && len > 0)
            .map(|(file, offset)| FileSegment { file, offset, len });
        Answer {
            head,
            status: status.code(),
            body,
            page: b"",
            keep_alive: framing.keep_alive,
            problem: None,
        }
    }

    /// The server's short text page for `status`, keeping the connection open.
    fn page(&self, status: Status) -> Answer {
        let mut fields = Vec::with_capacity(128);
        push_field(&mut fields, b"Content-Type", b"text/plain; charset=utf-8");
        match status {
            Status::MethodNotAllowed => push_field(&mut fields, b"Allow", b"GET, HEAD"),
            Status::ServiceUnavailable => {
                push_field(&mut fields, b"Retry-After", b"1");
                push_field(&mut fields, b"Cache-Control", b"no-store");
            }
            _ => {}
        }
        let body = status.page();
        let mut answer = self.answer(status, &fields, None, body.len() as u64);
        if !self.head.is_head() {
            answer.page = body;
        }
        answer
    }
}

/// `static_max_age`: `public, max-age=N`, or `no-cache` for 0 (revalidate every time).
fn cache_control(max_age: u64) -> Vec<u8> {
    match max_age {
        0 => b"no-cache".to_vec(),
        n => format!("public, max-age={n}").into_bytes(),
    }
}

/// The type of a file by its extension, with `charset=utf-8` for text.
fn content_type(name: &[u8]) -> Vec<u8> {
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

/// A regular file's facts; anything else (a FIFO, a device) is not found.
fn opened(
    file: File,
    meta: &std::fs::Metadata,
    name: Vec<u8>,
    now: u64,
) -> Result<Opened, Missing> {
    if !meta.is_file() {
        return Err(Missing::NotFound);
    }
    // Before 1970 counts as 1970.
    let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
    let nanos = u128::from(mtime) * 1_000_000_000 + u128::try_from(meta.mtime_nsec()).unwrap_or(0);
    Ok(Opened {
        size: meta.len(),
        modified_secs: mtime.min(now),
        etag: conditional::entity_tag(meta.len(), nanos, meta.ino()),
        name,
        file,
    })
}
