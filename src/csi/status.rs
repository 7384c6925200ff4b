//! The one place where the core's errors become gRPC status codes.

use tonic::{Code, Status};

use super::params::ParamError;
use crate::allocator::AllocError;
use crate::ledger::{LedgerError, StoreError};
use crate::node::NodeError;

/// The specification's capacity messages name its own keys; a StorageClass user
/// needs to know which of vdrive's parameters those are.
const KEYS_HINT: &str = " (for a vdrive volume: containerCapacity is the requested size, driveTypesRatio the tlc and qlc parameters; the minimum drive size is minDriveGiB, the drive count driveCores)";

impl From<AllocError> for Status {
    fn from(err: AllocError) -> Self {
        let code = match &err {
            // The request can never fit, whatever the node: its parameters must change.
            AllocError::InvalidArgument(_)
            | AllocError::InsufficientTypeCapacity { .. }
            | AllocError::InsufficientTotalCapacity { .. } => Code::InvalidArgument,
            // This node is too full now.
            AllocError::InsufficientDriveCapacity { .. }
            | AllocError::InsufficientDrives { .. }
            | AllocError::NoLayoutFits(_) => Code::ResourceExhausted,
        };
        let hint = match err {
            AllocError::InsufficientTypeCapacity { .. }
            | AllocError::InsufficientTotalCapacity { .. } => KEYS_HINT,
            _ => "",
        };
        Status::new(code, format!("{err}{hint}"))
    }
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Self {
        let code = match &err {
            StoreError::NodeNotFound(_) => Code::NotFound,
            StoreError::Corrupt { .. } => Code::DataLoss,
            StoreError::Unavailable { .. } | StoreError::Api { .. } => Code::Unavailable,
        };
        Status::new(code, err.to_string())
    }
}

impl From<LedgerError> for Status {
    fn from(err: LedgerError) -> Self {
        let code = match err {
            LedgerError::Allocation(inner) => return inner.into(),
            LedgerError::Store(inner) => return inner.into(),
            LedgerError::NameConflict { .. } => Code::AlreadyExists,
            LedgerError::NotInPool { .. }
            | LedgerError::PoolShareExhausted { .. }
            | LedgerError::CannotGrow { .. } => Code::ResourceExhausted,
            LedgerError::TooManyParts { .. } => Code::FailedPrecondition,
            LedgerError::VolumeNotFound(_) => Code::NotFound,
            LedgerError::InvalidDrive { .. } => Code::InvalidArgument,
            LedgerError::Contended { .. } => Code::Aborted,
            LedgerError::Invariant { .. } => Code::Internal,
        };
        Status::new(code, err.to_string())
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
        | NodeError::DmInvalid { .. } => Code::InvalidArgument,
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
        | NodeError::StillHasDevice { .. } => Code::FailedPrecondition,
        // Transient: the kernel is still letting go; the CO retries.
        NodeError::MountBusy { .. } | NodeError::DetachStuck { .. } | NodeError::DmBusy { .. } => {
            Code::Unavailable
        }
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

/// Whether a claim failure is about this node only, so another node may fit.
pub fn try_another_node(err: &LedgerError) -> bool {
    matches!(
        err,
        LedgerError::Allocation(
            AllocError::InsufficientDriveCapacity { .. }
                | AllocError::InsufficientDrives { .. }
                | AllocError::NoLayoutFits(_)
        ) | LedgerError::NotInPool { .. }
            | LedgerError::PoolShareExhausted { .. }
            | LedgerError::TooManyParts { .. }
    )
}
