//! vdrive: carves shared physical NVMe drives (TLC and QLC) into virtual drives,
//! records every claim in a capacity ledger, and derives per-server pools from it.
//!
//! The core modules are plain Rust with no knowledge of gRPC or Kubernetes:
//! - [`allocator`]: pure layout planning (how many virtual drives, which sizes, where);
//! - [`ledger`]: the per-node record of signed drives and the claims carved from them;
//! - [`pools`]: the k8s/vm pools derived from node labels plus the ledger;
//! - [`node`]: the node proxy's devices: signatures, loop devices, filesystems, mounts.
//!
//! [`csi`] is the gRPC layer over them; [`cli`] the commands; [`doctor`] checks a
//! live cluster's installation.

pub mod allocator;
pub mod api;
pub mod cli;
pub mod cluster;
pub mod csi;
pub mod doctor;
pub mod drive;
pub mod ledger;
pub mod metrics;
pub mod node;
pub mod pools;
pub mod vms;
