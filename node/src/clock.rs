//! Wall-clock time in the protocol's unit.

use std::time::SystemTime;
use std::time::UNIX_EPOCH;

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
