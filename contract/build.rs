//! Compiles `proto/` with a vendored protoc, so no system protoc is needed.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let files = [
        "auth/v1/auth.proto",
        "auth/v1/events.proto",
        "task/v1/task.proto",
        "task/v1/events.proto",
    ]
    .map(|f| proto_root.join(f));

    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut cfg = tonic_prost_build::Config::new();
    cfg.protoc_executable(protoc);
    // No transport: the stubs take a channel, so this crate needs no hyper.
    tonic_prost_build::configure()
        .build_transport(false)
        .file_descriptor_set_path(out_dir.join("memberflow_descriptor.bin"))
        .compile_with_config(cfg, &files, std::slice::from_ref(&proto_root))?;
    println!("cargo:rerun-if-changed={}", proto_root.display());
    Ok(())
}
