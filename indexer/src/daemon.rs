//! `indexer serve`: the thin async shell around the tally and the ledger.
//!
//! - **Reports**: nodes stream signed reports (`SubmitReports`); each batch is verified and tallied
//!   as one, the accepted ones are committed to the ledger, and only then acknowledged — so a node
//!   that sees no acknowledgement resends, and a resent report is refused as a replay: each report
//!   is credited exactly once.
//! - **Node set**: taken from the orchestrator's registry (`ListNodes`, polled, and at once when a
//!   report names a node not known yet); node id = the node's ed25519 public key, so the set
//!   brings the keys with it. Known nodes are kept in the ledger, so a restarted indexer probes
//!   them before the orchestrator answers.
//! - **Probes**: at random moments in every slot (and once at start-up) the indexer sends each
//!   node a fresh nonce (`GET /challenge?nonce=<hex>` on the node's probe address); the node must
//!   answer with its identity key's signature over [`probe_message`]. Pass or fail is recorded.
//! - **Epochs** close `max_report_delay_ms` after they end; the closed epoch, every payout and
//!   every proof are written in one transaction.
//! - **A full ledger** (disk or `--ledger-max-mb`): the write that failed is refused
//!   (`RESOURCE_EXHAUSTED`; nodes keep their reports), the tally is rebuilt from the ledger, as a
//!   restart would, and writes wait a back-off. Any other failed commit exits (70) for a restart
//!   to rebuild.

use crate::ledger::{EpochRow, Ledger, StoredPayout};
use crate::tally::{Tally, TallyConfig, Verdict};
use crate::{Error, Result};
use pixelgrid_proto::identity::{probe_message, verify};
use pixelgrid_proto::indexer::v1 as pb;
use pixelgrid_proto::orchestrator::v1::ListNodesRequest;
use pixelgrid_proto::orchestrator::v1::orchestrator_client::OrchestratorClient;
use pixelgrid_proto::token::{hex, unhex};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Tally rules (the same for every indexer that should agree).
    pub rules: TallyConfig,
    /// SQLite ledger file.
    pub ledger: PathBuf,
    /// Orchestrator gRPC URL, the source of the node set.
    pub orchestrator: Option<String>,
    /// Probes per node per slot, at random moments.
    pub probes_per_slot: u32,
    /// How often the node set is re-read.
    pub registry_refresh: Duration,
    /// How long a node may be missing from the registry before it is no longer probed.
    pub forget_after: Duration,
    /// Most bytes the ledger may take (none: the disk's size); past it the ledger is full.
    pub ledger_max_bytes: Option<u64>,
}

/// Reports by verdict and probes by outcome, since start.
#[derive(Debug, Default)]
pub struct Counters {
    verdicts: [AtomicU64; 12],
    /// Probes answered with a valid signature.
    pub probes_passed: AtomicU64,
    /// Probes unanswered or answered wrongly.
    pub probes_failed: AtomicU64,
    /// Epochs closed by this process.
    pub epochs_closed: AtomicU64,
    /// Checkers' results taken: passed, failed; and refused (any verdict but accepted).
    pub checks: [AtomicU64; 3],
    /// Commits that failed on a full ledger (each rolled the tally back).
    pub ledger_full: AtomicU64,
}

/// Every verdict, in the order [`Counters::reports`] lists them.
pub const VERDICTS: [Verdict; 12] = [
    Verdict::Accepted,
    Verdict::Malformed,
    Verdict::UnknownNode,
    Verdict::BadSignature,
    Verdict::ClockSkew,
    Verdict::TooLate,
    Verdict::Replayed,
    Verdict::EpochClosed,
    Verdict::OutOfRange,
    Verdict::TimeWentBack,
    Verdict::InvalidStakeChange,
    Verdict::UnknownChecker,
];

impl Counters {
    fn count(&self, v: Verdict) {
        let i = VERDICTS.iter().position(|x| *x == v).unwrap_or(0);
        self.verdicts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Reports seen, by verdict.
    pub fn reports(&self) -> Vec<(Verdict, u64)> {
        VERDICTS
            .iter()
            .zip(&self.verdicts)
            .map(|(v, c)| (*v, c.load(Ordering::Relaxed)))
            .collect()
    }
}

struct Core {
    tally: Tally,
    ledger: Ledger,
    /// Node id → host:port of its probe endpoint.
    probe_targets: BTreeMap<String, String>,
    /// Probed nodes the registry no longer lists, and since when.
    missing_since: BTreeMap<String, tokio::time::Instant>,
    /// The next epoch to close.
    next_to_close: Option<u64>,
    /// While the ledger is full: until when (unix ms) writes are refused without trying.
    full_until_ms: u64,
    /// The wait after the last failed commit on a full ledger (doubles, 1 s to 30 s).
    full_backoff_ms: u64,
}

/// Waits between tries while the ledger is full: each failed try costs a rebuild of the tally.
const FULL_BACKOFF_MS: std::ops::RangeInclusive<u64> = 1_000..=30_000;

/// The running indexer; see the module docs.
pub struct Indexer {
    core: Mutex<Core>,
    config: DaemonConfig,
    /// What it has seen.
    pub counters: Counters,
    last_refresh: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl std::fmt::Debug for Indexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Indexer")
            .field("ledger", &self.config.ledger)
            .finish()
    }
}

/// Now, unix ms (the shell's clock; the core never reads one).
pub use pixelgrid_proto::clock::unix_ms as now_ms;

/// Why a report was refused, for its acknowledgement.
fn detail(v: Verdict, r: Option<&pb::NodeReport>, rules: &TallyConfig) -> String {
    let seq = r.map_or(0, |r| r.sequence);
    match v {
        Verdict::Accepted => String::new(),
        Verdict::Malformed => {
            "the report or its node id is missing, or the node id is not 64 lower-case hex digits"
                .into()
        }
        Verdict::OutOfRange => format!(
            "a number is out of range: sequence and sent_unix_ms must be below 2^63, at most {} \
             sessions of ids up to {} bytes",
            crate::tally::MAX_SESSIONS_PER_REPORT,
            crate::tally::MAX_SESSION_ID_BYTES
        ),
        Verdict::InvalidStakeChange => {
            "a stake change sets exactly one of deposit and withdraw, and withdraws at most the \
             bonded stake"
                .into()
        }
        Verdict::TimeWentBack => format!(
            "sent_unix_ms {} is not after the node's previous accepted report: time must advance \
             with the sequence",
            r.map_or(0, |r| r.sent_unix_ms)
        ),
        Verdict::UnknownNode => {
            "this node is not in the orchestrator's registry; register it first".into()
        }
        Verdict::BadSignature => {
            "the signature does not verify for the node id the report names".into()
        }
        Verdict::ClockSkew => format!(
            "its time is more than {} ms ahead of the indexer's clock; check the node's NTP",
            rules.max_clock_skew_ms
        ),
        Verdict::TooLate => format!(
            "it arrived more than {} ms after its time; it credits nothing",
            rules.max_report_delay_ms
        ),
        Verdict::Replayed => format!(
            "sequence {seq} is not after the last accepted one: a duplicate, replay or reordering"
        ),
        Verdict::EpochClosed => "its epoch is already closed".into(),
        Verdict::UnknownChecker => {
            "the checker's key is not among the indexer's --checker-key: only named checkers count"
                .into()
        }
    }
}

fn to_proto(v: Verdict) -> pb::ReportVerdict {
    use pb::ReportVerdict as P;
    match v {
        Verdict::Accepted => P::Accepted,
        Verdict::Malformed => P::Malformed,
        Verdict::UnknownNode => P::UnknownNode,
        Verdict::BadSignature => P::BadSignature,
        Verdict::ClockSkew => P::ClockSkew,
        Verdict::TooLate | Verdict::EpochClosed => P::OutOfWindow,
        Verdict::Replayed => P::Replayed,
        Verdict::OutOfRange => P::OutOfRange,
        Verdict::TimeWentBack => P::TimeWentBack,
        Verdict::InvalidStakeChange => P::InvalidStakeChange,
        Verdict::UnknownChecker => P::UnknownChecker,
    }
}

impl Indexer {
    /// Opens the ledger and rebuilds the tally from it.
    pub fn open(config: DaemonConfig) -> Result<Arc<Self>> {
        let ledger = Ledger::open(&config.ledger, &config.rules)?;
        ledger.set_max_bytes(config.ledger_max_bytes)?;
        let mut tally = Tally::new(config.rules.clone());
        let rebuilt = ledger.rebuild(&mut tally)?;
        let probe_targets = ledger.probe_targets()?.into_iter().collect();
        let next_to_close = ledger.epochs(1)?.first().map(|e| e.number + 1);
        tracing::info!(
            ledger = %config.ledger.display(),
            nodes = rebuilt.nodes,
            closed_epochs = rebuilt.closed_epochs,
            replayed_reports = rebuilt.reports,
            replayed_probes = rebuilt.probes,
            "ledger opened"
        );
        Ok(Arc::new(Self {
            core: Mutex::new(Core {
                tally,
                ledger,
                probe_targets,
                missing_since: BTreeMap::new(),
                next_to_close,
                full_until_ms: 0,
                full_backoff_ms: 0,
            }),
            config,
            counters: Counters::default(),
            last_refresh: tokio::sync::Mutex::new(None),
        }))
    }

    fn core(&self) -> std::sync::MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rules in force.
    pub fn rules(&self) -> &TallyConfig {
        &self.config.rules
    }

    /// Sets the ledger's quota (see [`DaemonConfig::ledger_max_bytes`]) while running; the fault
    /// matrix fills and frees the ledger's "disk" with it.
    pub fn set_ledger_quota(&self, max_bytes: Option<u64>) -> Result<()> {
        let mut core = self.core();
        core.ledger.set_max_bytes(max_bytes)?;
        // Room again, perhaps: the next write tries at once.
        core.full_until_ms = 0;
        Ok(())
    }

    /// Refuses a write at once while a recent one found the ledger full.
    fn room_in_ledger(core: &Core, now_ms: u64) -> Result<()> {
        if now_ms < core.full_until_ms {
            return Err(Error::LedgerFull(format!(
                "a commit failed less than {} ms ago",
                core.full_backoff_ms
            )));
        }
        Ok(())
    }

    /// After a failed commit the tally holds what the ledger does not: on a full ledger it is
    /// rebuilt from the ledger (what a restart would do) and writes wait a back-off; any other
    /// failure is returned for the caller to exit on, as before.
    fn roll_back(&self, core: &mut Core, e: Error, now_ms: u64) -> Error {
        if !matches!(e, Error::LedgerFull(_)) {
            return e;
        }
        self.counters.ledger_full.fetch_add(1, Ordering::Relaxed);
        let mut tally = Tally::new(self.config.rules.clone());
        if let Err(rebuild) = core.ledger.rebuild(&mut tally) {
            return Error::Ledger(format!(
                "{e}; and rebuilding the tally from the ledger failed: {rebuild}"
            ));
        }
        // `next_to_close` stays: it only moves once a close is committed.
        core.tally = tally;
        core.full_backoff_ms =
            (core.full_backoff_ms * 2).clamp(*FULL_BACKOFF_MS.start(), *FULL_BACKOFF_MS.end());
        core.full_until_ms = now_ms + core.full_backoff_ms;
        tracing::warn!(error = %e, retry_in_ms = core.full_backoff_ms, "ledger full: the tally is rolled back to the ledger; reports wait with the nodes");
        e
    }

    /// A commit went through: the ledger has room (again). The back-off decays rather than
    /// resetting, so a ledger at the edge of full (small batches fit, large ones do not) is not
    /// rebuilt every second.
    fn committed(core: &mut Core) {
        if core.full_backoff_ms != 0 {
            tracing::info!("the ledger takes writes again");
        }
        core.full_backoff_ms /= 2;
        core.full_until_ms = 0;
    }

    /// Re-reads the node set from the orchestrator. Returns the nodes known afterwards.
    pub async fn refresh_registry(&self) -> Result<usize> {
        self.refresh_registry_after(None).await
    }

    /// Makes sure the node set was read after `seen` (a report from an unknown node arrived
    /// then): reads it again unless a read started since. Reads are at least a second apart, so
    /// reports naming unknown nodes cannot hammer the orchestrator; concurrent callers share one.
    async fn refresh_registry_after(&self, seen: Option<tokio::time::Instant>) -> Result<usize> {
        let Some(url) = &self.config.orchestrator else {
            return Ok(self.core().probe_targets.len());
        };
        let mut last = self.last_refresh.lock().await;
        if let (Some(seen), Some(last)) = (seen, *last) {
            if last >= seen {
                return Ok(self.core().probe_targets.len());
            }
            tokio::time::sleep_until(last + Duration::from_secs(1)).await;
        }
        *last = Some(tokio::time::Instant::now());
        let unreachable = |e: String| Error::Orchestrator(format!("{url}: {e}"));
        let mut client = OrchestratorClient::new(
            pixelgrid_proto::transport::connect(url)
                .await
                .map_err(unreachable)?,
        );
        // The whole node set, page by page (one message could not hold a large grid).
        let mut listed: BTreeMap<String, String> = BTreeMap::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list_nodes(ListNodesRequest {
                    region_code: String::new(),
                    page_size: NODES_PAGE,
                    page_token,
                })
                .await
                .map_err(|e| unreachable(e.message().to_owned()))?
                .into_inner();
            for n in page.nodes {
                if let Some(id) = n.node_id.map(|i| i.hex)
                    && pixelgrid_proto::identity::canonical_node_id(&id).is_ok()
                {
                    // A node serving TLS is challenged over https (its probe URL says so).
                    let target = if n.probe_url.starts_with("https://") {
                        format!("https://{}", n.probe_address)
                    } else {
                        n.probe_address
                    };
                    listed.insert(id, target);
                }
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let now = tokio::time::Instant::now();
        let mut core = self.core();
        let Core {
            ledger,
            tally,
            probe_targets,
            missing_since,
            ..
        } = &mut *core;
        let changed: Vec<(&str, &str)> = listed
            .iter()
            .filter(|(id, addr)| probe_targets.get(*id) != Some(*addr))
            .map(|(id, addr)| (id.as_str(), addr.as_str()))
            .collect();
        ledger.add_nodes(&changed)?;
        for (id, addr) in changed {
            tally.add_node(id);
            probe_targets.insert(id.to_owned(), addr.to_owned());
        }
        // Nodes gone from the registry are probed a while longer (a restart re-registers), then
        // no more; their ledger rows stay, so what they earned stays provable.
        missing_since.retain(|id, _| !listed.contains_key(id));
        let gone: Vec<String> = probe_targets
            .keys()
            .filter(|id| !listed.contains_key(*id))
            .cloned()
            .collect();
        let mut forgotten = Vec::new();
        for id in gone {
            let since = *missing_since.entry(id.clone()).or_insert(now);
            if now.duration_since(since) >= self.config.forget_after {
                forgotten.push(id);
            }
        }
        if !forgotten.is_empty() {
            ledger.stop_probing(&forgotten)?;
            for id in &forgotten {
                probe_targets.remove(id);
                missing_since.remove(id);
            }
            tracing::info!(
                nodes = forgotten.len(),
                "no longer probing nodes gone from the registry"
            );
        }
        Ok(probe_targets.len())
    }

    /// Verifies, tallies and commits a batch of reports that arrived at `now_ms`; returns one
    /// acknowledgement per report, in order. Only committed reports are acknowledged as accepted.
    pub fn ingest(
        &self,
        batch: &[pb::SignedNodeReport],
        now_ms: u64,
    ) -> Result<Vec<pb::ReportAck>> {
        let mut core = self.core();
        Self::room_in_ledger(&core, now_ms)?;
        let verdicts = core.tally.ingest_batch(batch, now_ms);
        let accepted: Vec<(&pb::SignedNodeReport, u64, u64)> = batch
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| **v == Verdict::Accepted)
            .map(|(s, _)| {
                let sent = s.report.as_ref().map_or(0, |r| r.sent_unix_ms);
                (s, core.tally.epoch_of(sent), now_ms)
            })
            .collect();
        if !accepted.is_empty() {
            let attested = core.tally.take_attested();
            if let Err(e) = core.ledger.append_reports(&accepted, &attested) {
                return Err(self.roll_back(&mut core, e, now_ms));
            }
            Self::committed(&mut core);
        }
        Ok(batch
            .iter()
            .zip(verdicts)
            .map(|(s, v)| {
                self.counters.count(v);
                if v != Verdict::Accepted {
                    tracing::debug!(verdict = ?v, "report refused");
                }
                pb::ReportAck {
                    sequence: s.report.as_ref().map_or(0, |r| r.sequence),
                    verdict: to_proto(v) as i32,
                    detail: detail(v, s.report.as_ref(), &self.config.rules),
                }
            })
            .collect())
    }

    /// True when every report in the batch names a known node.
    fn all_known(&self, batch: &[pb::SignedNodeReport]) -> bool {
        let core = self.core();
        batch.iter().all(|s| {
            s.report
                .as_ref()
                .and_then(|r| r.node_id.as_ref())
                .is_none_or(|n| core.tally.knows(&n.hex))
        })
    }

    /// Records one probe result of the node whose probe endpoint is at `host`.
    pub fn record_probe(&self, node_id: &str, at_ms: u64, passed: bool, host: &str) -> Result<()> {
        let mut core = self.core();
        let epoch = core.tally.epoch_of(at_ms);
        // The ledger first: a probe it cannot hold changes nothing (one probe costs no epoch).
        core.ledger
            .append_probe(node_id, at_ms, epoch, passed, host)?;
        core.tally.record_probe_of(node_id, at_ms, passed, host);
        let c = if passed {
            &self.counters.probes_passed
        } else {
            &self.counters.probes_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Closes every epoch that ended at least `max_report_delay_ms` before `now_ms`; returns
    /// the epochs closed.
    pub fn close_due(&self, now_ms: u64) -> Result<Vec<u64>> {
        let rules = &self.config.rules;
        let mut core = self.core();
        Self::room_in_ledger(&core, now_ms)?;
        let mut next = match core.next_to_close {
            Some(n) => n,
            // A new ledger starts with the epoch it first runs in.
            None => core.tally.epoch_of(now_ms),
        };
        let mut closed = Vec::new();
        while (next + 1) * rules.epoch_ms + rules.max_report_delay_ms <= now_ms {
            let epoch = core.tally.close_epoch(next).clone();
            if let Err(e) = core.ledger.write_closed(&epoch, rules.epoch_ms) {
                let e = self.roll_back(&mut core, e, now_ms);
                // The epochs before `next` are committed; `next` is tried again.
                core.next_to_close = Some(next);
                return Err(e);
            }
            Self::committed(&mut core);
            tracing::info!(
                epoch = next,
                nodes = epoch.payouts.len(),
                root = %hex(&epoch.root),
                "epoch closed"
            );
            self.counters.epochs_closed.fetch_add(1, Ordering::Relaxed);
            closed.push(next);
            next += 1;
        }
        core.next_to_close = Some(next);
        Ok(closed)
    }

    /// Takes a stake change at `now_ms` and commits it; returns its verdict and the node's stake
    /// after it (bonded, unbonding).
    pub fn stake(
        &self,
        signed: &pb::SignedStakeChange,
        now_ms: u64,
    ) -> Result<(Verdict, u64, u64)> {
        let mut core = self.core();
        Self::room_in_ledger(&core, now_ms)?;
        let verdict = core.tally.ingest_stake(signed, now_ms);
        let events = core.tally.take_stake_events();
        if let Err(e) = core.ledger.append_stake_events(&events) {
            return Err(self.roll_back(&mut core, e, now_ms));
        }
        Self::committed(&mut core);
        self.counters.count(verdict);
        let node = signed
            .change
            .as_ref()
            .and_then(|c| c.node_id.as_ref())
            .map(|n| n.hex.clone())
            .unwrap_or_default();
        let (bonded, unbonding) = core.tally.stake_of(&node, now_ms);
        Ok((verdict, bonded, unbonding))
    }

    /// Takes a checker's result at `now_ms` and commits it when accepted.
    pub fn check(&self, signed: &pb::SignedCheckResult, now_ms: u64) -> Result<Verdict> {
        let mut core = self.core();
        Self::room_in_ledger(&core, now_ms)?;
        let verdict = core.tally.ingest_check(signed, now_ms);
        let counter = match (verdict, signed.result.as_ref().is_some_and(|r| r.passed)) {
            (Verdict::Accepted, true) => 0,
            (Verdict::Accepted, false) => 1,
            _ => 2,
        };
        if verdict == Verdict::Accepted {
            let at = signed.result.as_ref().map_or(0, |r| r.at_unix_ms);
            let epoch = core.tally.epoch_of(at);
            if let Err(e) = core.ledger.append_check(signed, epoch, now_ms) {
                return Err(self.roll_back(&mut core, e, now_ms));
            }
            Self::committed(&mut core);
        }
        // Counted once committed: a result refused on a full ledger comes again.
        self.counters.checks[counter].fetch_add(1, Ordering::Relaxed);
        Ok(verdict)
    }

    /// Checks the running tally against the ledger: every epoch not yet closed, up to the one
    /// of `now_ms`, closed (on copies) from the running tally and from a tally rebuilt from the
    /// ledger must come out the same — they differ when the running one counted something the
    /// ledger does not hold, or counted it twice. Returns the epochs that differ.
    pub fn audit_open_epochs(&self, now_ms: u64) -> Result<Vec<u64>> {
        let core = self.core();
        let current = core.tally.epoch_of(now_ms);
        let mut rebuilt = Tally::new(self.config.rules.clone());
        core.ledger.rebuild(&mut rebuilt)?;
        let (mut running, mut differ) = (core.tally.clone(), Vec::new());
        for epoch in core.next_to_close.unwrap_or(current)..=current {
            if running.close_epoch(epoch) != rebuilt.close_epoch(epoch) {
                differ.push(epoch);
            }
        }
        Ok(differ)
    }

    /// A node's accepted reports, `(sequence, sent_unix_ms)`, in sequence order.
    pub fn reports_of(&self, node_id: &str) -> Result<Vec<(u64, u64)>> {
        self.core().ledger.reports_of(node_id)
    }

    /// Closed epochs, most recent first.
    pub fn epochs(&self, limit: usize) -> Result<Vec<EpochRow>> {
        self.core().ledger.epochs(limit)
    }

    /// A closed epoch and its payouts.
    pub fn payouts(&self, epoch: u64) -> Result<(EpochRow, Vec<StoredPayout>)> {
        let core = self.core();
        let row = core
            .ledger
            .epoch(epoch)?
            .ok_or_else(|| Error::NotFound(format!("closed epoch {epoch}")))?;
        Ok((row, core.ledger.payouts(epoch)?))
    }

    /// What each studio owes for a closed epoch.
    pub fn charges(&self, epoch: u64) -> Result<Vec<crate::tally::StudioCharge>> {
        self.core().ledger.charges(epoch)
    }

    /// A node's payout and proof in a closed epoch.
    pub fn proof(&self, epoch: u64, node_id: &str) -> Result<(EpochRow, StoredPayout)> {
        let core = self.core();
        let row = core
            .ledger
            .epoch(epoch)?
            .ok_or_else(|| Error::NotFound(format!("closed epoch {epoch}")))?;
        let p = core.ledger.payout(epoch, node_id)?.ok_or_else(|| {
            Error::NotFound(format!("a payout for node {node_id} in epoch {epoch}"))
        })?;
        Ok((row, p))
    }

    /// Polls the registry until `stop`.
    pub async fn run_registry(self: Arc<Self>) {
        loop {
            if let Err(e) = self.refresh_registry().await {
                tracing::warn!(error = %e, "cannot read the node set; keeping the one known");
            }
            tokio::time::sleep(self.config.registry_refresh).await;
        }
    }

    /// Closes epochs as they fall due.
    pub async fn run_closer(self: Arc<Self>) {
        let tick = Duration::from_millis((self.config.rules.slot_ms / 4).clamp(50, 5_000));
        loop {
            match self.close_due(now_ms()) {
                Ok(_) => {}
                // Rolled back; tried again after the back-off.
                Err(Error::LedgerFull(_)) => {}
                Err(e) => {
                    // The tally and the ledger may now disagree; a restart rebuilds from the ledger.
                    tracing::error!(error = %e, "cannot write a closed epoch; exiting so a restart rebuilds from the ledger");
                    std::process::exit(70);
                }
            }
            tokio::time::sleep(tick).await;
        }
    }

    /// Probes every node at random moments in every slot, and once right away.
    pub async fn run_prober(self: Arc<Self>) {
        let slot = self.config.rules.slot_ms;
        let timeout = Duration::from_millis((slot / 2).clamp(100, 5_000));
        let mut first = true;
        loop {
            let now = now_ms();
            let slot_end = (now / slot + 1) * slot;
            let targets: Vec<(String, String)> = self
                .core()
                .probe_targets
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (node, addr) in targets {
                for k in 0..self.config.probes_per_slot.max(1) {
                    let delay = if first && k == 0 {
                        0
                    } else {
                        random_u64() % (slot_end - now).max(1)
                    };
                    let me = Arc::clone(&self);
                    let node = node.clone();
                    let addr = addr.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        let at = now_ms();
                        let passed = probe_with_retries(&node, &addr, timeout, at, slot).await;
                        // Identities answering from one host are counted together.
                        let host = addr
                            .trim_start_matches("https://")
                            .parse::<std::net::SocketAddr>()
                            .map(|a| host_of(a.ip()))
                            .unwrap_or_default();
                        match me.record_probe(&node, at, passed, &host) {
                            Ok(()) => {}
                            Err(e @ Error::LedgerFull(_)) => {
                                tracing::warn!(node = %node, error = %e, "a probe result is not recorded");
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "cannot record a probe; exiting so a restart rebuilds from the ledger");
                                std::process::exit(70);
                            }
                        }
                    });
                }
            }
            first = false;
            tokio::time::sleep(Duration::from_millis(slot_end.saturating_sub(now_ms()))).await;
        }
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS has randomness");
    u64::from_le_bytes(b)
}

/// The host a probe address belongs to, for counting identities per host: an IPv4 address (also
/// when written IPv4-mapped), or an IPv6 /64 (what one customer of a provider gets).
fn host_of(ip: std::net::IpAddr) -> String {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// Tries past a failed probe, within the same slot: one lost packet must not cost a slot.
const PROBE_RETRIES: u32 = 2;

/// Challenges a node, retrying a failed challenge (a fresh nonce each time) while time is left
/// in the slot of `at_ms`; passes when any try passes.
async fn probe_with_retries(
    node_id: &str,
    addr: &str,
    timeout: Duration,
    at_ms: u64,
    slot_ms: u64,
) -> bool {
    let slot_end = (at_ms / slot_ms + 1) * slot_ms;
    for attempt in 0..=PROBE_RETRIES {
        if probe(node_id, addr, timeout).await {
            return true;
        }
        let backoff = Duration::from_millis((slot_ms / 20).clamp(20, 1_000) << attempt);
        if attempt == PROBE_RETRIES || now_ms() + (backoff + timeout).as_millis() as u64 >= slot_end
        {
            break;
        }
        tokio::time::sleep(backoff).await;
    }
    false
}

/// Challenges one node: passes only when it signs our fresh nonce with its own key in time.
async fn probe(node_id: &str, addr: &str, timeout: Duration) -> bool {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).expect("the OS has randomness");
    // `host:port` (plain HTTP) or `https://host:port` (a node serving TLS).
    let target = if addr.starts_with("https://") {
        pixelgrid_proto::http::Target::from_url(addr)
            .await
            .map(|(t, _)| t)
            .ok()
    } else {
        addr.parse().ok().map(pixelgrid_proto::http::Target::plain)
    };
    let Some(target) = target else {
        tracing::warn!(node = node_id, addr, "probe address is not host:port");
        return false;
    };
    let path = format!("/challenge?nonce={}", hex(&nonce));
    let answer =
        match pixelgrid_proto::http::request_to(&target, "GET", &path, &[], &[], timeout).await {
            Ok(r) if r.status == 200 => r.body,
            Ok(r) => {
                tracing::debug!(node = node_id, status = r.status, "probe refused");
                return false;
            }
            Err(e) => {
                tracing::debug!(node = node_id, error = %e, "probe unanswered");
                return false;
            }
        };
    let parsed: Option<(String, Vec<u8>)> = serde_json::from_str::<serde_json::Value>(&answer)
        .ok()
        .and_then(|v| {
            Some((
                v.get("node_id")?.as_str()?.to_owned(),
                unhex(v.get("signature")?.as_str()?)?,
            ))
        });
    matches!(parsed, Some((id, sig)) if id == node_id && verify(node_id, &probe_message(&nonce), &sig))
}

/// The gRPC face.
#[derive(Debug, Clone)]
pub struct Service {
    indexer: Arc<Indexer>,
}

impl Service {
    /// Serves `indexer`.
    pub fn new(indexer: Arc<Indexer>) -> Self {
        Self { indexer }
    }
}

/// Nodes asked for in one `ListNodes` page.
const NODES_PAGE: u32 = 5_000;

/// Most reports verified as one batch.
const MAX_BATCH: usize = 256;

fn epoch_proto(e: &EpochRow) -> pb::Epoch {
    pb::Epoch {
        number: e.number,
        start_unix_ms: e.start_ms,
        end_unix_ms: e.end_ms,
        state: pb::EpochState::Closed as i32,
        merkle_root: e.root.to_vec(),
        total_micro_credits: e.total,
        nodes_paid: e.nodes_paid,
    }
}

fn node_id(n: Option<pixelgrid_proto::types::v1::NodeId>) -> Result<String> {
    let id = n.map(|n| n.hex).unwrap_or_default();
    if unhex(&id).is_none_or(|b| b.len() != 32) {
        return Err(Error::InvalidArgument {
            field: "node_id",
            reason: format!("{id:?} is not a 64-hex-digit node id"),
        });
    }
    Ok(id)
}

#[tonic::async_trait]
impl pb::indexer_server::Indexer for Service {
    type SubmitReportsStream =
        tokio_stream::wrappers::ReceiverStream<std::result::Result<pb::ReportAck, tonic::Status>>;

    async fn submit_reports(
        &self,
        request: tonic::Request<tonic::Streaming<pb::SignedNodeReport>>,
    ) -> std::result::Result<tonic::Response<Self::SubmitReportsStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let indexer = Arc::clone(&self.indexer);
        let (tx, rx) = tokio::sync::mpsc::channel(MAX_BATCH);
        tokio::spawn(async move {
            loop {
                let first = match inbound.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(error = %e.message(), "report stream broke");
                        return;
                    }
                };
                // Whatever else is already here joins the batch.
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    // A zero timeout polls once: only messages already received.
                    match tokio::time::timeout(Duration::ZERO, inbound.message()).await {
                        Ok(Ok(Some(r))) => batch.push(r),
                        _ => break,
                    }
                }
                let arrived = tokio::time::Instant::now();
                if !indexer.all_known(&batch) {
                    match indexer.refresh_registry_after(Some(arrived)).await {
                        Ok(_) => {}
                        // A node the ledger could not record would be refused as unknown, and
                        // its reports dropped: the node keeps them instead.
                        Err(e @ Error::LedgerFull(_)) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot refresh the node set"),
                    }
                }
                let acks = match indexer.ingest(&batch, now_ms()) {
                    Ok(a) => a,
                    Err(e @ Error::LedgerFull(_)) => {
                        // Nothing of the batch was kept: the node keeps it and sends it again.
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot commit reports; exiting so a restart rebuilds from the ledger");
                        std::process::exit(70);
                    }
                };
                for ack in acks {
                    if tx.send(Ok(ack)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }

    async fn submit_stake_change(
        &self,
        request: tonic::Request<pb::SignedStakeChange>,
    ) -> std::result::Result<tonic::Response<pb::StakeChangeAck>, tonic::Status> {
        let signed = request.into_inner();
        let (verdict, bonded, unbonding) = match self.indexer.stake(&signed, now_ms()) {
            Ok(v) => v,
            Err(e @ Error::LedgerFull(_)) => return Err(e.into()),
            Err(e) => {
                // The tally took a change the ledger did not: a restart rebuilds from the ledger.
                tracing::error!(error = %e, "cannot commit a stake change; exiting so a restart rebuilds from the ledger");
                std::process::exit(70);
            }
        };
        let detail = match verdict {
            Verdict::Accepted => String::new(),
            v => detail(v, None, self.indexer.rules()),
        };
        Ok(tonic::Response::new(pb::StakeChangeAck {
            verdict: to_proto(verdict) as i32,
            detail,
            bonded,
            unbonding,
        }))
    }

    async fn submit_check_result(
        &self,
        request: tonic::Request<pb::SignedCheckResult>,
    ) -> std::result::Result<tonic::Response<pb::CheckAck>, tonic::Status> {
        let signed = request.into_inner();
        let verdict = match self.indexer.check(&signed, now_ms()) {
            Ok(v) => v,
            Err(e @ Error::LedgerFull(_)) => return Err(e.into()),
            Err(e) => {
                // The tally took a result the ledger did not: a restart rebuilds from the ledger.
                tracing::error!(error = %e, "cannot commit a check result; exiting so a restart rebuilds from the ledger");
                std::process::exit(70);
            }
        };
        let detail = match verdict {
            Verdict::Accepted => String::new(),
            Verdict::Replayed => "this checker's result for this session was taken already".into(),
            Verdict::OutOfRange => format!(
                "a number is out of range: times below 2^63, a session id up to {} bytes",
                crate::tally::MAX_SESSION_ID_BYTES
            ),
            v => detail(v, None, self.indexer.rules()),
        };
        Ok(tonic::Response::new(pb::CheckAck {
            verdict: to_proto(verdict) as i32,
            detail,
        }))
    }

    async fn list_epochs(
        &self,
        request: tonic::Request<pb::ListEpochsRequest>,
    ) -> std::result::Result<tonic::Response<pb::ListEpochsResponse>, tonic::Status> {
        let limit = match request.into_inner().limit {
            0 => 24,
            n => n.min(10_000) as usize,
        };
        let epochs = self
            .indexer
            .epochs(limit)?
            .iter()
            .map(epoch_proto)
            .collect();
        Ok(tonic::Response::new(pb::ListEpochsResponse { epochs }))
    }

    async fn get_payouts(
        &self,
        request: tonic::Request<pb::GetPayoutsRequest>,
    ) -> std::result::Result<tonic::Response<pb::GetPayoutsResponse>, tonic::Status> {
        let (row, payouts) = self.indexer.payouts(request.into_inner().epoch)?;
        Ok(tonic::Response::new(pb::GetPayoutsResponse {
            epoch: Some(epoch_proto(&row)),
            payouts: payouts
                .into_iter()
                .map(|s| pb::NodePayout {
                    node_id: Some(pixelgrid_proto::types::v1::NodeId {
                        hex: s.payout.node_id,
                    }),
                    amount_micro_credits: s.payout.amount,
                    uptime_ms: s.payout.uptime_ms,
                    delivered_ms: s.payout.delivered_ms,
                    refunded_micro_credits: s.payout.refunded,
                    sla_met: s.payout.sla_met,
                    stake_micro_credits: s.payout.stake,
                    slashed_micro_credits: s.payout.slashed,
                    fee_micro_credits: s.payout.fee,
                    checks_failed: s.payout.checks_failed,
                    studio_paid_micro_credits: s.payout.studio_paid,
                })
                .collect(),
        }))
    }

    async fn get_payout_proof(
        &self,
        request: tonic::Request<pb::GetPayoutProofRequest>,
    ) -> std::result::Result<tonic::Response<pb::PayoutProof>, tonic::Status> {
        let r = request.into_inner();
        let node = node_id(r.node_id)?;
        let (row, stored) = self.indexer.proof(r.epoch, &node)?;
        Ok(tonic::Response::new(pb::PayoutProof {
            epoch: row.number,
            merkle_root: row.root.to_vec(),
            node_id: Some(pixelgrid_proto::types::v1::NodeId { hex: node }),
            amount_micro_credits: stored.payout.amount,
            leaf_index: stored.proof.index,
            leaf_count: stored.proof.count,
            siblings: stored.proof.siblings.iter().map(|s| s.to_vec()).collect(),
        }))
    }
}

/// Serves gRPC (`pixelgrid.indexer.v1` and the standard health service) on `listener` and runs
/// the registry feed, the prober and the epoch closer, until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    indexer: Arc<Indexer>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::result::Result<(), tonic::transport::Error> {
    serve_with_tls(listener, indexer, None, shutdown).await
}

/// Like [`serve`], over TLS when `tls` is given (plaintext clients are then refused).
pub async fn serve_with_tls(
    listener: tokio::net::TcpListener,
    indexer: Arc<Indexer>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::result::Result<(), tonic::transport::Error> {
    use pb::indexer_server::IndexerServer;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<IndexerServer<Service>>()
        .await;
    let tasks = [
        tokio::spawn(Arc::clone(&indexer).run_registry()),
        tokio::spawn(Arc::clone(&indexer).run_prober()),
        tokio::spawn(Arc::clone(&indexer).run_closer()),
    ];
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    // A dead peer's connection is noticed and closed.
    builder = builder.http2_keepalive_interval(Some(std::time::Duration::from_secs(30)));
    let served = builder
        .add_service(health)
        .add_service(IndexerServer::new(Service::new(indexer)))
        .serve_with_incoming_shutdown(pixelgrid_proto::transport::incoming(listener), shutdown)
        .await;
    for t in tasks {
        t.abort();
    }
    served
}

impl Indexer {
    /// The indexer's metrics in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        use pixelgrid_proto::metrics::Exposition;
        let c = &self.counters;
        let reports: Vec<_> = c
            .reports()
            .into_iter()
            .map(|(v, n)| (vec![("verdict", format!("{v:?}"))], n as f64))
            .collect();
        let (nodes, last_closed) = {
            let core = self.core();
            (
                core.probe_targets.len(),
                core.next_to_close.map_or(-1.0, |n| n as f64 - 1.0),
            )
        };
        Exposition::new()
            .counter(
                "pixelgrid_indexer_reports_total",
                "Signed node reports, by verdict (only Accepted credits anything).",
                &reports,
            )
            .counter(
                "pixelgrid_indexer_probes_total",
                "The indexer's own challenges of nodes, by outcome.",
                &[
                    (
                        vec![("outcome", "passed".into())],
                        c.probes_passed.load(Ordering::Relaxed) as f64,
                    ),
                    (
                        vec![("outcome", "failed".into())],
                        c.probes_failed.load(Ordering::Relaxed) as f64,
                    ),
                ],
            )
            .counter(
                "pixelgrid_indexer_checks_total",
                "Checkers' signed results: accepted (passed or failed) or refused.",
                &["passed", "failed", "refused"]
                    .iter()
                    .zip(&c.checks)
                    .map(|(o, n)| {
                        (
                            vec![("outcome", (*o).into())],
                            n.load(Ordering::Relaxed) as f64,
                        )
                    })
                    .collect::<Vec<_>>(),
            )
            .counter(
                "pixelgrid_indexer_ledger_full_total",
                "Commits refused by a full ledger (disk or --ledger-max-mb); each rolled back.",
                &[(vec![], c.ledger_full.load(Ordering::Relaxed) as f64)],
            )
            .counter(
                "pixelgrid_indexer_epochs_closed_total",
                "Epochs closed by this process.",
                &[(vec![], c.epochs_closed.load(Ordering::Relaxed) as f64)],
            )
            .gauge(
                "pixelgrid_indexer_nodes",
                "Nodes known (from the orchestrator's registry).",
                &[(vec![], nodes as f64)],
            )
            .gauge(
                "pixelgrid_indexer_last_closed_epoch",
                "Number of the latest closed epoch (-1 before the first).",
                &[(vec![], last_closed)],
            )
            .finish()
    }
}

/// Serves `/healthz`, `/readyz` (ready when the ledger answers) and `/metrics` until `shutdown`.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    indexer: Arc<Indexer>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::extract::State;
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let router = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(ix): State<Arc<Indexer>>| async move {
                match ix.epochs(1) {
                    Ok(_) => (StatusCode::OK, "ready\n".to_owned()),
                    Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(ix): State<Arc<Indexer>>| async move {
                (
                    [(header::CONTENT_TYPE, pixelgrid_proto::metrics::CONTENT_TYPE)],
                    ix.metrics_text(),
                )
            }),
        )
        .with_state(indexer);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An indexer with hour-long epochs on a new ledger in `dir` that already knows `keys`'
    /// nodes (no orchestrator to read them from).
    fn indexer_knowing(
        dir: &std::path::Path,
        keys: &[pixelgrid_proto::identity::NodeKey],
    ) -> Arc<Indexer> {
        let rules = TallyConfig {
            epoch_ms: 3_600_000,
            slot_ms: 60_000,
            ..TallyConfig::default()
        };
        let path = dir.join("ledger.db");
        let ids: Vec<String> = keys.iter().map(|k| k.node_id()).collect();
        let nodes: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "127.0.0.1:9")).collect();
        Ledger::open(&path, &rules)
            .unwrap()
            .add_nodes(&nodes)
            .unwrap();
        Indexer::open(DaemonConfig {
            rules,
            ledger: path,
            orchestrator: None,
            probes_per_slot: 1,
            registry_refresh: Duration::from_secs(1),
            forget_after: Duration::from_secs(1),
            ledger_max_bytes: None,
        })
        .unwrap()
    }

    /// A full ledger refuses a batch as a whole and rolls the tally back to what the ledger
    /// holds: once there is room, the same reports are taken (not refused as replays), each
    /// exactly once.
    #[test]
    fn a_full_ledger_loses_nothing_and_credits_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let key = pixelgrid_proto::identity::NodeKey::from_seed(&[7; 32]);
        let indexer = indexer_knowing(dir.path(), std::slice::from_ref(&key));
        let t0 = 7_200_000;
        let reports = |seqs: std::ops::Range<u64>| -> Vec<pb::SignedNodeReport> {
            seqs.map(|s| crate::report::ready(&key, s, t0 + s, vec![]))
                .collect()
        };
        let accepted = |acks: &[pb::ReportAck]| {
            acks.iter()
                .filter(|a| a.verdict == pb::ReportVerdict::Accepted as i32)
                .count()
        };
        let first = indexer.ingest(&reports(1..6), t0 + 10).unwrap();
        assert_eq!(accepted(&first), 5);

        // The disk fills: a batch too big for the room left fails as a whole.
        indexer.set_ledger_quota(Some(1)).unwrap();
        let batch = reports(6..406);
        let e = indexer.ingest(&batch, t0 + 500).unwrap_err();
        assert!(matches!(e, Error::LedgerFull(_)), "{e}");
        assert!(e.to_string().contains("--ledger-max-mb"), "{e}");
        assert_eq!(indexer.reports_of(&key.node_id()).unwrap().len(), 5);
        // Tried again at once: refused without another try (each try costs a rebuild).
        assert!(matches!(
            indexer.ingest(&batch, t0 + 600),
            Err(Error::LedgerFull(_))
        ));
        assert_eq!(indexer.counters.ledger_full.load(Ordering::Relaxed), 1);
        assert!(
            indexer
                .metrics_text()
                .contains("pixelgrid_indexer_ledger_full_total 1")
        );
        let status: tonic::Status = e.into();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);

        // Room again: the node's resend is taken, all of it, once.
        indexer.set_ledger_quota(None).unwrap();
        let resent = indexer.ingest(&batch, t0 + 700).unwrap();
        assert_eq!(accepted(&resent), batch.len(), "{:?}", resent.first());
        let again = indexer.ingest(&batch, t0 + 800).unwrap();
        assert_eq!(accepted(&again), 0, "a second resend is a replay");
        let stored = indexer.reports_of(&key.node_id()).unwrap();
        assert_eq!(stored.len(), 405);
        assert_eq!(
            indexer.audit_open_epochs(t0 + 900).unwrap(),
            Vec::<u64>::new()
        );
        assert!(stored.windows(2).all(|w| w[0].0 < w[1].0));
    }

    /// An epoch whose close does not fit in the ledger is closed once there is room, not
    /// skipped (a fresh ledger has no closed epoch to say which comes next).
    #[test]
    fn an_epoch_close_refused_by_a_full_ledger_is_closed_once_there_is_room() {
        let dir = tempfile::tempdir().unwrap();
        // Enough nodes that the epoch's payouts and tree need pages of their own.
        let keys: Vec<_> = (0..300u32)
            .map(|i| {
                let mut seed = [1u8; 32];
                seed[..4].copy_from_slice(&i.to_le_bytes());
                pixelgrid_proto::identity::NodeKey::from_seed(&seed)
            })
            .collect();
        let indexer = indexer_knowing(dir.path(), &keys);
        let rules = indexer.rules().clone();
        let t0 = 7_200_000;
        assert_eq!(indexer.close_due(t0 + 1_000).unwrap(), Vec::<u64>::new());
        let batch: Vec<_> = keys
            .iter()
            .map(|k| crate::report::ready(k, 1, t0 + 2_000, vec![]))
            .collect();
        indexer.ingest(&batch, t0 + 2_100).unwrap();

        let due = t0 + rules.epoch_ms + rules.max_report_delay_ms + 1;
        indexer.set_ledger_quota(Some(1)).unwrap();
        let e = indexer.close_due(due).unwrap_err();
        assert!(matches!(e, Error::LedgerFull(_)), "{e}");
        assert!(indexer.epochs(1).unwrap().is_empty());

        indexer.set_ledger_quota(None).unwrap();
        assert_eq!(indexer.close_due(due + 1).unwrap(), vec![2]);
        let (_, payouts) = indexer.payouts(2).unwrap();
        assert_eq!(payouts.len(), keys.len());
    }

    #[test]
    fn one_machine_is_one_host_however_its_address_is_written() {
        let v4: std::net::IpAddr = "203.0.113.7".parse().unwrap();
        let mapped: std::net::IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(host_of(v4), host_of(mapped));
        let a: std::net::IpAddr = "2001:db8:1:2::10".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:1:2:ffff::99".parse().unwrap();
        let other: std::net::IpAddr = "2001:db8:1:3::10".parse().unwrap();
        assert_eq!(host_of(a), host_of(b), "one /64");
        assert_ne!(host_of(a), host_of(other));
    }
}
