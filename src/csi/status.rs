//! The one place where the core's errors become gRPC status codes.

use tonic::{Code, Status};

use super::input::InputError;
use super::params::ParamError;
use crate::allocator::AllocError;
use crate::ledger::{LedgerError, StoreError};
use crate::node::NodeError;

/// The specification's capacity messages name its own keys; a StorageClass user
/// needs to know which of vdrive's parameters those are.
const KEYS_HINT: &str = " (for a vdrive volume: containerCapacity is the requested size, driveTypesRatio the tlc and qlc parameters; the minimum drive size is minDriveGiB, the drive count driveCores)";

impl From<AllocError> for Status {
    fn from(err: AllocError) -> Self {
        let hint = match err {
            AllocError::InsufficientTypeCapacity { .. }
            | AllocError::InsufficientTotalCapacity { .. } => KEYS_HINT,
            _ => "",
        };
        Status::new(alloc_code(&err), format!("{err}{hint}"))
    }
}

fn alloc_code(err: &AllocError) -> Code {
    match err {
        // The request can never fit, whatever the node: its parameters must change.
        AllocError::InvalidArgument(_)
        | AllocError::InsufficientTypeCapacity { .. }
        | AllocError::InsufficientTotalCapacity { .. } => Code::InvalidArgument,
        // This node is too full now.
        AllocError::InsufficientDriveCapacity { .. }
        | AllocError::InsufficientDrives { .. }
        | AllocError::NoLayoutFits(_) => Code::ResourceExhausted,
    }
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Self {
        Status::new(store_code(&err), err.to_string())
    }
}

fn store_code(err: &StoreError) -> Code {
    match err {
        StoreError::NodeNotFound(_) => Code::NotFound,
        StoreError::Corrupt { .. } => Code::DataLoss,
        StoreError::Unavailable { .. } | StoreError::Api { .. } => Code::Unavailable,
        StoreError::AnnotationsFull { .. } => Code::ResourceExhausted,
    }
}

impl From<LedgerError> for Status {
    fn from(err: LedgerError) -> Self {
        match err {
            LedgerError::Allocation(inner) => inner.into(),
            LedgerError::Store(inner) => inner.into(),
            other => Status::new(ledger_code(&other), other.to_string()),
        }
    }
}

fn ledger_code(err: &LedgerError) -> Code {
    match err {
        LedgerError::Allocation(inner) | LedgerError::Quarantined { source: inner, .. } => {
            alloc_code(inner)
        }
        LedgerError::Store(inner) => store_code(inner),
        LedgerError::NameConflict { .. } | LedgerError::Incompatible { .. } => Code::AlreadyExists,
        LedgerError::NotInPool { .. }
        | LedgerError::PoolShareExhausted { .. }
        | LedgerError::NoNodeWithDrives { .. }
        | LedgerError::NoRequestedNode { .. }
        | LedgerError::CannotGrow { .. } => Code::ResourceExhausted,
        // The code is the most wanted node's: the pod's, with WaitForFirstConsumer.
        LedgerError::NoNodeFits { failures } => failures
            .first()
            .map_or(Code::ResourceExhausted, ledger_code),
        // What the node or the volume is, not the request, stands in the way; the
        // CO must not retry the same call expecting another answer.
        LedgerError::TooManyParts { .. }
        | LedgerError::FixedSize { .. }
        | LedgerError::DriveNotAttached { .. } => Code::FailedPrecondition,
        LedgerError::VolumeNotFound(_) => Code::NotFound,
        LedgerError::InvalidDrive { .. } => Code::InvalidArgument,
        LedgerError::Contended { .. } => Code::Aborted,
        // The answer depends on a node that cannot be read now; it can be repaired.
        LedgerError::Unreadable { .. } => Code::Unavailable,
        LedgerError::Invariant { .. } => Code::Internal,
    }
}

impl From<NodeError> for Status {
    fn from(err: NodeError) -> Self {
        match err {
            NodeError::Ledger(inner) => inner.into(),
            other => Status::new(node_code(&other), other.to_string()),
        }
    }
}

fn node_code(err: &NodeError) -> Code {
    match err {
        // Mapped by the ledger's own mapping in `From<NodeError>`.
        NodeError::Ledger(_) => Code::Internal,
        // Input the request carried.
        NodeError::InvalidSpec { .. }
        | NodeError::UnsupportedFs { .. }
        | NodeError::AccessTypeMismatch { .. }
        | NodeError::DmInvalid { .. }
        | NodeError::ImageInvalid { .. }
        | NodeError::ImageZeroHead { .. } => Code::InvalidArgument,
        // What the call names is not (or no longer) here.
        NodeError::NoClaims { .. }
        | NodeError::Deleted { .. }
        | NodeError::NotStaged { .. }
        | NodeError::UnknownPath { .. }
        | NodeError::PathMissing { .. } => Code::NotFound,
        // Something else already holds the path.
        NodeError::PathTaken { .. } => Code::AlreadyExists,
        // The node or the device is not in the state the call needs.
        NodeError::BadSignature { .. }
        | NodeError::BadClaimRecord { .. }
        | NodeError::ClaimedDrive { .. }
        | NodeError::NotOurDrive { .. }
        | NodeError::ClaimedByAnother { .. }
        | NodeError::StagedOverAnother { .. }
        | NodeError::Shrunk { .. }
        | NodeError::TooSmall { .. }
        | NodeError::NotBlockDevice { .. }
        | NodeError::NotWholeDisk { .. }
        | NodeError::RootDisk { .. }
        | NodeError::Mounted { .. }
        | NodeError::InUse { .. }
        | NodeError::HasData { .. }
        | NodeError::AlreadySigned { .. }
        | NodeError::AmbiguousFs { .. }
        | NodeError::SizeMismatch { .. }
        | NodeError::WouldShrink { .. }
        | NodeError::OutOfBounds { .. }
        | NodeError::NotLoop { .. }
        | NodeError::Busy { .. }
        | NodeError::ResizeNotPermitted { .. }
        | NodeError::NotMounted { .. }
        | NodeError::WrongNode { .. }
        | NodeError::ContextMismatch { .. }
        | NodeError::DriveNotAttached { .. }
        | NodeError::ExtentOutsideDrive { .. }
        | NodeError::TooManyParts { .. }
        | NodeError::NoDeviceMapper
        | NodeError::LoopBlockRefused { .. }
        | NodeError::ForeignDevice { .. }
        | NodeError::StagedElsewhere { .. }
        | NodeError::StageFirst { .. }
        | NodeError::StagingPathMismatch { .. }
        | NodeError::SingleWriter { .. }
        | NodeError::DeviceGone { .. }
        | NodeError::NotMountedAtStaging { .. }
        | NodeError::ForeignFilesystem { .. }
        | NodeError::FsMismatch { .. }
        | NodeError::StillPublished { .. }
        | NodeError::NotPublishedHere { .. }
        | NodeError::NotOurTarget { .. }
        | NodeError::NotClaimed { .. }
        | NodeError::StillStaged { .. }
        | NodeError::StillHasDevice { .. }
        | NodeError::ImageFile { .. }
        | NodeError::ImageHttpStatus { .. }
        | NodeError::ImageTooLarge { .. } => Code::FailedPrecondition,
        // CSI's answer to a call on a volume another call is still working on,
        // or that lost a race for a drive's header to another writer.
        NodeError::InProgress { .. } | NodeError::ClaimRecordChanged { .. } => Code::Aborted,
        // Transient: the kernel is still letting go; the CO retries.
        NodeError::MountBusy { .. }
        | NodeError::DetachStuck { .. }
        | NodeError::DmBusy { .. }
        // The image server did not answer (in time).
        | NodeError::ImageDownload { .. } => Code::Unavailable,
        // The machine lacks a tool, or the kernel or a tool failed.
        NodeError::ToolMissing { .. }
        | NodeError::Io { .. }
        | NodeError::Command { .. }
        | NodeError::Output { .. }
        | NodeError::Ioctl { .. }
        | NodeError::NoFilesystem { .. }
        | NodeError::Record { .. }
        | NodeError::Task(_) => Code::Internal,
    }
}

impl From<ParamError> for Status {
    fn from(err: ParamError) -> Self {
        Status::invalid_argument(err.to_string())
    }
}

impl From<InputError> for Status {
    fn from(err: InputError) -> Self {
        match err {
            InputError::BadPath { .. }
            | InputError::OutsideKubeletDir { .. }
            | InputError::MountFlag { .. } => Status::invalid_argument(err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_on_a_missing_drive_is_refused_growth_as_a_precondition_not_for_space() {
        let status = Status::from(LedgerError::DriveNotAttached {
            volume: "pvc-1".into(),
            node: "n1".into(),
            want_gib: 4,
            drive: uuid::Uuid::from_u128(7),
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            status
                .message()
                .contains("drive 00000000-0000-0000-0000-000000000007 is not attached to node n1"),
            "{status:?}"
        );
        assert!(
            status.message().contains("Reattach the drive"),
            "{status:?}"
        );
    }
}
