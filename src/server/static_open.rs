//! Opening a file beneath a directory descriptor without ever leaving the directory,
//! for the `static` mounts: `openat2(2)` with `RESOLVE_BENEATH` where the kernel has it,
//! a component-by-component walk with `O_NOFOLLOW` where it does not, or plain
//! `openat(2)` when symlinks are to be followed anywhere. It owns the system calls and
//! what their errors mean to a client; it knows nothing of HTTP or of the mounts.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::config::StaticOpen;

/// How files are opened below a mount's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opener {
    /// `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`: the kernel refuses any
    /// resolution that would leave the directory; symlinks inside it are followed.
    Beneath,
    /// No `openat2` (Linux before 5.6, or a sandbox that filters it): one component at
    /// a time with `O_NOFOLLOW`, so no symlink at all is followed.
    Walk,
    /// `static_follow_symlinks`: `openat`, symlinks followed wherever they lead.
    Follow,
}

impl Opener {
    /// The opener for `mode`, probing `openat2` on `root`; the note says why the walk
    /// was chosen, for the log.
    pub fn choose(mode: StaticOpen, root: &OwnedFd) -> (Opener, Option<String>) {
        if mode == StaticOpen::FollowSymlinks {
            return (Opener::Follow, None);
        }
        match openat2_beneath(root.as_raw_fd(), c".") {
            Ok(_) => (Opener::Beneath, None),
            Err(err) => (
                Opener::Walk,
                Some(format!(
                    "static: openat2 is not available ({err}); files are opened one path \
                     component at a time with O_NOFOLLOW, so no symlink below a mount is followed"
                )),
            ),
        }
    }

    /// Opens `relative` (checked segments joined by `/`, or empty for `dir` itself)
    /// beneath the directory `dir`.
    pub fn open(self, dir: RawFd, relative: &[u8]) -> Result<File, Missing> {
        let relative: &[u8] = if relative.is_empty() { b"." } else { relative };
        let path = CString::new(relative).map_err(|_| Missing::NotFound)?;
        let result = match self {
            Opener::Beneath => retry_races(|| openat2_beneath(dir, &path)),
            Opener::Walk => open_walking(dir, relative),
            Opener::Follow => openat(dir, &path, 0),
        };
        result.map_err(Missing::from_error)
    }
}

/// Why nothing was opened.
#[derive(Debug)]
pub enum Missing {
    /// Absent, not a regular file, a symlink out of the directory, not permitted...:
    /// the client is told "not found".
    NotFound,
    /// A directory where a file was asked for.
    Directory,
    /// The server could not look (out of descriptors or memory, an I/O error): the
    /// client is told to come back, and the operator is told why.
    Unavailable(io::Error),
}

impl Missing {
    fn from_error(err: io::Error) -> Missing {
        match err.raw_os_error() {
            Some(
                libc::ENOENT
                | libc::ENOTDIR
                | libc::ELOOP
                | libc::EXDEV
                | libc::ENAMETOOLONG
                | libc::EACCES
                | libc::EPERM
                | libc::ENXIO
                | libc::ENODEV
                | libc::EOVERFLOW
                | libc::EISDIR,
            ) => Missing::NotFound,
            _ => Missing::Unavailable(err),
        }
    }
}

/// `openat2` with `RESOLVE_BENEATH` says `EAGAIN` when a rename elsewhere raced the
/// lookup and it could not prove the result safe: try again, a little.
fn retry_races(mut open: impl FnMut() -> io::Result<File>) -> io::Result<File> {
    let mut tries = 0;
    loop {
        match open() {
            Err(err) if err.raw_os_error() == Some(libc::EAGAIN) && tries < 3 => tries += 1,
            other => return other,
        }
    }
}

/// Flags of every open: read-only, not inherited, never a controlling terminal, and
/// never waiting (a FIFO opens at once and is then refused as not a regular file).
const OPEN_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;

/// A mount's directory, opened once at start-up (`O_PATH`: a handle to look up from,
/// not to read).
pub fn open_directory(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the path"))?;
    // SAFETY: `c` is a valid NUL-terminated string; the result is checked.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat` for reading, with `OPEN_FLAGS` and `flags`.
fn openat(dir: RawFd, path: &std::ffi::CStr, flags: libc::c_int) -> io::Result<File> {
    openat_with(dir, path, OPEN_FLAGS | flags)
}

/// `openat` with exactly `flags`.
fn openat_with(dir: RawFd, path: &std::ffi::CStr, flags: libc::c_int) -> io::Result<File> {
    // SAFETY: `dir` is an open descriptor for the duration of the call, `path` a valid
    // NUL-terminated string; the result is checked.
    let fd = unsafe { libc::openat(dir, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn openat2_beneath(dir: RawFd, path: &std::ffi::CStr) -> io::Result<File> {
    // SAFETY: `open_how` is plain data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = OPEN_FLAGS as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `dir` is open, `path` is NUL-terminated, `how` is a valid `open_how` of
    // the size passed; the result is checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd as RawFd) })
}

/// One component at a time, each with `O_NOFOLLOW` (every symlink refused); the
/// directories on the way with `O_PATH` (search permission is enough, as for a path).
fn open_walking(dir: RawFd, relative: &[u8]) -> io::Result<File> {
    let mut components = relative.split(|&b| b == b'/').peekable();
    let mut current: Option<File> = None;
    while let Some(component) = components.next() {
        let name =
            CString::new(component).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let at = current.as_ref().map_or(dir, File::as_raw_fd);
        current = Some(if components.peek().is_none() {
            openat(at, &name, libc::O_NOFOLLOW)?
        } else {
            openat_path_dir(at, &name)?
        });
    }
    current.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
}

/// A directory on the way, as an `O_PATH` handle, never through a symlink.
fn openat_path_dir(dir: RawFd, name: &std::ffi::CStr) -> io::Result<File> {
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    openat_with(dir, name, flags)
}

#[cfg(test)]
mod tests {
    //! The three openers on a real tree.

    use super::*;
    use std::io::Read;
    use std::os::unix::fs::{symlink, PermissionsExt};

    struct Tree {
        _dir: tempfile::TempDir,
        root: OwnedFd,
    }

    fn tree() -> Tree {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let base = dir.path();
        std::fs::create_dir_all(base.join("root/sub")).unwrap();
        std::fs::create_dir_all(base.join("root/search-only")).unwrap();
        std::fs::write(base.join("root/a.txt"), b"inside").unwrap();
        std::fs::write(base.join("root/sub/b.txt"), b"deeper").unwrap();
        std::fs::write(base.join("root/search-only/c.txt"), b"searched").unwrap();
        std::fs::set_permissions(
            base.join("root/search-only"),
            std::fs::Permissions::from_mode(0o311),
        )
        .unwrap();
        std::fs::write(base.join("secret.txt"), b"outside").unwrap();
        symlink("a.txt", base.join("root/relative-in")).unwrap();
        symlink("../secret.txt", base.join("root/relative-out")).unwrap();
        symlink(base.join("root/a.txt"), base.join("root/absolute-in")).unwrap();
        let root = open_directory(&base.join("root")).expect("the root opens");
        Tree { _dir: dir, root }
    }

    fn read(opened: Result<File, Missing>) -> Option<String> {
        let mut text = String::new();
        opened.ok()?.read_to_string(&mut text).ok()?;
        Some(text)
    }

    #[test]
    fn beneath_stays_inside_the_directory() {
        let t = tree();
        let (opener, note) = Opener::choose(StaticOpen::Beneath, &t.root);
        assert_eq!(
            (opener, note),
            (Opener::Beneath, None),
            "this kernel has openat2"
        );
        let fd = t.root.as_raw_fd();
        assert_eq!(read(opener.open(fd, b"a.txt")).as_deref(), Some("inside"));
        assert_eq!(
            read(opener.open(fd, b"sub/b.txt")).as_deref(),
            Some("deeper")
        );
        assert_eq!(
            read(opener.open(fd, b"relative-in")).as_deref(),
            Some("inside")
        );
        assert_eq!(
            read(opener.open(fd, b"search-only/c.txt")).as_deref(),
            Some("searched")
        );
        // Out of the directory, whatever the path or the link says.
        for escape in [
            &b"relative-out"[..],
            b"absolute-in",
            b"../secret.txt",
            b"/etc/passwd",
            b"sub/../../secret.txt",
        ] {
            assert!(
                matches!(opener.open(fd, escape), Err(Missing::NotFound)),
                "{escape:?}"
            );
        }
    }

    #[test]
    fn the_walk_refuses_every_symlink() {
        let t = tree();
        let fd = t.root.as_raw_fd();
        let walk = Opener::Walk;
        assert_eq!(read(walk.open(fd, b"a.txt")).as_deref(), Some("inside"));
        assert_eq!(read(walk.open(fd, b"sub/b.txt")).as_deref(), Some("deeper"));
        assert_eq!(
            read(walk.open(fd, b"search-only/c.txt")).as_deref(),
            Some("searched")
        );
        assert!(walk.open(fd, b"").is_ok());
        for refused in [
            &b"relative-in"[..],
            b"relative-out",
            b"absolute-in",
            b"a.txt/x",
        ] {
            assert!(
                matches!(walk.open(fd, refused), Err(Missing::NotFound)),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn following_reaches_outside() {
        let t = tree();
        let (opener, _) = Opener::choose(StaticOpen::FollowSymlinks, &t.root);
        assert_eq!(
            read(opener.open(t.root.as_raw_fd(), b"relative-out")).as_deref(),
            Some("outside")
        );
    }

    #[test]
    fn only_shortages_are_unavailable() {
        assert!(matches!(
            Missing::from_error(io::Error::from_raw_os_error(libc::ENOENT)),
            Missing::NotFound
        ));
        assert!(matches!(
            Missing::from_error(io::Error::from_raw_os_error(libc::EMFILE)),
            Missing::Unavailable(_)
        ));
        assert!(matches!(
            Missing::from_error(io::Error::from_raw_os_error(libc::EIO)),
            Missing::Unavailable(_)
        ));
    }
}
