//! `start_response` and the `write` callable it returns, as one native object per
//! request, plus the response state they share with the app_iter driver: status and
//! headers (validated and serialized once), the framing decided when the head goes out,
//! Content-Length accounting, and sending through the `Responder` with the GIL released.

use std::sync::Arc;

use bytes::Bytes;
use pyo3::exceptions::{PyAssertionError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use super::log::Loggers;
use crate::http::request::{is_tchar, Version};
use crate::http::response::{
    chunk_header, status_code, write_head, BodyMode, Framing, FramingInput, ServerHeader,
    CHUNK_END, LAST_CHUNK,
};
use crate::server::{ClientGone, ConnInfo, LogLevel, Responder};

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

/// The state of one response, shared by `start_response`, `write` and the driver.
pub struct ResponseState {
    pub responder: Arc<Responder>,
    pub conn: Arc<ConnInfo>,
    pub facts: RequestFacts,
    settings: Arc<ResponseSettings>,
    loggers: Arc<Loggers>,
    /// The status line text, latin-1 encoded (e.g. `200 OK`).
    status: Option<Vec<u8>>,
    code: u16,
    /// The application's headers as `Name: value\r\n` lines, without Content-Length.
    fields: Vec<u8>,
    /// The application's Content-Length (or one the server worked out for it).
    pub content_length: Option<u64>,
    app_sent_date: bool,
    app_sent_server: bool,
    framing: Option<Framing>,
    /// Body bytes sent so far (after any truncation to Content-Length).
    sent: u64,
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
            status: None,
            code: 0,
            fields: Vec::new(),
            content_length: None,
            app_sent_date: false,
            app_sent_server: false,
            framing: None,
            sent: 0,
            warned_excess: false,
            warned_suppressed: false,
        }
    }

    pub fn started(&self) -> bool {
        self.status.is_some()
    }

    pub fn head_sent(&self) -> bool {
        self.framing.is_some()
    }

    pub fn body_mode(&self) -> Option<BodyMode> {
        self.framing.map(|f| f.body)
    }

    /// Implements `start_response(status, headers, exc_info=None)`.
    fn start(
        &mut self,
        py: Python<'_>,
        status: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
        exc_info: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let exc_info = exc_info.filter(|e| e.is_truthy().unwrap_or(true));
        match exc_info {
            Some(info) if self.head_sent() => {
                let value = info.get_item(1)?;
                let traceback = info.get_item(2)?;
                return Err(PyErr::from_value(
                    value.call_method1("with_traceback", (traceback,))?,
                ));
            }
            None if self.status.is_some() => {
                return Err(PyAssertionError::new_err(
                    "start_response called a second time without providing exc_info.",
                ));
            }
            _ => {}
        }
        let status_text = status.cast::<PyString>().map_err(|_| {
            PyAssertionError::new_err(format!("status {} is not a string", repr(status)))
        })?;
        let status_bytes = encode_latin1(py, status_text)?;
        if status_bytes.iter().any(|&b| b == b'\r' || b == b'\n') {
            return Err(PyValueError::new_err(
                "carriage return/line feed character present in status",
            ));
        }
        let code = status_code(&status_bytes).ok_or_else(|| {
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

        let mut fields = Vec::with_capacity(256);
        let mut content_length = None;
        let mut app_sent_date = false;
        let mut app_sent_server = false;
        for item in headers.try_iter()? {
            let item = item?;
            let (name, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item.extract()?;
            let name = name.cast_into::<PyString>().map_err(|e| {
                PyAssertionError::new_err(format!(
                    "Header name {} is not a string",
                    repr(e.into_inner().as_any())
                ))
            })?;
            let value = value.cast_into::<PyString>().map_err(|e| {
                PyAssertionError::new_err(format!(
                    "Header value {} is not a string",
                    repr(e.into_inner().as_any())
                ))
            })?;
            let value_bytes = encode_latin1(py, &value)?;
            if value_bytes.iter().any(|&b| b == b'\r' || b == b'\n') {
                return Err(PyValueError::new_err(
                    "carriage return/line feed character present in header value",
                ));
            }
            let name_bytes = encode_latin1(py, &name)?;
            if name_bytes.iter().any(|&b| b == b'\r' || b == b'\n') {
                return Err(PyValueError::new_err(
                    "carriage return/line feed character present in header name",
                ));
            }
            let lower = String::from_utf8_lossy(&name_bytes).to_ascii_lowercase();
            if HOP_BY_HOP.contains(&lower.as_str()) {
                return Err(PyAssertionError::new_err(format!(
                    "{} is a hop-by-hop header",
                    String::from_utf8_lossy(&name_bytes)
                )));
            }
            if name_bytes.is_empty() || !name_bytes.iter().all(|&b| is_tchar(b)) {
                return Err(PyValueError::new_err(format!(
                    "invalid header name {}",
                    repr(name.as_any())
                )));
            }
            if value_bytes
                .iter()
                .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
            {
                return Err(PyValueError::new_err(format!(
                    "control character present in header value for {}",
                    String::from_utf8_lossy(&name_bytes)
                )));
            }
            match lower.as_str() {
                "content-length" => {
                    let parsed: i128 = py
                        .get_type::<pyo3::types::PyInt>()
                        .call1((&value,))?
                        .extract()?;
                    let n = u64::try_from(parsed).map_err(|_| {
                        PyValueError::new_err(format!("invalid Content-Length {parsed}"))
                    })?;
                    content_length = Some(n);
                    continue;
                }
                "date" => app_sent_date = true,
                "server" => app_sent_server = true,
                _ => {}
            }
            fields.extend_from_slice(&name_bytes);
            fields.extend_from_slice(b": ");
            fields.extend_from_slice(&value_bytes);
            fields.extend_from_slice(b"\r\n");
        }
        self.status = Some(status_bytes);
        self.code = code;
        self.fields = fields;
        self.content_length = content_length;
        self.app_sent_date = app_sent_date;
        self.app_sent_server = app_sent_server;
        Ok(())
    }

    /// Builds the head; the framing is fixed from here on.
    fn commit_head(&mut self, py: Python<'_>) -> PyResult<Vec<u8>> {
        let Some(status) = self.status.as_ref() else {
            return Err(PyRuntimeError::new_err(
                "start_response was not called before body written",
            ));
        };
        let framing = Framing::decide(FramingInput {
            version: self.facts.version,
            head_request: self.facts.head_request,
            client_keep_alive: self.facts.client_keep_alive && !self.conn.server_closing(),
            status: self.code,
            content_length: self.content_length,
        });
        let ident = self.settings.ident.as_deref().map(str::as_bytes);
        let server = match (ident, self.app_sent_server) {
            (None, _) => ServerHeader::None,
            (Some(ident), true) => ServerHeader::Via(ident),
            (Some(ident), false) => ServerHeader::Server(ident),
        };
        let mut head = Vec::with_capacity(self.fields.len() + status.len() + 160);
        write_head(
            &mut head,
            self.facts.version,
            status,
            &self.fields,
            self.app_sent_date,
            server,
            &framing,
        );
        self.framing = Some(framing);
        let _ = py;
        Ok(head)
    }

    /// Sends body pieces, sending the head first if it has not gone out yet.
    /// Errors: a Python exception (no start_response) or the client being gone.
    pub fn send(&mut self, py: Python<'_>, pieces: Vec<Bytes>) -> Result<(), SendError> {
        let mut head = match self.framing {
            None => Some(self.commit_head(py).map_err(SendError::Python)?),
            Some(_) => None,
        };
        let Some(framing) = self.framing else {
            return Ok(());
        };
        let mut parts: Vec<Bytes> = Vec::with_capacity(pieces.len() * 3 + 1);
        for piece in pieces {
            if piece.is_empty() {
                continue;
            }
            match framing.body {
                BodyMode::Suppressed => {
                    if !self.facts.head_request && !self.warned_suppressed {
                        self.warned_suppressed = true;
                        self.loggers.log(
                            py,
                            LogLevel::Warning,
                            "application-written content was ignored due to HTTP response that may not contain a message-body",
                        );
                    }
                    self.sent += piece.len() as u64;
                }
                BodyMode::Length(n) => {
                    let allowed = n.saturating_sub(self.sent);
                    let piece = if (piece.len() as u64) > allowed {
                        if !self.warned_excess {
                            self.warned_excess = true;
                            self.loggers.log(
                                py,
                                LogLevel::Warning,
                                &format!("application-written content exceeded the number of bytes specified by Content-Length header ({n})"),
                            );
                        }
                        piece.slice(..allowed as usize)
                    } else {
                        piece
                    };
                    self.sent += piece.len() as u64;
                    push_part(&mut head, &mut parts, piece);
                }
                BodyMode::Chunked => {
                    let (prefix, len) = chunk_header(piece.len());
                    self.sent += piece.len() as u64;
                    push_part(
                        &mut head,
                        &mut parts,
                        Bytes::copy_from_slice(&prefix[..len]),
                    );
                    push_part(&mut head, &mut parts, piece);
                    push_part(&mut head, &mut parts, Bytes::from_static(CHUNK_END));
                }
                BodyMode::UntilClose => {
                    self.sent += piece.len() as u64;
                    push_part(&mut head, &mut parts, piece);
                }
            }
        }
        if let Some(head) = head {
            parts.insert(0, Bytes::from(head));
        }
        self.transmit(py, parts)
    }

    fn transmit(&self, py: Python<'_>, parts: Vec<Bytes>) -> Result<(), SendError> {
        if parts.is_empty() {
            return if self.responder.is_failed() {
                Err(SendError::Gone)
            } else {
                Ok(())
            };
        }
        let responder = &self.responder;
        py.detach(|| responder.send(&parts))
            .map_err(|ClientGone| SendError::Gone)
    }

    /// Ends the response: sends the head if it is still unsent (with the length of
    /// everything sent, i.e. zero), the last chunk, and tells the connection whether it
    /// may stay open.
    pub fn finish(&mut self, py: Python<'_>, path: &[u8]) -> Result<(), SendError> {
        if self.framing.is_none() {
            if self.content_length.is_none() {
                self.content_length = Some(0);
            }
            self.send(py, Vec::new())?;
        }
        let Some(framing) = self.framing else {
            return Ok(());
        };
        let mut keep_alive = framing.keep_alive;
        match framing.body {
            BodyMode::Length(n) if self.sent < n => {
                self.loggers.log(
                    py,
                    LogLevel::Warning,
                    &format!(
                        "application returned too few bytes ({}) for specified Content-Length ({n}) via app_iter",
                        self.sent
                    ),
                );
                let _ = path;
                keep_alive = false;
            }
            BodyMode::Chunked => {
                self.transmit(py, vec![Bytes::from_static(LAST_CHUNK)])?;
            }
            _ => {}
        }
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

/// Appends a body piece: copied onto the end of the unsent head when small, so a small
/// response is one buffer; referenced otherwise.
fn push_part(head: &mut Option<Vec<u8>>, parts: &mut Vec<Bytes>, piece: Bytes) {
    match head {
        Some(h) if parts.is_empty() && piece.len() <= COALESCE_LIMIT => h.extend_from_slice(&piece),
        _ => parts.push(piece),
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

/// The latin-1 bytes of a `str`; characters above U+00FF are an error, as PEP 3333 says
/// header text must be latin-1.
fn encode_latin1(py: Python<'_>, s: &Bound<'_, PyString>) -> PyResult<Vec<u8>> {
    if let Ok(text) = s.to_cow() {
        if text.is_ascii() {
            return Ok(text.as_bytes().to_vec());
        }
    }
    let encoded = s.call_method1("encode", ("latin-1",))?;
    let _ = py;
    Ok(encoded.cast::<PyBytes>()?.as_bytes().to_vec())
}

/// A body chunk from the application, referenced without copying when large.
pub fn chunk_bytes(chunk: &Bound<'_, PyBytes>) -> Bytes {
    let data = chunk.as_bytes();
    if data.len() <= COALESCE_LIMIT {
        return Bytes::copy_from_slice(data);
    }
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
#[pyclass(module = "tapster._tapster", name = "StartResponse")]
pub struct StartResponse {
    pub state: ResponseState,
}

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
        slf.borrow_mut()
            .state
            .start(py, status, headers, exc_info)?;
        slf.getattr("write")
    }

    /// The WSGI `write(data)` callable.
    fn write(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
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
            .send(py, vec![chunk_bytes(chunk)])
            .map_err(SendError::into_pyerr)?;
        let responder = &self.state.responder;
        if responder.over_watermark() {
            py.detach(|| responder.wait_for_room())
                .map_err(|ClientGone| SendError::Gone.into_pyerr())?;
        }
        Ok(())
    }
}
