//! A watch-maintained copy of the registry (node records and slot keys), so a placement reads
//! memory instead of etcd and costs one transaction. The copy may lag the store by a moment; that
//! is safe because the reservation transaction still compares the slot key and the node's
//! revision, and a stale read only costs a retry.

use crate::Result;
use crate::placement::NodeView;
use crate::slots::{NodeRecord, ROOT};
use crate::store::{Store, WatchEvent};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Debug, Default)]
struct Snapshot {
    /// Records with `view.used` kept equal to their number of slot keys.
    nodes: HashMap<String, (NodeRecord, i64)>,
    slots: HashMap<String, BTreeSet<u32>>,
}

impl Snapshot {
    fn count_used(&mut self, node: &str) {
        let used = self.slots.get(node).map_or(0, |t| t.len() as u32);
        if let Some((rec, _)) = self.nodes.get_mut(node) {
            rec.view.used = used;
        }
    }
}

/// A launch candidate: node id, probe address, region, probe URL.
pub type Candidate = (String, String, String, String);

/// See the module docs.
#[derive(Debug, Default)]
pub struct RegistryCache {
    snapshot: RwLock<Snapshot>,
}

fn node_prefix() -> String {
    format!("{ROOT}/nodes/")
}

fn slots_prefix() -> String {
    format!("{ROOT}/slots/")
}

/// `…/slots/{node}/{i}` → (node, i).
fn parse_slot(key: &str) -> Option<(String, u32)> {
    let rest = key.strip_prefix(&slots_prefix())?;
    let (node, slot) = rest.rsplit_once('/')?;
    Some((node.to_owned(), slot.parse().ok()?))
}

impl RegistryCache {
    /// Loads the registry and keeps it current until the store goes away; re-syncs from scratch
    /// whenever a watch breaks.
    pub async fn start(store: Arc<dyn Store>) -> Result<Arc<Self>> {
        let cache = Arc::new(Self::default());
        let (mut nodes_rx, mut slots_rx) = cache.sync(store.as_ref()).await?;
        let weak = Arc::downgrade(&cache);
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    e = nodes_rx.recv() => e,
                    e = slots_rx.recv() => e,
                };
                let Some(cache) = weak.upgrade() else { return };
                match event {
                    Some(e) => cache.apply(e),
                    None => loop {
                        tracing::warn!("registry watch broke; syncing again");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if let Ok((n, s)) = cache.sync(store.as_ref()).await {
                            (nodes_rx, slots_rx) = (n, s);
                            break;
                        }
                    },
                }
            }
        });
        Ok(cache)
    }

    async fn sync(
        &self,
        store: &dyn Store,
    ) -> Result<(crate::store::WatchReceiver, crate::store::WatchReceiver)> {
        let (nodes, nodes_rx) = store.range_and_watch(&node_prefix()).await?;
        let (slots, slots_rx) = store.range_and_watch(&slots_prefix()).await?;
        let mut fresh = Snapshot::default();
        for kv in nodes {
            if let Ok(r) = serde_json::from_slice::<NodeRecord>(&kv.value) {
                fresh.nodes.insert(r.view.id.clone(), (r, kv.mod_revision));
            }
        }
        for kv in slots {
            if let Some((node, slot)) = parse_slot(&kv.key) {
                fresh.slots.entry(node).or_default().insert(slot);
            }
        }
        let ids: Vec<String> = fresh.nodes.keys().cloned().collect();
        for id in ids {
            fresh.count_used(&id);
        }
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok((nodes_rx, slots_rx))
    }

    fn apply(&self, event: WatchEvent) {
        let mut s = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
        match event {
            WatchEvent::Put(kv) if kv.key.starts_with(&node_prefix()) => {
                if let Ok(r) = serde_json::from_slice::<NodeRecord>(&kv.value) {
                    let id = r.view.id.clone();
                    s.nodes.insert(id.clone(), (r, kv.mod_revision));
                    s.count_used(&id);
                }
            }
            WatchEvent::Delete { key } if key.starts_with(&node_prefix()) => {
                s.nodes.remove(&key[node_prefix().len()..]);
            }
            WatchEvent::Put(kv) => {
                if let Some((node, slot)) = parse_slot(&kv.key) {
                    s.slots.entry(node.clone()).or_default().insert(slot);
                    s.count_used(&node);
                }
            }
            WatchEvent::Delete { key } => {
                if let Some((node, slot)) = parse_slot(&key) {
                    s.slots.entry(node.clone()).or_default().remove(&slot);
                    s.count_used(&node);
                }
            }
        }
    }

    /// Nodes (only `ids`, or all when `ids` is empty) with `used` from their slots, each with its
    /// record revision and taken slot indices.
    pub fn grid<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a String>,
    ) -> Vec<(NodeView, i64, Vec<u32>)> {
        let s = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
        let entry = |(rec, rev): &(NodeRecord, i64)| {
            let taken: Vec<u32> = s
                .slots
                .get(&rec.view.id)
                .map(|t| t.iter().copied().collect())
                .unwrap_or_default();
            let mut view = rec.view.clone();
            view.used = taken.len() as u32;
            (view, *rev, taken)
        };
        let mut ids = ids.into_iter().peekable();
        if ids.peek().is_none() {
            return s.nodes.values().map(entry).collect();
        }
        ids.filter_map(|id| s.nodes.get(id).map(entry)).collect()
    }

    /// One node's record as last seen, `used` counted from its slots.
    pub fn record(&self, id: &str) -> Option<NodeRecord> {
        let s = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
        let (rec, _) = s.nodes.get(id)?;
        let mut rec = rec.clone();
        rec.view.used = s.slots.get(id).map_or(0, |t| t.len() as u32);
        Some(rec)
    }

    /// Every node record, `used` counted from its slots, with its revision.
    pub fn records(&self) -> Vec<(NodeRecord, i64)> {
        let s = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
        s.nodes
            .values()
            .map(|(rec, rev)| {
                let mut rec = rec.clone();
                rec.view.used = s.slots.get(&rec.view.id).map_or(0, |t| t.len() as u32);
                (rec, *rev)
            })
            .collect()
    }

    /// Records a slot this replica just took, before its watch event arrives.
    pub fn note_taken(&self, node: &str, slot: u32) {
        let mut s = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
        s.slots.entry(node.to_owned()).or_default().insert(slot);
        s.count_used(node);
    }

    /// Launch candidates ranked by the placement policy, read in place (nothing of the
    /// registry is copied but the winners).
    pub fn candidates(
        &self,
        req: &crate::placement::Request,
        policy: &crate::placement::Policy,
    ) -> (crate::placement::Placement, Vec<Candidate>) {
        let s = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
        let picked =
            crate::placement::candidates(s.nodes.values().map(|(r, _)| &r.view), req, policy);
        let found = picked
            .ranked
            .iter()
            .filter_map(|id| s.nodes.get(id))
            .map(|(r, _)| {
                (
                    r.view.id.clone(),
                    r.probe_address.clone(),
                    r.view.region.clone(),
                    r.probe_url(),
                )
            })
            .collect();
        (picked, found)
    }

    /// Nodes known now.
    pub fn node_count(&self) -> usize {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .len()
    }
}
