//! Threads that do work nobody waits for (the search index, the room
//! store's flushes) give way to those that answer clients.

/// Lowers the calling thread's scheduling priority (niceness 10), so that
/// its bursts of work queue behind the request threads instead of taking
/// the core from them; on Linux niceness is per thread, and threads it
/// starts inherit it. `what` names the thread in the log when it cannot.
pub(crate) fn lower_priority(what: &str) {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::nice(10) {
        tracing::debug!(error = %e, "{what}: the thread keeps its priority");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = what;
}
