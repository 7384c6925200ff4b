//! The node proxy's plain core: everything a node does to the block devices under a
//! volume, without gRPC. Each module owns one thing:
//! - [`signature`]: the vdrive header in the first MiB of a signed drive;
//! - [`claim_record`]: the drive's own record of its owner and claims, in its header;
//! - [`discovery`]: the machine's disks, their hardware facts, and which to leave alone;
//! - [`drives`]: finding, signing, simulating and erasing physical drives;
//! - [`registry`]: the signed drives this node has found, and where extents lie;
//! - [`blockdev`]: facts about block devices (size, disk, partitions, holders);
//! - [`loopdev`]: loop devices over one extent of a drive;
//! - [`dm`]: device-mapper devices, through the kernel's ioctl interface;
//! - [`backend`]: how a volume's extents become one device (loop or dm);
//! - [`ownership`]: reporting drives with what their headers say, keeping headers current;
//! - [`nvme`]: what an NVMe drive promises about discarded blocks;
//! - [`fs`]: detecting, creating and growing filesystems;
//! - [`image`]: VM disk images written into blank block volumes at staging;
//! - [`mounts`]: mounting, bind-publishing, unmounting and usage stats;
//! - [`publish`]: format-and-mount at staging, bind to targets, remove targets;
//! - [`staging`]: the node's records of what it staged where;
//! - [`inflight`]: which volumes an operation is under way on;
//! - [`volume`]: the volume lifecycle (stage … erase) over all of the above.
//!
//! Everything but [`volume`] is synchronous and may block on the kernel or a
//! child process: async callers run it under `tokio::task::spawn_blocking`.

pub mod backend;
pub mod blockdev;
pub mod claim_record;
mod cmd;
pub mod discovery;
pub mod dm;
pub mod drives;
mod error;
mod flush;
pub mod fs;
pub mod image;
pub mod inflight;
pub mod loopdev;
pub mod mounts;
pub mod nvme;
pub mod ownership;
pub mod publish;
pub mod registry;
pub mod signature;
pub mod staging;
pub mod sweep_report;
pub mod volume;

pub use error::{IMAGE_NOT_WRITTEN, NodeError};
pub use registry::DriveRegistry;
pub use volume::{Erasure, ExtentEraser, NodeVolumes, StrayDevice};

pub const GIB: u64 = 1 << 30;
