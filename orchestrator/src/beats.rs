//! What a node's heartbeat must write, decided without a clock or a store.
//!
//! Heartbeats of one registration (named by its lease) are strictly sequenced. Most of them need
//! not touch the store at all: the lease is renewed once a third of its TTL has passed since the
//! last renewal (so it never has less than two thirds left), and the status (`pixelgrid nodes`)
//! is stored when the node's free slots change or the stored one is older than `status_every`.
//! That is what lets one etcd carry the heartbeats of many more nodes.

use crate::store::LeaseId;

/// One registration's heartbeat state on this replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beats {
    lease: LeaseId,
    last_sequence: u64,
    renewed_ms: Option<u64>,
    stored: Option<(u64, u32)>,
}

/// What a heartbeat must write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Writes {
    /// Renew the lease.
    pub renew: bool,
    /// Store the status.
    pub status: bool,
}

/// The timings the decisions follow, ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The registration lease's TTL.
    pub lease_ttl_ms: u64,
    /// Longest a stored status may go unrefreshed.
    pub status_every_ms: u64,
}

impl Beats {
    /// The state of registration `lease`, before its first heartbeat.
    pub fn new(lease: LeaseId) -> Self {
        Self {
            lease,
            last_sequence: 0,
            renewed_ms: None,
            stored: None,
        }
    }

    /// The registration this state is of.
    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    /// Takes heartbeat `sequence` of registration `lease` at `now_ms` (a monotonic clock),
    /// reporting `free_slots`. A new registration starts afresh; a sequence not after the last
    /// one is refused with the last one.
    pub fn take(
        &mut self,
        lease: LeaseId,
        sequence: u64,
        free_slots: u32,
        now_ms: u64,
        timing: Timing,
    ) -> Result<Writes, u64> {
        if lease != self.lease {
            *self = Self::new(lease);
        }
        if sequence <= self.last_sequence {
            return Err(self.last_sequence);
        }
        self.last_sequence = sequence;
        let renew = self
            .renewed_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= timing.lease_ttl_ms / 3);
        let status = self.stored.is_none_or(|(at, free)| {
            free != free_slots || now_ms.saturating_sub(at) >= timing.status_every_ms
        });
        Ok(Writes { renew, status })
    }

    /// The lease was renewed at `now_ms`.
    pub fn renewed(&mut self, now_ms: u64) {
        self.renewed_ms = Some(now_ms);
    }

    /// The status with `free_slots` was stored at `now_ms`.
    pub fn stored(&mut self, now_ms: u64, free_slots: u32) {
        self.stored = Some((now_ms, free_slots));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: Timing = Timing {
        lease_ttl_ms: 5_000,
        status_every_ms: 5_000,
    };

    /// Heartbeats every second for `seconds`, writing what is asked; the writes made.
    fn run(b: &mut Beats, lease: LeaseId, from: u64, seconds: u64, free: u32) -> Vec<Writes> {
        (0..seconds)
            .map(|s| {
                let now = (from + s) * 1_000;
                let w = b.take(lease, from + s + 1, free, now, TIMING).unwrap();
                if w.renew {
                    b.renewed(now);
                }
                if w.status {
                    b.stored(now, free);
                }
                w
            })
            .collect()
    }

    #[test]
    fn the_lease_keeps_two_thirds_of_its_ttl_and_the_status_is_stored_when_it_changes_or_ages() {
        let mut b = Beats::new(7);
        let w = run(&mut b, 7, 0, 10, 4);
        let renewals: Vec<usize> = (0..10).filter(|i| w[*i].renew).collect();
        assert_eq!(renewals, vec![0, 2, 4, 6, 8], "every 2 s with a 5 s TTL");
        let stores: Vec<usize> = (0..10).filter(|i| w[*i].status).collect();
        assert_eq!(stores, vec![0, 5], "every 5 s while nothing changes");
        // A slot taken: stored at once.
        let w = b.take(7, 11, 3, 10_000, TIMING).unwrap();
        assert!(w.status);
    }

    #[test]
    fn a_write_that_failed_is_asked_for_again_and_replays_are_refused() {
        let mut b = Beats::new(7);
        // First heartbeat: both asked, neither done (the store failed).
        assert_eq!(
            b.take(7, 1, 4, 0, TIMING),
            Ok(Writes {
                renew: true,
                status: true
            })
        );
        assert_eq!(
            b.take(7, 2, 4, 1_000, TIMING),
            Ok(Writes {
                renew: true,
                status: true
            })
        );
        assert_eq!(b.take(7, 2, 4, 1_500, TIMING), Err(2), "a replay");
        assert_eq!(b.take(7, 1, 4, 1_500, TIMING), Err(2), "a reordering");
        // Registered again: its sequence starts afresh and everything is written.
        assert_eq!(
            b.take(8, 1, 4, 2_000, TIMING),
            Ok(Writes {
                renew: true,
                status: true
            })
        );
    }
}
