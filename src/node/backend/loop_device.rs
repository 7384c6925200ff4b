//! The loop backend: a volume is one virtual drive, its device the loop device
//! over exactly that extent. Loop device numbers are reused, so the device is
//! found each time by its backing drive and offset, never remembered by name.

use std::path::{Path, PathBuf};

use super::{DeviceBackend, Segment};
use crate::drive::Backend;
use crate::node::{NodeError, loopdev};

pub struct LoopDevices;

impl LoopDevices {
    fn only<'a>(volume_id: &str, parts: &'a [Segment]) -> Result<&'a Segment, NodeError> {
        match parts {
            [part] => Ok(part),
            _ => Err(NodeError::TooManyParts {
                volume: volume_id.to_string(),
                parts: parts.len(),
                backend: Backend::Loop,
            }),
        }
    }
}

impl DeviceBackend for LoopDevices {
    fn kind(&self) -> Backend {
        Backend::Loop
    }

    fn find(&self, volume_id: &str, parts: &[Segment]) -> Result<Option<PathBuf>, NodeError> {
        let part = Self::only(volume_id, parts)?;
        let Some(device) = loopdev::find(&part.drive, part.offset_bytes)? else {
            return Ok(None);
        };
        let current = loopdev::size_bytes(&device)?;
        if current > part.size_bytes {
            // Larger than the volume: another extent's device that starts here
            // (a stale one), never this volume's.
            return Err(NodeError::ForeignDevice {
                device,
                volume: volume_id.to_string(),
                reason: format!(
                    "it covers {current} bytes from this volume's first byte, more than the volume's {} bytes; detach it",
                    part.size_bytes
                ),
            });
        }
        Ok(Some(device))
    }

    fn build(&self, volume_id: &str, parts: &[Segment]) -> Result<PathBuf, NodeError> {
        let part = Self::only(volume_id, parts)?;
        loopdev::attach(&part.drive, part.offset_bytes, part.size_bytes)
    }

    fn grow(&self, volume_id: &str, device: &Path, parts: &[Segment]) -> Result<(), NodeError> {
        let part = Self::only(volume_id, parts)?;
        loopdev::set_size(device, part.size_bytes)
    }

    fn remove(&self, _volume_id: &str, device: &Path) -> Result<(), NodeError> {
        loopdev::detach(device)
    }

    fn holder(&self, part: &Segment) -> Result<Option<PathBuf>, NodeError> {
        loopdev::covering(&part.drive, part.offset_bytes, part.size_bytes)
    }
}
