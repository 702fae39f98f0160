//! `swarmguard agent join|run`: the command-line edge of [`crate::agent`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::agent;

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: AgentCommand,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Join a swarm with a join token: download and pin the root CA, get a node certificate,
    /// store it (key 0600) in --data-dir/certificates and keep the node Ready until stopped.
    Join {
        /// The join token printed by `docker swarm join-token worker` (or manager). Prefer the
        /// SWARMGUARD_JOIN_TOKEN environment variable: command lines are visible to other users.
        #[arg(long, env = "SWARMGUARD_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        /// Where the node's certificates live (created 0700).
        #[arg(long, default_value = "./swarmguard-agent")]
        data_dir: PathBuf,
        /// Only get the certificate; do not start a session.
        #[arg(long)]
        no_run: bool,
        /// The manager's cluster address, HOST:PORT (e.g. 192.0.2.10:2377).
        addr: String,
    },
    /// Run a node that already joined: session, heartbeats, certificate renewal.
    Run {
        #[arg(long, default_value = "./swarmguard-agent")]
        data_dir: PathBuf,
    },
    /// Benchmark: CLIENTS concurrent in-process clients run JOINS full joins (fresh TLS
    /// connection, token + CSR, status until issued) against ADDR; prints one JSON line.
    /// Each join adds a node to the cluster: point it at a throw-away manager.
    #[command(hide = true)]
    JoinStorm {
        #[arg(long, env = "SWARMGUARD_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long, default_value_t = 4)]
        clients: usize,
        #[arg(long, default_value_t = 200)]
        joins: usize,
        addr: String,
    },
    /// Benchmark: NODES nodes join (not timed) and open one mTLS connection each; then each
    /// renews once, CLIENTS at a time, status until issued; prints one JSON line.
    #[command(hide = true)]
    RenewStorm {
        #[arg(long, env = "SWARMGUARD_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long, default_value_t = 4)]
        clients: usize,
        #[arg(long, default_value_t = 200)]
        nodes: usize,
        /// Once the nodes joined, print {"joined":NODES} and wait for a line on standard input
        /// before the clock starts (the bench reads CPU times there).
        #[arg(long)]
        go_on_stdin: bool,
        addr: String,
    },
    /// Benchmark: NODES nodes join and run as agents in this process (sessions, heartbeats,
    /// renewal and root changes when told); prints {"ready":NODES} once every node has a
    /// session, and a summary when stopped (SIGTERM, SIGINT or end of standard input).
    #[command(hide = true)]
    SwarmSim {
        #[arg(long, env = "SWARMGUARD_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        addr: String,
    },
}

fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("cannot resolve {addr:?}: expected HOST:PORT"))?
        .next()
        .with_context(|| format!("{addr:?} resolves to no address"))
}

/// SIGTERM, SIGINT, or the end of standard input (the bench that started us went away).
async fn until_told_to_stop() -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt as _;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    let eof = async { while !matches!(stdin.read(&mut buf).await, Ok(0) | Err(_)) {} };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = eof => {}
    }
    Ok(())
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let (dir, creds, manager) = match args.command {
        AgentCommand::Join {
            token,
            data_dir,
            no_run,
            addr,
        } => {
            let manager = resolve(&addr)?;
            std::fs::create_dir_all(&data_dir)?;
            // It will hold the node's private key.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot make {} private (0700)", data_dir.display()))?;
            let token = zeroize::Zeroizing::new(token);
            let creds = agent::join(manager, &token).await?;
            agent::save(&data_dir, &creds, manager)?;
            println!(
                "This node joined a swarm as a {}. Node ID: {}",
                match creds.role {
                    swarmguard_ca::NodeRole::Manager => "manager",
                    swarmguard_ca::NodeRole::Worker => "worker",
                },
                creds.node_id
            );
            if no_run {
                return Ok(());
            }
            (data_dir, creds, manager)
        }
        AgentCommand::JoinStorm {
            token,
            clients,
            joins,
            addr,
        } => {
            let r = agent::storm::join_storm(resolve(&addr)?, &token, clients, joins).await?;
            println!("{}", serde_json::to_string(&r)?);
            return Ok(());
        }
        AgentCommand::RenewStorm {
            token,
            clients,
            nodes,
            go_on_stdin,
            addr,
        } => {
            let ready = agent::storm::prepare_renewals(resolve(&addr)?, &token, clients, nodes);
            let ready = Box::pin(ready).await?;
            if go_on_stdin {
                use tokio::io::AsyncBufReadExt as _;
                println!("{}", serde_json::json!({ "joined": nodes }));
                let mut line = String::new();
                tokio::io::BufReader::new(tokio::io::stdin())
                    .read_line(&mut line)
                    .await?;
            }
            let r = Box::pin(agent::storm::renew_storm(ready, clients)).await?;
            println!("{}", serde_json::to_string(&r)?);
            return Ok(());
        }
        AgentCommand::SwarmSim {
            token,
            clients,
            nodes,
            addr,
        } => {
            let (stop_tx, stop_rx) = watch::channel(false);
            // Boxed: a large future, and `run` stays small for every other subcommand.
            let mut sim = Box::pin(agent::storm::swarm_sim(
                resolve(&addr)?,
                &token,
                clients,
                nodes,
                stop_rx,
            ));
            let r = tokio::select! {
                r = &mut sim => r?,
                stop = until_told_to_stop() => {
                    stop?;
                    let _ = stop_tx.send(true);
                    sim.await?
                }
            };
            println!("{}", serde_json::to_string(&r)?);
            return Ok(());
        }
        AgentCommand::Run { data_dir } => {
            let (creds, manager) = agent::load(&data_dir).with_context(|| {
                format!(
                    "no usable identity in {}: run `swarmguard agent join` first",
                    data_dir.display()
                )
            })?;
            (data_dir, creds, manager)
        }
    };
    let (state_tx, _state_rx) = watch::channel(agent::AgentState::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut node = tokio::spawn(agent::run(
        creds,
        manager,
        Some(dir),
        agent::RunOptions::default(),
        state_tx,
        stop_rx,
    ));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        // The node gives up by itself only when the cluster refuses it (e.g. it was removed).
        done = &mut node => return Ok(done??),
    }
    let _ = stop_tx.send(true);
    node.await??;
    Ok(())
}
