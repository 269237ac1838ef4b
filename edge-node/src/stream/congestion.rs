//! Congestion control: the player's link decides the stream's shape.
//!
//! Every viewer's peer connection runs send-side congestion control from `rtc-interceptor`: the
//! node stamps each RTP packet with a transport-wide sequence number, the player (browser or Rust
//! SDK) reports arrival times in transport-cc feedback every 50–100 ms, and a Google Congestion
//! Control estimator (delay trend + loss) turns them into a target bitrate, which
//! [`EstimateTap`] hands to the session. Each frame's packets are paced ([`FramePacing`]) at
//! [`PACING_FACTOR`] × the estimate, so a keyframe leaves spread over part of a frame interval
//! instead of as one burst into the bottleneck's queue — but never slower than half a frame
//! interval per frame, so no backlog builds up at the sender. (A packet-level pacer that keeps
//! its own queue, like `rtc-interceptor`'s, was measured here to hold seconds of old video after
//! the estimate fell: the link stayed full of stale frames and the estimate sank to its floor.)
//!
//! [`Ladder`] is the deciding core, clock-free: given the estimate (the lowest of the session's
//! viewers) it sets the encoder's bitrate at once and, when the bitrate is too low for the mode,
//! steps down a documented ladder — bitrate first, then frame rate — and back up with hysteresis
//! as the link recovers. Lowering the resolution as a third rung is not done yet: a new size
//! needs a new renderer and encoder, which this node does only at session start.
//!
//! | rung | frame rate | used while the bitrate is at least |
//! |------|------------|------------------------------------|
//! | 0    | full       | 45 % of the mode's full bitrate    |
//! | 1    | half       | (below that)                       |
//!
//! A rung is left downward after the budget stayed under its floor for [`Ladder::STEP_DOWN_MS`]
//! and upward after it stayed 30 % above the upper rung's floor for [`Ladder::STEP_UP_MS`]; the
//! bitrate itself follows every estimate.

use rtc::interceptor::{Attribute, Interceptor, StreamInfo, TaggedPacket};
use rtc::sansio::Protocol;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The pacer releases at this multiple of the estimate (libwebrtc's video pacing factor): enough
/// to clear a keyframe in a few frame times, little enough not to flood a shallow queue.
pub const PACING_FACTOR: f64 = 2.5;

/// Share of the estimate given to the video encoder; the rest covers audio, retransmissions and
/// headers.
pub const VIDEO_SHARE: f64 = 0.75;

/// The lowest bitrate the encoder is asked for, kbit/s.
pub const MIN_KBPS: u32 = 150;

/// What the encoder should produce now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamShape {
    /// Target bitrate, kbit/s.
    pub bitrate_kbps: u32,
    /// Encode one frame in this many (1 = the mode's full frame rate).
    pub fps_divisor: u32,
}

/// The bitrate/frame-rate ladder of one session (see the module docs).
#[derive(Debug, Clone)]
pub struct Ladder {
    full_kbps: u32,
    fps: u32,
    shape: StreamShape,
    /// Since when the budget has been below the current rung's floor.
    below_since: Option<u64>,
    /// Since when it has been comfortably above the upper rung's floor.
    above_since: Option<u64>,
}

impl Ladder {
    /// How long the budget must stay under a rung's floor before the frame rate drops, ms.
    pub const STEP_DOWN_MS: u64 = 1_000;
    /// How long it must stay above the upper rung before the frame rate comes back, ms.
    pub const STEP_UP_MS: u64 = 4_000;
    /// Rung 0 needs at least this share of the full bitrate.
    const FULL_FPS_FLOOR: f64 = 0.45;
    /// Hysteresis above a floor before stepping back up.
    const UP_MARGIN: f64 = 1.3;
    /// A new bitrate within this share of the current one is not worth reconfiguring for.
    const DEADBAND: f64 = 0.05;

    /// A ladder for a mode whose full bitrate is `full_kbps` at `fps` frames per second; it starts
    /// at the top.
    pub fn new(full_kbps: u32, fps: u32) -> Self {
        Self {
            full_kbps: full_kbps.max(MIN_KBPS),
            fps: fps.max(1),
            shape: StreamShape {
                bitrate_kbps: full_kbps.max(MIN_KBPS),
                fps_divisor: 1,
            },
            below_since: None,
            above_since: None,
        }
    }

    /// What the encoder produces now.
    pub fn shape(&self) -> StreamShape {
        self.shape
    }

    /// The frame rate of the current rung.
    pub fn fps(&self) -> u32 {
        (self.fps / self.shape.fps_divisor).max(1)
    }

    /// The estimate an encoder at full rate needs, bit/s: what the estimator should start from.
    pub fn full_estimate_bps(&self) -> f64 {
        f64::from(self.full_kbps) * 1000.0 / VIDEO_SHARE
    }

    /// The floor of rung 0, kbit/s.
    fn full_fps_floor(&self) -> f64 {
        f64::from(self.full_kbps) * Self::FULL_FPS_FLOOR
    }

    /// Takes a new estimate (bit/s) at `now_ms`; returns the new shape when it changed.
    pub fn on_estimate(&mut self, now_ms: u64, estimate_bps: f64) -> Option<StreamShape> {
        if !estimate_bps.is_finite() || estimate_bps <= 0.0 {
            return None;
        }
        let budget = estimate_bps * VIDEO_SHARE / 1000.0;
        let bitrate = budget.clamp(f64::from(MIN_KBPS), f64::from(self.full_kbps)) as u32;
        let mut next = self.shape;
        let floor = self.full_fps_floor();
        if self.shape.fps_divisor == 1 {
            self.above_since = None;
            if budget < floor {
                let since = *self.below_since.get_or_insert(now_ms);
                if now_ms.saturating_sub(since) >= Self::STEP_DOWN_MS {
                    next.fps_divisor = 2;
                    self.below_since = None;
                }
            } else {
                self.below_since = None;
            }
        } else {
            self.below_since = None;
            if budget >= floor * Self::UP_MARGIN {
                let since = *self.above_since.get_or_insert(now_ms);
                if now_ms.saturating_sub(since) >= Self::STEP_UP_MS {
                    next.fps_divisor = 1;
                    self.above_since = None;
                }
            } else {
                self.above_since = None;
            }
        }
        let current = f64::from(self.shape.bitrate_kbps);
        let at_bound = bitrate == MIN_KBPS || bitrate == self.full_kbps;
        if (f64::from(bitrate) - current).abs() > current * Self::DEADBAND
            || (at_bound && bitrate != self.shape.bitrate_kbps)
        {
            next.bitrate_kbps = bitrate;
        }
        (next != self.shape).then(|| {
            self.shape = next;
            next
        })
    }
}

/// How one frame's packets leave: `burst` packets at a time with `gap` between bursts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePacing {
    /// Packets sent back to back.
    pub burst: usize,
    /// Wait between bursts.
    pub gap: std::time::Duration,
}

impl FramePacing {
    /// The timer granularity the shell can keep.
    pub const GAP: std::time::Duration = std::time::Duration::from_millis(1);

    /// Paces a frame of `bytes` in `packets` at [`PACING_FACTOR`] × `estimate_bps`, finishing
    /// within half of `frame_interval` whatever the estimate. All at once before the first
    /// estimate, and while the estimate is at least `unconstrained_bps` (the link carries the
    /// mode's full rate: spreading frames there would only add latency — measured here, 5 ms
    /// of glass-to-glass at 720p60).
    pub fn for_frame(
        bytes: usize,
        packets: usize,
        estimate_bps: u64,
        unconstrained_bps: u64,
        frame_interval: std::time::Duration,
    ) -> Self {
        let all_at_once = Self {
            burst: packets.max(1),
            gap: std::time::Duration::ZERO,
        };
        if estimate_bps == 0 || estimate_bps >= unconstrained_bps || packets <= 1 {
            return all_at_once;
        }
        let bits = bytes as f64 * 8.0;
        let rate = (estimate_bps as f64 * PACING_FACTOR)
            .max(bits / (frame_interval.as_secs_f64() / 2.0).max(1e-3));
        let spread = std::time::Duration::from_secs_f64(bits / rate);
        let gaps = (spread.as_micros() / Self::GAP.as_micros()) as usize;
        if gaps == 0 {
            return all_at_once;
        }
        Self {
            burst: packets.div_ceil(gaps + 1),
            gap: Self::GAP,
        }
    }
}

/// Retransmissions may use this share of the link estimate; the rest is for new video.
pub const RETRANSMIT_SHARE: f64 = 0.15;

/// The estimator's ceiling as a multiple of what the mode's full bitrate needs. Above that the
/// encoder cannot use more, and an estimate left to probe upward (GCC's loss half adds 5 % every
/// 200 ms on a clean link) only takes longer to come down when the link shrinks.
pub const ESTIMATE_HEADROOM: f64 = 1.1;

/// A token bucket over retransmitted bytes, refilled at [`RETRANSMIT_SHARE`] of the estimate
/// (at least 64 kbit/s) up to 100 ms of it. A player that asks for every lost packet again and
/// again (a naive NACK generator, or a hostile one) must not fill the very link that is losing
/// them: past the budget a retransmission is not sent. Time comes in as an argument.
#[derive(Debug, Clone, Default)]
pub struct RetransmitBudget {
    tokens_bits: f64,
    last: Option<Instant>,
}

impl RetransmitBudget {
    const FLOOR_BPS: f64 = 64_000.0;
    const DEPTH_S: f64 = 0.1;

    /// May a retransmission of `bytes` leave at `now`, with the link estimated at
    /// `estimate_bps` (0 = none yet)?
    pub fn admit(&mut self, now: Instant, estimate_bps: u64, bytes: usize) -> bool {
        let rate = (estimate_bps as f64 * RETRANSMIT_SHARE).max(Self::FLOOR_BPS);
        let depth = rate * Self::DEPTH_S;
        let elapsed = self.last.map_or(Self::DEPTH_S, |t| {
            now.saturating_duration_since(t).as_secs_f64()
        });
        // Time running backwards (a caller's bug) neither refills nor moves the mark back.
        self.last = Some(self.last.map_or(now, |t| t.max(now)));
        self.tokens_bits = (self.tokens_bits + elapsed * rate).min(depth);
        let bits = bytes as f64 * 8.0;
        if self.tokens_bits >= bits {
            self.tokens_bits -= bits;
            true
        } else {
            false
        }
    }
}

/// Applies a [`RetransmitBudget`] to the NACK responder's output (write leg, wire-ward of it).
pub(crate) struct RetransmitLimiter {
    budget: RetransmitBudget,
    estimate: SharedEstimate,
    /// What the budget follows while there is no estimate (none yet, or congestion control
    /// off): the rate the mode's full bitrate needs.
    fallback_bps: u64,
    dropped: Arc<AtomicU64>,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl RetransmitLimiter {
    /// Follows `estimate` (`fallback_bps` while it is 0); counts what it holds back in
    /// `dropped`.
    pub(crate) fn new(
        estimate: SharedEstimate,
        fallback_bps: u64,
        dropped: Arc<AtomicU64>,
    ) -> Self {
        Self {
            budget: RetransmitBudget::default(),
            estimate,
            fallback_bps,
            dropped,
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for RetransmitLimiter {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> std::result::Result<(), Self::Error> {
        self.read.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> std::result::Result<(), Self::Error> {
        if let rtc::interceptor::Packet::Rtp(p) = &msg.message.packet
            && msg.message.has(&Attribute::Retransmission)
        {
            let bytes = p.payload.len() + 12;
            let estimate = match self.estimate.load(Ordering::Relaxed) {
                0 => self.fallback_bps,
                e => e,
            };
            if !self.budget.admit(msg.now, estimate, bytes) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        self.write.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for RetransmitLimiter {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

/// The latest estimate of one viewer's link, bit/s (0 until the first feedback).
pub type SharedEstimate = Arc<AtomicU64>;

/// Sits application-ward of the congestion controller on the read leg and records each new
/// estimate for the session.
pub(crate) struct EstimateTap {
    estimate: SharedEstimate,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl EstimateTap {
    pub(crate) fn new(estimate: SharedEstimate) -> Self {
        Self {
            estimate,
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for EstimateTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> std::result::Result<(), Self::Error> {
        for a in &msg.message.attributes {
            if let Attribute::TargetBitrateChanged { bits_per_second } = a {
                self.estimate
                    .store(bits_per_second.max(0.0) as u64, Ordering::Relaxed);
            }
        }
        self.read.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> std::result::Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for EstimateTap {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

/// The node's congestion-feedback path on its own — what a player's RTCP reaches — for the fuzz
/// target and tests: the same estimator and ladder a stream runs, after one stream of this node
/// has sent [`FeedbackPath::SENT`] packets numbered for transport-cc.
pub struct FeedbackPath {
    cc: rtc::interceptor::CongestionControlInterceptor<rtc::interceptor::Gcc>,
    tap: EstimateTap,
    estimate: SharedEstimate,
    ladder: Ladder,
    t0: Instant,
    fed: u32,
    next_seq: u16,
}

impl std::fmt::Debug for FeedbackPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedbackPath")
            .field("fed", &self.fed)
            .finish_non_exhaustive()
    }
}

impl FeedbackPath {
    /// Packets sent before any feedback.
    pub const SENT: u16 = 64;
    /// The stream's SSRC.
    pub const SSRC: u32 = 0x5047_0001;
    /// The full bitrate of the mode it stands for (1280x720@60), kbit/s.
    pub const FULL_KBPS: u32 = 5_529;
    const TWCC_ID: u8 = 5;

    /// The path, with its packets sent one per millisecond.
    pub fn new() -> Self {
        use rtc::interceptor::{CongestionControlBuilder, Gcc, RTPHeaderExtension};
        let ladder = Ladder::new(Self::FULL_KBPS, 60);
        let initial = ladder.full_estimate_bps();
        let mut cc = CongestionControlBuilder::new(Gcc::new(
            initial,
            f64::from(MIN_KBPS) * 1000.0,
            initial * ESTIMATE_HEADROOM,
        ))
        .build();
        cc.bind_local_stream(&StreamInfo {
            ssrc: Self::SSRC,
            clock_rate: 90_000,
            rtp_header_extensions: vec![RTPHeaderExtension {
                uri: rtc::sdp::extmap::TRANSPORT_CC_URI.into(),
                id: u16::from(Self::TWCC_ID),
            }],
            ..Default::default()
        });
        let t0 = Instant::now();
        let estimate = SharedEstimate::default();
        let mut path = Self {
            cc,
            tap: EstimateTap::new(Arc::clone(&estimate)),
            estimate,
            ladder,
            t0,
            fed: 0,
            next_seq: 0,
        };
        path.send(Self::SENT);
        path
    }

    /// Sends `n` more packets of 1 kB, numbered on from the last, 1 ms apart, before the next
    /// feedback.
    pub fn send(&mut self, n: u16) {
        use rtc::shared::marshal::Marshal;
        let at = self.t0 + std::time::Duration::from_millis(100 + 50 * u64::from(self.fed));
        for k in 0..n {
            let seq = self.next_seq;
            self.next_seq = self.next_seq.wrapping_add(1);
            let mut packet = rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    ssrc: Self::SSRC,
                    sequence_number: seq,
                    ..Default::default()
                },
                payload: bytes::Bytes::from_static(&[0u8; 1_000]),
            };
            let ext = rtc::rtp::extension::transport_cc_extension::TransportCcExtension {
                transport_sequence: seq,
            };
            if let Ok(b) = ext.marshal() {
                let _ = packet.header.set_extension(Self::TWCC_ID, b.freeze());
            }
            let _ = self.cc.handle_write(TaggedPacket {
                now: at + std::time::Duration::from_millis(u64::from(k) % 40),
                transport: Default::default(),
                message: rtc::interceptor::AttributedPacket::new(rtc::interceptor::Packet::Rtp(
                    packet,
                )),
            });
            while self.cc.poll_write().is_some() {}
        }
    }

    /// Feeds one RTCP datagram's bytes (as SRTCP decrypted them) 50 ms after the previous one;
    /// returns the estimate (bit/s) and the shape the ladder then asks of the encoder.
    pub fn feed(&mut self, rtcp: &[u8]) -> (f64, StreamShape) {
        self.fed += 1;
        let now = self.t0 + std::time::Duration::from_millis(100 + 50 * u64::from(self.fed));
        let mut buf = rtcp;
        if let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut buf) {
            let msg = TaggedPacket {
                now,
                transport: Default::default(),
                message: rtc::interceptor::AttributedPacket::new(rtc::interceptor::Packet::Rtcp(
                    packets,
                )),
            };
            let _ = self.cc.handle_read(msg);
            while let Some(out) = self.cc.poll_read() {
                let _ = self.tap.handle_read(out);
                while self.tap.poll_read().is_some() {}
            }
        }
        use rtc::interceptor::BandwidthEstimator as _;
        let estimate = self.cc.estimator().target_bitrate();
        let _ = self.ladder.on_estimate(
            u64::from(self.fed) * 50,
            self.estimate.load(Ordering::Relaxed) as f64,
        );
        (estimate, self.ladder.shape())
    }

    /// The bounds the estimate must stay within, bit/s.
    pub fn bounds(&self) -> (f64, f64) {
        let initial = Ladder::new(Self::FULL_KBPS, 60).full_estimate_bps();
        (f64::from(MIN_KBPS) * 1000.0, initial * ESTIMATE_HEADROOM)
    }
}

impl Default for FeedbackPath {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: u32 = 5_500;

    fn bps(kbps: f64) -> f64 {
        kbps * 1000.0 / VIDEO_SHARE
    }

    #[test]
    fn the_bitrate_follows_each_estimate_at_once_within_its_bounds() {
        let mut l = Ladder::new(FULL, 60);
        assert_eq!(l.shape().bitrate_kbps, FULL);
        let s = l
            .on_estimate(0, bps(3_000.0))
            .expect("a lower estimate changes the bitrate");
        assert_eq!(s.bitrate_kbps, 3_000);
        assert_eq!(s.fps_divisor, 1);
        // Small wobbles are not worth an encoder reconfiguration.
        assert_eq!(l.on_estimate(50, bps(3_050.0)), None);
        // Never above the mode's full bitrate, never below the floor.
        assert_eq!(
            l.on_estimate(100, bps(50_000.0)).unwrap().bitrate_kbps,
            FULL
        );
        assert_eq!(l.on_estimate(150, 1.0).unwrap().bitrate_kbps, MIN_KBPS);
        // Nonsense changes nothing.
        for bad in [f64::NAN, f64::INFINITY, -5.0, 0.0] {
            assert_eq!(l.on_estimate(200, bad), None);
        }
    }

    #[test]
    fn a_frame_is_spread_at_the_pacing_rate_but_never_past_half_a_frame_interval() {
        let frame = std::time::Duration::from_millis(33);
        let full = 7_000_000;
        // Before any estimate, and for one packet: all at once.
        let none = std::time::Duration::ZERO;
        assert_eq!(FramePacing::for_frame(20_000, 18, 0, full, frame).gap, none);
        assert_eq!(
            FramePacing::for_frame(900, 1, 1_000_000, full, frame).burst,
            1
        );
        // A link that carries the full rate gets every frame at once.
        assert_eq!(
            FramePacing::for_frame(20_000, 18, full, full, frame).gap,
            none
        );
        // A 1.5 kB P-frame at a 400 kbit/s estimate: 12 kbit at 1 Mbit/s ≈ 12 ms, so its two
        // packets leave one per burst.
        let p = FramePacing::for_frame(1_500, 2, 400_000, full, frame);
        assert_eq!((p.burst, p.gap), (1, FramePacing::GAP));
        // A 40 kB keyframe at the same estimate would take 128 ms at 2.5×; it is squeezed into
        // half a frame interval (16 ms): 36 packets in 17 bursts of at most 3.
        let k = FramePacing::for_frame(40_000, 36, 400_000, full, frame);
        assert_eq!(k.gap, FramePacing::GAP);
        assert!(k.burst * 17 >= 36 && k.burst <= 3, "{k:?}");
        // A fast link sends a small frame at once.
        let f = FramePacing::for_frame(1_200, 2, 50_000_000, 60_000_000, frame);
        assert_eq!(f.gap, std::time::Duration::ZERO);
    }

    #[test]
    fn retransmissions_get_a_share_of_the_estimate_and_no_more() {
        let mut b = RetransmitBudget::default();
        let t0 = Instant::now();
        // 1 Mbit/s estimate → 150 kbit/s for retransmissions: over 2 s of a storm of 1,200-byte
        // resends every millisecond (9.6 Mbit/s asked), about 300 kbit get through.
        let mut sent_bits = 0.0;
        for ms in 0..2_000u64 {
            if b.admit(t0 + std::time::Duration::from_millis(ms), 1_000_000, 1_200) {
                sent_bits += 9_600.0;
            }
        }
        assert!(
            (270_000.0..=330_000.0).contains(&sent_bits),
            "{sent_bits} bits of retransmissions in 2 s"
        );
        // A quiet spell refills the bucket, but only to 100 ms of budget.
        let later = t0 + std::time::Duration::from_secs(10);
        let burst = (0..100)
            .filter(|_| b.admit(later, 1_000_000, 1_200))
            .count();
        assert_eq!(burst, 1, "15 kbit of depth = one 9.6 kbit packet");
        // Time running backwards (a caller's bug) grants nothing, even to an empty-ish bucket
        // that a forward step would have refilled.
        let mut fresh = RetransmitBudget::default();
        let t1 = t0 + std::time::Duration::from_secs(1);
        while fresh.admit(t1, 1_000_000, 1_200) {}
        assert!(!fresh.admit(t0, 1_000_000, 1_200));
        assert!(
            !fresh.admit(t1, 1_000_000, 1_200),
            "the mark did not move back to t0"
        );
    }

    /// A transport-cc feedback packet for the path's stream reporting packets `first..first+n`
    /// with `lost` ones missing, each `delta_ms` after the previous.
    fn twcc(first: u16, n: u16, lost: &[u16], delta_ms: i64, feedback_count: u8) -> Vec<u8> {
        use rtc::rtcp::transport_feedbacks::transport_layer_cc::*;
        use rtc::shared::marshal::Marshal;
        let mut chunks = Vec::new();
        let mut deltas = Vec::new();
        let symbols: Vec<SymbolTypeTcc> = (0..n)
            .map(|k| first.wrapping_add(k))
            .map(|i| {
                if lost.contains(&i) {
                    SymbolTypeTcc::PacketNotReceived
                } else {
                    deltas.push(RecvDelta {
                        type_tcc_packet: SymbolTypeTcc::PacketReceivedSmallDelta,
                        delta: delta_ms * 1000,
                    });
                    SymbolTypeTcc::PacketReceivedSmallDelta
                }
            })
            .collect();
        for group in symbols.chunks(7) {
            let mut list = group.to_vec();
            list.resize(7, SymbolTypeTcc::PacketNotReceived);
            chunks.push(PacketStatusChunk::StatusVectorChunk(StatusVectorChunk {
                type_tcc: StatusChunkTypeTcc::StatusVectorChunk,
                symbol_size: SymbolSizeTypeTcc::TwoBit,
                symbol_list: list,
            }));
        }
        TransportLayerCc {
            sender_ssrc: 1,
            media_ssrc: FeedbackPath::SSRC,
            base_sequence_number: first,
            packet_status_count: n,
            reference_time: 1,
            fb_pkt_count: feedback_count,
            packet_chunks: chunks,
            recv_deltas: deltas,
        }
        .marshal()
        .map(|b| b.to_vec())
        .unwrap_or_default()
    }

    #[test]
    fn hostile_feedback_neither_crashes_the_path_nor_moves_the_bitrate_out_of_bounds() {
        let mut path = FeedbackPath::new();
        let (low, high) = path.bounds();
        let within = |(e, s): (f64, StreamShape)| {
            assert!(e.is_finite() && e >= low && e <= high, "estimate {e}");
            assert!(
                (MIN_KBPS..=FeedbackPath::FULL_KBPS).contains(&s.bitrate_kbps),
                "{s:?}"
            );
            e
        };
        // Honest feedback first: every packet arrived, 1 ms apart.
        within(path.feed(&twcc(0, 32, &[], 1, 0)));
        // Garbage, truncated, absurd counts, sequence numbers that wrap or were never sent,
        // huge deltas, and everything lost.
        let mut absurd = twcc(40, 20, &[], 1, 1);
        absurd[14] = 0xff; // packet_status_count high byte
        for bytes in [
            vec![],
            vec![0x80],
            vec![0x8f, 205, 0xff, 0xff],
            absurd,
            twcc(65_530, 40, &[], 1, 2),
            twcc(30_000, 100, &[], 250, 3),
            twcc(0, 64, &(0..64).collect::<Vec<_>>(), 1, 4),
            twcc(10, 30, &[], -250, 5),
        ] {
            within(path.feed(&bytes));
        }
        // Half of every batch lost, for seconds: the estimate comes down, but never below its
        // floor.
        let mut last = high;
        for i in 0..100u16 {
            let first = FeedbackPath::SENT + i * 32;
            path.send(32);
            let lost: Vec<u16> = (first..first + 32).filter(|s| s % 2 == 0).collect();
            last = within(path.feed(&twcc(first, 32, &lost, 1, i as u8)));
        }
        assert!(
            last < high / 1.5,
            "reported loss lowered the estimate: {last}"
        );
    }

    #[test]
    fn a_sustained_low_estimate_halves_the_frame_rate_and_a_recovered_one_restores_it() {
        let mut l = Ladder::new(FULL, 60);
        let low = bps(1_500.0); // under 45 % of 5,500
        let mut t = 0;
        // A brief dip keeps the frame rate.
        l.on_estimate(t, low);
        t += 500;
        l.on_estimate(t, bps(5_000.0));
        assert_eq!(l.fps(), 60);
        // A sustained one halves it after STEP_DOWN_MS.
        let start = t;
        while l.fps() == 60 {
            t += 50;
            l.on_estimate(t, low);
            assert!(
                t - start <= Ladder::STEP_DOWN_MS + 50,
                "stepped down by now"
            );
        }
        assert_eq!(l.shape().fps_divisor, 2);
        assert!(t - start >= Ladder::STEP_DOWN_MS);
        // Just above the floor is not enough to go back up (hysteresis).
        for _ in 0..200 {
            t += 50;
            l.on_estimate(t, bps(2_600.0));
        }
        assert_eq!(l.fps(), 30);
        // Comfortably above for STEP_UP_MS is.
        let start = t;
        while l.fps() == 30 {
            t += 50;
            l.on_estimate(t, bps(4_000.0));
            assert!(t - start <= Ladder::STEP_UP_MS + 50);
        }
        assert_eq!(
            l.shape(),
            StreamShape {
                bitrate_kbps: 4_000,
                fps_divisor: 1
            }
        );
    }
}
