//! Generate the trust signer's gRPC code from proto/signer.proto with protox
//! (a pure-Rust protobuf compiler: no system protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/signer.proto");
    let fds = protox::compile(["signer.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
