//! `GET /api/v1/pools/status` and `GET /api/v1/pools/health`: the same answers
//! as `vdrive pools status|health`, from the same code.

use axum::Json;
use axum::extract::State;

use super::auth::{Access, Guard};
use super::error::ErrorBody;
use super::{ApiError, ApiState};
use crate::pools::{HealthReport, PoolsStatus, cluster_health, pools_status};

/// Capacity, usage and servers of the k8s and vm pools and the system reserve,
/// in GB (GiB).
#[utoipa::path(
    get,
    path = "/api/v1/pools/status",
    tag = "pools",
    responses(
        (status = 200, description = "Pool status", body = PoolsStatus),
        (status = 401, description = "No valid bearer token (in a cluster)", body = ErrorBody),
        (status = 403, description = "The caller may not get nodes (in a cluster)", body = ErrorBody),
        (status = 503, description = "The ledger cannot be read", body = ErrorBody),
    )
)]
pub async fn status(
    State(state): State<ApiState>,
    guard: Guard,
) -> Result<Json<PoolsStatus>, ApiError> {
    guard.allow(Access::pools()).await?;
    let survey = state.pools.survey().await?;
    Ok(Json(pools_status(&survey.nodes, state.pools.settings())))
}

/// healthy / warning / critical per pool and overall, with what to do about
/// each warning and error. Always 200 when the answer could be computed: the
/// health is in the body.
#[utoipa::path(
    get,
    path = "/api/v1/pools/health",
    tag = "pools",
    responses(
        (status = 200, description = "Pool health", body = HealthReport),
        (status = 401, description = "No valid bearer token (in a cluster)", body = ErrorBody),
        (status = 403, description = "The caller may not get nodes (in a cluster)", body = ErrorBody),
        (status = 503, description = "The ledger cannot be read", body = ErrorBody),
    )
)]
pub async fn health(
    State(state): State<ApiState>,
    guard: Guard,
) -> Result<Json<HealthReport>, ApiError> {
    guard.allow(Access::pools()).await?;
    let survey = state.pools.survey().await?;
    Ok(Json(cluster_health(
        &survey.nodes,
        &survey.quarantined,
        state.pools.settings(),
    )))
}
