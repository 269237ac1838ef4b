//! A minimal HTTP/1.1 client for the grid's own small requests (WHEP signalling in tests and the
//! SDK, the indexer's probes): one request per fresh connection, `Connection: close`, bounded in
//! time. Not a general client — no TLS, no redirects, no chunked bodies.

use std::net::SocketAddr;
use std::time::Duration;

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

/// Sends one request and reads the whole response (at most [`MAX_RESPONSE_BYTES`]) within
/// `timeout`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Response> {
    use std::io::{Error, ErrorKind};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req += &format!("{k}: {v}\r\n");
        }
        req += "\r\n";
        s.write_all(req.as_bytes()).await?;
        s.write_all(body).await?;
        let mut raw = Vec::new();
        (&mut s)
            .take(MAX_RESPONSE_BYTES + 1)
            .read_to_end(&mut raw)
            .await?;
        if raw.len() as u64 > MAX_RESPONSE_BYTES {
            return Err(Error::new(
                ErrorKind::InvalidData,
                format!("response longer than {MAX_RESPONSE_BYTES} bytes"),
            ));
        }
        Ok::<_, Error>(raw)
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
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_owned(),
    })
}
