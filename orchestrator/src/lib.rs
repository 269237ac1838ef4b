//! PixelGrid's control plane: where sessions go and who holds which slot.
//!
//! - [`placement`]: the placement policy, clock-free and I/O-free.
//! - [`store`]: etcd or an embedded store behind one [`store::Store`] trait.
//! - [`slots`]: atomic slot reservation on a node — no two sessions ever hold the same slot.
//! - [`lifecycle`]: a session's state machine, clock-free.
//! - [`grid`]: the control plane's operations; [`service`]: its gRPC face; [`leader`]: which
//!   replica runs the sweeps.
//! - [`studios`]: tenants' keys and limits, clock-free; [`auth`]: who may call what;
//!   [`tenancy`]: the studio operations over the store (grants, limits at launch, usage).

pub mod auth;
pub mod beats;
pub mod bench;
pub mod bench_launch;
pub mod cache;
mod error;
pub mod gateway;
pub mod grid;
pub mod leader;
pub mod lifecycle;
pub mod placement;
pub mod service;
pub mod slots;
pub mod store;
pub mod studios;
pub mod tenancy;
pub mod turn;

pub use error::{Error, Result};

/// Largest gRPC request the orchestrator decodes (a registration with its games is a few KiB).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Calls in flight at once on one connection.
pub const MAX_CALLS_PER_CONNECTION: usize = 256;

/// Serves the orchestrator API and the standard gRPC health service on `listener` until
/// `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    grid: std::sync::Arc<grid::Grid>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::result::Result<(), tonic::transport::Error> {
    serve_with_tls(listener, grid, None, shutdown).await
}

/// Like [`serve`], over TLS when `tls` is given (see `pixelgrid_proto::transport::server_tls`):
/// then plaintext clients are refused.
pub async fn serve_with_tls(
    listener: tokio::net::TcpListener,
    grid: std::sync::Arc<grid::Grid>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::result::Result<(), tonic::transport::Error> {
    use pixelgrid_proto::orchestrator::v1::orchestrator_server::OrchestratorServer;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<OrchestratorServer<service::OrchestratorService>>()
        .await;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    // A dead peer's connection is noticed and closed.
    builder = builder.http2_keepalive_interval(Some(std::time::Duration::from_secs(30)));
    builder
        // A client holds at most this many calls at once per connection (a node's heartbeat
        // stream is one), and messages are bounded: the largest real one is a registration.
        .concurrency_limit_per_connection(MAX_CALLS_PER_CONNECTION)
        .max_concurrent_streams(MAX_CALLS_PER_CONNECTION as u32)
        .add_service(health)
        .add_service(
            OrchestratorServer::new(service::OrchestratorService::new(grid))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(pixelgrid_proto::transport::incoming(listener), shutdown)
        .await
}

/// Serves the JSON gateway and player page on `listener` until `shutdown` completes.
pub async fn serve_gateway(
    listener: tokio::net::TcpListener,
    grid: std::sync::Arc<grid::Grid>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        gateway::router(grid).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
