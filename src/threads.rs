//! How Tapster's own threads are scheduled, for whoever starts them (the I/O runtime,
//! the worker pool's watchdog). Nothing here knows about sockets or Python.

/// Marks the calling thread `SCHED_BATCH`: its wake-ups (a client sent bytes, a
/// watchdog tick) do not preempt a worker thread running the application on the same
/// CPU. The thread runs when the worker blocks or its time slice ends, and then
/// handles everything that arrived meanwhile in one go: bigger batches, fewer context
/// switches. On an idle CPU it still runs at once.
pub fn prefer_batching() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param; pid 0 means the calling thread. Failure
    // (not permitted) leaves the default policy, which is fine.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
    }
}
