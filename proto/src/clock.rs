//! The wall clock, for the shells (the deciding cores take time as an argument).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, Unix milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Now, Unix milliseconds with sub-millisecond precision (latency measurements).
pub fn unix_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}
