//! A studio's backend in miniature: it holds the studio's API key and hands each of its players
//! a single-use launch grant — the API key itself never reaches a browser.
//!
//! `PIXELGRID_API_KEY=$(cat out/grid/studio-local.key) cargo run -p pixelgrid-client --example studio_backend`
//!
//! then, from the studio's page (served anywhere):
//!
//! ```js
//! const grant = async () => (await (await fetch("http://127.0.0.1:8090/grant", { method: "POST" })).json()).grant;
//! await player.play("http://ORCHESTRATOR:8000/api", { game: "arena", grant }, onEvent);
//! ```
//!
//! A real backend first checks who its player is (its own login) and passes that id as the
//! player id, so the studio's usage records name the player.

#![allow(clippy::print_stdout)]

use pixelgrid_client::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let orchestrator = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let api_key = std::env::var("PIXELGRID_API_KEY").map_err(|_| "set PIXELGRID_API_KEY")?;
    let client = Client::connect(&orchestrator)
        .await?
        .with_api_key(&api_key, "web-player");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8090").await?;
    println!("grants at http://{}/grant", listener.local_addr()?);
    let mut next_player = 0u64;
    loop {
        let (mut stream, _) = listener.accept().await?;
        let mut request = [0u8; 4096];
        let n = stream.read(&mut request).await.unwrap_or(0);
        let line = String::from_utf8_lossy(&request[..n]);
        let (status, body) = if line.starts_with("POST /grant ") {
            next_player += 1;
            match client.create_grant(&format!("web-{next_player}"), "").await {
                Ok(grant) => ("200 OK", format!("{{\"grant\":\"{grant}\"}}")),
                Err(e) => (
                    "502 Bad Gateway",
                    format!("{{\"error\":{:?}}}", e.to_string()),
                ),
            }
        } else if line.starts_with("OPTIONS ") {
            ("204 No Content", String::new())
        } else {
            ("404 Not Found", "{\"error\":\"POST /grant\"}".to_owned())
        };
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nAccess-Control-Allow-Origin: *\r\nAccess-Control-Allow-Methods: POST\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(reply.as_bytes()).await;
    }
}
