//! One replica leads the background sweeps. Leadership is a key created only if absent, under
//! the leader's lease: while the leader keeps the lease alive nobody else can take the key; when
//! it dies the lease lapses and another replica takes over within the lease TTL. The same code
//! runs on etcd and on the embedded store (where the one replica always leads).

use crate::grid::{Grid, now_ms};
use crate::slots::ROOT;
use crate::store::{Compare, Op};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The key whose holder leads.
pub fn leader_key() -> String {
    format!("{ROOT}/leader")
}

/// Runs for ever: campaigns, and while leading, sweeps every `sweep_every`. `leading` tells
/// whether this replica leads now.
pub async fn run(
    grid: Arc<Grid>,
    replica: String,
    ttl: Duration,
    sweep_every: Duration,
    leading: Arc<AtomicBool>,
) {
    let store = Arc::clone(grid.store());
    loop {
        let lease = match store.grant_lease(ttl).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot campaign for leadership");
                tokio::time::sleep(ttl / 2).await;
                continue;
            }
        };
        let claim = Op::Put {
            key: leader_key(),
            value: replica.clone().into_bytes(),
            lease,
        };
        let won = store
            .txn(vec![Compare::ModRevision(leader_key(), 0)], vec![claim])
            .await
            .is_ok_and(|o| o.succeeded);
        if !won {
            let _ = store.revoke(lease).await;
            tokio::time::sleep(ttl / 3).await;
            continue;
        }
        tracing::info!(%replica, "leading background sweeps");
        leading.store(true, Ordering::SeqCst);
        let tick = sweep_every.min(ttl / 3);
        loop {
            tokio::time::sleep(tick).await;
            if !store.keep_alive(lease).await.unwrap_or(false) {
                break;
            }
            match grid.sweep(now_ms()).await {
                Ok(r) if r != Default::default() => tracing::info!(
                    expired = r.expired,
                    failed = r.failed,
                    orphans = r.orphans,
                    "sweep"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "sweep failed"),
            }
        }
        leading.store(false, Ordering::SeqCst);
        tracing::warn!(%replica, "lost leadership");
    }
}
