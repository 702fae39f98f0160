//! Compiles our SwarmKit `.proto` subset with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/swarmkit/types.proto",
        "proto/swarmkit/specs.proto",
        "proto/swarmkit/objects.proto",
        "proto/swarmkit/ca.proto",
        "proto/swarmkit/dispatcher.proto",
        "proto/swarmkit/logbroker.proto",
        "proto/swarmguard/raft.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
