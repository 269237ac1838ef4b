//! The grid's studio operations: turning a credential into a [`Caller`], studio
//! administration, launch grants, limits at launch time and metered usage. The rules live in
//! [`crate::studios`] and [`crate::auth`]; this is the part that reads and writes the store.

use crate::auth::{Caller, OPERATOR_PREFIX};
use crate::grid::{
    Grid, UsageRecord, invalid, now_ms, random_id, running_prefix, seat_prefix, studio_key,
    usage_day_prefix, usage_studio_prefix,
};
use crate::slots::SeatPool;
use crate::store::{Compare, Op};
use crate::studios::{self, KeyRecord, Limits, StudioRecord};
use crate::{Error, Result};
use pixelgrid_proto::orchestrator::v1 as pb;
use pixelgrid_proto::token::{LaunchGrantClaims, format_rfc3339};
use pixelgrid_proto::types::v1 as types;

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| Error::Unavailable(format!("no randomness: {e}")))?;
    Ok(b)
}

fn limits_from(l: Option<&pb::StudioLimits>) -> Limits {
    let l = l.cloned().unwrap_or_default();
    let mode = l.max_mode.unwrap_or_default();
    Limits {
        max_concurrent: l.max_concurrent_sessions,
        max_minutes_per_day: l.max_minutes_per_day,
        max_width: mode.width_px,
        max_height: mode.height_px,
        max_fps: mode.fps,
        max_price: l.max_micro_credits_per_minute,
    }
}

/// A studio in the contract's form (key hashes never leave the orchestrator).
pub fn studio_to_proto(s: &StudioRecord) -> pb::Studio {
    pb::Studio {
        studio_id: s.id.clone(),
        name: s.name.clone(),
        games: s.games.clone(),
        limits: Some(pb::StudioLimits {
            max_concurrent_sessions: s.limits.max_concurrent,
            max_minutes_per_day: s.limits.max_minutes_per_day,
            max_mode: Some(types::VideoMode {
                width_px: s.limits.max_width,
                height_px: s.limits.max_height,
                fps: s.limits.max_fps,
            }),
            max_micro_credits_per_minute: s.limits.max_price,
        }),
        keys: s
            .keys
            .iter()
            .map(|k| pb::StudioKey {
                key_id: k.id.clone(),
                created_unix_ms: k.created_ms,
                revoked_unix_ms: k.revoked_ms,
            })
            .collect(),
        created_unix_ms: s.created_ms,
    }
}

fn check_games(games: &[String]) -> Result<()> {
    if games.len() > studios::MAX_GAMES || games.iter().any(|g| g.is_empty() || g.len() > 64) {
        return Err(invalid(
            "games",
            format!("at most {} game ids of 1–64 characters", studios::MAX_GAMES),
        ));
    }
    Ok(())
}

impl Grid {
    /// Who holds `bearer` (the credential of an `authorization: Bearer …` value; `None` when
    /// there is none). A credential that is present but does not verify is refused here, so
    /// a wrong key never falls back to anonymous.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Caller> {
        let r = self.authenticate_inner(bearer).await;
        if let Err(e) = &r {
            self.metrics.count_refusal(e);
        }
        r
    }

    async fn authenticate_inner(&self, bearer: Option<&str>) -> Result<Caller> {
        let Some(credential) = bearer else {
            return Ok(Caller::Anonymous);
        };
        if credential.len() > pixelgrid_proto::token::MAX_TOKEN_LEN {
            return Err(Error::Unauthenticated("credential too long".into()));
        }
        if credential.starts_with(OPERATOR_PREFIX) {
            let ok = self.operator_sha256.as_ref().is_some_and(|h| {
                studios::constant_time_eq(studios::sha256_hex(credential).as_bytes(), h.as_bytes())
            });
            return if ok {
                Ok(Caller::Operator)
            } else {
                Err(Error::Unauthenticated(
                    "the operator credential does not match this orchestrator's".into(),
                ))
            };
        }
        if credential.starts_with(studios::API_KEY_PREFIX) {
            // One answer whatever was wrong, so nobody learns which studios and key ids exist.
            let refused = |why: &str| {
                tracing::info!(%why, "API key refused");
                Error::Unauthenticated(
                    "API key refused (unknown, revoked or mistyped; keys look like pgk_<studio>_<id>_<secret>)".into(),
                )
            };
            let (studio, _) =
                studios::parse_api_key(credential).ok_or_else(|| refused("malformed"))?;
            let record = self
                .studio(studio)
                .await?
                .ok_or_else(|| refused("no such studio"))?;
            record.authenticate(credential).map_err(|e| refused(&e))?;
            return Ok(Caller::Studio(record.id));
        }
        if credential.starts_with("v4.public.") {
            let now_s = now_ms() / 1000;
            if let Ok(grant) = self.verifier.verify_grant(credential, now_s) {
                return Ok(Caller::Player(grant));
            }
            return match self.verifier.verify(credential, now_s) {
                Ok(claims) => Ok(Caller::SessionHolder(claims)),
                Err(e) => Err(Error::Unauthenticated(format!(
                    "launch grant or session token refused: {e}"
                ))),
            };
        }
        Err(Error::Unauthenticated(
            "unrecognised credential: send a launch grant, session token, studio API key (pgk_…) or the operator credential (pgo_…)".into(),
        ))
    }

    /// A studio's record.
    pub async fn studio(&self, id: &str) -> Result<Option<StudioRecord>> {
        if studios::check_studio_id(id).is_err() {
            return Ok(None);
        }
        Ok(self
            .store
            .get(&studio_key(id))
            .await?
            .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
    }

    /// Changes a studio with `f`, atomically against concurrent changes.
    async fn update_studio(
        &self,
        id: &str,
        mut f: impl FnMut(&mut StudioRecord) -> Result<()>,
    ) -> Result<StudioRecord> {
        for _ in 0..8 {
            let kv = self
                .store
                .get(&studio_key(id))
                .await?
                .ok_or_else(|| Error::NotFound(format!("studio {id}")))?;
            let mut record: StudioRecord =
                serde_json::from_slice(&kv.value).map_err(|e| Error::Store(e.to_string()))?;
            f(&mut record)?;
            let done = self
                .store
                .txn(
                    vec![Compare::ModRevision(studio_key(id), kv.mod_revision)],
                    vec![Op::Put {
                        key: studio_key(id),
                        value: serde_json::to_vec(&record).expect("serialisable"),
                        lease: 0,
                    }],
                )
                .await?;
            if done.succeeded {
                return Ok(record);
            }
        }
        Err(Error::Unavailable(format!(
            "studio {id} kept changing under us; try again"
        )))
    }

    /// Operators: a new studio with its first API key (returned once).
    pub async fn create_studio(
        &self,
        caller: &Caller,
        req: pb::CreateStudioRequest,
    ) -> Result<pb::CreateStudioResponse> {
        caller
            .require_operator("CreateStudio")
            .inspect_err(|e| self.metrics.count_refusal(e))?;
        studios::check_studio_id(&req.studio_id).map_err(|e| invalid("studio_id", e))?;
        if req.name.chars().count() > 80 {
            return Err(invalid("name", "at most 80 characters"));
        }
        check_games(&req.games)?;
        let now = now_ms();
        let (api_key, key) = studios::new_api_key(&req.studio_id, &random()?, now);
        let record = StudioRecord {
            v: 1,
            id: req.studio_id.clone(),
            name: if req.name.is_empty() {
                req.studio_id.clone()
            } else {
                req.name
            },
            games: req.games,
            limits: limits_from(req.limits.as_ref()),
            keys: vec![key],
            created_ms: now,
        };
        let created = self
            .store
            .txn(
                vec![Compare::ModRevision(studio_key(&record.id), 0)],
                vec![Op::Put {
                    key: studio_key(&record.id),
                    value: serde_json::to_vec(&record).expect("serialisable"),
                    lease: 0,
                }],
            )
            .await?;
        if !created.succeeded {
            return Err(invalid(
                "studio_id",
                format!("studio {} already exists", record.id),
            ));
        }
        tracing::info!(studio = %record.id, "studio created");
        Ok(pb::CreateStudioResponse {
            studio: Some(studio_to_proto(&record)),
            api_key,
        })
    }

    /// Operators: every studio.
    pub async fn list_studios(&self, caller: &Caller) -> Result<Vec<StudioRecord>> {
        caller
            .require_operator("ListStudios")
            .inspect_err(|e| self.metrics.count_refusal(e))?;
        Ok(self
            .store
            .range(&studio_key(""))
            .await?
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect())
    }

    /// Operators: a further key for a studio (rotation); the key is returned once.
    pub async fn add_studio_key(
        &self,
        caller: &Caller,
        studio: &str,
    ) -> Result<pb::AddStudioKeyResponse> {
        caller
            .require_operator("AddStudioKey")
            .inspect_err(|e| self.metrics.count_refusal(e))?;
        let (api_key, key) = studios::new_api_key(studio, &random()?, now_ms());
        let key_id = key.id.clone();
        self.update_studio(studio, |s| {
            if s.keys.len() >= studios::MAX_KEYS {
                return Err(Error::LimitReached(format!(
                    "studio {studio} holds {} keys; revoke and remove old ones first",
                    studios::MAX_KEYS
                )));
            }
            s.keys.push(key.clone());
            Ok(())
        })
        .await?;
        tracing::info!(%studio, key = %key_id, "studio key added");
        Ok(pb::AddStudioKeyResponse { key_id, api_key })
    }

    /// Operators: revokes a key; it stops working at once (every call reads the record).
    pub async fn revoke_studio_key(
        &self,
        caller: &Caller,
        studio: &str,
        key_id: &str,
    ) -> Result<StudioRecord> {
        caller
            .require_operator("RevokeStudioKey")
            .inspect_err(|e| self.metrics.count_refusal(e))?;
        let now = now_ms();
        let r = self
            .update_studio(studio, |s| {
                let k: &mut KeyRecord =
                    s.keys.iter_mut().find(|k| k.id == key_id).ok_or_else(|| {
                        Error::NotFound(format!("key {key_id} of studio {studio}"))
                    })?;
                if k.revoked_ms == 0 {
                    k.revoked_ms = now;
                }
                Ok(())
            })
            .await?;
        tracing::info!(%studio, key = %key_id, "studio key revoked");
        Ok(r)
    }

    /// Operators: replaces a studio's limits (and games, when asked).
    pub async fn set_studio_limits(
        &self,
        caller: &Caller,
        req: pb::SetStudioLimitsRequest,
    ) -> Result<StudioRecord> {
        caller
            .require_operator("SetStudioLimits")
            .inspect_err(|e| self.metrics.count_refusal(e))?;
        check_games(&req.games)?;
        let limits = limits_from(req.limits.as_ref());
        self.update_studio(&req.studio_id, |s| {
            s.limits = limits;
            if req.set_games {
                s.games = req.games.clone();
            }
            Ok(())
        })
        .await
    }

    /// A studio's backend mints a single-use launch grant for one of its players.
    pub async fn create_launch_grant(
        &self,
        caller: &Caller,
        req: pb::CreateLaunchGrantRequest,
    ) -> Result<pb::CreateLaunchGrantResponse> {
        let studio = caller
            .require_studio("CreateLaunchGrant")
            .inspect_err(|e| self.metrics.count_refusal(e))?
            .to_owned();
        self.mint_grant(&studio, req).await
    }

    /// The demo page's grant: anonymous players of a local grid launch as the demo studio.
    pub async fn create_demo_grant(&self) -> Result<pb::CreateLaunchGrantResponse> {
        let studio = self.demo_studio.clone().ok_or_else(|| {
            Error::PermissionDenied(
                "this orchestrator hands out no demo grants; a studio's backend mints grants with its API key".into(),
            )
        })?;
        let player = format!("demo-{}", &random_id()[..8]);
        self.mint_grant(
            &studio,
            pb::CreateLaunchGrantRequest {
                player_id: player,
                game: String::new(),
                ttl_s: 60,
            },
        )
        .await
    }

    async fn mint_grant(
        &self,
        studio: &str,
        req: pb::CreateLaunchGrantRequest,
    ) -> Result<pb::CreateLaunchGrantResponse> {
        if req.player_id.is_empty() || req.player_id.len() > 64 {
            return Err(invalid("player_id", "1–64 characters"));
        }
        if req.game.len() > 64 {
            return Err(invalid("game", "at most 64 characters"));
        }
        let max = self.config.grant_ttl_max.as_secs() as u32;
        let ttl = if req.ttl_s == 0 {
            60.min(max)
        } else {
            req.ttl_s
        };
        if ttl > max {
            return Err(invalid("ttl_s", format!("at most {max} s")));
        }
        let record = self
            .studio(studio)
            .await?
            .ok_or_else(|| Error::NotFound(format!("studio {studio}")))?;
        if !req.game.is_empty() && !record.may_launch(&req.game) {
            return Err(Error::PermissionDenied(format!(
                "studio {studio} may not launch {:?}",
                req.game
            )));
        }
        let now_s = now_ms() / 1000;
        let grant = self.signer.sign_claims(&LaunchGrantClaims {
            purpose: LaunchGrantClaims::PURPOSE.into(),
            studio: studio.to_owned(),
            player: req.player_id,
            game: req.game,
            jti: random_id(),
            iat: format_rfc3339(now_s),
            exp: format_rfc3339(now_s + u64::from(ttl)),
        });
        self.metrics
            .grants
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(pb::CreateLaunchGrantResponse {
            grant,
            expires_unix_ms: (now_s + u64::from(ttl)) * 1000,
        })
    }

    /// The studio a grant names, as it stands now (a deleted studio's grants stop working).
    pub(crate) async fn studio_of_grant(&self, grant: &LaunchGrantClaims) -> Result<StudioRecord> {
        self.studio(&grant.studio).await?.ok_or_else(|| {
            Error::PermissionDenied(format!("studio {} no longer exists", grant.studio))
        })
    }

    /// Checks a launch against the studio's games, highest mode, launch rate and minutes of
    /// the day.
    pub(crate) async fn check_studio_may_launch(
        &self,
        studio: &StudioRecord,
        game: &str,
        mode: &types::VideoMode,
    ) -> Result<()> {
        if !studio.may_launch(game) {
            let shown: Vec<&str> = studio.games.iter().take(8).map(String::as_str).collect();
            return Err(Error::PermissionDenied(format!(
                "studio {} may not launch {:?}; it may launch: {}{}",
                studio.id,
                game.chars().take(64).collect::<String>(),
                shown.join(", "),
                if studio.games.len() > shown.len() {
                    ", …"
                } else {
                    ""
                }
            )));
        }
        studio
            .check_mode(mode.width_px, mode.height_px, mode.fps)
            .map_err(Error::LimitReached)?;
        let now = now_ms();
        {
            let mut budgets = self
                .launch_budgets
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let budget = budgets.entry(studio.id.clone()).or_insert_with(|| {
                studios::RateBudget::new(
                    self.config.launch_burst,
                    self.config.launches_per_minute,
                    now,
                )
            });
            if !budget.try_take(now) {
                return Err(Error::LimitReached(format!(
                    "studio {} launches faster than {} per minute; slow down",
                    studio.id, self.config.launches_per_minute
                )));
            }
        }
        if studio.limits.max_minutes_per_day > 0 {
            let played = self.played_today(&studio.id, now).await?;
            studio.check_minutes(played).map_err(Error::LimitReached)?;
        }
        Ok(())
    }

    /// Milliseconds a studio's players have played today (UTC): ended sessions from the usage
    /// records, running ones up to `now`.
    async fn played_today(&self, studio: &str, now: u64) -> Result<u64> {
        let mut total = 0u64;
        for kv in self
            .store
            .range(&usage_day_prefix(studio, now / 86_400_000))
            .await?
        {
            if let Ok(u) = serde_json::from_slice::<UsageRecord>(&kv.value) {
                // A session that started yesterday counts from midnight.
                let from = u.started_ms.max(studios::day_start_ms(now));
                total += u.ended_ms.saturating_sub(from).min(u.played_ms);
            }
        }
        for kv in self.store.range(&running_prefix(studio)).await? {
            let id = kv.key.rsplit('/').next().unwrap_or_default();
            if let Some(s) = self.session(id).await?
                && s.connected_ms > 0
                && !s.state.is_final()
            {
                total += now.saturating_sub(s.connected_ms.max(studios::day_start_ms(now)));
            }
        }
        Ok(total)
    }

    /// The seats a launch of `studio` takes one of, when it has a concurrent-session limit.
    pub(crate) async fn seat_pool(&self, studio: &str) -> Result<Option<SeatPool>> {
        if studio.is_empty() {
            return Ok(None);
        }
        let Some(record) = self.studio(studio).await? else {
            return Err(Error::PermissionDenied(format!(
                "studio {studio} no longer exists"
            )));
        };
        let limit = record.limits.max_concurrent;
        Ok((limit > 0).then(|| SeatPool {
            prefix: seat_prefix(studio),
            limit,
            full: format!(
                "studio {studio} has its {limit} concurrent sessions running; end one first or ask the operator to raise the limit"
            ),
        }))
    }

    /// Metered usage of a studio's sessions that ended in `[from_ms, to_ms)` (0 = open),
    /// oldest first: a studio sees its own, operators any studio's.
    pub async fn usage(
        &self,
        caller: &Caller,
        studio: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<UsageRecord>> {
        let studio = match caller
            .studio_scope("ListUsage")
            .inspect_err(|e| self.metrics.count_refusal(e))?
        {
            Some(own) if studio.is_empty() || studio == own => own.to_owned(),
            Some(own) => {
                return Err(Error::PermissionDenied(format!(
                    "studio {own} may read only its own usage"
                )));
            }
            None if studio.is_empty() => {
                return Err(invalid("studio_id", "name the studio"));
            }
            None => studio.to_owned(),
        };
        studios::check_studio_id(&studio).map_err(|e| invalid("studio_id", e))?;
        let to = if to_ms == 0 { u64::MAX } else { to_ms };
        // One day's prefix when the range is within a day; otherwise the whole studio.
        let prefix = if from_ms / 86_400_000 == to.saturating_sub(1) / 86_400_000 {
            usage_day_prefix(&studio, from_ms / 86_400_000)
        } else {
            usage_studio_prefix(&studio)
        };
        let mut out: Vec<UsageRecord> = self
            .store
            .range(&prefix)
            .await?
            .iter()
            .filter_map(|kv| serde_json::from_slice::<UsageRecord>(&kv.value).ok())
            .filter(|u| u.studio == studio && u.ended_ms >= from_ms && u.ended_ms < to)
            .collect();
        out.sort_by_key(|u| (u.ended_ms, u.session.clone()));
        Ok(out)
    }
}
