//! The node's HTTP face: WHEP signalling (draft-ietf-wish-whep), the dev-mode session endpoint
//! and player page, health and RTT probe.
//!
//! | method | path | what |
//! | --- | --- | --- |
//! | POST | `/whep/{session}` | SDP offer in (`application/sdp`, `Authorization: Bearer <token>`) → `201`, answer, `Location`, `Link` ICE servers |
//! | PATCH | `/whep/{session}/{viewer}` | trickle ICE (`application/trickle-ice-sdpfrag`) → `204` |
//! | DELETE | `/whep/{session}/{viewer}` | leave; the session ends with its last viewer → `200` |
//! | GET | `/sessions` | `--insecure-dev` only: live sessions (JSON); a production node lists no session ids (`/metrics` counts them) |
//! | GET | `/healthz`, `/probe` | liveness; RTT probe (`204`) |
//! | GET | `/readyz` | `200` while the node takes sessions, `503` while draining or full |
//! | GET | `/metrics` | Prometheus text: sessions, viewers, frames, bytes, encode time, refusals (per-session series are labelled with a digest of the id, never the id) |
//! | GET | `/challenge?nonce=<hex>` | an indexer's probe: `{node_id, signature}` over the nonce (identity key) |
//! | POST | `/dev/sessions` | `--insecure-dev` only: `{game,width,height,fps}` → `{session_id,token,whep_url}` |
//! | GET | `/`, `/player.js` | `--insecure-dev` only: the player page |

use super::StreamNode;
use crate::Error;
use crate::video::VideoMode;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use pixelgrid_proto::token::TokenError;
use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tower_http::cors::{Any, CorsLayer};

const PLAYER_HTML: &str = include_str!("../../../client-sdk/web/player.html");
const PLAYER_JS: &str = include_str!("../../../client-sdk/web/pixelgrid-player.js");
/// Largest SDP offer accepted.
const MAX_OFFER_BYTES: usize = 64 * 1024;
/// Largest trickle-ICE fragment (a handful of candidates is under 1 KiB).
const MAX_FRAGMENT_BYTES: usize = 16 * 1024;

/// The router for a node.
pub fn router(node: Arc<StreamNode>) -> axum::Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods(Any)
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::IF_MATCH,
        ])
        .expose_headers([header::LOCATION, header::LINK, header::ETAG]);
    let mut r = axum::Router::new()
        .route("/whep/{session}", post(whep_offer))
        .route(
            "/whep/{session}/{viewer}",
            axum::routing::patch(whep_patch).delete(whep_delete),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/probe", get(|| async { StatusCode::NO_CONTENT }))
        .route("/challenge", get(challenge))
        .route("/readyz", get(ready))
        .route(
            "/metrics",
            get(|State(node): State<Arc<StreamNode>>| async move {
                (
                    [(header::CONTENT_TYPE, pixelgrid_proto::metrics::CONTENT_TYPE)],
                    node.metrics().await,
                )
            }),
        );
    if node.dev_mode() {
        r = r
            .route("/dev/sessions", post(dev_session))
            // Session ids are bearer-protected resources' names: listed only on a dev node.
            .route("/sessions", get(list_sessions))
            .route("/", get(|| async { Html(PLAYER_HTML) }))
            .route(
                "/player.js",
                get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], PLAYER_JS) }),
            );
    }
    r.layer(DefaultBodyLimit::max(MAX_OFFER_BYTES))
        .layer(cors)
        .with_state(node)
}

async fn ready(State(node): State<Arc<StreamNode>>) -> (StatusCode, &'static str) {
    if node.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if node.free_slots().await == 0 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "every session slot is taken\n",
        )
    } else {
        (StatusCode::OK, "ready\n")
    }
}

#[derive(Deserialize)]
struct ChallengeQuery {
    nonce: String,
}

/// Largest probe nonce accepted, bytes.
const MAX_NONCE_BYTES: usize = 64;

async fn challenge(
    State(node): State<Arc<StreamNode>>,
    axum::extract::Query(q): axum::extract::Query<ChallengeQuery>,
) -> Result<Json<serde_json::Value>, Refusal> {
    let nonce = pixelgrid_proto::token::unhex(&q.nonce)
        .filter(|n| !n.is_empty() && n.len() <= MAX_NONCE_BYTES)
        .ok_or_else(|| {
            Refusal(
                StatusCode::BAD_REQUEST,
                format!("nonce must be 1 to {MAX_NONCE_BYTES} bytes of hex"),
            )
        })?;
    let (node_id, signature) = node.answer_probe(&nonce).ok_or_else(|| {
        Refusal(
            StatusCode::NOT_FOUND,
            "this node has no identity key (dev mode); run it with --orchestrator or --indexer"
                .into(),
        )
    })?;
    Ok(Json(serde_json::json!({
        "node_id": node_id,
        "signature": pixelgrid_proto::token::hex(&signature),
    })))
}

/// A refusal: status and a message a person can act on.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (
            self.0,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.1 + "\n",
        )
            .into_response()
    }
}

impl Refusal {
    fn counted(node: &StreamNode, status: StatusCode, message: impl Into<String>) -> Self {
        let c = &node.rejects;
        match status {
            StatusCode::UNAUTHORIZED => &c.unauthorized,
            StatusCode::FORBIDDEN => &c.forbidden,
            StatusCode::NOT_FOUND => &c.not_found,
            StatusCode::BAD_GATEWAY => &c.game_failed,
            StatusCode::SERVICE_UNAVAILABLE => &c.unavailable,
            StatusCode::PAYLOAD_TOO_LARGE => &c.too_large,
            _ => &c.bad_request,
        }
        .fetch_add(1, Ordering::Relaxed);
        let message = message.into();
        tracing::info!(%status, %message, "request refused");
        Refusal(status, message)
    }

    fn from_error(node: &StreamNode, e: Error) -> Self {
        let status = match &e {
            Error::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
            Error::UnknownGame { .. } => StatusCode::NOT_FOUND,
            // The node is fine; the studio's game is not.
            Error::GameFailed { .. } => StatusCode::BAD_GATEWAY,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::counted(node, status, e.to_string())
    }
}

fn bearer(
    node: &StreamNode,
    headers: &HeaderMap,
    session: &str,
) -> Result<pixelgrid_proto::token::SessionClaims, Refusal> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            Refusal::counted(
                node,
                StatusCode::UNAUTHORIZED,
                "missing `Authorization: Bearer <session token>`",
            )
        })?;
    node.authorize(token.trim(), session).map_err(|e| {
        let status = match e {
            TokenError::WrongNode(_)
            | TokenError::WrongSession(_)
            | TokenError::SessionEnded(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        Refusal::counted(node, status, e.to_string())
    })
}

/// The bearer token of a request that passed [`bearer`].
fn bearer_token(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
        .unwrap_or_default()
}

fn content_type_is(headers: &HeaderMap, want: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn whep_offer(
    State(node): State<Arc<StreamNode>>,
    Path(session): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    if !valid_id(&session) {
        return Err(Refusal::counted(
            &node,
            StatusCode::NOT_FOUND,
            "no such session",
        ));
    }
    if !content_type_is(&headers, "application/sdp") {
        return Err(Refusal::counted(
            &node,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the offer must be sent as Content-Type: application/sdp",
        ));
    }
    let claims = bearer(&node, &headers, &session)?;
    let offer = String::from_utf8(body.to_vec()).map_err(|_| {
        Refusal::counted(&node, StatusCode::BAD_REQUEST, "the SDP offer is not UTF-8")
    })?;
    if !offer.starts_with("v=0") {
        return Err(Refusal::counted(
            &node,
            StatusCode::BAD_REQUEST,
            "malformed SDP offer: it must start with `v=0`",
        ));
    }
    let (viewer, answer) = node
        .add_viewer(claims, &bearer_token(&headers), offer)
        .await
        .map_err(|e| Refusal::from_error(&node, e))?;
    let mut response = (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/sdp")],
        answer,
    )
        .into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("/whep/{session}/{viewer}")) {
        h.insert(header::LOCATION, v);
    }
    for s in &node.settings.peer.ice_servers {
        let mut link = format!("<{}>; rel=\"ice-server\"", s.url);
        if !s.username.is_empty() {
            link += &format!(
                "; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                s.username, s.credential
            );
        }
        if let Ok(v) = HeaderValue::from_str(&link) {
            h.append(header::LINK, v);
        }
    }
    Ok(response)
}

async fn whep_patch(
    State(node): State<Arc<StreamNode>>,
    Path((session, viewer)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, Refusal> {
    bearer(&node, &headers, &session)?;
    if !content_type_is(&headers, "application/trickle-ice-sdpfrag") {
        return Err(Refusal::counted(
            &node,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "use Content-Type: application/trickle-ice-sdpfrag",
        ));
    }
    if body.len() > MAX_FRAGMENT_BYTES {
        return Err(Refusal::counted(
            &node,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("SDP fragment over {MAX_FRAGMENT_BYTES} bytes"),
        ));
    }
    let frag = std::str::from_utf8(&body).map_err(|_| {
        Refusal::counted(&node, StatusCode::BAD_REQUEST, "SDP fragment is not UTF-8")
    })?;
    match node.add_candidates(&session, &viewer, frag).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(Refusal::counted(
            &node,
            StatusCode::NOT_FOUND,
            "no such viewer",
        )),
        Err(e) => Err(Refusal::from_error(&node, e)),
    }
}

async fn whep_delete(
    State(node): State<Arc<StreamNode>>,
    Path((session, viewer)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, Refusal> {
    bearer(&node, &headers, &session)?;
    if node
        .remove_viewer(&session, &viewer, "player ended it")
        .await
    {
        Ok(StatusCode::OK)
    } else {
        Err(Refusal::counted(
            &node,
            StatusCode::NOT_FOUND,
            "no such viewer",
        ))
    }
}

async fn list_sessions(State(node): State<Arc<StreamNode>>) -> impl IntoResponse {
    Json(node.sessions().await)
}

#[derive(Debug, Deserialize)]
struct DevRequest {
    #[serde(default = "default_game")]
    game: String,
    #[serde(default = "default_width")]
    width: u32,
    #[serde(default = "default_height")]
    height: u32,
    #[serde(default = "default_fps")]
    fps: u32,
}

fn default_game() -> String {
    "arena".into()
}
fn default_width() -> u32 {
    1280
}
fn default_height() -> u32 {
    720
}
fn default_fps() -> u32 {
    60
}

async fn dev_session(
    State(node): State<Arc<StreamNode>>,
    body: Bytes,
) -> Result<Response, Refusal> {
    let req: DevRequest = if body.is_empty() {
        serde_json::from_str("{}").expect("defaults")
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            Refusal::counted(&node, StatusCode::BAD_REQUEST, format!("bad JSON: {e}"))
        })?
    };
    let mode = VideoMode::new(req.width, req.height, req.fps)
        .map_err(|e| Refusal::from_error(&node, e))?;
    let dev = node
        .dev_session(&req.game, mode)
        .map_err(|e| Refusal::from_error(&node, e))?;
    Ok((StatusCode::CREATED, Json(dev)).into_response())
}
