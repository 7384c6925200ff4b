//! The one error type of the node proxy. Every message names the thing that was
//! wrong and says what to do about it.

use std::path::PathBuf;

use uuid::Uuid;

/// How every image error that retrying cannot mend begins, so that whoever
/// reads it second-hand (a VM's status, from kubelet's FailedMount Event on
/// the VM's pod) can tell a disk whose image will never be written.
pub const IMAGE_NOT_WRITTEN: &str = "the disk image was not written";

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
        "the claim record in {path}'s header cannot be read ({reason}): the drive's claims cannot be told, so nothing new is placed on it; \
         if its volumes are known to be gone, re-sign it with `vdrive sign --device {path} --type tlc|qlc --force`"
    )]
    BadClaimRecord { path: PathBuf, reason: String },

    #[error(
        "{path} belongs to node {owner:?} by its header, not to {node:?}: nothing on it is staged or erased from here; \
         if the drive moved or the node was renamed, run `vdrive drives adopt` on this node first"
    )]
    NotOurDrive {
        path: PathBuf,
        owner: String,
        node: String,
    },

    #[error(
        "{path}'s claim record changed while it was being updated (generation {now} on the drive, {read} when it was read; 0: none): \
         another process wrote it meanwhile, so nothing was written; run it again"
    )]
    ClaimRecordChanged { path: PathBuf, read: u64, now: u64 },

    #[error(
        "{path}'s header lists volume {other}'s virtual drive at {offset_gib} GiB ({size_gib} GiB) where volume {volume} is placed: \
         the ledger and the drive disagree (the ledger lost {other}, or was restored from a copy without it), so volume {volume} is not staged, \
         which would hand it {other}'s data; the drive is quarantined at the node's next drive scan until `vdrive drives adopt` reconciles them"
    )]
    StagedOverAnother {
        path: PathBuf,
        volume: String,
        other: String,
        offset_gib: u64,
        size_gib: u64,
    },

    #[error(
        "{path}'s header lists volume {other}'s virtual drive at {offset_gib} GiB ({size_gib} GiB) over the extent of deleted volume {volume}: \
         the ledger and the drive disagree, so nothing is erased; the drive is quarantined until `vdrive drives adopt` reconciles them"
    )]
    ClaimedByAnother {
        path: PathBuf,
        volume: String,
        other: String,
        offset_gib: u64,
        size_gib: u64,
    },

    #[error(
        "{device} holds {count} virtual drive(s) by its own header (owner {owner:?}; volumes {volumes}): \
         re-signing would hand their data to new tenants, so it is refused even with --force; \
         delete those volumes first, or, if this drive moved or its ledger was lost, bring the claims back with \
         `vdrive drives adopt --drive UUID` on the node that has it"
    )]
    ClaimedDrive {
        device: PathBuf,
        owner: String,
        count: usize,
        volumes: String,
    },

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

    // The volume lifecycle: what a CSI call asked that this node cannot do now.
    #[error("volume {volume} lives on node {on}, not on this node ({here})")]
    WrongNode {
        volume: String,
        on: String,
        here: String,
    },

    #[error(
        "the volume context of {volume} does not match its claims in the ledger; refusing to build a device from it"
    )]
    ContextMismatch { volume: String },

    #[error("volume {volume} has no claims on node {node}")]
    NoClaims { volume: String, node: String },

    #[error("volume {volume} was deleted; its extents are waiting to be erased")]
    Deleted { volume: String },

    #[error(
        "drive {drive} is not attached to node {node}: reattach it or check `vdrive sign show`"
    )]
    DriveNotAttached { drive: Uuid, node: String },

    #[error(
        "extent {size_gib} GiB at {offset_gib} GiB lies outside drive {drive} ({capacity_gib} GiB)"
    )]
    ExtentOutsideDrive {
        drive: Uuid,
        offset_gib: u64,
        size_gib: u64,
        capacity_gib: u64,
    },

    #[error(
        "volume {volume} is made of {parts} virtual drives, and this node's {backend} backend builds a device from at most {max}: \
         give the node device-mapper (/dev/mapper/control), or use a class with one virtual drive per volume",
        max = backend.max_parts().unwrap_or(usize::MAX)
    )]
    TooManyParts {
        volume: String,
        parts: usize,
        backend: crate::drive::Backend,
    },

    #[error(
        "this node has no working device-mapper (/dev/mapper/control): load the dm-mod module, or run with the loop backend"
    )]
    NoDeviceMapper,

    #[error(
        "volume {volume} is a raw block volume, and this node builds devices with loop devices: whoever holds a \
         loop device open read-write can move it onto any part of the shared drive, other tenants' data included. \
         Give the node device-mapper (load dm-mod; it is then chosen by itself), or use a filesystem volume. \
         Test beds only: --unsafe-loop-block-volumes"
    )]
    LoopBlockRefused { volume: String },

    #[error("{device} is not volume {volume}'s device: {reason}")]
    ForeignDevice {
        device: PathBuf,
        volume: String,
        reason: String,
    },

    #[error("volume {volume} is already staged as {mode} at {path}; unstage it there first")]
    StagedElsewhere {
        volume: String,
        mode: &'static str,
        path: PathBuf,
    },

    #[error("volume {volume} is not staged on this node: call NodeStageVolume first")]
    StageFirst { volume: String },

    #[error("volume {volume} is not staged on this node")]
    NotStaged { volume: String },

    #[error("volume {volume} is staged at {staged_at}, not at {given}")]
    StagingPathMismatch {
        volume: String,
        staged_at: PathBuf,
        given: PathBuf,
    },

    #[error("volume {volume} was staged as {staged} and cannot be published as {asked}")]
    AccessTypeMismatch {
        volume: String,
        staged: &'static str,
        asked: &'static str,
    },

    #[error(
        "volume {volume} is published single-writer at {at}; it cannot be published at a second target"
    )]
    SingleWriter { volume: String, at: PathBuf },

    #[error("the device of volume {volume} is gone (the node restarted?): stage it again")]
    DeviceGone { volume: String },

    #[error("volume {volume} is not mounted at its staging path {path}: stage it again")]
    NotMountedAtStaging { volume: String, path: PathBuf },

    #[error("{path} is already mounted from {source_desc}, not from this volume's device {device}")]
    PathTaken {
        path: PathBuf,
        source_desc: String,
        device: PathBuf,
    },

    #[error(
        "the space of this volume holds {kind} (uuid {uuid}) that is not this volume's; it was not wiped when its previous volume was deleted. Refusing to mount it"
    )]
    ForeignFilesystem { kind: String, uuid: String },

    #[error("volume is already formatted as {found}, not {wanted}: stage it with fsType {found}")]
    FsMismatch {
        found: &'static str,
        wanted: &'static str,
    },

    #[error("{device} is mounted but holds no filesystem")]
    NoFilesystem { device: PathBuf },

    #[error("volume {volume} is still published at {at}: unpublish it first")]
    StillPublished { volume: String, at: String },

    #[error("{target} is not where volume {volume} is published")]
    NotPublishedHere { volume: String, target: PathBuf },

    #[error("{target} is not an empty directory or file that vdrive created; leaving it alone")]
    NotOurTarget { target: PathBuf },

    #[error("{path} is neither where volume {volume} is staged nor where it is published")]
    UnknownPath { volume: String, path: PathBuf },

    #[error("{path} does not exist")]
    PathMissing { path: PathBuf },

    #[error(
        "volume {volume} is claimed at {claimed_gib} GiB but {asked_bytes} bytes were asked: expand it through the controller first"
    )]
    NotClaimed {
        volume: String,
        claimed_gib: u64,
        asked_bytes: u64,
    },

    #[error("volume {volume} is still staged at {path}: unstage it before deleting")]
    StillStaged { volume: String, path: PathBuf },

    #[error(
        "volume {volume} still has a device ({device}) on this node: unstage it before deleting"
    )]
    StillHasDevice { volume: String, device: PathBuf },

    #[error("staging record {path} is unreadable: {reason}")]
    Record { path: PathBuf, reason: String },

    #[error("an operation on volume {key} is still in progress; retry later")]
    InProgress { key: String },

    #[error("node task failed: {0}")]
    Task(String),

    // VM disk images written into a block volume at its first staging.
    #[error(
        "{IMAGE_NOT_WRITTEN}: cannot read image file {path} on this node: {reason}; put the image there (a regular file), or change the volume's image parameter"
    )]
    ImageFile { path: PathBuf, reason: String },

    #[error(
        "cannot download image {url}: {reason}; check that the node can reach the server and retry"
    )]
    ImageDownload { url: String, reason: String },

    #[error(
        "{IMAGE_NOT_WRITTEN}: downloading image {url} was answered with HTTP {status}: check that the URL serves the image"
    )]
    ImageHttpStatus { url: String, status: String },

    #[error(
        "{IMAGE_NOT_WRITTEN}: image {image} is {image_bytes} bytes{what}, but the volume's device has {device_bytes} bytes: \
         ask for a volume of at least {need_gib} GiB (the PVC's storage request)"
    )]
    ImageTooLarge {
        image: String,
        what: &'static str,
        image_bytes: u64,
        device_bytes: u64,
        need_gib: u64,
    },

    #[error("{IMAGE_NOT_WRITTEN}: image {image} cannot be imported: {reason}")]
    ImageInvalid { image: String, reason: String },

    #[error(
        "{IMAGE_NOT_WRITTEN}: image {image} ({bytes} bytes) has only zeros in its first MiB: vdrive could not tell it from a blank disk, \
         and would write it again at every staging; use an image that starts with its partition table or boot sector"
    )]
    ImageZeroHead { image: String, bytes: u64 },

    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
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
