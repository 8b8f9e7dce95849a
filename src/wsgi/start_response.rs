//! `start_response` and the `write` callable it returns, as one native object per
//! request, plus the response state they share with the app_iter driver: status and
//! headers (validated and serialized once), the framing decided when the head goes out,
//! Content-Length accounting, and sending through the `Responder` with the GIL released.

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use pyo3::exceptions::{PyAssertionError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use smallvec::SmallVec;

use super::log::Loggers;
use super::pool::past_request_limit;
use crate::http::encoder::{BodyEncoder, Ending};
use crate::http::request::{is_tchar, Version};
use crate::http::response::{
    status_code, write_head, BodyMode, Framing, FramingInput, ServerHeader, CHUNK_END, LAST_CHUNK,
};
use crate::server::responder::{Delivery, Part};
use crate::server::{ClientGone, ConnInfo, FileSegment, LogLevel, Responder};

pyo3::create_exception!(
    _tapster,
    ClientDisconnected,
    pyo3::exceptions::PyException,
    "The client closed the connection before the response was delivered."
);

/// Header names a WSGI application must not set (PEP 3333 "hop-by-hop" headers).
/// `trailers` is Waitress's historical spelling; `trailer` is the real field name.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
];

/// Body pieces up to this size are copied next to the head instead of referenced, so a
/// small response leaves in one contiguous write.
const COALESCE_LIMIT: usize = 16 * 1024;

/// What the server needs from its configuration to produce responses.
pub struct ResponseSettings {
    pub ident: Option<String>,
    pub expose_tracebacks: bool,
}

/// The facts about the request that shape its response.
#[derive(Clone, Copy)]
pub struct RequestFacts {
    pub version: Version,
    pub head_request: bool,
    pub client_keep_alive: bool,
}

/// Where a response's head is.
#[derive(Clone, Copy)]
enum Head {
    /// `start_response` has not been called.
    NotStarted,
    /// Status and headers are set (the status is the first `status_len` bytes of
    /// `text`); nothing has been sent, so `start_response` with `exc_info` may still
    /// replace them.
    Set { status_len: usize },
    /// The head went out with this framing; nothing about it can change. `body`
    /// frames what follows.
    Sent { framing: Framing, body: BodyEncoder },
}

/// The state of one response, shared by `start_response`, `write` and the driver.
pub struct ResponseState {
    pub responder: Arc<Responder>,
    pub conn: Arc<ConnInfo>,
    pub facts: RequestFacts,
    settings: Arc<ResponseSettings>,
    loggers: Arc<Loggers>,
    head: Head,
    code: u16,
    /// The status line text (latin-1, e.g. `200 OK`) followed by the application's
    /// headers as `Name: value\r\n` lines without Content-Length; one buffer for both.
    text: Vec<u8>,
    /// The application's Content-Length (or one the server worked out for it).
    content_length: Option<u64>,
    app_sent_date: bool,
    app_sent_server: bool,
    warned_excess: bool,
    warned_suppressed: bool,
}

impl ResponseState {
    pub fn new(
        responder: Arc<Responder>,
        conn: Arc<ConnInfo>,
        facts: RequestFacts,
        settings: Arc<ResponseSettings>,
        loggers: Arc<Loggers>,
    ) -> ResponseState {
        ResponseState {
            responder,
            conn,
            facts,
            settings,
            loggers,
            head: Head::NotStarted,
            code: 0,
            text: Vec::new(),
            content_length: None,
            app_sent_date: false,
            app_sent_server: false,
            warned_excess: false,
            warned_suppressed: false,
        }
    }

    pub fn started(&self) -> bool {
        !matches!(self.head, Head::NotStarted)
    }

    pub fn head_sent(&self) -> bool {
        matches!(self.head, Head::Sent { .. })
    }

    /// The framing of the body, once the head is out.
    fn body(&mut self) -> Option<&mut BodyEncoder> {
        match &mut self.head {
            Head::Sent { body, .. } => Some(body),
            Head::NotStarted | Head::Set { .. } => None,
        }
    }

    /// The body is a file of `size` bytes from here: that is its Content-Length,
    /// unless the application declared a smaller one (honoured; a larger one is
    /// corrected). Returns the length to send.
    pub fn length_for_file(&mut self, size: u64) -> u64 {
        let length = match self.content_length {
            Some(declared) if declared < size => declared,
            _ => size,
        };
        self.content_length = Some(length);
        length
    }

    /// The whole body is known to be `total` bytes: the Content-Length, if the
    /// application set none and the head is still to go out.
    pub fn body_known(&mut self, total: u64) {
        if !self.head_sent() && self.content_length.is_none() {
            self.content_length = Some(total);
        }
    }

    /// Implements `start_response(status, headers, exc_info=None)`.
    fn start(
        &mut self,
        py: Python<'_>,
        status: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
        exc_info: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.check_restart(exc_info)?;
        let mut text = Vec::with_capacity(256);
        let code = push_status(&mut text, status)?;
        let status_len = text.len();
        let found = push_headers(py, &mut text, headers)?;
        self.head = Head::Set { status_len };
        self.code = code;
        self.text = text;
        self.content_length = found.content_length;
        self.app_sent_date = found.date;
        self.app_sent_server = found.server;
        Ok(())
    }

    /// A second call needs `exc_info`; once the head is out, it re-raises the error.
    fn check_restart(&self, exc_info: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        match exc_info.filter(|e| e.is_truthy().unwrap_or(true)) {
            Some(info) if self.head_sent() => {
                let value = info.get_item(1)?;
                let traceback = info.get_item(2)?;
                Err(PyErr::from_value(
                    value.call_method1("with_traceback", (traceback,))?,
                ))
            }
            None if self.started() => Err(PyAssertionError::new_err(
                "start_response called a second time without providing exc_info.",
            )),
            _ => Ok(()),
        }
    }

    /// Writes the head into `out`; the framing is fixed from here on.
    fn commit_head(&mut self, out: &mut Vec<u8>) -> PyResult<()> {
        let status_len = match self.head {
            Head::Set { status_len } => status_len,
            Head::NotStarted => {
                return Err(PyRuntimeError::new_err(
                    "start_response was not called before body written",
                ))
            }
            Head::Sent { .. } => return Ok(()),
        };
        let framing = Framing::decide(FramingInput {
            version: self.facts.version,
            head_request: self.facts.head_request,
            client_keep_alive: self.facts.client_keep_alive
                && !self.conn.server_closing()
                && !past_request_limit(),
            status: self.code,
            content_length: self.content_length,
        });
        let head_start = out.len();
        let ident = self.settings.ident.as_deref().map(str::as_bytes);
        let server = match (ident, self.app_sent_server) {
            (None, _) => ServerHeader::None,
            (Some(ident), true) => ServerHeader::Via(ident),
            (Some(ident), false) => ServerHeader::Server(ident),
        };
        write_head(
            out,
            self.facts.version,
            &self.text[..status_len],
            &self.text[status_len..],
            self.app_sent_date,
            server,
            &framing,
        );
        note_head(&self.responder, self.code, &out[head_start..]);
        self.head = Head::Sent {
            framing,
            body: BodyEncoder::new(framing.body),
        };
        Ok(())
    }

    /// Sends body pieces (the head first, if it has not gone out yet), framed as the
    /// head announced. Errors: a Python exception (no start_response) or the client
    /// being gone.
    pub fn send(&mut self, py: Python<'_>, pieces: &[Bound<'_, PyBytes>]) -> Result<(), SendError> {
        // The piece that carries the head goes straight out (most responses are one
        // piece); later pieces of a stream are queued for the connection task, which
        // sends many of them per system call.
        let delivery = if self.head_sent() {
            Delivery::Queued
        } else {
            Delivery::Direct
        };
        self.send_as(py, pieces, delivery)
    }

    fn send_as(
        &mut self,
        py: Python<'_>,
        pieces: &[Bound<'_, PyBytes>],
        delivery: Delivery,
    ) -> Result<(), SendError> {
        let mut out = Outgoing::take();
        let result = self.frame(py, pieces, &mut out);
        let result = result.and_then(|()| out.transmit(py, &self.responder, delivery));
        out.give_back();
        result
    }

    fn frame(
        &mut self,
        py: Python<'_>,
        pieces: &[Bound<'_, PyBytes>],
        out: &mut Outgoing,
    ) -> Result<(), SendError> {
        if !self.head_sent() {
            self.commit_head(&mut out.buf).map_err(SendError::Python)?;
            out.mark();
        }
        let Some(body) = self.body() else {
            return Ok(());
        };
        let mut excess = false;
        let mut suppressed = false;
        for piece in pieces {
            let framed = body.frame(piece.as_bytes().len() as u64);
            if let Some(header) = framed.header {
                out.small(header.as_bytes());
            }
            if framed.take > 0 {
                out.body(piece, framed.take as usize);
            }
            if framed.chunk_end {
                out.small(CHUNK_END);
            }
            excess |= framed.excess > 0;
            suppressed |= framed.suppressed > 0;
        }
        let mode = body.mode();
        if excess && !self.warned_excess {
            self.warned_excess = true;
            if let BodyMode::Length(n) = mode {
                self.loggers.log(
                    py,
                    LogLevel::Warning,
                    &format!("application-written content exceeded the number of bytes specified by Content-Length header ({n})"),
                );
            }
        }
        if suppressed && !self.facts.head_request && !self.warned_suppressed {
            self.warned_suppressed = true;
            self.loggers.log(
                py,
                LogLevel::Warning,
                "application-written content was ignored due to HTTP response that may not contain a message-body",
            );
        }
        Ok(())
    }

    /// Sends `len` bytes of `file` from `offset` with `sendfile(2)`, by the connection
    /// task (the head first, if it has not gone out yet: queued too, so that it leaves
    /// with `MSG_MORE` in the segment of the file's first bytes). The length is capped
    /// at what the framing still allows.
    pub fn send_file(
        &mut self,
        py: Python<'_>,
        file: File,
        offset: u64,
        len: u64,
    ) -> Result<(), SendError> {
        if !self.head_sent() {
            // Queued only when file bytes will follow it (not for HEAD or an empty
            // file): otherwise a direct write costs the connection task no wake-up.
            let delivery = if len > 0 && !self.facts.head_request {
                Delivery::Queued
            } else {
                Delivery::Direct
            };
            self.send_as(py, &[], delivery)?;
        }
        // Capped at what the framing still allows; a file larger than the declared
        // Content-Length is normal (an application's smaller length is honoured).
        let Some(framed) = self.body().map(|body| body.frame(len)) else {
            return Ok(());
        };
        if framed.take == 0 {
            return Ok(());
        }
        let responder = &self.responder;
        if let Some(header) = framed.header {
            py.detach(|| responder.send(&[Part::Borrowed(header.as_bytes())], Delivery::Queued))
                .map_err(|ClientGone| SendError::Gone)?;
        }
        responder
            .send_file(FileSegment {
                file: Arc::new(file),
                offset,
                len: framed.take,
            })
            .map_err(|ClientGone| SendError::Gone)?;
        if framed.chunk_end {
            py.detach(|| responder.send(&[Part::Borrowed(CHUNK_END)], Delivery::Queued))
                .map_err(|ClientGone| SendError::Gone)?;
        }
        Ok(())
    }

    /// Ends the response: sends the head if it is still unsent (with the length of
    /// everything sent, i.e. zero), the last chunk, and tells the connection whether it
    /// may stay open.
    pub fn finish(&mut self, py: Python<'_>) -> Result<(), SendError> {
        if !self.head_sent() {
            self.body_known(0);
            self.send(py, &[])?;
        }
        let (keep_alive, ending) = match &self.head {
            Head::Sent { framing, body } => (framing.keep_alive, body.finish()),
            Head::NotStarted | Head::Set { .. } => return Ok(()),
        };
        let keep_alive = match ending {
            Ending::Short { sent, declared } => {
                self.loggers.log(
                    py,
                    LogLevel::Warning,
                    &format!(
                        "application returned too few bytes ({sent}) for specified Content-Length ({declared}) via app_iter"
                    ),
                );
                false
            }
            Ending::LastChunk => {
                let responder = &self.responder;
                py.detach(|| responder.send(&[Part::Borrowed(LAST_CHUNK)], Delivery::Direct))
                    .map_err(|ClientGone| SendError::Gone)?;
                keep_alive
            }
            Ending::Complete => keep_alive,
        };
        self.responder.finish(keep_alive);
        Ok(())
    }

    /// The response failed after its head went out: close the connection once what is
    /// queued has been written, without a last chunk, so the client sees it truncated.
    pub fn abort(&self) {
        self.responder.finish(false);
    }

    /// For the driver: the head has not gone out, so a fresh error page can replace it.
    pub fn error_page(&self, detail: &str) -> Vec<u8> {
        crate::http::response::error_page(
            self.facts.version,
            500,
            "Internal Server Error",
            detail,
            self.settings.ident.as_deref(),
        )
    }

    pub fn settings(&self) -> &ResponseSettings {
        &self.settings
    }
}

/// What one `send` puts on the wire: small pieces (head, chunk framing, short bodies)
/// copied into one reusable per-thread buffer, large bodies referenced where they are.
struct Outgoing {
    buf: Vec<u8>,
    segments: SmallVec<[Segment; 4]>,
    /// Start of the part of `buf` not yet covered by a segment.
    open: usize,
}

enum Segment {
    Buffered(std::ops::Range<usize>),
    Shared(Bytes),
}

thread_local! {
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Scratch buffers larger than this are not kept between requests.
const SCRATCH_KEEP: usize = 64 * 1024;

impl Outgoing {
    fn take() -> Outgoing {
        let mut buf = SCRATCH.with(|s| s.take());
        buf.clear();
        Outgoing {
            buf,
            segments: SmallVec::new(),
            open: 0,
        }
    }

    fn give_back(mut self) {
        if self.buf.capacity() <= SCRATCH_KEEP {
            self.buf.clear();
            SCRATCH.with(|s| s.set(std::mem::take(&mut self.buf)));
        }
    }

    /// Closes the buffered bytes written since the last segment into a segment.
    fn mark(&mut self) {
        if self.buf.len() > self.open {
            self.segments
                .push(Segment::Buffered(self.open..self.buf.len()));
            self.open = self.buf.len();
        }
    }

    fn small(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The first `len` bytes of a body piece.
    fn body(&mut self, piece: &Bound<'_, PyBytes>, len: usize) {
        let data = &piece.as_bytes()[..len];
        if len <= COALESCE_LIMIT {
            self.small(data);
        } else {
            self.mark();
            self.segments
                .push(Segment::Shared(chunk_bytes(piece).slice(..len)));
        }
    }

    fn transmit(
        &mut self,
        py: Python<'_>,
        responder: &Responder,
        delivery: Delivery,
    ) -> Result<(), SendError> {
        self.mark();
        let parts: SmallVec<[Part<'_>; 8]> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Buffered(range) => Part::Borrowed(&self.buf[range.clone()]),
                Segment::Shared(bytes) => Part::Shared(bytes.clone()),
            })
            .collect();
        if parts.is_empty() {
            return if responder.is_failed() {
                Err(SendError::Gone)
            } else {
                Ok(())
            };
        }
        py.detach(|| responder.send(&parts, delivery))
            .map_err(|ClientGone| SendError::Gone)
    }
}

/// Why sending stopped.
#[derive(Debug)]
pub enum SendError {
    Python(PyErr),
    Gone,
}

impl SendError {
    pub fn into_pyerr(self) -> PyErr {
        match self {
            SendError::Python(e) => e,
            SendError::Gone => ClientDisconnected::new_err("client disconnected"),
        }
    }
}

fn repr(obj: &Bound<'_, PyAny>) -> String {
    obj.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<object>".into())
}

/// Appends the latin-1 bytes of a `str`; characters above U+00FF are an error, as
/// PEP 3333 says header text must be latin-1.
fn push_latin1(out: &mut Vec<u8>, s: &Bound<'_, PyString>) -> PyResult<()> {
    let text = s.to_str()?;
    if text.is_ascii() {
        out.extend_from_slice(text.as_bytes());
        return Ok(());
    }
    for c in text.chars() {
        let code = u32::from(c);
        if code > 0xff {
            let encoded = s.call_method1("encode", ("latin-1",));
            // Raise exactly what str.encode raises (UnicodeEncodeError).
            encoded?;
            return Err(PyValueError::new_err("header text is not latin-1"));
        }
        out.push(code as u8);
    }
    Ok(())
}

/// Tells the responder (for the metrics and the access log) that a head with `status`
/// is going out, with the values of the response headers the log format asks for.
pub fn note_head(responder: &Responder, status: u16, head: &[u8]) {
    responder.note_head(status, head.len());
    let Some(wanted) = responder
        .observer()
        .and_then(|o| o.format())
        .map(|f| f.response_headers())
        .filter(|names| !names.is_empty())
    else {
        return;
    };
    let values = wanted
        .iter()
        .map(|name| header_value(head, name.as_bytes()))
        .collect();
    responder.with_record(|record| record.response_headers = values);
}

/// The value of header `name` in a serialized response head.
fn header_value(head: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(name)
            .then(|| crate::http::request::trim_ows(&line[colon + 1..]).to_vec())
    })
}

/// Appends the status (latin-1) to `text` after checking it; returns its code.
fn push_status(text: &mut Vec<u8>, status: &Bound<'_, PyAny>) -> PyResult<u16> {
    let status_text = status.cast::<PyString>().map_err(|_| {
        PyAssertionError::new_err(format!("status {} is not a string", repr(status)))
    })?;
    push_latin1(text, status_text)?;
    let status_bytes = &text[..];
    if status_bytes.iter().any(|&b| b == b'\r' || b == b'\n') {
        return Err(PyValueError::new_err(
            "carriage return/line feed character present in status",
        ));
    }
    let code = status_code(status_bytes).ok_or_else(|| {
        PyValueError::new_err(format!(
            "invalid status {}: it must start with a three-digit code",
            repr(status)
        ))
    })?;
    if status_bytes
        .iter()
        .any(|&b| b < 0x20 && b != b'\t' || b == 0x7f)
    {
        return Err(PyValueError::new_err("control character present in status"));
    }
    Ok(code)
}

/// What the application's headers said that the server acts on.
#[derive(Default)]
struct HeaderFacts {
    content_length: Option<u64>,
    date: bool,
    server: bool,
}

/// Appends the application's headers to `fields` as `Name: value\r\n` lines (all but
/// Content-Length, which is parsed instead), checking each.
fn push_headers(
    py: Python<'_>,
    fields: &mut Vec<u8>,
    headers: &Bound<'_, PyAny>,
) -> PyResult<HeaderFacts> {
    let mut found = HeaderFacts::default();
    for item in headers.try_iter()? {
        let (name, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item?.extract()?;
        let name = header_text(name, "name")?;
        let value = header_text(value, "value")?;
        // Serialize straight into the block, then check what was written.
        let line_start = fields.len();
        push_latin1(fields, &name)?;
        let name_end = fields.len();
        fields.extend_from_slice(b": ");
        let value_start = fields.len();
        push_latin1(fields, &value)?;
        let (name_bytes, value_bytes) = (&fields[line_start..name_end], &fields[value_start..]);
        check_field(name_bytes, value_bytes, &name)?;
        let is = |n: &str| name_bytes.eq_ignore_ascii_case(n.as_bytes());
        if is("content-length") {
            found.content_length = Some(parse_content_length(py, value_bytes, &value)?);
            fields.truncate(line_start);
            continue;
        }
        found.date |= is("date");
        found.server |= is("server");
        fields.extend_from_slice(b"\r\n");
    }
    Ok(found)
}

/// A header name or value, which must be a `str`.
fn header_text<'py>(item: Bound<'py, PyAny>, what: &str) -> PyResult<Bound<'py, PyString>> {
    item.cast_into::<PyString>().map_err(|e| {
        let shown = repr(e.into_inner().as_any());
        PyAssertionError::new_err(format!("Header {what} {shown} is not a string"))
    })
}

/// The header checks, in Waitress's order: CR/LF in the value, CR/LF in the name,
/// hop-by-hop names; then Tapster's: the name must be a token, the value free of
/// control characters.
fn check_field(name: &[u8], value: &[u8], name_obj: &Bound<'_, PyString>) -> PyResult<()> {
    let crlf = |b: &u8| *b == b'\r' || *b == b'\n';
    if value.iter().any(crlf) {
        return Err(PyValueError::new_err(
            "carriage return/line feed character present in header value",
        ));
    }
    if name.iter().any(crlf) {
        return Err(PyValueError::new_err(
            "carriage return/line feed character present in header name",
        ));
    }
    if HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
    {
        return Err(PyAssertionError::new_err(format!(
            "{} is a hop-by-hop header",
            String::from_utf8_lossy(name)
        )));
    }
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(PyValueError::new_err(format!(
            "invalid header name {}",
            repr(name_obj.as_any())
        )));
    }
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(PyValueError::new_err(format!(
            "control character present in header value for {}",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}

/// A Content-Length set by the application: plain digits are parsed here, anything
/// else goes through `int()`, which is what Waitress accepts (spaces, underscores).
fn parse_content_length(py: Python<'_>, text: &[u8], value: &Bound<'_, PyString>) -> PyResult<u64> {
    let plain =
        (!text.is_empty() && text.len() <= 18 && text.iter().all(u8::is_ascii_digit)).then(|| {
            text.iter()
                .fold(0i128, |n, d| n * 10 + i128::from(d - b'0'))
        });
    let parsed: i128 = match plain {
        Some(n) => n,
        None => py
            .get_type::<pyo3::types::PyInt>()
            .call1((value,))?
            .extract()?,
    };
    u64::try_from(parsed)
        .map_err(|_| PyValueError::new_err(format!("invalid Content-Length {parsed}")))
}

/// A body chunk from the application as a shared buffer that keeps the Python object
/// alive instead of copying it.
pub fn chunk_bytes(chunk: &Bound<'_, PyBytes>) -> Bytes {
    let data = chunk.as_bytes();
    Bytes::from_owner(PyBytesOwner {
        ptr: data.as_ptr(),
        len: data.len(),
        _owner: chunk.clone().unbind(),
    })
}

/// Keeps a Python `bytes` alive while its buffer is queued for the socket.
struct PyBytesOwner {
    ptr: *const u8,
    len: usize,
    _owner: Py<PyBytes>,
}

// SAFETY: a `bytes` object is immutable and its buffer never moves while we hold a
// reference to it, so the pointer stays valid and may be read from any thread; the
// reference itself (`Py`) is `Send`, and dropping it without the GIL is deferred by PyO3.
unsafe impl Send for PyBytesOwner {}
// SAFETY: as above; nothing can mutate the buffer.
unsafe impl Sync for PyBytesOwner {}

impl AsRef<[u8]> for PyBytesOwner {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: see the `Send` impl: the buffer is alive and immutable.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// The native `start_response` callable handed to the application.
#[pyclass(module = "tapster._tapster", name = "StartResponse", freelist = 64)]
pub struct StartResponse {
    pub state: ResponseState,
}

/// What a thread gets that calls in while another one of the same request is inside
/// `start_response` or `write()` (which release the GIL while the client catches up).
const IN_USE: &str = "start_response() or write() of this request is running in another \
                      thread; one thread at a time may produce a response";

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info = None))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        status: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        StartResponse::exclusive(slf)?
            .state
            .start(py, status, headers, exc_info)?;
        slf.getattr("write")
    }

    /// The WSGI `write(data)` callable.
    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let mut this = StartResponse::exclusive(slf)?;
        this.write_chunk(py, data)
    }
}

impl std::ops::Deref for StartResponse {
    type Target = ResponseState;

    fn deref(&self) -> &ResponseState {
        &self.state
    }
}

impl std::ops::DerefMut for StartResponse {
    fn deref_mut(&mut self) -> &mut ResponseState {
        &mut self.state
    }
}

impl StartResponse {
    /// The response state for the calling thread alone; a Python `RuntimeError` (never
    /// a panic) if another thread of the application is using it.
    pub fn exclusive<'py>(slf: &Bound<'py, Self>) -> PyResult<PyRefMut<'py, Self>> {
        slf.try_borrow_mut()
            .map_err(|_| PyRuntimeError::new_err(IN_USE))
    }

    fn write_chunk(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        if !self.state.started() {
            return Err(PyRuntimeError::new_err(
                "start_response was not called before body written",
            ));
        }
        let chunk = data.cast::<PyBytes>().map_err(|_| {
            PyTypeError::new_err(format!(
                "write() argument must be bytes, not {}",
                data.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        self.state
            .send(py, std::slice::from_ref(chunk))
            .map_err(SendError::into_pyerr)?;
        let responder = &self.state.responder;
        if responder.over_watermark() {
            py.detach(|| responder.wait_for_room())
                .map_err(|ClientGone| SendError::Gone.into_pyerr())?;
        }
        Ok(())
    }
}
