//! `pixelgrid studios …`, `usage`, `grant` and `undrain`: the tenancy side of the CLI. Each
//! call carries the operator credential (`--operator-key-file`) or a studio's API key
//! (`--api-key`), as the orchestrator's rules for the call ask.

use clap::Subcommand;
use pixelgrid_client::{StudioRow, UsageRow, render, render_csv};
use pixelgrid_proto::orchestrator::v1 as pb;
use pixelgrid_proto::orchestrator::v1::orchestrator_client::OrchestratorClient;
use pixelgrid_proto::types::v1 as types;
use tonic::transport::Channel;

#[derive(Subcommand, Debug)]
pub enum StudiosCommand {
    /// A new studio; prints its first API key (shown once).
    Create {
        /// Studio id: lowercase letters, digits and '-'.
        id: String,
        #[command(flatten)]
        limits: LimitArgs,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Every studio, its limits and key ids.
    List,
    /// API keys: add one (rotation) or revoke one.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Replace a studio's limits (and games with --games).
    Limits {
        /// Studio id.
        id: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// A further key; prints it (shown once).
    Add {
        /// Studio id.
        studio: String,
    },
    /// Stops a key working, at once.
    Revoke {
        /// Studio id.
        studio: String,
        /// Key id (`studios list` shows them).
        key_id: String,
    },
}

#[derive(clap::Args, Debug)]
pub struct LimitArgs {
    /// Games its players may launch (comma-separated; none given = all games).
    #[arg(long, value_delimiter = ',')]
    games: Option<Vec<String>>,
    /// Concurrent sessions (0 = no limit).
    #[arg(long, default_value_t = 0)]
    max_sessions: u32,
    /// Minutes played per UTC day (0 = no limit).
    #[arg(long, default_value_t = 0)]
    max_minutes_per_day: u32,
    /// Highest mode, WIDTHxHEIGHT@FPS (none = any).
    #[arg(long)]
    max_mode: Option<String>,
    /// Highest node price per minute its sessions may be placed at, micro-credits (0 = any).
    #[arg(long, default_value_t = 0)]
    max_price_per_minute: u64,
}

impl LimitArgs {
    fn limits(&self) -> anyhow::Result<pb::StudioLimits> {
        let max_mode = match &self.max_mode {
            None => None,
            Some(m) => {
                let (w, h, f) = crate::play::parse_mode(m)?;
                Some(types::VideoMode {
                    width_px: w,
                    height_px: h,
                    fps: f,
                })
            }
        };
        Ok(pb::StudioLimits {
            max_concurrent_sessions: self.max_sessions,
            max_minutes_per_day: self.max_minutes_per_day,
            max_mode,
            max_micro_credits_per_minute: self.max_price_per_minute,
        })
    }
}

/// `request` carrying `credential`, when there is one.
pub fn with_credential<T>(
    request: T,
    credential: Option<&str>,
) -> anyhow::Result<tonic::Request<T>> {
    match credential {
        Some(c) => pixelgrid_proto::transport::with_bearer(request, c).map_err(anyhow::Error::msg),
        None => Ok(tonic::Request::new(request)),
    }
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

/// Runs a `studios` command with the operator credential.
#[allow(clippy::print_stdout)]
pub async fn studios(
    c: &mut OrchestratorClient<Channel>,
    credential: Option<&str>,
    json: bool,
    command: StudiosCommand,
) -> anyhow::Result<()> {
    match command {
        StudiosCommand::Create { id, limits, name } => {
            let r = c
                .create_studio(with_credential(
                    pb::CreateStudioRequest {
                        studio_id: id.clone(),
                        name,
                        games: limits.games.clone().unwrap_or_default(),
                        limits: Some(limits.limits()?),
                    },
                    credential,
                )?)
                .await
                .map_err(status)?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "studio": id, "api_key": r.api_key })
                );
            } else {
                println!(
                    "studio {id} created. Its API key (shown once; keep it on the studio's servers):"
                );
                println!("{}", r.api_key);
            }
        }
        StudiosCommand::List => {
            let r = c
                .list_studios(with_credential(pb::ListStudiosRequest {}, credential)?)
                .await
                .map_err(status)?
                .into_inner();
            let rows: Vec<StudioRow> = r.studios.iter().map(StudioRow::from).collect();
            println!("{}", render(&rows, json));
        }
        StudiosCommand::Keys {
            command: KeysCommand::Add { studio },
        } => {
            let r = c
                .add_studio_key(with_credential(
                    pb::AddStudioKeyRequest { studio_id: studio },
                    credential,
                )?)
                .await
                .map_err(status)?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "key_id": r.key_id, "api_key": r.api_key })
                );
            } else {
                println!("key {} added (shown once):\n{}", r.key_id, r.api_key);
            }
        }
        StudiosCommand::Keys {
            command: KeysCommand::Revoke { studio, key_id },
        } => {
            let s = c
                .revoke_studio_key(with_credential(
                    pb::RevokeStudioKeyRequest {
                        studio_id: studio,
                        key_id: key_id.clone(),
                    },
                    credential,
                )?)
                .await
                .map_err(status)?
                .into_inner();
            println!("{}", render(&[StudioRow::from(&s)], json));
        }
        StudiosCommand::Limits { id, limits } => {
            let s = c
                .set_studio_limits(with_credential(
                    pb::SetStudioLimitsRequest {
                        studio_id: id,
                        limits: Some(limits.limits()?),
                        set_games: limits.games.is_some(),
                        games: limits.games.clone().unwrap_or_default(),
                    },
                    credential,
                )?)
                .await
                .map_err(status)?
                .into_inner();
            println!("{}", render(&[StudioRow::from(&s)], json));
        }
    }
    Ok(())
}

/// `YYYY-MM-DD` (UTC midnight) or Unix milliseconds.
pub fn parse_time(text: &str) -> anyhow::Result<u64> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    pixelgrid_proto::token::parse_rfc3339(&format!("{text}T00:00:00Z"))
        .map(|s| s * 1000)
        .ok_or_else(|| anyhow::anyhow!("invalid time {text:?}; use YYYY-MM-DD or Unix ms"))
}

/// `usage`: metered sessions as a table, JSON or CSV.
#[allow(clippy::print_stdout)]
pub async fn usage(
    c: &mut OrchestratorClient<Channel>,
    credential: Option<&str>,
    studio: String,
    from: Option<String>,
    to: Option<String>,
    format: &str,
) -> anyhow::Result<()> {
    let r = c
        .list_usage(with_credential(
            pb::ListUsageRequest {
                studio_id: studio,
                from_unix_ms: from.as_deref().map(parse_time).transpose()?.unwrap_or(0),
                to_unix_ms: to.as_deref().map(parse_time).transpose()?.unwrap_or(0),
            },
            credential,
        )?)
        .await
        .map_err(status)?
        .into_inner();
    let rows: Vec<UsageRow> = r.records.iter().map(UsageRow::from).collect();
    match format {
        "csv" => print!("{}", render_csv(&rows)),
        "json" => println!("{}", render(&rows, true)),
        "table" => {
            println!("{}", render(&rows, false));
            let minutes: f64 = rows.iter().map(|r| r.minutes).sum();
            println!("{} sessions, {minutes:.2} minutes", rows.len());
        }
        other => anyhow::bail!("invalid --format {other:?}; use table, csv or json"),
    }
    Ok(())
}
