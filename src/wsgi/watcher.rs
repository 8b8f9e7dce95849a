//! `tapster._tapster.FileWatcher`: the inotify watcher of `crate::watch` for the
//! workers' `reload` (Python calls `changed()` from its tick; nothing blocks).

use std::path::PathBuf;
use std::sync::Mutex;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

use crate::watch;

#[pyclass(module = "tapster._tapster", name = "FileWatcher", frozen)]
pub struct FileWatcher(Mutex<watch::FileWatcher>);

#[pymethods]
impl FileWatcher {
    #[new]
    fn new(files: Vec<PathBuf>) -> PyResult<FileWatcher> {
        let watcher =
            watch::FileWatcher::new(files).map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(FileWatcher(Mutex::new(watcher)))
    }

    /// The watched files changed since the last call, as strings.
    fn changed(&self) -> PyResult<Vec<String>> {
        let mut watcher = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let paths = watcher
            .changed()
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(paths.iter().map(|p| p.display().to_string()).collect())
    }
}
