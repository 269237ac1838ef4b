//! Launch a game on the grid and save a few decoded frames as PNG.
//!
//! Run against a local grid (`deploy/run.sh`):
//! `PIXELGRID_API_KEY=$(cat out/grid/studio-local.key) cargo run -p pixelgrid-client --example launch_and_save -- http://127.0.0.1:50051 out/frames`

#![allow(clippy::print_stdout)]

use pixelgrid_client::{Client, LaunchOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let orchestrator = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "frames".into()));
    std::fs::create_dir_all(&dir)?;

    // A studio's tool runs with its API key (deploy/run.sh writes out/grid/studio-local.key).
    let api_key = std::env::var("PIXELGRID_API_KEY").map_err(|_| "set PIXELGRID_API_KEY")?;
    let client = Client::connect(&orchestrator)
        .await?
        .with_api_key(&api_key, "example-player");
    let mut session = client.launch("arena", LaunchOptions::default()).await?;
    println!("playing on node {}", session.node_id());
    for i in 0..5 {
        // Skip a second of frames between pictures.
        for _ in 0..60 {
            session.next_frame().await.ok_or("the session ended")?;
        }
        let frame = session.next_frame().await.ok_or("the session ended")?;
        let path = dir.join(format!("frame-{i}.png"));
        let mut png = png::Encoder::new(std::fs::File::create(&path)?, frame.width, frame.height);
        png.set_color(png::ColorType::Rgba);
        png.set_depth(png::BitDepth::Eight);
        png.write_header()?.write_image_data(&frame.data)?;
        println!(
            "saved {} ({:?} ms after capture)",
            path.display(),
            frame.capture_unix_ms.map(|c| frame.decoded_unix_ms - c)
        );
    }
    println!("{:?}", session.stats());
    session.end().await;
    Ok(())
}
