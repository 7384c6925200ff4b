//! The dm backend: a volume is one dm-linear device, `vdrive-<volume id>`, over
//! all of its extents in part order. Changing a dm table needs CAP_SYS_ADMIN, so
//! a tenant holding the device open cannot move it onto someone else's bytes (a
//! loop device's mapping can be changed by anyone who has it open read-write).
//!
//! After a restart the device is found again by name and trusted only when its
//! uuid is ours and its table is exactly the volume's extents.

use std::path::{Path, PathBuf};

use super::{DeviceBackend, Segment};
use crate::drive::Backend;
use crate::node::dm::{self, Linear};
use crate::node::{NodeError, blockdev, loopdev};

const SECTOR: u64 = 512;
/// Every device vdrive builds is named, and its dm uuid prefixed, with these.
const NAME_PREFIX: &str = "vdrive-";
const UUID_PREFIX: &str = "VDRIVE-";

pub struct DeviceMapper;

pub fn device_name(volume_id: &str) -> String {
    format!("{NAME_PREFIX}{volume_id}")
}

fn device_uuid(volume_id: &str) -> String {
    format!("{UUID_PREFIX}{volume_id}")
}

/// The linear table of `parts`, in order.
fn table_of(parts: &[Segment]) -> Result<Vec<Linear>, NodeError> {
    parts
        .iter()
        .map(|part| {
            let (major, minor) =
                blockdev::dev_number(&part.drive)?.ok_or_else(|| NodeError::NotBlockDevice {
                    path: part.drive.clone(),
                })?;
            Ok(Linear {
                major,
                minor,
                start_sector: part.offset_bytes / SECTOR,
                sectors: part.size_bytes / SECTOR,
            })
        })
        .collect()
}

/// Whether `live` is `wanted`, or what `wanted` was before it grew: the same
/// segments with the last live one possibly shorter and later ones not added yet.
fn is_ours_before_growth(live: &[Linear], wanted: &[Linear]) -> bool {
    let Some((last, head)) = live.split_last() else {
        return false;
    };
    if live.len() > wanted.len() || head != &wanted[..head.len()] {
        return false;
    }
    let same_place = &wanted[head.len()];
    (last.major, last.minor, last.start_sector)
        == (same_place.major, same_place.minor, same_place.start_sector)
        && last.sectors <= same_place.sectors
}

impl DeviceBackend for DeviceMapper {
    fn kind(&self) -> Backend {
        Backend::Dm
    }

    fn find(&self, volume_id: &str, parts: &[Segment]) -> Result<Option<PathBuf>, NodeError> {
        let name = device_name(volume_id);
        let Some(info) = dm::info(&name)? else {
            return Ok(None);
        };
        let device = dm::device_path(info.major, info.minor, &name)?;
        let foreign = |reason: String| NodeError::ForeignDevice {
            device: device.clone(),
            volume: volume_id.to_string(),
            reason,
        };
        if info.uuid != device_uuid(volume_id) {
            return Err(foreign(format!(
                "its dm uuid is {:?}, not vdrive's {:?}; remove it with `dmsetup remove {name}` if nothing uses it",
                info.uuid,
                device_uuid(volume_id)
            )));
        }
        let live = dm::table(&name)?.unwrap_or_default();
        let wanted = table_of(parts)?;
        if live != wanted && !is_ours_before_growth(&live, &wanted) {
            return Err(foreign(format!(
                "its table {} is not the volume's extents {} in the ledger; refusing to use it",
                describe(&live),
                describe(&wanted)
            )));
        }
        if info.suspended {
            // A reload cut short (the node crashed mid-growth) left it suspended:
            // I/O would hang. Reloading its own live table resumes it.
            tracing::warn!(device = %device.display(), "resuming a suspended volume device");
            dm::reload_linear(&name, &live)?;
        }
        Ok(Some(device))
    }

    fn build(&self, volume_id: &str, parts: &[Segment]) -> Result<PathBuf, NodeError> {
        dm::create_linear(
            &device_name(volume_id),
            &device_uuid(volume_id),
            &table_of(parts)?,
        )
    }

    fn grow(&self, volume_id: &str, _device: &Path, parts: &[Segment]) -> Result<(), NodeError> {
        dm::reload_linear(&device_name(volume_id), &table_of(parts)?)
    }

    fn remove(&self, volume_id: &str, _device: &Path) -> Result<(), NodeError> {
        dm::remove(&device_name(volume_id)).map(|_| ())
    }

    fn holder(&self, part: &Segment) -> Result<Option<PathBuf>, NodeError> {
        // A volume staged before this node had dm may still sit on a loop device.
        if let Some(device) = loopdev::covering(&part.drive, part.offset_bytes, part.size_bytes)? {
            return Ok(Some(device));
        }
        let table = table_of(std::slice::from_ref(part))?;
        let [range] = table.as_slice() else {
            return Ok(None);
        };
        let Some(drive) = blockdev::kernel_name_of(&part.drive)? else {
            return Ok(None);
        };
        let end = range.start_sector + range.sectors;
        // The kernel lists every device stacked on the drive as its holder.
        for holder in blockdev::holders(&drive) {
            let device = PathBuf::from("/dev").join(&holder);
            let ours = blockdev::attribute(&holder, "dm/name")
                .filter(|name| name.starts_with(NAME_PREFIX));
            let Some(name) = ours else {
                // Something else (LVM, a crypt device, a hand-made mapping) sits
                // on a shared drive: no range of it is safe to erase or reuse.
                return Ok(Some(device));
            };
            let overlaps = dm::table(&name)?.unwrap_or_default().iter().any(|t| {
                (t.major, t.minor) == (range.major, range.minor)
                    && t.start_sector < end
                    && range.start_sector < t.start_sector + t.sectors
            });
            if overlaps {
                return Ok(Some(device));
            }
        }
        Ok(None)
    }
}

fn describe(table: &[Linear]) -> String {
    let parts: Vec<String> = table
        .iter()
        .map(|t| format!("{}:{} +{}s@{}", t.major, t.minor, t.sectors, t.start_sector))
        .collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lin(minor: u64, start: u64, sectors: u64) -> Linear {
        Linear {
            major: 259,
            minor,
            start_sector: start,
            sectors,
        }
    }

    #[test]
    fn a_device_not_grown_yet_is_still_the_volumes() {
        let wanted = [lin(1, 2048, 100), lin(2, 2048, 50)];
        assert!(is_ours_before_growth(&wanted[..1], &wanted));
        assert!(is_ours_before_growth(&[lin(1, 2048, 60)], &wanted));
        assert!(!is_ours_before_growth(&[lin(1, 2048, 101)], &wanted));
        assert!(!is_ours_before_growth(&[lin(1, 4096, 100)], &wanted));
        assert!(!is_ours_before_growth(&[lin(2, 2048, 50)], &wanted));
        assert!(!is_ours_before_growth(&[], &wanted));
        let longer = [lin(1, 2048, 100), lin(2, 2048, 50), lin(3, 0, 1)];
        assert!(!is_ours_before_growth(&longer, &wanted));
    }
}
