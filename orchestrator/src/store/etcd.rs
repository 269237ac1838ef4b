//! The etcd backend (`etcd-client`), for several orchestrator replicas sharing one grid state.
//! Operations are retried with backoff on transport errors: after an etcd member dies the client
//! may keep using it until its connection fails.

use super::{Compare, KeyValue, LeaseId, Op, Store, TxnOutcome, WatchEvent, WatchReceiver};
use crate::{Error, Result};
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use std::time::Duration;

/// How many times an operation is tried before its error is returned.
const ATTEMPTS: u32 = 5;

/// Keys per page of a range read. One answer is limited to 4 MiB by the gRPC client: 100,000
/// node records in one read were 38 MB, so big prefixes are read in pages of this many (all at
/// the first page's revision, so the pages form one snapshot).
const PAGE: i64 = 1_000;

/// The first key after every key starting with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the keyspace.
    vec![0]
}

/// The etcd store; see the module docs.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    endpoints: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl EtcdStore {
    /// Connects to the given endpoints (`http://127.0.0.1:2379`, ...).
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        let joined = endpoints.join(",");
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5));
        let client = Client::connect(endpoints, Some(opts)).await.map_err(|e| {
            Error::Unavailable(format!(
                "etcd at {joined} refused the connection ({e}); is it running?"
            ))
        })?;
        Ok(Self {
            client,
            endpoints: joined,
        })
    }

    /// The size of the member's database file, bytes (what etcd's space quota counts), and its
    /// current revision.
    pub async fn db_size(&self) -> Result<(i64, i64)> {
        let status = self
            .client
            .maintenance_client()
            .status()
            .await
            .map_err(|e| self.unavailable(e))?;
        let revision = status.header().map_or(0, |h| h.revision());
        Ok((status.db_size(), revision))
    }

    fn unavailable(&self, e: etcd_client::Error) -> Error {
        Error::Unavailable(format!("etcd at {}: {e}", self.endpoints))
    }

    /// Every key under `prefix`, read in pages of [`PAGE`] at one revision, and that revision.
    async fn range_paged(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        let end = prefix_end(prefix);
        // The empty prefix is every key: etcd takes "\0" as the first key there is.
        let mut from = if prefix.is_empty() {
            vec![0]
        } else {
            prefix.as_bytes().to_vec()
        };
        let mut revision = 0;
        let mut out = Vec::new();
        loop {
            let r = self
                .retry(|mut c| {
                    let (from, end) = (from.clone(), end.clone());
                    async move {
                        let mut options = GetOptions::new().with_range(end).with_limit(PAGE);
                        if revision > 0 {
                            options = options.with_revision(revision);
                        }
                        c.get(from, Some(options)).await
                    }
                })
                .await?;
            if revision == 0 {
                revision = r.header().map_or(0, |h| h.revision());
            }
            out.extend(r.kvs().iter().map(kv));
            match r.kvs().last() {
                Some(last) if r.more() => {
                    // The next page starts just after the last key read.
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok((out, revision)),
            }
        }
    }

    /// Runs `f` with retries and backoff on transport errors.
    async fn retry<T, F, Fut>(&self, mut f: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut delay = Duration::from_millis(20);
        let mut last = None;
        for _ in 0..ATTEMPTS {
            match f(self.client.clone()).await {
                Ok(v) => return Ok(v),
                Err(
                    e @ (etcd_client::Error::GRpcStatus(_)
                    | etcd_client::Error::TransportError(_)
                    | etcd_client::Error::IoError(_)),
                ) => {
                    tracing::debug!(error = %e, "etcd operation failed; retrying");
                    last = Some(e);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(self.unavailable(e)),
            }
        }
        Err(self.unavailable(last.expect("at least one attempt")))
    }
}

fn kv(k: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(k.key()).into_owned(),
        value: k.value().to_vec(),
        mod_revision: k.mod_revision(),
        lease: k.lease(),
    }
}

fn put_options(lease: LeaseId) -> Option<PutOptions> {
    (lease != 0).then(|| PutOptions::new().with_lease(lease))
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let r = self
            .retry(|mut c| async move { c.get(key, None).await })
            .await?;
        Ok(r.kvs().first().map(kv))
    }

    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        Ok(self.range_paged(prefix).await?.0)
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: LeaseId) -> Result<i64> {
        let r = self
            .retry(|mut c| {
                let value = value.clone();
                async move { c.put(key, value, put_options(lease)).await }
            })
            .await?;
        Ok(r.header().map_or(0, |h| h.revision()))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let r = self
            .retry(|mut c| async move { c.delete(key, None).await })
            .await?;
        Ok(r.deleted() > 0)
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnOutcome> {
        let build = || {
            let when: Vec<EtcdCompare> = compares
                .iter()
                .map(|c| match c {
                    Compare::ModRevision(key, rev) => {
                        EtcdCompare::mod_revision(key.as_str(), CompareOp::Equal, *rev)
                    }
                })
                .collect();
            let then: Vec<TxnOp> = ops
                .iter()
                .map(|op| match op {
                    Op::Put { key, value, lease } => {
                        TxnOp::put(key.as_str(), value.clone(), put_options(*lease))
                    }
                    Op::Delete { key } => TxnOp::delete(key.as_str(), None),
                })
                .collect();
            Txn::new().when(when).and_then(then)
        };
        let r = self
            .retry(|mut c| {
                let txn = build();
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(TxnOutcome {
            succeeded: r.succeeded(),
            revision: r.header().map_or(0, |h| h.revision()),
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = ttl.as_secs().max(1) as i64;
        let r = self
            .retry(|mut c| async move { c.lease_grant(secs, None).await })
            .await?;
        Ok(r.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<bool> {
        let renewed = async {
            let (mut keeper, mut stream) = self.client.clone().lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            stream.message().await
        };
        match renewed.await {
            Ok(reply) => Ok(reply.is_some_and(|m| m.ttl() > 0)),
            // etcd answers an expired lease with an error; to us it is just "not renewed".
            Err(e) if e.to_string().contains("lease not found") => Ok(false),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        match self.client.clone().lease_revoke(lease).await {
            Ok(_) => Ok(()),
            // Revoking an expired lease is not an error: its keys are gone either way.
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("not found") => Ok(()),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    async fn range_and_watch(&self, prefix: &str) -> Result<(Vec<KeyValue>, WatchReceiver)> {
        let (now, revision) = self.range_paged(prefix).await?;
        // etcd keeps history, so watching from the snapshot's next revision leaves no gap.
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = self
            .client
            .clone()
            .watch(prefix, Some(options))
            .await
            .map_err(|e| self.unavailable(e))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(resp)) = stream.message().await {
                if resp.canceled() {
                    break;
                }
                for ev in resp.events() {
                    let Some(k) = ev.kv() else { continue };
                    let event = match ev.event_type() {
                        EventType::Put => WatchEvent::Put(kv(k)),
                        EventType::Delete => WatchEvent::Delete {
                            key: String::from_utf8_lossy(k.key()).into_owned(),
                        },
                    };
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            }
        });
        Ok((now, rx))
    }
}
