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
//! [`Outbox`] and [`DeliveryMeter`] are the clock-free cores; [`run`] is the shell.

use crate::stream::StreamNode;
use crate::telemetry::TelemetrySource;
use pixelgrid_proto::identity::{NodeKey, sign_report};
use pixelgrid_proto::indexer::v1::indexer_client::IndexerClient;
use pixelgrid_proto::indexer::v1::{
    NodeReport, ReportVerdict, ReportedState, SessionDelivery, SignedNodeReport,
};
use pixelgrid_proto::types::v1::{NodeId, VideoMode};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Reports waiting for one indexer's acknowledgement, oldest first.
#[derive(Debug)]
pub struct Outbox {
    capacity: usize,
    queue: VecDeque<SignedNodeReport>,
    dropped: u64,
}

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
        }
    }

    /// Queues a report; when full, the oldest is dropped.
    pub fn push(&mut self, report: SignedNodeReport) {
        if self.queue.len() == self.capacity {
            self.queue.pop_front();
            self.dropped += 1;
        }
        self.queue.push_back(report);
    }

    /// Queued reports with a sequence after `sent_upto`, oldest first.
    pub fn after(&self, sent_upto: u64) -> Vec<SignedNodeReport> {
        self.queue
            .iter()
            .filter(|r| sequence(r) > sent_upto)
            .cloned()
            .collect()
    }

    /// The indexer answered report `sequence` (and, answering in order, every one before it).
    pub fn acknowledge(&mut self, sequence_acked: u64) {
        while self
            .queue
            .front()
            .is_some_and(|r| sequence(r) <= sequence_acked)
        {
            self.queue.pop_front();
        }
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

/// Where and how often to report.
#[derive(Debug, Clone)]
pub struct ReporterConfig {
    /// Indexer gRPC URLs.
    pub indexers: Vec<String>,
    /// Report period.
    pub interval: Duration,
    /// Reports kept per indexer while it is unreachable.
    pub outbox_capacity: usize,
}

/// Reports until `stop`; see the module docs.
pub async fn run(
    config: ReporterConfig,
    key: NodeKey,
    node: Arc<StreamNode>,
    stop: impl std::future::Future<Output = ()>,
) {
    let outboxes: Vec<(Arc<Mutex<Outbox>>, Arc<tokio::sync::Notify>)> = config
        .indexers
        .iter()
        .map(|url| {
            let outbox = Arc::new(Mutex::new(Outbox::new(config.outbox_capacity)));
            let ready = Arc::new(tokio::sync::Notify::new());
            tokio::spawn(deliver(
                url.clone(),
                Arc::clone(&outbox),
                Arc::clone(&ready),
            ));
            (outbox, ready)
        })
        .collect();
    let telemetry = TelemetrySource::open();
    let mut meter = DeliveryMeter::default();
    let mut last_sequence = 0;
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
            })
            .collect();
        last_sequence = next_sequence(last_sequence, now);
        let digest = {
            use sha2::Digest;
            let sample = serde_json::to_vec(&telemetry.sample()).unwrap_or_default();
            sha2::Sha256::digest(&sample).to_vec()
        };
        let report = sign_report(
            NodeReport {
                node_id: Some(NodeId { hex: key.node_id() }),
                sequence: last_sequence,
                sent_unix_ms: now,
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
            outbox
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(report.clone());
            ready.notify_one();
        }
    }
}

/// Sends one indexer its outbox, reconnecting as needed.
async fn deliver(url: String, outbox: Arc<Mutex<Outbox>>, ready: Arc<tokio::sync::Notify>) {
    let lock = || outbox.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let mut client = match pixelgrid_proto::transport::connect(&url).await {
            Ok(c) => IndexerClient::new(c),
            Err(e) => {
                tracing::debug!(indexer = %url, error = %e, waiting = lock().len(), "indexer unreachable; keeping reports");
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
        tracing::info!(indexer = %url, waiting = lock().len(), "reporting to the indexer");
        let mut sent_upto = 0;
        'stream: loop {
            let pending = lock().after(sent_upto);
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
                        if ack.verdict != ReportVerdict::Accepted as i32 {
                            tracing::warn!(indexer = %url, sequence = ack.sequence, verdict = ?ReportVerdict::try_from(ack.verdict).unwrap_or_default(), detail = %ack.detail, "report refused");
                        }
                        lock().acknowledge(ack.sequence);
                    }
                    Ok(None) | Err(_) => break 'stream,
                },
            }
        }
        tracing::warn!(indexer = %url, "report stream ended; reconnecting");
        tokio::time::sleep(Duration::from_millis(200)).await;
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
    }
}
