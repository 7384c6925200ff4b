//! Which volume capabilities vdrive serves: single-node access, mount or block.

use tonic::Status;

use super::input;
use super::proto::volume_capability::{AccessType, access_mode::Mode};
use super::proto::{VolumeCapability, volume_capability};

/// Filesystems vdrive formats.
pub const FS_TYPES: [&str; 2] = ["ext4", "xfs"];
pub const DEFAULT_FS_TYPE: &str = "ext4";

/// Checks one capability: an access type and a single-node access mode.
pub fn validate(capability: &VolumeCapability) -> Result<(), Status> {
    let mode = capability
        .access_mode
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("volume capability has no access_mode"))?;
    match Mode::try_from(mode.mode) {
        Ok(
            Mode::SingleNodeWriter
            | Mode::SingleNodeReaderOnly
            | Mode::SingleNodeSingleWriter
            | Mode::SingleNodeMultiWriter,
        ) => {}
        Ok(other) => {
            return Err(Status::invalid_argument(format!(
                "access mode {} is not supported: vdrive volumes are local to one node; use a single-node mode such as ReadWriteOnce",
                other.as_str_name()
            )));
        }
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown access mode {}",
                mode.mode
            )));
        }
    }
    match &capability.access_type {
        None => Err(Status::invalid_argument(
            "volume capability has no access_type: set mount or block",
        )),
        Some(AccessType::Block(_)) => Ok(()),
        Some(AccessType::Mount(mount)) => {
            if mount.fs_type.is_empty() || FS_TYPES.contains(&mount.fs_type.as_str()) {
                // The filesystem may still come from elsewhere (the class, the
                // volume context): callers that know it check its own flags.
                let fs = Some(mount.fs_type.as_str()).filter(|f| !f.is_empty());
                Ok(input::mount_flags(&mount.mount_flags, fs)?)
            } else {
                Err(Status::invalid_argument(format!(
                    "filesystem {:?} is not supported: use one of {}",
                    mount.fs_type,
                    FS_TYPES.join(", ")
                )))
            }
        }
    }
}

pub fn validate_all(capabilities: &[VolumeCapability]) -> Result<(), Status> {
    if capabilities.is_empty() {
        return Err(Status::invalid_argument(
            "volume_capabilities must not be empty",
        ));
    }
    capabilities.iter().try_for_each(validate)
}

/// The filesystem a mount capability asks for, if it names one.
pub fn fs_type(capability: &VolumeCapability) -> Option<&str> {
    match &capability.access_type {
        Some(AccessType::Mount(mount)) if !mount.fs_type.is_empty() => Some(&mount.fs_type),
        _ => None,
    }
}

pub fn is_block(capability: &VolumeCapability) -> bool {
    matches!(capability.access_type, Some(AccessType::Block(_)))
}

pub fn mount_flags(capability: &VolumeCapability) -> &[String] {
    match &capability.access_type {
        Some(AccessType::Mount(mount)) => &mount.mount_flags,
        _ => &[],
    }
}

pub fn is_read_only_mode(capability: &VolumeCapability) -> bool {
    capability
        .access_mode
        .as_ref()
        .is_some_and(|m| m.mode == Mode::SingleNodeReaderOnly as i32)
}

/// SINGLE_NODE_SINGLE_WRITER: one workload, so one published target.
pub fn is_single_writer(capability: &VolumeCapability) -> bool {
    capability
        .access_mode
        .as_ref()
        .is_some_and(|m| m.mode == Mode::SingleNodeSingleWriter as i32)
}

/// A mount capability with `mode`, for clients and tests.
pub fn mount(fs_type: &str, mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }),
        access_type: Some(AccessType::Mount(volume_capability::MountVolume {
            fs_type: fs_type.to_string(),
            ..Default::default()
        })),
    }
}

/// A block capability with `mode`, for clients and tests.
pub fn block(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }),
        access_type: Some(AccessType::Block(volume_capability::BlockVolume {})),
    }
}
