//! The orchestrator's store: a key-value space with revisions, leases and transactions, in two
//! backends with the same semantics — [`EtcdStore`] (production, several replicas) and
//! [`EmbeddedStore`] (one process, the default when no etcd endpoint is given, like k3s's kine).
//! One conformance suite (`tests/store_conformance.rs`) runs against both.
//!
//! Semantics, as etcd defines them: every write bumps one store-wide revision; a key remembers
//! the revision it was created and last modified at (`mod_revision`, 0 = absent); a key written
//! under a lease disappears when the lease expires or is revoked; a transaction applies its
//! operations only when all its comparisons hold, atomically.

mod embedded;
mod etcd;
mod local_etcd;

pub use embedded::EmbeddedStore;
pub use etcd::EtcdStore;
pub use local_etcd::LocalEtcd;

use crate::Result;
use std::time::Duration;

/// A lease id (etcd's are positive i64).
pub type LeaseId = i64;

/// A stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Revision of the last write to it.
    pub mod_revision: i64,
    /// Lease it is attached to (0 = none).
    pub lease: LeaseId,
}

/// A condition a transaction checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's last-write revision equals this (0 = the key does not exist).
    ModRevision(String, i64),
}

/// A write a transaction makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set a key (under a lease, or none).
    Put {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Lease (0 = none).
        lease: LeaseId,
    },
    /// Remove a key.
    Delete {
        /// Key.
        key: String,
    },
}

/// A change a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was written.
    Put(KeyValue),
    /// A key was deleted (or its lease ended).
    Delete {
        /// The key.
        key: String,
    },
}

/// Changes under a prefix, in revision order. It closes when the watch breaks (the store went
/// away): the watcher should sync again.
pub type WatchReceiver = tokio::sync::mpsc::UnboundedReceiver<WatchEvent>;

/// What a transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnOutcome {
    /// True when every comparison held and the operations were applied.
    pub succeeded: bool,
    /// Store revision after the transaction.
    pub revision: i64,
}

/// The store; see the module docs.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// One key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Every key starting with `prefix`, in key order.
    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>>;
    /// Sets a key; returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, lease: LeaseId) -> Result<i64>;
    /// Removes a key; true when it existed.
    async fn delete(&self, key: &str) -> Result<bool>;
    /// Applies `ops` atomically when every comparison holds.
    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnOutcome>;
    /// A new lease that expires `ttl` after its last keep-alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;
    /// Renews a lease; false when it has already expired (its keys are gone).
    async fn keep_alive(&self, lease: LeaseId) -> Result<bool>;
    /// Ends a lease now, removing its keys.
    async fn revoke(&self, lease: LeaseId) -> Result<()>;
    /// The keys under `prefix` now, and every change to them after that snapshot, with no gap.
    async fn range_and_watch(&self, prefix: &str) -> Result<(Vec<KeyValue>, WatchReceiver)>;
}
