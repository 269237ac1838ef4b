//! The tally: a deterministic function from accepted reports and probe results to per-epoch
//! uptime, delivery and payouts. No clock, no I/O: every input carries its time.
//!
//! Time is cut into epochs (`epoch_ms`, an hour by default) and slots (`slot_ms`, the report and
//! probe period). A node is **up for a slot** only when it sent an accepted report in that slot
//! **and** answered one of the indexer's own probes in it (a fresh nonce signed with its key
//! proves it was up). A probe is retried within its slot and the slot is up when any try passed,
//! so one lost packet costs nothing; self-reports alone earn nothing, as with Aethir's checker
//! nodes. A slot in which the indexer probed nobody (it was down or restarting) is not charged to
//! a node that reported in it.
//!
//! **Delivered play** counts only as far as the session's player attests it: a report's session
//! entry must carry the session token the orchestrator signed (so the orchestrator placed that
//! session on that node, valid at the report's time, naming the player's receipt key) and a
//! receipt signed by that key, at the promised mode; the credit is the receipt's new play time
//! (cumulative `played_ms` beyond what earlier receipts were credited), capped by what the node
//! claims and by the time since its previous report. A node without receipts earns readiness
//! but no delivery. Money is integer micro-credits:
//!
//! ```text
//! readiness = readiness_reward × uptime / epoch      (0 when uptime is under the SLA floor)
//! studio_paid = Σ over paid sessions: price × attested ms / 60 000   (the token's price, its studio's)
//! delivery  = delivery_reward_per_minute × delivered_ms / 60 000 + studio_paid − fee
//! fee       = protocol_fee_ppm × (delivery before the fee) / 1 000 000   (to the treasury's leaf)
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
/// sequence, slots the indexer probed nobody in are not charged; delivery only as player
/// receipts attest, for sessions the orchestrator placed; identities crowding one host; stakes,
/// downtime slashing and the protocol fee with the treasury's leaf. 3: checkers' signed results,
/// the majority of the named checkers failing a node forfeits its epoch and slashes it. 4: studios
/// pay their sessions' prices for attested play, on top of the network's delivery reward; a
/// checker's results per node and epoch capped ([`checks_allowed`]).
pub const RULES_REVISION: u32 = 4;

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
    /// Share of each node's delivery reward kept as the protocol fee (parts per million); fees
    /// and slashed stake go to the treasury's leaf ([`TREASURY`]).
    pub protocol_fee_ppm: u64,
    /// How long a withdrawal stays at risk after it is asked for, ms.
    pub withdrawal_delay_ms: u64,
    /// K of the downtime slash (`1/3 × K × coefficient` of the stake at risk), ppm.
    pub slash_k_ppm: u64,
    /// The stake coefficient of the downtime slash, ppm.
    pub stake_coefficient_ppm: u64,
    /// How many downtime slashes a node failing its checks loses (Aethir: 3).
    pub dishonesty_factor: u64,
    /// Most nodes one host may have up in a slot (0: no limit): identities answering probes
    /// from the same host beyond this earn nothing for the slot, the lowest node ids first.
    pub max_nodes_per_host: u32,
    /// Hex ed25519 public keys of the orchestrator(s) whose session tokens prove a placement
    /// (old and new during a key rotation). Without any, no delivery is credited. Not part of
    /// the stored rules: keys rotate while the ledger goes on.
    #[serde(skip)]
    pub orchestrator_keys: Vec<String>,
    /// Hex ed25519 public keys of the checkers whose signed results count (2N+1 of them in
    /// Aethir's shape). A node fails an epoch's checks when more than half of them each found
    /// it failing more often than passing in that epoch. Not part of the stored rules (checkers
    /// come and go); every indexer of one grid must name the same ones.
    #[serde(skip)]
    pub checker_keys: Vec<String>,
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
            max_nodes_per_host: 8,
            protocol_fee_ppm: 200_000,
            withdrawal_delay_ms: 7 * 24 * 3_600_000,
            slash_k_ppm: 300_000,
            stake_coefficient_ppm: 1_000_000,
            dishonesty_factor: 3,
            orchestrator_keys: Vec::new(),
            checker_keys: Vec::new(),
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
    /// A stake change withdrawing more than is bonded, or not exactly one of deposit and
    /// withdraw.
    InvalidStakeChange,
    /// A check result signed by a checker the rules do not name.
    UnknownChecker,
}

/// The largest stake one node may hold, micro-credits (a billion credits): sums of stakes stay
/// far below what the ledger holds.
pub const MAX_STAKE: u64 = 1_000_000_000_000_000;

/// Play a receipt may claim beyond the time since its session was placed (clock granularity).
const PLAY_SLACK_MS: u64 = 5_000;

/// Session tokens remembered as checked, at most.
const MAX_CHECKED_TOKENS: usize = 65_536;

/// The largest sequence or time a report may carry: the ledger keeps them as SQLite integers.
pub const MAX_REPORT_NUMBER: u64 = i64::MAX as u64;
/// Most session entries one report may carry (far above any node's capacity).
pub const MAX_SESSIONS_PER_REPORT: usize = 256;
/// A checker's results for one node count at most once per this long on average (an epoch of
/// an hour takes 360 per checker and node; checkers watch once a minute).
pub const MIN_CHECK_PERIOD_MS: u64 = 10_000;
/// Results one checker may submit for one node in an epoch of `epoch_ms` (at least 10, for
/// short epochs).
pub fn checks_allowed(epoch_ms: u64) -> u64 {
    (epoch_ms / MIN_CHECK_PERIOD_MS).max(10)
}
/// Longest session id a report may carry, bytes.
pub const MAX_SESSION_ID_BYTES: usize = 128;

#[derive(Debug, Clone, Default)]
struct NodeEpoch {
    reported: BTreeSet<u64>,
    probe_ok: BTreeSet<u64>,
    /// Probes of this node in the epoch (passed or not).
    probed: u64,
    /// The host that answered a passed probe, per slot (when known).
    probe_host: BTreeMap<u64, String>,
    delivered_ms: u64,
    /// Per paying studio: attested play of its sessions on this node, ms, and Σ price × ms
    /// (÷ 60 000 at the close).
    studio_owed: BTreeMap<String, (u64, u128)>,
    dropped: u64,
}

#[derive(Debug, Clone, Copy)]
struct LastReport {
    sequence: u64,
    sent_ms: u64,
}

/// What a batch found out about a report's sessions before tallying it: per session, whether its
/// receipt's signature is valid, and its placement when the token verified.
type Prechecked<'a> = (&'a [bool], &'a [Option<std::sync::Arc<Placement>>]);

/// A session token that verified: its claims, and the player key it names (decompressed once).
#[derive(Debug)]
struct Placement {
    claims: pixelgrid_proto::token::SessionClaims,
    player: Option<ed25519_dalek::VerifyingKey>,
    /// Valid from (`nbf`, or `iat`), unix ms; `u64::MAX` when unreadable.
    from_ms: u64,
    /// Valid until (`exp`), unix ms; 0 when unreadable.
    until_ms: u64,
}

impl Placement {
    fn new(claims: pixelgrid_proto::token::SessionClaims) -> std::sync::Arc<Self> {
        let player = unhex(&claims.pk)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
            .filter(|k| !k.is_weak());
        let (from_ms, until_ms) = claims.validity_ms();
        std::sync::Arc::new(Self {
            from_ms,
            until_ms,
            claims,
            player,
        })
    }
}

fn token_digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// Play time a player's receipt attested for a session on a node, as far as it was credited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedPlay {
    /// Node id.
    pub node_id: String,
    /// Session id.
    pub session_id: String,
    /// The receipt's `played_ms` (cumulative since the session's first frame).
    pub played_ms: u64,
    /// The epoch of the report that carried it.
    pub epoch: u64,
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
    /// Stake at risk at the epoch's end, micro-credits.
    pub stake: u64,
    /// Slashed from it at this close (downtime below the SLA), micro-credits.
    pub slashed: u64,
    /// Protocol fee taken from the delivery reward, micro-credits.
    pub fee: u64,
    /// A majority of the checkers found the node failing in this epoch: it earned nothing and
    /// was slashed at the dishonesty rate.
    pub checks_failed: bool,
    /// What studios paid for the play this node delivered (before the fee), micro-credits.
    pub studio_paid: u64,
}

/// What one studio owes for an epoch: its sessions' attested play at the prices they were
/// placed at (the same receipts that credit the nodes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StudioCharge {
    /// Studio id.
    pub studio: String,
    /// Attested play of its sessions, ms.
    pub delivered_ms: u64,
    /// Owed, micro-credits: the sum of what the nodes that served it got from it (each
    /// rounded down); nothing for the play of a node the checkers failed.
    pub amount: u64,
}

/// The treasury's leaf in every epoch's tree: 32 zero bytes, no node's key. It receives the
/// protocol fees and the slashed stake.
pub const TREASURY: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A closed epoch: payouts sorted by node id, and their Merkle root.
#[derive(Debug, Clone, Serialize)]
pub struct ClosedEpoch {
    /// Epoch number (start / epoch_ms).
    pub epoch: u64,
    /// Payouts, sorted by node id.
    pub payouts: Vec<NodePayout>,
    /// What each studio owes for the epoch, sorted by studio id.
    pub charges: Vec<StudioCharge>,
    /// Merkle root over `(node_id, amount)`.
    pub root: Hash,
    /// The tree over the payouts, built once (the close builds it for the root, the ledger
    /// stores it).
    #[serde(skip)]
    tree: std::sync::OnceLock<std::sync::Arc<merkle::Tree>>,
}

/// Two closed epochs are the same when their payouts and root are (however their trees were
/// cached).
impl PartialEq for ClosedEpoch {
    fn eq(&self, other: &Self) -> bool {
        self.epoch == other.epoch
            && self.payouts == other.payouts
            && self.charges == other.charges
            && self.root == other.root
    }
}

impl Eq for ClosedEpoch {}

impl ClosedEpoch {
    /// The payout of `node_id` (hex), if it has one (payouts are sorted by node id).
    pub fn payout_of(&self, node_id: &str) -> Option<&NodePayout> {
        self.payouts
            .binary_search_by(|p| p.node_id.as_str().cmp(node_id))
            .ok()
            .map(|i| &self.payouts[i])
    }

    /// A closed epoch as written before (its tree is rebuilt when asked for).
    pub fn new(
        epoch: u64,
        payouts: Vec<NodePayout>,
        charges: Vec<StudioCharge>,
        root: Hash,
    ) -> Self {
        Self {
            epoch,
            payouts,
            charges,
            root,
            tree: std::sync::OnceLock::new(),
        }
    }

    /// The proof for one node's payout.
    pub fn proof(&self, node_id: &str) -> Option<(u64, merkle::Proof)> {
        let i = self.payouts.iter().position(|p| p.node_id == node_id)?;
        Some((self.payouts[i].amount, self.tree().proof(i)?))
    }

    /// The whole tree over the payouts (leaf `i` is payout `i`).
    pub fn tree(&self) -> std::sync::Arc<merkle::Tree> {
        std::sync::Arc::clone(
            self.tree
                .get_or_init(|| std::sync::Arc::new(merkle::Tree::new(&leaves(&self.payouts)))),
        )
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
    /// Checks session tokens against `config.orchestrator_keys` (none: nothing verifies).
    placements: Option<pixelgrid_proto::token::TokenVerifier>,
    /// Per (node, session): the play time already credited from its player's receipts, ms.
    /// Also when its token expires (unix ms): after that no receipt of it counts, so the entry
    /// goes at the next close.
    attested: BTreeMap<(String, String), (u64, u64)>,
    /// Receipt credits since the last [`Tally::take_attested`], for the ledger.
    newly_attested: Vec<AttestedPlay>,
    /// Session tokens already checked (a node sends the same one with every report): a pure
    /// function of the token, so it changes no outcome.
    checked_tokens: std::collections::HashMap<[u8; 32], Option<std::sync::Arc<Placement>>>,
    /// Known nodes' public keys, decompressed once.
    node_keys: std::collections::HashMap<String, ed25519_dalek::VerifyingKey>,
    nodes: BTreeSet<String>,
    last: BTreeMap<String, LastReport>,
    open: BTreeMap<(u64, String), NodeEpoch>,
    /// Stakes per node.
    stakes: BTreeMap<String, crate::stake::StakeAccount>,
    /// Each node's last accepted stake change sequence.
    last_stake: BTreeMap<String, u64>,
    /// Stake events since the last [`Tally::take_stake_events`], for the ledger.
    new_stake_events: Vec<(String, u64, crate::stake::StakeEvent)>,
    /// Per open (epoch, node): each named checker's (passed, failed) results.
    checks: BTreeMap<(u64, String), BTreeMap<String, (u32, u32)>>,
    /// Results taken, by (epoch, checker, node, session): each is counted once.
    seen_checks: BTreeSet<(u64, String, String, String)>,
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
        let keys: Vec<&str> = config
            .orchestrator_keys
            .iter()
            .map(String::as_str)
            .collect();
        let placements = (!keys.is_empty())
            .then(|| pixelgrid_proto::token::TokenVerifier::from_hex_keys(&keys).ok())
            .flatten();
        Self {
            config,
            placements,
            attested: BTreeMap::new(),
            newly_attested: Vec::new(),
            checked_tokens: std::collections::HashMap::new(),
            node_keys: std::collections::HashMap::new(),
            nodes: BTreeSet::new(),
            last: BTreeMap::new(),
            open: BTreeMap::new(),
            probing: BTreeMap::new(),
            stakes: BTreeMap::new(),
            last_stake: BTreeMap::new(),
            new_stake_events: Vec::new(),
            checks: BTreeMap::new(),
            seen_checks: BTreeSet::new(),
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
        if let Some(key) = unhex(node_id)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
        {
            self.node_keys.insert(node_id.to_owned(), key);
        }
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

    /// Why something stamped `at_ms` that arrived at `now_ms` is refused for its time, if it is:
    /// ahead of the indexer's clock by more than the allowed skew, or later than reports may be.
    fn out_of_window(&self, at_ms: u64, now_ms: u64) -> Option<Verdict> {
        if at_ms > now_ms.saturating_add(self.config.max_clock_skew_ms) {
            Some(Verdict::ClockSkew)
        } else if now_ms > at_ms.saturating_add(self.config.max_report_delay_ms) {
            Some(Verdict::TooLate)
        } else {
            None
        }
    }

    /// The epoch a time falls in.
    pub fn epoch_of(&self, ms: u64) -> u64 {
        ms / self.config.epoch_ms
    }

    /// Re-applies a report the ledger accepted earlier (its signature was checked then), as it
    /// arrived at `arrived_ms`; used when a restarted indexer rebuilds its open epochs.
    pub fn replay(&mut self, signed: &SignedNodeReport, arrived_ms: u64) -> Verdict {
        self.ingest_checked(signed, true, arrived_ms, None)
    }

    /// Like [`Tally::replay`], taking a receipt's signature as valid exactly when the ledger
    /// says it was credited (`credited` holds `(session, played_ms)` of the node's credited
    /// receipts): the live check was a batch, and a replay must reach the same outcome.
    pub fn replay_with_credits(
        &mut self,
        signed: &SignedNodeReport,
        arrived_ms: u64,
        credited: &std::collections::HashSet<(String, u64)>,
    ) -> Verdict {
        let flags: Vec<bool> = signed.report.as_ref().map_or_else(Vec::new, |r| {
            r.sessions
                .iter()
                .map(|s| {
                    s.receipt
                        .as_ref()
                        .is_some_and(|rc| credited.contains(&(s.session_id.clone(), rc.played_ms)))
                })
                .collect()
        });
        self.ingest_checked(signed, true, arrived_ms, Some((&flags, &[])))
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
        self.checks.retain(|(e, _), _| *e >= epoch);
        self.seen_checks.retain(|(e, ..)| *e >= epoch);
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
        self.ingest_checked(signed, valid, now_ms, None)
    }

    /// Takes reports that arrived at `now_ms`, verifying their signatures as one batch; the
    /// verdicts are exactly those of ingesting them one by one, in order.
    pub fn ingest_batch(&mut self, batch: &[SignedNodeReport], now_ms: u64) -> Vec<Verdict> {
        let node_keys = &self.node_keys;
        let valid = crate::report::signatures_valid_with(batch, |id| node_keys.get(id).copied());
        // The players' receipts in validly signed reports, checked as one batch too (their keys
        // come from the session tokens).
        // Their sessions' tokens, new ones verified as one batch.
        let with_receipts: Vec<(usize, usize)> = batch
            .iter()
            .enumerate()
            .filter(|(i, _)| valid[*i])
            .filter_map(|(i, s)| Some((i, s.report.as_ref()?)))
            .flat_map(|(i, r)| {
                r.sessions
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| d.receipt.is_some())
                    .map(move |(j, _)| (i, j))
            })
            .collect();
        let session =
            |(i, j): (usize, usize)| &batch[i].report.as_ref().expect("a valid report").sessions[j];
        let tokens: Vec<&str> = with_receipts
            .iter()
            .map(|at| session(*at).session_token.as_str())
            .collect();
        let placed_tokens = self.placements_of(&tokens);
        let mut checks = Vec::new();
        let mut at = Vec::new();
        let mut placements: Vec<Vec<Option<std::sync::Arc<Placement>>>> = batch
            .iter()
            .map(|s| vec![None; s.report.as_ref().map_or(0, |r| r.sessions.len())])
            .collect();
        for ((i, j), placed) in with_receipts.into_iter().zip(placed_tokens) {
            let d = session((i, j));
            let (Some(r), Some(placed)) = (&d.receipt, placed) else {
                continue;
            };
            if let Some(player) = placed.player
                && placed.claims.sid == d.session_id
            {
                let text = pixelgrid_proto::receipt::Receipt::from_proto(r)
                    .signed_text(&placed.claims.sid);
                checks.push((text, r.signature.clone(), player));
                at.push((i, j));
            }
            placements[i][j] = Some(placed);
        }
        let mut receipts_ok: Vec<Vec<bool>> = batch
            .iter()
            .map(|s| vec![false; s.report.as_ref().map_or(0, |r| r.sessions.len())])
            .collect();
        for ((i, j), ok) in at.into_iter().zip(crate::report::batch_then_each(&checks)) {
            receipts_ok[i][j] = ok;
        }
        batch
            .iter()
            .zip(valid)
            .zip(receipts_ok.iter().zip(&placements))
            .map(|((s, v), (r, p))| self.ingest_checked(s, v, now_ms, Some((r, p))))
            .collect()
    }

    /// The claims of a session token signed by a trusted orchestrator key (remembered).
    fn placement(&mut self, token: &str) -> Option<std::sync::Arc<Placement>> {
        self.placements_of(&[token]).pop().flatten()
    }

    /// The placements `tokens` prove (None where one does not verify): tokens not met before
    /// are verified as one batch and remembered (each session's token is new once; its later
    /// reports find it remembered). Each token's digest is taken once.
    fn placements_of(&mut self, tokens: &[&str]) -> Vec<Option<std::sync::Arc<Placement>>> {
        let Some(verifier) = self.placements.as_ref() else {
            return vec![None; tokens.len()];
        };
        let digests: Vec<Option<[u8; 32]>> = tokens
            .iter()
            .map(|t| (t.len() <= pixelgrid_proto::token::MAX_TOKEN_LEN).then(|| token_digest(t)))
            .collect();
        let mut new: Vec<(&str, [u8; 32])> = Vec::new();
        for (token, digest) in tokens.iter().zip(&digests) {
            if let Some(d) = digest
                && !self.checked_tokens.contains_key(d)
                && !new.iter().any(|(_, n)| n == d)
            {
                new.push((token, *d));
            }
        }
        // This batch's verdicts, looked up here first: remembering may clear a full cache.
        let mut fresh = std::collections::HashMap::new();
        if !new.is_empty() {
            let texts: Vec<&str> = new.iter().map(|(t, _)| *t).collect();
            for ((_, digest), verdict) in new.iter().zip(verifier.verify_timeless_batch(&texts)) {
                let placed = verdict.ok().map(Placement::new);
                self.remember_token(*digest, placed.clone());
                fresh.insert(*digest, placed);
            }
        }
        digests
            .iter()
            .map(|d| {
                let d = d.as_ref()?;
                fresh
                    .get(d)
                    .or_else(|| self.checked_tokens.get(d))
                    .cloned()
                    .flatten()
            })
            .collect()
    }

    fn remember_token(&mut self, digest: [u8; 32], placement: Option<std::sync::Arc<Placement>>) {
        if self.checked_tokens.len() >= MAX_CHECKED_TOKENS {
            self.checked_tokens.clear();
        }
        self.checked_tokens.insert(digest, placement);
    }

    /// `receipts_ok`: per session of the report, whether its receipt's signature was already
    /// found valid (a batch check); `None` checks each here.
    fn ingest_checked(
        &mut self,
        signed: &SignedNodeReport,
        signature_ok: bool,
        now_ms: u64,
        receipts_ok: Option<Prechecked<'_>>,
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
            || report.sessions.iter().any(|s| {
                s.session_id.len() > MAX_SESSION_ID_BYTES
                    || s.session_token.len() > pixelgrid_proto::token::MAX_TOKEN_LEN
                    || s.receipt.as_ref().is_some_and(|r| r.signature.len() > 64)
            })
        {
            return Verdict::OutOfRange;
        }
        // One entry per session: repeating one would multiply its credit.
        let mut ids: Vec<&str> = report
            .sessions
            .iter()
            .filter(|s| !s.dropped_by_node)
            .map(|s| s.session_id.as_str())
            .collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Verdict::Malformed;
        }
        if !self.nodes.contains(&node) {
            return Verdict::UnknownNode;
        }
        if !signature_ok {
            return Verdict::BadSignature;
        }
        if let Some(refused) = self.out_of_window(report.sent_unix_ms, now_ms) {
            return refused;
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
        self.open
            .entry((epoch, node.clone()))
            .or_default()
            .reported
            .insert(report.sent_unix_ms / self.config.slot_ms);
        let mut delivered = 0u64;
        let mut studio_owed: Vec<(String, u64, u128)> = Vec::new();
        let mut dropped = 0u64;
        for (j, s) in report.sessions.iter().enumerate() {
            if s.dropped_by_node {
                dropped += 1;
                continue;
            }
            let checked = receipts_ok.map(|(r, _)| r.get(j).copied().unwrap_or(false));
            let placed = receipts_ok.and_then(|(_, p)| p.get(j).cloned().flatten());
            let Some((attested, placed)) =
                self.attested_play(&node, s, report.sent_unix_ms, epoch, checked, placed)
            else {
                continue;
            };
            let credit = attested.min(s.delivered_ms).min(since_last);
            delivered = delivered.saturating_add(credit);
            // The studio pays the price its session was placed at, for attested play only.
            if placed.claims.price > 0 && !placed.claims.studio.is_empty() {
                let owed = u128::from(placed.claims.price) * u128::from(credit);
                studio_owed.push((placed.claims.studio.clone(), credit, owed));
            }
        }
        let entry = self.open.entry((epoch, node)).or_default();
        entry.dropped += dropped;
        entry.delivered_ms = entry.delivered_ms.saturating_add(delivered);
        for (studio, ms, owed) in studio_owed {
            let o = entry.studio_owed.entry(studio).or_default();
            o.0 = o.0.saturating_add(ms);
            o.1 += owed;
        }
        Verdict::Accepted
    }

    /// New play time the player's receipt in `s` attests for a session the orchestrator placed
    /// on `node`, at the promised mode (0 when anything does not check out), and remembers it.
    fn attested_play(
        &mut self,
        node: &str,
        s: &pixelgrid_proto::indexer::v1::SessionDelivery,
        at_ms: u64,
        epoch: u64,
        signature_checked: Option<bool>,
        placed: Option<std::sync::Arc<Placement>>,
    ) -> Option<(u64, std::sync::Arc<Placement>)> {
        let signed = s.receipt.as_ref()?;
        // The orchestrator placed this session on this node, valid at the report's time.
        let placed = placed.or_else(|| self.placement(&s.session_token))?;
        let claims = &placed.claims;
        if claims.nid != node
            || claims.sid != s.session_id
            || claims.pk.is_empty()
            || at_ms.saturating_add(pixelgrid_proto::token::NBF_LEEWAY_S * 1000) < placed.from_ms
            || at_ms >= placed.until_ms
        {
            return None;
        }
        // Signed by the player key the token names, at the promised mode.
        let receipt = pixelgrid_proto::receipt::Receipt::from_proto(signed);
        // No more play than the session can have had since the orchestrator placed it.
        if receipt.played_ms
            > at_ms
                .saturating_sub(placed.from_ms)
                .saturating_add(PLAY_SLACK_MS)
        {
            return None;
        }
        let at_promise = receipt.width >= claims.width
            && receipt.height >= claims.height
            && u64::from(receipt.fps) * 100 >= u64::from(claims.fps) * 95;
        let signature_ok = signature_checked
            .unwrap_or_else(|| receipt.verify(&claims.sid, &claims.pk, &signed.signature));
        if !at_promise || !signature_ok {
            return None;
        }
        let key = (node.to_owned(), claims.sid.clone());
        let before = self.attested.get(&key).map_or(0, |(played, _)| *played);
        if receipt.played_ms <= before {
            return None;
        }
        self.newly_attested.push(AttestedPlay {
            node_id: key.0.clone(),
            session_id: key.1.clone(),
            played_ms: receipt.played_ms,
            epoch,
        });
        self.attested
            .insert(key, (receipt.played_ms, placed.until_ms));
        Some((receipt.played_ms - before, placed.clone()))
    }

    /// Takes a stake change that arrived at `now_ms` (signed with the node's identity key).
    pub fn ingest_stake(
        &mut self,
        signed: &pixelgrid_proto::indexer::v1::SignedStakeChange,
        now_ms: u64,
    ) -> Verdict {
        use crate::stake::StakeEvent;
        let (Some(change), Some(sig)) = (&signed.change, &signed.signature) else {
            return Verdict::Malformed;
        };
        let Some(node) = change.node_id.as_ref().map(|n| n.hex.clone()) else {
            return Verdict::Malformed;
        };
        if pixelgrid_proto::identity::canonical_node_id(&node).is_err() {
            return Verdict::Malformed;
        }
        if [
            change.sequence,
            change.sent_unix_ms,
            change.deposit,
            change.withdraw,
        ]
        .iter()
        .any(|n| *n > MAX_REPORT_NUMBER)
        {
            return Verdict::OutOfRange;
        }
        if !self.nodes.contains(&node) {
            return Verdict::UnknownNode;
        }
        use prost::Message;
        if !pixelgrid_proto::identity::verify(&node, &change.encode_to_vec(), &sig.signature) {
            return Verdict::BadSignature;
        }
        if let Some(refused) = self.out_of_window(change.sent_unix_ms, now_ms) {
            return refused;
        }
        if self
            .last_stake
            .get(&node)
            .is_some_and(|last| change.sequence <= *last)
        {
            return Verdict::Replayed;
        }
        let bonded = self.stakes.get(&node).map_or(0, |a| a.bonded());
        let event = match (change.deposit, change.withdraw) {
            (d, 0) if d > 0 && bonded.saturating_add(d) <= MAX_STAKE => {
                StakeEvent::Deposit { amount: d }
            }
            (0, w) if w > 0 => StakeEvent::Withdraw {
                amount: w,
                free_at_ms: change
                    .sent_unix_ms
                    .saturating_add(self.config.withdrawal_delay_ms),
            },
            _ => return Verdict::InvalidStakeChange,
        };
        if !self.stakes.entry(node.clone()).or_default().apply(event) {
            return Verdict::InvalidStakeChange;
        }
        self.last_stake.insert(node.clone(), change.sequence);
        self.new_stake_events.push((node, change.sequence, event));
        Verdict::Accepted
    }

    /// Takes a checker's signed result that arrived at `now_ms`. The result's own time decides
    /// its epoch; it counts once, only from a checker the rules name, for a known node.
    pub fn ingest_check(
        &mut self,
        signed: &pixelgrid_proto::indexer::v1::SignedCheckResult,
        now_ms: u64,
    ) -> Verdict {
        let Some(result) = &signed.result else {
            return Verdict::Malformed;
        };
        let Some(node) = result.node_id.as_ref().map(|n| n.hex.clone()) else {
            return Verdict::Malformed;
        };
        if pixelgrid_proto::identity::canonical_node_id(&node).is_err()
            || result.session_id.is_empty()
        {
            return Verdict::Malformed;
        }
        if result.at_unix_ms > MAX_REPORT_NUMBER
            || result.seen_after_ms > MAX_REPORT_NUMBER
            || result.session_id.len() > MAX_SESSION_ID_BYTES
        {
            return Verdict::OutOfRange;
        }
        if !self.config.checker_keys.contains(&signed.checker) {
            return Verdict::UnknownChecker;
        }
        if !self.nodes.contains(&node) {
            return Verdict::UnknownNode;
        }
        if !pixelgrid_proto::check::verify(signed) {
            return Verdict::BadSignature;
        }
        if let Some(refused) = self.out_of_window(result.at_unix_ms, now_ms) {
            return refused;
        }
        let epoch = self.epoch_of(result.at_unix_ms);
        if self.is_closed(epoch) {
            return Verdict::EpochClosed;
        }
        let seen = (
            epoch,
            signed.checker.clone(),
            node.clone(),
            result.session_id.clone(),
        );
        if self.seen_checks.contains(&seen) {
            return Verdict::Replayed;
        }
        // A checker watches a node at most once per MIN_CHECK_PERIOD_MS on average. One result
        // beyond that is taken (and kept in the ledger) as the mark of a flood: that checker's
        // results for the node in this epoch then count for nothing, whichever arrived first,
        // so every indexer fed the same results decides alike. Any more are refused.
        let counted = self
            .checks
            .get(&(epoch, node.clone()))
            .and_then(|by| by.get(&signed.checker))
            .map_or(0, |(passed, failed)| {
                u64::from(*passed) + u64::from(*failed)
            });
        if counted > checks_allowed(self.config.epoch_ms) {
            return Verdict::OutOfRange;
        }
        self.seen_checks.insert(seen);
        let tally = self
            .checks
            .entry((epoch, node))
            .or_default()
            .entry(signed.checker.clone())
            .or_default();
        if result.passed {
            tally.0 = tally.0.saturating_add(1);
        } else {
            tally.1 = tally.1.saturating_add(1);
        }
        Verdict::Accepted
    }

    /// A node's stake: bonded, and withdrawals still at risk at `at_ms`.
    pub fn stake_of(&self, node_id: &str, at_ms: u64) -> (u64, u64) {
        self.stakes
            .get(node_id)
            .map_or((0, 0), |a| (a.bonded(), a.unbonding_at(at_ms)))
    }

    /// Stake events (node, change sequence or 0 for a slash, event) since the last call.
    pub fn take_stake_events(&mut self) -> Vec<(String, u64, crate::stake::StakeEvent)> {
        std::mem::take(&mut self.new_stake_events)
    }

    /// Re-applies a stake event from the ledger (a restart).
    pub fn restore_stake_event(
        &mut self,
        node_id: &str,
        sequence: u64,
        event: crate::stake::StakeEvent,
    ) {
        self.stakes
            .entry(node_id.to_owned())
            .or_default()
            .apply(event);
        if sequence > 0 {
            let last = self.last_stake.entry(node_id.to_owned()).or_default();
            *last = (*last).max(sequence);
        }
    }

    /// Receipt credits since the last call (the ledger keeps them, so a restarted tally knows
    /// what closed epochs already credited).
    pub fn take_attested(&mut self) -> Vec<AttestedPlay> {
        std::mem::take(&mut self.newly_attested)
    }

    /// Restores how much of a session's play was credited in closed epochs.
    pub fn restore_attested(&mut self, node_id: &str, session_id: &str, played_ms: u64) {
        // Its expiry is not in the ledger; kept until a restart forgets it (it changes no
        // outcome: an expired token credits nothing).
        let e = self
            .attested
            .entry((node_id.to_owned(), session_id.to_owned()))
            .or_insert((0, u64::MAX));
        e.0 = e.0.max(played_ms);
    }

    /// Records the indexer's own probe of `node_id` at `at_ms` (with its retries: passed when
    /// any try passed).
    pub fn record_probe(&mut self, node_id: &str, at_ms: u64, passed: bool) {
        self.record_probe_of(node_id, at_ms, passed, "");
    }

    /// [`Tally::record_probe`] of the node at `host` (its probe address's IP; empty: unknown).
    pub fn record_probe_of(&mut self, node_id: &str, at_ms: u64, passed: bool, host: &str) {
        let epoch = self.epoch_of(at_ms);
        if self.is_closed(epoch) || !self.nodes.contains(node_id) {
            return;
        }
        let slot = at_ms / self.config.slot_ms;
        self.probing.entry(epoch).or_default().insert(slot);
        let e = self.open.entry((epoch, node_id.to_owned())).or_default();
        e.probed += 1;
        if passed {
            e.probe_ok.insert(slot);
            if !host.is_empty() {
                e.probe_host.insert(slot, host.to_owned());
            }
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
            let epoch_end = (epoch + 1) * c.epoch_ms;
            // This epoch's entries, taken out whole; earlier and later ones stay.
            let mut this_epoch = self.open.split_off(&(epoch, String::new()));
            let mut later = this_epoch.split_off(&(epoch + 1, String::new()));
            if self.open.is_empty() {
                self.open = later;
            } else {
                self.open.append(&mut later);
            }
            // Nodes that reported, and nodes with stake at risk (silent ones are slashed too),
            // in node id order: both are sorted, so they merge without a lookup per node.
            let mut nodes: Vec<(String, NodeEpoch)> = Vec::with_capacity(this_epoch.len());
            {
                let mut staked = self
                    .stakes
                    .iter()
                    .filter(|(_, a)| a.at_risk(epoch_end) > 0)
                    .map(|(n, _)| n)
                    .peekable();
                for ((_, node), e) in this_epoch {
                    while let Some(silent) = staked.next_if(|s| **s < node) {
                        nodes.push((silent.clone(), NodeEpoch::default()));
                    }
                    staked.next_if(|s| **s == node);
                    nodes.push((node, e));
                }
                nodes.extend(staked.map(|s| (s.clone(), NodeEpoch::default())));
            }
            // Nodes more than half of the named checkers failed in this epoch.
            let failed: BTreeSet<String> = self
                .checks
                .range((epoch, String::new())..(epoch + 1, String::new()))
                .filter(|(_, by_checker)| {
                    let failing = by_checker
                        .iter()
                        .filter(|(checker, (passed, failed))| {
                            failed > passed
                                && u64::from(*passed) + u64::from(*failed)
                                    <= checks_allowed(c.epoch_ms)
                                && c.checker_keys.contains(checker)
                        })
                        .count();
                    failing > c.checker_keys.len() / 2
                })
                .map(|((_, node), _)| node.clone())
                .collect();
            let mut treasury = 0u64;
            let probing = self.probing.remove(&epoch).unwrap_or_default();
            // Sessions whose tokens expired can credit nothing more: forget them.
            let epoch_start = epoch * c.epoch_ms;
            self.attested.retain(|_, (_, until)| *until > epoch_start);
            let mut payouts = Vec::new();
            // Up nodes per (slot, host), counted in node id order.
            let mut crowd: BTreeMap<(u64, String), u32> = BTreeMap::new();
            // What each studio owes, summed over the nodes that served it.
            let mut charges: BTreeMap<String, (u64, u64)> = BTreeMap::new();
            for (node, e) in nodes {
                let checks_failed = failed.contains(&node);
                // A reported slot is up when a probe in it passed, or when the indexer probed
                // nobody in it (it was down: its outage is not the node's fault) — unless more
                // identities than allowed answered from the same host in it.
                // An unprobed slot counts only when the node passed the probes bracketing the
                // outage (the last probed slot before it and the first after, in the epoch).
                let bracketed = |s: &u64| {
                    let before = probing.range(..*s).next_back();
                    let after = probing.range(*s + 1..).next();
                    before.is_none_or(|b| e.probe_ok.contains(b))
                        && after.is_none_or(|a| e.probe_ok.contains(a))
                };
                let up_slots = e
                    .reported
                    .iter()
                    .filter(|s| e.probe_ok.contains(s) || (!probing.contains(s) && bracketed(s)))
                    .filter(|s| match e.probe_host.get(s) {
                        Some(host) if c.max_nodes_per_host > 0 => {
                            let n = crowd.entry((**s, host.clone())).or_default();
                            *n += 1;
                            *n <= c.max_nodes_per_host
                        }
                        _ => true,
                    })
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
                // What studios pay for this node's attested play (rounded down per studio), plus
                // the network's own delivery reward; the protocol fee comes off both. Studios pay
                // nothing for the play of a node the checkers failed.
                let mut studio_paid = 0u64;
                if !checks_failed {
                    for (studio, (ms, price_ms)) in &e.studio_owed {
                        let owed = u64::try_from(price_ms / 60_000).unwrap_or(u64::MAX);
                        studio_paid = studio_paid.saturating_add(owed);
                        let charge = charges.entry(studio.clone()).or_insert((0u64, 0u64));
                        charge.0 = charge.0.saturating_add(*ms);
                        charge.1 = charge.1.saturating_add(owed);
                    }
                }
                let gross = ((u128::from(c.delivery_reward_per_minute) * u128::from(e.delivered_ms)
                    / 60_000) as u64)
                    .saturating_add(studio_paid);
                let fee = (u128::from(gross) * u128::from(c.protocol_fee_ppm.min(1_000_000))
                    / 1_000_000) as u64;
                let delivery = gross - fee;
                // A node the checkers caught forfeits the epoch (no fee is taken from nothing).
                let (readiness, delivery, fee) = if checks_failed {
                    (0, 0, 0)
                } else {
                    (readiness, delivery, fee)
                };
                let refunded = c.refund_per_dropped_session.saturating_mul(e.dropped);
                // Downtime below the SLA slashes the stake at risk (Aethir's shape).
                let account = self.stakes.get_mut(&node);
                let stake = account.as_ref().map_or(0, |a| a.at_risk(epoch_end));
                // Only a node the indexer probed (and so could see down) is slashed: one gone from
                // the registry is no longer probed, and its stake waits out its withdrawal.
                let slashed = if checks_failed {
                    crate::stake::dishonesty_slash(
                        stake,
                        c.slash_k_ppm,
                        c.stake_coefficient_ppm,
                        c.dishonesty_factor,
                    )
                } else if sla_met || e.probed == 0 {
                    0
                } else {
                    crate::stake::downtime_slash(stake, c.slash_k_ppm, c.stake_coefficient_ppm)
                };
                if let Some(account) = account
                    && slashed > 0
                {
                    let event = crate::stake::StakeEvent::Slash {
                        amount: slashed,
                        epoch_end_ms: epoch_end,
                    };
                    // The ledger records it from the payout row, with the closed epoch.
                    account.apply(event);
                }
                treasury = treasury.saturating_add(fee).saturating_add(slashed);
                payouts.push(NodePayout {
                    node_id: node,
                    amount: readiness
                        .saturating_add(delivery)
                        .saturating_sub(refunded)
                        .min(MAX_REPORT_NUMBER),
                    uptime_ms,
                    delivered_ms: e.delivered_ms,
                    refunded,
                    sla_met,
                    stake,
                    slashed,
                    fee,
                    checks_failed,
                    studio_paid,
                });
            }
            if treasury > 0 {
                payouts.push(NodePayout {
                    node_id: TREASURY.to_owned(),
                    // The ledger holds amounts below 2^63, and the leaf must match it.
                    amount: treasury.min(MAX_REPORT_NUMBER),
                    uptime_ms: 0,
                    delivered_ms: 0,
                    refunded: 0,
                    sla_met: true,
                    stake: 0,
                    slashed: 0,
                    fee: 0,
                    checks_failed: false,
                    studio_paid: 0,
                });
            }
            let charges = charges
                .into_iter()
                .map(|(studio, (delivered_ms, amount))| StudioCharge {
                    studio,
                    delivered_ms,
                    amount: amount.min(MAX_REPORT_NUMBER),
                })
                .collect();
            self.checks.retain(|(e, _), _| *e != epoch);
            self.seen_checks.retain(|(e, ..)| *e != epoch);
            payouts.sort_by(|a, b| a.node_id.cmp(&b.node_id));
            let tree = merkle::Tree::new(&leaves(&payouts));
            let closed = ClosedEpoch {
                epoch,
                root: tree.root(),
                payouts,
                charges,
                tree: std::sync::OnceLock::from(std::sync::Arc::new(tree)),
            };
            self.closed.insert(epoch, closed);
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
    use pixelgrid_proto::receipt::{PlayerKey, Receipt};
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

    const ORCHESTRATOR_SEED: [u8; 32] = [40; 32];

    fn placed(node: &NodeKey, sid: &str, player: Option<&PlayerKey>, fps: u32) -> String {
        placed_for(node, sid, player, fps, 0, "")
    }

    /// A session a studio pays `price` micro-credits per minute for.
    fn placed_for(
        node: &NodeKey,
        sid: &str,
        player: Option<&PlayerKey>,
        fps: u32,
        price: u64,
        studio: &str,
    ) -> String {
        use pixelgrid_proto::token::{SessionClaims, TokenSigner, format_rfc3339};
        TokenSigner::from_seed(&ORCHESTRATOR_SEED).sign(&SessionClaims {
            sid: sid.into(),
            nid: node.node_id(),
            game: "arena".into(),
            width: 1280,
            height: 720,
            fps,
            iat: format_rfc3339(0),
            exp: format_rfc3339(86_400),
            aud: node.node_id(),
            nbf: String::new(),
            pk: player.map(PlayerKey::public_hex).unwrap_or_default(),
            price,
            studio: studio.into(),
        })
    }

    #[test]
    fn studios_pay_nothing_for_the_play_of_a_node_the_checkers_failed() {
        let node = NodeKey::from_seed(&[18; 32]);
        let player = PlayerKey::from_seed(&[19; 32]);
        let checker = NodeKey::from_seed(&[20; 32]);
        let rules = TallyConfig {
            checker_keys: vec![checker.node_id()],
            ..receipts_config()
        };
        let mut t = Tally::new(rules);
        t.add_node(&node.node_id());
        let a = placed_for(&node, "a", Some(&player), 60, 600, "acme");
        let played = vec![attested("a", a, &player, 1, MIN, 60, MIN)];
        assert_eq!(
            t.ingest(&report(&node, 1, MIN, played), MIN),
            Verdict::Accepted
        );
        let failed = check_result(&checker, &node, "watch", false, MIN);
        assert_eq!(t.ingest_check(&failed, MIN), Verdict::Accepted);
        let e = t.close_epoch(0).clone();
        let p = e.payout_of(&node.node_id()).unwrap();
        assert!(p.checks_failed && p.amount == 0, "{p:?}");
        assert_eq!(p.studio_paid, 0, "{p:?}");
        assert!(e.charges.is_empty(), "acme owes nothing: {:?}", e.charges);
    }

    #[test]
    fn studios_pay_their_sessions_prices_for_attested_play_and_fund_the_nodes() {
        let node = NodeKey::from_seed(&[15; 32]);
        let player = PlayerKey::from_seed(&[16; 32]);
        let stranger = PlayerKey::from_seed(&[17; 32]);
        let rules = receipts_config();
        let mut t = Tally::new(rules.clone());
        t.add_node(&node.node_id());
        let a = placed_for(&node, "a", Some(&player), 60, 600, "acme");
        let b = placed_for(&node, "b", Some(&player), 60, 1_200, "beta");
        let c = placed_for(&node, "c", Some(&player), 60, 99_999, "gamma");
        let minute_one = vec![
            attested("a", a.clone(), &player, 1, MIN, 60, MIN),
            attested("b", b, &player, 1, MIN, 60, MIN),
            // Not signed by its player: gamma pays nothing and the node earns nothing for it.
            attested("c", c, &stranger, 1, MIN, 60, MIN),
        ];
        assert_eq!(
            t.ingest(&report(&node, 1, MIN, minute_one), MIN),
            Verdict::Accepted
        );
        let minute_two = vec![attested("a", a, &player, 2, 2 * MIN, 60, MIN)];
        assert_eq!(
            t.ingest(&report(&node, 2, 2 * MIN, minute_two), 2 * MIN),
            Verdict::Accepted
        );
        let e = t.close_epoch(0).clone();
        let p = e.payout_of(&node.node_id()).unwrap();
        assert_eq!(p.delivered_ms, 3 * MIN);
        assert_eq!(
            p.studio_paid,
            2 * 600 + 1_200,
            "acme 2 min at 600, beta 1 at 1,200"
        );
        let gross = rules.delivery_reward_per_minute * 3 + p.studio_paid;
        assert_eq!(p.fee, gross * rules.protocol_fee_ppm / 1_000_000);
        let readiness = if p.sla_met {
            rules.readiness_reward * p.uptime_ms / rules.epoch_ms
        } else {
            0
        };
        assert_eq!(p.amount, readiness + gross - p.fee);
        assert_eq!(
            e.charges,
            vec![
                StudioCharge {
                    studio: "acme".into(),
                    delivered_ms: 2 * MIN,
                    amount: 1_200
                },
                StudioCharge {
                    studio: "beta".into(),
                    delivered_ms: MIN,
                    amount: 1_200
                },
            ],
            "what studios owe is what their players attested, and equals what the nodes got"
        );
        assert_eq!(
            e.charges.iter().map(|c| c.amount).sum::<u64>(),
            p.studio_paid
        );
    }

    fn attested(
        sid: &str,
        token: String,
        signer: &PlayerKey,
        sequence: u64,
        played_ms: u64,
        fps: u32,
        claimed_ms: u64,
    ) -> SessionDelivery {
        let r = Receipt {
            sequence,
            frames: played_ms * u64::from(fps) / 1000,
            played_ms,
            width: 1280,
            height: 720,
            fps,
            at_unix_ms: played_ms,
        };
        SessionDelivery {
            session_id: sid.into(),
            promised: mode(1280, 720, 60),
            achieved: mode(1280, 720, 60),
            delivered_ms: claimed_ms,
            dropped_by_node: false,
            session_token: token,
            receipt: Some(r.to_proto(signer.sign(sid, &r))),
        }
    }

    fn receipts_config() -> TallyConfig {
        TallyConfig {
            orchestrator_keys: vec![
                pixelgrid_proto::token::TokenSigner::from_seed(&ORCHESTRATOR_SEED).public_key_hex(),
            ],
            ..config()
        }
    }

    #[test]
    fn delivery_counts_only_as_far_as_the_players_receipts_attest() {
        let node = NodeKey::from_seed(&[5; 32]);
        let other_node = NodeKey::from_seed(&[6; 32]);
        let player = PlayerKey::from_seed(&[7; 32]);
        let stranger = PlayerKey::from_seed(&[8; 32]);
        let mut t = Tally::new(receipts_config());
        t.add_node(&node.node_id());
        let token = placed(&node, "a", Some(&player), 60);
        // Minute 1: one honest minute, and every cheat beside it.
        let minute_one = vec![
            attested("a", token.clone(), &player, 1, MIN, 60, MIN),
            // An invented session: no token the orchestrator signed.
            attested("x", String::new(), &player, 1, MIN, 60, MIN),
            // A session the orchestrator placed on another node.
            attested(
                "b",
                placed(&other_node, "b", Some(&player), 60),
                &player,
                1,
                MIN,
                60,
                MIN,
            ),
            // A receipt the node signed itself (or any key but the player's).
            attested(
                "c",
                placed(&node, "c", Some(&player), 60),
                &stranger,
                1,
                MIN,
                60,
                MIN,
            ),
            // A token naming no player key.
            attested("d", placed(&node, "d", None, 60), &player, 1, MIN, 60, MIN),
            // Below the promised mode: 30 fps of 60.
            attested(
                "e",
                placed(&node, "e", Some(&player), 60),
                &player,
                1,
                MIN,
                30,
                MIN,
            ),
            // A token from an orchestrator nobody trusts.
            {
                let mut d = attested("f", String::new(), &player, 1, MIN, 60, MIN);
                d.session_token = pixelgrid_proto::token::TokenSigner::from_seed(&[41; 32]).sign(
                    &pixelgrid_proto::token::TokenVerifier::from_hex(
                        &pixelgrid_proto::token::TokenSigner::from_seed(&ORCHESTRATOR_SEED)
                            .public_key_hex(),
                    )
                    .unwrap()
                    .verify_timeless(&placed(&node, "f", Some(&player), 60))
                    .unwrap(),
                );
                d
            },
        ];
        assert_eq!(
            t.ingest(&report(&node, 1, MIN, minute_one), MIN),
            Verdict::Accepted
        );
        // Minute 2: the same receipt again credits nothing; an inflated claim with a receipt for
        // one more minute is capped at that minute; a dropped session is refunded.
        // The same session twice in one report would multiply its credit: refused whole.
        let twice = vec![
            attested("a", token.clone(), &player, 2, 2 * MIN, 60, MIN),
            attested("a", token.clone(), &player, 3, 3 * MIN, 60, MIN),
        ];
        assert_eq!(
            t.ingest(&report(&node, 2, 2 * MIN, twice), 2 * MIN),
            Verdict::Malformed
        );
        // Minute 2: the same receipt again credits nothing.
        let minute_two = vec![
            attested("a", token.clone(), &player, 1, MIN, 60, MIN),
            SessionDelivery {
                session_id: "z".into(),
                dropped_by_node: true,
                ..Default::default()
            },
        ];
        assert_eq!(
            t.ingest(&report(&node, 3, 2 * MIN, minute_two), 2 * MIN),
            Verdict::Accepted
        );
        // Minute 3: an inflated claim with a receipt for one more minute is capped at that
        // minute; a receipt claiming more play than the session has existed credits nothing.
        let minute_three = vec![
            attested("a", token.clone(), &player, 2, 2 * MIN, 60, 100 * MIN),
            attested(
                "g",
                placed(&node, "g", Some(&player), 60),
                &player,
                1,
                50 * MIN,
                60,
                MIN,
            ),
        ];
        assert_eq!(
            t.ingest(&report(&node, 4, 3 * MIN, minute_three), 3 * MIN),
            Verdict::Accepted
        );
        // Probed and unanswered: no readiness, so the sum is delivery and refund alone.
        for m in 1..=3 {
            t.record_probe(&node.node_id(), m * MIN + 1, false);
        }
        let e = t.close_epoch(0).clone();
        let p = e.payout_of(&node.node_id()).unwrap();
        assert_eq!(
            p.delivered_ms,
            2 * MIN,
            "two attested minutes, nothing else"
        );
        assert_eq!(p.fee, 4_000, "20 % of 20,000");
        let treasury = e.payouts.iter().find(|p| p.node_id == TREASURY).unwrap();
        assert_eq!(
            treasury.amount, 4_000,
            "the fee is in the tree, with its proof"
        );
        let (amount, proof) = e.proof(TREASURY).unwrap();
        assert!(merkle::verify(&e.root, &[0u8; 32], amount, &proof));
        assert_eq!(p.refunded, 50_000);
        assert_eq!(
            p.amount, 0,
            "20,000 of delivery minus a 50,000 refund, floored at 0"
        );
    }

    #[test]
    fn receipts_credit_the_same_after_a_restart_and_in_a_batch() {
        let node = NodeKey::from_seed(&[9; 32]);
        let player = PlayerKey::from_seed(&[10; 32]);
        let token = placed(&node, "a", Some(&player), 60);
        let reports: Vec<SignedNodeReport> = (1..=5)
            .map(|m| {
                report(
                    &node,
                    m,
                    m * MIN,
                    vec![attested("a", token.clone(), &player, m, m * MIN, 60, MIN)],
                )
            })
            .collect();
        let mut one_by_one = Tally::new(receipts_config());
        let mut batched = Tally::new(receipts_config());
        one_by_one.add_node(&node.node_id());
        batched.add_node(&node.node_id());
        for r in &reports {
            let at = r.report.as_ref().unwrap().sent_unix_ms;
            assert_eq!(one_by_one.ingest(r, at), Verdict::Accepted);
            assert_eq!(
                batched.ingest_batch(std::slice::from_ref(r), at),
                vec![Verdict::Accepted]
            );
        }
        let credited = one_by_one.take_attested();
        assert_eq!(credited.len(), 5);
        // A tally restarted knowing what was credited credits an old receipt again for nothing.
        let mut restarted = Tally::new(receipts_config());
        restarted.add_node(&node.node_id());
        for a in &credited {
            restarted.restore_attested(&a.node_id, &a.session_id, a.played_ms);
        }
        restarted.restore_last(&node.node_id(), 2, 2 * MIN);
        let again = report(
            &node,
            9,
            9 * MIN,
            vec![attested("a", token, &player, 3, 3 * MIN, 60, MIN)],
        );
        assert_eq!(restarted.ingest(&again, 9 * MIN), Verdict::Accepted);
        assert!(restarted.take_attested().is_empty(), "already credited");
        assert_eq!(one_by_one.close_epoch(0), batched.close_epoch(0));
        let paid = &one_by_one.closed(0).unwrap().payouts;
        let p = paid.iter().find(|p| p.node_id == node.node_id()).unwrap();
        assert_eq!(p.delivered_ms, 5 * MIN);
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
        let p = e.payout_of(&key.node_id()).unwrap();
        assert_eq!(
            p.uptime_ms,
            55 * MIN,
            "only the five unanswered minutes are lost"
        );
    }

    #[test]
    fn identities_crowding_one_host_earn_only_up_to_its_limit() {
        let keys: Vec<NodeKey> = (50..54).map(|i| NodeKey::from_seed(&[i; 32])).collect();
        let mut t = Tally::new(TallyConfig {
            max_nodes_per_host: 2,
            ..config()
        });
        for (n, k) in keys.iter().enumerate() {
            t.add_node(&k.node_id());
            for m in 0..60 {
                let at = m * MIN + 1_000;
                assert_eq!(
                    t.ingest(&report(k, m + 1, at, vec![]), at),
                    Verdict::Accepted
                );
                // Three identities on one small host, one on a host of its own.
                let host = if n < 3 { "203.0.113.7" } else { "198.51.100.9" };
                t.record_probe_of(&k.node_id(), at + 5_000, true, host);
            }
        }
        let e = t.close_epoch(0).clone();
        let mut by_id: Vec<(&str, u64)> = keys[..3]
            .iter()
            .map(|k| {
                let p = e.payout_of(&k.node_id()).unwrap();
                (p.node_id.as_str(), p.uptime_ms)
            })
            .collect();
        by_id.sort();
        assert_eq!(
            by_id.iter().map(|(_, u)| *u).collect::<Vec<_>>(),
            vec![60 * MIN, 60 * MIN, 0],
            "the two lowest ids on the crowded host earn; the third earns nothing"
        );
        let alone = e.payout_of(&keys[3].node_id()).unwrap();
        assert_eq!(
            alone.uptime_ms,
            60 * MIN,
            "a node on its own host is untouched"
        );
    }

    fn stake_change(
        key: &NodeKey,
        sequence: u64,
        at: u64,
        deposit: u64,
        withdraw: u64,
    ) -> pixelgrid_proto::indexer::v1::SignedStakeChange {
        use prost::Message;
        let change = pixelgrid_proto::indexer::v1::StakeChange {
            node_id: Some(NodeId { hex: key.node_id() }),
            sequence,
            sent_unix_ms: at,
            deposit,
            withdraw,
        };
        pixelgrid_proto::indexer::v1::SignedStakeChange {
            signature: Some(key.sign(&change.encode_to_vec())),
            change: Some(change),
        }
    }

    fn check_result(
        checker: &NodeKey,
        node: &NodeKey,
        session: &str,
        passed: bool,
        at: u64,
    ) -> pixelgrid_proto::indexer::v1::SignedCheckResult {
        pixelgrid_proto::check::sign(
            pixelgrid_proto::indexer::v1::CheckResult {
                node_id: Some(NodeId {
                    hex: node.node_id(),
                }),
                session_id: session.into(),
                nonce: 42,
                passed,
                seen_after_ms: if passed { 30 } else { 0 },
                mode: mode(640, 360, 30),
                sessions: 1,
                at_unix_ms: at,
            },
            checker,
        )
    }

    #[test]
    fn a_named_checker_flooding_a_node_with_results_is_cut_off_and_counts_for_nothing() {
        let flooder = NodeKey::from_seed(&[77; 32]);
        let node = NodeKey::from_seed(&[79; 32]);
        // The flooder is the only named checker: its failures alone would fail the node.
        let rules = TallyConfig {
            checker_keys: vec![flooder.node_id()],
            ..TallyConfig::default()
        };
        let mut t = Tally::new(rules.clone());
        t.add_node(&node.node_id());
        run_hour(&mut t, &node, 0..0, true);
        let at = 30 * MIN;
        let allowed = checks_allowed(rules.epoch_ms);
        // Up to the allowance, and one more as the mark of the flood: taken.
        for i in 0..=allowed {
            let r = check_result(&flooder, &node, &format!("s{i}"), false, at);
            assert_eq!(t.ingest_check(&r, at), Verdict::Accepted, "result {i}");
        }
        let beyond = check_result(&flooder, &node, "one-too-many", false, at);
        assert_eq!(t.ingest_check(&beyond, at), Verdict::OutOfRange);
        let e = t.close_epoch(0).clone();
        let p = e.payout_of(&node.node_id()).unwrap();
        assert!(!p.checks_failed, "a flood decides nothing: {p:?}");
        assert!(p.amount > 0, "{p:?}");
    }

    #[test]
    fn a_majority_of_the_checkers_failing_a_node_forfeits_its_epoch_and_slashes_it_threefold() {
        let checkers: Vec<NodeKey> = (70..73).map(|s| NodeKey::from_seed(&[s; 32])).collect();
        let rogue = NodeKey::from_seed(&[73; 32]);
        let honest = NodeKey::from_seed(&[74; 32]);
        let cheat = NodeKey::from_seed(&[75; 32]);
        let framed = NodeKey::from_seed(&[76; 32]);
        let rules = TallyConfig {
            checker_keys: checkers.iter().map(NodeKey::node_id).collect(),
            ..TallyConfig::default()
        };
        let mut t = Tally::new(rules.clone());
        for k in [&honest, &cheat, &framed] {
            t.add_node(&k.node_id());
            assert_eq!(
                t.ingest_stake(&stake_change(k, 1, 1_000, 3_000_000, 0), 1_000),
                Verdict::Accepted
            );
            run_hour(&mut t, k, 0..0, true);
        }
        let at = 30 * MIN;
        let mut inputs = Vec::new();
        for (i, c) in checkers.iter().enumerate() {
            inputs.push(check_result(c, &honest, &format!("h{i}"), true, at));
            // Two of three checkers watched the cheat fail; the third saw it pass.
            inputs.push(check_result(c, &cheat, &format!("c{i}"), i == 2, at));
        }
        // One checker alone failing a node is no majority: `framed` keeps its epoch.
        inputs.push(check_result(&checkers[0], &framed, "f0", false, at));
        inputs.push(check_result(&checkers[1], &framed, "f1", true, at));
        for r in &inputs {
            assert_eq!(t.ingest_check(r, at + 100), Verdict::Accepted);
        }
        // Refused: a checker the rules do not name, a result taken twice, a forged one, an
        // unknown node, one from the future.
        assert_eq!(
            t.ingest_check(&check_result(&rogue, &framed, "r", false, at), at),
            Verdict::UnknownChecker
        );
        assert_eq!(t.ingest_check(&inputs[1], at + 200), Verdict::Replayed);
        let mut forged = check_result(&checkers[2], &framed, "x", true, at);
        forged.result.as_mut().unwrap().passed = false;
        assert_eq!(t.ingest_check(&forged, at), Verdict::BadSignature);
        assert_eq!(
            t.ingest_check(&check_result(&checkers[2], &rogue, "u", false, at), at),
            Verdict::UnknownNode
        );
        assert_eq!(
            t.ingest_check(
                &check_result(&checkers[2], &framed, "z", false, at + MIN),
                at
            ),
            Verdict::ClockSkew
        );
        // Another indexer fed the same results in another order reaches the same root.
        let mut other = Tally::new(rules);
        for k in [&honest, &cheat, &framed] {
            other.add_node(&k.node_id());
            other.ingest_stake(&stake_change(k, 1, 1_000, 3_000_000, 0), 1_000);
            run_hour(&mut other, k, 0..0, true);
        }
        for r in inputs.iter().rev() {
            assert_eq!(other.ingest_check(r, at + 100), Verdict::Accepted);
        }
        let e = t.close_epoch(0).clone();
        assert_eq!(other.close_epoch(0).root, e.root);
        let of = |k: &NodeKey| e.payout_of(&k.node_id()).unwrap().clone();
        let (h, c, f) = (of(&honest), of(&cheat), of(&framed));
        assert!(h.amount > 0 && !h.checks_failed && h.slashed == 0);
        assert_eq!(
            f,
            NodePayout {
                node_id: framed.node_id(),
                ..h.clone()
            }
        );
        assert!(c.checks_failed);
        assert_eq!(c.amount, 0, "a node the checkers caught earns nothing");
        // 3 × (1/3 × K 0.3 × coefficient 1) = 30 % of the stake.
        assert_eq!(c.slashed, 900_000);
        assert_eq!(t.stake_of(&cheat.node_id(), 4 * 3_600_000), (2_100_000, 0));
        let treasury = e.payouts.iter().find(|p| p.node_id == TREASURY).unwrap();
        assert_eq!(treasury.amount, h.fee + f.fee + 900_000);
        // Results for a closed epoch are refused.
        assert_eq!(
            t.ingest_check(
                &check_result(&checkers[0], &honest, "late", true, at),
                at + 200
            ),
            Verdict::EpochClosed
        );
    }

    #[test]
    fn downtime_below_the_sla_slashes_the_stake_even_one_being_withdrawn() {
        let faithful = NodeKey::from_seed(&[60; 32]);
        let flaky = NodeKey::from_seed(&[61; 32]);
        let silent = NodeKey::from_seed(&[62; 32]);
        let mut t = Tally::new(TallyConfig::default());
        for k in [&faithful, &flaky, &silent] {
            t.add_node(&k.node_id());
            assert_eq!(
                t.ingest_stake(&stake_change(k, 1, 1_000, 3_000_000, 0), 1_000),
                Verdict::Accepted
            );
        }
        // Refused: a replay, a withdrawal beyond the bond, both fields, another's signature.
        assert_eq!(
            t.ingest_stake(&stake_change(&flaky, 1, 2_000, 5, 0), 2_000),
            Verdict::Replayed
        );
        assert_eq!(
            t.ingest_stake(&stake_change(&flaky, 2, 2_000, 0, 9_000_000), 2_000),
            Verdict::InvalidStakeChange
        );
        assert_eq!(
            t.ingest_stake(&stake_change(&flaky, 3, 2_000, 5, 5), 2_000),
            Verdict::InvalidStakeChange
        );
        let mut forged = stake_change(&flaky, 4, 2_000, 0, 1);
        forged.signature = Some(silent.sign(b"not it"));
        assert_eq!(t.ingest_stake(&forged, 2_000), Verdict::BadSignature);
        // The silent node asks to withdraw everything, then goes quiet: still slashable.
        assert_eq!(
            t.ingest_stake(&stake_change(&silent, 2, 3_000, 0, 3_000_000), 3_000),
            Verdict::Accepted
        );
        run_hour(&mut t, &faithful, 0..0, true);
        run_hour(&mut t, &flaky, 10..30, true);
        for m in 0..60 {
            t.record_probe(&silent.node_id(), m * MIN + 30_000, false);
        }
        // A node gone from the registry is no longer probed: its stake is not slashed.
        let departed = NodeKey::from_seed(&[63; 32]);
        t.add_node(&departed.node_id());
        assert_eq!(
            t.ingest_stake(&stake_change(&departed, 1, 1_000, 1_000, 0), 1_000),
            Verdict::Accepted
        );
        let e = t.close_epoch(0).clone();
        let of = |k: &NodeKey| e.payout_of(&k.node_id()).unwrap().clone();
        assert_eq!((of(&faithful).stake, of(&faithful).slashed), (3_000_000, 0));
        // 1/3 × K (30 %) × coefficient 1 = 10 % of the stake at risk.
        assert_eq!(of(&flaky).slashed, 300_000, "{:?}", of(&flaky));
        assert_eq!(
            of(&silent).slashed,
            300_000,
            "withdrawing does not escape the slash"
        );
        assert_eq!(of(&silent).uptime_ms, 0);
        assert_eq!(of(&departed).slashed, 0, "never probed, never slashed");
        let treasury = e.payouts.iter().find(|p| p.node_id == TREASURY).unwrap();
        assert_eq!(
            treasury.amount, 600_000,
            "slashed stake goes to the treasury"
        );
        assert_eq!(t.stake_of(&flaky.node_id(), 4 * 3_600_000), (2_700_000, 0));
        assert_eq!(t.stake_of(&silent.node_id(), 4 * 3_600_000), (0, 2_700_000));
        assert_eq!(
            t.take_stake_events().len(),
            5,
            "accepted changes go to the ledger"
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
