//! The tally: a deterministic function from accepted reports and probe results to per-epoch
//! uptime, delivery and payouts. No clock, no I/O: every input carries its time.
//!
//! Time is cut into epochs (`epoch_ms`, an hour by default) and slots (`slot_ms`, the report and
//! probe period). A node is **up for a slot** only when it sent an accepted report in that slot
//! **and** answered one of the indexer's own probes in it (a fresh nonce signed with its key
//! proves it was up; an unanswered probe can be the network's or the indexer's fault, so it
//! takes nothing away; a probe is retried within its slot, and the slot is up when any try passed):
//! self-reports alone earn nothing, as with Aethir's checker nodes. A slot in which the indexer
//! probed nobody (it was down or restarting) is not charged to a node that reported in it. Delivered play time counts only at the promised
//! quality, and a session's reported time is capped by the time since the node's previous report,
//! so it cannot be inflated. Money is integer micro-credits:
//!
//! ```text
//! readiness = readiness_reward × uptime / epoch      (0 when uptime is under the SLA floor)
//! delivery  = delivery_reward_per_minute × delivered_ms / 60 000
//! payout    = readiness + delivery − refund_per_dropped_session × sessions the node dropped   (≥ 0)
//! ```
//! Late, duplicated, replayed, reordered, future-dated, forged and unknown-node reports are
//! refused with a verdict and credit nothing; a closed epoch never changes.

use crate::merkle::{self, Hash};
use crate::report::signature_valid;
use pixelgrid_proto::indexer::v1::SignedNodeReport;
use pixelgrid_proto::token::unhex;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// The revision of the tally's arithmetic. 2: range checks, time must advance with the
/// sequence, slots the indexer probed nobody in are not charged.
pub const RULES_REVISION: u32 = 2;

/// The rules; the same everywhere, or roots will not match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TallyConfig {
    /// Which revision of these rules' arithmetic ([`RULES_REVISION`]): a ledger written under
    /// another one is refused rather than silently re-tallied differently.
    pub revision: u32,
    /// Epoch length, ms (divisible by `slot_ms`).
    pub epoch_ms: u64,
    /// Report and probe period, ms.
    pub slot_ms: u64,
    /// How far a report's time may be ahead of its arrival (clock skew), ms.
    pub max_clock_skew_ms: u64,
    /// How long a report may take to arrive (a node buffers while the indexer is unreachable),
    /// ms; an epoch closes this long after it ends.
    pub max_report_delay_ms: u64,
    /// Uptime below this fraction (parts per million) forfeits the readiness reward.
    pub sla_floor_ppm: u64,
    /// Micro-credits for a whole epoch of uptime.
    pub readiness_reward: u64,
    /// Micro-credits per minute of play delivered at the promised quality.
    pub delivery_reward_per_minute: u64,
    /// Micro-credits taken back per session the node dropped.
    pub refund_per_dropped_session: u64,
}

impl Default for TallyConfig {
    fn default() -> Self {
        Self {
            revision: RULES_REVISION,
            epoch_ms: 3_600_000,
            slot_ms: 60_000,
            max_clock_skew_ms: 30_000,
            max_report_delay_ms: 600_000,
            // Aethir publishes 99 % monthly; per epoch we apply the same floor.
            sla_floor_ppm: 990_000,
            readiness_reward: 1_000_000,
            delivery_reward_per_minute: 10_000,
            refund_per_dropped_session: 50_000,
        }
    }
}

/// What became of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// Credited.
    Accepted,
    /// No report or node id.
    Malformed,
    /// Not a registered node.
    UnknownNode,
    /// The signature does not verify for the node it names.
    BadSignature,
    /// Its time is ahead of its arrival by more than the allowed clock skew.
    ClockSkew,
    /// It arrived later after its time than the rules allow.
    TooLate,
    /// Its sequence number is not after the last accepted one (duplicate, replay, reordering).
    Replayed,
    /// It falls in an epoch already closed.
    EpochClosed,
    /// A number the ledger cannot hold (sequence or time ≥ 2^63), or more sessions, or longer
    /// session ids, than a report may carry.
    OutOfRange,
    /// Its time is not after the time of the node's previous accepted report (the sequence went
    /// up while the clock went back).
    TimeWentBack,
}

/// The largest sequence or time a report may carry: the ledger keeps them as SQLite integers.
pub const MAX_REPORT_NUMBER: u64 = i64::MAX as u64;
/// Most session entries one report may carry (far above any node's capacity).
pub const MAX_SESSIONS_PER_REPORT: usize = 256;
/// Longest session id a report may carry, bytes.
pub const MAX_SESSION_ID_BYTES: usize = 128;

#[derive(Debug, Clone, Default)]
struct NodeEpoch {
    reported: BTreeSet<u64>,
    probe_ok: BTreeSet<u64>,
    delivered_ms: u64,
    dropped: u64,
}

#[derive(Debug, Clone, Copy)]
struct LastReport {
    sequence: u64,
    sent_ms: u64,
}

/// One node's outcome for a closed epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodePayout {
    /// Node id (hex).
    pub node_id: String,
    /// Payout, micro-credits.
    pub amount: u64,
    /// Verified uptime, ms.
    pub uptime_ms: u64,
    /// Play delivered at the promised quality, ms.
    pub delivered_ms: u64,
    /// Taken back for dropped sessions, micro-credits.
    pub refunded: u64,
    /// Whether uptime reached the SLA floor.
    pub sla_met: bool,
}

/// A closed epoch: payouts sorted by node id, and their Merkle root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClosedEpoch {
    /// Epoch number (start / epoch_ms).
    pub epoch: u64,
    /// Payouts, sorted by node id.
    pub payouts: Vec<NodePayout>,
    /// Merkle root over `(node_id, amount)`.
    pub root: Hash,
}

impl ClosedEpoch {
    /// The proof for one node's payout.
    pub fn proof(&self, node_id: &str) -> Option<(u64, merkle::Proof)> {
        let i = self.payouts.iter().position(|p| p.node_id == node_id)?;
        Some((
            self.payouts[i].amount,
            merkle::Tree::new(&leaves(&self.payouts)).proof(i)?,
        ))
    }

    /// Every node's proof, in payout order, from one tree.
    pub fn proofs(&self) -> Vec<merkle::Proof> {
        let tree = merkle::Tree::new(&leaves(&self.payouts));
        (0..self.payouts.len())
            .filter_map(|i| tree.proof(i))
            .collect()
    }
}

fn leaves(payouts: &[NodePayout]) -> Vec<([u8; 32], u64)> {
    payouts
        .iter()
        .filter_map(|p| {
            unhex(&p.node_id)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .map(|id| (id, p.amount))
        })
        .collect()
}

/// The tally state; see the module docs.
#[derive(Debug, Clone)]
pub struct Tally {
    config: TallyConfig,
    nodes: BTreeSet<String>,
    last: BTreeMap<String, LastReport>,
    open: BTreeMap<(u64, String), NodeEpoch>,
    /// Per open epoch, the slots in which the indexer probed anyone (it was running).
    probing: BTreeMap<u64, BTreeSet<u64>>,
    closed: BTreeMap<u64, ClosedEpoch>,
    /// Every epoch before this one is closed (in the ledger, not necessarily held here).
    closed_before: u64,
}

impl Tally {
    /// An empty tally.
    pub fn new(config: TallyConfig) -> Self {
        assert!(
            config.slot_ms > 0 && config.epoch_ms.is_multiple_of(config.slot_ms),
            "epoch_ms must be a multiple of slot_ms"
        );
        Self {
            config,
            nodes: BTreeSet::new(),
            last: BTreeMap::new(),
            open: BTreeMap::new(),
            probing: BTreeMap::new(),
            closed: BTreeMap::new(),
            closed_before: 0,
        }
    }

    /// The rules in force.
    pub fn config(&self) -> &TallyConfig {
        &self.config
    }

    /// Knows a node (from the orchestrator's registry).
    pub fn add_node(&mut self, node_id: &str) {
        self.nodes.insert(node_id.to_owned());
    }

    /// Forgets a node (deregistered long enough ago): its later reports are refused as unknown.
    pub fn remove_node(&mut self, node_id: &str) {
        self.nodes.remove(node_id);
    }

    /// True when the node is known (reports from unknown nodes are refused).
    pub fn knows(&self, node_id: &str) -> bool {
        self.nodes.contains(node_id)
    }

    /// The epoch a time falls in.
    pub fn epoch_of(&self, ms: u64) -> u64 {
        ms / self.config.epoch_ms
    }

    /// Re-applies a report the ledger accepted earlier (its signature was checked then), as it
    /// arrived at `arrived_ms`; used when a restarted indexer rebuilds its open epochs.
    pub fn replay(&mut self, signed: &SignedNodeReport, arrived_ms: u64) -> Verdict {
        self.ingest_checked(signed, true, arrived_ms)
    }

    /// Restores a node's last accepted report from the ledger, so replays stay refused.
    pub fn restore_last(&mut self, node_id: &str, sequence: u64, sent_ms: u64) {
        self.last
            .insert(node_id.to_owned(), LastReport { sequence, sent_ms });
    }

    fn is_closed(&self, epoch: u64) -> bool {
        epoch < self.closed_before || self.closed.contains_key(&epoch)
    }

    /// Marks every epoch before `epoch` closed, as the ledger has them, without holding their
    /// payouts (a restart need not load the whole history).
    pub fn restore_closed_before(&mut self, epoch: u64) {
        self.closed_before = self.closed_before.max(epoch);
        self.open.retain(|(e, _), _| *e >= epoch);
        self.probing.retain(|e, _| *e >= epoch);
    }

    /// Restores an epoch the ledger closed earlier: it stays exactly as it was.
    pub fn restore_closed(&mut self, closed: ClosedEpoch) {
        self.open.retain(|(epoch, _), _| *epoch != closed.epoch);
        self.probing.remove(&closed.epoch);
        self.closed.insert(closed.epoch, closed);
    }

    /// Takes one report that arrived at `now_ms`.
    pub fn ingest(&mut self, signed: &SignedNodeReport, now_ms: u64) -> Verdict {
        let valid = signature_valid(signed);
        self.ingest_checked(signed, valid, now_ms)
    }

    /// Takes reports that arrived at `now_ms`, verifying their signatures as one batch; the
    /// verdicts are exactly those of ingesting them one by one, in order.
    pub fn ingest_batch(&mut self, batch: &[SignedNodeReport], now_ms: u64) -> Vec<Verdict> {
        let valid = crate::report::signatures_valid(batch);
        batch
            .iter()
            .zip(valid)
            .map(|(s, v)| self.ingest_checked(s, v, now_ms))
            .collect()
    }

    fn ingest_checked(
        &mut self,
        signed: &SignedNodeReport,
        signature_ok: bool,
        now_ms: u64,
    ) -> Verdict {
        let Some(report) = &signed.report else {
            return Verdict::Malformed;
        };
        let Some(node) = report.node_id.as_ref().map(|n| n.hex.clone()) else {
            return Verdict::Malformed;
        };
        if pixelgrid_proto::identity::canonical_node_id(&node).is_err() {
            return Verdict::Malformed;
        }
        if report.sequence > MAX_REPORT_NUMBER
            || report.sent_unix_ms > MAX_REPORT_NUMBER
            || report.sessions.len() > MAX_SESSIONS_PER_REPORT
            || report
                .sessions
                .iter()
                .any(|s| s.session_id.len() > MAX_SESSION_ID_BYTES)
        {
            return Verdict::OutOfRange;
        }
        if !self.nodes.contains(&node) {
            return Verdict::UnknownNode;
        }
        if !signature_ok {
            return Verdict::BadSignature;
        }
        if report.sent_unix_ms > now_ms.saturating_add(self.config.max_clock_skew_ms) {
            return Verdict::ClockSkew;
        }
        if now_ms
            > report
                .sent_unix_ms
                .saturating_add(self.config.max_report_delay_ms)
        {
            return Verdict::TooLate;
        }
        let last = self.last.get(&node).copied();
        if last.is_some_and(|l| report.sequence <= l.sequence) {
            return Verdict::Replayed;
        }
        let epoch = self.epoch_of(report.sent_unix_ms);
        if self.is_closed(epoch) {
            return Verdict::EpochClosed;
        }
        if last.is_some_and(|l| report.sent_unix_ms <= l.sent_ms) {
            return Verdict::TimeWentBack;
        }
        // Time a session can have been played since the node's previous report.
        let since_last = last.map_or(self.config.slot_ms, |l| {
            report.sent_unix_ms.saturating_sub(l.sent_ms)
        });
        self.last.insert(
            node.clone(),
            LastReport {
                sequence: report.sequence,
                sent_ms: report.sent_unix_ms,
            },
        );
        let entry = self.open.entry((epoch, node)).or_default();
        entry
            .reported
            .insert(report.sent_unix_ms / self.config.slot_ms);
        for s in &report.sessions {
            if s.dropped_by_node {
                entry.dropped += 1;
            }
            let (Some(p), Some(a)) = (&s.promised, &s.achieved) else {
                continue;
            };
            let at_promise = a.width_px >= p.width_px
                && a.height_px >= p.height_px
                && u64::from(a.fps) * 100 >= u64::from(p.fps) * 95;
            if at_promise {
                entry.delivered_ms += s.delivered_ms.min(since_last);
            }
        }
        Verdict::Accepted
    }

    /// Records the indexer's own probe of `node_id` at `at_ms` (with its retries: passed when
    /// any try passed).
    pub fn record_probe(&mut self, node_id: &str, at_ms: u64, passed: bool) {
        let epoch = self.epoch_of(at_ms);
        if self.is_closed(epoch) || !self.nodes.contains(node_id) {
            return;
        }
        let slot = at_ms / self.config.slot_ms;
        self.probing.entry(epoch).or_default().insert(slot);
        let e = self.open.entry((epoch, node_id.to_owned())).or_default();
        if passed {
            e.probe_ok.insert(slot);
        }
    }

    /// Closes `epoch` (idempotent: closing again returns the same result and changes nothing).
    pub fn close_epoch(&mut self, epoch: u64) -> &ClosedEpoch {
        assert!(
            epoch >= self.closed_before || self.closed.contains_key(&epoch),
            "epoch {epoch} was closed before this tally was rebuilt; read it from the ledger"
        );
        if !self.closed.contains_key(&epoch) {
            let c = &self.config;
            let keys: Vec<(u64, String)> = self
                .open
                .range((epoch, String::new())..(epoch + 1, String::new()))
                .map(|(k, _)| k.clone())
                .collect();
            let probing = self.probing.remove(&epoch).unwrap_or_default();
            let mut payouts = Vec::new();
            for key in keys {
                let e = self.open.remove(&key).expect("listed");
                // A reported slot is up when a probe in it passed, or when the indexer probed
                // nobody in it (it was down: its outage is not the node's fault).
                let up_slots = e
                    .reported
                    .iter()
                    .filter(|s| e.probe_ok.contains(s) || !probing.contains(s))
                    .count() as u64;
                let uptime_ms = up_slots * c.slot_ms;
                let sla_met = u128::from(uptime_ms) * 1_000_000
                    >= u128::from(c.sla_floor_ppm) * u128::from(c.epoch_ms);
                let readiness = if sla_met {
                    (u128::from(c.readiness_reward) * u128::from(uptime_ms)
                        / u128::from(c.epoch_ms)) as u64
                } else {
                    0
                };
                let delivery = (u128::from(c.delivery_reward_per_minute)
                    * u128::from(e.delivered_ms)
                    / 60_000) as u64;
                let refunded = c.refund_per_dropped_session.saturating_mul(e.dropped);
                payouts.push(NodePayout {
                    node_id: key.1,
                    amount: readiness.saturating_add(delivery).saturating_sub(refunded),
                    uptime_ms,
                    delivered_ms: e.delivered_ms,
                    refunded,
                    sla_met,
                });
            }
            payouts.sort_by(|a, b| a.node_id.cmp(&b.node_id));
            let root = merkle::root(&leaves(&payouts));
            self.closed.insert(
                epoch,
                ClosedEpoch {
                    epoch,
                    payouts,
                    root,
                },
            );
        }
        &self.closed[&epoch]
    }

    /// A closed epoch, if it is.
    pub fn closed(&self, epoch: u64) -> Option<&ClosedEpoch> {
        self.closed.get(&epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ready as report;
    use pixelgrid_proto::identity::NodeKey;
    use pixelgrid_proto::indexer::v1::SessionDelivery;
    use pixelgrid_proto::types::v1::{NodeId, VideoMode};

    const MIN: u64 = 60_000;

    fn config() -> TallyConfig {
        TallyConfig {
            sla_floor_ppm: 0,
            ..TallyConfig::default()
        }
    }

    fn mode(w: u32, h: u32, fps: u32) -> Option<VideoMode> {
        Some(VideoMode {
            width_px: w,
            height_px: h,
            fps,
        })
    }

    /// A node that reports and passes its probe every minute of an hour, except `down` minutes.
    fn run_hour(t: &mut Tally, key: &NodeKey, down: std::ops::Range<u64>, probes_pass: bool) {
        for m in 0..60 {
            if down.contains(&m) {
                continue;
            }
            let at = m * MIN + 1_000;
            assert_eq!(
                t.ingest(&report(key, m + 1, at, vec![]), at + 50),
                Verdict::Accepted
            );
            t.record_probe(&key.node_id(), at + 20_000, probes_pass);
        }
    }

    #[test]
    fn a_node_down_for_ten_minutes_loses_exactly_that_uptime() {
        let key = NodeKey::from_seed(&[1; 32]);
        let mut t = Tally::new(config());
        t.add_node(&key.node_id());
        run_hour(&mut t, &key, 20..30, true);
        let e = t.close_epoch(0);
        assert_eq!(e.payouts[0].uptime_ms, 50 * MIN);
        assert_eq!(e.payouts[0].amount, 1_000_000 * 50 / 60);
    }

    #[test]
    fn reporting_without_passing_probes_earns_no_uptime() {
        let key = NodeKey::from_seed(&[2; 32]);
        let mut t = Tally::new(config());
        t.add_node(&key.node_id());
        run_hour(&mut t, &key, 0..0, false);
        assert_eq!(t.close_epoch(0).payouts[0].uptime_ms, 0);
    }

    #[test]
    fn forged_replayed_reordered_duplicated_and_future_reports_credit_nothing() {
        let key = NodeKey::from_seed(&[3; 32]);
        let stranger = NodeKey::from_seed(&[4; 32]);
        let mut t = Tally::new(config());
        t.add_node(&key.node_id());
        let at = 5 * MIN;
        let good = report(&key, 10, at, vec![]);
        assert_eq!(t.ingest(&good, at), Verdict::Accepted);
        assert_eq!(t.ingest(&good, at + 1), Verdict::Replayed, "duplicate");
        assert_eq!(
            t.ingest(&report(&key, 9, at + MIN, vec![]), at + MIN),
            Verdict::Replayed,
            "reordered"
        );
        let mut forged = report(&key, 11, at + MIN, vec![]);
        forged.report.as_mut().unwrap().sent_unix_ms += 1;
        assert_eq!(
            t.ingest(&forged, at + MIN),
            Verdict::BadSignature,
            "altered after signing"
        );
        let mut impostor = report(&stranger, 12, at + MIN, vec![]);
        impostor.report.as_mut().unwrap().node_id = Some(NodeId { hex: key.node_id() });
        assert_eq!(
            t.ingest(&impostor, at + MIN),
            Verdict::BadSignature,
            "signed by another key"
        );
        assert_eq!(
            t.ingest(&report(&stranger, 1, at, vec![]), at),
            Verdict::UnknownNode
        );
        assert_eq!(
            t.ingest(&report(&key, 13, at + 10 * MIN, vec![]), at + MIN),
            Verdict::ClockSkew,
            "future-dated"
        );
        assert_eq!(
            t.ingest(&report(&key, 14, at, vec![]), at + 11 * MIN),
            Verdict::TooLate,
            "delivered after the allowed delay"
        );
        assert_eq!(
            t.ingest(&SignedNodeReport::default(), at),
            Verdict::Malformed
        );
        // Only the one good report counts: its slot, with a probe, is the only uptime.
        t.record_probe(&key.node_id(), at + 10_000, true);
        t.record_probe(&key.node_id(), at + MIN + 10_000, true);
        assert_eq!(t.close_epoch(0).payouts[0].uptime_ms, MIN);
    }

    #[test]
    fn delivery_counts_only_at_the_promised_quality_and_cannot_be_inflated() {
        let key = NodeKey::from_seed(&[5; 32]);
        let mut t = Tally::new(config());
        t.add_node(&key.node_id());
        let good = SessionDelivery {
            session_id: "a".into(),
            promised: mode(1280, 720, 60),
            achieved: mode(1280, 720, 58),
            delivered_ms: MIN,
            dropped_by_node: false,
        };
        let poor = SessionDelivery {
            session_id: "b".into(),
            promised: mode(1280, 720, 60),
            achieved: mode(640, 360, 60),
            delivered_ms: MIN,
            dropped_by_node: false,
        };
        let inflated = SessionDelivery {
            session_id: "c".into(),
            promised: mode(1280, 720, 60),
            achieved: mode(1280, 720, 60),
            delivered_ms: 100 * MIN,
            dropped_by_node: false,
        };
        let dropped = SessionDelivery {
            session_id: "d".into(),
            dropped_by_node: true,
            ..Default::default()
        };
        assert_eq!(
            t.ingest(&report(&key, 1, MIN, vec![good, poor]), MIN),
            Verdict::Accepted
        );
        assert_eq!(
            t.ingest(&report(&key, 2, 2 * MIN, vec![inflated, dropped]), 2 * MIN),
            Verdict::Accepted
        );
        // Probed and unanswered: no readiness, so the sum is delivery and refund alone.
        t.record_probe(&key.node_id(), MIN + 1, false);
        t.record_probe(&key.node_id(), 2 * MIN + 1, false);
        let p = &t.close_epoch(0).payouts[0];
        assert_eq!(
            p.delivered_ms,
            2 * MIN,
            "one good minute plus the inflated one capped at a minute"
        );
        assert_eq!(p.refunded, 50_000);
        assert_eq!(
            p.amount, 0,
            "two minutes of delivery (20,000) minus one refund (50,000), floored at 0"
        );
    }

    #[test]
    fn the_sla_floor_withholds_readiness() {
        let key = NodeKey::from_seed(&[6; 32]);
        let mut t = Tally::new(TallyConfig::default());
        t.add_node(&key.node_id());
        run_hour(&mut t, &key, 59..60, true);
        let p = &t.close_epoch(0).payouts[0];
        assert!(!p.sla_met, "59/60 is under 99 %");
        assert_eq!(p.amount, 0);
    }

    #[test]
    fn two_indexers_fed_the_same_inputs_publish_the_same_root_and_proofs_check() {
        let keys: Vec<NodeKey> = (10..15).map(|i| NodeKey::from_seed(&[i; 32])).collect();
        let feed = |t: &mut Tally| {
            for (i, k) in keys.iter().enumerate() {
                t.add_node(&k.node_id());
                run_hour(t, k, 0..(i as u64 * 3), true);
            }
        };
        let (mut a, mut b) = (Tally::new(config()), Tally::new(config()));
        feed(&mut a);
        feed(&mut b);
        let (ea, eb) = (a.close_epoch(0).clone(), b.close_epoch(0).clone());
        assert_eq!(ea.root, eb.root);
        assert_eq!(ea, eb);
        for k in &keys {
            let (amount, proof) = ea.proof(&k.node_id()).unwrap();
            let id: [u8; 32] = unhex(&k.node_id()).unwrap().try_into().unwrap();
            assert!(merkle::verify(&ea.root, &id, amount, &proof));
            assert!(
                !merkle::verify(&ea.root, &id, amount + 1, &proof),
                "a tampered amount fails"
            );
        }
    }

    #[test]
    fn a_batch_gets_the_same_verdicts_as_one_by_one_even_with_a_forgery_inside() {
        let keys: Vec<NodeKey> = (20..24).map(|i| NodeKey::from_seed(&[i; 32])).collect();
        let mut batch: Vec<SignedNodeReport> =
            keys.iter().map(|k| report(k, 1, MIN, vec![])).collect();
        batch[2].report.as_mut().unwrap().sequence = 99; // forged after signing
        batch.push(batch[0].clone()); // duplicate
        let (mut a, mut b) = (Tally::new(config()), Tally::new(config()));
        for k in &keys {
            a.add_node(&k.node_id());
            b.add_node(&k.node_id());
        }
        let one_by_one: Vec<Verdict> = batch.iter().map(|r| a.ingest(r, MIN)).collect();
        assert_eq!(b.ingest_batch(&batch, MIN), one_by_one);
        assert_eq!(one_by_one[2], Verdict::BadSignature);
        assert_eq!(one_by_one[4], Verdict::Replayed);
    }

    #[test]
    fn numbers_the_ledger_cannot_hold_are_refused_and_the_node_goes_on() {
        let key = NodeKey::from_seed(&[30; 32]);
        let mut t = Tally::new(config());
        t.add_node(&key.node_id());
        for seq in [1 << 63, u64::MAX, (1 << 63) + 1] {
            assert_eq!(
                t.ingest(&report(&key, seq, MIN, vec![]), MIN),
                Verdict::OutOfRange,
                "sequence {seq}"
            );
        }
        assert_eq!(
            t.ingest(&report(&key, 1, u64::MAX, vec![]), MIN),
            Verdict::OutOfRange
        );
        let many = vec![SessionDelivery::default(); MAX_SESSIONS_PER_REPORT + 1];
        assert_eq!(
            t.ingest(&report(&key, 2, MIN, many), MIN),
            Verdict::OutOfRange
        );
        let long_id = SessionDelivery {
            session_id: "x".repeat(MAX_SESSION_ID_BYTES + 1),
            ..Default::default()
        };
        assert_eq!(
            t.ingest(&report(&key, 3, MIN, vec![long_id]), MIN),
            Verdict::OutOfRange
        );
        // None of them moved the node's sequence: its next ordinary report is taken.
        assert_eq!(
            t.ingest(&report(&key, 4, MIN, vec![]), MIN),
            Verdict::Accepted
        );
        assert_eq!(
            t.ingest(&report(&key, MAX_REPORT_NUMBER, MIN + 1, vec![]), MIN),
            Verdict::Accepted,
            "the largest sequence the ledger holds is fine"
        );
    }

    #[test]
    fn time_must_advance_with_the_sequence_and_ids_have_one_spelling() {
        let key = NodeKey::from_seed(&[31; 32]);
        let mut t = Tally::new(config());
        t.add_node(&key.node_id());
        assert_eq!(
            t.ingest(&report(&key, 1, 5 * MIN, vec![]), 5 * MIN),
            Verdict::Accepted
        );
        assert_eq!(
            t.ingest(&report(&key, 2, 4 * MIN, vec![]), 5 * MIN),
            Verdict::TimeWentBack,
            "a higher sequence with an earlier time"
        );
        assert_eq!(
            t.ingest(&report(&key, 3, 5 * MIN, vec![]), 5 * MIN),
            Verdict::TimeWentBack,
            "the same time again"
        );
        assert_eq!(
            t.ingest(&report(&key, 4, 6 * MIN, vec![]), 6 * MIN),
            Verdict::Accepted
        );
        let mut shouting = report(&key, 5, 7 * MIN, vec![]);
        shouting.report.as_mut().unwrap().node_id = Some(NodeId {
            hex: key.node_id().to_uppercase(),
        });
        assert_eq!(t.ingest(&shouting, 7 * MIN), Verdict::Malformed);
    }

    #[test]
    fn a_lost_probe_retried_and_an_indexer_outage_cost_nothing_but_a_dead_probe_does() {
        let key = NodeKey::from_seed(&[32; 32]);
        let other = NodeKey::from_seed(&[33; 32]);
        let mut t = Tally::new(config());
        t.add_node(&key.node_id());
        t.add_node(&other.node_id());
        for m in 0..60 {
            let at = m * MIN + 1_000;
            assert_eq!(
                t.ingest(&report(&key, m + 1, at, vec![]), at),
                Verdict::Accepted
            );
            match m {
                // Minutes 10–19: the indexer was down and probed nobody.
                10..20 => {}
                // Minute 30: the first try was lost, a retry in the same slot passed.
                30 => {
                    t.record_probe(&key.node_id(), at + 5_000, false);
                    t.record_probe(&key.node_id(), at + 6_000, true);
                }
                // Minutes 40–44: probed, never answered: down, whatever it reported.
                40..45 => t.record_probe(&key.node_id(), at + 5_000, false),
                _ => t.record_probe(&key.node_id(), at + 5_000, true),
            }
            if !(10..20).contains(&m) {
                t.record_probe(&other.node_id(), at + 7_000, true);
            }
        }
        let e = t.close_epoch(0);
        let p = e
            .payouts
            .iter()
            .find(|p| p.node_id == key.node_id())
            .unwrap();
        assert_eq!(
            p.uptime_ms,
            55 * MIN,
            "only the five unanswered minutes are lost"
        );
    }

    #[test]
    fn a_closed_epoch_never_changes() {
        let key = NodeKey::from_seed(&[7; 32]);
        let mut t = Tally::new(config());
        t.add_node(&key.node_id());
        run_hour(&mut t, &key, 0..0, true);
        let first = t.close_epoch(0).clone();
        let late = report(&key, 1000, 30 * MIN, vec![]);
        assert_eq!(t.ingest(&late, 30 * MIN), Verdict::EpochClosed);
        t.record_probe(&key.node_id(), 30 * MIN, false);
        assert_eq!(t.close_epoch(0), &first, "closing again changes nothing");
    }
}
