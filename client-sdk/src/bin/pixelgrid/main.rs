//! `pixelgrid`: the grid's command line for operators.

mod check;
mod play;
mod studios;

use clap::{Parser, Subcommand};
use pixelgrid_client::{NodeRow, SessionRow, render};
use pixelgrid_proto::orchestrator::v1 as pb;
use pixelgrid_proto::orchestrator::v1::orchestrator_client::OrchestratorClient;

#[derive(Parser, Debug)]
#[command(
    name = "pixelgrid",
    version,
    about = "Operate a PixelGrid: nodes, sessions, draining, epochs and payouts"
)]
struct Cli {
    /// Orchestrator gRPC URL.
    #[arg(
        long,
        global = true,
        env = "PIXELGRID_ORCHESTRATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    orchestrator: String,
    /// Indexer gRPC URL (epochs, payouts, proofs).
    #[arg(
        long,
        global = true,
        env = "PIXELGRID_INDEXER",
        default_value = "http://127.0.0.1:50061"
    )]
    indexer: String,
    /// Print JSON for scripts instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// File holding the operator credential (`pgo_…`, the orchestrator's
    /// --operator-key-file): needed to drain, undrain and administer studios.
    #[arg(long, global = true, env = "PIXELGRID_OPERATOR_KEY_FILE")]
    operator_key_file: Option<std::path::PathBuf>,
    /// A studio's API key (`pgk_…`): `play` launches with it, `sessions` and `usage` show
    /// that studio's.
    #[arg(long, global = true, env = "PIXELGRID_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Launch a game headless and play it: live stats, PNGs, recording, scripted input.
    Play(Box<play::PlayArgs>),
    /// Check nodes as a checker does: short real sessions on each, a random nonce it must draw
    /// into the picture in time, at the mode asked for; prints the signed result and hands it to
    /// indexers.
    Check(Box<check::CheckArgs>),
    /// Print a checker key's public key (what indexers name with --checker-key), creating the
    /// key (0600) when the file is missing.
    CheckerKey {
        /// The checker's identity key file.
        #[arg(long, default_value = "checker.key")]
        key: std::path::PathBuf,
    },
    /// The grid's games: each game and version, its modes and on how many ready nodes.
    Games,
    /// Registered nodes.
    Nodes {
        /// Only this region.
        #[arg(long, default_value = "")]
        region: String,
    },
    /// Sessions (all states unless --state).
    Sessions {
        /// Only this node's.
        #[arg(long, default_value = "")]
        node: String,
        /// pending, active, ended, failed or expired.
        #[arg(long)]
        state: Option<String>,
    },
    /// Stop placing sessions on a node; running ones finish.
    Drain {
        /// Node id.
        node: String,
    },
    /// Take a drained node back into placement.
    Undrain {
        /// Node id.
        node: String,
    },
    /// Studios (tenants): create, list, keys add|revoke, limits. Operators only.
    Studios {
        #[command(subcommand)]
        command: studios::StudiosCommand,
    },
    /// Metered usage: one row per ended session, with minutes played.
    Usage {
        /// Studio id (operators; a studio's API key reads its own).
        #[arg(long, default_value = "")]
        studio: String,
        /// Sessions that ended from this time on (YYYY-MM-DD UTC or Unix ms).
        #[arg(long)]
        from: Option<String>,
        /// …and before this time.
        #[arg(long)]
        to: Option<String>,
        /// table, csv or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Mint a player launch grant with --api-key (what a studio's backend does) and print it.
    Grant {
        /// The studio's id for the player.
        #[arg(long, default_value = "cli-player")]
        player: String,
        /// Only this game.
        #[arg(long, default_value = "")]
        game: String,
    },
    /// Closed epochs, most recent first (from the indexer).
    Epochs {
        /// How many.
        #[arg(long, default_value_t = 24)]
        limit: u32,
    },
    /// `payouts EPOCH`: a closed epoch's payouts; `payouts proof EPOCH NODE`: one node's proof;
    /// `payouts verify ...`: check a proof against a root, offline.
    #[command(args_conflicts_with_subcommands = true)]
    Payouts {
        /// Closed epoch number.
        epoch: Option<u64>,
        #[command(subcommand)]
        command: Option<PayoutsCommand>,
    },
}

#[derive(Subcommand, Debug)]
enum PayoutsCommand {
    /// A node's payout proof, printed as the `payouts verify` command that checks it.
    Proof {
        /// Closed epoch number.
        epoch: u64,
        /// Node id (hex public key).
        node: String,
    },
    /// Verify a payout proof (exit 0 when it holds, 1 when it does not). Needs no network.
    Verify {
        /// The epoch's Merkle root (hex).
        #[arg(long)]
        root: String,
        /// Node id (hex public key).
        #[arg(long)]
        node: String,
        /// Payout, micro-credits.
        #[arg(long)]
        amount: u64,
        /// The leaf's index among the epoch's sorted payouts.
        #[arg(long)]
        index: u64,
        /// Number of payouts in the epoch.
        #[arg(long)]
        count: u64,
        /// Sibling hashes from the leaf up, comma-separated hex.
        #[arg(long, value_delimiter = ',')]
        siblings: Vec<String>,
    },
}

#[allow(clippy::print_stdout)]
fn verify_payout(
    root: &str,
    node: &str,
    amount: u64,
    index: u64,
    count: u64,
    siblings: &[String],
) -> anyhow::Result<bool> {
    use pixelgrid_proto::token::unhex;
    let hash = |name: &str, h: &str| -> anyhow::Result<[u8; 32]> {
        unhex(h.trim())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| anyhow::anyhow!("invalid {name}: {h:?} is not 64 hex digits"))
    };
    let root = hash("--root", root)?;
    let node = hash("--node", node)?;
    let siblings = siblings
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| hash("--siblings", s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ok = indexer::merkle::verify(
        &root,
        &node,
        amount,
        &indexer::merkle::Proof {
            index,
            count,
            siblings,
        },
    );
    println!(
        "{}",
        if ok {
            "valid: the payout is in the epoch's root"
        } else {
            "INVALID: the payout does not match the root"
        }
    );
    Ok(ok)
}

#[allow(clippy::print_stdout)]
fn main() {
    let cli = Cli::parse();
    // Offline: no orchestrator needed.
    if let Command::Payouts {
        command:
            Some(PayoutsCommand::Verify {
                root,
                node,
                amount,
                index,
                count,
                siblings,
            }),
        ..
    } = &cli.command
    {
        match verify_payout(root, node, *amount, *index, *count, siblings) {
            Ok(true) => return,
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::exit(2);
            }
        }
    }
    if let Command::Play(args) = cli.command {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        if let Err(e) = rt.block_on(play::play(
            &cli.orchestrator,
            cli.api_key.as_deref(),
            cli.json,
            *args,
        )) {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if let Command::CheckerKey { key } = &cli.command {
        match pixelgrid_proto::identity::NodeKey::load_or_create(key) {
            Ok((k, _)) => println!("{}", k.node_id()),
            Err(e) => {
                eprintln!("error: checker key {}: {e}", key.display());
                std::process::exit(1);
            }
        }
        return;
    }
    if let Command::Check(args) = cli.command {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        if let Err(e) = rt.block_on(check::check(
            &cli.orchestrator,
            cli.api_key.as_deref(),
            *args,
        )) {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[allow(clippy::print_stdout)]
async fn run(cli: Cli) -> anyhow::Result<()> {
    if matches!(
        cli.command,
        Command::Epochs { .. } | Command::Payouts { .. }
    ) {
        return run_indexer(cli).await;
    }
    let mut c = pixelgrid_proto::transport::connect(&cli.orchestrator)
        .await
        .map(OrchestratorClient::new)
        .map_err(|e| {
            anyhow::anyhow!(
                "orchestrator at {} refused the connection ({e}); is it running?",
                cli.orchestrator
            )
        })?;
    let status = |s: tonic::Status| anyhow::anyhow!("{:?}: {}", s.code(), s.message());
    let operator = match &cli.operator_key_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    // The operator's credential where given, else the studio's key.
    let credential = operator.as_deref().or(cli.api_key.as_deref());
    match cli.command {
        Command::Games => {
            let games = pixelgrid_client::Client::connect(&cli.orchestrator)
                .await?
                .games()
                .await?;
            println!("{}", render(&games, cli.json));
        }
        Command::Nodes { region } => {
            let mut nodes = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = c
                    .list_nodes(studios::with_credential(
                        pb::ListNodesRequest {
                            region_code: region.clone(),
                            page_size: 0,
                            page_token,
                        },
                        credential,
                    )?)
                    .await
                    .map_err(status)?
                    .into_inner();
                nodes.extend(page.nodes);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            let rows: Vec<NodeRow> = nodes.iter().map(NodeRow::from).collect();
            println!("{}", render(&rows, cli.json));
        }
        Command::Sessions { node, state } => {
            let state = match state.as_deref().map(str::to_ascii_uppercase) {
                None => pb::SessionState::Unspecified,
                Some(s) => pb::SessionState::from_str_name(&format!("SESSION_STATE_{s}"))
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "invalid --state {s:?}; use pending, active, ended, failed or expired"
                        )
                    })?,
            };
            let sessions = c
                .list_sessions(studios::with_credential(
                    pb::ListSessionsRequest {
                        node_id_hex: node,
                        state: state as i32,
                    },
                    credential,
                )?)
                .await
                .map_err(status)?
                .into_inner()
                .sessions;
            let rows: Vec<SessionRow> = sessions.iter().map(SessionRow::from).collect();
            println!("{}", render(&rows, cli.json));
        }
        Command::Payouts { .. }
        | Command::Epochs { .. }
        | Command::Play(_)
        | Command::Check(_)
        | Command::CheckerKey { .. } => {
            unreachable!("handled before connecting to the orchestrator")
        }
        Command::Drain { node } => {
            let r = c
                .drain_node(studios::with_credential(
                    pb::DrainNodeRequest {
                        node_id: Some(pixelgrid_proto::types::v1::NodeId { hex: node.clone() }),
                        deadline_ms: 0,
                    },
                    credential,
                )?)
                .await
                .map_err(status)?
                .into_inner();
            let row = r.node.as_ref().map(NodeRow::from);
            if cli.json {
                println!("{}", serde_json::to_string(&row)?);
            } else {
                println!("draining {node}: it takes no new sessions; running ones finish");
            }
        }
        Command::Undrain { node } => {
            c.undrain_node(studios::with_credential(
                pb::UndrainNodeRequest {
                    node_id: Some(pixelgrid_proto::types::v1::NodeId { hex: node.clone() }),
                },
                credential,
            )?)
            .await
            .map_err(status)?;
            println!("{node} takes sessions again");
        }
        Command::Studios { command } => {
            studios::studios(&mut c, credential, cli.json, command).await?;
        }
        Command::Usage {
            studio,
            from,
            to,
            format,
        } => {
            let format = if cli.json { "json".into() } else { format };
            studios::usage(&mut c, credential, studio, from, to, &format).await?;
        }
        Command::Grant { player, game } => {
            let key = cli
                .api_key
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("grant needs the studio's --api-key"))?;
            let grant = pixelgrid_client::Client::connect(&cli.orchestrator)
                .await?
                .with_api_key(key, &player)
                .create_grant(&player, &game)
                .await?;
            println!("{grant}");
        }
    }
    Ok(())
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

/// Epochs, payouts and proofs, from the indexer.
#[allow(clippy::print_stdout)]
async fn run_indexer(cli: Cli) -> anyhow::Result<()> {
    use pixelgrid_client::{EpochRow, PayoutRow};
    use pixelgrid_proto::indexer::v1 as ipb;
    let mut c = pixelgrid_proto::transport::connect(&cli.indexer)
        .await
        .map(ipb::indexer_client::IndexerClient::new)
        .map_err(|e| {
            anyhow::anyhow!(
                "indexer at {} refused the connection ({e}); is it running?",
                cli.indexer
            )
        })?;
    match cli.command {
        Command::Epochs { limit } => {
            let epochs = c
                .list_epochs(ipb::ListEpochsRequest { limit })
                .await
                .map_err(status)?
                .into_inner()
                .epochs;
            let rows: Vec<EpochRow> = epochs.iter().map(EpochRow::from).collect();
            println!("{}", render(&rows, cli.json));
        }
        Command::Payouts {
            epoch: Some(epoch),
            command: None,
        } => {
            let r = c
                .get_payouts(ipb::GetPayoutsRequest { epoch })
                .await
                .map_err(status)?
                .into_inner();
            let rows: Vec<PayoutRow> = r.payouts.iter().map(PayoutRow::from).collect();
            println!("{}", render(&rows, cli.json));
        }
        Command::Payouts {
            command: Some(PayoutsCommand::Proof { epoch, node }),
            ..
        } => {
            let p = c
                .get_payout_proof(ipb::GetPayoutProofRequest {
                    epoch,
                    node_id: Some(pixelgrid_proto::types::v1::NodeId { hex: node.clone() }),
                })
                .await
                .map_err(status)?
                .into_inner();
            let hex = pixelgrid_proto::token::hex;
            let siblings: Vec<String> = p.siblings.iter().map(|s| hex(s)).collect();
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "epoch": p.epoch, "root": hex(&p.merkle_root), "node": node,
                        "amount": p.amount_micro_credits, "index": p.leaf_index,
                        "count": p.leaf_count, "siblings": siblings,
                    })
                );
            } else {
                println!(
                    "pixelgrid payouts verify --root {} --node {node} --amount {} --index {} --count {} --siblings '{}'",
                    hex(&p.merkle_root),
                    p.amount_micro_credits,
                    p.leaf_index,
                    p.leaf_count,
                    siblings.join(",")
                );
            }
        }
        _ => anyhow::bail!("payouts needs an epoch number, `proof EPOCH NODE` or `verify`"),
    }
    Ok(())
}
