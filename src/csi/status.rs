//! The one place where the core's errors become gRPC status codes.

use tonic::{Code, Status};

use super::params::ParamError;
use crate::allocator::AllocError;
use crate::ledger::{LedgerError, StoreError};

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
