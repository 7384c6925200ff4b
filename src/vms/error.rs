//! What can go wrong with a VM request, each case saying how to fix it. The
//! API maps a case to its HTTP status once ([`VmError::kind`] names it).

use thiserror::Error;
use tonic::{Code, Status};

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum VmError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "unknown image {name:?}: the image catalog has {known} (add images with `--vm-images FILE` or the chart's vm.images)"
    )]
    UnknownImage { name: String, known: String },
    #[error("unknown server_type {name:?}: the catalog has {known}")]
    UnknownServerType { name: String, known: String },
    #[error("no VM {id:?} (a VM's id is namespace.name)")]
    NotFound { id: String },
    #[error(
        "a VM named {name:?} already exists in namespace {namespace:?}: choose another name, or delete it first"
    )]
    Exists { namespace: String, name: String },
    #[error("VM {id:?} is busy: {reason}")]
    Busy { id: String, reason: String },
    #[error("VM {id:?} has a {current} GB disk; disks only grow: ask for more than {current} GB")]
    Shrink { id: String, current: u64 },
    #[error("no room for the disk: {0}")]
    NoRoom(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl VmError {
    /// The `kind` of the API's error body.
    pub fn kind(&self) -> &'static str {
        match self {
            VmError::Invalid(_) | VmError::Shrink { .. } => "invalid_request",
            VmError::UnknownImage { .. } => "unknown_image",
            VmError::UnknownServerType { .. } => "unknown_server_type",
            VmError::NotFound { .. } => "not_found",
            VmError::Exists { .. } => "already_exists",
            VmError::Busy { .. } => "busy",
            VmError::NoRoom(_) => "insufficient_storage",
            VmError::Precondition(_) => "failed_precondition",
            VmError::Unavailable(_) => "unavailable",
            VmError::Internal(_) => "internal",
        }
    }

    /// A CSI call's failure, for the VM it was made for.
    pub fn from_csi(id: &str, status: &Status) -> VmError {
        let message = status.message().to_string();
        match status.code() {
            Code::InvalidArgument => VmError::Invalid(message),
            Code::ResourceExhausted | Code::OutOfRange => VmError::NoRoom(message),
            Code::NotFound => VmError::NotFound { id: id.to_string() },
            Code::Aborted | Code::AlreadyExists => VmError::Busy {
                id: id.to_string(),
                reason: message,
            },
            Code::FailedPrecondition => VmError::Precondition(message),
            Code::Unavailable | Code::DeadlineExceeded => VmError::Unavailable(message),
            _ => VmError::Internal(message),
        }
    }
}
