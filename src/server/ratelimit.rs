//! Log lines about events that can come in floods (refused connections, failing
//! `accept`s), said at most once per interval: the first at once, then at most one per
//! interval carrying how many went unsaid since the previous one. Bookkeeping only:
//! the caller writes the line (through its `EventLog`) when told to.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Whether to write the line for an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write it, saying that `suppressed` more events happened since the last line.
    Say { suppressed: u64 },
    /// Say nothing now; the event is counted for the next line.
    Suppress,
}

/// The state of one rate-limited line, for a single owner (`&mut self`).
#[derive(Debug)]
pub struct RateLimit {
    every: Duration,
    last_said: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// At most one line per `every`.
    pub const fn new(every: Duration) -> RateLimit {
        RateLimit {
            every,
            last_said: None,
            suppressed: 0,
        }
    }

    /// An event happened at `now`.
    pub fn hit(&mut self, now: Instant) -> Verdict {
        let due = self
            .last_said
            .is_none_or(|at| now.saturating_duration_since(at) >= self.every);
        if !due {
            self.suppressed += 1;
            return Verdict::Suppress;
        }
        self.last_said = Some(now);
        Verdict::Say {
            suppressed: std::mem::take(&mut self.suppressed),
        }
    }

    /// The run of events is over (the failing call works again, say): how many went
    /// unsaid, for a closing line; the next event is said at once.
    pub fn end_run(&mut self) -> u64 {
        self.last_said = None;
        std::mem::take(&mut self.suppressed)
    }
}

/// A `RateLimit` shared by many tasks (every connection of a server, say).
#[derive(Debug)]
pub struct SharedRateLimit(Mutex<RateLimit>);

impl SharedRateLimit {
    pub const fn new(every: Duration) -> SharedRateLimit {
        SharedRateLimit(Mutex::new(RateLimit::new(every)))
    }

    /// An event happened now.
    pub fn hit(&self) -> Verdict {
        let now = Instant::now();
        self.0.lock().unwrap_or_else(|e| e.into_inner()).hit(now)
    }
}

/// ` (N more since the last report)`, or nothing when none went unsaid.
pub fn suppressed_note(suppressed: u64) -> String {
    match suppressed {
        0 => String::new(),
        n => format!(" ({n} more since the last report)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_said_at_once_then_one_per_interval_with_the_count() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut limit = RateLimit::new(Duration::from_secs(5));
        assert_eq!(limit.hit(at(0)), Verdict::Say { suppressed: 0 });
        for ms in [1, 10, 4_999] {
            assert_eq!(limit.hit(at(ms)), Verdict::Suppress);
        }
        assert_eq!(limit.hit(at(5_000)), Verdict::Say { suppressed: 3 });
        assert_eq!(limit.hit(at(5_001)), Verdict::Suppress);
        assert_eq!(limit.hit(at(20_000)), Verdict::Say { suppressed: 1 });
        assert_eq!(limit.hit(at(20_001)), Verdict::Suppress);
        assert_eq!(limit.end_run(), 1);
        assert_eq!(limit.hit(at(20_002)), Verdict::Say { suppressed: 0 });
    }

    #[test]
    fn a_clock_that_seems_to_go_back_does_not_panic() {
        let start = Instant::now() + Duration::from_secs(10);
        let mut limit = RateLimit::new(Duration::from_secs(5));
        assert_eq!(limit.hit(start), Verdict::Say { suppressed: 0 });
        assert_eq!(limit.hit(start - Duration::from_secs(1)), Verdict::Suppress);
    }

    #[test]
    fn shared_counts_across_callers() {
        let limit = SharedRateLimit::new(Duration::from_secs(3600));
        assert_eq!(limit.hit(), Verdict::Say { suppressed: 0 });
        assert_eq!(limit.hit(), Verdict::Suppress);
        assert_eq!(suppressed_note(0), "");
        assert_eq!(suppressed_note(2), " (2 more since the last report)");
    }
}
