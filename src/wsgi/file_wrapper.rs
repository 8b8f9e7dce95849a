//! `wsgi.file_wrapper`: wraps a file-like object so the server can send it efficiently
//! when the application returns the wrapper as its app_iter, and behaves as a plain
//! iterable of `block_size` reads anywhere else (for example inside middleware).

use std::fs::File;
use std::os::fd::FromRawFd;

use pyo3::exceptions::{PyAttributeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

#[pyclass(module = "tapster._tapster", name = "FileWrapper")]
pub struct FileWrapper {
    /// The wrapped object; it needs only `read(size)`.
    #[pyo3(get)]
    pub filelike: Py<PyAny>,
    #[pyo3(get)]
    pub block_size: usize,
    closed: bool,
}

impl FileWrapper {
    /// Whether the object supports `seek` and `tell` (and says it is seekable, if it can).
    pub fn is_seekable(&self, py: Python<'_>) -> bool {
        let f = self.filelike.bind(py);
        if !(f.hasattr("seek").unwrap_or(false) && f.hasattr("tell").unwrap_or(false)) {
            return false;
        }
        match f.getattr("seekable") {
            Ok(method) => method.call0().and_then(|r| r.is_truthy()).unwrap_or(false),
            Err(_) => true,
        }
    }

    /// Calls the object's `close()` once, if it has one.
    pub fn close_file(&mut self, py: Python<'_>) -> PyResult<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let f = self.filelike.bind(py);
        if f.hasattr("close")? {
            f.call_method0("close")?;
        }
        Ok(())
    }
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, block_size = 32768, /))]
    fn new(filelike: Py<PyAny>, block_size: usize) -> PyResult<FileWrapper> {
        if block_size == 0 {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "block_size must be a positive integer",
            ));
        }
        Ok(FileWrapper {
            filelike,
            block_size,
            closed: false,
        })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let data = self
            .filelike
            .bind(py)
            .call_method1("read", (self.block_size,))?;
        let data = data.cast_into::<PyBytes>().map_err(|e| {
            PyTypeError::new_err(format!(
                "file_wrapper: read() must return bytes, not {}",
                e.into_inner()
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        if data.as_bytes().is_empty() {
            return Ok(None);
        }
        Ok(Some(data))
    }

    fn close(&mut self, py: Python<'_>) -> PyResult<()> {
        self.close_file(py)
    }

    /// `seek`, `tell` and `seekable` of the wrapped object, present only when it is
    /// seekable, so middleware can build range responses.
    fn __getattr__<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        if matches!(name, "seek" | "tell" | "seekable") && self.is_seekable(py) {
            return self.filelike.bind(py).getattr(name);
        }
        Err(PyAttributeError::new_err(format!(
            "'FileWrapper' object has no attribute '{name}'"
        )))
    }
}

/// The Python file types whose `read()` returns exactly the bytes of their descriptor,
/// so the server may send the descriptor itself with `sendfile(2)`.
pub struct ZeroCopyTypes {
    file_io: Py<PyAny>,
    buffered_reader: Py<PyAny>,
    buffered_random: Py<PyAny>,
    temp_wrapper: Option<Py<PyAny>>,
}

impl ZeroCopyTypes {
    pub fn new(py: Python<'_>) -> PyResult<ZeroCopyTypes> {
        let io = py.import("io")?;
        // Only a missing module or class means "no such wrapper": anything else (the
        // SystemExit a SIGTERM handler raises while `tempfile` is imported) must reach
        // `run()`, or that signal would be lost and the server would not stop.
        let temp_wrapper = match py
            .import("tempfile")
            .and_then(|t| t.getattr("_TemporaryFileWrapper"))
        {
            Ok(wrapper) => Some(wrapper.unbind()),
            Err(err)
                if err.is_instance_of::<pyo3::exceptions::PyImportError>(py)
                    || err.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) =>
            {
                None
            }
            Err(err) => return Err(err),
        };
        Ok(ZeroCopyTypes {
            file_io: io.getattr("FileIO")?.unbind(),
            buffered_reader: io.getattr("BufferedReader")?.unbind(),
            buffered_random: io.getattr("BufferedRandom")?.unbind(),
            temp_wrapper,
        })
    }

    /// A duplicate of the descriptor behind `filelike`, if sending it directly is
    /// exactly what `read()` would produce: a binary `FileIO`, or a buffered reader over
    /// one (also inside a `tempfile` wrapper), on a regular file. Anything else (a
    /// `GzipFile`, a text file, a pipe, a class that merely has `fileno()`) gets `None`
    /// and is read through Python.
    pub fn descriptor(&self, filelike: &Bound<'_, PyAny>) -> PyResult<Option<File>> {
        let py = filelike.py();
        let mut file = filelike.clone();
        if let Some(wrapper) = &self.temp_wrapper {
            if file.get_type().is(wrapper.bind(py)) {
                file = file.getattr("file")?;
            }
        }
        let kind = file.get_type();
        let buffered =
            kind.is(self.buffered_reader.bind(py)) || kind.is(self.buffered_random.bind(py));
        let raw = if buffered {
            file.getattr("raw")?
        } else {
            file.clone()
        };
        if !raw.get_type().is(self.file_io.bind(py))
            || !raw.call_method0("readable")?.is_truthy()?
        {
            return Ok(None);
        }
        if buffered && kind.is(self.buffered_random.bind(py)) {
            // Unwritten data in the buffer must reach the file before it is sent.
            file.call_method0("flush")?;
        }
        let fd: i32 = file.call_method0("fileno")?.extract()?;
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor the file object owns returns a new
        // descriptor or -1; it touches no memory.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Ok(None);
        }
        // SAFETY: `dup` is a fresh descriptor that nothing else owns.
        let owned = unsafe { File::from_raw_fd(dup) };
        let regular = owned
            .metadata()
            .map(|m| m.file_type().is_file())
            .unwrap_or(false);
        Ok(regular.then_some(owned))
    }
}
