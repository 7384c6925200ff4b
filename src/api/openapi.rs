//! The API's OpenAPI document, generated from the handlers' annotations and
//! the very types they parse and answer with.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

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
    modifiers(&BearerToken),
    // In a cluster every request needs a Kubernetes bearer token; all-in-one
    // (on loopback) needs none.
    security((), ("bearer" = [])),
    tags(
        (name = "pools", description = "Pool capacity, usage and health"),
        (name = "vms", description = "VM disks from the vm pool"),
    )
)]
pub struct ApiDoc;

/// The `bearer` scheme: a Kubernetes token (a ServiceAccount's from
/// `kubectl create token`, or a user's), reviewed by the cluster.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some(
            "In a cluster: a Kubernetes token (TokenReview); a request may do what the token's user may do to the PVCs of the VM's namespace (create, list, get, patch, delete), pools need `get` on nodes.".into(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// `GET /api/v1/openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
