//! Generates the prost messages and tonic services from `proto/`, with a vendored `protoc` so that no system
//! package is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure().compile_with_config(
        config,
        &[
            "proto/quiver/v1/node.proto",
            "proto/quiver/v1/raft.proto",
            "proto/quiver/v1/meta.proto",
            "proto/quiver/v1/cluster.proto",
        ],
        &["proto"],
    )?;
    Ok(())
}
