//! The one error type of the node proxy. Every message names the thing that was
//! wrong and says what to do about it.

use std::path::PathBuf;

use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot run `{program}`: {source}; install {package} on the node")]
    ToolMissing {
        program: String,
        package: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },

    #[error("unexpected output from `{command}`: {reason}")]
    Output { command: String, reason: String },

    #[error("{op} on {device} failed: {source}")]
    Ioctl {
        op: &'static str,
        device: PathBuf,
        #[source]
        source: nix::Error,
    },

    #[error(
        "{path} carries a vdrive signature that cannot be trusted: {reason}; \
         if the drive holds no volumes, re-sign it with `vdrive sign --device {path} --type tlc|qlc --force`"
    )]
    BadSignature { path: PathBuf, reason: String },

    #[error(
        "{path} is {size_bytes} bytes but was signed as {signed_bytes} bytes; \
         it shrank under its extents: put the original drive back, or re-sign it \
         with --force once its volumes are gone"
    )]
    Shrunk {
        path: PathBuf,
        size_bytes: u64,
        signed_bytes: u64,
    },

    #[error(
        "{path} is {size_bytes} bytes; a vdrive needs at least {need_bytes} bytes \
         (1 MiB header + 1 GiB): use a larger device"
    )]
    TooSmall {
        path: PathBuf,
        size_bytes: u64,
        need_bytes: u64,
    },

    #[error(
        "{path} is not a block device: sign a whole disk such as /dev/nvme0n1, or attach a file with `losetup` first"
    )]
    NotBlockDevice { path: PathBuf },

    #[error("{device} is a partition of {disk}: vdrive signs whole disks; sign {disk} instead")]
    NotWholeDisk { device: PathBuf, disk: String },

    #[error(
        "{device} holds the root filesystem: vdrive never signs the root disk; choose another drive"
    )]
    RootDisk { device: PathBuf },

    #[error(
        "{device} is mounted at {mount_point}: unmount it (and every partition of it) before signing; --force does not override this"
    )]
    Mounted {
        device: PathBuf,
        mount_point: PathBuf,
    },

    #[error(
        "{device} is in use by {user}: stop using it before signing; --force does not override this"
    )]
    InUse { device: PathBuf, user: String },

    #[error("{device} holds {found}: wipe it first, or pass --force to overwrite it")]
    HasData { device: PathBuf, found: String },

    #[error(
        "{device} is already signed as vdrive {uuid}: pass --force to overwrite it (its volumes are lost)"
    )]
    AlreadySigned { device: PathBuf, uuid: Uuid },

    #[error(
        "invalid drive simulation spec {spec:?}: {reason}; write it like `tlc:3840x4,qlc:7680x2` (type:GiBxcount)"
    )]
    InvalidSpec { spec: String, reason: String },

    #[error("unsupported filesystem {given:?}: use ext4 or xfs")]
    UnsupportedFs { given: String },

    #[error(
        "{device} holds {found}, not a single filesystem blkid can name: inspect it with `wipefs {device}`"
    )]
    AmbiguousFs { device: PathBuf, found: String },

    #[error(
        "{device} is {actual_bytes} bytes after resizing, not {wanted_bytes}: its backing {backing} has too little room after offset {offset_bytes}"
    )]
    SizeMismatch {
        device: PathBuf,
        backing: PathBuf,
        offset_bytes: u64,
        wanted_bytes: u64,
        actual_bytes: u64,
    },

    #[error(
        "{device} is {current_bytes} bytes; refusing to shrink it to {wanted_bytes} bytes under its filesystem: volumes only grow"
    )]
    WouldShrink {
        device: PathBuf,
        current_bytes: u64,
        wanted_bytes: u64,
    },

    #[error(
        "{target} is still busy after {waited_ms} ms: a process has files open or its working directory under it (see `fuser -vm {target}`); stop it and retry"
    )]
    MountBusy { target: PathBuf, waited_ms: u64 },

    #[error("cannot erase {size_bytes} bytes at offset {offset_bytes} of {device}: {reason}")]
    OutOfBounds {
        device: PathBuf,
        offset_bytes: u64,
        size_bytes: u64,
        reason: String,
    },

    #[error("{device} is not a bound loop device: attach it first")]
    NotLoop { device: PathBuf },

    #[error("{device} is mounted at {mount_point}: unmount it before detaching")]
    Busy {
        device: PathBuf,
        mount_point: PathBuf,
    },

    #[error(
        "{device} is still bound {waited_ms} ms after detaching: something holds it open (see `fuser -v {device}`)"
    )]
    DetachStuck { device: PathBuf, waited_ms: u64 },

    #[error(
        "growing ext4 on {device} while mounted needs CAP_SYS_RESOURCE, which this process lacks: \
         run the node plugin privileged, or unmount the volume and grow it offline"
    )]
    ResizeNotPermitted { device: PathBuf },

    #[error("{path} is not mounted: xfs grows only while mounted; mount {device} there first")]
    NotMounted { device: PathBuf, path: PathBuf },

    #[error(
        "device-mapper device {name} ({device}) is still open {open_count} time(s) after {waited_ms} ms: \
         unmount it and stop what holds it (see `fuser -vm {device}` and its holders/ in sysfs), then retry"
    )]
    DmBusy {
        name: String,
        device: PathBuf,
        open_count: i32,
        waited_ms: u64,
    },

    #[error("invalid device-mapper {what} {given:?}: {reason}")]
    DmInvalid {
        what: &'static str,
        given: String,
        reason: String,
    },
}

impl NodeError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> NodeError {
        let path = path.into();
        move |source| NodeError::Io {
            action,
            path,
            source,
        }
    }
}
