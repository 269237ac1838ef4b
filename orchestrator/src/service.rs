//! The gRPC face of [`Grid`]: `pixelgrid.orchestrator.v1.Orchestrator`.

use crate::Error;
use crate::auth::Caller;
use crate::grid::{Grid, to_proto, usage_to_proto};
use crate::lifecycle::SessionState;
use crate::tenancy::studio_to_proto;
use pixelgrid_proto::orchestrator::v1 as pb;
use pixelgrid_proto::orchestrator::v1::orchestrator_server::Orchestrator;
use pixelgrid_proto::types::v1 as types;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Nodes in one `ListNodes` page unless the caller asks for fewer.
const DEFAULT_NODES_PAGE: u32 = 1_000;
/// The largest `ListNodes` page (a page must stay well under gRPC's 4 MiB message limit).
const MAX_NODES_PAGE: u32 = 5_000;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::NoCapacity(_) => Status::resource_exhausted(msg),
            Error::InvalidArgument { .. } => Status::invalid_argument(msg),
            Error::Unavailable(_) => Status::unavailable(msg),
            Error::Unauthenticated(_) => Status::unauthenticated(msg),
            Error::PermissionDenied(_) => Status::permission_denied(msg),
            Error::LimitReached(_) => Status::resource_exhausted(msg),
            Error::NotFound(_) | Error::GameUnavailable(_) => Status::not_found(msg),
            _ => Status::internal(msg),
        }
    }
}

/// The service; see the module docs.
#[derive(Debug, Clone)]
pub struct OrchestratorService {
    grid: Arc<Grid>,
}

impl OrchestratorService {
    /// A service over `grid`.
    pub fn new(grid: Arc<Grid>) -> Self {
        Self { grid }
    }
}

fn node_id(n: &Option<types::NodeId>) -> String {
    n.as_ref().map(|n| n.hex.clone()).unwrap_or_default()
}

impl OrchestratorService {
    /// The caller behind a request's `authorization` metadata.
    async fn caller<T>(&self, r: &Request<T>) -> Result<Caller, Status> {
        let value =
            match r.metadata().get("authorization") {
                None => None,
                Some(v) => Some(v.to_str().map_err(|_| {
                    Status::unauthenticated("the authorization metadata is not text")
                })?),
            };
        let credential = match value {
            None => None,
            Some(v) => Some(crate::auth::bearer(Some(v)).ok_or_else(|| {
                Status::unauthenticated("authorization must be `Bearer <credential>`")
            })?),
        };
        Ok(self.grid.authenticate(credential).await?)
    }
}

#[tonic::async_trait]
impl Orchestrator for OrchestratorService {
    async fn register_node(
        &self,
        r: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        Ok(Response::new(self.grid.register(r.into_inner()).await?))
    }

    type HeartbeatStream =
        Pin<Box<dyn Stream<Item = Result<pb::HeartbeatResponse, Status>> + Send>>;

    async fn heartbeat(
        &self,
        r: Request<Streaming<pb::HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        let mut inbound = r.into_inner();
        let grid = Arc::clone(&self.grid);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Ok(Some(hb)) = inbound.message().await {
                let reply = grid.heartbeat(hb).await.map_err(Status::from);
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn create_session(
        &self,
        r: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        let caller = self.caller(&r).await?;
        Ok(Response::new(
            self.grid.create_session(&caller, r.into_inner()).await?,
        ))
    }

    async fn choose_node(
        &self,
        r: Request<pb::ChooseNodeRequest>,
    ) -> Result<Response<pb::ChooseNodeResponse>, Status> {
        let caller = self.caller(&r).await?;
        Ok(Response::new(
            self.grid.choose_node(&caller, r.into_inner()).await?,
        ))
    }

    async fn get_session(
        &self,
        r: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let caller = self.caller(&r).await?;
        let id = r.into_inner().session_id;
        let s = self.grid.session_for(&caller, &id, "GetSession").await?;
        Ok(Response::new(to_proto(&s)))
    }

    async fn end_session(
        &self,
        r: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionResponse>, Status> {
        let caller = self.caller(&r).await?;
        let r = r.into_inner();
        let s = self
            .grid
            .end_session(&caller, &r.session_id, &r.reason)
            .await?;
        Ok(Response::new(pb::EndSessionResponse {
            session: Some(to_proto(&s)),
        }))
    }

    async fn list_nodes(
        &self,
        r: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let full_view = self.caller(&r).await? == Caller::Operator;
        let req = r.into_inner();
        let region = req.region_code;
        if region.len() > 32 {
            return Err(Status::invalid_argument(
                "invalid region_code: at most 32 characters",
            ));
        }
        if req.page_size > MAX_NODES_PAGE {
            return Err(Status::invalid_argument(format!(
                "invalid page_size: at most {MAX_NODES_PAGE} nodes in one page"
            )));
        }
        let page_size = match req.page_size {
            0 => DEFAULT_NODES_PAGE,
            n => n,
        } as usize;
        // The token is the last node id of the previous page (node ids are ordered and stable).
        let after = req.page_token;
        if after.len() > 128 {
            return Err(Status::invalid_argument(
                "invalid page_token: pass back the next_page_token of the previous page",
            ));
        }
        let mut records: Vec<_> = self
            .grid
            .registry()
            .await
            .map_err(Status::from)?
            .into_iter()
            .map(|(r, _)| r)
            .filter(|r| r.view.id > after && (region.is_empty() || r.view.region == region))
            .collect();
        records.sort_unstable_by(|a, b| a.view.id.cmp(&b.view.id));
        let next_page_token = if records.len() > page_size {
            records.truncate(page_size);
            records
                .last()
                .map(|r| r.view.id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        let mut nodes = Vec::new();
        for r in records {
            let status = if full_view {
                self.grid.status(&r.view.id).await?.unwrap_or_default()
            } else {
                Default::default()
            };
            let probe_url = r.probe_url();
            nodes.push(pb::NodeSummary {
                node_id: Some(types::NodeId {
                    hex: r.view.id.clone(),
                }),
                state: if r.view.ready {
                    pb::NodeState::Ready
                } else {
                    pb::NodeState::Draining
                } as i32,
                region: Some(types::Region {
                    code: r.view.region.clone(),
                }),
                capabilities: Some(types::NodeCapabilities {
                    games_installed: r.view.games.clone(),
                    games: r
                        .view
                        .offers
                        .iter()
                        .map(|(id, o)| types::GameVersion {
                            id: id.clone(),
                            version: o.version.clone(),
                            name: o.name.clone(),
                            modes: o.modes.clone(),
                        })
                        .collect(),
                    ..Default::default()
                }),
                whep_base_url: if full_view {
                    r.whep_base_url
                } else {
                    String::new()
                },
                probe_url,
                probe_address: r.probe_address,
                price: Some(types::Price {
                    micro_credits_per_minute: r.view.price,
                }),
                free_slots: r.view.capacity.saturating_sub(r.view.used),
                active_sessions: r.view.used,
                cpu_load_percent: status.cpu_load_percent,
                gpu: prost::Message::decode(status.gpu_pb.as_slice())
                    .ok()
                    .filter(|_| !status.gpu_pb.is_empty()),
                last_heartbeat_unix_ms: status.last_heartbeat_ms,
            });
        }
        Ok(Response::new(pb::ListNodesResponse {
            nodes,
            next_page_token,
        }))
    }

    async fn list_games(
        &self,
        _r: Request<pb::ListGamesRequest>,
    ) -> Result<Response<pb::ListGamesResponse>, Status> {
        Ok(Response::new(self.grid.list_games().await?))
    }

    async fn list_sessions(
        &self,
        r: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let caller = self.caller(&r).await?;
        let r = r.into_inner();
        let state =
            match pb::SessionState::try_from(r.state).unwrap_or(pb::SessionState::Unspecified) {
                pb::SessionState::Unspecified => None,
                pb::SessionState::Pending => Some(SessionState::Pending),
                pb::SessionState::Active => Some(SessionState::Active),
                pb::SessionState::Ended => Some(SessionState::Ended),
                pb::SessionState::Failed => Some(SessionState::Failed),
                pb::SessionState::Expired => Some(SessionState::Expired),
            };
        let sessions = self
            .grid
            .sessions_for(&caller, &r.node_id_hex, state)
            .await?
            .iter()
            .map(to_proto)
            .collect();
        Ok(Response::new(pb::ListSessionsResponse { sessions }))
    }

    async fn drain_node(
        &self,
        r: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::DrainNodeResponse>, Status> {
        self.caller(&r)
            .await?
            .require_operator("DrainNode")
            .inspect_err(|e| self.grid.metrics.count_refusal(e))?;
        let id = node_id(&r.into_inner().node_id);
        if id.is_empty() {
            return Err(Status::invalid_argument("invalid node_id: required"));
        }
        let rec = self.grid.set_ready(&id, false).await?;
        Ok(Response::new(pb::DrainNodeResponse {
            node: Some(pb::NodeSummary {
                node_id: Some(types::NodeId { hex: rec.view.id }),
                state: pb::NodeState::Draining as i32,
                ..Default::default()
            }),
        }))
    }

    async fn deregister_node(
        &self,
        r: Request<pb::DeregisterNodeRequest>,
    ) -> Result<Response<pb::DeregisterNodeResponse>, Status> {
        Ok(Response::new(self.grid.deregister(r.into_inner()).await?))
    }

    async fn undrain_node(
        &self,
        r: Request<pb::UndrainNodeRequest>,
    ) -> Result<Response<pb::UndrainNodeResponse>, Status> {
        self.caller(&r)
            .await?
            .require_operator("UndrainNode")
            .inspect_err(|e| self.grid.metrics.count_refusal(e))?;
        let id = node_id(&r.into_inner().node_id);
        if id.is_empty() {
            return Err(Status::invalid_argument("invalid node_id: required"));
        }
        let rec = self.grid.set_ready(&id, true).await?;
        Ok(Response::new(pb::UndrainNodeResponse {
            node: Some(pb::NodeSummary {
                node_id: Some(types::NodeId { hex: rec.view.id }),
                state: pb::NodeState::Ready as i32,
                ..Default::default()
            }),
        }))
    }

    async fn create_studio(
        &self,
        r: Request<pb::CreateStudioRequest>,
    ) -> Result<Response<pb::CreateStudioResponse>, Status> {
        let caller = self.caller(&r).await?;
        Ok(Response::new(
            self.grid.create_studio(&caller, r.into_inner()).await?,
        ))
    }

    async fn list_studios(
        &self,
        r: Request<pb::ListStudiosRequest>,
    ) -> Result<Response<pb::ListStudiosResponse>, Status> {
        let caller = self.caller(&r).await?;
        let studios = self.grid.list_studios(&caller).await?;
        Ok(Response::new(pb::ListStudiosResponse {
            studios: studios.iter().map(studio_to_proto).collect(),
        }))
    }

    async fn add_studio_key(
        &self,
        r: Request<pb::AddStudioKeyRequest>,
    ) -> Result<Response<pb::AddStudioKeyResponse>, Status> {
        let caller = self.caller(&r).await?;
        let studio = r.into_inner().studio_id;
        Ok(Response::new(
            self.grid.add_studio_key(&caller, &studio).await?,
        ))
    }

    async fn revoke_studio_key(
        &self,
        r: Request<pb::RevokeStudioKeyRequest>,
    ) -> Result<Response<pb::Studio>, Status> {
        let caller = self.caller(&r).await?;
        let r = r.into_inner();
        let s = self
            .grid
            .revoke_studio_key(&caller, &r.studio_id, &r.key_id)
            .await?;
        Ok(Response::new(studio_to_proto(&s)))
    }

    async fn set_studio_limits(
        &self,
        r: Request<pb::SetStudioLimitsRequest>,
    ) -> Result<Response<pb::Studio>, Status> {
        let caller = self.caller(&r).await?;
        let s = self.grid.set_studio_limits(&caller, r.into_inner()).await?;
        Ok(Response::new(studio_to_proto(&s)))
    }

    async fn create_launch_grant(
        &self,
        r: Request<pb::CreateLaunchGrantRequest>,
    ) -> Result<Response<pb::CreateLaunchGrantResponse>, Status> {
        let caller = self.caller(&r).await?;
        Ok(Response::new(
            self.grid
                .create_launch_grant(&caller, r.into_inner())
                .await?,
        ))
    }

    async fn list_usage(
        &self,
        r: Request<pb::ListUsageRequest>,
    ) -> Result<Response<pb::ListUsageResponse>, Status> {
        let caller = self.caller(&r).await?;
        let r = r.into_inner();
        let records = self
            .grid
            .usage(&caller, &r.studio_id, r.from_unix_ms, r.to_unix_ms)
            .await?;
        Ok(Response::new(pb::ListUsageResponse {
            records: records.iter().map(usage_to_proto).collect(),
        }))
    }
}
