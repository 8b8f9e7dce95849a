//! The access log's line format: parsing the operator's `access_log_format` once into
//! pieces, and rendering one line from a finished request's [`Record`]. Pure code: no I/O
//! besides reading the local time zone through `localtime_r`, no sockets, no Python, and
//! no shared state beyond a per-thread cache of the last formatted second. It does not
//! decide when a line is written or where it goes; the writer does.
//!
//! Every value that comes from a record is escaped (`\xHH`, `\"`, `\\` in text lines, JSON
//! escapes in JSON lines), so a line is one line whatever the client sent. Control bytes
//! in the format's own literal text, except TAB, are escaped too.
//!
//! What the engine captures: the request headers, response headers and environ variables
//! named by [`Format::request_headers`], [`Format::response_headers`] and
//! [`Format::environ_keys`]; an empty slice means nothing of that kind is needed.

use super::Handler;
use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use smallvec::SmallVec;

/// Apache's combined format in Gunicorn's atoms: the default.
pub const COMBINED: &str = r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s""#;

/// The atoms a format string may use, as an error message lists them.
const KNOWN: &str = "h l u t r m U q H s B b f a T M D L p X {header}i {header}o {variable}e";

/// How a request's connection ended, as far as the log is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    KeptAlive,
    Closed,
    /// The client went away before the last byte.
    Aborted,
}

/// Everything one line is made of, known once the response has ended.
#[derive(Clone, Debug)]
pub struct Record {
    /// When the request's first byte arrived.
    pub started: SystemTime,
    /// First request byte to last response byte (or to the moment the client was found gone).
    pub duration: Duration,
    /// The client as the application saw it (REMOTE_ADDR), no port; may be empty.
    /// Inline up to an IPv6 address's length: no allocation per request.
    pub remote_addr: SmallVec<[u8; 64]>,
    /// The method, target and captured request headers, as received.
    pub request: RequestText,
    /// `"HTTP/1.1"`, `"HTTP/1.0"`.
    pub version: &'static str,
    /// None: no response head was sent.
    pub status: Option<u16>,
    /// Response body bytes actually sent (head excluded).
    pub body_bytes: u64,
    pub outcome: Outcome,
    /// Who answered (the JSON format's `handler`).
    pub handler: Handler,
    pub pid: u32,
    /// Values of [`Format::response_headers`], same order.
    pub response_headers: Vec<Option<Vec<u8>>>,
    /// Values of [`Format::environ_keys`], same order.
    pub environ: Vec<Option<String>>,
}

/// What a line says of the request: the request head's own bytes (shared with it, not
/// copied) and where in them the method, the target and the values of
/// [`Format::request_headers`] (same order; None = absent) are.
#[derive(Clone, Debug, Default)]
pub struct RequestText {
    bytes: Arc<[u8]>,
    method: Range<usize>,
    target: Range<usize>,
    headers: SmallVec<[Option<Range<usize>>; 4]>,
}

impl RequestText {
    /// Spans into `bytes` (a span past its end reads as empty).
    pub fn new(
        bytes: Arc<[u8]>,
        method: Range<usize>,
        target: Range<usize>,
        headers: impl IntoIterator<Item = Option<Range<usize>>>,
    ) -> RequestText {
        RequestText {
            bytes,
            method,
            target,
            headers: headers.into_iter().collect(),
        }
    }

    /// From separate pieces (copied into one buffer): for requests without a parsed head.
    pub fn from_parts(method: &[u8], target: &[u8], headers: &[Option<&[u8]>]) -> RequestText {
        let mut bytes = Vec::with_capacity(method.len() + target.len());
        let mut span = |piece: &[u8]| {
            let start = bytes.len();
            bytes.extend_from_slice(piece);
            start..bytes.len()
        };
        let method = span(method);
        let target = span(target);
        let headers: SmallVec<[Option<Range<usize>>; 4]> =
            headers.iter().map(|h| h.map(&mut span)).collect();
        RequestText {
            bytes: bytes.into(),
            method,
            target,
            headers,
        }
    }

    /// The bytes this keeps alive (the whole request head, when shared with it).
    pub fn retained(&self) -> usize {
        self.bytes.len()
    }

    fn slice(&self, span: &Range<usize>) -> &[u8] {
        self.bytes.get(span.clone()).unwrap_or_default()
    }

    pub fn method(&self) -> &[u8] {
        self.slice(&self.method)
    }

    pub fn target(&self) -> &[u8] {
        self.slice(&self.target)
    }

    /// The value of the format's `i`th request header (None: absent).
    pub fn header(&self, i: usize) -> Option<&[u8]> {
        self.headers.get(i)?.as_ref().map(|span| self.slice(span))
    }
}

/// One atom of a text format; the indexes point into the format's name lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Atom {
    RemoteAddr,
    Ident,
    User(usize),
    Time,
    RequestLine,
    Method,
    Path,
    Query,
    Protocol,
    Status,
    Bytes,
    BytesOrDash,
    Seconds,
    Millis,
    Micros,
    SecondsFraction,
    Pid,
    ConnStatus,
    Request(usize),
    Response(usize),
    Environ(usize),
}

#[derive(Clone, Debug)]
enum Piece {
    /// The format's own text, already made safe.
    Text(Vec<u8>),
    Atom(Atom),
}

#[derive(Clone, Debug)]
enum Layout {
    Text {
        pieces: Vec<Piece>,
        has_conn_status: bool,
    },
    /// Indexes of referer, user-agent and authorization in the request headers.
    Json {
        referer: usize,
        agent: usize,
        auth: usize,
    },
}

/// A parsed `access_log_format`.
#[derive(Clone, Debug)]
pub struct Format {
    layout: Layout,
    request_headers: Vec<String>,
    response_headers: Vec<String>,
    environ_keys: Vec<String>,
}

impl Format {
    /// "json" (any case, surrounding space ignored) gives the JSON format; anything else is
    /// a Gunicorn-style format string. Errors are one line naming the problem and quoting
    /// the offending atom.
    pub fn parse(text: &str) -> Result<Format, String> {
        if text.trim().eq_ignore_ascii_case("json") {
            return Ok(Format::json());
        }
        let mut builder = Builder::default();
        let mut rest = text;
        while let Some(at) = rest.find('%') {
            builder.literal(&rest[..at]);
            let used = builder.percent(&rest[at..])?;
            rest = &rest[at + used..];
        }
        builder.literal(rest);
        Ok(builder.finish())
    }

    fn json() -> Format {
        Format {
            layout: Layout::Json {
                referer: 0,
                agent: 1,
                auth: 2,
            },
            request_headers: vec![
                "referer".into(),
                "user-agent".into(),
                "authorization".into(),
            ],
            response_headers: Vec::new(),
            environ_keys: Vec::new(),
        }
    }

    /// Lower-case names of the request headers a record must carry, without duplicates:
    /// the `{x}i` atoms, `referer` for `f`, `user-agent` for `a`, `authorization` for `u`.
    /// Empty when the format needs none, so the engine can skip capturing.
    pub fn request_headers(&self) -> &[String] {
        &self.request_headers
    }

    /// Lower-case names for the `{x}o` atoms (none for JSON); empty when none are needed.
    pub fn response_headers(&self) -> &[String] {
        &self.response_headers
    }

    /// The `{x}e` names, case kept (none for JSON); empty when none are needed.
    pub fn environ_keys(&self) -> &[String] {
        &self.environ_keys
    }

    /// Appends exactly one line, ending in `b'\n'`, to `out`.
    pub fn render(&self, record: &Record, out: &mut Vec<u8>) {
        match &self.layout {
            Layout::Text {
                pieces,
                has_conn_status,
            } => {
                for piece in pieces {
                    match piece {
                        Piece::Text(text) => out.extend_from_slice(text),
                        Piece::Atom(atom) => put_atom(*atom, record, out),
                    }
                }
                if record.outcome == Outcome::Aborted && !has_conn_status {
                    out.extend_from_slice(b" aborted");
                }
            }
            Layout::Json {
                referer,
                agent,
                auth,
            } => put_json(record, [*referer, *agent, *auth], out),
        }
        out.push(b'\n');
    }
}

/// A text format while it is parsed.
#[derive(Default)]
struct Builder {
    pieces: Vec<Piece>,
    request: Vec<String>,
    response: Vec<String>,
    environ: Vec<String>,
}

impl Builder {
    /// Adds literal text, escaping control bytes other than TAB so a line stays one line.
    fn literal(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if !matches!(self.pieces.last(), Some(Piece::Text(_))) {
            self.pieces.push(Piece::Text(Vec::new()));
        }
        if let Some(Piece::Text(buf)) = self.pieces.last_mut() {
            for &c in text.as_bytes() {
                if (c < 0x20 && c != b'\t') || c == 0x7f {
                    put_hex(buf, c);
                } else {
                    buf.push(c);
                }
            }
        }
    }

    /// Takes the `%...` at the start of `s`; returns how many bytes it used.
    fn percent(&mut self, s: &str) -> Result<usize, String> {
        let after = &s[1..];
        if after.starts_with('%') {
            self.literal("%");
            return Ok(2);
        }
        if !after.starts_with('(') {
            return Err(stray(s));
        }
        let Some(close) = s.find(')') else {
            return Err(format!(
                "access_log_format: unterminated atom {} (an atom is %(name)s)",
                quote(s)
            ));
        };
        let conversion = s[close + 1..].chars().next();
        if !matches!(conversion, Some('s' | 'd')) {
            let end = close + 1 + conversion.map_or(0, char::len_utf8);
            return Err(format!(
                "access_log_format: atom {} must end in s or d, as in %(h)s",
                quote(&s[..end])
            ));
        }
        let Some(atom) = self.atom(&s[2..close]) else {
            return Err(format!(
                "access_log_format: unknown atom {} (known: {KNOWN})",
                quote(&s[..close + 2])
            ));
        };
        self.pieces.push(Piece::Atom(atom));
        Ok(close + 2)
    }

    /// The atom called `name`, registering the names it needs captured.
    fn atom(&mut self, name: &str) -> Option<Atom> {
        if let Some(inner) = name.strip_prefix('{') {
            let (key, kind) = inner.rsplit_once('}')?;
            if key.is_empty() {
                return None;
            }
            let lower = key.to_ascii_lowercase();
            return match kind {
                "i" => Some(Atom::Request(slot(&mut self.request, lower))),
                "o" => Some(Atom::Response(slot(&mut self.response, lower))),
                "e" => Some(Atom::Environ(slot(&mut self.environ, key.to_owned()))),
                _ => None,
            };
        }
        let request = |b: &mut Builder, header: &str| slot(&mut b.request, header.to_owned());
        Some(match name {
            "h" => Atom::RemoteAddr,
            "l" => Atom::Ident,
            "u" => Atom::User(request(self, "authorization")),
            "t" => Atom::Time,
            "r" => Atom::RequestLine,
            "m" => Atom::Method,
            "U" => Atom::Path,
            "q" => Atom::Query,
            "H" => Atom::Protocol,
            "s" => Atom::Status,
            "B" => Atom::Bytes,
            "b" => Atom::BytesOrDash,
            "f" => Atom::Request(request(self, "referer")),
            "a" => Atom::Request(request(self, "user-agent")),
            "T" => Atom::Seconds,
            "M" => Atom::Millis,
            "D" => Atom::Micros,
            "L" => Atom::SecondsFraction,
            "p" => Atom::Pid,
            "X" => Atom::ConnStatus,
            _ => return None,
        })
    }

    fn finish(self) -> Format {
        let has_conn_status = self
            .pieces
            .iter()
            .any(|p| matches!(p, Piece::Atom(Atom::ConnStatus)));
        Format {
            layout: Layout::Text {
                pieces: self.pieces,
                has_conn_status,
            },
            request_headers: self.request,
            response_headers: self.response,
            environ_keys: self.environ,
        }
    }
}

/// The index of `name` in `names`, adding it if it is not there.
fn slot(names: &mut Vec<String>, name: String) -> usize {
    if let Some(i) = names.iter().position(|n| *n == name) {
        return i;
    }
    names.push(name);
    names.len() - 1
}

/// The error for a `%` that starts neither `%%` nor `%(`; `s` starts with the `%`.
fn stray(s: &str) -> String {
    match s[1..].chars().next() {
        None => "access_log_format: a lone % at the end (write %% for a literal %)".to_owned(),
        Some(c) => format!(
            "access_log_format: stray {} (an atom is %(name)s; write %% for a literal %)",
            quote(&s[..1 + c.len_utf8()])
        ),
    }
}

/// `s` for an error message: at most 40 characters, control characters escaped.
fn quote(s: &str) -> String {
    let mut quoted = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == 40 {
            quoted.push_str("...");
            break;
        }
        if c.is_control() {
            quoted.extend(c.escape_default());
        } else {
            quoted.push(c);
        }
    }
    quoted
}

// ---- text lines ----

fn put_atom(atom: Atom, r: &Record, out: &mut Vec<u8>) {
    match atom {
        Atom::RemoteAddr if r.remote_addr.is_empty() => out.push(b'-'),
        Atom::RemoteAddr => put_escaped(out, &r.remote_addr),
        Atom::Ident => out.push(b'-'),
        Atom::User(i) => with_user(r.request.header(i), |user| put_or_dash(out, user)),
        Atom::Time => put_clf_time(out, r.started),
        Atom::RequestLine => {
            put_escaped(out, r.request.method());
            out.push(b' ');
            put_escaped(out, r.request.target());
            out.push(b' ');
            put_escaped(out, r.version.as_bytes());
        }
        Atom::Method => put_escaped(out, r.request.method()),
        Atom::Path => put_escaped(out, split_target(r.request.target()).0),
        Atom::Query => put_escaped(out, split_target(r.request.target()).1),
        Atom::Protocol => put_escaped(out, r.version.as_bytes()),
        Atom::Status => match r.status {
            Some(status) => put_u64(out, status.into()),
            None => out.push(b'-'),
        },
        Atom::Bytes => put_u64(out, r.body_bytes),
        Atom::BytesOrDash if r.body_bytes == 0 => out.push(b'-'),
        Atom::BytesOrDash => put_u64(out, r.body_bytes),
        Atom::Seconds => put_u64(out, r.duration.as_secs()),
        Atom::Millis => put_u64(out, saturate(r.duration.as_millis())),
        Atom::Micros => put_u64(out, saturate(r.duration.as_micros())),
        Atom::SecondsFraction => put_seconds(out, r.duration),
        Atom::Pid => {
            out.push(b'<');
            put_u64(out, r.pid.into());
            out.push(b'>');
        }
        Atom::ConnStatus => out.push(match r.outcome {
            Outcome::Aborted => b'X',
            Outcome::KeptAlive => b'+',
            Outcome::Closed => b'-',
        }),
        Atom::Request(i) => put_or_dash(out, r.request.header(i)),
        Atom::Response(i) => put_or_dash(out, header(&r.response_headers, i)),
        Atom::Environ(i) => {
            let value = r.environ.get(i).and_then(|v| v.as_deref());
            put_or_dash(out, value.map(str::as_bytes));
        }
    }
}

/// The captured value at `i`; a record shorter than its format reads as absent.
fn header(values: &[Option<Vec<u8>>], i: usize) -> Option<&[u8]> {
    values.get(i)?.as_deref()
}

/// The request-target's path and query, split at the first `?`.
fn split_target(target: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(b'?', target) {
        Some(q) => (&target[..q], &target[q + 1..]),
        None => (target, &[]),
    }
}

fn put_or_dash(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(value) => put_escaped(out, value),
        None => out.push(b'-'),
    }
}

/// Writes `value` with control and non-ASCII bytes as `\xHH`, `"` as `\"`, `\` as `\\`.
fn put_escaped(out: &mut Vec<u8>, value: &[u8]) {
    let mut start = 0;
    for (i, &c) in value.iter().enumerate() {
        if (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\' {
            continue;
        }
        out.extend_from_slice(&value[start..i]);
        match c {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', c]),
            _ => put_hex(out, c),
        }
        start = i + 1;
    }
    out.extend_from_slice(&value[start..]);
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn put_hex(out: &mut Vec<u8>, c: u8) {
    out.extend_from_slice(&[
        b'\\',
        b'x',
        HEX[usize::from(c >> 4)],
        HEX[usize::from(c & 15)],
    ]);
}

// ---- numbers ----

fn saturate(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn put_u64(out: &mut Vec<u8>, n: u64) {
    put_padded(out, n, 1);
}

/// Writes `n` in decimal with at least `width` digits (at most 20).
fn put_padded(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut at = buf.len();
    while n > 0 || at == buf.len() {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let start = at.min(buf.len().saturating_sub(width));
    out.extend_from_slice(&buf[start..]);
}

/// Seconds with six decimals, e.g. `0.001234`.
fn put_seconds(out: &mut Vec<u8>, d: Duration) {
    put_u64(out, d.as_secs());
    out.push(b'.');
    put_padded(out, d.subsec_micros().into(), 6);
}

// ---- times ----

/// A calendar date and time of day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

thread_local! {
    /// The last second this thread formatted for `%(t)s`, and its text.
    static CLF_TIME: RefCell<(i64, Vec<u8>)> = const { RefCell::new((0, Vec::new())) };
}

/// Whole seconds since the epoch (floored) and the nanoseconds past them.
fn unix_time(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(before) => {
            let d = before.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (-secs, 0),
                nanos => (-secs - 1, 1_000_000_000 - nanos),
            }
        }
    }
}

/// `[02/Dec/2026:02:48:15 +0000]`, from this thread's cache when the second is the same.
fn put_clf_time(out: &mut Vec<u8>, started: SystemTime) {
    let (secs, _) = unix_time(started);
    let cached = CLF_TIME.try_with(|cell| {
        let Ok(mut cache) = cell.try_borrow_mut() else {
            return false;
        };
        if cache.1.is_empty() || cache.0 != secs {
            cache.1.clear();
            write_clf_time(&mut cache.1, secs);
            cache.0 = secs;
        }
        out.extend_from_slice(&cache.1);
        true
    });
    if !matches!(cached, Ok(true)) {
        write_clf_time(out, secs);
    }
}

fn write_clf_time(out: &mut Vec<u8>, secs: i64) {
    let (c, offset) = local_time(secs);
    out.push(b'[');
    put_padded(out, c.day.into(), 2);
    out.push(b'/');
    let month = usize::try_from(c.month)
        .ok()
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)));
    out.extend_from_slice(month.map_or(b"???", |m| *m));
    out.push(b'/');
    put_year(out, c.year);
    out.push(b':');
    put_clock(out, c);
    out.push(b' ');
    out.push(if offset < 0 { b'-' } else { b'+' });
    let minutes = offset.unsigned_abs() / 60;
    put_padded(out, minutes / 60, 2);
    put_padded(out, minutes % 60, 2);
    out.push(b']');
}

/// `HH:MM:SS`.
fn put_clock(out: &mut Vec<u8>, c: Civil) {
    put_padded(out, c.hour.into(), 2);
    out.push(b':');
    put_padded(out, c.minute.into(), 2);
    out.push(b':');
    put_padded(out, c.second.into(), 2);
}

fn put_year(out: &mut Vec<u8>, year: i64) {
    if year < 0 {
        out.push(b'-');
    }
    put_padded(out, year.unsigned_abs(), 4);
}

/// The local time of `secs` and its offset from UTC in seconds; UTC if the C library
/// cannot say.
fn local_time(secs: i64) -> (Civil, i64) {
    let Some(tm) = local_tm(secs) else {
        return (civil_utc(secs), 0);
    };
    let field = |v: libc::c_int| u32::try_from(v).unwrap_or(0);
    let civil = Civil {
        year: i64::from(tm.tm_year) + 1900,
        month: field(tm.tm_mon) + 1,
        day: field(tm.tm_mday),
        hour: field(tm.tm_hour),
        minute: field(tm.tm_min),
        second: field(tm.tm_sec),
    };
    #[allow(clippy::useless_conversion)] // c_long is i32 on 32-bit targets
    let offset = i64::from(tm.tm_gmtoff);
    (civil, offset)
}

fn local_tm(secs: i64) -> Option<libc::tm> {
    let t = libc::time_t::try_from(secs).ok()?;
    // SAFETY: `tm` is plain integers and a `tm_zone` pointer, for which all-zero is valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals; the reentrant `localtime_r` writes only
    // to `tm` and keeps no reference to either.
    let filled = unsafe { libc::localtime_r(&t, &mut tm) };
    (!filled.is_null()).then_some(tm)
}

/// The UTC calendar time of `secs` since the epoch.
fn civil_utc(secs: i64) -> Civil {
    let (year, month, day) = crate::http::date::civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400) as u32;
    Civil {
        year,
        month,
        day,
        hour: rem / 3600,
        minute: rem / 60 % 60,
        second: rem % 60,
    }
}

/// RFC 3339 in UTC with milliseconds: `2026-12-02T02:48:15.123Z`.
fn put_rfc3339(out: &mut Vec<u8>, t: SystemTime) {
    let (secs, nanos) = unix_time(t);
    let c = civil_utc(secs);
    put_year(out, c.year);
    out.push(b'-');
    put_padded(out, c.month.into(), 2);
    out.push(b'-');
    put_padded(out, c.day.into(), 2);
    out.push(b'T');
    put_clock(out, c);
    out.push(b'.');
    put_padded(out, (nanos / 1_000_000).into(), 3);
    out.push(b'Z');
}

// ---- JSON lines ----

fn put_json(r: &Record, [referer, agent, auth]: [usize; 3], out: &mut Vec<u8>) {
    let (path, query) = split_target(r.request.target());
    out.extend_from_slice(b"{\"time\":\"");
    put_rfc3339(out, r.started);
    out.extend_from_slice(b"\",\"remote_addr\":");
    put_json_str(out, &r.remote_addr);
    out.extend_from_slice(b",\"user\":");
    with_user(r.request.header(auth), |u| put_json_opt(out, u));
    for (key, value) in [
        ("method", r.request.method()),
        ("path", path),
        ("query", query),
    ] {
        put_key(out, key);
        put_json_str(out, value);
    }
    put_key(out, "protocol");
    put_json_str(out, r.version.as_bytes());
    put_key(out, "status");
    match r.status {
        Some(status) => put_u64(out, status.into()),
        None => out.extend_from_slice(b"null"),
    }
    put_key(out, "bytes");
    put_u64(out, r.body_bytes);
    put_key(out, "duration");
    put_seconds(out, r.duration);
    put_key(out, "referer");
    put_json_opt(out, r.request.header(referer));
    put_key(out, "user_agent");
    put_json_opt(out, r.request.header(agent));
    put_key(out, "pid");
    put_u64(out, r.pid.into());
    put_key(out, "aborted");
    put_bool(out, r.outcome == Outcome::Aborted);
    put_key(out, "keep_alive");
    put_bool(out, r.outcome == Outcome::KeptAlive);
    put_key(out, "handler");
    put_json_str(out, r.handler.name().as_bytes());
    out.push(b'}');
}

/// `,"key":` for a key that needs no escaping.
fn put_key(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

fn put_bool(out: &mut Vec<u8>, value: bool) {
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

fn put_json_opt(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(value) => put_json_str(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string of `value`: valid UTF-8 as it is, other bytes as Latin-1 (`\u00XX`).
fn put_json_str(out: &mut Vec<u8>, value: &[u8]) {
    out.push(b'"');
    for chunk in value.utf8_chunks() {
        put_json_chars(out, chunk.valid());
        for &b in chunk.invalid() {
            put_u00(out, b);
        }
    }
    out.push(b'"');
}

/// Escapes `"`, `\` and control characters (C0, DEL and C1) of valid text.
fn put_json_chars(out: &mut Vec<u8>, text: &str) {
    let mut start = 0;
    for (i, c) in text.char_indices() {
        let escape = match c {
            '"' | '\\' => None,
            '\0'..='\x1f' | '\x7f'..='\u{9f}' => u8::try_from(c).ok(),
            _ => continue,
        };
        out.extend_from_slice(&text.as_bytes()[start..i]);
        match escape {
            Some(code) => put_u00(out, code),
            None => out.extend_from_slice(&[b'\\', c as u8]),
        }
        start = i + c.len_utf8();
    }
    out.extend_from_slice(&text.as_bytes()[start..]);
}

fn put_u00(out: &mut Vec<u8>, b: u8) {
    out.extend_from_slice(b"\\u00");
    out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
}

// ---- Basic credentials ----

/// The user name of an `Authorization: Basic ...` value (before the first ':'), if it is
/// one and decodes (base64, standard alphabet, padding optional); None otherwise.
pub fn basic_auth_user(value: &[u8]) -> Option<Vec<u8>> {
    let mut user = Vec::new();
    basic_user_bytes(value, |b| user.push(b)).then_some(user)
}

/// Calls `f` with the non-empty Basic user of an authorization value, if there is one.
/// Decodes on the stack; only a user name over 256 bytes takes an allocation.
fn with_user<R>(value: Option<&[u8]>, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
    let Some(value) = value else {
        return f(None);
    };
    let mut buf = [0u8; 256];
    let mut len = 0;
    let mut long = false;
    let ok = basic_user_bytes(value, |b| match buf.get_mut(len) {
        Some(slot) => {
            *slot = b;
            len += 1;
        }
        None => long = true,
    });
    if !ok || len == 0 {
        return f(None);
    }
    if long {
        return f(basic_auth_user(value).as_deref());
    }
    f(buf.get(..len))
}

/// Passes each byte of the user name (before the first ':') to `push`; returns whether
/// `value` was Basic credentials that decode and hold a ':'.
fn basic_user_bytes(value: &[u8], mut push: impl FnMut(u8)) -> bool {
    let Some(token) = basic_token(value) else {
        return false;
    };
    let mut colon = false;
    let decoded = decode_base64(token, |b| match (colon, b) {
        (true, _) => {}
        (false, b':') => colon = true,
        (false, _) => push(b),
    });
    decoded && colon
}

/// The credentials after `Basic` (any case) and its spaces.
fn basic_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.trim_ascii().split_at_checked(5)?;
    let spaced = matches!(rest.first(), Some(b' ' | b'\t'));
    (scheme.eq_ignore_ascii_case(b"basic") && spaced).then(|| rest.trim_ascii_start())
}

/// Decodes standard base64, padding optional, passing each byte to `push`; false if
/// `input` is not base64 (bytes already pushed are then meaningless).
fn decode_base64(input: &[u8], mut push: impl FnMut(u8)) -> bool {
    let data = input
        .strip_suffix(b"==")
        .or_else(|| input.strip_suffix(b"="))
        .unwrap_or(input);
    let padded = data.len() != input.len();
    if data.len() % 4 == 1 || (padded && input.len() % 4 != 0) {
        return false;
    }
    let mut acc = 0u32;
    let mut bits = 0u32;
    for &c in data {
        let Some(sextet) = sextet(c) else {
            return false;
        };
        acc = (acc << 6) | u32::from(sextet);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    true
}

fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KNOWN_SECS: u64 = 1_796_179_695; // 2026-12-02T02:48:15Z

    const EVERY_ATOM: &str = "%(h)s %(l)s %(u)s %(t)s %(r)s %(m)s %(U)s %(q)s %(H)s %(s)s \
        %(B)s %(b)s %(f)s %(a)s %(T)s %(M)s %(D)s %(L)s %(p)s %(X)s %({X-Req}i)s \
        %({Content-Type}o)s %({SCRIPT_NAME}e)s";

    fn at(secs: i64, millis: u32) -> SystemTime {
        let nanos = millis * 1_000_000;
        match u64::try_from(secs) {
            Ok(s) => UNIX_EPOCH + Duration::new(s, nanos),
            Err(_) => UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, nanos),
        }
    }

    /// A record with known values and the headers and variables `format` asks for, taken
    /// from fixed tables (absent when a name is not in them).
    /// A record's fields as the tests edit them (owned pieces), built into a `Record`.
    #[derive(Clone)]
    struct Draft {
        started: SystemTime,
        duration: Duration,
        remote_addr: String,
        method: Vec<u8>,
        target: Vec<u8>,
        version: &'static str,
        status: Option<u16>,
        body_bytes: u64,
        outcome: Outcome,
        pid: u32,
        request_headers: Vec<Option<Vec<u8>>>,
        response_headers: Vec<Option<Vec<u8>>>,
        environ: Vec<Option<String>>,
    }

    impl Draft {
        fn build(&self) -> Record {
            let headers: Vec<Option<&[u8]>> =
                self.request_headers.iter().map(|h| h.as_deref()).collect();
            Record {
                started: self.started,
                duration: self.duration,
                remote_addr: self.remote_addr.as_bytes().into(),
                request: RequestText::from_parts(&self.method, &self.target, &headers),
                version: self.version,
                status: self.status,
                body_bytes: self.body_bytes,
                outcome: self.outcome,
                handler: Handler::Application,
                pid: self.pid,
                response_headers: self.response_headers.clone(),
                environ: self.environ.clone(),
            }
        }
    }

    fn record(format: &Format) -> Draft {
        let request = [
            ("referer", &b"https://example.com/from"[..]),
            ("user-agent", b"curl/8.5"),
            ("authorization", b"Basic YWxpY2U6c2VjcmV0"),
            ("x-req", b"abc"),
        ];
        let response = [("content-type", &b"text/plain"[..])];
        let lookup = |table: &[(&str, &[u8])], names: &[String]| -> Vec<Option<Vec<u8>>> {
            let find = |n: &String| {
                table
                    .iter()
                    .find(|e| e.0 == n.as_str())
                    .map(|e| e.1.to_vec())
            };
            names.iter().map(find).collect()
        };
        Draft {
            started: UNIX_EPOCH + Duration::new(KNOWN_SECS, 123_456_789),
            duration: Duration::new(2, 3_456_789),
            remote_addr: "192.0.2.7".into(),
            method: b"GET".to_vec(),
            target: b"/a/b?x=1&y=2".to_vec(),
            version: "HTTP/1.1",
            status: Some(404),
            body_bytes: 1234,
            outcome: Outcome::KeptAlive,
            pid: 4242,
            request_headers: lookup(&request, format.request_headers()),
            response_headers: lookup(&response, format.response_headers()),
            environ: format
                .environ_keys()
                .iter()
                .map(|k| (k == "SCRIPT_NAME").then(|| "/app".to_owned()))
                .collect(),
        }
    }

    fn render(format: &Format, record: &Draft) -> String {
        let mut out = Vec::new();
        format.render(&record.build(), &mut out);
        String::from_utf8(out).expect("test lines are ASCII")
    }

    /// The line for `text` and the known record, changed by `edit`.
    fn line_with(text: &str, edit: impl FnOnce(&mut Draft)) -> String {
        let format = Format::parse(text).expect("test formats parse");
        let mut r = record(&format);
        edit(&mut r);
        render(&format, &r)
    }

    fn line(text: &str) -> String {
        line_with(text, |_| {})
    }

    fn parse_error(text: &str) -> String {
        Format::parse(text).expect_err("should not parse")
    }

    // ---- independent time arithmetic for the expectations ----

    fn is_leap(y: i64) -> bool {
        (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
    }

    fn month_days(y: i64, m: u32) -> i64 {
        match m {
            2 if is_leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    /// Calendar fields of `secs` since the epoch by counting whole years and months.
    fn naive_civil(secs: i64) -> (i64, u32, i64, i64, i64, i64) {
        let mut days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let year_days = |y: i64| if is_leap(y) { 366 } else { 365 };
        let mut year = 1970;
        while days < 0 {
            year -= 1;
            days += year_days(year);
        }
        while days >= year_days(year) {
            days -= year_days(year);
            year += 1;
        }
        let mut month = 1;
        while days >= month_days(year, month) {
            days -= month_days(year, month);
            month += 1;
        }
        (year, month, days + 1, rem / 3600, rem / 60 % 60, rem % 60)
    }

    fn gmtoff(secs: i64) -> i64 {
        let t = secs as libc::time_t;
        // SAFETY: all-zero is a valid `tm`; both pointers are to live locals.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: as above; localtime_r writes only to `tm`.
        assert!(!unsafe { libc::localtime_r(&t, &mut tm) }.is_null());
        tm.tm_gmtoff as i64
    }

    fn expected_clf(secs: i64) -> String {
        let off = gmtoff(secs);
        let (y, mo, d, h, mi, s) = naive_civil(secs + off);
        let names = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let sign = if off < 0 { '-' } else { '+' };
        let (oh, om) = (off.abs() / 3600, off.abs() / 60 % 60);
        let month = names[mo as usize - 1];
        format!("[{d:02}/{month}/{y:04}:{h:02}:{mi:02}:{s:02} {sign}{oh:02}{om:02}]")
    }

    fn clf(secs: i64, millis: u32) -> String {
        line_with("%(t)s", |r| r.started = at(secs, millis))
    }

    fn base64(data: &[u8]) -> String {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        while out.len() % 4 != 0 {
            out.push('=');
        }
        out
    }

    // ---- atoms ----

    #[test]
    fn every_atom_renders_its_value() {
        let cases = [
            ("%(h)s", "192.0.2.7"),
            ("%(l)s", "-"),
            ("%(u)s", "alice"),
            ("%(r)s", "GET /a/b?x=1&y=2 HTTP/1.1"),
            ("%(m)s", "GET"),
            ("%(U)s", "/a/b"),
            ("%(q)s", "x=1&y=2"),
            ("%(H)s", "HTTP/1.1"),
            ("%(s)s", "404"),
            ("%(B)s", "1234"),
            ("%(b)s", "1234"),
            ("%(f)s", "https://example.com/from"),
            ("%(a)s", "curl/8.5"),
            ("%(T)s", "2"),
            ("%(M)s", "2003"),
            ("%(D)s", "2003456"),
            ("%(L)s", "2.003456"),
            ("%(p)s", "<4242>"),
            ("%(X)s", "+"),
            ("%({X-Req}i)s", "abc"),
            ("%({Content-Type}o)s", "text/plain"),
            ("%({SCRIPT_NAME}e)s", "/app"),
            ("%(s)d", "404"),
        ];
        for (text, want) in cases {
            assert_eq!(line(text), format!("{want}\n"), "{text}");
        }
    }

    #[test]
    fn l_is_a_six_decimal_seconds_figure() {
        let text = line_with("%(L)s %(T)s %(M)s %(D)s", |r| {
            r.duration = Duration::from_nanos(1_234_999)
        });
        assert_eq!(text, "0.001234 0 1 1234\n");
    }

    #[test]
    fn combined_line_is_exact() {
        let want = format!(
            "192.0.2.7 - alice {} \"GET /a/b?x=1&y=2 HTTP/1.1\" 404 1234 \
             \"https://example.com/from\" \"curl/8.5\"\n",
            expected_clf(KNOWN_SECS as i64)
        );
        assert_eq!(line(COMBINED), want);
    }

    #[test]
    fn every_atom_format_is_one_known_line() {
        let want = format!(
            "192.0.2.7 - alice {} GET /a/b?x=1&y=2 HTTP/1.1 GET /a/b x=1&y=2 HTTP/1.1 404 \
             1234 1234 https://example.com/from curl/8.5 2 2003 2003456 2.003456 <4242> + abc \
             text/plain /app\n",
            expected_clf(KNOWN_SECS as i64)
        );
        assert_eq!(line(EVERY_ATOM), want);
    }

    #[test]
    fn percent_percent_is_a_literal_percent() {
        assert_eq!(line("100%% %(s)s%%"), "100% 404%\n");
        assert_eq!(line("%%(h)s"), "%(h)s\n");
    }

    #[test]
    fn x_tells_the_three_outcomes() {
        let x = |outcome| line_with("%(X)s", |r| r.outcome = outcome);
        assert_eq!(x(Outcome::KeptAlive), "+\n");
        assert_eq!(x(Outcome::Closed), "-\n");
        assert_eq!(x(Outcome::Aborted), "X\n");
    }

    #[test]
    fn an_aborted_request_says_so_unless_the_format_has_x() {
        let aborted = |r: &mut Draft| r.outcome = Outcome::Aborted;
        assert!(line_with(COMBINED, aborted).ends_with("\"curl/8.5\" aborted\n"));
        assert_eq!(line_with("%(s)s", aborted), "404 aborted\n");
        assert_eq!(line_with("%(s)s %(X)s", aborted), "404 X\n");
        assert_eq!(line_with("%(s)s", |r| r.outcome = Outcome::Closed), "404\n");
    }

    #[test]
    fn absent_values_are_dashes() {
        let text = "%(h)s %(u)s %(s)s %(b)s %(B)s %(f)s %(a)s %({X-Req}i)s %({Content-Type}o)s \
                    %({SCRIPT_NAME}e)s [%(q)s] %(U)s";
        let got = line_with(text, |r| {
            r.remote_addr.clear();
            r.status = None;
            r.body_bytes = 0;
            r.target = b"/plain".to_vec();
            r.request_headers.iter_mut().for_each(|h| *h = None);
            r.response_headers.iter_mut().for_each(|h| *h = None);
            r.environ.iter_mut().for_each(|e| *e = None);
        });
        assert_eq!(got, "- - - - 0 - - - - - [] /plain\n");
    }

    #[test]
    fn a_record_shorter_than_its_format_reads_as_absent() {
        let got = line_with("%(u)s %(f)s %({a}o)s %({b}e)s", |r| {
            r.request_headers.clear();
            r.response_headers.clear();
            r.environ.clear();
        });
        assert_eq!(got, "- - - -\n");
        let json = line_with("json", |r| r.request_headers.clear());
        assert!(json.contains("\"user\":null") && json.contains("\"referer\":null"));
    }

    #[test]
    fn header_names_are_lower_cased_and_environ_names_kept() {
        let f = Format::parse(
            "%({X-Req}i)s %({x-REQ}i)s %({Content-Type}o)s %({SCRIPT_NAME}e)s %({script_name}e)s",
        )
        .unwrap();
        assert_eq!(f.request_headers(), ["x-req"]);
        assert_eq!(f.response_headers(), ["content-type"]);
        assert_eq!(f.environ_keys(), ["SCRIPT_NAME", "script_name"]);
        assert_eq!(render(&f, &record(&f)), "abc abc text/plain /app -\n");
    }

    #[test]
    fn needed_request_headers_come_once_each() {
        let combined = Format::parse(COMBINED).unwrap();
        assert_eq!(
            combined.request_headers(),
            ["authorization", "referer", "user-agent"]
        );
        assert!(combined.response_headers().is_empty() && combined.environ_keys().is_empty());
        let twice = Format::parse("%(f)s %({Referer}i)s %(a)s %({USER-AGENT}i)s").unwrap();
        assert_eq!(twice.request_headers(), ["referer", "user-agent"]);
        assert!(Format::parse("%(h)s %(s)s")
            .unwrap()
            .request_headers()
            .is_empty());
        let json = Format::parse(" JSon \n").unwrap();
        assert_eq!(
            json.request_headers(),
            ["referer", "user-agent", "authorization"]
        );
        assert!(json.response_headers().is_empty() && json.environ_keys().is_empty());
    }

    #[test]
    fn client_bytes_are_escaped() {
        let got = line_with("%(m)s|%(U)s|%(a)s|%(h)s", |r| {
            r.method = b"G\"E\\T\r\n\x00\x1b\x7f".to_vec();
            r.target = b"/\xff\xc3\xa9 x".to_vec();
            r.request_headers[0] = Some(b"ua\"\n".to_vec());
            r.remote_addr = "é\t".into();
        });
        assert_eq!(
            got,
            "G\\\"E\\\\T\\x0d\\x0a\\x00\\x1b\\x7f|/\\xff\\xc3\\xa9 x|ua\\\"\\x0a|\\xc3\\xa9\\x09\n"
        );
    }

    #[test]
    fn control_bytes_in_the_format_text_are_escaped_but_tab() {
        assert_eq!(
            line("a\nb\r\tc%(s)s\x7fé\""),
            "a\\x0ab\\x0d\tc404\\x7fé\"\n"
        );
    }

    // ---- t ----

    #[test]
    fn t_is_local_time_with_its_offset() {
        for secs in [
            KNOWN_SECS as i64,
            0,
            -1,
            951_782_400,
            951_868_799,
            4_102_444_799,
            1_700_000_000,
        ] {
            assert_eq!(clf(secs, 0), format!("{}\n", expected_clf(secs)), "{secs}");
        }
        let now = unix_time(SystemTime::now()).0;
        assert_eq!(clf(now, 0), format!("{}\n", expected_clf(now)));
    }

    #[test]
    fn t_known_timestamp_in_utc() {
        if gmtoff(KNOWN_SECS as i64) == 0 {
            assert_eq!(clf(KNOWN_SECS as i64, 0), "[02/Dec/2026:02:48:15 +0000]\n");
        }
    }

    #[test]
    fn t_cache_follows_the_second() {
        let s = KNOWN_SECS as i64;
        let first = clf(s, 100);
        assert_eq!(clf(s, 900), first);
        assert_eq!(clf(s + 1, 0), format!("{}\n", expected_clf(s + 1)));
        assert_eq!(clf(s, 0), first);
        let other = std::thread::spawn(move || clf(s + 60, 0)).join().unwrap();
        assert_eq!(other, format!("{}\n", expected_clf(s + 60)));
    }

    #[test]
    fn civil_from_days_agrees_with_counting() {
        let mut secs = -3_000_000_000_i64;
        while secs < 9_000_000_000 {
            let c = civil_utc(secs);
            let (y, mo, d, h, mi, s) = naive_civil(secs);
            let mine = (
                c.year,
                c.month,
                i64::from(c.day),
                i64::from(c.hour),
                i64::from(c.minute),
                i64::from(c.second),
            );
            assert_eq!(mine, (y, mo, d, h, mi, s), "{secs}");
            secs += 7_777_777;
        }
    }

    // ---- Basic credentials ----

    #[test]
    fn basic_auth_user_decodes_basic_credentials() {
        assert_eq!(
            basic_auth_user(b"Basic YWxpY2U6c2VjcmV0").as_deref(),
            Some(&b"alice"[..])
        );
        assert_eq!(
            basic_auth_user(b" basic \t YWxpY2U6c2VjcmV0 ").as_deref(),
            Some(&b"alice"[..])
        );
        assert_eq!(
            basic_auth_user(b"BASIC YWxpY2U6eA==").as_deref(),
            Some(&b"alice"[..])
        );
        assert_eq!(
            basic_auth_user(b"Basic YWxpY2U6eA").as_deref(),
            Some(&b"alice"[..])
        );
        let colons = base64(b"a:b:c");
        assert_eq!(
            basic_auth_user(format!("Basic {colons}").as_bytes()).as_deref(),
            Some(&b"a"[..])
        );
        assert_eq!(basic_auth_user(b"Basic OnB3").as_deref(), Some(&b""[..]));
    }

    #[test]
    fn basic_auth_user_rejects_what_is_not_basic_credentials() {
        let not = [
            &b"Basic YWx!Y2U6c2VjcmV0"[..], // not base64
            b"Basic Y",                     // impossible length
            b"Basic YWxpY2U6eA=",           // wrong padding
            b"Basic YWxp=Y2U6",             // padding inside
            b"Basic YWxpY2U=",              // no colon
            b"Basic ",                      // nothing
            b"Bearer YWxpY2U6c2VjcmV0",     // another scheme
            b"BasicYWxpY2U6c2VjcmV0",       // no space after the scheme
            b"Basi",
            b"",
        ];
        for value in not {
            assert_eq!(
                basic_auth_user(value),
                None,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn u_escapes_the_user_and_dashes_what_is_not_one() {
        let with_auth = |value: &[u8]| {
            let value = value.to_vec();
            line_with("%(u)s", move |r| r.request_headers[0] = Some(value))
        };
        assert_eq!(
            with_auth(format!("Basic {}", base64(b"\xffb\"\n:pw")).as_bytes()),
            "\\xffb\\\"\\x0a\n"
        );
        assert_eq!(with_auth(b"Basic OnB3"), "-\n"); // empty user
        assert_eq!(with_auth(b"Bearer abc"), "-\n");
        assert_eq!(with_auth(b"Basic YWxpY2U="), "-\n");
        let long = "u".repeat(300);
        let got =
            with_auth(format!("Basic {}", base64(format!("{long}:pw").as_bytes())).as_bytes());
        assert_eq!(got, format!("{long}\n"));
    }

    // ---- parse errors ----

    #[test]
    fn an_unknown_atom_is_named_with_the_known_ones() {
        assert_eq!(
            parse_error("%(h)s %(Z)s"),
            "access_log_format: unknown atom %(Z)s (known: h l u t r m U q H s B b f a T M D L p X \
             {header}i {header}o {variable}e)"
        );
        assert!(parse_error("%({x}z)s").contains("unknown atom %({x}z)s"));
        assert!(parse_error("%({}i)s").contains("unknown atom %({}i)s"));
        assert!(parse_error("%(hh)d").contains("unknown atom %(hh)d"));
    }

    #[test]
    fn an_unterminated_atom_is_named() {
        let e = parse_error("%(h)s %(u");
        assert!(e.contains("unterminated") && e.contains("%(u"), "{e}");
        let e = parse_error("%(h\n");
        assert!(e.contains("%(h\\n") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn a_stray_percent_is_named() {
        assert!(parse_error("%(h)s %q").contains("stray %q"));
        assert!(parse_error("100%").contains("lone %"));
        assert!(parse_error("%é").contains("stray %é"));
        let e = parse_error("%(h)x");
        assert!(e.contains("%(h)x") && e.contains("s or d"), "{e}");
        assert!(parse_error("%(h)").contains("%(h)"));
    }

    // ---- JSON ----

    #[test]
    fn json_line_is_exact() {
        let want = "{\"time\":\"2026-12-02T02:48:15.123Z\",\"remote_addr\":\"192.0.2.7\",\
            \"user\":\"alice\",\"method\":\"GET\",\"path\":\"/a/b\",\"query\":\"x=1&y=2\",\
            \"protocol\":\"HTTP/1.1\",\"status\":404,\"bytes\":1234,\"duration\":2.003456,\
            \"referer\":\"https://example.com/from\",\"user_agent\":\"curl/8.5\",\"pid\":4242,\
            \"aborted\":false,\"keep_alive\":true,\"handler\":\"application\"}\n";
        assert_eq!(line("json"), want);
    }

    #[test]
    fn json_nulls_and_flags() {
        let got = line_with("JSON", |r| {
            r.status = None;
            r.body_bytes = 0;
            r.outcome = Outcome::Aborted;
            r.request_headers = vec![None, None, None];
            r.target = b"/".to_vec();
        });
        assert!(got.contains(",\"user\":null,"), "{got}");
        assert!(got.contains(",\"path\":\"/\",\"query\":\"\","), "{got}");
        assert!(got.contains(",\"status\":null,\"bytes\":0,"), "{got}");
        assert!(
            got.contains(",\"referer\":null,\"user_agent\":null,"),
            "{got}"
        );
        assert!(
            got.ends_with(",\"aborted\":true,\"keep_alive\":false,\"handler\":\"application\"}\n"),
            "{got}"
        );
        let closed = line_with("json", |r| r.outcome = Outcome::Closed);
        assert!(
            closed.ends_with(
                ",\"aborted\":false,\"keep_alive\":false,\"handler\":\"application\"}\n"
            ),
            "{closed}"
        );
    }

    #[test]
    fn json_time_is_utc_with_milliseconds() {
        let time = |secs, millis| line_with("json", |r| r.started = at(secs, millis));
        assert!(time(0, 7).starts_with("{\"time\":\"1970-01-01T00:00:00.007Z\""));
        assert!(time(-1, 500).starts_with("{\"time\":\"1969-12-31T23:59:59.500Z\""));
        assert!(time(951_782_400, 999).starts_with("{\"time\":\"2000-02-29T00:00:00.999Z\""));
    }

    #[test]
    fn json_strings_are_escaped() {
        let got = line_with("json", |r| {
            r.method = "\"\\\n\x7f\u{85}é\u{2028}".as_bytes().to_vec();
            r.target = b"/\xff\xc3?q=\xe2\x82".to_vec();
        });
        let want =
            "\"method\":\"\\\"\\\\\\u000a\\u007f\\u0085é\u{2028}\",\"path\":\"/\\u00ff\\u00c3\",\
                    \"query\":\"q=\\u00e2\\u0082\"";
        assert!(got.contains(want), "{got}");
    }

    // ---- a minimal JSON reader for the properties ----

    #[derive(Debug, PartialEq)]
    enum Json {
        Null,
        Bool(bool),
        Num(String),
        Str(String),
        Arr(Vec<Json>),
        Obj(Vec<(String, Json)>),
    }

    struct Reader<'a> {
        s: &'a [u8],
        i: usize,
    }

    impl Reader<'_> {
        fn read(text: &[u8]) -> Result<Json, String> {
            let mut r = Reader { s: text, i: 0 };
            let v = r.value()?;
            r.ws();
            if r.i == r.s.len() {
                Ok(v)
            } else {
                Err(format!("trailing bytes at {}", r.i))
            }
        }

        fn peek(&self) -> Option<u8> {
            self.s.get(self.i).copied()
        }

        fn next(&mut self) -> Result<u8, String> {
            let c = self.peek().ok_or("unexpected end")?;
            self.i += 1;
            Ok(c)
        }

        fn eat(&mut self, c: u8) -> Result<(), String> {
            let got = self.next()?;
            if got == c {
                Ok(())
            } else {
                Err(format!("expected {:?} at {}", c as char, self.i))
            }
        }

        fn ws(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                self.i += 1;
            }
        }

        fn value(&mut self) -> Result<Json, String> {
            self.ws();
            match self.peek().ok_or("unexpected end")? {
                b'{' => self.object(),
                b'[' => self.array(),
                b'"' => self.string().map(Json::Str),
                b't' => self.word("true", Json::Bool(true)),
                b'f' => self.word("false", Json::Bool(false)),
                b'n' => self.word("null", Json::Null),
                _ => self.number(),
            }
        }

        fn word(&mut self, w: &str, v: Json) -> Result<Json, String> {
            for &c in w.as_bytes() {
                self.eat(c)?;
            }
            Ok(v)
        }

        fn object(&mut self) -> Result<Json, String> {
            self.eat(b'{')?;
            let mut fields = Vec::new();
            self.ws();
            if self.peek() == Some(b'}') {
                self.i += 1;
                return Ok(Json::Obj(fields));
            }
            loop {
                self.ws();
                let key = self.string()?;
                self.ws();
                self.eat(b':')?;
                fields.push((key, self.value()?));
                self.ws();
                match self.next()? {
                    b',' => continue,
                    b'}' => return Ok(Json::Obj(fields)),
                    c => return Err(format!("unexpected {:?} in object", c as char)),
                }
            }
        }

        fn array(&mut self) -> Result<Json, String> {
            self.eat(b'[')?;
            let mut items = Vec::new();
            self.ws();
            if self.peek() == Some(b']') {
                self.i += 1;
                return Ok(Json::Arr(items));
            }
            loop {
                items.push(self.value()?);
                self.ws();
                match self.next()? {
                    b',' => continue,
                    b']' => return Ok(Json::Arr(items)),
                    c => return Err(format!("unexpected {:?} in array", c as char)),
                }
            }
        }

        fn hex4(&mut self) -> Result<u32, String> {
            let mut n = 0;
            for _ in 0..4 {
                let d = (self.next()? as char)
                    .to_digit(16)
                    .ok_or("bad \\u escape")?;
                n = n * 16 + d;
            }
            Ok(n)
        }

        fn string(&mut self) -> Result<String, String> {
            self.eat(b'"')?;
            let mut buf = Vec::new();
            loop {
                match self.next()? {
                    b'"' => break,
                    b'\\' => {
                        let c = match self.next()? {
                            b'"' => '"',
                            b'\\' => '\\',
                            b'/' => '/',
                            b'b' => '\u{8}',
                            b'f' => '\u{c}',
                            b'n' => '\n',
                            b'r' => '\r',
                            b't' => '\t',
                            b'u' => self.unicode()?,
                            c => return Err(format!("bad escape \\{}", c as char)),
                        };
                        buf.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                    c if c < 0x20 => return Err("raw control byte in string".into()),
                    c => buf.push(c),
                }
            }
            String::from_utf8(buf).map_err(|e| e.to_string())
        }

        fn unicode(&mut self) -> Result<char, String> {
            let hi = self.hex4()?;
            if !(0xd800..0xdc00).contains(&hi) {
                return char::from_u32(hi).ok_or_else(|| "lone low surrogate".into());
            }
            self.eat(b'\\')?;
            self.eat(b'u')?;
            let lo = self.hex4()?;
            if !(0xdc00..0xe000).contains(&lo) {
                return Err("bad low surrogate".into());
            }
            char::from_u32(0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00))
                .ok_or_else(|| "bad pair".into())
        }

        fn number(&mut self) -> Result<Json, String> {
            let start = self.i;
            if self.peek() == Some(b'-') {
                self.i += 1;
            }
            let digits = |r: &mut Reader| {
                let from = r.i;
                while matches!(r.peek(), Some(b'0'..=b'9')) {
                    r.i += 1;
                }
                r.i - from
            };
            let int = digits(self);
            if int == 0 || (int > 1 && self.s[self.i - int] == b'0') {
                return Err(format!("bad number at {start}"));
            }
            if self.peek() == Some(b'.') {
                self.i += 1;
                if digits(self) == 0 {
                    return Err(format!("bad fraction at {start}"));
                }
            }
            if matches!(self.peek(), Some(b'e' | b'E')) {
                self.i += 1;
                if matches!(self.peek(), Some(b'+' | b'-')) {
                    self.i += 1;
                }
                if digits(self) == 0 {
                    return Err(format!("bad exponent at {start}"));
                }
            }
            Ok(Json::Num(
                String::from_utf8_lossy(&self.s[start..self.i]).into_owned(),
            ))
        }
    }

    #[test]
    fn the_json_reader_reads_json() {
        let v = Reader::read(br#" {"a": [1, -2.5e3, true, null], "b\u00e9\ud83d\ude00": "x\n"} "#)
            .unwrap();
        let want = Json::Obj(vec![
            (
                "a".into(),
                Json::Arr(vec![
                    Json::Num("1".into()),
                    Json::Num("-2.5e3".into()),
                    Json::Bool(true),
                    Json::Null,
                ]),
            ),
            ("b\u{e9}\u{1f600}".into(), Json::Str("x\n".into())),
        ]);
        assert_eq!(v, want);
        for bad in [
            &b"{\"a\":01}"[..],
            b"\"\n\"",
            b"{\"a\" 1}",
            b"[1,]",
            b"\"\xff\"",
            b"1 2",
        ] {
            assert!(
                Reader::read(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    // ---- properties ----

    const JSON_KEYS: [&str; 16] = [
        "time",
        "remote_addr",
        "user",
        "method",
        "path",
        "query",
        "protocol",
        "status",
        "bytes",
        "duration",
        "referer",
        "user_agent",
        "pid",
        "aborted",
        "keep_alive",
        "handler",
    ];

    /// What a JSON string of `bytes` must read back as: UTF-8 kept, other bytes Latin-1.
    fn latin1_fallback(mut bytes: &[u8]) -> String {
        let mut s = String::new();
        loop {
            match std::str::from_utf8(bytes) {
                Ok(valid) => return s + valid,
                Err(e) => {
                    let (valid, rest) = bytes.split_at(e.valid_up_to());
                    s.push_str(std::str::from_utf8(valid).unwrap());
                    let bad = e.error_len().unwrap_or(rest.len());
                    s.extend(rest[..bad].iter().map(|&b| char::from(b)));
                    bytes = &rest[bad..];
                }
            }
        }
    }

    /// A record's values, free of any format.
    #[derive(Clone, Debug)]
    struct Seed {
        secs: i64,
        millis: u32,
        duration: Duration,
        remote_addr: String,
        method: Vec<u8>,
        target: Vec<u8>,
        status: Option<u16>,
        body_bytes: u64,
        outcome: Outcome,
        pid: u32,
        pool: Vec<Option<Vec<u8>>>,
        environ: Vec<Option<String>>,
    }

    impl Seed {
        /// A record for `format`, its captured values taken in turn from the pools.
        fn record(&self, format: &Format) -> Record {
            self.draft(format).build()
        }

        fn draft(&self, format: &Format) -> Draft {
            let take = |n: usize, pool: &[Option<Vec<u8>>]| {
                (0..n).map(|i| pool[i % pool.len()].clone()).collect()
            };
            let environ = (0..format.environ_keys().len())
                .map(|i| self.environ[i % self.environ.len()].clone())
                .collect();
            Draft {
                started: at(self.secs, self.millis),
                duration: self.duration,
                remote_addr: self.remote_addr.clone(),
                method: self.method.clone(),
                target: self.target.clone(),
                version: "HTTP/1.1",
                status: self.status,
                body_bytes: self.body_bytes,
                outcome: self.outcome,
                pid: self.pid,
                request_headers: take(format.request_headers().len(), &self.pool),
                response_headers: take(format.response_headers().len(), &self.pool[1..]),
                environ,
            }
        }
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..24)
    }

    /// Arbitrary bytes, or Basic credentials whose user is arbitrary bytes.
    fn header_value() -> impl Strategy<Value = Option<Vec<u8>>> {
        let credentials = (bytes(), bytes()).prop_map(|(user, pw)| {
            let mut plain: Vec<u8> = user.into_iter().filter(|&b| b != b':').collect();
            plain.push(b':');
            plain.extend(pw);
            format!("Basic {}", base64(&plain)).into_bytes()
        });
        prop::option::of(prop_oneof![bytes(), credentials])
    }

    prop_compose! {
        fn seed()(
            secs in -2_000_000_000i64..5_000_000_000,
            millis in 0u32..1000,
            duration in any::<u64>().prop_map(Duration::from_nanos),
            remote_addr in any::<String>(),
            method in bytes(),
            target in bytes(),
            status in any::<Option<u16>>(),
            body_bytes in any::<u64>(),
            outcome in prop_oneof![Just(Outcome::KeptAlive), Just(Outcome::Closed), Just(Outcome::Aborted)],
            pid in any::<u32>(),
            pool in prop::collection::vec(header_value(), 4),
            environ in prop::collection::vec(any::<Option<String>>(), 3),
        ) -> Seed {
            Seed { secs, millis, duration, remote_addr, method, target, status, body_bytes, outcome, pid, pool, environ }
        }
    }

    /// One line: a single `\n`, at the end, and no other control byte (but TAB, if the
    /// format's own text may hold one).
    fn assert_one_line(line: &[u8], tab: bool) {
        assert_eq!(
            line.last(),
            Some(&b'\n'),
            "{:?}",
            String::from_utf8_lossy(line)
        );
        let body = &line[..line.len() - 1];
        assert!(
            body.iter()
                .all(|&b| (b >= 0x20 && b != 0x7f) || (tab && b == b'\t')),
            "control byte in {:?}",
            String::from_utf8_lossy(line)
        );
    }

    fn check_json(seed: &Seed, line: &[u8]) {
        let Ok(Json::Obj(fields)) = Reader::read(line) else {
            panic!("not a JSON object: {:?}", String::from_utf8_lossy(line));
        };
        let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, JSON_KEYS);
        let get = |key: &str| &fields.iter().find(|(k, _)| k == key).unwrap().1;
        let split = seed.target.iter().position(|&b| b == b'?');
        let (path, query) = match split {
            Some(q) => (&seed.target[..q], &seed.target[q + 1..]),
            None => (&seed.target[..], &b""[..]),
        };
        assert_eq!(get("remote_addr"), &Json::Str(seed.remote_addr.clone()));
        assert_eq!(get("method"), &Json::Str(latin1_fallback(&seed.method)));
        assert_eq!(get("path"), &Json::Str(latin1_fallback(path)));
        assert_eq!(get("query"), &Json::Str(latin1_fallback(query)));
        let auth = seed.pool[2]
            .as_deref()
            .and_then(basic_auth_user)
            .filter(|u| !u.is_empty());
        assert_eq!(
            get("user"),
            &auth.map_or(Json::Null, |u| Json::Str(latin1_fallback(&u)))
        );
        let status = seed.status.map_or(Json::Null, |s| Json::Num(s.to_string()));
        assert_eq!(get("status"), &status);
        assert_eq!(get("bytes"), &Json::Num(seed.body_bytes.to_string()));
        assert_eq!(get("pid"), &Json::Num(seed.pid.to_string()));
        let d = seed.duration;
        assert_eq!(
            get("duration"),
            &Json::Num(format!("{}.{:06}", d.as_secs(), d.subsec_micros()))
        );
        assert_eq!(
            get("aborted"),
            &Json::Bool(seed.outcome == Outcome::Aborted)
        );
        assert_eq!(
            get("keep_alive"),
            &Json::Bool(seed.outcome == Outcome::KeptAlive)
        );
        let header = |i: usize| {
            seed.pool[i]
                .as_deref()
                .map_or(Json::Null, |v| Json::Str(latin1_fallback(v)))
        };
        assert_eq!(get("referer"), &header(0));
        assert_eq!(get("user_agent"), &header(1));
    }

    proptest! {
        #[test]
        fn text_lines_are_one_line(seed in seed()) {
            for text in [COMBINED, EVERY_ATOM] {
                let format = Format::parse(text).unwrap();
                let mut out = b"previous\n".to_vec();
                format.render(&seed.record(&format), &mut out);
                prop_assert!(out.starts_with(b"previous\n"));
                assert_one_line(&out[9..], false);
            }
        }

        #[test]
        fn json_lines_are_one_line_and_read_back(seed in seed()) {
            let format = Format::parse("json").unwrap();
            let mut out = Vec::new();
            format.render(&seed.record(&format), &mut out);
            assert_one_line(&out, false);
            check_json(&seed, &out);
        }

        #[test]
        fn basic_credentials_give_back_their_user(user in bytes(), pw in bytes()) {
            let user: Vec<u8> = user.into_iter().filter(|&b| b != b':').collect();
            let mut plain = user.clone();
            plain.push(b':');
            plain.extend(pw);
            let encoded = base64(&plain);
            prop_assert_eq!(basic_auth_user(format!("Basic {encoded}").as_bytes()), Some(user.clone()));
            let unpadded = encoded.trim_end_matches('=');
            prop_assert_eq!(basic_auth_user(format!("basic {unpadded}").as_bytes()), Some(user));
        }

        #[test]
        fn basic_auth_user_never_panics(value in prop::collection::vec(any::<u8>(), 0..40)) {
            let _ = basic_auth_user(&value);
            let mut prefixed = b"Basic ".to_vec();
            prefixed.extend(value);
            let _ = basic_auth_user(&prefixed);
        }

        #[test]
        fn any_format_string_parses_or_errs_in_one_line(text in any::<String>()) {
            match Format::parse(&text) {
                Ok(_) => {}
                Err(e) => prop_assert!(!e.contains('\n') && e.starts_with("access_log_format: ")),
            }
        }

        #[test]
        fn formats_made_of_atom_bits_parse_and_render_one_line(
            text in "([%(){}sdiohlutrmUqHBbfaTMDLpXe\\-]|[\\n\\r\\t\\x00\\x7f]|[ -~]|\\PC){0,24}",
            seed in seed(),
        ) {
            match Format::parse(&text) {
                Ok(format) => {
                    let mut out = Vec::new();
                    format.render(&seed.record(&format), &mut out);
                    assert_one_line(&out, true);
                }
                Err(e) => prop_assert!(!e.contains('\n') && e.starts_with("access_log_format: ")),
            }
        }
    }
}
