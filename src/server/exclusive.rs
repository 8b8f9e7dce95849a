//! Accepting from a listening socket that several worker processes share, without a
//! thundering herd. Each worker's gate owns an epoll instance watching the listener with
//! `EPOLLEXCLUSIVE`, and a thread blocked in `epoll_wait` on it: the kernel wakes one such
//! waiter per new connection (an exclusive wake-up only counts for an epoll that a
//! thread is actually waiting on, which is why this is a thread and not tokio's
//! reactor, whose non-exclusive registration would wake every worker).
//!
//! The thread tells the accept loop through a `Notify`, then waits, out of the kernel's
//! queue, until the loop has accepted everything pending: meanwhile new connections wake
//! the other workers. Before waiting again it re-registers at the tail of the
//! listener's wait queue, so idle workers take turns instead of the first one taking
//! all.
//!
//! Owns only the wake-ups: accepting, limits and connections stay in `listener.rs`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;

use tokio::sync::Notify;

use super::stopfd::StopFd;

/// The `u64` an epoll event carries for the listener and for the stop descriptor.
const LISTENER: u64 = 1;
const STOP: u64 = 2;

/// Whether this worker currently holds a wake-up: the thread is out of the kernel's
/// queue, waiting for the loop to accept what is pending.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Turn {
    Waiting,
    Holding,
}

/// One listener's wake-ups for the accept loop.
pub struct ExclusiveGate {
    ready: Arc<Notify>,
    drained: SyncSender<()>,
    stop: Arc<StopFd>,
    watch: Arc<Watch>,
    turn: Turn,
}

/// Whether the epoll is still registered on the listener.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Registration {
    Watching,
    Left,
}

/// The epoll's registration on the listener, changed by the thread (re-arming) and by
/// the accept loop (leaving) under one lock, so a re-arm can never follow the leave.
struct Watch {
    epoll: OwnedFd,
    listener: RawFd,
    registration: Mutex<Registration>,
}

impl Watch {
    /// Moves the registration to the tail of the listener's wait queue; false once the
    /// loop has left.
    fn rearm(&self) -> bool {
        let registration = self.registration.lock().unwrap_or_else(|e| e.into_inner());
        *registration == Registration::Watching
            && control(&self.epoll, libc::EPOLL_CTL_DEL, self.listener, 0, LISTENER).is_ok()
            && watch(&self.epoll, self.listener).is_ok()
    }

    fn leave(&self) {
        let mut registration = self.registration.lock().unwrap_or_else(|e| e.into_inner());
        if *registration == Registration::Watching {
            *registration = Registration::Left;
            let _ = control(&self.epoll, libc::EPOLL_CTL_DEL, self.listener, 0, LISTENER);
        }
    }
}

impl ExclusiveGate {
    /// Watches `listener` (a non-blocking listening socket) from a new thread.
    pub fn new(listener: RawFd) -> io::Result<ExclusiveGate> {
        let epoll = cvt(
            // SAFETY: epoll_create1 takes no pointers.
            unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
        )?;
        // SAFETY: a fresh descriptor that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        let stop = Arc::new(StopFd::new()?);
        control(
            &epoll,
            libc::EPOLL_CTL_ADD,
            stop.as_raw_fd(),
            libc::EPOLLIN,
            STOP,
        )?;
        watch(&epoll, listener)?;
        let ready = Arc::new(Notify::new());
        let (drained, rx) = mpsc::sync_channel(1);
        let watch = Arc::new(Watch {
            epoll,
            listener,
            registration: Mutex::new(Registration::Watching),
        });
        let waiter = Waiter {
            watch: watch.clone(),
            ready: ready.clone(),
            drained: rx,
            _stop: stop.clone(),
        };
        thread::Builder::new()
            .name("tapster-accept".into())
            .spawn(move || waiter.run())?;
        Ok(ExclusiveGate {
            ready,
            drained,
            stop,
            watch,
            turn: Turn::Waiting,
        })
    }

    /// Waits until a connection may be pending (returns at once while holding a turn).
    /// Cancel-safe: a wake-up that arrives while nobody waits is kept.
    pub async fn readable(&mut self) {
        if self.turn == Turn::Waiting {
            self.ready.notified().await;
            self.turn = Turn::Holding;
        }
    }

    /// Takes this worker out of the kernel's queue for the listener: from now on new
    /// connections wake the other workers. What is pending may have woken this one
    /// alone, so the caller accepts it after leaving.
    pub fn leave(&mut self) {
        self.watch.leave();
    }

    /// Hands the turn back (after one accept, or when nothing was pending).
    pub fn drained(&mut self) {
        if self.turn == Turn::Holding {
            self.turn = Turn::Waiting;
            let _ = self.drained.try_send(());
        }
    }
}

impl Drop for ExclusiveGate {
    fn drop(&mut self) {
        // Ends the thread whether it waits in epoll (the stop descriptor) or for the
        // loop (the channel closes when `drained` drops).
        self.stop.signal();
    }
}

/// The thread's side.
struct Waiter {
    watch: Arc<Watch>,
    ready: Arc<Notify>,
    drained: Receiver<()>,
    /// Keeps the stop descriptor open as long as the epoll watches it.
    _stop: Arc<StopFd>,
}

impl Waiter {
    fn run(self) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
        loop {
            // SAFETY: `events` is valid for 2 entries for the duration of the call.
            let n = unsafe {
                libc::epoll_wait(self.watch.epoll.as_raw_fd(), events.as_mut_ptr(), 2, -1)
            };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            let fired = &events[..n as usize];
            if fired.iter().any(|e| e.u64 == STOP) {
                return;
            }
            // To the tail of the listener's queue: the next wake-up goes to another
            // idle worker first.
            if !self.watch.rearm() {
                return;
            }
            self.ready.notify_one();
            if self.drained.recv().is_err() {
                return;
            }
            // Let another worker's woken thread run before this one looks again: on a
            // busy machine the worker already running would otherwise take every
            // connection of a burst.
            thread::yield_now();
        }
    }
}

fn watch(epoll: &OwnedFd, listener: RawFd) -> io::Result<()> {
    let events = libc::EPOLLIN | libc::EPOLLEXCLUSIVE;
    control(epoll, libc::EPOLL_CTL_ADD, listener, events, LISTENER)
}

fn control(epoll: &OwnedFd, op: libc::c_int, fd: RawFd, events: i32, token: u64) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: events as u32,
        u64: token,
    };
    // SAFETY: `event` lives for the duration of the call; the kernel copies it.
    cvt(unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut event) }).map(drop)
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::block_on;
    use std::net::TcpListener;
    use std::time::Duration;

    #[test]
    fn a_connection_wakes_the_gate_and_a_drained_gate_waits_again() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut gate = ExclusiveGate::new(listener.as_raw_fd()).unwrap();
        let addr = listener.local_addr().unwrap();
        block_on(async {
            let _client = std::net::TcpStream::connect(addr).unwrap();
            tokio::time::timeout(Duration::from_secs(2), gate.readable())
                .await
                .expect("woken by the connection");
            assert!(listener.accept().is_ok());
            assert!(listener.accept().is_err(), "nothing else pending");
            gate.drained();
            let idle = tokio::time::timeout(Duration::from_millis(200), gate.readable()).await;
            assert!(idle.is_err(), "no wake-up without a connection");
            let _second = std::net::TcpStream::connect(addr).unwrap();
            tokio::time::timeout(Duration::from_secs(2), gate.readable())
                .await
                .expect("woken by the second connection");
        });
    }

    #[test]
    fn a_gate_that_left_is_not_woken_and_the_other_gate_is() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut a = ExclusiveGate::new(listener.as_raw_fd()).unwrap();
        let mut b = ExclusiveGate::new(listener.as_raw_fd()).unwrap();
        block_on(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            a.leave();
            for _ in 0..3 {
                let _client = std::net::TcpStream::connect(addr).unwrap();
                tokio::time::timeout(Duration::from_secs(2), b.readable())
                    .await
                    .expect("the gate still in the queue is woken");
                while listener.accept().is_ok() {}
                b.drained();
            }
            let short = Duration::from_millis(100);
            assert!(tokio::time::timeout(short, a.readable()).await.is_err());
        });
    }

    #[test]
    fn one_connection_wakes_one_of_two_gates() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut a = ExclusiveGate::new(listener.as_raw_fd()).unwrap();
        let mut b = ExclusiveGate::new(listener.as_raw_fd()).unwrap();
        block_on(async {
            // Let both threads reach epoll_wait.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _client = std::net::TcpStream::connect(addr).unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let short = Duration::from_millis(50);
            let woke_a = tokio::time::timeout(short, a.readable()).await.is_ok();
            let woke_b = tokio::time::timeout(short, b.readable()).await.is_ok();
            assert!(
                woke_a ^ woke_b,
                "exactly one gate woken: a={woke_a} b={woke_b}"
            );
        });
    }
}
