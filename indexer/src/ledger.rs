//! The ledger: SQLite in WAL mode, append-only. It keeps the indexer's inputs — accepted reports
//! (the signed bytes, with their arrival time) and its own probe results — and its outputs, the
//! closed epochs with every payout and proof. Because the tally is a deterministic function of the
//! inputs, a restarted indexer rebuilds its open epochs by replaying them ([`Ledger::rebuild`]);
//! closed epochs are restored as written and triggers refuse any change to them.
//!
//! | table | rows |
//! | --- | --- |
//! | `meta` | `rules`: the tally rules (JSON) the ledger was written under |
//! | `nodes` | node id (hex public key), probe address, whether it is still probed |
//! | `reports` | accepted reports: node, sequence, epoch, arrival ms, `SignedNodeReport` protobuf |
//! | `attested` | play credited from players' receipts: node, session, cumulative played ms, epoch (derived from `reports`; kept so a restart knows what closed epochs credited) |
//! | `stake_events` | deposits, withdrawal requests (free-at time), and per closed epoch one `epoch_slashes` mark whose slashes are in that epoch's payout rows, in order; a node's stake is their fold |
//! | `probes` | node, time, epoch, passed, host that answered |
//! | `checks` | checkers' accepted results: epoch, arrival ms, `SignedCheckResult` protobuf |
//! | `epochs` | closed epochs: number, bounds, Merkle root, total, nodes paid |
//! | `payouts` | per closed epoch and node: amount, uptime, delivery, refund, SLA, stake, slashed, fee, whether the checkers failed it, what studios paid for its play, leaf index |
//! | `studio_charges` | per closed epoch and studio: attested play of its sessions and what it owes |
//! | `epoch_tree` | per closed epoch, its Merkle tree's levels in chunks of [`TREE_CHUNK`] hashes: any node's proof is read from it (one sibling per level), so a close writes the tree once instead of a proof per node |

use crate::merkle::Proof;
use crate::stake::StakeEvent;
use crate::tally::{AttestedPlay, ClosedEpoch, NodePayout, StudioCharge, Tally, TallyConfig};
use crate::{Error, Result};
use pixelgrid_proto::indexer::v1::SignedNodeReport;
use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    probe_address TEXT NOT NULL,
    probed INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY,
    node_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    arrived_ms INTEGER NOT NULL,
    signed BLOB NOT NULL,
    UNIQUE (node_id, sequence)
);
CREATE INDEX IF NOT EXISTS reports_by_epoch ON reports (epoch);
CREATE TABLE IF NOT EXISTS attested (
    node_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    played_ms INTEGER NOT NULL,
    epoch INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS attested_by_epoch ON attested (epoch);
CREATE TABLE IF NOT EXISTS stake_events (
    id INTEGER PRIMARY KEY,
    node_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    kind TEXT NOT NULL,
    amount INTEGER NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS probes (
    id INTEGER PRIMARY KEY,
    node_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    passed INTEGER NOT NULL,
    host TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS probes_by_epoch ON probes (epoch);
CREATE TABLE IF NOT EXISTS checks (
    id INTEGER PRIMARY KEY,
    epoch INTEGER NOT NULL,
    arrived_ms INTEGER NOT NULL,
    signed BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS checks_by_epoch ON checks (epoch);
CREATE TABLE IF NOT EXISTS epochs (
    number INTEGER PRIMARY KEY,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    root BLOB NOT NULL,
    total INTEGER NOT NULL,
    nodes_paid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS payouts (
    epoch INTEGER NOT NULL,
    node_id TEXT NOT NULL,
    leaf_index INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    uptime_ms INTEGER NOT NULL,
    delivered_ms INTEGER NOT NULL,
    refunded INTEGER NOT NULL,
    sla_met INTEGER NOT NULL,
    stake INTEGER NOT NULL DEFAULT 0,
    slashed INTEGER NOT NULL DEFAULT 0,
    fee INTEGER NOT NULL DEFAULT 0,
    checks_failed INTEGER NOT NULL DEFAULT 0,
    studio_paid INTEGER NOT NULL DEFAULT 0,
    proof BLOB NOT NULL,
    PRIMARY KEY (epoch, node_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS studio_charges (
    epoch INTEGER NOT NULL,
    studio TEXT NOT NULL,
    delivered_ms INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    PRIMARY KEY (epoch, studio)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS studio_charges_never_change BEFORE UPDATE ON studio_charges
    BEGIN SELECT RAISE(ABORT, 'closed epochs never change'); END;
CREATE TRIGGER IF NOT EXISTS studio_charges_are_kept BEFORE DELETE ON studio_charges
    BEGIN SELECT RAISE(ABORT, 'closed epochs never change'); END;
CREATE TABLE IF NOT EXISTS epoch_tree (
    epoch INTEGER NOT NULL,
    level INTEGER NOT NULL,
    chunk INTEGER NOT NULL,
    hashes BLOB NOT NULL,
    PRIMARY KEY (epoch, level, chunk)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS epoch_trees_never_change BEFORE UPDATE ON epoch_tree
    BEGIN SELECT RAISE(ABORT, 'closed epochs never change'); END;
CREATE TRIGGER IF NOT EXISTS epoch_trees_are_kept BEFORE DELETE ON epoch_tree
    BEGIN SELECT RAISE(ABORT, 'closed epochs never change'); END;
CREATE TRIGGER IF NOT EXISTS closed_epochs_never_change BEFORE UPDATE ON epochs
    BEGIN SELECT RAISE(ABORT, 'closed epochs never change'); END;
CREATE TRIGGER IF NOT EXISTS closed_epochs_are_kept BEFORE DELETE ON epochs
    BEGIN SELECT RAISE(ABORT, 'closed epochs never change'); END;
CREATE TRIGGER IF NOT EXISTS payouts_never_change BEFORE UPDATE ON payouts
    BEGIN SELECT RAISE(ABORT, 'closed epochs never change'); END;
CREATE TRIGGER IF NOT EXISTS payouts_are_kept BEFORE DELETE ON payouts
    BEGIN SELECT RAISE(ABORT, 'closed epochs never change'); END;
";

/// Hashes per stored chunk of a tree level (32 KiB).
pub const TREE_CHUNK: usize = 1024;

/// A closed epoch as the ledger lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EpochRow {
    /// Epoch number.
    pub number: u64,
    /// Start, unix ms.
    pub start_ms: u64,
    /// End (exclusive), unix ms.
    pub end_ms: u64,
    /// Merkle root.
    pub root: [u8; 32],
    /// Sum of payouts, micro-credits.
    pub total: u64,
    /// Nodes with a payout row.
    pub nodes_paid: u32,
}

/// One payout with its proof, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPayout {
    /// The payout.
    pub payout: NodePayout,
    /// Its proof against the epoch's root.
    pub proof: Proof,
}

/// What [`Ledger::rebuild`] restored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// Nodes known.
    pub nodes: usize,
    /// Closed epochs restored.
    pub closed_epochs: usize,
    /// Reports replayed into open epochs.
    pub reports: usize,
    /// Probe results replayed into open epochs.
    pub probes: usize,
    /// Checkers' results replayed into open epochs.
    pub checks: usize,
}

/// The ledger; see the module docs.
#[derive(Debug)]
pub struct Ledger {
    db: Connection,
}

fn sql(e: rusqlite::Error) -> Error {
    // A full disk and a reached quota read the same: SQLITE_FULL, the transaction rolled back.
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        return Error::LedgerFull(e.to_string());
    }
    Error::Ledger(e.to_string())
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn hash(bytes: &[u8]) -> [u8; 32] {
    <[u8; 32]>::try_from(bytes).unwrap_or([0; 32])
}

impl Ledger {
    /// Opens (or creates) the ledger at `path` for `rules`. A ledger written under other rules is
    /// refused: its epochs would not match what these rules compute.
    pub fn open(path: &Path, rules: &TallyConfig) -> Result<Self> {
        let db = Connection::open(path)
            .map_err(|e| Error::Ledger(format!("cannot open {}: {e}", path.display())))?;
        // WAL: readers never block the writer; FULL: a committed report survives power loss.
        db.pragma_update(None, "journal_mode", "WAL").map_err(sql)?;
        db.pragma_update(None, "synchronous", "FULL").map_err(sql)?;
        // Sorting and grouping (the rebuild) need no temporary files: on a full disk a rebuild
        // still works.
        db.pragma_update(None, "temp_store", "MEMORY")
            .map_err(sql)?;
        db.execute_batch(SCHEMA).map_err(sql)?;
        let rules_json = serde_json::to_string(rules).expect("rules serialise");
        let stored: Option<String> = db
            .query_row("SELECT value FROM meta WHERE key = 'rules'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql)?;
        match stored {
            Some(s) if s != rules_json => {
                return Err(Error::RulesChanged {
                    ledger: s,
                    given: rules_json,
                });
            }
            Some(_) => {}
            None => {
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('rules', ?1)",
                    params![rules_json],
                )
                .map_err(sql)?;
            }
        }
        Ok(Self { db })
    }

    /// Caps the database at about `max_bytes` (none: no cap but the disk's): past it every
    /// commit fails as on a full disk ([`Error::LedgerFull`]) and rolls back. A cap below the
    /// current size holds it where it is.
    pub fn set_max_bytes(&self, max_bytes: Option<u64>) -> Result<()> {
        let page: u64 = self
            .db
            .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
            .map(u)
            .map_err(sql)?;
        // SQLite's own largest page count.
        let pages = max_bytes.map_or(4_294_967_294, |b| (b / page.max(1)).max(1));
        self.db
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
            .map_err(sql)
    }

    /// Bytes the ledger occupies, after moving the write-ahead log into the database file.
    pub fn size_bytes(&self) -> Result<u64> {
        self.db
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .map_err(sql)?;
        let page = |p: &str| -> Result<u64> {
            self.db
                .query_row(&format!("PRAGMA {p}"), [], |r| r.get::<_, i64>(0))
                .map(u)
                .map_err(sql)
        };
        Ok(page("page_count")? * page("page_size")?)
    }

    /// Records a node (or its new probe address).
    pub fn add_node(&mut self, node_id: &str, probe_address: &str) -> Result<()> {
        self.add_nodes(&[(node_id, probe_address)])
    }

    /// Records nodes (or their new probe addresses), `(node id, probe address)`, in one
    /// transaction; each is probed from now on.
    pub fn add_nodes(&mut self, nodes: &[(&str, &str)]) -> Result<()> {
        if nodes.is_empty() {
            return Ok(());
        }
        let tx = self.db.transaction().map_err(sql)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO nodes (node_id, probe_address, probed) VALUES (?1, ?2, 1)
                     ON CONFLICT (node_id) DO UPDATE
                     SET probe_address = excluded.probe_address, probed = 1",
                )
                .map_err(sql)?;
            for (id, addr) in nodes {
                insert.execute(params![id, addr]).map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)
    }

    /// Stops probing nodes (gone from the registry); they stay known, with what they earned.
    pub fn stop_probing(&mut self, nodes: &[String]) -> Result<()> {
        let tx = self.db.transaction().map_err(sql)?;
        {
            let mut update = tx
                .prepare_cached("UPDATE nodes SET probed = 0 WHERE node_id = ?1")
                .map_err(sql)?;
            for id in nodes {
                update.execute(params![id]).map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)
    }

    /// Nodes still probed, with their probe addresses.
    pub fn probe_targets(&self) -> Result<Vec<(String, String)>> {
        self.node_rows("SELECT node_id, probe_address FROM nodes WHERE probed = 1 ORDER BY node_id")
    }

    /// Every known node with its probe address.
    pub fn nodes(&self) -> Result<Vec<(String, String)>> {
        self.node_rows("SELECT node_id, probe_address FROM nodes ORDER BY node_id")
    }

    fn node_rows(&self, query: &str) -> Result<Vec<(String, String)>> {
        let mut q = self.db.prepare(query).map_err(sql)?;
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sql)?
            .collect::<rusqlite::Result<_>>()
            .map_err(sql)
    }

    /// Appends accepted reports, `(report, epoch, arrived_ms)`, and the play their receipts
    /// attested, in one transaction.
    pub fn append_reports(
        &mut self,
        accepted: &[(&SignedNodeReport, u64, u64)],
        attested: &[AttestedPlay],
    ) -> Result<()> {
        let tx = self.db.transaction().map_err(sql)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO attested (node_id, session_id, played_ms, epoch)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(sql)?;
            for a in attested {
                insert
                    .execute(params![a.node_id, a.session_id, i(a.played_ms), i(a.epoch)])
                    .map_err(sql)?;
            }
        }
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO reports (node_id, sequence, epoch, arrived_ms, signed)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(sql)?;
            for (signed, epoch, arrived) in accepted {
                let Some(report) = &signed.report else {
                    continue;
                };
                let node = report.node_id.as_ref().map_or("", |n| n.hex.as_str());
                insert
                    .execute(params![
                        node,
                        i(report.sequence),
                        i(*epoch),
                        i(*arrived),
                        signed.encode_to_vec()
                    ])
                    .map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)
    }

    /// A node's accepted reports, `(sequence, sent_unix_ms)`, in sequence order.
    pub fn reports_of(&self, node_id: &str) -> Result<Vec<(u64, u64)>> {
        let mut q = self
            .db
            .prepare_cached("SELECT signed FROM reports WHERE node_id = ?1 ORDER BY sequence")
            .map_err(sql)?;
        let rows = q
            .query_map(params![node_id], |r| r.get::<_, Vec<u8>>(0))
            .map_err(sql)?;
        let mut out = Vec::new();
        for row in rows {
            let bytes = row.map_err(sql)?;
            let r = SignedNodeReport::decode(bytes.as_slice())
                .ok()
                .and_then(|s| s.report)
                .ok_or_else(|| Error::Ledger("a stored report does not decode".into()))?;
            out.push((r.sequence, r.sent_unix_ms));
        }
        Ok(out)
    }

    /// Appends one probe result.
    pub fn append_probe(
        &self,
        node_id: &str,
        at_ms: u64,
        epoch: u64,
        passed: bool,
        host: &str,
    ) -> Result<()> {
        self.db
            .prepare_cached(
                "INSERT INTO probes (node_id, at_ms, epoch, passed, host)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(sql)?
            .execute(params![node_id, i(at_ms), i(epoch), passed, host])
            .map_err(sql)?;
        Ok(())
    }

    /// Writes a closed epoch, every payout and every proof, in one transaction.
    pub fn write_closed(&mut self, closed: &ClosedEpoch, epoch_ms: u64) -> Result<()> {
        let tree = closed.tree();
        let tx = self.db.transaction().map_err(sql)?;
        // The slashes this close made are in its payout rows; one stake event marks where they
        // fall among the others, and a restart folds them in there.
        if closed.payouts.iter().any(|p| p.slashed > 0) {
            tx.execute(
                "INSERT INTO stake_events (node_id, sequence, kind, amount, at_ms)
                 VALUES ('', 0, 'epoch_slashes', ?1, ?2)",
                params![i(closed.epoch), i((closed.epoch + 1) * epoch_ms)],
            )
            .map_err(sql)?;
        }
        {
            let total = closed
                .payouts
                .iter()
                .fold(0u64, |t, p| t.saturating_add(p.amount));
            tx.execute(
                "INSERT INTO epochs (number, start_ms, end_ms, root, total, nodes_paid)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    i(closed.epoch),
                    i(closed.epoch * epoch_ms),
                    i((closed.epoch + 1) * epoch_ms),
                    closed.root.as_slice(),
                    i(total),
                    closed.payouts.len() as i64
                ],
            )
            .map_err(sql)?;
            // Many rows per statement: a million payouts is a million statements otherwise.
            const ROWS: usize = 64;
            let insert_sql = |rows: usize| {
                let one = "(?,?,?,?,?,?,?,?,?,?,?,?,?,?)";
                format!(
                    "INSERT INTO payouts (epoch, node_id, leaf_index, amount, uptime_ms,
                     delivered_ms, refunded, sla_met, stake, slashed, fee, checks_failed, studio_paid,
                     proof)
                     VALUES {}",
                    vec![one; rows].join(",")
                )
            };
            for (c, chunk) in closed.payouts.chunks(ROWS).enumerate() {
                let mut insert = tx.prepare_cached(&insert_sql(chunk.len())).map_err(sql)?;
                let mut values: Vec<rusqlite::types::Value> = Vec::with_capacity(chunk.len() * 14);
                for (k, p) in chunk.iter().enumerate() {
                    use rusqlite::types::Value::{Blob, Integer, Text};
                    values.extend([
                        Integer(i(closed.epoch)),
                        Text(p.node_id.clone()),
                        Integer((c * ROWS + k) as i64),
                        Integer(i(p.amount)),
                        Integer(i(p.uptime_ms)),
                        Integer(i(p.delivered_ms)),
                        Integer(i(p.refunded)),
                        Integer(i64::from(p.sla_met)),
                        Integer(i(p.stake)),
                        Integer(i(p.slashed)),
                        Integer(i(p.fee)),
                        Integer(i64::from(p.checks_failed)),
                        Integer(i(p.studio_paid)),
                        Blob(Vec::new()),
                    ]);
                }
                insert
                    .execute(rusqlite::params_from_iter(values))
                    .map_err(sql)?;
            }
            let mut charge_insert = tx
                .prepare_cached(
                    "INSERT INTO studio_charges (epoch, studio, delivered_ms, amount)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(sql)?;
            for c in &closed.charges {
                charge_insert
                    .execute(params![
                        i(closed.epoch),
                        c.studio,
                        i(c.delivered_ms),
                        i(c.amount)
                    ])
                    .map_err(sql)?;
            }
            let mut level_insert = tx
                .prepare_cached(
                    "INSERT INTO epoch_tree (epoch, level, chunk, hashes) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(sql)?;
            let levels = tree.levels();
            // The root's level is the epoch's root; every level below it is stored.
            for (l, level) in levels
                .iter()
                .enumerate()
                .take(levels.len().saturating_sub(1))
            {
                for (c, chunk) in level.chunks(TREE_CHUNK).enumerate() {
                    level_insert
                        .execute(params![i(closed.epoch), l as i64, c as i64, chunk.concat()])
                        .map_err(sql)?;
                }
            }
        }
        tx.commit().map_err(sql)
    }

    /// Appends a checker's result the tally accepted at `arrived_ms`, for `epoch`.
    pub fn append_check(
        &mut self,
        signed: &pixelgrid_proto::indexer::v1::SignedCheckResult,
        epoch: u64,
        arrived_ms: u64,
    ) -> Result<()> {
        self.db
            .execute(
                "INSERT INTO checks (epoch, arrived_ms, signed) VALUES (?1, ?2, ?3)",
                params![i(epoch), i(arrived_ms), signed.encode_to_vec()],
            )
            .map_err(sql)?;
        Ok(())
    }

    /// Appends stake events `(node, change sequence or 0, event)` in one transaction.
    pub fn append_stake_events(&mut self, events: &[(String, u64, StakeEvent)]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let tx = self.db.transaction().map_err(sql)?;
        append_stake_events(&tx, events)?;
        tx.commit().map_err(sql)
    }

    /// Closed epochs, most recent first.
    pub fn epochs(&self, limit: usize) -> Result<Vec<EpochRow>> {
        let mut q = self
            .db
            .prepare(
                "SELECT number, start_ms, end_ms, root, total, nodes_paid FROM epochs
                 ORDER BY number DESC LIMIT ?1",
            )
            .map_err(sql)?;
        q.query_map(params![limit as i64], epoch_row)
            .map_err(sql)?
            .collect::<rusqlite::Result<_>>()
            .map_err(sql)
    }

    /// One closed epoch.
    pub fn epoch(&self, number: u64) -> Result<Option<EpochRow>> {
        self.db
            .query_row(
                "SELECT number, start_ms, end_ms, root, total, nodes_paid FROM epochs
                 WHERE number = ?1",
                params![i(number)],
                epoch_row,
            )
            .optional()
            .map_err(sql)
    }

    /// The payouts of a closed epoch, by node id, with their proofs.
    pub fn payouts(&self, epoch: u64) -> Result<Vec<StoredPayout>> {
        self.payouts_where(epoch, None)
    }

    /// One node's payout and proof in a closed epoch.
    pub fn payout(&self, epoch: u64, node_id: &str) -> Result<Option<StoredPayout>> {
        Ok(self.payouts_where(epoch, Some(node_id))?.pop())
    }

    /// What each studio owes for a closed epoch, by studio id.
    pub fn charges(&self, epoch: u64) -> Result<Vec<StudioCharge>> {
        let mut q = self
            .db
            .prepare_cached(
                "SELECT studio, delivered_ms, amount FROM studio_charges WHERE epoch = ?1
                 ORDER BY studio",
            )
            .map_err(sql)?;
        q.query_map(params![i(epoch)], |r| {
            Ok(StudioCharge {
                studio: r.get(0)?,
                delivered_ms: u(r.get(1)?),
                amount: u(r.get(2)?),
            })
        })
        .map_err(sql)?
        .collect::<rusqlite::Result<_>>()
        .map_err(sql)
    }

    fn payouts_where(&self, epoch: u64, node: Option<&str>) -> Result<Vec<StoredPayout>> {
        let count = self.epoch(epoch)?.map_or(0, |e| u64::from(e.nodes_paid));
        let mut q = self
            .db
            .prepare_cached(
                "SELECT node_id, leaf_index, amount, uptime_ms, delivered_ms, refunded, sla_met,
                 proof, stake, slashed, fee, checks_failed, studio_paid FROM payouts
                 WHERE epoch = ?1 AND (?2 IS NULL OR node_id = ?2)
                 ORDER BY node_id",
            )
            .map_err(sql)?;
        let rows: Vec<(NodePayout, u64)> = q
            .query_map(params![i(epoch), node], |r| {
                Ok((
                    NodePayout {
                        node_id: r.get(0)?,
                        amount: u(r.get(2)?),
                        uptime_ms: u(r.get(3)?),
                        delivered_ms: u(r.get(4)?),
                        refunded: u(r.get(5)?),
                        sla_met: r.get(6)?,
                        stake: u(r.get(8)?),
                        slashed: u(r.get(9)?),
                        fee: u(r.get(10)?),
                        checks_failed: r.get(11)?,
                        studio_paid: u(r.get(12)?),
                    },
                    u(r.get(1)?),
                ))
            })
            .map_err(sql)?
            .collect::<rusqlite::Result<_>>()
            .map_err(sql)?;
        // Proofs from the stored tree, each chunk read once.
        let mut chunks: std::collections::HashMap<(usize, u64), Vec<u8>> =
            std::collections::HashMap::new();
        let mut read = self
            .db
            .prepare_cached(
                "SELECT hashes FROM epoch_tree WHERE epoch = ?1 AND level = ?2 AND chunk = ?3",
            )
            .map_err(sql)?;
        let mut out = Vec::with_capacity(rows.len());
        for (payout, index) in rows {
            let proof = crate::merkle::proof_from(index, count, |level, at| {
                let key = (level, at / TREE_CHUNK as u64);
                let blob = match chunks.entry(key) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => e.insert(
                        read.query_row(params![i(epoch), level as i64, i(key.1)], |r| r.get(0))
                            .ok()?,
                    ),
                };
                let off = (at % TREE_CHUNK as u64) as usize * 32;
                blob.get(off..off + 32).map(hash)
            })
            .ok_or_else(|| Error::Ledger(format!("epoch {epoch}'s stored tree is incomplete")))?;
            out.push(StoredPayout { payout, proof });
        }
        Ok(out)
    }

    /// Rebuilds `tally` (fresh, same rules) from the ledger: nodes, which epochs are closed (the
    /// latest one as written; older ones stay in the ledger), then the open epochs' reports and
    /// probes replayed in arrival order.
    pub fn rebuild(&self, tally: &mut Tally) -> Result<Rebuilt> {
        let mut out = Rebuilt::default();
        for (node, _) in self.nodes()? {
            tally.add_node(&node);
            out.nodes += 1;
        }
        // Stakes: every event in order (deposits, withdrawals, slashes of closed epochs).
        let mut stakes = self
            .db
            .prepare("SELECT node_id, sequence, kind, amount, at_ms FROM stake_events ORDER BY id")
            .map_err(sql)?;
        let rows = stakes
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    u(r.get(1)?),
                    r.get::<_, String>(2)?,
                    u(r.get(3)?),
                    u(r.get(4)?),
                ))
            })
            .map_err(sql)?;
        let mut slashes = self
            .db
            .prepare("SELECT node_id, slashed FROM payouts WHERE epoch = ?1 AND slashed > 0")
            .map_err(sql)?;
        for row in rows {
            let (node, sequence, kind, amount, at) = row.map_err(sql)?;
            let event = match kind.as_str() {
                // `amount` is the epoch; its payout rows hold the slashes, at its end (`at`).
                "epoch_slashes" => {
                    let rows = slashes
                        .query_map(params![i(amount)], |r| {
                            Ok((r.get::<_, String>(0)?, u(r.get(1)?)))
                        })
                        .map_err(sql)?;
                    for row in rows {
                        let (node, slashed) = row.map_err(sql)?;
                        tally.restore_stake_event(
                            &node,
                            0,
                            StakeEvent::Slash {
                                amount: slashed,
                                epoch_end_ms: at,
                            },
                        );
                    }
                    continue;
                }
                "deposit" => StakeEvent::Deposit { amount },
                "withdraw" => StakeEvent::Withdraw {
                    amount,
                    free_at_ms: at,
                },
                _ => StakeEvent::Slash {
                    amount,
                    epoch_end_ms: at,
                },
            };
            tally.restore_stake_event(&node, sequence, event);
        }
        let mut first_open = 0;
        if let Some(row) = self.epochs(1)?.pop() {
            let payouts = self
                .payouts(row.number)?
                .into_iter()
                .map(|p| p.payout)
                .collect();
            let charges = self.charges(row.number)?;
            tally.restore_closed(ClosedEpoch::new(row.number, payouts, charges, row.root));
            first_open = row.number + 1;
            tally.restore_closed_before(first_open);
        }
        out.closed_epochs = self
            .db
            .query_row("SELECT COUNT(*) FROM epochs", [], |r| r.get::<_, i64>(0))
            .map_err(sql)? as usize;
        // The last report each node had accepted in closed epochs, so replays stay refused.
        let mut last = self
            .db
            .prepare(
                "SELECT node_id, MAX(sequence), signed FROM reports WHERE epoch < ?1
                 GROUP BY node_id",
            )
            .map_err(sql)?;
        let rows = last
            .query_map(params![i(first_open)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    u(r.get(1)?),
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(sql)?;
        for row in rows {
            let (node, sequence, signed) = row.map_err(sql)?;
            let sent = SignedNodeReport::decode(signed.as_slice())
                .ok()
                .and_then(|s| s.report)
                .map_or(0, |r| r.sent_unix_ms);
            tally.restore_last(&node, sequence, sent);
        }
        // What players' receipts already credited in closed epochs.
        let mut attested = self
            .db
            .prepare(
                "SELECT node_id, session_id, MAX(played_ms) FROM attested WHERE epoch < ?1
                 GROUP BY node_id, session_id",
            )
            .map_err(sql)?;
        let rows = attested
            .query_map(params![i(first_open)], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, u(r.get(2)?)))
            })
            .map_err(sql)?;
        for row in rows {
            let (node, session, played) = row.map_err(sql)?;
            tally.restore_attested(&node, &session, played);
        }
        // Receipts credited in open epochs: their replays take the live verdicts.
        let mut credited_open: std::collections::HashMap<
            String,
            std::collections::HashSet<(String, u64)>,
        > = std::collections::HashMap::new();
        {
            let mut q = self
                .db
                .prepare("SELECT node_id, session_id, played_ms FROM attested WHERE epoch >= ?1")
                .map_err(sql)?;
            let rows = q
                .query_map(params![i(first_open)], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, u(r.get(2)?)))
                })
                .map_err(sql)?;
            for row in rows {
                let (node, session, played) = row.map_err(sql)?;
                credited_open
                    .entry(node)
                    .or_default()
                    .insert((session, played));
            }
        }
        let none = std::collections::HashSet::new();
        let mut reports = self
            .db
            .prepare("SELECT signed, arrived_ms FROM reports WHERE epoch >= ?1 ORDER BY id")
            .map_err(sql)?;
        let rows = reports
            .query_map(params![i(first_open)], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, u(r.get(1)?)))
            })
            .map_err(sql)?;
        for row in rows {
            let (bytes, arrived) = row.map_err(sql)?;
            let signed = SignedNodeReport::decode(bytes.as_slice())
                .map_err(|e| Error::Ledger(format!("a stored report does not decode: {e}")))?;
            let node = signed
                .report
                .as_ref()
                .and_then(|r| r.node_id.as_ref())
                .map_or("", |n| n.hex.as_str());
            let credited = credited_open.get(node).unwrap_or(&none);
            tally.replay_with_credits(&signed, arrived, credited);
            out.reports += 1;
        }
        // Replayed credits are in the ledger already.
        tally.take_attested();
        let mut probes = self
            .db
            .prepare(
                "SELECT node_id, at_ms, passed, host FROM probes WHERE epoch >= ?1 ORDER BY id",
            )
            .map_err(sql)?;
        let rows = probes
            .query_map(params![i(first_open)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    u(r.get(1)?),
                    r.get::<_, bool>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(sql)?;
        for row in rows {
            let (node, at, passed, host) = row.map_err(sql)?;
            tally.record_probe_of(&node, at, passed, &host);
            out.probes += 1;
        }
        // Checkers' results in open epochs, as they arrived (under today's named checkers).
        let mut checks = self
            .db
            .prepare("SELECT signed, arrived_ms FROM checks WHERE epoch >= ?1 ORDER BY id")
            .map_err(sql)?;
        let rows = checks
            .query_map(params![i(first_open)], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, u(r.get(1)?)))
            })
            .map_err(sql)?;
        for row in rows {
            let (bytes, arrived) = row.map_err(sql)?;
            let signed = pixelgrid_proto::indexer::v1::SignedCheckResult::decode(bytes.as_slice())
                .map_err(|e| Error::Ledger(format!("a stored check does not decode: {e}")))?;
            tally.ingest_check(&signed, arrived);
            out.checks += 1;
        }
        Ok(out)
    }
}

fn append_stake_events(
    tx: &rusqlite::Transaction<'_>,
    events: &[(String, u64, StakeEvent)],
) -> Result<()> {
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO stake_events (node_id, sequence, kind, amount, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(sql)?;
    for (node, sequence, event) in events {
        let (kind, amount, at) = match *event {
            StakeEvent::Deposit { amount } => ("deposit", amount, 0),
            StakeEvent::Withdraw { amount, free_at_ms } => ("withdraw", amount, free_at_ms),
            StakeEvent::Slash {
                amount,
                epoch_end_ms,
            } => ("slash", amount, epoch_end_ms),
        };
        insert
            .execute(params![node, i(*sequence), kind, i(amount), i(at)])
            .map_err(sql)?;
    }
    Ok(())
}

fn epoch_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EpochRow> {
    Ok(EpochRow {
        number: u(r.get(0)?),
        start_ms: u(r.get(1)?),
        end_ms: u(r.get(2)?),
        root: hash(&r.get::<_, Vec<u8>>(3)?),
        total: u(r.get(4)?),
        nodes_paid: r.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ready;
    use pixelgrid_proto::identity::NodeKey;

    fn rules() -> TallyConfig {
        TallyConfig {
            epoch_ms: 10_000,
            slot_ms: 1_000,
            max_clock_skew_ms: 5_000,
            sla_floor_ppm: 0,
            ..TallyConfig::default()
        }
    }

    /// Feeds a tally and a ledger the same inputs; returns the tally.
    fn feed(ledger: &mut Ledger, key: &NodeKey, seqs: std::ops::Range<u64>) -> Tally {
        let mut t = Tally::new(rules());
        ledger.rebuild(&mut t).unwrap();
        t.add_node(&key.node_id());
        ledger.add_node(&key.node_id(), "127.0.0.1:9").unwrap();
        for s in seqs {
            let at = s * 1_000 + 100;
            let r = ready(key, s, at, vec![]);
            if t.ingest(&r, at) == crate::tally::Verdict::Accepted {
                ledger
                    .append_reports(&[(&r, t.epoch_of(at), at)], &t.take_attested())
                    .unwrap();
            }
            t.record_probe(&key.node_id(), at + 10, true);
            ledger
                .append_probe(&key.node_id(), at + 10, t.epoch_of(at), true, "")
                .unwrap();
        }
        t
    }

    #[test]
    fn a_restart_rebuilds_the_same_epochs_and_still_refuses_replays() {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::from_seed(&[3; 32]);
        // Without a crash: epochs 0 and 1 in one go.
        let mut straight_ledger = Ledger::open(&dir.path().join("a.db"), &rules()).unwrap();
        let mut straight = feed(&mut straight_ledger, &key, 0..20);
        let e0 = straight.close_epoch(0).clone();
        let e1 = straight.close_epoch(1).clone();

        // With a crash mid-epoch 1, after epoch 0 was closed and written.
        let path = dir.path().join("b.db");
        {
            let mut ledger = Ledger::open(&path, &rules()).unwrap();
            let mut t = feed(&mut ledger, &key, 0..14);
            let c = t.close_epoch(0).clone();
            ledger.write_closed(&c, rules().epoch_ms).unwrap();
        }
        let mut ledger = Ledger::open(&path, &rules()).unwrap();
        let mut t = Tally::new(rules());
        let rebuilt = ledger.rebuild(&mut t).unwrap();
        assert_eq!(rebuilt.closed_epochs, 1);
        assert_eq!(rebuilt.reports, 4, "epoch 1's reports 10..14 are replayed");
        // A replay of an old report after the restart still credits nothing.
        assert_eq!(
            t.ingest(&ready(&key, 13, 13_100, vec![]), 13_200),
            crate::tally::Verdict::Replayed
        );
        drop(t);
        let mut t = feed(&mut ledger, &key, 14..20);
        assert_eq!(t.close_epoch(0), &e0);
        assert_eq!(t.close_epoch(1), &e1);
        assert_eq!(ledger.epoch(0).unwrap().unwrap().root, e0.root);
    }

    #[test]
    fn checkers_results_come_back_after_a_restart_and_decide_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let checker = NodeKey::from_seed(&[9; 32]);
        let rules = TallyConfig {
            checker_keys: vec![checker.node_id()],
            ..rules()
        };
        let key = NodeKey::from_seed(&[10; 32]);
        let path = dir.path().join("c.db");
        let failed = pixelgrid_proto::check::sign(
            pixelgrid_proto::indexer::v1::CheckResult {
                node_id: Some(pixelgrid_proto::types::v1::NodeId { hex: key.node_id() }),
                session_id: "s".into(),
                sessions: 1,
                at_unix_ms: 3_000,
                ..Default::default()
            },
            &checker,
        );
        let before = {
            let mut ledger = Ledger::open(&path, &rules).unwrap();
            ledger.add_node(&key.node_id(), "127.0.0.1:9").unwrap();
            let mut t = Tally::new(rules.clone());
            ledger.rebuild(&mut t).unwrap();
            let r = ready(&key, 1, 1_100, vec![]);
            assert_eq!(t.ingest(&r, 1_100), crate::tally::Verdict::Accepted);
            ledger.append_reports(&[(&r, 0, 1_100)], &[]).unwrap();
            t.record_probe(&key.node_id(), 1_200, true);
            ledger
                .append_probe(&key.node_id(), 1_200, 0, true, "")
                .unwrap();
            assert_eq!(
                t.ingest_check(&failed, 3_100),
                crate::tally::Verdict::Accepted
            );
            ledger.append_check(&failed, 0, 3_100).unwrap();
            t.close_epoch(0).clone()
        };
        assert!(before.payouts[0].checks_failed && before.payouts[0].amount == 0);
        let ledger = Ledger::open(&path, &rules).unwrap();
        let mut t = Tally::new(rules);
        assert_eq!(ledger.rebuild(&mut t).unwrap().checks, 1);
        assert_eq!(
            t.ingest_check(&failed, 3_200),
            crate::tally::Verdict::Replayed,
            "a result is counted once, across restarts"
        );
        assert_eq!(t.close_epoch(0), &before);
    }

    #[test]
    fn stakes_and_slashes_come_back_after_a_restart() {
        use prost::Message;
        let dir = tempfile::tempdir().unwrap();
        let rules = TallyConfig {
            sla_floor_ppm: 990_000,
            ..rules()
        };
        let mut ledger = Ledger::open(&dir.path().join("l.db"), &rules).unwrap();
        let key = NodeKey::from_seed(&[8; 32]);
        let mut t = Tally::new(rules.clone());
        t.add_node(&key.node_id());
        ledger.add_node(&key.node_id(), "127.0.0.1:9").unwrap();
        let change = pixelgrid_proto::indexer::v1::StakeChange {
            node_id: Some(pixelgrid_proto::types::v1::NodeId { hex: key.node_id() }),
            sequence: 1,
            sent_unix_ms: 100,
            deposit: 900_000,
            withdraw: 0,
        };
        let signed = pixelgrid_proto::indexer::v1::SignedStakeChange {
            signature: Some(key.sign(&change.encode_to_vec())),
            change: Some(change),
        };
        assert_eq!(
            t.ingest_stake(&signed, 100),
            crate::tally::Verdict::Accepted
        );
        ledger.append_stake_events(&t.take_stake_events()).unwrap();
        // Probed and silent for the whole epoch: slashed at its close.
        t.record_probe(&key.node_id(), 5_000, false);
        ledger
            .append_probe(&key.node_id(), 5_000, 0, false, "")
            .unwrap();
        let closed = t.close_epoch(0).clone();
        ledger.write_closed(&closed, rules.epoch_ms).unwrap();
        let slashed = closed
            .payouts
            .iter()
            .find(|p| p.node_id == key.node_id())
            .unwrap()
            .slashed;
        assert_eq!(slashed, 90_000);
        let mut again = Tally::new(rules.clone());
        ledger.rebuild(&mut again).unwrap();
        assert_eq!(again.stake_of(&key.node_id(), 20_000), (810_000, 0));
        assert_eq!(
            again.ingest_stake(&signed, 200),
            crate::tally::Verdict::Replayed,
            "a stake change is taken once, across restarts"
        );
    }

    /// The `signed_report` fuzz target's property, on a few thousand mutations of a real report
    /// (a deterministic generator): whatever the numbers, correctly signed, nothing panics, the
    /// ledger takes every accepted report, and nothing is accepted twice.
    #[test]
    fn mutated_reports_signed_by_a_known_node_never_crash_the_tally_or_the_ledger() {
        use pixelgrid_proto::indexer::v1::{DeliveryReceipt, NodeReport, SessionDelivery};
        let key = NodeKey::from_seed(&[7; 32]);
        let rules = TallyConfig {
            orchestrator_keys: vec![
                pixelgrid_proto::token::TokenSigner::from_seed(&[1; 32]).public_key_hex(),
            ],
            ..TallyConfig::default()
        };
        let mut ledger = Ledger::open(Path::new(":memory:"), &rules).unwrap();
        let mut t = Tally::new(rules.clone());
        t.add_node(&key.node_id());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let base = NodeReport {
            node_id: Some(pixelgrid_proto::types::v1::NodeId { hex: key.node_id() }),
            sequence: 1,
            sent_unix_ms: 1_000,
            state: 1,
            sessions: vec![SessionDelivery {
                session_id: "s".into(),
                delivered_ms: 60_000,
                session_token: "v4.public.x".into(),
                receipt: Some(DeliveryReceipt {
                    played_ms: 1,
                    signature: vec![0; 64],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            telemetry_digest: vec![],
        };
        let mut accepted = std::collections::HashSet::new();
        for _ in 0..3_000 {
            let mut r = base.clone();
            let pick = |v: u64| match v % 6 {
                0 => u64::MAX,
                1 => 1 << 63,
                2 => (1 << 63) - 1,
                3 => 0,
                4 => v >> 1,
                _ => v % 100_000,
            };
            r.sequence = pick(next());
            r.sent_unix_ms = pick(next());
            let s = &mut r.sessions[0];
            s.delivered_ms = pick(next());
            if let Some(rc) = s.receipt.as_mut() {
                rc.played_ms = pick(next());
                rc.sequence = pick(next());
            }
            if next() % 4 == 0 {
                let copy = r.sessions[0].clone();
                r.sessions.push(copy);
            }
            let signed = crate::report::sign(r, &key);
            let now = signed.report.as_ref().unwrap().sent_unix_ms;
            for _ in 0..2 {
                if t.ingest(&signed, now) == crate::tally::Verdict::Accepted {
                    let seq = signed.report.as_ref().unwrap().sequence;
                    assert!(accepted.insert(seq), "sequence {seq} accepted twice");
                    ledger
                        .append_reports(&[(&signed, t.epoch_of(now), now)], &t.take_attested())
                        .expect("the ledger holds every accepted report");
                }
            }
        }
        assert!(!accepted.is_empty(), "some mutations are ordinary reports");
    }

    #[test]
    fn closed_epochs_never_change_and_proofs_read_back_verify() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(&dir.path().join("l.db"), &rules()).unwrap();
        let keys: Vec<NodeKey> = (0..5).map(|i| NodeKey::from_seed(&[i; 32])).collect();
        let mut t = Tally::new(rules());
        for k in &keys {
            t.add_node(&k.node_id());
            t.ingest(&ready(k, 1, 500, vec![]), 500);
            t.record_probe(&k.node_id(), 600, true);
        }
        let closed = t.close_epoch(0).clone();
        ledger.write_closed(&closed, rules().epoch_ms).unwrap();
        for stored in ledger.payouts(0).unwrap() {
            let id = hash(&pixelgrid_proto::token::unhex(&stored.payout.node_id).unwrap());
            assert!(crate::merkle::verify(
                &closed.root,
                &id,
                stored.payout.amount,
                &stored.proof
            ));
            assert!(!crate::merkle::verify(
                &closed.root,
                &id,
                stored.payout.amount + 1,
                &stored.proof
            ));
        }
        let err = ledger
            .db
            .execute("UPDATE payouts SET amount = amount + 1", [])
            .unwrap_err();
        assert!(err.to_string().contains("closed epochs never change"));
        let err = ledger
            .db
            .execute("UPDATE epoch_tree SET hashes = x'00'", [])
            .unwrap_err();
        assert!(err.to_string().contains("closed epochs never change"));
        assert!(ledger.write_closed(&closed, rules().epoch_ms).is_err());
    }

    #[test]
    fn proofs_read_from_a_stored_tree_of_several_chunks_verify() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(&dir.path().join("l.db"), &rules()).unwrap();
        let mut t = Tally::new(rules());
        // 2,500 nodes: three chunks of leaves, odd levels on the way up.
        for n in 0..2_500u64 {
            let id = format!("{:064x}", n + 1);
            t.add_node(&id);
            t.record_probe(&id, 600 + n % 7, true);
        }
        let closed = t.close_epoch(0).clone();
        ledger.write_closed(&closed, rules().epoch_ms).unwrap();
        let stored = ledger.payouts(0).unwrap();
        assert_eq!(stored.len(), 2_500);
        for s in stored.iter().step_by(97).chain(stored.last()) {
            let id = hash(&pixelgrid_proto::token::unhex(&s.payout.node_id).unwrap());
            assert!(crate::merkle::verify(
                &closed.root,
                &id,
                s.payout.amount,
                &s.proof
            ));
        }
        let one = ledger
            .payout(0, &format!("{:064x}", 1_777))
            .unwrap()
            .unwrap();
        assert_eq!(one.proof, closed.tree().proof(1_776).unwrap());
    }

    #[test]
    fn a_ledger_written_under_other_rules_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        Ledger::open(&path, &rules()).unwrap();
        let other = TallyConfig {
            readiness_reward: 7,
            ..rules()
        };
        let err = Ledger::open(&path, &other).unwrap_err();
        assert!(err.to_string().contains("rules"), "{err}");
    }
}
