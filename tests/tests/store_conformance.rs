//! One conformance suite for both store backends: the embedded one and a real etcd started for
//! the test. Both must give the same answers.

use orchestrator::Error;
use orchestrator::placement::{NodeView, Policy, Request};
use orchestrator::slots::{self, ROOT};
use orchestrator::store::{Compare, EmbeddedStore, EtcdStore, Op, Store};
use pixelgrid_tests::Etcd;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `suite` against a fresh embedded store (in memory, and durable in a file) and a fresh
/// real etcd.
fn on_both<F, Fut>(suite: F)
where
    F: Fn(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let rt = runtime();
    rt.block_on(suite(Arc::new(EmbeddedStore::new())));
    let dir = tempfile::tempdir().unwrap();
    let durable = EmbeddedStore::open(&dir.path().join("state.db")).expect("a store file");
    rt.block_on(suite(Arc::new(durable)));
    let etcd = Etcd::start();
    let store = rt
        .block_on(EtcdStore::connect(std::slice::from_ref(&etcd.endpoint)))
        .expect("connect to etcd");
    rt.block_on(suite(Arc::new(store)));
}

#[test]
fn keys_have_revisions_and_ranges_are_in_key_order() {
    on_both(|s| async move {
        assert_eq!(s.get("/t/a").await.unwrap(), None);
        let r1 = s.put("/t/b", b"2".to_vec(), 0).await.unwrap();
        let r2 = s.put("/t/a", b"1".to_vec(), 0).await.unwrap();
        assert!(r2 > r1, "every write bumps the revision");
        s.put("/u/c", b"3".to_vec(), 0).await.unwrap();
        let keys: Vec<_> = s
            .range("/t/")
            .await
            .unwrap()
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(keys, ["/t/a", "/t/b"]);
        assert_eq!(s.get("/t/a").await.unwrap().unwrap().mod_revision, r2);
        assert!(s.delete("/t/a").await.unwrap());
        assert!(
            !s.delete("/t/a").await.unwrap(),
            "deleting twice reports nothing deleted"
        );
        assert_eq!(s.get("/t/a").await.unwrap(), None);
    });
}

/// Big prefixes are read in pages (etcd answers at most 4 MiB at once; 100,000 node records
/// were 38 MB): every key comes back once, in order, and a watch from that read misses nothing.
#[test]
fn a_range_bigger_than_a_page_comes_back_whole_and_in_order() {
    on_both(|s| async move {
        let ops: Vec<Op> = (0..2_500)
            .map(|i| Op::Put {
                key: format!("/big/{i:05}"),
                // 2,500 × 2 kB: more than one 4 MiB answer holds.
                value: vec![b'x'; 2_000],
                lease: 0,
            })
            .collect();
        for chunk in ops.chunks(100) {
            assert!(s.txn(vec![], chunk.to_vec()).await.unwrap().succeeded);
        }
        s.put("/big0", b"after the prefix".to_vec(), 0)
            .await
            .unwrap();
        let keys: Vec<String> = s
            .range("/big/")
            .await
            .unwrap()
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        let expected: Vec<String> = (0..2_500).map(|i| format!("/big/{i:05}")).collect();
        assert_eq!(keys, expected);
        let (now, mut watch) = s.range_and_watch("/big/").await.unwrap();
        assert_eq!(now.len(), 2_500);
        s.put("/big/99999", b"new".to_vec(), 0).await.unwrap();
        let event = tokio::time::timeout(std::time::Duration::from_secs(5), watch.recv())
            .await
            .expect("the watch sees the next change")
            .expect("a change");
        assert!(format!("{event:?}").contains("/big/99999"), "{event:?}");
    });
}

#[test]
fn a_transaction_applies_only_when_its_comparisons_hold() {
    on_both(|s| async move {
        let create = |v: &str| {
            (
                vec![Compare::ModRevision("/t/slot".into(), 0)],
                vec![Op::Put {
                    key: "/t/slot".into(),
                    value: v.as_bytes().to_vec(),
                    lease: 0,
                }],
            )
        };
        let (c, o) = create("first");
        assert!(s.txn(c, o).await.unwrap().succeeded);
        let (c, o) = create("second");
        assert!(
            !s.txn(c, o).await.unwrap().succeeded,
            "create-if-absent must fail on an existing key"
        );
        assert_eq!(s.get("/t/slot").await.unwrap().unwrap().value, b"first");
        let rev = s.get("/t/slot").await.unwrap().unwrap().mod_revision;
        let swap = s
            .txn(
                vec![Compare::ModRevision("/t/slot".into(), rev)],
                vec![
                    Op::Delete {
                        key: "/t/slot".into(),
                    },
                    Op::Put {
                        key: "/t/other".into(),
                        value: vec![],
                        lease: 0,
                    },
                ],
            )
            .await
            .unwrap();
        assert!(swap.succeeded);
        assert_eq!(s.get("/t/slot").await.unwrap(), None);
        assert!(
            s.get("/t/other").await.unwrap().is_some(),
            "both operations applied together"
        );
    });
}

#[test]
fn keys_under_a_lease_vanish_when_it_expires_or_is_revoked_and_keep_alive_holds_them() {
    on_both(|s| async move {
        let kept = s.grant_lease(Duration::from_secs(2)).await.unwrap();
        let lapsing = s.grant_lease(Duration::from_secs(2)).await.unwrap();
        let revoked = s.grant_lease(Duration::from_secs(30)).await.unwrap();
        s.put("/t/kept", vec![1], kept).await.unwrap();
        s.put("/t/lapsing", vec![1], lapsing).await.unwrap();
        s.put("/t/revoked", vec![1], revoked).await.unwrap();
        s.revoke(revoked).await.unwrap();
        assert_eq!(s.get("/t/revoked").await.unwrap(), None);
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(s.keep_alive(kept).await.unwrap());
        }
        assert!(
            s.get("/t/kept").await.unwrap().is_some(),
            "a kept-alive lease keeps its keys"
        );
        assert_eq!(
            s.get("/t/lapsing").await.unwrap(),
            None,
            "an expired lease takes its keys"
        );
        assert!(
            !s.keep_alive(lapsing).await.unwrap(),
            "an expired lease cannot be renewed"
        );
        assert!(
            s.put("/t/late", vec![1], lapsing).await.is_err(),
            "no writes under an expired lease"
        );
    });
}

fn grid_node(i: usize) -> NodeView {
    NodeView {
        id: format!("node-{i:02}"),
        ready: true,
        region: "eu-west".into(),
        games: vec!["arena".into()],
        offers: Default::default(),
        capacity: 4,
        used: 0,
        price: 100,
    }
}

#[test]
fn two_hundred_concurrent_launches_on_forty_slots_book_each_slot_exactly_once() {
    on_both(|s| async move {
        for i in 0..10 {
            slots::put_node(s.as_ref(), &grid_node(i), 0).await.unwrap();
        }
        let req = Request {
            game: "arena".into(),
            region: "eu-west".into(),
            rtt_ms: (0..10)
                .map(|i| (format!("node-{i:02}"), 10 + i as u32))
                .collect(),
            ..Request::default()
        };
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let (s, req) = (Arc::clone(&s), req.clone());
                tokio::spawn(async move {
                    slots::reserve(
                        s.as_ref(),
                        &format!("session-{i:03}"),
                        &req,
                        &Policy::default(),
                    )
                    .await
                })
            })
            .collect();
        let (mut granted, mut exhausted) = (Vec::new(), 0);
        for t in tasks {
            match t.await.unwrap() {
                Ok(r) => granted.push(r),
                Err(Error::NoCapacity(msg)) => {
                    exhausted += 1;
                    assert!(!msg.is_empty());
                }
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(granted.len(), 40, "exactly the 40 slots are granted");
        assert_eq!(exhausted, 160);
        // Checked in the store itself: 40 slot keys, 40 different sessions, ≤ 4 per node.
        let keys = s.range(&format!("{ROOT}/slots/")).await.unwrap();
        assert_eq!(keys.len(), 40);
        let sessions: BTreeSet<_> = keys.iter().map(|kv| kv.value.clone()).collect();
        assert_eq!(
            sessions.len(),
            40,
            "no session holds two slots and no slot two sessions"
        );
        for (view, _) in slots::nodes(s.as_ref()).await.unwrap() {
            assert_eq!(view.used, 4, "{} is over- or under-booked", view.id);
        }
        // Freeing one slot makes exactly one launch possible again.
        assert!(slots::release(s.as_ref(), &granted[0]).await.unwrap());
        assert!(
            slots::reserve(s.as_ref(), "late", &req, &Policy::default())
                .await
                .is_ok()
        );
        assert!(matches!(
            slots::reserve(s.as_ref(), "later", &req, &Policy::default()).await,
            Err(Error::NoCapacity(_))
        ));
    });
}

#[test]
fn a_node_whose_lease_lapses_leaves_placement() {
    on_both(|s| async move {
        let lease = s.grant_lease(Duration::from_secs(2)).await.unwrap();
        slots::put_node(s.as_ref(), &grid_node(0), lease)
            .await
            .unwrap();
        assert_eq!(slots::nodes(s.as_ref()).await.unwrap().len(), 1);
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert!(
            slots::nodes(s.as_ref()).await.unwrap().is_empty(),
            "a node that stopped heartbeating must disappear"
        );
        let req = Request {
            game: "arena".into(),
            rtt_ms: [("node-00".to_owned(), 5)].into(),
            ..Request::default()
        };
        match slots::reserve(s.as_ref(), "x", &req, &Policy::default()).await {
            Err(Error::NoCapacity(msg)) => assert!(msg.contains("no nodes"), "{msg}"),
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn a_watch_sees_every_change_after_its_snapshot_including_lease_expiry() {
    use orchestrator::store::WatchEvent;
    on_both(|s| async move {
        s.put("/w/before", b"0".to_vec(), 0).await.unwrap();
        s.put("/x/elsewhere", b"0".to_vec(), 0).await.unwrap();
        let (now, mut events) = s.range_and_watch("/w/").await.unwrap();
        assert_eq!(
            now.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
            ["/w/before"]
        );
        let lease = s.grant_lease(Duration::from_secs(2)).await.unwrap();
        s.put("/w/a", b"1".to_vec(), 0).await.unwrap();
        s.put("/x/ignored", b"1".to_vec(), 0).await.unwrap();
        s.put("/w/leased", b"2".to_vec(), lease).await.unwrap();
        s.delete("/w/a").await.unwrap();
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
        while seen.len() < 4 && tokio::time::Instant::now() < deadline {
            // The embedded store notices expiry when it is next touched, as the leader's sweeps do.
            let _ = s.get("/w/poke").await;
            if let Ok(Some(e)) =
                tokio::time::timeout(Duration::from_millis(200), events.recv()).await
            {
                seen.push(match e {
                    WatchEvent::Put(kv) => format!("put {}", kv.key),
                    WatchEvent::Delete { key } => format!("delete {key}"),
                });
            }
        }
        assert_eq!(
            seen,
            [
                "put /w/a",
                "put /w/leased",
                "delete /w/a",
                "delete /w/leased"
            ]
        );
    });
}

/// The embedded store kept in a file survives its process: a restart finds the keys, the
/// revision and the leases (each with its whole TTL again, as etcd does), and a lease nobody
/// keeps alive after the restart still expires.
#[test]
fn a_durable_embedded_store_comes_back_after_a_restart_with_keys_revision_and_leases() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let (kept_lease, lapsing_lease, revision) = rt.block_on(async {
        let store = EmbeddedStore::open(&path).unwrap();
        store.put("/a/plain", b"1".to_vec(), 0).await.unwrap();
        let kept = store.grant_lease(Duration::from_secs(3)).await.unwrap();
        let lapsing = store.grant_lease(Duration::from_secs(1)).await.unwrap();
        store.put("/a/kept", b"2".to_vec(), kept).await.unwrap();
        store
            .put("/a/lapsing", b"3".to_vec(), lapsing)
            .await
            .unwrap();
        store.put("/a/gone", b"4".to_vec(), 0).await.unwrap();
        assert!(store.delete("/a/gone").await.unwrap());
        let out = store
            .txn(
                vec![Compare::ModRevision("/a/txn".into(), 0)],
                vec![Op::Put {
                    key: "/a/txn".into(),
                    value: b"5".to_vec(),
                    lease: 0,
                }],
            )
            .await
            .unwrap();
        assert!(out.succeeded);
        (kept, lapsing, out.revision)
        // The store is dropped here, as a killed process drops it: nothing is flushed on exit.
    });
    rt.block_on(async {
        let store = EmbeddedStore::open(&path).unwrap();
        let keys: Vec<String> = store
            .range("/a/")
            .await
            .unwrap()
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(keys, ["/a/kept", "/a/lapsing", "/a/plain", "/a/txn"]);
        assert_eq!(
            store.get("/a/txn").await.unwrap().unwrap().mod_revision,
            revision
        );
        // Revisions go on from where they were.
        assert!(store.put("/a/next", b"6".to_vec(), 0).await.unwrap() > revision);
        // Leases are back: one is kept alive, the other lapses and takes its key along.
        assert!(store.keep_alive(kept_lease).await.unwrap());
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        assert!(store.keep_alive(kept_lease).await.unwrap());
        assert!(store.get("/a/lapsing").await.unwrap().is_none());
        assert!(!store.keep_alive(lapsing_lease).await.unwrap());
        // New leases do not reuse an old id.
        let fresh = store.grant_lease(Duration::from_secs(5)).await.unwrap();
        assert!(fresh > kept_lease.max(lapsing_lease));
    });
    // And the expiry itself was written down.
    rt.block_on(async {
        let store = EmbeddedStore::open(&path).unwrap();
        assert!(store.get("/a/lapsing").await.unwrap().is_none());
        assert!(store.get("/a/kept").await.unwrap().is_some());
    });
}
