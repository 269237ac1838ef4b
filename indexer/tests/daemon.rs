//! The indexer daemon for real: child processes with their own SQLite ledgers, fed by real edge
//! nodes (in-process, with their reporters) registered with a real orchestrator.

use indexer::merkle;
use indexer::report::ready;
use orchestrator::store::EmbeddedStore;
use pixelgrid_proto::identity::NodeKey;
use pixelgrid_proto::indexer::v1 as pb;
use pixelgrid_proto::indexer::v1::indexer_client::IndexerClient;
use pixelgrid_proto::token::unhex;
use pixelgrid_tests::{TestGrid, eventually, free_port, signed_registration};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const EPOCH_MS: u64 = 6_000;
const SLOT_MS: u64 = 1_000;
const DELAY_MS: u64 = 3_000;

/// One `indexer serve` child process; killed when dropped.
struct IndexerProcess {
    child: Child,
    port: u16,
    args: Vec<String>,
}

impl IndexerProcess {
    fn start(ledger: &std::path::Path, orchestrator: std::net::SocketAddr) -> Self {
        let port = free_port();
        let args: Vec<String> = [
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--http-listen",
            "127.0.0.1:0",
            "--ledger",
            &ledger.display().to_string(),
            "--orchestrator",
            &format!("http://{orchestrator}"),
            "--epoch-ms",
            &EPOCH_MS.to_string(),
            "--slot-ms",
            &SLOT_MS.to_string(),
            "--max-clock-skew-ms",
            "1000",
            "--max-report-delay-ms",
            &DELAY_MS.to_string(),
            "--sla-floor-ppm",
            "0",
            "--probes-per-slot",
            "2",
            "--registry-refresh-ms",
            "500",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let child = Self::spawn(&args);
        let me = Self { child, port, args };
        me.wait_ready();
        me
    }

    fn spawn(args: &[String]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_indexer"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the indexer binary")
    }

    fn wait_ready(&self) {
        assert!(
            eventually(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                self.port
            ))
            .is_ok()),
            "the indexer did not start listening"
        );
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `kill -9`, then the same command again.
    fn crash_and_restart(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
        self.child = Self::spawn(&self.args);
        self.wait_ready();
    }

    async fn client(&self) -> IndexerClient<tonic::transport::Channel> {
        IndexerClient::connect(self.url())
            .await
            .expect("connect to the indexer")
    }

    /// Waits until `epoch` is closed, then returns its payouts.
    async fn closed_payouts(&self, epoch: u64) -> pb::GetPayoutsResponse {
        let mut c = self.client().await;
        for _ in 0..200 {
            if let Ok(r) = c.get_payouts(pb::GetPayoutsRequest { epoch }).await {
                return r.into_inner();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("epoch {epoch} did not close on {}", self.url());
    }
}

impl Drop for IndexerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_ms() -> u64 {
    indexer::daemon::now_ms()
}

/// Sleeps until the wall clock reaches `at_ms`.
async fn sleep_until(at_ms: u64) {
    tokio::time::sleep(Duration::from_millis(at_ms.saturating_sub(now_ms()))).await;
}

fn reporting_to(indexers: &[&IndexerProcess]) -> edge_node::reporter::ReporterConfig {
    edge_node::reporter::ReporterConfig {
        indexers: indexers.iter().map(|i| i.url()).collect(),
        interval: Duration::from_millis(250),
        outbox_capacity: 1_000,
        outbox_dir: None,
    }
}

/// Two indexers take the same node's reports; one is `kill -9`ed mid-epoch and restarted. Both
/// publish the same closed epoch — same payouts, byte-identical root — with the node up all of it,
/// and every proof checks while a tampered amount does not.
#[test]
fn a_crash_mid_epoch_changes_nothing_and_two_indexers_publish_the_same_root() {
    let dir = tempfile::tempdir().unwrap();
    let mut grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 0, 2);
    let steady = IndexerProcess::start(&dir.path().join("steady.db"), grid.orchestrator);
    let mut crashing = IndexerProcess::start(&dir.path().join("crashing.db"), grid.orchestrator);
    grid.reporting = Some(reporting_to(&[&steady, &crashing]));
    grid.add_node(1, 2);
    let node_id = grid.nodes[0].1.node_id().to_owned();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // The first whole epoch that starts at least two slots after the node joined: both
        // indexers must have read it from the registry (every 500 ms) and taken a report before
        // the epoch's first slot, or that slot is (rightly) not credited.
        let epoch = (now_ms() + 2 * SLOT_MS) / EPOCH_MS + 1;
        let start = epoch * EPOCH_MS;
        // Kill early in a slot, so the restarted indexer's first probe lands in the same slot.
        sleep_until(start + 2 * SLOT_MS + 150).await;
        crashing.crash_and_restart();

        let a = steady.closed_payouts(epoch).await;
        let b = crashing.closed_payouts(epoch).await;
        let ea = a.epoch.clone().unwrap();
        assert_eq!(
            ea.merkle_root,
            b.epoch.clone().unwrap().merkle_root,
            "byte-identical roots"
        );
        assert_eq!(a.payouts, b.payouts, "the same payouts, crash or not");
        let p = a
            .payouts
            .iter()
            .find(|p| p.node_id.as_ref().is_some_and(|n| n.hex == node_id))
            .expect("the node is paid");
        assert_eq!(p.uptime_ms, EPOCH_MS, "up the whole epoch: {p:?}");
        assert!(p.amount_micro_credits > 0);

        // The proof, fetched from the daemon, checks offline; a tampered amount fails.
        let proof = crashing
            .client()
            .await
            .get_payout_proof(pb::GetPayoutProofRequest {
                epoch,
                node_id: Some(pixelgrid_proto::types::v1::NodeId {
                    hex: node_id.clone(),
                }),
            })
            .await
            .unwrap()
            .into_inner();
        let root: [u8; 32] = proof.merkle_root.clone().try_into().unwrap();
        let id: [u8; 32] = unhex(&node_id).unwrap().try_into().unwrap();
        let merkle_proof = merkle::Proof {
            index: proof.leaf_index,
            count: proof.leaf_count,
            siblings: proof
                .siblings
                .iter()
                .map(|s| s.clone().try_into().unwrap())
                .collect(),
        };
        assert!(merkle::verify(
            &root,
            &id,
            proof.amount_micro_credits,
            &merkle_proof
        ));
        assert!(!merkle::verify(
            &root,
            &id,
            proof.amount_micro_credits + 1,
            &merkle_proof
        ));
    });
}

/// Bad reports each get their verdict and a reason, and credit nothing; a node that reports
/// faithfully but cannot answer the probes earns no uptime, while a real node beside it does.
#[test]
fn bad_reports_are_refused_with_reasons_and_a_node_failing_probes_earns_no_uptime() {
    let dir = tempfile::tempdir().unwrap();
    let mut grid = TestGrid::start(Arc::new(EmbeddedStore::new()), 0, 2);
    let indexer = IndexerProcess::start(&dir.path().join("l.db"), grid.orchestrator);
    grid.reporting = Some(reporting_to(&[&indexer]));
    grid.add_node(2, 2);
    let real = grid.nodes[0].1.node_id().to_owned();
    // A node registered for real, but whose probe address answers nothing (port 9).
    let silent = NodeKey::from_seed(&[77; 32]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        grid.client()
            .await
            .register_node(signed_registration(&silent, 1))
            .await
            .expect("registration");
        let stranger = NodeKey::from_seed(&[78; 32]);
        let mut c = indexer.client().await;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut acks = c
            .submit_reports(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut send = async |r: pb::SignedNodeReport| {
            tx.send(r).await.unwrap();
            acks.message().await.unwrap().expect("an acknowledgement")
        };
        let t = now_ms();
        let shouting = indexer::report::sign(
            pb::NodeReport {
                node_id: Some(pixelgrid_proto::types::v1::NodeId {
                    hex: silent.node_id().to_uppercase(),
                }),
                sequence: 8,
                sent_unix_ms: t + 3,
                ..Default::default()
            },
            &silent,
        );
        let mut forged = ready(&silent, 2, t, vec![]);
        forged.report.as_mut().unwrap().sequence = 3;
        let cases = [
            (
                ready(&silent, 1, t, vec![]),
                pb::ReportVerdict::Accepted,
                "",
            ),
            (
                ready(&silent, 1, t, vec![]),
                pb::ReportVerdict::Replayed,
                "sequence 1",
            ),
            (forged, pb::ReportVerdict::BadSignature, "signature"),
            (
                ready(&stranger, 1, t, vec![]),
                pb::ReportVerdict::UnknownNode,
                "registry",
            ),
            (
                ready(&silent, 5, t + 60_000, vec![]),
                pb::ReportVerdict::ClockSkew,
                "ahead",
            ),
            (
                ready(&silent, 6, t - 60_000, vec![]),
                pb::ReportVerdict::OutOfWindow,
                "after its time",
            ),
            // Once crashed the indexer: two sequences the ledger cannot hold, one after the other.
            (
                ready(&silent, 1 << 63, t + 1, vec![]),
                pb::ReportVerdict::OutOfRange,
                "2^63",
            ),
            (
                ready(&silent, u64::MAX, t + 2, vec![]),
                pb::ReportVerdict::OutOfRange,
                "2^63",
            ),
            (shouting, pb::ReportVerdict::Malformed, "lower-case"),
            (
                ready(&silent, 7, t - 1, vec![]),
                pb::ReportVerdict::TimeWentBack,
                "time must advance",
            ),
        ];
        for (r, verdict, why) in cases {
            let ack = send(r).await;
            assert_eq!(ack.verdict, verdict as i32, "{ack:?}");
            assert!(ack.detail.contains(why), "{ack:?}");
        }
        // From now on the silent node reports faithfully through a whole epoch (one starting at
        // least two slots from now, so its first slot has a report and a probe).
        let epoch = (now_ms() + 2 * SLOT_MS) / EPOCH_MS + 1;
        let mut seq = 10;
        while now_ms() < (epoch + 1) * EPOCH_MS + 200 {
            seq += 1;
            let ack = send(ready(&silent, seq, now_ms(), vec![])).await;
            assert_eq!(ack.verdict, pb::ReportVerdict::Accepted as i32, "{ack:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let payouts = indexer.closed_payouts(epoch).await.payouts;
        let uptime = |id: &str| {
            payouts
                .iter()
                .find(|p| p.node_id.as_ref().is_some_and(|n| n.hex == id))
                .map(|p| p.uptime_ms)
        };
        assert_eq!(
            uptime(&silent.node_id()),
            Some(0),
            "reports without passed probes earn nothing"
        );
        assert_eq!(
            uptime(&real),
            Some(EPOCH_MS),
            "the real node beside it is up"
        );
    });
}

/// The node set of a large grid comes in pages (one `ListNodes` reply could not hold it), and a
/// node gone from the registry for longer than `forget_after` is no longer probed.
#[test]
fn the_node_set_of_100_000_nodes_is_read_in_pages_and_departed_nodes_stop_being_probed() {
    use orchestrator::grid::{Grid, GridConfig};
    use pixelgrid_proto::identity::SignedRequest;
    use pixelgrid_proto::orchestrator::v1 as opb;
    const NODES: usize = 100_000;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store: Arc<dyn orchestrator::store::Store> = Arc::new(EmbeddedStore::new());
        let cache = orchestrator::cache::RegistryCache::start(Arc::clone(&store))
            .await
            .unwrap();
        let grid = Arc::new(
            Grid::new(
                store,
                pixelgrid_proto::token::TokenSigner::from_seed(&[9; 32]),
                orchestrator::placement::Policy::default(),
                GridConfig {
                    node_lease_ttl: Duration::from_secs(3_600),
                    ..GridConfig::default()
                },
            )
            .with_cache(cache),
        );
        let registering = std::time::Instant::now();
        let keys = orchestrator::bench::register_nodes(&grid, NODES)
            .await
            .unwrap();
        eprintln!("registered {NODES} nodes in {:?}", registering.elapsed());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(orchestrator::serve(
            listener,
            Arc::clone(&grid),
            std::future::pending(),
        ));
        let mut client = opb::orchestrator_client::OrchestratorClient::connect(url.clone())
            .await
            .unwrap();
        // A page too large or a token that was never handed out is refused with a reason.
        for (req, why) in [
            (
                opb::ListNodesRequest {
                    page_size: 1_000_000,
                    ..Default::default()
                },
                "page_size",
            ),
            (
                opb::ListNodesRequest {
                    page_token: "x".repeat(200),
                    ..Default::default()
                },
                "page_token",
            ),
        ] {
            let e = client.list_nodes(req).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains(why), "{e:?}");
        }
        let first = client
            .list_nodes(opb::ListNodesRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.nodes.len(), 1_000, "the default page");
        assert!(!first.next_page_token.is_empty());

        let dir = tempfile::tempdir().unwrap();
        let indexer = indexer::daemon::Indexer::open(indexer::daemon::DaemonConfig {
            rules: indexer::tally::TallyConfig::default(),
            ledger: dir.path().join("l.db"),
            orchestrator: Some(url),
            probes_per_slot: 1,
            registry_refresh: Duration::from_secs(3_600),
            forget_after: Duration::ZERO,
            ledger_max_bytes: None,
        })
        .unwrap();
        let reading = std::time::Instant::now();
        assert_eq!(indexer.refresh_registry().await.unwrap(), NODES);
        eprintln!("read {NODES} nodes in pages in {:?}", reading.elapsed());

        // Ten nodes leave; with forget_after = 0 the next read stops probing them.
        for key in &keys[..10] {
            grid.deregister(
                opb::DeregisterNodeRequest {
                    node_id: Some(pixelgrid_proto::types::v1::NodeId { hex: key.node_id() }),
                    sent_unix_ms: now_ms(),
                    signature: None,
                }
                .sign_with(key),
            )
            .await
            .unwrap();
        }
        assert!(
            eventually_async(|| async { indexer.refresh_registry().await.unwrap() == NODES - 10 })
                .await,
            "departed nodes are still probed"
        );
    });
}

/// Polls `check` for up to ten seconds.
async fn eventually_async<F: std::future::Future<Output = bool>>(check: impl Fn() -> F) -> bool {
    for _ in 0..100 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
