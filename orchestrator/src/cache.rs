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
    nodes: HashMap<String, (NodeRecord, i64)>,
    slots: HashMap<String, BTreeSet<u32>>,
}

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
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok((nodes_rx, slots_rx))
    }

    fn apply(&self, event: WatchEvent) {
        let mut s = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
        match event {
            WatchEvent::Put(kv) if kv.key.starts_with(&node_prefix()) => {
                if let Ok(r) = serde_json::from_slice::<NodeRecord>(&kv.value) {
                    s.nodes.insert(r.view.id.clone(), (r, kv.mod_revision));
                }
            }
            WatchEvent::Delete { key } if key.starts_with(&node_prefix()) => {
                s.nodes.remove(&key[node_prefix().len()..]);
            }
            WatchEvent::Put(kv) => {
                if let Some((node, slot)) = parse_slot(&kv.key) {
                    s.slots.entry(node).or_default().insert(slot);
                }
            }
            WatchEvent::Delete { key } => {
                if let Some((node, slot)) = parse_slot(&key) {
                    s.slots.entry(node).or_default().remove(&slot);
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

    /// Records a slot this replica just took, before its watch event arrives.
    pub fn note_taken(&self, node: &str, slot: u32) {
        self.snapshot
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .slots
            .entry(node.to_owned())
            .or_default()
            .insert(slot);
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
