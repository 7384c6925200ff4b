//! The node proxy's plain core: everything a node does to the block devices under a
//! volume, without gRPC. Each module owns one thing:
//! - [`signature`]: the vdrive header in the first MiB of a signed drive;
//! - [`drives`]: finding, signing and simulating physical drives;
//! - [`blockdev`]: facts about block devices (size, disk, partitions, holders);
//! - [`loopdev`]: loop devices over one extent of a drive;
//! - [`dm`]: device-mapper linear devices joining extents, through the kernel's ioctls;
//! - [`fs`]: detecting, creating and growing filesystems;
//! - [`mounts`]: mounting, bind-publishing, unmounting and usage stats.
//!
//! Everything here is synchronous and may block on the kernel or a child process:
//! async callers run it under `tokio::task::spawn_blocking`.

pub mod blockdev;
mod cmd;
pub mod dm;
pub mod drives;
mod error;
pub mod fs;
pub mod loopdev;
pub mod mounts;
pub mod signature;

pub use error::NodeError;

pub const GIB: u64 = 1 << 30;
