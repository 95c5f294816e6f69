//! Open client connections per IP address, capped: one address cannot take
//! every slot of the balancer (`max_connections`) for itself.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Open connections per client address.
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
    pub fn claim(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock();
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Slot { table: self.clone(), ip })
    }

    /// Addresses with at least one open connection.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.open.lock().len()
    }
}

/// One connection's place in [`PerAddress`], given back on drop.
pub struct Slot {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl Drop for Slot {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_cap_and_slots_come_back() {
        let table = PerAddress::new(2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let mapped: IpAddr = std::net::Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped().into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = table.claim(a).expect("1 of 2");
        let second = table.claim(mapped).expect("2 of 2, the same address written as v6");
        assert!(table.claim(a).is_none(), "a third");
        let other = table.claim(b).expect("another address");
        drop(first);
        let again = table.claim(a).expect("a slot freed up");
        drop((second, again, other));
        assert_eq!(table.addresses(), 0);
    }
}
