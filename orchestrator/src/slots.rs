//! Slot reservation: a node with capacity C has slot keys `…/slots/{node}/0` … `{C-1}`; a session
//! holds a slot by creating its key in a transaction that requires the key to be absent
//! (`mod_revision == 0`) and the node's record to be unchanged since it was read. So two
//! sessions can never hold one slot, on either store, however many orchestrator replicas race.

use crate::cache::RegistryCache;
use crate::placement::{self, NodeView, Placement, Policy, Request};
use crate::store::{Compare, Op, Store};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Key prefix of everything the orchestrator stores.
pub const ROOT: &str = "/pixelgrid/v1";

/// Key of a node's record.
pub fn node_key(node: &str) -> String {
    format!("{ROOT}/nodes/{node}")
}

/// Prefix of a node's slot keys.
pub fn slot_prefix(node: &str) -> String {
    format!("{ROOT}/slots/{node}/")
}

/// Key of one slot.
pub fn slot_key(node: &str, slot: u32) -> String {
    format!("{}{slot}", slot_prefix(node))
}

/// A node's registry record, as stored (JSON, versioned) under the node's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Record format version.
    pub v: u32,
    /// What placement needs to know (`used` is recomputed from slot keys).
    pub view: NodeView,
    /// Where players POST offers: `{whep_base_url}/{session}`.
    #[serde(default)]
    pub whep_base_url: String,
    /// host:port of the node's RTT probe (`GET /probe`).
    #[serde(default)]
    pub probe_address: String,
    /// The lease the record lives under (heartbeats renew it).
    #[serde(default)]
    pub lease: i64,
}

impl NodeRecord {
    /// Where players measure their round trip to the node: its probe address, spoken to as its
    /// WHEP base URL is (`https://` for a node serving TLS).
    pub fn probe_url(&self) -> String {
        let scheme = if self.whep_base_url.starts_with("https://") {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}/probe", self.probe_address)
    }
}

/// A granted slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotReservation {
    /// Node id.
    pub node: String,
    /// Slot index on it.
    pub slot: u32,
    /// Session holding it.
    pub session: String,
    /// The tenant seat it also holds, when its studio has a concurrent-session limit.
    pub seat: Option<u32>,
    /// The node's price per minute as placement checked it against the player's limit (the
    /// transaction holds only while the node's record is the one read).
    pub price: u64,
}

/// How many reservation attempts one launch makes before reporting contention as no capacity.
pub const MAX_ATTEMPTS: usize = 64;

/// Registers (or updates) a bare node under `lease` (tests and tools; the control plane writes
/// full records).
pub async fn put_node(store: &dyn Store, view: &NodeView, lease: i64) -> Result<()> {
    let record = NodeRecord {
        v: 1,
        view: view.clone(),
        whep_base_url: String::new(),
        probe_address: String::new(),
        lease,
    };
    store
        .put(
            &node_key(&view.id),
            serde_json::to_vec(&record).expect("serialisable"),
            lease,
        )
        .await?;
    Ok(())
}

/// Every node's full record and revision, with `used` counted from its slot keys.
pub async fn node_records(store: &dyn Store) -> Result<Vec<(NodeRecord, i64)>> {
    let records = store.range(&format!("{ROOT}/nodes/")).await?;
    let slots_root = format!("{ROOT}/slots/");
    // One pass over the slot keys: `…/slots/{node}/{i}` counted per node.
    let mut used: std::collections::HashMap<String, u32> = Default::default();
    for kv in store.range(&slots_root).await? {
        if let Some((node, _)) = kv.key[slots_root.len()..].rsplit_once('/') {
            *used.entry(node.to_owned()).or_default() += 1;
        }
    }
    let mut out = Vec::with_capacity(records.len());
    for kv in records {
        let Ok(mut rec) = serde_json::from_slice::<NodeRecord>(&kv.value) else {
            tracing::warn!(key = %kv.key, "unreadable node record skipped");
            continue;
        };
        rec.view.used = used.get(&rec.view.id).copied().unwrap_or(0);
        out.push((rec, kv.mod_revision));
    }
    Ok(out)
}

/// The nodes as placement sees them, with each record's revision.
pub async fn nodes(store: &dyn Store) -> Result<Vec<(NodeView, i64)>> {
    Ok(node_records(store)
        .await?
        .into_iter()
        .map(|(r, rev)| (r.view, rev))
        .collect())
}

/// Places `session` for `req` and reserves a slot atomically, retrying on contention.
pub async fn reserve(
    store: &dyn Store,
    session: &str,
    req: &Request,
    policy: &Policy,
) -> Result<SlotReservation> {
    reserve_with(
        store,
        None,
        session,
        req,
        policy,
        Conditions::default(),
        |_| Vec::new(),
    )
    .await
    .map(|(r, _)| r)
}

/// A tenant's concurrent-session limit as numbered seats under `prefix` (`{prefix}{n}` for
/// `n < limit`): a launch takes a free seat in the same transaction as its slot, so no number
/// of concurrent launches can take more seats than there are.
#[derive(Debug, Clone)]
pub struct SeatPool {
    /// Key prefix of the seats, ending in '/'.
    pub prefix: String,
    /// How many seats there are.
    pub limit: u32,
    /// The refusal when every seat is taken.
    pub full: String,
}

/// What else a reservation must hold besides its slot.
#[derive(Debug, Clone, Copy, Default)]
pub struct Conditions<'a> {
    /// A tenant's seat to take, when it has a concurrent-session limit.
    pub seats: Option<&'a SeatPool>,
    /// A key that must be unchanged (the launch being completed).
    pub guard: Option<&'a Compare>,
}

/// Like [`reserve`], also taking a seat of `seats`, holding only while `guard` does, and
/// applying `extra(&reservation)` in the same transaction (the session record, say), and returning the placement with its reasons
/// for the nodes left out.
pub async fn reserve_with(
    store: &dyn Store,
    cache: Option<&RegistryCache>,
    session: &str,
    req: &Request,
    policy: &Policy,
    conditions: Conditions<'_>,
    extra: impl Fn(&SlotReservation) -> Vec<Op>,
) -> Result<(SlotReservation, Placement)> {
    let Conditions { seats, guard } = conditions;
    for attempt in 0..MAX_ATTEMPTS {
        let seat = match seats {
            Some(pool) => {
                let taken: Vec<u32> = store
                    .range(&pool.prefix)
                    .await?
                    .iter()
                    .filter_map(|kv| kv.key.rsplit('/').next().and_then(|i| i.parse().ok()))
                    .collect();
                let free = (0..pool.limit).find(|i| !taken.contains(i));
                Some(free.ok_or_else(|| Error::LimitReached(pool.full.clone()))?)
            }
            None => None,
        };
        // Unmeasured nodes cannot win a placement, so only measured ones are read — from the
        // cache while it keeps proving current, from the store after it did not.
        let grid = if let Some(cache) = cache.filter(|_| attempt < 2) {
            cache.grid(req.rtt_ms.keys())
        } else if req.rtt_ms.is_empty() {
            let mut grid = Vec::new();
            for (view, rev) in nodes(store).await? {
                let taken = slot_indices(store, &view.id).await?;
                grid.push((view, rev, taken));
            }
            grid
        } else {
            nodes_named(store, req.rtt_ms.keys()).await?
        };
        let views: Vec<NodeView> = grid.iter().map(|(v, _, _)| v.clone()).collect();
        let placement = placement::place(&views, req, policy);
        let Some(best) = placement.ranked.first() else {
            return Err(Error::NoCapacity(placement.summary()));
        };
        let (view, revision, taken) = grid
            .iter()
            .find(|(v, _, _)| &v.id == best)
            .expect("ranked nodes come from the grid");
        let Some(slot) = (0..view.capacity).find(|i| !taken.contains(i)) else {
            continue;
        };
        let key = slot_key(&view.id, slot);
        let reservation = SlotReservation {
            node: view.id.clone(),
            slot,
            session: session.to_owned(),
            seat,
            price: view.price,
        };
        let mut ops = vec![Op::Put {
            key: key.clone(),
            value: session.as_bytes().to_vec(),
            lease: 0,
        }];
        let mut compares = vec![
            Compare::ModRevision(key, 0),
            Compare::ModRevision(node_key(&view.id), *revision),
        ];
        if let (Some(pool), Some(seat)) = (seats, seat) {
            let seat_key = format!("{}{seat}", pool.prefix);
            compares.push(Compare::ModRevision(seat_key.clone(), 0));
            ops.push(Op::Put {
                key: seat_key,
                value: session.as_bytes().to_vec(),
                lease: 0,
            });
        }
        ops.extend(extra(&reservation));
        compares.extend(guard.cloned());
        let outcome = store.txn(compares, ops).await?;
        if outcome.succeeded {
            if let Some(c) = cache {
                c.note_taken(&reservation.node, reservation.slot);
            }
            return Ok((reservation, placement));
        }
        // The launch this placement completes was used by a concurrent call: stop, not retry.
        if let Some(Compare::ModRevision(key, revision)) = guard {
            let now = store.get(key).await?.map_or(0, |kv| kv.mod_revision);
            if now != *revision {
                return Err(Error::NotFound(format!(
                    "{key} (used by a concurrent call; launch again)"
                )));
            }
        }
        // Someone took that slot (or the node changed) between our read and our write: retry.
        tracing::debug!(node = %view.id, slot, "slot contention; retrying");
    }
    Err(Error::NoCapacity(format!(
        "slots kept being taken by concurrent launches ({MAX_ATTEMPTS} attempts)"
    )))
}

async fn slot_indices(store: &dyn Store, node: &str) -> Result<Vec<u32>> {
    Ok(store
        .range(&slot_prefix(node))
        .await?
        .iter()
        .filter_map(|kv| kv.key.rsplit('/').next().and_then(|i| i.parse().ok()))
        .collect())
}

/// Frees a reserved slot.
pub async fn release(store: &dyn Store, r: &SlotReservation) -> Result<bool> {
    store.delete(&slot_key(&r.node, r.slot)).await
}

/// Only the named nodes (those a player measured), read concurrently, with `used` counted from
/// their slot keys and the taken slot indices: a placement reads K records, not the registry.
pub async fn nodes_named<'a>(
    store: &dyn Store,
    ids: impl IntoIterator<Item = &'a String>,
) -> Result<Vec<(NodeView, i64, Vec<u32>)>> {
    let reads = ids.into_iter().map(|id| async move {
        let (record, taken) =
            futures::future::join(store.get(&node_key(id)), store.range(&slot_prefix(id))).await;
        let (Some(kv), taken) = (record?, taken?) else {
            return Ok(None);
        };
        let Ok(rec) = serde_json::from_slice::<NodeRecord>(&kv.value) else {
            return Ok(None);
        };
        let taken: Vec<u32> = taken
            .iter()
            .filter_map(|kv| kv.key.rsplit('/').next().and_then(|i| i.parse().ok()))
            .collect();
        let mut view = rec.view;
        view.used = taken.len() as u32;
        Ok::<_, Error>(Some((view, kv.mod_revision, taken)))
    });
    let mut out = Vec::new();
    for r in futures::future::join_all(reads).await {
        out.extend(r?);
    }
    Ok(out)
}
