//! The filesystem side of a volume's device: format-if-blank and mount at the
//! staging path, bind to targets, and take targets away again. Only what vdrive
//! made is ever removed.

use std::path::Path;

use uuid::Uuid;

use super::{NodeError, blockdev, fs, mounts};

/// A filesystem this much smaller than its device is grown at staging (ext4
/// leaves a partial last block group unused, so an exact match is too strict).
const GROW_SLACK_BYTES: u64 = 64 << 20;

/// How to mount a volume at its staging path.
pub struct MountSpec<'a> {
    pub wanted: Option<fs::FsType>,
    /// The volume's id as a uuid: the filesystem uuid vdrive formats with, and the
    /// only one it mounts.
    pub volume_uuid: Option<Uuid>,
    pub flags: &'a [String],
    pub read_only: bool,
    pub formatting: &'a Formatting<'a>,
}

/// What the staging record knows about formatting the device.
pub struct Formatting<'a> {
    /// An earlier stage began formatting this device and was cut short: the
    /// device was blank then (only a blank device is formatted), so what it
    /// holds now is that half-made filesystem, and it is formatted again.
    pub interrupted: bool,
    /// Marks the record before mkfs starts (true) and after it ends (false).
    pub mark: &'a dyn Fn(bool) -> Result<(), NodeError>,
}

impl Formatting<'_> {
    /// Formats `device`, marked in the record while mkfs runs.
    fn format(&self, device: &Path, fs: fs::FsType, uuid: Option<Uuid>) -> Result<(), NodeError> {
        (self.mark)(true)?;
        fs::format(device, fs, uuid)?;
        (self.mark)(false)
    }
}

/// Formats (if blank) and mounts a volume's device at its staging path; returns
/// the filesystem it carries.
pub fn mount_staged(
    device: &Path,
    staging: &Path,
    spec: &MountSpec<'_>,
) -> Result<fs::FsType, NodeError> {
    if mounts::is_mount_point(staging)? {
        let source = mounts::mount_source(staging)?;
        if !source.as_deref().is_some_and(|s| same_device(s, device)) {
            return Err(NodeError::PathTaken {
                path: staging.to_path_buf(),
                source_desc: source.map_or("an unknown source".into(), |s| s.display().to_string()),
                device: device.to_path_buf(),
            });
        }
        return match fs::detect(device)? {
            Some(kind) => kind.parse(),
            None => Err(NodeError::NoFilesystem {
                device: device.to_path_buf(),
            }),
        };
    }
    // The directory first: nothing is formatted for a staging path that cannot exist.
    std::fs::create_dir_all(staging).map_err(NodeError::io("create", staging))?;
    let found = if spec.formatting.interrupted {
        None
    } else {
        fs::identify(device)?
    };
    let fs = match found {
        None => {
            let fs = spec.wanted.unwrap_or(fs::FsType::Ext4);
            spec.formatting.format(device, fs, spec.volume_uuid)?;
            fs
        }
        Some(found) => {
            // Ours only if it carries this volume's uuid: a filesystem left by an
            // earlier tenant of this space must never be mounted.
            if spec.volume_uuid.is_some() && found.uuid != spec.volume_uuid {
                return Err(NodeError::ForeignFilesystem {
                    kind: found.kind,
                    uuid: found.uuid.map_or("unknown".into(), |u| u.to_string()),
                });
            }
            let fs: fs::FsType = found.kind.parse()?;
            if let Some(wanted) = spec.wanted.filter(|w| *w != fs) {
                return Err(NodeError::FsMismatch {
                    found: fs.as_str(),
                    wanted: wanted.as_str(),
                });
            }
            // A volume expanded while it was not staged (or whose node could not
            // grow it online) is grown here, before the workload sees it.
            let device_bytes = blockdev::size_bytes(device)?;
            if fs == fs::FsType::Ext4
                && fs::ext4_size_bytes(device)?
                    .is_some_and(|fs_bytes| fs_bytes + GROW_SLACK_BYTES < device_bytes)
            {
                fs::grow(device, staging, fs)?;
            }
            fs
        }
    };
    mounts::mount(
        device,
        staging,
        Some(fs.as_str()),
        spec.flags,
        spec.read_only,
    )?;
    if fs == fs::FsType::Xfs && !spec.read_only {
        // Cheap, and a no-op when the filesystem already fills the device.
        if let Err(err) = fs::grow(device, staging, fs) {
            let _ = mounts::unmount(staging);
            return Err(err);
        }
    }
    Ok(fs)
}

/// Publishes a staged volume at `target`: the device itself for a block volume
/// (bound onto an empty file), the staging mount for a filesystem volume.
pub fn bind_target(
    device: &Path,
    staging: &Path,
    target: &Path,
    block: bool,
    read_only: bool,
) -> Result<(), NodeError> {
    if mounts::is_mount_point(target)? {
        return if mounted_from(target, device)? {
            Ok(())
        } else {
            Err(NodeError::PathTaken {
                path: target.to_path_buf(),
                source_desc: "something else".into(),
                device: device.to_path_buf(),
            })
        };
    }
    if block {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(NodeError::io("create", parent))?;
        }
        if !target.exists() {
            std::fs::File::create(target).map_err(NodeError::io("create", target))?;
        }
        mounts::bind_mount(device, target, read_only)
    } else {
        std::fs::create_dir_all(target).map_err(NodeError::io("create", target))?;
        mounts::bind_mount(staging, target, read_only)
    }
}

/// Whether `path` is mounted from `device`.
pub fn mounted_from(path: &Path, device: &Path) -> Result<bool, NodeError> {
    Ok(mounts::is_mount_point(path)?
        && mounts::mount_source(path)?.is_some_and(|s| same_device(&s, device)))
}

/// Removes a target this driver created: an empty directory or an empty file
/// (the bind point of a block volume). Never anything with content.
pub fn remove_target(target: &Path) -> Result<(), NodeError> {
    let removed = match std::fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir(target),
        Ok(meta) if meta.is_file() && meta.len() == 0 => std::fs::remove_file(target),
        Ok(_) => {
            return Err(NodeError::NotOurTarget {
                target: target.to_path_buf(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    removed.map_err(NodeError::io("remove", target))
}

/// Two paths name the same block device (e.g. /dev/dm-3 and /dev/mapper/x).
pub fn same_device(a: &Path, b: &Path) -> bool {
    if let (Ok(Some(x)), Ok(Some(y))) = (blockdev::dev_number(a), blockdev::dev_number(b)) {
        return x == y;
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
