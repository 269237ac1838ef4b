//! Play with scripted input: hold ArrowRight for a second, then W, and watch the events.
//!
//! `PIXELGRID_API_KEY=$(cat out/grid/studio-local.key) cargo run -p pixelgrid-client --example scripted_input -- http://127.0.0.1:50051`

#![allow(clippy::print_stdout)]

use pixelgrid_client::{Client, Event, InputEvent, LaunchOptions};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let orchestrator = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    // A studio's tool runs with its API key (deploy/run.sh writes out/grid/studio-local.key).
    let api_key = std::env::var("PIXELGRID_API_KEY").map_err(|_| "set PIXELGRID_API_KEY")?;
    let client = Client::connect(&orchestrator)
        .await?
        .with_api_key(&api_key, "example-player");
    let options = LaunchOptions {
        width: 640,
        height: 360,
        fps: 30,
        ..LaunchOptions::default()
    };
    let mut session = client.launch("arena", options).await?;
    session.next_frame().await.ok_or("no frame")?; // the input channel opens with the stream
    let input = session.input();
    for (code, hold) in [("ArrowRight", 1000), ("KeyW", 500)] {
        input.key(code, true).await?;
        tokio::time::sleep(Duration::from_millis(hold)).await;
        input.key(code, false).await?;
    }
    input
        .send(&[InputEvent::PointerMove { x: 0.5, y: 0.5 }])
        .await?;
    while let Some(event) = session.try_event() {
        if let Event::Reconnected {
            node_id, after_ms, ..
        } = &event
        {
            println!("moved to node {node_id} in {after_ms} ms");
        }
        println!("{event:?}");
    }
    println!("{:?}", session.stats());
    session.end().await;
    Ok(())
}
