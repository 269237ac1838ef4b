//! The in-process backend: a `BTreeMap` with etcd's revision, lease and transaction semantics.
//! Leases expire on the monotonic clock, checked whenever the store is touched.
//!
//! [`EmbeddedStore::open`] makes it durable: every change is written through to a SQLite file
//! (WAL) before the call returns, and the next start reads it back — keys, revision, leases.
//! Like etcd after a restart, every lease then gets its whole TTL again, so nodes have time to
//! heartbeat before anything of theirs expires, and the sessions they run are still there.

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
    /// Keys and leases changed since the last write to disk (durable stores only).
    dirty_keys: BTreeSet<String>,
    dirty_leases: BTreeSet<LeaseId>,
    meta_dirty: bool,
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
            self.dirty_leases.insert(id);
            self.meta_dirty = true;
            for k in lease.keys {
                self.keys.remove(&k);
                self.dirty_keys.insert(k.clone());
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
                self.dirty_keys.insert(key.clone());
                self.meta_dirty = true;
                self.keys.insert(key, kv.clone());
                self.notify(WatchEvent::Put(kv));
            }
            Op::Delete { key } => {
                if let Some(old) = self.keys.remove(&key) {
                    if let Some(l) = self.leases.get_mut(&old.lease) {
                        l.keys.remove(&key);
                    }
                    self.dirty_keys.insert(key.clone());
                    self.meta_dirty = true;
                    self.notify(WatchEvent::Delete { key });
                }
            }
        }
        Ok(())
    }
}

/// The embedded store; see the module docs.
#[derive(Default)]
pub struct EmbeddedStore {
    state: Mutex<State>,
    /// Where changes are written through to, for a store that survives restarts.
    disk: Option<Mutex<rusqlite::Connection>>,
    path: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn disk_error(path: &std::path::Path, e: rusqlite::Error) -> Error {
    Error::Store(format!(
        "the embedded store's file {} cannot be used: {e} (is the disk full or the file another \
         process's?)",
        path.display()
    ))
}

impl EmbeddedStore {
    /// An empty store that lives in memory only.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store kept in the SQLite file at `path` (created when missing): what a previous run
    /// left there is read back, every lease with its whole TTL again.
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let fail = |e| disk_error(path, e);
        let db = rusqlite::Connection::open(path).map_err(fail)?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL,
                 mod_revision INTEGER NOT NULL, lease INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
        )
        .map_err(fail)?;
        let meta = |name: &str| -> Result<i64> {
            db.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(0),
                e => Err(e),
            })
            .map_err(fail)
        };
        let mut state = State {
            revision: meta("revision")?,
            next_lease: meta("next_lease")?,
            ..State::default()
        };
        let now = Instant::now();
        {
            let mut q = db.prepare("SELECT id, ttl_ms FROM leases").map_err(fail)?;
            let rows = q
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                .map_err(fail)?;
            for row in rows {
                let (id, ttl_ms) = row.map_err(fail)?;
                let ttl = Duration::from_millis(ttl_ms.max(0) as u64);
                state.leases.insert(
                    id,
                    Lease {
                        ttl,
                        deadline: now + ttl,
                        keys: BTreeSet::new(),
                    },
                );
            }
            let mut q = db
                .prepare("SELECT key, value, mod_revision, lease FROM kv")
                .map_err(fail)?;
            let rows = q
                .query_map([], |r| {
                    Ok(KeyValue {
                        key: r.get(0)?,
                        value: r.get(1)?,
                        mod_revision: r.get(2)?,
                        lease: r.get(3)?,
                    })
                })
                .map_err(fail)?;
            for row in rows {
                let kv = row.map_err(fail)?;
                if kv.lease != 0 {
                    match state.leases.get_mut(&kv.lease) {
                        Some(l) => {
                            l.keys.insert(kv.key.clone());
                        }
                        None => {
                            // Its lease is gone: the key went with it.
                            state.dirty_keys.insert(kv.key);
                            continue;
                        }
                    }
                }
                state.keys.insert(kv.key.clone(), kv);
            }
        }
        state.earliest_deadline = state.leases.values().map(|l| l.deadline).min();
        let store = Self {
            state: Mutex::new(state),
            disk: Some(Mutex::new(db)),
            path: Some(path.to_owned()),
        };
        store.with(|_| Ok(()))?;
        tracing::info!(path = %path.display(), "embedded store opened");
        Ok(store)
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.expire(Instant::now());
        let out = f(&mut s);
        self.write_through(&mut s)?;
        out
    }

    /// Writes what changed to the file, in one transaction, before the caller hears back.
    fn write_through(&self, s: &mut State) -> Result<()> {
        let (Some(disk), Some(path)) = (&self.disk, &self.path) else {
            s.dirty_keys.clear();
            s.dirty_leases.clear();
            return Ok(());
        };
        if s.dirty_keys.is_empty() && s.dirty_leases.is_empty() && !s.meta_dirty {
            return Ok(());
        }
        let fail = |e| disk_error(path, e);
        let mut db = disk.lock().unwrap_or_else(|p| p.into_inner());
        let tx = db.transaction().map_err(fail)?;
        for key in &s.dirty_keys {
            match s.keys.get(key) {
                Some(kv) => tx.execute(
                    "INSERT OR REPLACE INTO kv (key, value, mod_revision, lease) VALUES (?1, ?2, ?3, ?4)",
                    rusqlite::params![kv.key, kv.value, kv.mod_revision, kv.lease],
                ),
                None => tx.execute("DELETE FROM kv WHERE key = ?1", [key]),
            }
            .map_err(fail)?;
        }
        for id in &s.dirty_leases {
            match s.leases.get(id) {
                Some(l) => tx.execute(
                    "INSERT OR REPLACE INTO leases (id, ttl_ms) VALUES (?1, ?2)",
                    rusqlite::params![id, l.ttl.as_millis() as i64],
                ),
                None => tx.execute("DELETE FROM leases WHERE id = ?1", [id]),
            }
            .map_err(fail)?;
        }
        for (name, value) in [("revision", s.revision), ("next_lease", s.next_lease)] {
            tx.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)",
                rusqlite::params![name, value],
            )
            .map_err(fail)?;
        }
        tx.commit().map_err(fail)?;
        s.dirty_keys.clear();
        s.dirty_leases.clear();
        s.meta_dirty = false;
        Ok(())
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
            s.dirty_leases.insert(id);
            s.meta_dirty = true;
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
