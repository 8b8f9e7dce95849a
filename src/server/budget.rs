//! Server-wide byte budgets: what all connections together may hold in memory for
//! request bodies and for queued response output, and in temporary files for queued
//! output. Each connection is bounded on its own (`inbuf_overflow`,
//! `outbuf_overflow`, `outbuf_high_watermark`); these bound the sum, so that a crowd
//! of stalled clients cannot pin memory or disk by its number.
//!
//! A budget is one atomic counter: taking from it never waits or locks. What happens
//! when one is used up is decided by its user (a body goes to a file, output spills,
//! an application is paused).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes in use against a limit.
#[derive(Debug)]
pub struct Budget {
    used: AtomicU64,
    limit: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Budget {
        Budget {
            used: AtomicU64::new(0),
            limit,
        }
    }

    /// Takes `n` bytes if they fit under the limit.
    pub fn try_take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Takes `n` bytes whether or not they fit (memory already allocated, a write
    /// already made): the excess shows in `exhausted`.
    pub fn take(&self, n: u64) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    /// Gives back `n` bytes taken before.
    pub fn give(&self, n: u64) {
        let previous = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            })
            .unwrap_or(0);
        // Giving back more than was taken is a bug; in a release build it must not
        // wrap the counter and leave the budget looking used up forever.
        debug_assert!(previous >= n, "budget released more than was taken");
    }

    /// Nothing is left.
    pub fn exhausted(&self) -> bool {
        self.used.load(Ordering::Acquire) >= self.limit
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// The budgets of one server, shared (in an `Arc`) by everything that holds bytes.
#[derive(Debug)]
pub struct Budgets {
    /// Request-body bytes held in memory (`inbuf_memory_budget`).
    pub inbuf_memory: Budget,
    /// Queued response bytes held in memory (`outbuf_memory_budget`).
    pub outbuf_memory: Budget,
    /// Queued response bytes held in temporary files (`outbuf_spill_budget`).
    pub outbuf_spill: Budget,
}

impl Budgets {
    pub fn new(inbuf_memory: u64, outbuf_memory: u64, outbuf_spill: u64) -> Arc<Budgets> {
        Arc::new(Budgets {
            inbuf_memory: Budget::new(inbuf_memory),
            outbuf_memory: Budget::new(outbuf_memory),
            outbuf_spill: Budget::new(outbuf_spill),
        })
    }

    /// Budgets too large to matter, for unit tests.
    pub fn unlimited() -> Arc<Budgets> {
        Budgets::new(u64::MAX, u64::MAX, u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_only_what_fits() {
        let budget = Budget::new(10);
        assert!(budget.try_take(6));
        assert!(!budget.try_take(5));
        assert!(budget.try_take(4));
        assert!(budget.exhausted());
        budget.give(4);
        assert!(!budget.exhausted());
        assert_eq!(budget.used(), 6);
    }

    #[test]
    fn forced_takes_may_go_over() {
        let budget = Budget::new(10);
        budget.take(15);
        assert!(budget.exhausted());
        assert!(!budget.try_take(1));
        budget.give(15);
        assert_eq!(budget.used(), 0);
        assert!(budget.try_take(10));
    }

    #[test]
    fn concurrent_takers_never_exceed_the_limit() {
        let budget = Arc::new(Budget::new(1000));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || (0..1000).filter(|_| budget.try_take(1)).count())
            })
            .collect();
        let taken: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(taken, 1000);
        assert_eq!(budget.used(), 1000);
    }
}
