//! Generates the gRPC code from `proto/ps.proto` and `proto/data.proto` with
//! the protoc binary that ships inside the `protoc-bin-vendored` crate, so no
//! system `protoc` is needed.
//!
//! `ps.proto` (the messages and the `ParameterServer` service) gets messages,
//! client and server. `data.proto` (the `Data` service) gets its client only:
//! shards serve it by hand, frame by frame. Its descriptor is made without
//! its imports, so the code generated for it is the client and nothing else
//! (its messages are those of `ps.proto`).

use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", &protoc) };
    println!("cargo:rerun-if-changed=proto/ps.proto");
    println!("cargo:rerun-if-changed=proto/data.proto");
    tonic_prost_build::configure().bytes(".ps.v1").compile_protos(&["proto/ps.proto"], &["proto"])?;

    let data_dir = PathBuf::from(std::env::var("OUT_DIR")?).join("data");
    std::fs::create_dir_all(&data_dir)?;
    let descriptor = data_dir.join("data.fds");
    let status = Command::new(&protoc)
        .arg("--proto_path=proto")
        .arg(format!("--descriptor_set_out={}", descriptor.display()))
        .arg("proto/data.proto")
        .status()?;
    if !status.success() {
        return Err(format!("protoc failed on proto/data.proto: {status}").into());
    }
    tonic_prost_build::configure()
        .build_server(false)
        .extern_path(".ps.v1", "crate::pb")
        .skip_protoc_run()
        .file_descriptor_set_path(&descriptor)
        .out_dir(&data_dir)
        .compile_protos(&["proto/data.proto"], &["proto"])?;
    Ok(())
}
