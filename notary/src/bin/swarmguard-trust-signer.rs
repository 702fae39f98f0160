//! The trust signer as a binary of its own, which `swarmguard trust-signer` runs in its place.
//!
//! A signer process is resident mostly as its binary's code; this one links only the signer
//! (gRPC over mTLS, the sealed key store), about a third of what the `swarmguard` binary carries,
//! so a signer that holds the timestamp and snapshot keys costs that much less memory.
#![forbid(unsafe_code)]

use clap::Parser;
use swarmguard_notary::remote::{serve_signer, SignerArgs};

/// Hold a trust server's timestamp and snapshot keys (sealed at rest) and sign for it over
/// gRPC with mutual TLS. Usually started as `swarmguard trust-signer`, which takes the same
/// options.
#[derive(Parser)]
#[command(name = "swarmguard trust-signer", version)]
struct Cli {
    #[command(flatten)]
    args: SignerArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("error: a rustls crypto provider was already installed");
        return std::process::ExitCode::FAILURE;
    }
    // A handful of small gRPC calls from its trust servers: one thread does it.
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(serve_signer(cli.args))
                .map_err(|e| e.to_string())
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
