//! A minimal HTTP/1.1 client for the grid's own small requests (WHEP signalling in the SDK and
//! tests, RTT probes, the indexer's challenges of nodes): one request per fresh connection,
//! `Connection: close`, bounded in time and size. `https://` targets speak TLS (rustls), verifying
//! the server against `PIXELGRID_CA_FILE` when set, else the system's roots — the same trust as
//! the gRPC clients ([`crate::transport`]). Not a general client: no redirects, no chunked bodies.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;

/// A response: status, lower-cased header names with their values, body as text.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body (lossy UTF-8).
    pub body: String,
}

/// Largest response read (an SDP answer is a few KiB; a probe answer a few bytes): a peer that
/// sends more is cut off with an error instead of filling memory.
pub const MAX_RESPONSE_BYTES: u64 = 1024 * 1024;

/// Where a request goes: an address, and for `https://` the name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The server's socket address (the first its name resolved to).
    pub addr: SocketAddr,
    /// Every address its name resolved to, tried in order.
    addrs: Vec<SocketAddr>,
    /// `host[:port]` as the URL gave it (the `Host` header).
    host: String,
    /// The server name to verify, for TLS.
    tls: Option<rustls::pki_types::ServerName<'static>>,
}

impl Target {
    /// A plaintext target at `addr`.
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            addrs: vec![addr],
            host: addr.to_string(),
            tls: None,
        }
    }

    /// Every address its name resolved to, in the order requests try them.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Whether requests to it speak TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The target of `http(s)://host[:port]/path` (the port defaults to the scheme's), with the
    /// path (`/` when none). The host is resolved now.
    pub async fn from_url(url: &str) -> std::io::Result<(Self, String)> {
        use std::io::{Error, ErrorKind};
        let bad = |why: &str| Error::new(ErrorKind::InvalidInput, format!("{url:?}: {why}"));
        let (rest, tls, port) = if let Some(r) = url.strip_prefix("https://") {
            (r, true, 443)
        } else if let Some(r) = url.strip_prefix("http://") {
            (r, false, 80)
        } else {
            return Err(bad("only http:// and https:// URLs are supported"));
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("no host"));
        }
        // `[v6]:port`, `host:port`, or a bare host.
        let (name, with_port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() && !p.contains(']') => (
                h.trim_start_matches('[').trim_end_matches(']'),
                authority.to_owned(),
            ),
            _ => (
                authority.trim_start_matches('[').trim_end_matches(']'),
                format!("{authority}:{port}"),
            ),
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&with_port)
            .await
            .map_err(|e| bad(&e.to_string()))?
            .collect();
        let addr = *addrs
            .first()
            .ok_or_else(|| bad("the host does not resolve"))?;
        let tls = if tls {
            Some(
                rustls::pki_types::ServerName::try_from(name.to_owned())
                    .map_err(|e| bad(&format!("not a server name: {e}")))?,
            )
        } else {
            None
        };
        Ok((
            Self {
                addr,
                addrs,
                host: authority.to_owned(),
                tls,
            },
            format!("/{path}"),
        ))
    }
}

type SharedConfig = Result<std::sync::Arc<rustls::ClientConfig>, String>;

/// The TLS settings every `https://` request uses, made once.
static CLIENT_CONFIG: std::sync::OnceLock<SharedConfig> = std::sync::OnceLock::new();

/// Client settings trusting the CA in `ca` (PEM), or the system's roots.
fn make_config(ca: Option<&std::path::Path>) -> SharedConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(ca) => {
            for cert in CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("CA file {}: {e}", ca.display()))?
            {
                roots.add(cert).map_err(|e| e.to_string())?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// Trusts the CA in `ca` (PEM) for this process's `https://` requests instead of what
/// `PIXELGRID_CA_FILE` says (for a process given its CA another way, like a test). Refused once
/// a TLS request has been made.
pub fn trust_ca_file(ca: &std::path::Path) -> std::io::Result<()> {
    let config = make_config(Some(ca)).map_err(std::io::Error::other)?;
    CLIENT_CONFIG
        .set(Ok(config))
        .map_err(|_| std::io::Error::other("TLS settings are already in use"))
}

/// The TLS settings: from `PIXELGRID_CA_FILE` when set, else the system's roots.
fn client_config() -> std::io::Result<std::sync::Arc<rustls::ClientConfig>> {
    CLIENT_CONFIG
        .get_or_init(|| {
            let ca = std::env::var_os(crate::transport::CA_FILE_ENV).filter(|v| !v.is_empty());
            make_config(ca.as_deref().map(std::path::Path::new))
        })
        .clone()
        .map_err(|e| std::io::Error::other(format!("TLS settings: {e}")))
}

/// Sends one plaintext request to `addr` and reads the whole response (at most
/// [`MAX_RESPONSE_BYTES`]) within `timeout`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Response> {
    request_to(&Target::plain(addr), method, path, headers, body, timeout).await
}

/// Sends one request to `target` (TLS for an `https://` one) and reads the whole response (at
/// most [`MAX_RESPONSE_BYTES`]) within `timeout`.
pub async fn request_to(
    target: &Target,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Response> {
    use std::io::{Error, ErrorKind};
    let unsafe_text = |s: &str| s.bytes().any(|b| b.is_ascii_control() || b == b' ');
    if unsafe_text(method)
        || unsafe_text(path)
        || headers.iter().any(|(k, v)| {
            unsafe_text(k) || k.contains(':') || v.bytes().any(|b| b.is_ascii_control())
        })
    {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "a method, path or header with spaces or control characters",
        ));
    }
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        target.host,
        body.len()
    );
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    let mut request = req.into_bytes();
    request.extend_from_slice(body);
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(&target.addrs[..]).await?;
        match &target.tls {
            None => exchange(tcp, &request).await,
            Some(name) => {
                let tls = tokio_rustls::TlsConnector::from(client_config()?)
                    .connect(name.clone(), tcp)
                    .await?;
                exchange(tls, &request).await
            }
        }
    };
    let raw = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Error::new(ErrorKind::TimedOut, format!("no answer within {timeout:?}")))??;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Error::new(ErrorKind::InvalidData, "no HTTP status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    // A connection cut short (possible over TLS without close_notify) is not a whole answer.
    let promised = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    if promised.is_some_and(|n| body.len() < n) {
        return Err(Error::new(
            ErrorKind::UnexpectedEof,
            "the response ended before its Content-Length",
        ));
    }
    Ok(Response {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// Writes `request` and reads the response to its end (the server closes the connection).
async fn exchange(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    request: &[u8],
) -> std::io::Result<Vec<u8>> {
    stream.write_all(request).await?;
    stream.flush().await?;
    let mut raw = Vec::new();
    let read = (&mut stream)
        .take(MAX_RESPONSE_BYTES + 1)
        .read_to_end(&mut raw)
        .await;
    // A TLS peer that closes without close_notify still sent its whole answer.
    match read {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    if raw.len() as u64 > MAX_RESPONSE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("response longer than {MAX_RESPONSE_BYTES} bytes"),
        ));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls_name_their_scheme_host_port_and_path() {
        let (t, path) = Target::from_url("http://127.0.0.1:8081/whep/s1")
            .await
            .unwrap();
        assert_eq!(
            (t.addr.to_string(), path.as_str(), t.is_tls()),
            ("127.0.0.1:8081".into(), "/whep/s1", false)
        );
        let (t, path) = Target::from_url("https://localhost:8443").await.unwrap();
        assert_eq!(
            (t.addr.port(), path.as_str(), t.is_tls()),
            (8443, "/", true)
        );
        let (t, _) = Target::from_url("https://[::1]/probe").await.unwrap();
        assert_eq!(
            (t.addr.to_string().as_str(), t.is_tls()),
            ("[::1]:443", true)
        );
        for bad in [
            "ftp://x/",
            "http:///x",
            "http://user@host/",
            "https://no-such-host.invalid/",
        ] {
            assert!(Target::from_url(bad).await.is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn nothing_that_could_split_the_request_is_sent() {
        let t = Target::plain("127.0.0.1:9".parse().unwrap());
        let d = Duration::from_millis(100);
        for (path, headers) in [
            ("/x\r\nEvil: 1", vec![]),
            ("/a b", vec![]),
            ("/", vec![("X", "1\r\nEvil: 1")]),
            ("/", vec![("X: Y", "1")]),
        ] {
            let e = request_to(&t, "GET", path, &headers, b"", d)
                .await
                .unwrap_err();
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::InvalidInput,
                "{path} {headers:?}"
            );
        }
    }
}
