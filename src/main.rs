//! swarmguard: a hardened security plane for Docker Swarm clusters.
#![forbid(unsafe_code)]

#[allow(dead_code)]
mod store;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "swarmguard", version, about = "A hardened security plane for Docker Swarm clusters")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
