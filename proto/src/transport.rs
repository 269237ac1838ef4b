//! gRPC channels and servers with TLS, configured the same way by every daemon and client.
//!
//! - A client connecting to an `https://` URL verifies the server against the CA in
//!   `PIXELGRID_CA_FILE` (PEM) when set, else against the system's roots; with
//!   `PIXELGRID_TLS_CLIENT_CERT` and `PIXELGRID_TLS_CLIENT_KEY` it also presents a client
//!   certificate (mutual TLS between daemons). An `http://` URL is plaintext (a local grid on
//!   loopback).
//! - A server given a certificate and key serves TLS only (a plaintext client's connection fails),
//!   and with a client CA it admits only clients holding a certificate that CA signed.

use std::path::Path;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};

/// Environment variable naming the CA (PEM) clients verify servers against.
pub const CA_FILE_ENV: &str = "PIXELGRID_CA_FILE";
/// Environment variable naming a client certificate (PEM) for mutual TLS.
pub const CLIENT_CERT_ENV: &str = "PIXELGRID_TLS_CLIENT_CERT";
/// Environment variable naming the client certificate's key (PEM).
pub const CLIENT_KEY_ENV: &str = "PIXELGRID_TLS_CLIENT_KEY";

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

fn env_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(Into::into)
}

/// What a client presents and trusts over TLS.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// CA (PEM) to verify servers against; none means the system's roots.
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with its key.
    pub cert: Option<std::path::PathBuf>,
    /// The client certificate's key (PEM).
    pub key: Option<std::path::PathBuf>,
}

impl ClientTls {
    /// From `PIXELGRID_CA_FILE`, `PIXELGRID_TLS_CLIENT_CERT` and `PIXELGRID_TLS_CLIENT_KEY`.
    pub fn from_env() -> Self {
        Self {
            ca: env_path(CA_FILE_ENV),
            cert: env_path(CLIENT_CERT_ENV),
            key: env_path(CLIENT_KEY_ENV),
        }
    }

    /// The tonic settings for `url`; `None` for a plaintext (`http://`) URL.
    pub fn for_url(&self, url: &str) -> Result<Option<ClientTlsConfig>, String> {
        if !url.starts_with("https://") {
            return Ok(None);
        }
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca, "CA")?)),
            None => tls.with_native_roots(),
        };
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(
                    read(cert, "client certificate")?,
                    read(key, "client key")?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(format!(
                    "set both {CLIENT_CERT_ENV} and {CLIENT_KEY_ENV} for a client certificate, or neither"
                ));
            }
        }
        Ok(Some(tls))
    }
}

/// A channel to `url`: TLS for `https://` with the settings in the environment (see the
/// module docs), plaintext for `http://`.
pub async fn connect(url: &str) -> Result<Channel, String> {
    connect_with(url, &ClientTls::from_env()).await
}

/// A channel to `url` with explicit TLS settings.
pub async fn connect_with(url: &str, tls: &ClientTls) -> Result<Channel, String> {
    let mut endpoint =
        Endpoint::from_shared(url.to_owned()).map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    if let Some(tls) = tls.for_url(url)? {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("TLS settings for {url}: {e}"))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|e| format!("{url}: {e}{}", source_chain(&e)))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

/// Server TLS from a certificate chain and key (PEM files), admitting only clients with a
/// certificate signed by `client_ca` when it is given.
pub fn server_tls(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerTlsConfig, String> {
    let mut tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read(cert, "certificate")?,
            read(key, "key")?,
        ))
        // A client that never finishes its handshake does not hold a connection for ever.
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
    }
    Ok(tls)
}

/// A TLS acceptor for an HTTPS endpoint from a certificate chain and key (PEM files). The files
/// are read again when they change (looked at no more than every [`CERT_RECHECK`]), so a renewed
/// certificate is served without a restart; a renewal that does not load is logged and the
/// previous certificate kept.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    tls_acceptor_rechecking(cert, key, CERT_RECHECK)
}

/// [`tls_acceptor`], looking at the files for a renewal at most every `recheck`.
pub fn tls_acceptor_rechecking(
    cert: &Path,
    key: &Path,
    recheck: std::time::Duration,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use tokio_rustls::rustls;
    let resolver = ReloadingCert::load(cert, key, recheck)?;
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_cert_resolver(std::sync::Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// How often an HTTPS endpoint looks at its certificate files for a renewal.
pub const CERT_RECHECK: std::time::Duration = std::time::Duration::from_secs(10);

type CertifiedKey = std::sync::Arc<tokio_rustls::rustls::sign::CertifiedKey>;

/// A server certificate read from its files, and read again when they change.
#[derive(Debug)]
struct ReloadingCert {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    recheck: std::time::Duration,
    /// The certificate served, the files' modification times it was read at, and when they
    /// were last looked at.
    current: std::sync::RwLock<(
        CertifiedKey,
        Vec<Option<std::time::SystemTime>>,
        std::time::Instant,
    )>,
}

impl ReloadingCert {
    fn load(cert: &Path, key: &Path, recheck: std::time::Duration) -> Result<Self, String> {
        let stamps = Self::stamps(cert, key);
        let certified = Self::read(cert, key)?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            recheck,
            current: std::sync::RwLock::new((certified, stamps, std::time::Instant::now())),
        })
    }

    fn stamps(cert: &Path, key: &Path) -> Vec<Option<std::time::SystemTime>> {
        [cert, key]
            .iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    fn read(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("certificate {}: {e}", cert.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "certificate {}: no certificate in it",
                cert.display()
            ));
        }
        let key_der =
            PrivateKeyDer::from_pem_file(key).map_err(|e| format!("key {}: {e}", key.display()))?;
        let signing = tokio_rustls::rustls::crypto::ring::sign::any_supported_type(&key_der)
            .map_err(|e| format!("key {}: {e}", key.display()))?;
        let certified = tokio_rustls::rustls::sign::CertifiedKey::new(certs, signing);
        certified.keys_match().map_err(|e| {
            format!(
                "certificate {} with key {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
        Ok(std::sync::Arc::new(certified))
    }
}

impl tokio_rustls::rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(
        &self,
        _hello: tokio_rustls::rustls::server::ClientHello<'_>,
    ) -> Option<CertifiedKey> {
        let due = {
            let c = self.current.read().unwrap_or_else(|p| p.into_inner());
            (c.2.elapsed() >= self.recheck).then(|| c.1.clone())
        };
        if let Some(read_at) = due {
            let stamps = Self::stamps(&self.cert, &self.key);
            let renewed = (stamps != read_at).then(|| Self::read(&self.cert, &self.key));
            let mut c = self.current.write().unwrap_or_else(|p| p.into_inner());
            c.2 = std::time::Instant::now();
            match renewed {
                Some(Ok(certified)) => {
                    tracing::info!(cert = %self.cert.display(), "certificate renewed; serving the new one");
                    *c = (certified, stamps, c.2);
                }
                Some(Err(e)) => {
                    // The stamps stay as they were: the next check reads the files again (a
                    // renewal may still be half written).
                    tracing::warn!(error = %e, "the changed certificate does not load; keeping the previous one");
                }
                None => {}
            }
        }
        Some(std::sync::Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()).0,
        ))
    }
}

/// Longest a TLS handshake, or a request's headers, may take.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Most HTTPS connections served at once.
pub const MAX_HTTPS_CONNECTIONS: usize = 4096;

/// Serves `router` over HTTPS on `listener` until `shutdown`: a TLS handshake per connection
/// (a plaintext request gets no HTTP answer), then HTTP/1.1 or 2; the peer's address is
/// available to handlers as `ConnectInfo<SocketAddr>`.
pub async fn serve_https(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut shutdown = std::pin::pin!(shutdown);
    // Bounded connections; an idle or half-sent request is closed by the header timeout.
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_HTTPS_CONNECTIONS));
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or buffers: wait, then keep serving.
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let Ok(slot) = std::sync::Arc::clone(&slots).try_acquire_owned() else {
            continue; // Over the connection cap: drop it at once.
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = router
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        tokio::spawn(async move {
            let _slot = slot;
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
            let Ok(Ok(tls)) = handshake.await else {
                return;
            };
            let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            http.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT);
            // An HTTP/2 peer that stops answering pings is let go, so idle connections do not
            // hold the connection cap.
            http.http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(std::time::Duration::from_secs(20)))
                .keep_alive_timeout(HANDSHAKE_TIMEOUT);
            let _ = http
                .serve_connection(
                    TokioIo::new(tls),
                    hyper_util::service::TowerToHyperService::new(service),
                )
                .await;
        });
    }
}

/// A server's TLS files, as its command line gives them.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: Option<std::path::PathBuf>,
    /// Its key (PEM).
    pub key: Option<std::path::PathBuf>,
    /// CA whose client certificates are admitted (mutual TLS); none admits any client.
    pub client_ca: Option<std::path::PathBuf>,
}

impl TlsFiles {
    /// The gRPC server settings: `None` for plaintext (no certificate given).
    pub fn grpc(&self) -> Result<Option<ServerTlsConfig>, String> {
        match (&self.cert, &self.key) {
            (None, None) => {
                if self.client_ca.is_some() {
                    return Err("a client CA needs --tls-cert and --tls-key too".into());
                }
                Ok(None)
            }
            (Some(cert), Some(key)) => server_tls(cert, key, self.client_ca.as_deref()).map(Some),
            _ => Err("give both --tls-cert and --tls-key, or neither".into()),
        }
    }

    /// The HTTPS acceptor for an HTTP endpoint: `None` for plaintext.
    pub fn https(&self) -> Result<Option<tokio_rustls::TlsAcceptor>, String> {
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => tls_acceptor(cert, key).map(Some),
            (None, None) => Ok(None),
            _ => Err("give both --tls-cert and --tls-key, or neither".into()),
        }
    }
}

/// Connections accepted on `listener` with Nagle's algorithm off: a gRPC reply is a few small
/// frames, and waiting to coalesce them behind the peer's delayed ACK cost every call ~40 ms
/// (measured: 97 launches/s at 8 in flight with it on, against thousands with it off).
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    })
}

/// `request` carrying `authorization: Bearer <credential>` (a launch grant, session token, API
/// key or operator credential); an error when the credential cannot be a header value.
pub fn with_bearer<T>(request: T, credential: &str) -> Result<tonic::Request<T>, String> {
    let mut r = tonic::Request::new(request);
    let value = format!("Bearer {}", credential.trim())
        .parse()
        .map_err(|_| "the credential is not valid in a header".to_owned())?;
    r.metadata_mut().insert("authorization", value);
    Ok(r)
}
