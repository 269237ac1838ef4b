//! Live stream statistics, clock-free: the shell feeds packets, decoded frames and round trips
//! with their arrival times; [`StatsMeter::snapshot`] turns them into what a player notices.

use serde::Serialize;
use std::collections::VecDeque;

/// Statistics of a session's stream at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Frames decoded over the last second.
    pub fps: f64,
    /// Received video bitrate over the last second, kbit/s.
    pub bitrate_kbps: f64,
    /// Latest round trip to the node over the data channel, ms.
    pub rtt_ms: Option<f64>,
    /// RTP interarrival jitter (RFC 3550), ms.
    pub jitter_ms: f64,
    /// RTP packets received.
    pub packets_received: u64,
    /// RTP packets lost (sequence numbers never seen).
    pub packets_lost: u64,
    /// Frames decoded since the session (or its latest node) started.
    pub frames_decoded: u64,
    /// Capture on the node → decoded here, median of recent frames, ms.
    pub glass_to_glass_p50_ms: Option<f64>,
    /// Same, 99th percentile, ms.
    pub glass_to_glass_p99_ms: Option<f64>,
    /// Audio RTP packets received.
    pub audio_packets_received: u64,
    /// Audio RTP packets lost.
    pub audio_packets_lost: u64,
    /// Made on the node → decoded here, median of recent sound, ms.
    pub audio_latency_p50_ms: Option<f64>,
    /// How much later the sound arrives than the pictures it goes with (median audio latency
    /// minus median glass-to-glass), ms; negative when the sound is early.
    pub av_offset_ms: Option<f64>,
    /// The node's congestion-control estimate of this link, kbit/s (from its once-a-second
    /// stats; `None` before the first).
    pub link_estimate_kbps: Option<u64>,
    /// The bitrate the node's encoder targets now, kbit/s.
    pub target_kbps: Option<u64>,
    /// The frame rate the node encodes at now (halved by its congestion ladder on a poor link).
    pub node_fps: Option<u64>,
}

/// Most glass-to-glass samples kept (about a minute at 60 fps).
const G2G_SAMPLES: usize = 4096;
/// The rate window, ms.
const WINDOW_MS: f64 = 1000.0;

/// Accumulates one stream's statistics; see the module docs.
#[derive(Debug, Default, Clone)]
pub struct StatsMeter {
    packets: VecDeque<(f64, usize)>,
    frames: VecDeque<f64>,
    frames_decoded: u64,
    received: u64,
    base_seq: Option<u64>,
    highest_seq: u64,
    last_transit: Option<(f64, u32)>,
    jitter_ms: f64,
    rtt_ms: Option<f64>,
    node_link: Option<(u64, u64, u64)>,
    g2g: VecDeque<f64>,
    audio_received: u64,
    audio_base_seq: Option<u64>,
    audio_highest_seq: u64,
    audio_latency: VecDeque<f64>,
    first_frame_ms: Option<f64>,
    frame_size: (u32, u32),
}

/// Extends a 16-bit sequence number to 64 bits next to `reference`.
fn extend_seq(reference: u64, seq: u16) -> u64 {
    let base = reference & !0xffff;
    let candidates = [base.wrapping_sub(0x10000), base, base + 0x10000];
    candidates
        .into_iter()
        .map(|b| b + u64::from(seq))
        .min_by_key(|c| c.abs_diff(reference))
        .unwrap_or(u64::from(seq))
}

/// The `q`-quantile of `sorted`.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i])
}

impl StatsMeter {
    /// A new meter.
    pub fn new() -> Self {
        Self::default()
    }

    fn expire(&mut self, now_ms: f64) {
        while self
            .packets
            .front()
            .is_some_and(|(t, _)| now_ms - t > WINDOW_MS)
        {
            self.packets.pop_front();
        }
        while self.frames.front().is_some_and(|t| now_ms - t > WINDOW_MS) {
            self.frames.pop_front();
        }
    }

    /// An RTP packet arrived at `now_ms`.
    pub fn on_packet(&mut self, now_ms: f64, seq: u16, rtp_timestamp: u32, bytes: usize) {
        self.received += 1;
        let ext = match self.base_seq {
            None => {
                self.base_seq = Some(u64::from(seq) + 0x10000);
                u64::from(seq) + 0x10000
            }
            Some(_) => extend_seq(self.highest_seq, seq),
        };
        self.highest_seq = self.highest_seq.max(ext);
        // RFC 3550 §6.4.1: J += (|D| − J) / 16, D the change in transit time.
        let transit = now_ms - f64::from(rtp_timestamp) / 90.0;
        if let Some((prev, prev_ts)) = self.last_transit
            && prev_ts != rtp_timestamp
        {
            let d = (transit - prev).abs();
            self.jitter_ms += (d - self.jitter_ms) / 16.0;
        }
        self.last_transit = Some((transit, rtp_timestamp));
        self.packets.push_back((now_ms, bytes));
        self.expire(now_ms);
    }

    /// A frame was decoded at `now_ms`, `glass_to_glass_ms` after its capture (when known).
    pub fn on_frame(&mut self, now_ms: f64, glass_to_glass_ms: Option<f64>) {
        self.frames_decoded += 1;
        self.first_frame_ms.get_or_insert(now_ms);
        self.frames.push_back(now_ms);
        if let Some(g) = glass_to_glass_ms {
            if self.g2g.len() == G2G_SAMPLES {
                self.g2g.pop_front();
            }
            self.g2g.push_back(g);
        }
        self.expire(now_ms);
    }

    /// An audio RTP packet arrived.
    pub fn on_audio_packet(&mut self, seq: u16) {
        self.audio_received += 1;
        let ext = match self.audio_base_seq {
            None => {
                self.audio_base_seq = Some(u64::from(seq) + 0x10000);
                u64::from(seq) + 0x10000
            }
            Some(_) => extend_seq(self.audio_highest_seq, seq),
        };
        self.audio_highest_seq = self.audio_highest_seq.max(ext);
    }

    /// A packet of sound was decoded, `latency_ms` after it was made (when known).
    pub fn on_audio_decoded(&mut self, latency_ms: Option<f64>) {
        if let Some(l) = latency_ms {
            if self.audio_latency.len() == G2G_SAMPLES {
                self.audio_latency.pop_front();
            }
            self.audio_latency.push_back(l);
        }
    }

    /// The latest round trip to the node, ms.
    pub fn rtt_ms(&self) -> Option<f64> {
        self.rtt_ms
    }

    /// A round trip to the node was measured.
    pub fn on_rtt(&mut self, rtt_ms: f64) {
        self.rtt_ms = Some(rtt_ms);
    }

    /// The node said how it sees the link: its estimate, its encoder's target bitrate and frame
    /// rate (kbit/s, kbit/s, fps).
    pub fn on_node_link(&mut self, estimate_kbps: u64, target_kbps: u64, fps: u64) {
        self.node_link = Some((estimate_kbps, target_kbps, fps));
    }

    /// The size of the pictures being decoded.
    pub fn on_frame_size(&mut self, width: u32, height: u32) {
        self.frame_size = (width, height);
    }

    /// What the player can attest at `now_ms` (sequence and time left for the caller): frames
    /// decoded, play time since the first frame, decoded size and measured frame rate. None
    /// before the first frame.
    pub fn receipt(&mut self, now_ms: f64) -> Option<pixelgrid_proto::receipt::Receipt> {
        let first = self.first_frame_ms?;
        self.expire(now_ms);
        Some(pixelgrid_proto::receipt::Receipt {
            frames: self.frames_decoded,
            played_ms: (now_ms - first).max(0.0) as u64,
            width: self.frame_size.0,
            height: self.frame_size.1,
            fps: (self.frames.len() as f64 * 1000.0 / WINDOW_MS).round() as u32,
            ..Default::default()
        })
    }

    /// The statistics at `now_ms`.
    pub fn snapshot(&mut self, now_ms: f64) -> Stats {
        self.expire(now_ms);
        let bytes: usize = self.packets.iter().map(|(_, b)| b).sum();
        let expected = self
            .base_seq
            .map_or(0, |b| self.highest_seq.saturating_sub(b) + 1);
        let mut g2g: Vec<f64> = self.g2g.iter().copied().collect();
        g2g.sort_by(f64::total_cmp);
        let mut audio: Vec<f64> = self.audio_latency.iter().copied().collect();
        audio.sort_by(f64::total_cmp);
        let audio_expected = self
            .audio_base_seq
            .map_or(0, |b| self.audio_highest_seq.saturating_sub(b) + 1);
        let (audio_p50, video_p50) = (quantile(&audio, 0.5), quantile(&g2g, 0.5));
        Stats {
            fps: self.frames.len() as f64 * 1000.0 / WINDOW_MS,
            bitrate_kbps: bytes as f64 * 8.0 / WINDOW_MS,
            rtt_ms: self.rtt_ms,
            jitter_ms: self.jitter_ms,
            packets_received: self.received,
            packets_lost: expected.saturating_sub(self.received),
            frames_decoded: self.frames_decoded,
            glass_to_glass_p50_ms: video_p50,
            glass_to_glass_p99_ms: quantile(&g2g, 0.99),
            audio_packets_received: self.audio_received,
            audio_packets_lost: audio_expected.saturating_sub(self.audio_received),
            audio_latency_p50_ms: audio_p50,
            av_offset_ms: audio_p50.zip(video_p50).map(|(a, v)| a - v),
            link_estimate_kbps: self.node_link.map(|l| l.0).filter(|e| *e > 0),
            target_kbps: self.node_link.map(|l| l.1),
            node_fps: self.node_link.map(|l| l.2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_cover_the_last_second_and_losses_count_missing_sequence_numbers() {
        let mut m = StatsMeter::new();
        // 60 fps, 2 packets of 1000 B per frame, sequence wrapping past 65535, one packet lost.
        let mut seq: u16 = 65_500;
        for f in 0..120u32 {
            let t = f64::from(f) * 1000.0 / 60.0;
            for _ in 0..2 {
                if seq != 10 {
                    m.on_packet(t, seq, f * 1500, 1000);
                }
                seq = seq.wrapping_add(1);
            }
            m.on_frame(t + 5.0, Some(10.0 + f64::from(f % 10)));
        }
        let s = m.snapshot(2000.0);
        assert!((s.fps - 60.0).abs() <= 1.0, "{s:?}");
        assert!((s.bitrate_kbps - 960.0).abs() <= 20.0, "{s:?}");
        assert_eq!(s.packets_lost, 1);
        assert_eq!(s.packets_received, 239);
        assert_eq!(s.frames_decoded, 120);
        assert_eq!(s.glass_to_glass_p50_ms, Some(15.0));
        assert_eq!(s.glass_to_glass_p99_ms, Some(19.0));
        assert!(s.jitter_ms < 0.5, "perfectly paced: {s:?}");
        // Nothing for a second: rates fall to zero, totals stay.
        let s = m.snapshot(3100.0);
        assert_eq!((s.fps, s.bitrate_kbps, s.frames_decoded), (0.0, 0.0, 120));
    }

    #[test]
    fn audio_losses_and_the_av_offset_are_counted() {
        let mut m = StatsMeter::new();
        for seq in (0u16..50).filter(|s| *s != 7) {
            m.on_audio_packet(seq);
            m.on_audio_decoded(Some(30.0));
        }
        m.on_frame(0.0, Some(20.0));
        let s = m.snapshot(10.0);
        assert_eq!((s.audio_packets_received, s.audio_packets_lost), (49, 1));
        assert_eq!(s.av_offset_ms, Some(10.0));
    }

    #[test]
    fn jitter_grows_when_arrivals_wobble() {
        let mut m = StatsMeter::new();
        for f in 0..200u32 {
            let wobble = if f % 2 == 0 { 0.0 } else { 8.0 };
            m.on_packet(f64::from(f) * 16.0 + wobble, f as u16, f * 1440, 1000);
        }
        let s = m.snapshot(3300.0);
        assert!(s.jitter_ms > 5.0, "{s:?}");
    }
}
