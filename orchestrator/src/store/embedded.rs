//! The in-process backend: a `BTreeMap` with etcd's revision, lease and transaction semantics.
//! Leases expire on the monotonic clock, checked whenever the store is touched.

use super::{Compare, KeyValue, LeaseId, Op, Store, TxnOutcome, WatchEvent, WatchReceiver};
use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct State {
    revision: i64,
    next_lease: LeaseId,
    keys: BTreeMap<String, KeyValue>,
    leases: HashMap<LeaseId, Lease>,
    /// No lease expires before this (a lower bound: keep-alives only move deadlines later), so
    /// most operations skip the scan of every lease.
    earliest_deadline: Option<Instant>,
    watchers: Vec<(String, tokio::sync::mpsc::UnboundedSender<WatchEvent>)>,
}

impl State {
    fn expire(&mut self, now: Instant) {
        if self.earliest_deadline.is_some_and(|e| now < e) {
            return;
        }
        self.earliest_deadline = self
            .leases
            .values()
            .map(|l| l.deadline)
            .filter(|d| *d > now)
            .min();
        let dead: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.drop_lease(id);
        }
    }

    fn drop_lease(&mut self, id: LeaseId) {
        if let Some(lease) = self.leases.remove(&id) {
            if !lease.keys.is_empty() {
                self.revision += 1;
            }
            for k in lease.keys {
                self.keys.remove(&k);
                self.notify(WatchEvent::Delete { key: k });
            }
        }
    }

    fn notify(&mut self, event: WatchEvent) {
        let key = match &event {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key } => key,
        };
        let key = key.clone();
        // Closed watchers are dropped as they are found.
        self.watchers.retain(|(prefix, tx)| {
            !key.starts_with(prefix.as_str()) || tx.send(event.clone()).is_ok()
        });
    }

    fn apply(&mut self, op: Op) -> Result<()> {
        match op {
            Op::Put { key, value, lease } => {
                if lease != 0 && !self.leases.contains_key(&lease) {
                    return Err(Error::Store(format!("lease {lease} not found (expired?)")));
                }
                if let Some(old) = self.keys.get(&key)
                    && old.lease != 0
                    && let Some(l) = self.leases.get_mut(&old.lease)
                {
                    l.keys.remove(&key);
                }
                if lease != 0 {
                    self.leases
                        .get_mut(&lease)
                        .expect("checked")
                        .keys
                        .insert(key.clone());
                }
                let kv = KeyValue {
                    key: key.clone(),
                    value,
                    mod_revision: self.revision,
                    lease,
                };
                self.keys.insert(key, kv.clone());
                self.notify(WatchEvent::Put(kv));
            }
            Op::Delete { key } => {
                if let Some(old) = self.keys.remove(&key) {
                    if let Some(l) = self.leases.get_mut(&old.lease) {
                        l.keys.remove(&key);
                    }
                    self.notify(WatchEvent::Delete { key });
                }
            }
        }
        Ok(())
    }
}

/// The embedded store; see the module docs.
#[derive(Debug, Default)]
pub struct EmbeddedStore {
    state: Mutex<State>,
}

impl EmbeddedStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.expire(Instant::now());
        f(&mut s)
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.with(|s| Ok(s.keys.get(key).cloned()))
    }

    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        self.with(|s| {
            Ok(s.keys
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v.clone())
                .collect())
        })
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: LeaseId) -> Result<i64> {
        self.with(|s| {
            if lease != 0 && !s.leases.contains_key(&lease) {
                return Err(Error::Store(format!("lease {lease} not found (expired?)")));
            }
            s.revision += 1;
            s.apply(Op::Put {
                key: key.to_owned(),
                value,
                lease,
            })?;
            Ok(s.revision)
        })
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.with(|s| {
            if !s.keys.contains_key(key) {
                return Ok(false);
            }
            s.revision += 1;
            s.apply(Op::Delete {
                key: key.to_owned(),
            })?;
            Ok(true)
        })
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnOutcome> {
        self.with(|s| {
            let holds = compares.iter().all(|c| match c {
                Compare::ModRevision(key, rev) => {
                    s.keys.get(key).map_or(0, |kv| kv.mod_revision) == *rev
                }
            });
            if !holds {
                return Ok(TxnOutcome {
                    succeeded: false,
                    revision: s.revision,
                });
            }
            for op in &ops {
                if let Op::Put { lease, .. } = op
                    && *lease != 0
                    && !s.leases.contains_key(lease)
                {
                    return Err(Error::Store(format!("lease {lease} not found (expired?)")));
                }
            }
            if !ops.is_empty() {
                s.revision += 1;
            }
            for op in ops {
                s.apply(op)?;
            }
            Ok(TxnOutcome {
                succeeded: true,
                revision: s.revision,
            })
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        self.with(|s| {
            s.next_lease += 1;
            let id = s.next_lease;
            let deadline = Instant::now() + ttl;
            s.leases.insert(
                id,
                Lease {
                    ttl,
                    deadline,
                    keys: BTreeSet::new(),
                },
            );
            s.earliest_deadline = Some(s.earliest_deadline.map_or(deadline, |e| e.min(deadline)));
            Ok(id)
        })
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<bool> {
        self.with(|s| match s.leases.get_mut(&lease) {
            Some(l) => {
                l.deadline = Instant::now() + l.ttl;
                Ok(true)
            }
            None => Ok(false),
        })
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        self.with(|s| {
            s.drop_lease(lease);
            Ok(())
        })
    }

    async fn range_and_watch(&self, prefix: &str) -> Result<(Vec<KeyValue>, WatchReceiver)> {
        // Snapshot and subscription under one lock: nothing can slip between them.
        self.with(|s| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            s.watchers.push((prefix.to_owned(), tx));
            let now = s
                .keys
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v.clone())
                .collect();
            Ok((now, rx))
        })
    }
}
