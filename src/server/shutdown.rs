//! The server's one shutdown signal, and each task's view of it (as in tokio's
//! mini-redis): `ShutdownSignal` is set once by `Running::begin_shutdown`; a task
//! holds a `Shutdown`, registered before it first looks, so the notification can never
//! be missed between a check and a wait.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

/// How long after its accept a connection that has had no request yet may still
/// deliver its first one once a shutdown has begun. It was accepted to be served (a
/// worker leaving a shared listener accepts what is pending), and its request may be
/// on its way (a client sends it right after the handshake, so within a round trip of
/// the accept); one silent for longer is an idle preconnection, and a connection that
/// has been served before is closed at once when idle.
pub const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(250);

/// Until when a connection accepted at `accepted`, with no request yet, may wait for
/// its first request during a shutdown.
pub fn first_request_deadline(accepted: Instant) -> Instant {
    accepted + FIRST_REQUEST_GRACE
}

/// Set once, when the server starts shutting down.
#[derive(Default)]
pub struct ShutdownSignal {
    closing: AtomicBool,
    notify: Arc<Notify>,
}

impl ShutdownSignal {
    pub fn new() -> Arc<ShutdownSignal> {
        Arc::new(ShutdownSignal::default())
    }

    /// Starts the shutdown: every `Shutdown` sees it from now on.
    pub fn trigger(&self) {
        self.closing.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// The server is shutting down.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// A view for one task.
    pub fn subscribe(self: &Arc<Self>) -> Shutdown {
        let mut notified = Box::pin(self.notify.clone().notified_owned());
        // Registered before `closing` is first read, so the notification cannot be
        // missed.
        notified.as_mut().enable();
        Shutdown {
            signal: self.clone(),
            notified,
            seen: false,
        }
    }
}

/// One task's view of the shutdown signal.
pub struct Shutdown {
    signal: Arc<ShutdownSignal>,
    notified: Pin<Box<OwnedNotified>>,
    /// `recv` has returned: the notification fired and must not be awaited again.
    seen: bool,
}

impl Shutdown {
    /// The server is shutting down (whether or not `recv` has returned yet).
    pub fn is_closing(&self) -> bool {
        self.seen || self.signal.is_closing()
    }

    /// `recv` has already returned once; a `select!` branch on it must be disabled.
    pub fn seen(&self) -> bool {
        self.seen
    }

    /// Waits for the shutdown to start; returns at once if `recv` returned before.
    pub async fn recv(&mut self) {
        if !self.seen {
            self.notified.as_mut().await;
            self.seen = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::block_on;
    use std::time::Duration;

    #[test]
    fn a_trigger_between_subscribing_and_waiting_is_not_missed() {
        let signal = ShutdownSignal::new();
        let mut view = signal.subscribe();
        assert!(!view.is_closing());
        signal.trigger();
        assert!(view.is_closing());
        let woke = block_on(async {
            tokio::time::timeout(Duration::from_secs(1), view.recv())
                .await
                .is_ok()
        });
        assert!(woke);
        assert!(view.seen());
        // Once seen, recv returns at once.
        block_on(view.recv());
    }

    #[test]
    fn a_view_taken_after_the_trigger_sees_it() {
        let signal = ShutdownSignal::new();
        signal.trigger();
        assert!(signal.subscribe().is_closing());
    }

    #[test]
    fn recv_waits_until_the_trigger() {
        let signal = ShutdownSignal::new();
        let mut view = signal.subscribe();
        let waited = block_on(async {
            tokio::time::timeout(Duration::from_millis(50), view.recv())
                .await
                .is_err()
        });
        assert!(waited, "recv returned before any trigger");
        assert!(!view.seen());
    }
}
