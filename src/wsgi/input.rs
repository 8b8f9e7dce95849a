//! `wsgi.input`: a seekable, read-only binary stream over the request body, which the
//! connection task has already received completely (in memory, or in a temporary file
//! for large bodies). Reads never block on the network and never release the GIL.

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::server::Body;

/// Bytes read from a spilled body at a time while looking for a line end.
const LINE_SCAN: usize = 8192;

#[pyclass(module = "tapster._tapster", name = "InputStream", freelist = 64)]
pub struct Input {
    body: Body,
    pos: u64,
    closed: bool,
}

impl Input {
    /// Lets the body go (the request is over): the stream is closed, as `close()`
    /// leaves it, so a late read fails instead of finding a truncated body.
    pub fn release(&mut self) {
        self.close();
    }

    pub fn new(body: Body) -> Input {
        Input {
            body,
            pos: 0,
            closed: false,
        }
    }

    fn check_open(&self) -> PyResult<()> {
        if self.closed {
            Err(PyValueError::new_err("I/O operation on closed file."))
        } else {
            Ok(())
        }
    }

    fn remaining(&self) -> u64 {
        self.body.len().saturating_sub(self.pos)
    }

    /// Up to `n` bytes from the current position, copied once, straight into a new
    /// `bytes` object.
    fn take<'py>(&mut self, py: Python<'py>, n: u64) -> PyResult<Bound<'py, PyBytes>> {
        let n = usize::try_from(n.min(self.remaining()))
            .map_err(|_| PyOSError::new_err("request body too large for this platform"))?;
        if n == 0 {
            // Also covers a position seeked past the end.
            return Ok(PyBytes::new(py, b""));
        }
        let start = self.pos;
        let data = match &self.body {
            Body::Memory(bytes) => {
                let from = start as usize;
                PyBytes::new(py, &bytes[from..from + n])
            }
            body => PyBytes::new_with(py, n, |out| {
                let mut filled = 0;
                while filled < n {
                    let got = body
                        .read_at(start + filled as u64, &mut out[filled..])
                        .map_err(|e| PyOSError::new_err(e.to_string()))?;
                    if got == 0 {
                        return Err(PyOSError::new_err("request body file ended early"));
                    }
                    filled += got;
                }
                Ok(())
            })?,
        };
        self.pos += n as u64;
        Ok(data)
    }

    /// The next line (through `\n`), at most `limit` bytes.
    fn line(&mut self, limit: u64) -> PyResult<Vec<u8>> {
        let limit = limit.min(self.remaining());
        if limit == 0 {
            return Ok(Vec::new());
        }
        if let Body::Memory(bytes) = &self.body {
            let start = self.pos as usize;
            let window = &bytes[start..start + limit as usize];
            let end = memchr::memchr(b'\n', window).map_or(window.len(), |i| i + 1);
            self.pos += end as u64;
            return Ok(window[..end].to_vec());
        }
        let mut line = Vec::new();
        let mut scan = [0u8; LINE_SCAN];
        while (line.len() as u64) < limit {
            let want = ((limit - line.len() as u64) as usize).min(LINE_SCAN);
            let got = self
                .body
                .read_at(self.pos, &mut scan[..want])
                .map_err(|e| PyOSError::new_err(e.to_string()))?;
            if got == 0 {
                break;
            }
            match memchr::memchr(b'\n', &scan[..got]) {
                Some(i) => {
                    line.extend_from_slice(&scan[..=i]);
                    self.pos += i as u64 + 1;
                    break;
                }
                None => {
                    line.extend_from_slice(&scan[..got]);
                    self.pos += got as u64;
                }
            }
        }
        Ok(line)
    }
}

/// `None` or a negative size means "everything".
fn size_arg(size: Option<i64>) -> u64 {
    match size {
        Some(n) if n >= 0 => n as u64,
        _ => u64::MAX,
    }
}

#[pymethods]
impl Input {
    #[pyo3(signature = (size = None))]
    fn read<'py>(&mut self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        self.check_open()?;
        self.take(py, size_arg(size))
    }

    #[pyo3(signature = (size = None))]
    fn read1<'py>(&mut self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        self.read(py, size)
    }

    fn readinto(&mut self, py: Python<'_>, buffer: &Bound<'_, PyAny>) -> PyResult<usize> {
        self.check_open()?;
        let view = py
            .import("builtins")?
            .getattr("memoryview")?
            .call1((buffer,))?
            .call_method1("cast", ("B",))?;
        let len = view.len()?;
        let data = self.take(py, len as u64)?;
        let n = data.as_bytes().len();
        view.set_item(pyo3::types::PySlice::new(py, 0, n as isize, 1), data)?;
        Ok(n)
    }

    #[pyo3(signature = (size = None))]
    fn readline<'py>(
        &mut self,
        py: Python<'py>,
        size: Option<i64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        self.check_open()?;
        let line = self.line(size_arg(size))?;
        Ok(PyBytes::new(py, &line))
    }

    #[pyo3(signature = (hint = None))]
    fn readlines<'py>(
        &mut self,
        py: Python<'py>,
        hint: Option<i64>,
    ) -> PyResult<Bound<'py, PyList>> {
        self.check_open()?;
        let hint = match hint {
            Some(n) if n > 0 => n as u64,
            _ => u64::MAX,
        };
        let lines = PyList::empty(py);
        let mut total = 0u64;
        while self.remaining() > 0 && total < hint {
            let line = self.line(u64::MAX)?;
            total += line.len() as u64;
            lines.append(PyBytes::new(py, &line))?;
        }
        Ok(lines)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyResult<PyRef<'_, Self>> {
        slf.check_open()?;
        Ok(slf)
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        self.check_open()?;
        if self.remaining() == 0 {
            return Ok(None);
        }
        let line = self.line(u64::MAX)?;
        Ok(Some(PyBytes::new(py, &line)))
    }

    #[pyo3(signature = (offset, whence = 0))]
    fn seek(&mut self, offset: i64, whence: i32) -> PyResult<u64> {
        self.check_open()?;
        let base = match whence {
            0 => 0i128,
            1 => i128::from(self.pos),
            2 => i128::from(self.body.len()),
            _ => {
                return Err(PyValueError::new_err(format!(
                    "invalid whence ({whence}, should be 0, 1 or 2)"
                )))
            }
        };
        let target = base + i128::from(offset);
        if target < 0 {
            return Err(PyValueError::new_err(format!(
                "negative seek value {target}"
            )));
        }
        self.pos = u64::try_from(target).unwrap_or(u64::MAX);
        Ok(self.pos)
    }

    fn tell(&self) -> PyResult<u64> {
        self.check_open()?;
        Ok(self.pos)
    }

    fn seekable(&self) -> PyResult<bool> {
        self.check_open()?;
        Ok(true)
    }

    fn readable(&self) -> PyResult<bool> {
        self.check_open()?;
        Ok(true)
    }

    fn writable(&self) -> PyResult<bool> {
        self.check_open()?;
        Ok(false)
    }

    fn isatty(&self) -> PyResult<bool> {
        self.check_open()?;
        Ok(false)
    }

    fn flush(&self) -> PyResult<()> {
        self.check_open()
    }

    fn fileno(&self, py: Python<'_>) -> PyResult<i32> {
        let unsupported = py.import("io")?.getattr("UnsupportedOperation")?;
        Err(PyErr::from_value(unsupported.call1(("fileno",))?))
    }

    fn close(&mut self) {
        self.closed = true;
        self.body = Body::Empty;
    }

    #[getter]
    fn closed(&self) -> bool {
        self.closed
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&mut self, _args: &Bound<'_, pyo3::types::PyTuple>) {
        self.close();
    }
}
