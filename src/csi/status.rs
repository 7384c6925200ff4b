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
        LedgerError::Allocation(inner) => alloc_code(inner),
        LedgerError::Store(inner) => store_code(inner),
        LedgerError::NameConflict { .. } => Code::AlreadyExists,
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
        LedgerError::TooManyParts { .. } | LedgerError::FixedSize { .. } => {
            Code::FailedPrecondition
        }
        LedgerError::VolumeNotFound(_) => Code::NotFound,
        LedgerError::InvalidDrive { .. } => Code::InvalidArgument,
        LedgerError::Contended { .. } => Code::Aborted,
        LedgerError::Invariant { .. } => Code::Internal,
    }
}

impl From<ParamError> for Status {
    fn from(err: ParamError) -> Self {
        Status::invalid_argument(err.to_string())
    }
}
