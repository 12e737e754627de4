//! Generates the prost messages and tonic services from `proto/`, with a vendored `protoc` so that no system
//! package is needed. madsim's generator writes tonic's code and, beside it, the simulated services that a
//! `--cfg madsim` build includes instead.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    madsim_tonic_build::configure().compile_protos_with_config(
        config,
        &[
            "proto/quiver/v1/node.proto",
            "proto/quiver/v1/raft.proto",
            "proto/quiver/v1/meta.proto",
            "proto/quiver/v1/cluster.proto",
            "proto/quiver/v1/data.proto",
            "proto/quiver/v1/shard.proto",
        ],
        &["proto"],
    )?;
    Ok(())
}
