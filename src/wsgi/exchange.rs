//! The exchange driver: runs one request through the application and drains its
//! response. It skips a request whose connection is already gone, builds the environ,
//! calls the app, iterates the app_iter (lists without the iterator protocol,
//! `wsgi.file_wrapper` by `sendfile(2)` or by reading its file), sends each chunk
//! through the response state, always calls `close()`, and lets `wsgi.input`'s body go.
//! It is the pool's `Runner`; the pool knows nothing else of it.
//!
//! When more than `outbuf_high_watermark` bytes wait for a slow client, the exchange
//! parks itself with the `Responder` and the worker thread moves on; the connection task
//! resubmits it to the pool once the client has caught up.

use std::fs::File;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use super::environ::EnvironTemplate;
use super::file_wrapper::{FileWrapper, ZeroCopyTypes};
use super::input::Input;
use super::log::Loggers;
use super::pool::{Job, PoolShared, Runner};
use super::start_response::{
    note_head, ClientDisconnected, RequestFacts, ResponseSettings, ResponseState, SendError,
    StartResponse,
};
use crate::http::RequestHead;
use crate::proxy::Decision;
use crate::server::responder::{Delivery, Part};
use crate::server::{Body, ConnInfo, LogLevel, Request, Responder};

/// The body pieces sent in one go.
type Chunks<'py> = smallvec::SmallVec<[Bound<'py, PyBytes>; 4]>;

/// Bytes asked of a file's `read()` at a time when it is sent by the server.
const FILE_READ: usize = 256 * 1024;

/// Everything the workers share: the application and how to present requests to it.
pub struct AppContext {
    pub app: Py<PyAny>,
    pub template: EnvironTemplate,
    pub loggers: Arc<Loggers>,
    pub settings: Arc<ResponseSettings>,
    pub pool: Arc<PoolShared>,
    pub zero_copy: ZeroCopyTypes,
}

/// Where the rest of the body comes from.
enum Source {
    /// A Python iterator (from `iter(app_iter)`).
    Iter(Py<PyAny>),
    /// A list or tuple, walked by index.
    Seq {
        items: Py<PyAny>,
        next: usize,
    },
    /// A file-like object behind `wsgi.file_wrapper`, read in blocks; `remaining` is
    /// the byte count still to send when the size is known.
    File {
        filelike: Py<PyAny>,
        remaining: Option<u64>,
        block: usize,
    },
    /// A regular file sent by the connection task with `sendfile(2)`.
    SendFile {
        file: File,
        offset: u64,
        len: u64,
    },
    Done,
}

/// One request in progress, possibly parked between chunks.
pub struct Exchange {
    start: Py<StartResponse>,
    /// The response's carrier (also in `start`, which an application thread may hold).
    responder: Arc<Responder>,
    head_request: bool,
    /// `wsgi.input`, whose body is let go when the exchange ends, whatever the
    /// application kept of the environ (the body's memory counts against the server's
    /// budget until then).
    input: Option<Py<Input>>,
    app_iter: Option<Py<PyAny>>,
    source: Source,
    /// The request head, for log lines.
    head: RequestHead,
}

impl Exchange {
    /// The response state, or a Python error if an application thread holds it.
    fn state<'py>(&self, py: Python<'py>) -> PyResult<PyRefMut<'py, StartResponse>> {
        StartResponse::exclusive(self.start.bind(py))
    }
}

impl Runner for AppContext {
    fn run(this: &Arc<Self>, py: Python<'_>, request: Request) {
        this.handle_request(py, request);
    }
}

impl AppContext {
    /// Runs a new request.
    pub fn handle_request(self: &Arc<Self>, py: Python<'_>, request: Request) {
        let Request {
            head,
            body,
            conn,
            responder,
        } = request;
        if responder.is_failed() {
            // The connection is gone (reset while the request waited in the queue, or
            // dropped at the end of a shutdown): nobody would get the answer, and the
            // request may not be idempotent.
            let path = self.template.path_for_log(head.target());
            self.loggers.log(
                py,
                LogLevel::Info,
                &format!(
                    "Client disconnected before {path} was started; the application was not called"
                ),
            );
            return;
        }
        let facts = RequestFacts {
            version: head.version,
            head_request: head.is_head(),
            client_keep_alive: head.keep_alive,
        };
        let state = ResponseState::new(
            responder.clone(),
            conn.clone(),
            facts,
            self.settings.clone(),
            self.loggers.clone(),
        );
        let start = match Py::new(py, StartResponse { state }) {
            Ok(s) => s,
            Err(err) => {
                err.print(py);
                responder.fail();
                return;
            }
        };
        let mut exchange = Exchange {
            start,
            responder,
            head_request: facts.head_request,
            input: None,
            app_iter: None,
            source: Source::Done,
            head,
        };
        match self.call_app(py, &mut exchange, body, &conn) {
            Ok(()) => self.drive(py, exchange),
            Err(err) => self.fail(py, exchange, err),
        }
    }

    fn call_app(
        &self,
        py: Python<'_>,
        exchange: &mut Exchange,
        body: Body,
        conn: &Arc<ConnInfo>,
    ) -> PyResult<()> {
        let (decision, logs) = self.template.proxy_decision(&exchange.head, conn);
        for line in &logs {
            self.loggers.log(py, LogLevel::Warning, line);
        }
        let (drop, overrides) = match decision {
            Decision::Build { drop, overrides } => (drop, overrides),
            Decision::Reject(bad) => {
                // What Waitress's proxy middleware answers, without calling the app.
                let body = format!(
                    "Bad Request\r\n\r\nHeader \"{}\" malformed.\r\n\r\n(generated by server)",
                    bad.header
                );
                let headers = PyList::new(py, [("Content-Type", "text/plain; charset=utf-8")])?;
                exchange
                    .start
                    .bind(py)
                    .call1(("400 Bad Request", headers))?;
                let items = PyList::new(py, [PyBytes::new(py, body.as_bytes())])?;
                exchange.source = Source::Seq {
                    items: items.into_any().unbind(),
                    next: 0,
                };
                return Ok(());
            }
        };
        let body_len = body.len();
        let input = Bound::new(py, Input::new(body))?;
        exchange.input = Some(input.clone().unbind());
        let input = input.into_any();
        let environ = self.template.build(
            py,
            &exchange.head,
            body_len,
            conn,
            input,
            drop,
            overrides.as_ref(),
        )?;
        // REMOTE_ADDR now (a request whose application raises is logged with it), and
        // again with the rest once the application has returned (middleware may set them).
        note_environ(&environ, &exchange.responder);
        let result = self
            .app
            .bind(py)
            .call1((&environ, exchange.start.bind(py)))?;
        note_environ(&environ, &exchange.responder);
        exchange.app_iter = Some(result.clone().unbind());
        exchange.source = self.source_for(py, &result, exchange)?;
        Ok(())
    }

    /// Picks how to walk the app_iter, and works out a Content-Length where the whole
    /// body is known up front.
    fn source_for(
        &self,
        py: Python<'_>,
        result: &Bound<'_, PyAny>,
        exchange: &Exchange,
    ) -> PyResult<Source> {
        if let Ok(wrapper) = result.cast::<FileWrapper>() {
            let wrapper = wrapper.try_borrow()?;
            if wrapper.is_seekable(py) {
                return self.file_source(py, &wrapper, exchange);
            }
            return Ok(Source::Iter(result.try_iter()?.into_any().unbind()));
        }
        let items = if let Ok(list) = result.cast::<PyList>() {
            Some(list.as_any().clone())
        } else if let Ok(tuple) = result.cast::<PyTuple>() {
            Some(tuple.as_any().clone())
        } else {
            None
        };
        if let Some(items) = items {
            return Ok(Source::Seq {
                items: items.unbind(),
                next: 0,
            });
        }
        Ok(Source::Iter(result.try_iter()?.into_any().unbind()))
    }

    /// A seekable file: its remaining size becomes the Content-Length (an application's
    /// smaller Content-Length is honoured, a larger one corrected).
    fn file_source(
        &self,
        py: Python<'_>,
        wrapper: &FileWrapper,
        exchange: &Exchange,
    ) -> PyResult<Source> {
        let f = wrapper.filelike.bind(py);
        let pos: u64 = f.call_method0("tell")?.extract()?;
        // The end via tell(): some file-likes' seek() returns None.
        f.call_method1("seek", (0, 2))?;
        let end: u64 = f.call_method0("tell")?.extract()?;
        f.call_method1("seek", (pos,))?;
        let size = end.saturating_sub(pos);
        let length = exchange.state(py)?.length_for_file(size);
        if let Some(file) = self.zero_copy.descriptor(f)? {
            return Ok(Source::SendFile {
                file,
                offset: pos,
                len: length,
            });
        }
        Ok(Source::File {
            filelike: wrapper.filelike.clone_ref(py),
            remaining: Some(length),
            block: wrapper.block_size.max(FILE_READ),
        })
    }

    /// Pulls chunks and sends them until the body ends, the client falls behind (park),
    /// or something fails.
    pub fn drive(self: &Arc<Self>, py: Python<'_>, mut exchange: Exchange) {
        if matches!(exchange.source, Source::SendFile { .. }) {
            return self.send_file(py, exchange);
        }
        loop {
            let step = self.next_chunks(py, &mut exchange);
            let chunks = match step {
                Ok(Some(chunks)) => chunks,
                Ok(None) => break,
                Err(err) => return self.fail(py, exchange, err),
            };
            let sent = exchange.state(py).and_then(|mut start| {
                start.send(py, &chunks).map_err(SendError::into_pyerr)?;
                Ok(start.head_sent())
            });
            let head_sent = match sent {
                Ok(head_sent) => head_sent,
                Err(err) => return self.fail(py, exchange, err),
            };
            let responder = exchange.responder.clone();
            if exchange.head_request && head_sent {
                // A HEAD response has no body: once the head is out, stop iterating.
                exchange.source = Source::Done;
                continue;
            }
            if responder.over_watermark() {
                let ctx = self.clone();
                let resumed = responder.clone();
                responder.on_drain(Box::new(move || {
                    let pool = ctx.pool.clone();
                    pool.submit(Job::Continue {
                        responder: resumed,
                        work: Box::new(move |py| ctx.drive(py, exchange)),
                    });
                }));
                return;
            }
        }
        let finished = exchange
            .state(py)
            .and_then(|mut start| start.finish(py).map_err(SendError::into_pyerr));
        match finished {
            Ok(()) => self.close(py, &mut exchange),
            Err(err) => self.fail(py, exchange, err),
        }
    }

    /// The next chunks to send, `None` at the end of the body. A list or tuple hands
    /// over everything at once (with the Content-Length computed first).
    fn next_chunks<'py>(
        &self,
        py: Python<'py>,
        exchange: &mut Exchange,
    ) -> PyResult<Option<Chunks<'py>>> {
        if exchange.responder.is_failed() {
            return Err(ClientDisconnected::new_err("client disconnected"));
        }
        let chunks = match &mut exchange.source {
            // Handled by `send_file` before any chunk is pulled.
            Source::Done | Source::SendFile { .. } => None,
            Source::Seq { items, next } => {
                let chunks = rest_of_sequence(items.bind(py), *next)?;
                if let Some((_, total)) = &chunks {
                    exchange.state(py)?.body_known(*total);
                }
                chunks.map(|(chunks, _)| chunks)
            }
            Source::Iter(iter) => next_non_empty(iter.bind(py))?,
            Source::File {
                filelike,
                remaining,
                block,
            } if !exchange.head_request => read_block(filelike.bind(py), remaining, *block)?,
            Source::File { .. } => None,
        };
        // A sequence hands over everything at once; the others stop at their end.
        if chunks.is_none() || matches!(exchange.source, Source::Seq { .. }) {
            exchange.source = Source::Done;
        }
        Ok(chunks)
    }

    /// Hands a regular file to the connection task. The worker is free at once; the
    /// file object's `close()` runs (in a pool job, with the GIL) once the last byte is
    /// out or the client has gone.
    fn send_file(self: &Arc<Self>, py: Python<'_>, mut exchange: Exchange) {
        let Source::SendFile { file, offset, len } =
            std::mem::replace(&mut exchange.source, Source::Done)
        else {
            return;
        };
        let sent = exchange.state(py).and_then(|mut start| {
            start
                .send_file(py, file, offset, len)
                .and_then(|()| start.finish(py))
                .map_err(SendError::into_pyerr)
        });
        if let Err(err) = sent {
            return self.fail(py, exchange, err);
        }
        let responder = exchange.responder.clone();
        let ctx = self.clone();
        responder.on_finished(Box::new(move |delivered| {
            let pool = ctx.pool.clone();
            let close = Box::new(move |py: Python<'_>| {
                let mut exchange = exchange;
                if !delivered {
                    let path = ctx.template.path_for_log(exchange.head.target());
                    ctx.loggers.log(
                        py,
                        LogLevel::Info,
                        &format!("Client disconnected while serving {path}"),
                    );
                }
                ctx.close(py, &mut exchange);
            });
            pool.submit(Job::Call(close));
        }));
    }

    /// Something raised (or the client left): log it, answer 500 if the head is still
    /// unsent, otherwise cut the connection; then close the app_iter.
    pub fn fail(&self, py: Python<'_>, mut exchange: Exchange, err: PyErr) {
        let path = self.template.path_for_log(exchange.head.target());
        let responder = exchange.responder.clone();
        if responder.answered_instead() {
            self.loggers.log(
                py,
                LogLevel::Info,
                &format!("{path} returned after request_timeout; its response was dropped"),
            );
        } else if err.is_instance_of::<ClientDisconnected>(py) || responder.is_failed() {
            self.loggers.log(
                py,
                LogLevel::Info,
                &format!("Client disconnected while serving {path}"),
            );
            responder.fail();
        } else {
            self.loggers
                .exception(py, &format!("Exception while serving {path}"), &err);
            match exchange.state(py) {
                Ok(start) if !start.head_sent() => {
                    let detail = if start.settings().expose_tracebacks {
                        format_traceback(py, &err)
                    } else {
                        "The server encountered an unexpected internal server error".to_owned()
                    };
                    let page = start.error_page(&detail);
                    drop(start);
                    let head_len = crate::http::response::head_len(&page);
                    note_head(&responder, 500, &page[..head_len]);
                    let _ =
                        py.detach(|| responder.send(&[Part::Borrowed(&page)], Delivery::Direct));
                    responder.finish(false);
                }
                Ok(start) => start.abort(),
                // Another application thread is inside write(): cut the connection,
                // which also releases that thread.
                Err(_) => responder.fail(),
            }
        }
        self.close(py, &mut exchange);
    }

    /// Calls the app_iter's `close()` (the file's, for a file wrapper), logging errors.
    fn close(&self, py: Python<'_>, exchange: &mut Exchange) {
        exchange.source = Source::Done;
        self.close_app_iter(py, exchange);
        // After the app_iter's close(), which may still read the body (middleware that
        // drains or logs it).
        if let Some(input) = exchange.input.take() {
            if let Ok(mut input) = input.bind(py).try_borrow_mut() {
                input.release();
            }
        }
    }

    fn close_app_iter(&self, py: Python<'_>, exchange: &mut Exchange) {
        let Some(app_iter) = exchange.app_iter.take() else {
            return;
        };
        let app_iter = app_iter.bind(py);
        if app_iter.is_exact_instance_of::<PyList>() || app_iter.is_exact_instance_of::<PyTuple>() {
            // Built-in sequences have no close(); asking would raise an AttributeError.
            return;
        }
        let result = match app_iter.hasattr("close") {
            Ok(true) => app_iter.call_method0("close").map(drop),
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(err) = result {
            let path = self.template.path_for_log(exchange.head.target());
            self.loggers.exception(
                py,
                &format!("Exception while closing the app_iter of {path}"),
                &err,
            );
            match exchange.state(py) {
                Ok(start) if start.head_sent() => {}
                Ok(_) => exchange.responder.finish(false),
                Err(_) => exchange.responder.fail(),
            }
        }
    }
}

/// For the access log: REMOTE_ADDR as the application saw it (after the proxy rules,
/// and any middleware), and the environ values the format asks for.
fn note_environ(environ: &Bound<'_, PyDict>, responder: &Responder) {
    let Some(format) = responder.observer().and_then(|o| o.format()) else {
        return;
    };
    let py = environ.py();
    let text = |key: &Bound<'_, PyString>| -> Option<String> {
        let value = environ.get_item(key).ok()??;
        value.str().ok()?.to_str().ok().map(str::to_owned)
    };
    let remote = environ
        .get_item(pyo3::intern!(py, "REMOTE_ADDR"))
        .ok()
        .flatten();
    let remote = remote.as_ref().and_then(|v| v.cast::<PyString>().ok());
    let remote = remote.and_then(|v| v.to_str().ok());
    let values: Vec<Option<String>> = format
        .environ_keys()
        .iter()
        .map(|k| text(&PyString::new(py, k)))
        .collect();
    responder.with_record(|record| {
        if let Some(remote) = remote {
            record.remote_addr = remote.as_bytes().into();
        }
        record.environ = values;
    });
}

/// Every item of a list or tuple from `next` on, and their total size; `None` when
/// nothing is left.
fn rest_of_sequence<'py>(
    items: &Bound<'py, PyAny>,
    next: usize,
) -> PyResult<Option<(Chunks<'py>, u64)>> {
    let len = items.len()?;
    if next >= len {
        return Ok(None);
    }
    let mut chunks = Chunks::with_capacity(len - next);
    let mut total = 0u64;
    for i in next..len {
        let item = items.get_item(i)?;
        let bytes = as_bytes(&item)?.clone();
        total += bytes.as_bytes().len() as u64;
        chunks.push(bytes);
    }
    Ok(Some((chunks, total)))
}

/// The iterator's next non-empty item; `None` at its end.
fn next_non_empty<'py>(iter: &Bound<'py, PyAny>) -> PyResult<Option<Chunks<'py>>> {
    while let Some(item) = next_item(iter)? {
        let bytes = as_bytes(&item)?;
        if !bytes.as_bytes().is_empty() {
            return Ok(Some(smallvec::smallvec![bytes.clone()]));
        }
    }
    Ok(None)
}

/// The next block of a file-like object read through Python; `None` at the end of
/// what is to be sent, or when the file ends early (`finish` then reports the
/// shortfall and closes).
fn read_block<'py>(
    filelike: &Bound<'py, PyAny>,
    remaining: &mut Option<u64>,
    block: usize,
) -> PyResult<Option<Chunks<'py>>> {
    let want = match *remaining {
        Some(0) => return Ok(None),
        Some(n) => n.min(block as u64) as usize,
        None => block,
    };
    let data = filelike.call_method1("read", (want,))?;
    let bytes = data.cast_into::<PyBytes>().map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err("file_wrapper: read() must return bytes")
    })?;
    let n = bytes.as_bytes().len() as u64;
    if n == 0 {
        return Ok(None);
    }
    if let Some(r) = remaining {
        *r = r.saturating_sub(n);
    }
    Ok(Some(smallvec::smallvec![bytes]))
}

fn as_bytes<'a, 'py>(item: &'a Bound<'py, PyAny>) -> PyResult<&'a Bound<'py, PyBytes>> {
    item.cast::<PyBytes>().map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err(format!(
            "the application returned a non-bytes object in its response: {}",
            item.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })
}

/// `next(iterator)`, with the end of iteration as `None`.
fn next_item<'py>(iter: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = iter.py();
    // SAFETY: `iter` is a live iterator object; PyIter_Next returns a new reference, or
    // NULL at the end (no exception set) or on error (exception set).
    unsafe {
        let ptr = pyo3::ffi::PyIter_Next(iter.as_ptr());
        if ptr.is_null() {
            return match PyErr::take(py) {
                Some(err) => Err(err),
                None => Ok(None),
            };
        }
        Ok(Some(Bound::from_owned_ptr(py, ptr)))
    }
}

fn format_traceback(py: Python<'_>, err: &PyErr) -> String {
    let formatted = (|| -> PyResult<String> {
        let traceback = py.import("traceback")?;
        let lines = traceback.call_method1(
            "format_exception",
            (err.get_type(py), err.value(py), err.traceback(py)),
        )?;
        let text: String = pyo3::types::PyString::new(py, "")
            .call_method1("join", (lines,))?
            .extract()?;
        Ok(text)
    })();
    formatted.unwrap_or_else(|_| err.to_string())
}
