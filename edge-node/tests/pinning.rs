//! A node trusts only the orchestrator token key it was given at onboarding: started against an
//! orchestrator that signs with another key, `edge-node serve` refuses to serve, saying why; and
//! without a key to pin it does not start.

use orchestrator::grid::{Grid, GridConfig};
use orchestrator::store::EmbeddedStore;
use pixelgrid_proto::token::TokenSigner;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn serve(dir: &std::path::Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-node"))
        .current_dir(dir)
        .args(["serve", "--identity", "node.key", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = pixelgrid_tests::wait_for_exit(&mut child, Duration::from_secs(60));
    if status.is_none() {
        let _ = child.kill();
    }
    let mut err = String::new();
    use std::io::Read as _;
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (status.and_then(|s| s.code()), err)
}

#[test]
fn a_node_refuses_an_orchestrator_signing_with_a_key_it_was_not_given() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let orchestrator = rt.block_on(async {
        let grid = Arc::new(Grid::new(
            Arc::new(EmbeddedStore::new()),
            TokenSigner::from_seed(&[3; 32]),
            Default::default(),
            GridConfig::default(),
        ));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(orchestrator::serve(l, grid, std::future::pending()));
        format!("http://{addr}")
    });
    let dir = tempfile::tempdir().unwrap();
    let pinned = TokenSigner::from_seed(&[4; 32]).public_key_hex();
    let (code, err) = serve(
        dir.path(),
        &[
            "--orchestrator",
            &orchestrator,
            "--orchestrator-key",
            &pinned,
        ],
    );
    assert_ne!(code, Some(0), "{err}");
    assert!(code.is_some(), "still serving: {err}");
    assert!(
        err.contains("was not told to trust") && err.contains("refusing to serve"),
        "{err}"
    );
    let (code, err) = serve(dir.path(), &["--orchestrator", &orchestrator]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--orchestrator-key is required"), "{err}");
}
