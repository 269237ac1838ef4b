//! Puts a video track's RTP packets back in sequence order before they are depacketised, waiting
//! a little for a missing one — its retransmission is on the way once the NACK went out — rather
//! than handing the depacketiser a gap, which costs that frame and every frame after it until
//! the next keyframe. A packet that arrives in order is released at once: no delay is added
//! while nothing is lost.
//!
//! Clock-free: the caller passes the time with every call and asks [`Reorder::deadline`] when
//! to call [`Reorder::poll`] next.

use std::collections::BTreeMap;

/// How long a gap is waited for at least and at most, ms.
const MIN_WAIT_MS: f64 = 30.0;
const MAX_WAIT_MS: f64 = 150.0;

/// The reorder buffer of one stream (see the module docs).
#[derive(Debug)]
pub struct Reorder<P> {
    wait_ms: f64,
    capacity: usize,
    /// The extended sequence number released next.
    next: Option<u64>,
    /// The highest extended sequence number seen, for unwrapping.
    highest: Option<u64>,
    held: BTreeMap<u64, (f64, P)>,
    /// Packets given up on (never arrived in time).
    pub skipped: u64,
    /// Packets that came after their turn had passed (late or duplicate), dropped.
    pub late: u64,
}

impl<P> Reorder<P> {
    /// A buffer holding at most `capacity` packets behind a gap.
    pub fn new(capacity: usize) -> Self {
        Self {
            wait_ms: 50.0,
            capacity: capacity.max(1),
            next: None,
            highest: None,
            held: BTreeMap::new(),
            skipped: 0,
            late: 0,
        }
    }

    /// Follows the round trip to the sender: a retransmission takes about one, plus the NACK
    /// generator's interval.
    pub fn set_rtt(&mut self, rtt_ms: f64) {
        if rtt_ms.is_finite() && rtt_ms >= 0.0 {
            self.wait_ms = (25.0 + 1.5 * rtt_ms).clamp(MIN_WAIT_MS, MAX_WAIT_MS);
        }
    }

    /// How long a gap is waited for now, ms.
    pub fn wait_ms(&self) -> f64 {
        self.wait_ms
    }

    fn extend(&mut self, seq: u16) -> u64 {
        let Some(h) = self.highest else {
            // Start far from zero so a stream that begins by going backwards cannot underflow.
            let ext = (1u64 << 32) + u64::from(seq);
            self.highest = Some(ext);
            return ext;
        };
        let delta = i64::from(seq.wrapping_sub(h as u16) as i16);
        let ext = (h as i64 + delta) as u64;
        if ext > h {
            self.highest = Some(ext);
        }
        ext
    }

    /// A packet with sequence number `seq` arrived at `now_ms`; returns what may go on, in order.
    pub fn push(&mut self, now_ms: f64, seq: u16, packet: P) -> Vec<P> {
        let ext = self.extend(seq);
        let next = *self.next.get_or_insert(ext);
        if ext < next || self.held.contains_key(&ext) {
            self.late += 1;
            return Vec::new();
        }
        self.held.insert(ext, (now_ms, packet));
        if self.held.len() > self.capacity {
            self.skip_gap();
        }
        self.drain()
    }

    /// Packets released because the gap ahead of them waited long enough, at `now_ms`.
    pub fn poll(&mut self, now_ms: f64) -> Vec<P> {
        match self.deadline() {
            Some(d) if d <= now_ms => {
                self.skip_gap();
                self.drain()
            }
            _ => Vec::new(),
        }
    }

    /// When [`Reorder::poll`] next has something to do, if anything waits.
    pub fn deadline(&self) -> Option<f64> {
        self.held
            .values()
            .map(|(arrived, _)| *arrived)
            .reduce(f64::min)
            .map(|t| t + self.wait_ms)
    }

    fn skip_gap(&mut self) {
        if let (Some(next), Some((&first, _))) = (self.next, self.held.iter().next())
            && first > next
        {
            self.skipped += first - next;
            self.next = Some(first);
        }
    }

    fn drain(&mut self) -> Vec<P> {
        let mut out = Vec::new();
        while let Some(next) = self.next {
            match self.held.remove(&next) {
                Some((_, p)) => {
                    out.push(p);
                    self.next = Some(next + 1);
                }
                None => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_packets_pass_at_once() {
        let mut r = Reorder::new(64);
        for (i, seq) in (65_530u16..=65_535).chain(0..5).enumerate() {
            assert_eq!(r.push(i as f64, seq, seq), vec![seq]);
        }
        assert_eq!(r.deadline(), None);
    }

    #[test]
    fn a_retransmission_inside_the_wait_fills_its_gap_in_order() {
        let mut r = Reorder::new(64);
        r.set_rtt(2.0);
        assert_eq!(r.push(0.0, 10, 10), vec![10]);
        // 11 is lost; 12 and 13 wait for it.
        assert!(r.push(1.0, 12, 12).is_empty());
        assert!(r.push(2.0, 13, 13).is_empty());
        assert!(r.poll(20.0).is_empty(), "still inside the wait");
        assert_eq!(r.push(20.0, 11, 11), vec![11, 12, 13]);
        assert_eq!(r.skipped, 0);
        // A duplicate of something released is dropped.
        assert!(r.push(21.0, 12, 12).is_empty());
        assert_eq!(r.late, 1);
    }

    #[test]
    fn a_gap_that_outlasts_the_wait_is_skipped_and_a_straggler_dropped() {
        let mut r = Reorder::new(64);
        r.set_rtt(4.0); // 25 + 6 = 31 ms
        r.push(0.0, 100, 100);
        assert!(r.push(1.0, 102, 102).is_empty());
        assert_eq!(r.deadline(), Some(1.0 + r.wait_ms()));
        assert_eq!(r.poll(40.0), vec![102]);
        assert_eq!(r.skipped, 1);
        assert!(
            r.push(41.0, 101, 101).is_empty(),
            "too late: its frame is gone"
        );
        assert_eq!(r.push(42.0, 103, 103), vec![103]);
    }

    #[test]
    fn a_full_buffer_gives_up_on_its_gap_and_the_wait_is_bounded() {
        let mut r = Reorder::new(4);
        r.push(0.0, 0, 0);
        let mut out = Vec::new();
        for seq in 2..8u16 {
            out.extend(r.push(1.0, seq, seq));
        }
        assert_eq!(out, vec![2, 3, 4, 5, 6, 7]);
        r.set_rtt(10_000.0);
        assert_eq!(r.wait_ms(), MAX_WAIT_MS);
        r.set_rtt(f64::NAN);
        assert_eq!(r.wait_ms(), MAX_WAIT_MS);
        r.set_rtt(0.0);
        assert_eq!(r.wait_ms(), MIN_WAIT_MS);
    }
}
