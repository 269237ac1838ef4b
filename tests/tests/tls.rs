//! Transport security on a real gRPC server and gateway (certificates made by `rcgen` for
//! `localhost`): a TLS server refuses plaintext, a client trusting another CA refuses the server,
//! mutual TLS admits only clients with a certificate, and the gateway serves HTTPS.

use orchestrator::grid::{Grid, GridConfig};
use orchestrator::store::EmbeddedStore;
use pixelgrid_proto::orchestrator::v1 as pb;
use pixelgrid_proto::orchestrator::v1::orchestrator_client::OrchestratorClient;
use pixelgrid_proto::token::TokenSigner;
use pixelgrid_proto::transport::{ClientTls, TlsFiles, connect_with};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A self-signed certificate for `localhost` written to `dir` as `{name}.pem` and
/// `{name}.key`.
fn certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

async fn grid_over_tls(tls: &TlsFiles) -> (u16, u16) {
    let grid = Arc::new(Grid::new(
        Arc::new(EmbeddedStore::new()),
        TokenSigner::from_seed(&[5; 32]),
        Default::default(),
        GridConfig::default(),
    ));
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ports = (
        grpc.local_addr().unwrap().port(),
        http.local_addr().unwrap().port(),
    );
    tokio::spawn(pixelgrid_proto::transport::serve_https(
        http,
        tls.https().unwrap().expect("a certificate"),
        orchestrator::gateway::router(Arc::clone(&grid)),
        std::future::pending(),
    ));
    tokio::spawn(orchestrator::serve_with_tls(
        grpc,
        grid,
        tls.grpc().unwrap(),
        std::future::pending(),
    ));
    ports
}

/// One ListGames call through a fresh channel: Ok, or the error in words.
async fn list_games(url: &str, tls: &ClientTls) -> Result<(), String> {
    let channel = connect_with(url, tls).await?;
    OrchestratorClient::new(channel)
        .list_games(pb::ListGamesRequest {})
        .await
        .map(|_| ())
        .map_err(|s| s.to_string())
}

#[test]
fn a_tls_orchestrator_refuses_plaintext_and_untrusted_clients_and_serves_trusting_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "server");
    let (other_ca, _) = certificate(dir.path(), "other");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = TlsFiles {
            cert: Some(cert.clone()),
            key: Some(key),
            client_ca: None,
        };
        let (grpc, http) = grid_over_tls(&tls).await;
        let trusting = ClientTls {
            ca: Some(cert.clone()),
            ..Default::default()
        };
        list_games(&format!("https://localhost:{grpc}"), &trusting)
            .await
            .expect("TLS with the server's CA");
        let plain = list_games(&format!("http://localhost:{grpc}"), &trusting).await;
        assert!(plain.is_err(), "a TLS server answered plaintext");
        let wrong_ca = ClientTls {
            ca: Some(other_ca),
            ..Default::default()
        };
        let e = list_games(&format!("https://localhost:{grpc}"), &wrong_ca)
            .await
            .unwrap_err();
        assert!(
            e.to_lowercase().contains("certificate") || e.contains("UnknownIssuer"),
            "{e}"
        );

        // The gateway speaks HTTPS, and nothing to a plaintext request.
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        use tokio_rustls::rustls::pki_types::CertificateDer;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        roots
            .add(CertificateDer::from_pem_file(&cert).unwrap())
            .unwrap();
        let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", http))
            .await
            .unwrap();
        let mut tls_stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .expect("TLS handshake with the gateway");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls_stream
            .write_all(b"GET /api/info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        let _ = tls_stream.read_to_string(&mut answer).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.contains("\"mode\":\"grid\""),
            "{answer}"
        );
        let plain = pixelgrid_proto::http::request(
            ([127, 0, 0, 1], http).into(),
            "GET",
            "/api/info",
            &[],
            b"",
            std::time::Duration::from_secs(5),
        )
        .await;
        assert!(
            plain.is_err() || plain.as_ref().is_ok_and(|r| r.status != 200),
            "plaintext got an answer: {plain:?}"
        );
    });
}

#[test]
fn mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "server");
    let (client_cert, client_key) = certificate(dir.path(), "indexer");
    let (stranger_cert, stranger_key) = certificate(dir.path(), "stranger");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = TlsFiles {
            cert: Some(cert.clone()),
            key: Some(key),
            client_ca: Some(client_cert.clone()),
        };
        let (grpc, _) = grid_over_tls(&tls).await;
        let url = format!("https://localhost:{grpc}");
        let with = |cert: Option<PathBuf>, key: Option<PathBuf>| ClientTls {
            ca: Some(cert_path(&dir, "server")),
            cert,
            key,
        };
        list_games(&url, &with(Some(client_cert), Some(client_key)))
            .await
            .expect("the admitted client");
        assert!(list_games(&url, &with(None, None)).await.is_err());
        assert!(
            list_games(&url, &with(Some(stranger_cert), Some(stranger_key)))
                .await
                .is_err()
        );
    });
}

fn cert_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(format!("{name}.pem"))
}

/// The deploy procedure itself: `deploy/make-certs.sh` makes a CA and CA-signed certificates
/// that serve both ways — the orchestrator's as its server certificate, the indexer's as a
/// client certificate under `--tls-client-ca ca.crt`.
#[test]
fn certificates_from_make_certs_serve_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/make-certs.sh");
    let out = std::process::Command::new(script)
        .arg(dir.path())
        .args(["orchestrator", "indexer"])
        .output()
        .expect("deploy/make-certs.sh runs (needs openssl: deploy/install-deps.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = |name: &str| dir.path().join(name);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = TlsFiles {
            cert: Some(file("orchestrator.crt")),
            key: Some(file("orchestrator.key")),
            client_ca: Some(file("ca.crt")),
        };
        let (grpc, _) = grid_over_tls(&tls).await;
        for host in ["localhost", "127.0.0.1"] {
            let url = format!("https://{host}:{grpc}");
            let client = ClientTls {
                ca: Some(file("ca.crt")),
                cert: Some(file("indexer.crt")),
                key: Some(file("indexer.key")),
            };
            list_games(&url, &client).await.expect("a CA-signed client");
            let anonymous = ClientTls {
                ca: Some(file("ca.crt")),
                ..Default::default()
            };
            assert!(list_games(&url, &anonymous).await.is_err(), "{url}");
        }
    });
}

/// Whether a TLS handshake with `localhost:port` succeeds when trusting only `ca`.
async fn handshake(port: u16, ca: &Path) -> bool {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .is_ok()
}

/// A renewed certificate is served without a restart: once its files change, the next
/// handshake presents the new one (the gateway's and the edge node's HTTPS alike).
#[test]
fn an_https_endpoint_serves_a_renewed_certificate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old_cert, old_key) = certificate(dir.path(), "old");
    let (new_cert, new_key) = certificate(dir.path(), "new");
    let (live_cert, live_key) = (dir.path().join("live.pem"), dir.path().join("live.key"));
    std::fs::copy(&old_cert, &live_cert).unwrap();
    std::fs::copy(&old_key, &live_key).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let acceptor = pixelgrid_proto::transport::tls_acceptor_rechecking(
            &live_cert,
            &live_key,
            std::time::Duration::ZERO,
        )
        .unwrap();
        let grid = Arc::new(Grid::new(
            Arc::new(EmbeddedStore::new()),
            TokenSigner::from_seed(&[5; 32]),
            Default::default(),
            GridConfig::default(),
        ));
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = http.local_addr().unwrap().port();
        tokio::spawn(pixelgrid_proto::transport::serve_https(
            http,
            acceptor,
            orchestrator::gateway::router(grid),
            std::future::pending(),
        ));
        assert!(handshake(port, &old_cert).await);
        assert!(!handshake(port, &new_cert).await);
        // Renewed in place (key first, as a renewal tool writes them).
        std::fs::copy(&new_key, &live_key).unwrap();
        std::fs::copy(&new_cert, &live_cert).unwrap();
        assert!(handshake(port, &new_cert).await, "the renewed certificate");
        assert!(!handshake(port, &old_cert).await, "the old one is gone");
        // A renewal that does not load keeps the working certificate.
        std::fs::write(&live_cert, "not a certificate").unwrap();
        assert!(handshake(port, &new_cert).await);
    });
}
