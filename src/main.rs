//! The `swarmguard` command line: parses it, sets up logging and the runtime, and starts the
//! chosen part (manager, trust server, trust signer, agent). Everything else is in the library.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use swarmguard::{agent, manager};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "swarmguard",
    version,
    about = "A hardened security plane for Docker Swarm clusters",
    long_about = "A hardened security plane for Docker Swarm clusters.\n\n\
        Start a manager with `swarmguard manager`, then point the stock docker CLI at it:\n  \
        export DOCKER_HOST=unix://$PWD/swarmguard-data/swarmguard.sock\n  \
        docker swarm init --advertise-addr 127.0.0.1\n\n\
        Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=swarmguard=debug) for more."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a manager: cluster store, cluster CA and the Docker Engine API for the docker CLI.
    ///
    /// With no flags it keeps its data in ./swarmguard-data and serves the Engine API on
    /// unix://./swarmguard-data/swarmguard.sock; it prints the DOCKER_HOST line to use.
    Manager(manager::ManagerArgs),
    /// Notary-compatible trust server for Docker Content Trust.
    TrustServer(swarmguard_notary::server::ServerArgs),
    /// Trust signer holding timestamp/snapshot keys, served over gRPC with mutual TLS.
    TrustSigner(swarmguard_notary::remote::SignerArgs),
    /// Be a swarm node without dockerd: join with a token, then keep a session, heartbeats and a
    /// rotating mTLS identity (`agent join --token … ADDR`, `agent run`).
    Agent(agent::cli::AgentArgs),
    /// The manager's hash-chained audit log (`audit verify --data-dir DIR`).
    Audit(AuditArgs),
}

#[derive(clap::Args)]
struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Checks every line's hash and its link to the line before; names the first broken line.
    Verify {
        /// The manager's data dir (holding audit.log and audit.head).
        #[arg(long, default_value = "./swarmguard-data", env = "SWARMGUARD_DATA_DIR")]
        data_dir: std::path::PathBuf,
    },
}

fn audit(args: AuditArgs) -> anyhow::Result<()> {
    match args.command {
        AuditCommand::Verify { data_dir } => {
            let n = swarmguard::control::audit::verify(&data_dir)
                .map_err(|e| anyhow::anyhow!("audit log broken: {e}"))?;
            println!("audit log intact: {n} lines");
            Ok(())
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Command::Audit(args) = cli.command {
        return audit(args);
    }
    if let Command::TrustSigner(_) = cli.command {
        exec_small_trust_signer();
    }
    // One TLS stack with one provider, chosen here rather than by whichever crate asks first.
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    // The trust signer serves a handful of small gRPC calls from its trust servers; one thread
    // does that, and spares the signer the worker threads (stacks, allocator arenas) the other
    // commands use for their load.
    let mut builder = match cli.command {
        Command::TrustSigner(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = builder.enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Manager(args) => manager::run(args).await,
            Command::TrustServer(args) => Ok(swarmguard_notary::server::serve(args).await?),
            Command::TrustSigner(args) => Ok(swarmguard_notary::remote::serve_signer(args).await?),
            Command::Agent(args) => agent::cli::run(args).await,
            Command::Audit(_) => unreachable!("handled before the runtime starts"),
        }
    })
}

/// `swarmguard trust-signer` becomes `swarmguard-trust-signer` (same options) when that binary
/// sits next to this one: it links only the signer, so the long-running process holding the
/// timestamp and snapshot keys is a third of the size. Without it, the signer runs in here.
fn exec_small_trust_signer() {
    use std::os::unix::process::CommandExt;
    let Some(small) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("swarmguard-trust-signer")))
        .filter(|p| p.is_file())
    else {
        return;
    };
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "trust-signer") {
        args.remove(i);
    }
    let err = std::process::Command::new(&small).args(args).exec();
    // Only reached when exec failed: say so and serve from this binary instead.
    tracing::warn!(path = %small.display(), error = %err, "could not start the small trust signer; running it in this process");
}
