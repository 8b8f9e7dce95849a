//! Waking `Server.run()` the moment a signal arrives. Python's C-level signal handler
//! writes a byte to the `signal.set_wakeup_fd` pipe; a thread of ours waits on that
//! pipe and wakes the `Control` the thread in `run()` sleeps on, which then lets Python
//! run the handler. Without it, a signal waits for the next poll (up to 100 ms), during
//! which a draining worker would go on accepting. Holds no GIL; touches no Python.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread;

use super::log::Control;
use crate::server::stopfd::StopFd;

/// The thread, stopped (through its own eventfd) and joined when this drops, so the
/// caller may close the pipe afterwards.
pub struct SignalWaker {
    stop: Arc<StopFd>,
    thread: Option<thread::JoinHandle<()>>,
}

impl SignalWaker {
    /// Watches `wakeup` (a non-blocking pipe's read end that the caller keeps open for
    /// as long as this lives).
    pub fn start(wakeup: RawFd, control: Arc<Control>) -> io::Result<SignalWaker> {
        let stop = Arc::new(StopFd::new()?);
        let theirs = stop.clone();
        let thread = thread::Builder::new()
            .name("tapster-signals".into())
            .spawn(move || watch(wakeup, &theirs, &control))?;
        Ok(SignalWaker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for SignalWaker {
    fn drop(&mut self) {
        self.stop.signal();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn watch(wakeup: RawFd, stop: &StopFd, control: &Control) {
    let mut fds = [
        libc::pollfd {
            fd: wakeup,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is valid for its 2 entries for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 || fds[0].revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
            return;
        }
        if fds[0].revents & libc::POLLHUP != 0 && !drain(wakeup) {
            return;
        }
        drain(wakeup);
        control.wake();
    }
}

/// Empties the pipe (the signal numbers are Python's to read from its own state);
/// false when the write end has closed.
fn drain(fd: RawFd) -> bool {
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: reads at most 64 bytes into a live 64-byte buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            return false;
        }
        if n < 0 {
            return true;
        }
    }
}
