//! A small JSON gateway over the control plane for browsers, and the player page, served by the
//! orchestrator. (Chosen over gRPC-web: two plain `fetch` calls, no generated JS client.)
//!
//! | method | path | what |
//! | --- | --- | --- |
//! Credentials travel as `Authorization: Bearer …`, with the same rules as the gRPC API (see
//! `orchestrator.proto`): `401` without a valid one, `403` for what is not the caller's, `429`
//! over a studio's limit or rate, `413` for bodies over 16 KiB.
//!
//! | method | path | who | what |
//! | --- | --- | --- | --- |
//! | GET | `/api/info` | anyone | `{"mode":"grid","demo_grants":bool}` — tells the page it is on a grid |
//! | GET | `/api/games` | anyone | `{games:[{id,version,name,modes,ready_nodes,free_slots}]}` — the grid's catalogue |
//! | POST | `/api/grants` | studio API key | `{player_id,game?,ttl_s?}` → `{grant, expires_unix_ms}` — for a studio's backend |
//! | POST | `/api/demo-grant` | anyone, only with `--demo-studio` | `{grant, expires_unix_ms}` for the demo studio (a local grid) |
//! | POST | `/api/sessions` | launch grant | `{game,version?,width,height,fps,region}` → `{launch_id, candidates:[{node_id, probe_url}]}`; `404` when no ready node has the game |
//! | POST | `/api/sessions/{launch_id}/choose` | the same grant | `{rtt_ms:{node_id:ms}, player_key?}` (`player_key`: hex ed25519 key that signs delivery receipts) → `{session_id, node_id, token, whep_url, rejected, ice_servers:[{urls, username, credential}]}` (TURN for this session only) |
//! | DELETE | `/api/sessions/{session_id}` | session token, its studio, operator | end it |
//! | GET | `/`, `/player.js` | the player page and browser SDK |
//! | GET | `/healthz`, `/readyz` | liveness; ready when the store answers (`503` with the reason otherwise) |
//! | GET | `/metrics` | Prometheus text: nodes, placements by outcome, placement latency, registrations, heartbeats, store errors |

use crate::Error;
use crate::auth::Caller;
use crate::grid::Grid;
use axum::Json;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use pixelgrid_proto::orchestrator::v1 as pb;
use pixelgrid_proto::types::v1 as types;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

const PLAYER_HTML: &str = include_str!("../../client-sdk/web/player.html");
const PLAYER_JS: &str = include_str!("../../client-sdk/web/pixelgrid-player.js");

struct ApiError(Error);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            Error::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
            Error::NotFound(_) | Error::GameUnavailable(_) => StatusCode::NOT_FOUND,
            Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
            Error::LimitReached(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::NoCapacity(_) | Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.0),
        )
            .into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

#[derive(Debug, Deserialize)]
struct LaunchBody {
    #[serde(default = "arena")]
    game: String,
    #[serde(default = "w")]
    width: u32,
    #[serde(default = "h")]
    height: u32,
    #[serde(default = "fps")]
    fps: u32,
    #[serde(default)]
    region: String,
    #[serde(default)]
    version: String,
}

fn arena() -> String {
    "arena".into()
}
fn w() -> u32 {
    1280
}
fn h() -> u32 {
    720
}
fn fps() -> u32 {
    60
}

#[derive(Debug, Deserialize)]
struct ChooseBody {
    rtt_ms: BTreeMap<String, u32>,
    /// The player's receipt key for the session, hex (32 bytes), optional.
    #[serde(default)]
    player_key: String,
}

#[derive(Debug, Deserialize)]
struct GrantBody {
    player_id: String,
    #[serde(default)]
    game: String,
    #[serde(default)]
    ttl_s: u32,
}

/// Largest JSON body the gateway reads.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

async fn caller(grid: &Grid, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let value = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError(Error::Unauthenticated(
                "the Authorization header is not text".into(),
            ))
        })?),
    };
    let credential = match value {
        None => None,
        Some(v) => Some(crate::auth::bearer(Some(v)).ok_or_else(|| {
            ApiError(Error::Unauthenticated(
                "Authorization must be `Bearer <credential>`".into(),
            ))
        })?),
    };
    Ok(grid.authenticate(credential).await?)
}

fn grant_json(r: &pb::CreateLaunchGrantResponse) -> Json<serde_json::Value> {
    Json(json!({ "grant": r.grant, "expires_unix_ms": r.expires_unix_ms }))
}

/// The gateway's routes.
pub fn router(grid: Arc<Grid>) -> axum::Router {
    axum::Router::new()
        .route("/", get(|| async { Html(PLAYER_HTML) }))
        .route(
            "/player.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], PLAYER_JS) }),
        )
        .route(
            "/api/info",
            get(|State(grid): State<Arc<Grid>>| async move {
                Json(json!({ "mode": "grid", "demo_grants": grid.demo_studio().is_some() }))
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(grid): State<Arc<Grid>>| async move {
                match grid.ready().await {
                    Ok(()) => (axum::http::StatusCode::OK, "ready\n".to_owned()),
                    Err(e) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, e + "\n"),
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(grid): State<Arc<Grid>>| async move {
                (
                    [(header::CONTENT_TYPE, pixelgrid_proto::metrics::CONTENT_TYPE)],
                    grid.metrics_text(),
                )
            }),
        )
        .route("/api/games", get(games))
        .route("/api/grants", post(grant))
        .route("/api/demo-grant", post(demo_grant))
        .route("/api/sessions", post(launch))
        .route("/api/sessions/{id}/choose", post(choose))
        .route("/api/sessions/{id}", delete(end))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(grid)
}

async fn games(State(grid): State<Arc<Grid>>) -> Result<Json<serde_json::Value>, ApiError> {
    let r = grid.list_games().await?;
    let games: Vec<_> = r
        .games
        .iter()
        .map(|g| {
            json!({
                "id": g.id, "version": g.version, "name": g.name, "modes": g.modes,
                "ready_nodes": g.ready_nodes, "free_slots": g.free_slots,
            })
        })
        .collect();
    Ok(Json(json!({ "games": games })))
}

async fn grant(
    State(grid): State<Arc<Grid>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Json(b): Json<GrantBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // A studio's backend mints for all its players from one address: its own launch budget
    // bounds it, not the per-address one.
    let _ = peer;
    let caller = caller(&grid, &headers).await?;
    let r = grid
        .create_launch_grant(
            &caller,
            pb::CreateLaunchGrantRequest {
                player_id: b.player_id,
                game: b.game,
                ttl_s: b.ttl_s,
            },
        )
        .await?;
    Ok(grant_json(&r))
}

async fn demo_grant(
    State(grid): State<Arc<Grid>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
) -> Result<Json<serde_json::Value>, ApiError> {
    grid.check_address_rate(peer.ip())?;
    Ok(grant_json(&grid.create_demo_grant().await?))
}

async fn launch(
    State(grid): State<Arc<Grid>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Json(b): Json<LaunchBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    grid.check_address_rate(peer.ip())?;
    let caller = caller(&grid, &headers).await?;
    let r = grid
        .create_session(
            &caller,
            pb::CreateSessionRequest {
                game: b.game,
                player_region: Some(types::Region { code: b.region }),
                constraints: Some(pb::LaunchConstraints {
                    mode: Some(types::VideoMode {
                        width_px: b.width,
                        height_px: b.height,
                        fps: b.fps,
                    }),
                    ..Default::default()
                }),
                max_candidates: 0,
                game_version: b.version,
            },
        )
        .await?;
    let candidates: Vec<_> = r
        .candidates
        .iter()
        .map(|c| json!({ "node_id": c.node_id.as_ref().map(|n| n.hex.clone()), "probe_url": c.probe_url }))
        .collect();
    Ok(Json(
        json!({ "launch_id": r.launch_id, "candidates": candidates }),
    ))
}

async fn choose(
    State(grid): State<Arc<Grid>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(b): Json<ChooseBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = caller(&grid, &headers).await?;
    let latencies = b
        .rtt_ms
        .into_iter()
        .map(|(node, rtt_ms)| pb::LatencySample {
            node_id: Some(types::NodeId { hex: node }),
            rtt_ms,
        })
        .collect();
    let player_key = match b.player_key.as_str() {
        "" => Vec::new(),
        h => pixelgrid_proto::token::unhex(h)
            .filter(|k| k.len() == 32)
            .ok_or_else(|| {
                ApiError(crate::grid::invalid(
                    "player_key",
                    "must be 64 hex digits (an ed25519 public key)",
                ))
            })?,
    };
    let r = grid
        .choose_node(
            &caller,
            pb::ChooseNodeRequest {
                launch_id: id,
                latencies,
                player_key,
            },
        )
        .await?;
    let session = r.session.unwrap_or_default();
    Ok(Json(json!({
        "session_id": session.session_id,
        "node_id": session.node_id.map(|n| n.hex),
        "token": r.session_token,
        "whep_url": r.whep_url,
        "rejected": r.rejected,
        "ice_servers": r.ice_servers.iter().map(|s| json!({
            "urls": s.urls, "username": s.username, "credential": s.credential,
        })).collect::<Vec<_>>(),
    })))
}

async fn end(
    State(grid): State<Arc<Grid>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let caller = caller(&grid, &headers).await?;
    grid.end_session(&caller, &id, "").await?;
    Ok(StatusCode::OK)
}
