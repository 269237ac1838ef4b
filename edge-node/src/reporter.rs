//! Signed uptime and delivery reports to the indexers.
//!
//! Every `interval` the node signs one [`NodeReport`]: a strictly increasing sequence, its time,
//! its state, each live session's delivery since the previous report (promised and achieved
//! mode, milliseconds streamed to a connected player) and a digest of its GPU telemetry. The same
//! signed report goes to every indexer configured (independent indexers must see the same
//! inputs). Per indexer, reports wait in a bounded [`Outbox`] until that indexer acknowledges
//! them; after a reconnection everything unacknowledged is sent again, and the indexer refuses
//! the ones it had already committed as replays — so each is credited exactly once. When the
//! outbox is full the oldest report is dropped (and counted): an indexer down for longer than
//! the outbox holds loses the oldest uptime first.
//!
//! With an outbox directory each outbox is also a file, rewritten atomically (temporary file,
//! fsync, rename) whenever a report is queued or acknowledged, so a node killed with `kill -9`
//! sends what was not acknowledged when it starts again, and its sequence and report time go on
//! from where they were even if the clock went back meanwhile.
//!
//! [`Outbox`], [`DeliveryMeter`] and [`ReportClock`] are the clock-free cores; [`run`] is the
//! shell.

use crate::stream::StreamNode;
use crate::telemetry::TelemetrySource;
use pixelgrid_proto::identity::{NodeKey, sign_report};
use pixelgrid_proto::indexer::v1::indexer_client::IndexerClient;
use pixelgrid_proto::indexer::v1::{
    NodeReport, ReportVerdict, ReportedState, SessionDelivery, SignedNodeReport,
};
use pixelgrid_proto::types::v1::{NodeId, VideoMode};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What became of this node's reports, every indexer together (one report sent to two indexers
/// counts twice): for `/metrics`, and for the fault matrix to find a report lost.
#[derive(Debug, Default)]
pub struct ReportCounters {
    /// Queued for an indexer.
    pub queued: AtomicU64,
    /// Taken by an indexer.
    pub accepted: AtomicU64,
    /// Refused as already taken: a resend after an acknowledgement was lost.
    pub replayed: AtomicU64,
    /// Refused for another reason (the acknowledgement's detail says which).
    pub refused: AtomicU64,
    /// Dropped from a full outbox without being taken.
    pub dropped: AtomicU64,
    /// Waiting in the outboxes now.
    pub waiting: AtomicU64,
}

impl ReportCounters {
    fn count_ack(&self, verdict: i32) {
        let c = if verdict == ReportVerdict::Accepted as i32 {
            &self.accepted
        } else if verdict == ReportVerdict::Replayed as i32 {
            &self.replayed
        } else {
            &self.refused
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reports waiting for one indexer's acknowledgement, oldest first.
#[derive(Debug)]
pub struct Outbox {
    capacity: usize,
    queue: VecDeque<SignedNodeReport>,
    dropped: u64,
    /// The latest report ever queued here, `(sequence, sent_unix_ms)`, kept after it is
    /// acknowledged so a restarted node never reuses a sequence or a time.
    high_water: (u64, u64),
}

/// What an outbox file starts with (format version 1).
const OUTBOX_MAGIC: &[u8; 8] = b"PGOUTBX1";
/// The largest report an outbox file may hold, bytes (a report is a few hundred).
const MAX_STORED_REPORT: usize = 1 << 20;

fn sequence(r: &SignedNodeReport) -> u64 {
    r.report.as_ref().map_or(0, |r| r.sequence)
}

impl Outbox {
    /// An outbox holding at most `capacity` reports.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            queue: VecDeque::new(),
            dropped: 0,
            high_water: (0, 0),
        }
    }

    /// Queues a report; when full, the oldest is dropped.
    pub fn push(&mut self, report: SignedNodeReport) {
        if self.queue.len() == self.capacity {
            self.queue.pop_front();
            self.dropped += 1;
        }
        let sent = report.report.as_ref().map_or(0, |r| r.sent_unix_ms);
        self.high_water = self.high_water.max((sequence(&report), sent));
        self.queue.push_back(report);
    }

    /// The latest `(sequence, sent_unix_ms)` ever queued.
    pub fn high_water(&self) -> (u64, u64) {
        self.high_water
    }

    /// The outbox as file bytes: magic, high-water sequence and time, then each queued report
    /// (length-prefixed protobuf), oldest first.
    pub fn to_bytes(&self) -> Vec<u8> {
        use prost::Message;
        let mut out = OUTBOX_MAGIC.to_vec();
        out.extend_from_slice(&self.high_water.0.to_le_bytes());
        out.extend_from_slice(&self.high_water.1.to_le_bytes());
        for r in &self.queue {
            let bytes = r.encode_to_vec();
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&bytes);
        }
        out
    }

    /// Reads an outbox back from [`Outbox::to_bytes`]; keeps the newest `capacity` reports.
    pub fn from_bytes(bytes: &[u8], capacity: usize) -> Result<Self, String> {
        use prost::Message;
        let rest = bytes
            .strip_prefix(OUTBOX_MAGIC)
            .ok_or("not an outbox file (wrong magic)")?;
        let word = |b: &[u8], at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
        };
        let (Some(seq), Some(sent)) = (word(rest, 0), word(rest, 8)) else {
            return Err("truncated header".into());
        };
        let mut outbox = Self::new(capacity);
        let mut at = 16;
        while at < rest.len() {
            let len = rest
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
                .ok_or("truncated length")?;
            if len > MAX_STORED_REPORT {
                return Err(format!("a stored report claims {len} bytes"));
            }
            let body = rest.get(at + 4..at + 4 + len).ok_or("truncated report")?;
            let report = SignedNodeReport::decode(body)
                .map_err(|e| format!("a stored report does not decode: {e}"))?;
            outbox.push(report);
            at += 4 + len;
        }
        outbox.high_water = outbox.high_water.max((seq, sent));
        outbox.dropped = 0;
        Ok(outbox)
    }

    /// Queued reports with a sequence after `sent_upto`, oldest first.
    pub fn after(&self, sent_upto: u64) -> Vec<SignedNodeReport> {
        self.queue
            .iter()
            .filter(|r| sequence(r) > sent_upto)
            .cloned()
            .collect()
    }

    /// The indexer answered report `sequence` (and, answering in order, every one before it);
    /// returns how many left the queue.
    pub fn acknowledge(&mut self, sequence_acked: u64) -> usize {
        let before = self.queue.len();
        while self
            .queue
            .front()
            .is_some_and(|r| sequence(r) <= sequence_acked)
        {
            self.queue.pop_front();
        }
        before - self.queue.len()
    }

    /// Reports waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Reports dropped because the outbox was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// One live session as the meter sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSample {
    /// Session id.
    pub session_id: String,
    /// The mode its token promised.
    pub promised: VideoMode,
    /// Frames encoded so far.
    pub frames_encoded: u64,
    /// Players connected now.
    pub viewers: usize,
    /// How long the session has run, ms.
    pub age_ms: u64,
    /// Its session token (the indexer's proof of placement).
    pub token: String,
    /// The latest delivery receipt the player signed, as the node kept it.
    pub receipt: Option<pixelgrid_proto::indexer::v1::DeliveryReceipt>,
}

/// Turns successive samples of the live sessions into per-report deliveries.
#[derive(Debug, Default)]
pub struct DeliveryMeter {
    last: HashMap<String, (u64, u64)>,
}

impl DeliveryMeter {
    /// Deliveries since the previous call, at `now_ms`, and one entry per session the node
    /// dropped (`dropped_by_node`, so the indexer refunds it). A session seen for the first time
    /// counts from its start; time streamed to nobody is not delivered.
    pub fn measure(
        &mut self,
        sessions: &[SessionSample],
        dropped: &[String],
        now_ms: u64,
    ) -> Vec<SessionDelivery> {
        let mut next = HashMap::with_capacity(sessions.len());
        let mut out = Vec::new();
        for s in sessions {
            let first_sight = (0, now_ms.saturating_sub(s.age_ms));
            if let Some((frames, at)) = self.last.get(&s.session_id).or(Some(&first_sight)) {
                let elapsed = now_ms.saturating_sub(*at);
                let frames = s.frames_encoded.saturating_sub(*frames);
                // Rounded to the nearest frame per second.
                if let Some(fps) = (frames * 1000 + elapsed / 2).checked_div(elapsed) {
                    out.push(SessionDelivery {
                        session_id: s.session_id.clone(),
                        promised: Some(s.promised),
                        achieved: Some(VideoMode {
                            fps: u32::try_from(fps).unwrap_or(u32::MAX),
                            ..s.promised
                        }),
                        delivered_ms: if s.viewers > 0 { elapsed } else { 0 },
                        dropped_by_node: false,
                        session_token: s.token.clone(),
                        receipt: s.receipt.clone(),
                    });
                }
            }
            next.insert(s.session_id.clone(), (s.frames_encoded, now_ms));
        }
        self.last = next;
        out.extend(dropped.iter().map(|id| SessionDelivery {
            session_id: id.clone(),
            dropped_by_node: true,
            ..SessionDelivery::default()
        }));
        out
    }
}

/// A sequence after `last` that stays increasing across restarts: the time, unless the clock
/// went back.
pub fn next_sequence(last: u64, now_ms: u64) -> u64 {
    (last + 1).max(now_ms)
}

/// How far ahead of the indexers' clocks a report's time may be before they refuse it (their
/// `max_clock_skew_ms`, 30 s by default).
pub const MAX_AHEAD_MS: u64 = 30_000;

/// The sequence and time of each report: both strictly increase, whatever the wall clock does
/// (the indexer refuses a report whose time is not after the previous one's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportClock {
    sequence: u64,
    sent_ms: u64,
}

impl ReportClock {
    /// Goes on after the latest report sent before, `(sequence, sent_unix_ms)`.
    pub fn after(high_water: (u64, u64)) -> Self {
        Self {
            sequence: high_water.0,
            sent_ms: high_water.1,
        }
    }

    /// The next report's `(sequence, sent_unix_ms)` at wall-clock `now_ms`. A time more than
    /// [`MAX_AHEAD_MS`] ahead of now came from a clock that jumped forward and back: no indexer
    /// took it (they refuse reports that far ahead), so the time restarts from now rather than
    /// sending reports stamped in the future forever.
    pub fn next(&mut self, now_ms: u64) -> (u64, u64) {
        self.sequence = next_sequence(self.sequence, now_ms);
        self.sent_ms = if self.sent_ms > now_ms.saturating_add(MAX_AHEAD_MS) {
            now_ms
        } else {
            (self.sent_ms + 1).max(now_ms)
        };
        (self.sequence, self.sent_ms)
    }
}

/// An [`Outbox`] kept in a file as well (see the module docs).
#[derive(Debug)]
struct StoredOutbox {
    outbox: Outbox,
    path: Option<std::path::PathBuf>,
}

impl StoredOutbox {
    /// Opens node `node_id`'s outbox file for `indexer` in `dir` (none: memory only). The file
    /// is named by both, so nodes sharing a state directory keep apart. A damaged file is set
    /// aside with a warning rather than stopping the node.
    fn open(dir: Option<&std::path::Path>, node_id: &str, indexer: &str, capacity: usize) -> Self {
        let Some(dir) = dir else {
            return Self {
                outbox: Outbox::new(capacity),
                path: None,
            };
        };
        let name = {
            use sha2::Digest;
            let h = sha2::Sha256::digest(indexer.as_bytes());
            let node = node_id.get(..16).unwrap_or(node_id);
            format!("{node}-{}.outbox", pixelgrid_proto::token::hex(&h[..8]))
        };
        let path = dir.join(name);
        let outbox = match std::fs::read(&path) {
            Ok(bytes) => Outbox::from_bytes(&bytes, capacity).unwrap_or_else(|e| {
                let aside = path.with_extension("damaged");
                tracing::warn!(path = %path.display(), error = %e, aside = %aside.display(), "outbox file damaged; set aside, starting empty");
                let _ = std::fs::rename(&path, &aside);
                Outbox::new(capacity)
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outbox::new(capacity),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the outbox file; starting empty");
                Outbox::new(capacity)
            }
        };
        if !outbox.is_empty() {
            tracing::info!(
                indexer,
                waiting = outbox.len(),
                "reports kept from before a restart"
            );
        }
        Self {
            outbox,
            path: Some(path),
        }
    }

    /// Writes the outbox to its file, atomically.
    fn save(&self) {
        let Some(path) = &self.path else {
            return;
        };
        let tmp = path.with_extension("tmp");
        let written = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&self.outbox.to_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            // The rename itself must reach the disk too.
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot save the outbox; a crash now would lose unacknowledged reports");
        }
    }
}

/// Where and how often to report.
#[derive(Debug, Clone)]
pub struct ReporterConfig {
    /// Indexer gRPC URLs.
    pub indexers: Vec<String>,
    /// Report period.
    pub interval: Duration,
    /// Reports kept per indexer while it is unreachable.
    pub outbox_capacity: usize,
    /// Where the outboxes are kept across restarts (created if missing); none: memory only.
    pub outbox_dir: Option<std::path::PathBuf>,
}

/// Reports until `stop`; see the module docs.
pub async fn run(
    config: ReporterConfig,
    key: NodeKey,
    node: Arc<StreamNode>,
    stop: impl std::future::Future<Output = ()>,
) {
    if let Some(dir) = &config.outbox_dir
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot create the outbox directory; reports kept in memory only");
    }
    let dir = config.outbox_dir.as_deref().filter(|d| d.is_dir());
    let mut high_water = (0, 0);
    let outboxes: Vec<(Arc<Mutex<StoredOutbox>>, Arc<tokio::sync::Notify>)> = config
        .indexers
        .iter()
        .map(|url| {
            let stored = StoredOutbox::open(dir, &key.node_id(), url, config.outbox_capacity);
            high_water = high_water.max(stored.outbox.high_water());
            node.reports
                .waiting
                .fetch_add(stored.outbox.len() as u64, Ordering::Relaxed);
            let outbox = Arc::new(Mutex::new(stored));
            let ready = Arc::new(tokio::sync::Notify::new());
            tokio::spawn(deliver(
                url.clone(),
                Arc::clone(&outbox),
                Arc::clone(&ready),
                Arc::clone(&node.reports),
            ));
            (outbox, ready)
        })
        .collect();
    let mut clock = ReportClock::after(high_water);
    let telemetry = TelemetrySource::open();
    let mut meter = DeliveryMeter::default();
    let mut tick = tokio::time::interval(config.interval);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        let now = crate::stream::unix_ms() as u64;
        let samples: Vec<SessionSample> = node
            .sessions()
            .await
            .into_iter()
            .map(|s| SessionSample {
                session_id: s.session_id,
                promised: VideoMode {
                    width_px: s.width,
                    height_px: s.height,
                    fps: s.fps,
                },
                frames_encoded: s.stats.frames_encoded,
                viewers: s.viewers,
                age_ms: (s.stats.elapsed_s * 1000.0) as u64,
                token: s.token,
                receipt: s.receipt,
            })
            .collect();
        let (sequence, sent_unix_ms) = clock.next(now);
        let digest = {
            use sha2::Digest;
            let sample = serde_json::to_vec(&telemetry.sample()).unwrap_or_default();
            sha2::Sha256::digest(&sample).to_vec()
        };
        let report = sign_report(
            NodeReport {
                node_id: Some(NodeId { hex: key.node_id() }),
                sequence,
                sent_unix_ms,
                state: if node.is_draining() {
                    ReportedState::Draining
                } else {
                    ReportedState::Ready
                } as i32,
                sessions: meter.measure(&samples, &node.take_dropped(), now),
                telemetry_digest: digest,
            },
            &key,
        );
        for (outbox, ready) in &outboxes {
            let mut stored = outbox.lock().unwrap_or_else(|p| p.into_inner());
            let dropped = stored.outbox.dropped();
            stored.outbox.push(report.clone());
            let counts = &node.reports;
            counts.queued.fetch_add(1, Ordering::Relaxed);
            if stored.outbox.dropped() > dropped {
                counts.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                counts.waiting.fetch_add(1, Ordering::Relaxed);
            }
            // On disk before it is sent: a crash from here on resends it.
            stored.save();
            drop(stored);
            ready.notify_one();
        }
    }
}

/// Sends one indexer its outbox, reconnecting as needed.
async fn deliver(
    url: String,
    outbox: Arc<Mutex<StoredOutbox>>,
    ready: Arc<tokio::sync::Notify>,
    counts: Arc<ReportCounters>,
) {
    let lock = || outbox.lock().unwrap_or_else(|p| p.into_inner());
    // Streams the indexer ended with an error in a row: the pause after each doubles (a full
    // ledger backs off up to 30 s; many nodes resending every second would not help it).
    let mut refused_in_a_row = 0u32;
    loop {
        let mut client = match pixelgrid_proto::transport::connect(&url).await {
            Ok(c) => IndexerClient::new(c),
            Err(e) => {
                tracing::debug!(indexer = %url, error = %e, waiting = lock().outbox.len(), "indexer unreachable; keeping reports");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<SignedNodeReport>(256);
        let mut acks = match client
            .submit_reports(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(e) => {
                tracing::warn!(indexer = %url, error = %e.message(), "indexer refused the report stream");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        tracing::info!(indexer = %url, waiting = lock().outbox.len(), "reporting to the indexer");
        let mut sent_upto = 0;
        let mut pause = Duration::from_millis(200);
        'stream: loop {
            let pending = lock().outbox.after(sent_upto);
            for r in pending {
                sent_upto = sequence(&r);
                if tx.send(r).await.is_err() {
                    break 'stream;
                }
            }
            tokio::select! {
                _ = ready.notified() => {}
                ack = acks.message() => match ack {
                    Ok(Some(ack)) => {
                        counts.count_ack(ack.verdict);
                        if ack.verdict != ReportVerdict::Accepted as i32 {
                            tracing::warn!(indexer = %url, sequence = ack.sequence, verdict = ?ReportVerdict::try_from(ack.verdict).unwrap_or_default(), detail = %ack.detail, "report refused");
                        }
                        // Acknowledgements come in bursts (one per report of a batch): take every
                        // one already here, then save once.
                        let mut last = ack.sequence;
                        while let Ok(Ok(Some(more))) = tokio::time::timeout(Duration::ZERO, acks.message()).await {
                            counts.count_ack(more.verdict);
                            if more.verdict != ReportVerdict::Accepted as i32 {
                                tracing::warn!(indexer = %url, sequence = more.sequence, detail = %more.detail, "report refused");
                            }
                            last = last.max(more.sequence);
                        }
                        refused_in_a_row = 0;
                        let mut stored = lock();
                        let answered = stored.outbox.acknowledge(last);
                        counts.waiting.fetch_sub(answered as u64, Ordering::Relaxed);
                        stored.save();
                    }
                    Ok(None) => break 'stream,
                    Err(status) => {
                        tracing::warn!(indexer = %url, error = %status.message(), waiting = lock().outbox.len(), "the indexer ended the report stream; keeping reports");
                        pause = Duration::from_secs(1 << refused_in_a_row.min(5));
                        refused_in_a_row += 1;
                        break 'stream;
                    }
                },
            }
        }
        tracing::warn!(indexer = %url, "report stream ended; reconnecting");
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(seq: u64) -> SignedNodeReport {
        SignedNodeReport {
            report: Some(NodeReport {
                sequence: seq,
                ..Default::default()
            }),
            signature: None,
        }
    }

    #[test]
    fn the_outbox_resends_only_what_was_not_acknowledged_and_drops_the_oldest_when_full() {
        let mut o = Outbox::new(3);
        for s in 1..=4 {
            o.push(report(s));
        }
        assert_eq!(o.dropped(), 1, "the oldest went when the fourth came");
        let seqs = |v: Vec<SignedNodeReport>| v.iter().map(sequence).collect::<Vec<_>>();
        assert_eq!(seqs(o.after(0)), vec![2, 3, 4]);
        assert_eq!(seqs(o.after(3)), vec![4], "already on this stream");
        o.acknowledge(3);
        // A reconnection sends what is left, and only that.
        assert_eq!(seqs(o.after(0)), vec![4]);
        o.acknowledge(4);
        assert!(o.is_empty());
    }

    #[test]
    fn delivery_is_time_streamed_to_a_player_at_the_measured_rate() {
        let mode = VideoMode {
            width_px: 1280,
            height_px: 720,
            fps: 60,
        };
        let sample = |frames, viewers, age_ms| SessionSample {
            session_id: "s".into(),
            promised: mode,
            frames_encoded: frames,
            viewers,
            age_ms,
            token: String::new(),
            receipt: None,
        };
        let mut m = DeliveryMeter::default();
        let d = m.measure(&[sample(30, 1, 500)], &[], 1_000);
        assert_eq!(
            d[0].delivered_ms, 500,
            "first sight counts from the session's start"
        );
        assert_eq!(d[0].achieved.unwrap().fps, 60);
        let d = m.measure(&[sample(150, 1, 2_500)], &[], 3_000);
        assert_eq!(d[0].delivered_ms, 2_000);
        assert_eq!(d[0].achieved.unwrap().fps, 60);
        let d = m.measure(&[sample(180, 0, 3_500)], &[], 4_000);
        assert_eq!(d[0].delivered_ms, 0, "nobody watching");
        assert_eq!(d[0].achieved.unwrap().fps, 30);
        assert!(m.measure(&[], &[], 5_000).is_empty(), "ended");
        let d = m.measure(&[sample(6, 1, 100)], &[], 6_000);
        assert_eq!(
            d[0].delivered_ms, 100,
            "a new session under that id starts afresh"
        );
    }

    #[test]
    fn sequences_increase_even_when_the_clock_goes_back() {
        assert_eq!(next_sequence(0, 1_000), 1_000);
        assert_eq!(next_sequence(1_000, 900), 1_001);
        let mut clock = ReportClock::after((5_000, 5_000));
        assert_eq!(clock.next(4_000), (5_001, 5_001), "the clock went back");
        assert_eq!(clock.next(4_000), (5_002, 5_002));
        assert_eq!(clock.next(9_000), (9_000, 9_000), "and caught up");
        // A clock that ran an hour ahead (reports nobody took) and came back.
        let mut jumped = ReportClock::after((5_000, 3_600_000 + 5_000));
        assert_eq!(
            jumped.next(6_000),
            (6_000, 6_000),
            "time restarts from now, the sequence still grows"
        );
    }

    fn signed(seq: u64) -> SignedNodeReport {
        let mut r = report(seq);
        r.report.as_mut().unwrap().sent_unix_ms = seq * 10;
        r
    }

    #[test]
    fn an_outbox_file_brings_back_the_queue_and_the_high_water() {
        let mut o = Outbox::new(4);
        for s in 1..=3 {
            o.push(signed(s));
        }
        o.acknowledge(1);
        let back = Outbox::from_bytes(&o.to_bytes(), 4).unwrap();
        assert_eq!(back.after(0), o.after(0));
        assert_eq!(back.high_water(), (3, 30));
        o.acknowledge(3);
        let empty = Outbox::from_bytes(&o.to_bytes(), 4).unwrap();
        assert!(empty.is_empty());
        assert_eq!(
            empty.high_water(),
            (3, 30),
            "kept after everything was acknowledged"
        );
        // A smaller capacity on restart keeps the newest.
        let mut full = Outbox::new(10);
        for s in 1..=6 {
            full.push(signed(s));
        }
        let seqs: Vec<u64> = Outbox::from_bytes(&full.to_bytes(), 2)
            .unwrap()
            .after(0)
            .iter()
            .map(sequence)
            .collect();
        assert_eq!(seqs, vec![5, 6]);
    }

    #[test]
    fn nodes_sharing_a_directory_keep_their_outboxes_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let url = "http://127.0.0.1:50061";
        for (node, seqs) in [(&a, 1..3), (&b, 10..15)] {
            let mut o = StoredOutbox::open(Some(dir.path()), node, url, 8);
            for s in seqs {
                o.outbox.push(report(s));
            }
            o.save();
        }
        let back = |node: &str| {
            let o = StoredOutbox::open(Some(dir.path()), node, url, 8);
            o.outbox.high_water()
        };
        assert_eq!(back(&a).0, 2, "node a's own reports, not b's");
        assert_eq!(back(&b).0, 14);
    }

    #[test]
    fn a_damaged_outbox_file_is_an_error_not_a_panic() {
        let mut o = Outbox::new(4);
        o.push(signed(1));
        let good = o.to_bytes();
        for cut in 0..good.len() {
            let _ = Outbox::from_bytes(&good[..cut], 4);
        }
        assert!(Outbox::from_bytes(b"hello", 4).is_err());
        let mut huge = good[..24].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Outbox::from_bytes(&huge, 4).unwrap_err().contains("claims"));
        let mut garbage = good[..24].to_vec();
        garbage.extend_from_slice(&3u32.to_le_bytes());
        garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(Outbox::from_bytes(&garbage, 4).is_err());
    }
}
