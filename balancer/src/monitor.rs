//! The active side of health: one probe loop per node, and the member list
//! polled from a healthy node to learn nodes and draining marks.
//!
//! This is the only place that turns time into health results; what a
//! result means and when a node flips is decided by `health` and `table`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::health::Transition;
use crate::probe;
use crate::server::Shared;

/// Runs until `stop` turns true (or the task is aborted): keeps one probe
/// loop per node of the table and, with discovery on, applies the member
/// list once per health interval.
pub async fn supervise(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let settings = &shared.settings;
    let mut loops = JoinSet::new();
    let mut running: HashMap<(u64, u64), AbortHandle> = HashMap::new();
    let mut tick = tokio::time::interval(settings.health_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut warned_refused = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let targets = shared.table.lock().probe_targets();
        running.retain(|key, handle| {
            let keep = targets.iter().any(|(id, generation, _)| (*id, *generation) == *key);
            if !keep {
                handle.abort();
            }
            keep
        });
        while loops.try_join_next().is_some() {}
        for (id, generation, addr) in targets {
            running
                .entry((id, generation))
                .or_insert_with(|| loops.spawn(probe_loop(shared.clone(), id, generation, addr)));
        }
        if settings.discover {
            poll_members(&shared, &mut warned_refused).await;
        }
    }
    // Dropping the set stops every probe loop.
}

async fn probe_loop(shared: Arc<Shared>, id: u64, generation: u64, addr: std::net::SocketAddr) {
    let mut tick = tokio::time::interval(shared.settings.health_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let probe = probe::health(addr, probe_timeout(&shared)).await;
        let flip = shared.table.lock().record_probe(id, generation, &probe);
        match flip {
            Some(Transition::WentDown) => tracing::warn!(node = id, %addr, reason = ?probe, "node down"),
            Some(Transition::WentUp) => tracing::info!(node = id, %addr, "node up"),
            None => tracing::trace!(node = id, %addr, ?probe, "health check"),
        }
    }
}

/// A probe may take the connect timeout; it never delays the next node's.
fn probe_timeout(shared: &Shared) -> Duration {
    shared.settings.connect_timeout
}

/// One look at the member list; a refusal (a missing or wrong ops token)
/// is a configuration mistake, logged as a warning once per `warned`.
async fn poll_members(shared: &Shared, warned: &mut bool) {
    let Some((source_id, source)) = shared.table.lock().members_source() else { return };
    match probe::members(source, shared.settings.ops_token.as_ref(), probe_timeout(shared)).await {
        Ok(list) => {
            let Some(change) = shared.table.lock().apply_members(source_id, &list) else {
                tracing::debug!(node = source_id, from = %source, "member list ignored: it does not name its sender");
                return;
            };
            for id in change.added {
                let addr = list.iter().find(|m| m.id == id).map(|m| m.addr);
                tracing::info!(node = id, ?addr, from = %source, "node learnt from the cluster; checking it");
            }
            for id in change.removed {
                tracing::info!(node = id, from = %source, "node left the cluster");
            }
        }
        Err(e @ probe::ProbeError::Refused(_)) if !*warned => {
            *warned = true;
            tracing::warn!(from = %source, error = %e, "member list refused; only configured nodes are used");
        }
        Err(e) => tracing::debug!(from = %source, error = %e, "member list unavailable"),
    }
}
