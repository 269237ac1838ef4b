//! An edge node serving HTTPS (a certificate for `localhost` made by `rcgen`): the orchestrator
//! hands players an `https://` probe URL, the Rust SDK measures it, posts its WHEP offer and
//! plays over TLS, the indexer challenges the node over TLS, and a plaintext request to the
//! node's port gets no HTTP answer. Its own test binary: the process's TLS trust is set once.

use orchestrator::store::EmbeddedStore;
use pixelgrid_client::LaunchOptions;
use pixelgrid_proto::orchestrator::v1 as pb;
use pixelgrid_tests::{TestGrid, bearer, eventually};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn a_node_serving_tls_is_probed_and_played_over_https_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("node.pem"), dir.path().join("node.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    // Players and the indexer trust this certificate (PIXELGRID_CA_FILE, in a real process).
    pixelgrid_proto::http::trust_ca_file(&cert).unwrap();

    let mut g = TestGrid::start(Arc::new(EmbeddedStore::new()), 0, 2);
    let indexer = g.start_indexer(indexer::tally::TallyConfig {
        epoch_ms: 60_000,
        slot_ms: 1_000,
        ..Default::default()
    });
    g.node_tls = Some(pixelgrid_proto::transport::tls_acceptor(&cert, &key).unwrap());
    let addr = g.add_node(1, 2);

    // The candidate's probe is https, at the name on the certificate.
    let candidates = g.runtime.block_on(async {
        g.client()
            .await
            .create_session(bearer(
                pb::CreateSessionRequest {
                    game: "arena".into(),
                    ..Default::default()
                },
                &g.grant().await,
            ))
            .await
            .unwrap()
            .into_inner()
            .candidates
    });
    assert_eq!(
        candidates[0].probe_url,
        format!("https://localhost:{}/probe", addr.port())
    );

    // The SDK measures that probe, offers over https and plays.
    let frames = g.runtime.block_on(async {
        let mut session = g
            .player()
            .await
            .launch(
                "arena",
                LaunchOptions {
                    width: 320,
                    height: 240,
                    fps: 30,
                    ..LaunchOptions::default()
                },
            )
            .await
            .expect("a launch over https");
        let mut frames = 0;
        while frames < 10 {
            tokio::time::timeout(Duration::from_secs(10), session.next_frame())
                .await
                .expect("frames keep coming")
                .expect("the session goes on");
            frames += 1;
        }
        session.end().await;
        frames
    });
    assert_eq!(frames, 10);
    let node = Arc::clone(&g.nodes[0].1);
    assert!(
        eventually(Duration::from_secs(5), || g
            .runtime
            .block_on(node.session_ids())
            .is_empty()),
        "the WHEP DELETE reached the node over https"
    );

    // The indexer's challenges reach it over https too.
    let passed = || {
        indexer
            .indexer
            .metrics_text()
            .lines()
            .find(|l| l.starts_with("pixelgrid_indexer_probes_total{outcome=\"passed\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        eventually(Duration::from_secs(10), || passed() >= 1.0),
        "the indexer's probes pass: {}",
        indexer.indexer.metrics_text()
    );

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = g.runtime.block_on(pixelgrid_proto::http::request(
        addr,
        "GET",
        "/probe",
        &[],
        b"",
        Duration::from_secs(3),
    ));
    assert!(
        plain.as_ref().map_or(true, |r| r.status >= 400),
        "{plain:?}"
    );
}
