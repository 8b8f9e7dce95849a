//! Watching files for changes with inotify, for `reload` in development: which of the
//! named files was written, replaced (renamed over) or deleted. Each file's directory
//! is watched (editors save by renaming a new file over the old one). No threads and no
//! polling: the caller asks for what has happened since it last asked, without
//! blocking. No Python here.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use inotify::{Inotify, WatchDescriptor, WatchMask};

pub struct FileWatcher {
    inotify: Inotify,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    files: HashSet<PathBuf>,
    buffer: Vec<u8>,
}

impl FileWatcher {
    /// Watches `files` (absolute paths); a directory that cannot be watched is an error
    /// naming it.
    pub fn new(files: impl IntoIterator<Item = PathBuf>) -> io::Result<FileWatcher> {
        let inotify = Inotify::init()?;
        let files: HashSet<PathBuf> = files.into_iter().collect();
        let mut dirs = HashMap::new();
        let parents: HashSet<&Path> = files.iter().filter_map(|f| f.parent()).collect();
        for dir in parents {
            let mask = WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::DELETE;
            let wd = inotify.watches().add(dir, mask).map_err(|err| {
                io::Error::new(err.kind(), format!("cannot watch {}: {err}", dir.display()))
            })?;
            dirs.insert(wd, dir.to_path_buf());
        }
        Ok(FileWatcher {
            inotify,
            dirs,
            files,
            buffer: vec![0; 4096],
        })
    }

    /// The watched files that changed since the last call (without blocking).
    pub fn changed(&mut self) -> io::Result<Vec<PathBuf>> {
        let mut changed = Vec::new();
        loop {
            let events = match self.inotify.read_events(&mut self.buffer) {
                Ok(events) => events,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(changed),
                Err(err) => return Err(err),
            };
            let mut any = false;
            for event in events {
                any = true;
                let (Some(dir), Some(name)) = (self.dirs.get(&event.wd), event.name) else {
                    continue;
                };
                let path = dir.join(name);
                if self.files.contains(&path) && !changed.contains(&path) {
                    changed.push(path);
                }
            }
            if !any {
                return Ok(changed);
            }
        }
    }

    /// How many directories are watched.
    pub fn directories(&self) -> usize {
        self.dirs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_and_a_rename_over_a_watched_file_are_reported_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let watched = dir.path().join("app.py");
        let other = dir.path().join("notes.txt");
        std::fs::write(&watched, "v = 1\n").unwrap();
        let mut watcher = FileWatcher::new([watched.clone()]).unwrap();
        assert_eq!(watcher.directories(), 1);
        assert!(watcher.changed().unwrap().is_empty());
        std::fs::write(&other, "x").unwrap();
        assert!(watcher.changed().unwrap().is_empty(), "an unwatched file");
        std::fs::write(&watched, "v = 2\n").unwrap();
        assert_eq!(watcher.changed().unwrap(), vec![watched.clone()]);
        let tmp = dir.path().join("app.py.tmp");
        std::fs::write(&tmp, "v = 3\n").unwrap();
        std::fs::rename(&tmp, &watched).unwrap();
        assert_eq!(watcher.changed().unwrap(), vec![watched.clone()]);
        assert!(watcher.changed().unwrap().is_empty());
    }

    #[test]
    fn an_unwatchable_directory_is_named() {
        let err = FileWatcher::new([PathBuf::from("/nonexistent-tapster/app.py")])
            .err()
            .expect("refused");
        assert!(err.to_string().contains("/nonexistent-tapster"), "{err}");
    }
}
