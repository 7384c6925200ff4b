//! The API's one error body and the one mapping of every failure to a status.

use axum::Json;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::ledger::LedgerError;
use crate::vms::VmError;

/// `{"error": {"kind": ..., "message": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, snake_case name of the failure.
    #[schema(example = "not_found")]
    pub kind: String,
    /// What was wrong and how to fix it.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                kind: self.kind.to_string(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<VmError> for ApiError {
    fn from(err: VmError) -> Self {
        let status = match &err {
            VmError::Invalid(_)
            | VmError::Shrink { .. }
            | VmError::UnknownImage { .. }
            | VmError::UnknownServerType { .. } => StatusCode::BAD_REQUEST,
            VmError::NotFound { .. } => StatusCode::NOT_FOUND,
            VmError::Exists { .. } | VmError::Busy { .. } | VmError::Precondition(_) => {
                StatusCode::CONFLICT
            }
            VmError::NoRoom(_) => StatusCode::INSUFFICIENT_STORAGE,
            VmError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            VmError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, err.kind(), err.to_string())
    }
}

impl From<LedgerError> for ApiError {
    fn from(err: LedgerError) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the ledger cannot be read: {err}"),
        )
    }
}

pub async fn no_route(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no such endpoint {}: see /api/v1/openapi.json for the API",
            uri.path()
        ),
    )
}

pub async fn method_not_allowed(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not take this method: see /api/v1/openapi.json for the API",
            uri.path()
        ),
    )
}
