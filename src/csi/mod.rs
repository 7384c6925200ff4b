//! The CSI layer: thin gRPC handlers that validate, call the core, and map the
//! answer. Bindings are generated from proto/csi.proto at build time.

pub mod capability;
pub mod context;
pub mod controller;
pub mod identity;
pub mod input;
mod metered;
pub mod node;
pub mod params;
pub mod proto;
pub mod server;
mod status;
