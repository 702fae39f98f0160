//! swarmguard: a hardened security plane for Docker Swarm clusters.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "swarmguard",
    version,
    about = "A hardened security plane for Docker Swarm clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Notary-compatible trust server for Docker Content Trust.
    TrustServer(swarmguard_notary::server::ServerArgs),
    /// Trust signer holding timestamp/snapshot keys, served over gRPC with mutual TLS.
    TrustSigner(swarmguard_notary::remote::SignerArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::TrustServer(args) => swarmguard_notary::server::run(args)?,
        Command::TrustSigner(args) => swarmguard_notary::remote::run_signer(args)?,
    }
    Ok(())
}
