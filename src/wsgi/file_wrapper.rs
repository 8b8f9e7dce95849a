//! `wsgi.file_wrapper`: wraps a file-like object so the server can send it efficiently
//! when the application returns the wrapper as its app_iter, and behaves as a plain
//! iterable of `block_size` reads anywhere else (for example inside middleware).

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
