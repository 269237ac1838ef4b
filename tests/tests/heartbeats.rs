//! Heartbeats across replicas: a sequence counts within one registration wherever it is read,
//! so a node that restarts and registers again is heard by every replica, a replayed heartbeat
//! is refused by every replica, and keys that never registered leave nothing behind.

use orchestrator::grid::{Grid, GridConfig, now_ms};
use orchestrator::placement::Policy;
use orchestrator::store::{EmbeddedStore, Store};
use pixelgrid_proto::identity::{NodeKey, SignedRequest};
use pixelgrid_proto::orchestrator::v1 as pb;
use pixelgrid_proto::token::TokenSigner;
use pixelgrid_proto::types::v1 as types;
use pixelgrid_tests::signed_registration;
use std::sync::Arc;

fn heartbeat(key: &NodeKey, sequence: u64) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest {
        node_id: Some(types::NodeId { hex: key.node_id() }),
        sequence,
        sent_unix_ms: now_ms(),
        state: pb::NodeState::Ready as i32,
        ..Default::default()
    }
    .sign_with(key)
}

#[test]
fn a_node_registered_again_is_heard_by_every_replica_and_strangers_leave_no_state() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::new());
        let replica = || {
            Grid::new(
                Arc::clone(&store),
                TokenSigner::from_seed(&[9; 32]),
                Policy::default(),
                GridConfig::default(),
            )
        };
        let (a, b) = (replica(), replica());
        let key = NodeKey::from_seed(&[7; 32]);
        a.register(signed_registration(&key, 2)).await.unwrap();
        for seq in 1..=5 {
            b.heartbeat(heartbeat(&key, seq)).await.expect("in order");
        }
        let replayed = b.heartbeat(heartbeat(&key, 3)).await.unwrap_err();
        assert!(replayed.to_string().contains("replayed"), "{replayed}");

        // The node restarts, registers again through the other replica and counts from 1.
        a.register(signed_registration(&key, 2)).await.unwrap();
        b.heartbeat(heartbeat(&key, 1))
            .await
            .expect("a new registration's first heartbeat is heard on every replica");
        assert!(
            b.heartbeat(heartbeat(&key, 1)).await.is_err(),
            "and its replay is not"
        );

        // Keys that never registered: refused, and nothing kept for them.
        let before = b.heartbeat_states();
        for i in 0..300u16 {
            let mut seed = [1u8; 32];
            seed[..2].copy_from_slice(&i.to_le_bytes());
            let stranger = NodeKey::from_seed(&seed);
            let e = b.heartbeat(heartbeat(&stranger, 1)).await.unwrap_err();
            assert!(e.to_string().contains("register again"), "{e}");
        }
        assert_eq!(b.heartbeat_states(), before, "no state for strangers");
    });
}
