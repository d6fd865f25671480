//! Compiles the DocumentProcessor proto with protox (pure Rust, no `protoc` needed) and writes
//! a descriptor set so the simulator can serve gRPC reflection. The CI build-log example service
//! is compiled to a descriptor set only: routes reach it through descriptors, not generated code.

use std::{env, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/docproc/v1/docproc.proto"];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out.join("docproc_descriptor.bin"), fds.encode_to_vec())?;
    let builds = protox::compile(["proto/ci/v1/builds.proto"], ["proto"])?;
    std::fs::write(out.join("builds_descriptor.bin"), builds.encode_to_vec())?;
    tonic_prost_build::configure().build_client(false).build_server(true).compile_fds(fds)?;
    Ok(())
}
