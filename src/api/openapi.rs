//! The API's OpenAPI document, generated from the handlers' annotations and
//! the very types they parse and answer with.

use axum::Json;
use utoipa::OpenApi;

use super::error::{ErrorBody, ErrorDetail};
use crate::pools::{Health, HealthReport, PoolHealths, PoolStatus, PoolsStatus, ReserveStatus};
use crate::vms::{CreateVm, ResizeVm, Vm, VmDeleted, VmDisk, VmList, VmRuntime, VmStatus};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "vdrive pool API",
        description = "Per-server k8s and vm pools, and VMs whose disks come from the vm pool. Sizes in GB are GiB (2^30 bytes)."
    ),
    paths(
        super::pools::status,
        super::pools::health,
        super::vms::create,
        super::vms::list,
        super::vms::get,
        super::vms::resize,
        super::vms::delete,
    ),
    components(schemas(
        PoolsStatus, PoolStatus, ReserveStatus, HealthReport, PoolHealths, Health,
        CreateVm, ResizeVm, Vm, VmDisk, VmRuntime, VmStatus, VmList, VmDeleted,
        ErrorBody, ErrorDetail,
    )),
    tags(
        (name = "pools", description = "Pool capacity, usage and health"),
        (name = "vms", description = "VM disks from the vm pool"),
    )
)]
pub struct ApiDoc;

/// `GET /api/v1/openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
