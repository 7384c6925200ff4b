//! How a volume's extents become one block device. Each backend is a module
//! behind [`DeviceBackend`]:
//! - [`loop_device`]: a loop device over one extent (any Linux with loop support;
//!   what plain CI hosts have). It joins no extents: a volume is one virtual drive.
//! - [`device_mapper`]: one dm-linear device over all of a volume's extents in
//!   part order, TLC first then QLC (what production nodes have).
//!
//! A node uses dm where `/dev/mapper/control` answers and loop otherwise
//! ([`detect`]). Every method is synchronous and may block on the kernel.

pub mod device_mapper;
pub mod loop_device;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{NodeError, blockdev};
use crate::drive::Backend;

/// One extent located on this node: `size_bytes` of `drive` from `offset_bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub drive: PathBuf,
    pub offset_bytes: u64,
    pub size_bytes: u64,
}

impl Segment {
    pub fn end_bytes(&self) -> u64 {
        self.offset_bytes.saturating_add(self.size_bytes)
    }
}

/// Bytes a volume made of these segments holds.
pub fn total_bytes(parts: &[Segment]) -> u64 {
    parts.iter().map(|p| p.size_bytes).sum()
}

pub trait DeviceBackend: Send + Sync {
    fn kind(&self) -> Backend;

    /// The volume's device if it exists, checked to be made of `parts` (or of a
    /// prefix of them, or of a shorter first part: a device not grown yet). A
    /// device by the volume's name over anything else is an error, never used.
    fn find(&self, volume_id: &str, parts: &[Segment]) -> Result<Option<PathBuf>, NodeError>;

    /// Builds the volume's device over `parts`; all of it or nothing.
    fn build(&self, volume_id: &str, parts: &[Segment]) -> Result<PathBuf, NodeError>;

    /// Grows `device` (found by [`DeviceBackend::find`]) to cover all of `parts`.
    fn grow(&self, volume_id: &str, device: &Path, parts: &[Segment]) -> Result<(), NodeError>;

    /// Takes the device down. An open device is a clear error and stays whole.
    fn remove(&self, volume_id: &str, device: &Path) -> Result<(), NodeError>;

    /// A device of this node that still covers any byte of `part`, if one does:
    /// such a range must not be erased or handed out.
    fn holder(&self, part: &Segment) -> Result<Option<PathBuf>, NodeError>;

    /// Finds the device (growing it to `parts` if it is smaller) or builds it.
    /// The bool says whether this call built it, so that a failure later in the
    /// same call can take it down again.
    fn ensure(&self, volume_id: &str, parts: &[Segment]) -> Result<(PathBuf, bool), NodeError> {
        match self.find(volume_id, parts)? {
            Some(device) => {
                if blockdev::size_bytes(&device)? < total_bytes(parts) {
                    self.grow(volume_id, &device, parts)?;
                }
                Ok((device, false))
            }
            None => Ok((self.build(volume_id, parts)?, true)),
        }
    }
}

/// The backend this machine supports: dm when the kernel answers on
/// `/dev/mapper/control`, loop otherwise.
pub fn detect() -> Arc<dyn DeviceBackend> {
    if super::dm::available() {
        Arc::new(device_mapper::DeviceMapper)
    } else {
        Arc::new(loop_device::LoopDevices)
    }
}

/// The backend of this kind, for a node told which to use.
pub fn of_kind(kind: Backend) -> Result<Arc<dyn DeviceBackend>, NodeError> {
    match kind {
        Backend::Loop => Ok(Arc::new(loop_device::LoopDevices)),
        Backend::Dm if super::dm::available() => Ok(Arc::new(device_mapper::DeviceMapper)),
        Backend::Dm => Err(NodeError::NoDeviceMapper),
    }
}
