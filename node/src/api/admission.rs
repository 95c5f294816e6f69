//! Who may hold a connection: the count of open connections per client
//! address (the real one, after any PROXY header), and refusals that are
//! counted always but logged at most once per second, so a flood of
//! refused connections cannot flood the log too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;

/// Open connections per client address, capped.
pub struct PerAddress {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    /// A table allowing `limit` connections per address.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { limit, open: Mutex::new(HashMap::new()) })
    }

    /// A slot for one more connection from `ip`, or `None` at the cap.
    pub fn claim(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let mut open = self.open.lock();
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(AddressSlot { table: self.clone(), ip })
    }

    /// Connections open from `ip` now.
    #[cfg(test)]
    pub fn count(&self, ip: IpAddr) -> usize {
        self.open.lock().get(&ip).copied().unwrap_or(0)
    }

    /// Addresses with at least one connection (the table never keeps zeros).
    #[cfg(test)]
    pub fn addresses(&self) -> usize {
        self.open.lock().len()
    }
}

/// One connection's place in [`PerAddress`], given back on drop.
pub struct AddressSlot {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Why a connection was closed without being served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.max_connections` reached on this node.
    MaxConnections,
    /// `limits.max_connections_per_address` reached for the client's address.
    PerAddress,
    /// A trusted proxy sent a malformed PROXY header.
    ProxyHeader,
}

impl Refusal {
    /// The `reason` label of `palaver_connections_refused_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::PerAddress => "per_address",
            Refusal::ProxyHeader => "proxy_header",
        }
    }
}

/// Counts every refusal; logs at most one line per second, with how many
/// refusals that line stands for.
pub struct RefusalLog {
    start: std::time::Instant,
    /// Milliseconds since `start` of the last line written (0: none yet).
    last_ms: AtomicU64,
    /// Refusals since the last line written.
    unlogged: AtomicU64,
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self { start: std::time::Instant::now(), last_ms: AtomicU64::new(0), unlogged: AtomicU64::new(0) }
    }
}

impl RefusalLog {
    /// Records a refusal of a connection from `ip`.
    pub fn refused(&self, reason: Refusal, ip: IpAddr, detail: &str) {
        metrics::counter!("palaver_connections_refused_total", "reason" => reason.as_str()).increment(1);
        let count = self.unlogged.fetch_add(1, Ordering::Relaxed) + 1;
        if self.may_log() {
            self.unlogged.fetch_sub(count, Ordering::Relaxed);
            tracing::warn!(reason = reason.as_str(), %ip, refused = count, "refusing client connections: {detail}");
        }
    }

    /// True at most once per second (the first time at once).
    fn may_log(&self) -> bool {
        // +1 so that 0 keeps meaning "never logged".
        self.may_log_at(self.start.elapsed().as_millis() as u64 + 1)
    }

    fn may_log_at(&self, now: u64) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now < last + 1000 {
            return false;
        }
        self.last_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_per_address_and_slots_come_back() {
        let table = PerAddress::new(2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = table.claim(a).expect("1 of 2");
        let second = table.claim(a).expect("2 of 2");
        assert!(table.claim(a).is_none(), "a third from the same address");
        let other = table.claim(b).expect("another address has its own count");
        assert_eq!((table.count(a), table.count(b)), (2, 1));
        drop(first);
        let again = table.claim(a).expect("a slot freed up");
        drop((second, again, other));
        assert_eq!(table.addresses(), 0, "no zero entries are kept");
    }

    #[test]
    fn refusals_are_logged_at_most_once_per_second() {
        let log = RefusalLog::default();
        assert!(log.may_log_at(5), "the first refusal is logged");
        assert!(!log.may_log_at(6), "the next one is not");
        assert!(!log.may_log_at(1004), "nor one 999 ms later");
        assert!(log.may_log_at(1005), "a second later one is");
        assert!(!log.may_log_at(1500));
    }
}
