//! Generates the CSI v1 gRPC bindings from `proto/csi.proto`.
//!
//! The proto is parsed by protox (pure Rust, no system `protoc`), and the
//! resulting descriptor set is handed to tonic-prost-build, which writes
//! prost messages plus tonic clients and servers for package `csi.v1` to
//! `$OUT_DIR/csi.v1.rs`. Server traits get default methods that answer
//! UNIMPLEMENTED. The well-known types (`google.protobuf.*`) come
//! built into protox and map to `prost_types` (the prost default).

use std::error::Error;

const PROTO_DIR: &str = "proto";
const CSI_PROTO: &str = "proto/csi.proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={CSI_PROTO}");

    let descriptors = protox::compile([CSI_PROTO], [PROTO_DIR])
        .map_err(|e| format!("cannot parse {CSI_PROTO}: {e}"))?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // RPCs a service does not override answer UNIMPLEMENTED, which is
        // what CSI expects for optional and alpha RPCs the plugin lacks.
        .generate_default_stubs(true)
        .compile_fds(descriptors)
        .map_err(|e| format!("cannot generate Rust code from {CSI_PROTO}: {e}"))?;

    Ok(())
}
