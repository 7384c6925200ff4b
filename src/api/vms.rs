//! `/api/v1/vms`: VMs whose disks come from the vm pool.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;

use super::auth::{Access, Guard};
use super::error::ErrorBody;
use super::json::JsonBody;
use super::{ApiError, ApiState};
use crate::vms::{
    CreateVm, DEFAULT_NAMESPACE, ResizeVm, Vm, VmDeleted, VmList, check_dns_label, parse_vm_id,
};

/// Creates a VM: its disk is a block volume of the vm pool, `storage` GB, into
/// which the node writes `image`; the VM is Provisioning until it has.
#[utoipa::path(
    post,
    path = "/api/v1/vms",
    tag = "vms",
    operation_id = "createVm",
    request_body = CreateVm,
    responses(
        (status = 201, description = "The VM, Provisioning", body = Vm, links(
            ("GetVm" = (operation_id = "getVm", parameters(("vm_id" = "$response.body#/id")))),
            ("ResizeVm" = (operation_id = "resizeVm", parameters(("vm_id" = "$response.body#/id")))),
            ("DeleteVm" = (operation_id = "deleteVm", parameters(("vm_id" = "$response.body#/id")))),
        )),
        (status = 401, description = "No valid bearer token (in a cluster)", body = ErrorBody),
        (status = 403, description = "The caller may not create the namespace's PVCs (in a cluster)", body = ErrorBody),
        (status = 400, description = "A field is wrong, or the image or server type is unknown", body = ErrorBody),
        (status = 409, description = "A VM of that name exists in the namespace", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 507, description = "No room for the disk in the vm pool", body = ErrorBody),
        (status = 503, description = "The ledger or the node cannot be reached", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<ApiState>,
    guard: Guard,
    JsonBody(request): JsonBody<CreateVm>,
) -> Result<(StatusCode, Json<Vm>), ApiError> {
    let namespace = request.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    check_dns_label("namespace", namespace)?;
    guard.allow(Access::vms("create", Some(namespace))).await?;
    let vm = state.vms.create(request).await?;
    Ok((StatusCode::CREATED, Json(vm)))
}

/// The VMs of one namespace (`?namespace=NAME`), or of every namespace.
#[utoipa::path(
    get,
    path = "/api/v1/vms",
    tag = "vms",
    operation_id = "listVms",
    params(
        ("namespace" = Option<String>, Query, description = "Only this namespace's VMs (default: every namespace)"),
    ),
    responses(
        (status = 200, description = "The VMs", body = VmList),
        (status = 401, description = "No valid bearer token (in a cluster)", body = ErrorBody),
        (status = 403, description = "The caller may not list the namespace's PVCs (in a cluster)", body = ErrorBody),
        (status = 400, description = "An unknown query parameter, or a namespace that is not a DNS label", body = ErrorBody),
        (status = 503, description = "The store cannot be read", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<ApiState>,
    guard: Guard,
    RawQuery(query): RawQuery,
) -> Result<Json<VmList>, ApiError> {
    let namespace = list_namespace(query.as_deref())?;
    guard
        .allow(Access::vms("list", namespace.as_deref()))
        .await?;
    Ok(Json(VmList {
        vms: state.vms.list(namespace).await?,
    }))
}

/// One VM, with its status (Provisioning, Ready, Failed and why).
#[utoipa::path(
    get,
    path = "/api/v1/vms/{vm_id}",
    tag = "vms",
    operation_id = "getVm",
    params(("vm_id" = String, Path, description = "namespace.name")),
    responses(
        (status = 200, description = "The VM", body = Vm),
        (status = 401, description = "No valid bearer token (in a cluster)", body = ErrorBody),
        (status = 403, description = "The caller may not get the namespace's PVCs (in a cluster)", body = ErrorBody),
        (status = 404, description = "No such VM", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<ApiState>,
    guard: Guard,
    Path(vm_id): Path<String>,
) -> Result<Json<Vm>, ApiError> {
    allow_on(&guard, "get", &vm_id).await?;
    Ok(Json(state.vms.get(vm_id).await?))
}

/// Grows the VM's disk; disks never shrink.
#[utoipa::path(
    post,
    path = "/api/v1/vms/{vm_id}/resize",
    tag = "vms",
    operation_id = "resizeVm",
    params(("vm_id" = String, Path, description = "namespace.name")),
    request_body = ResizeVm,
    responses(
        (status = 200, description = "The VM with its new size", body = Vm),
        (status = 401, description = "No valid bearer token (in a cluster)", body = ErrorBody),
        (status = 403, description = "The caller may not patch the namespace's PVCs (in a cluster)", body = ErrorBody),
        (status = 400, description = "A smaller size, or a field is wrong", body = ErrorBody),
        (status = 404, description = "No such VM", body = ErrorBody),
        (status = 409, description = "The VM is still provisioning", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 507, description = "No room to grow the disk", body = ErrorBody),
        (status = 503, description = "The ledger or the node cannot be reached", body = ErrorBody),
    )
)]
pub async fn resize(
    State(state): State<ApiState>,
    guard: Guard,
    Path(vm_id): Path<String>,
    JsonBody(request): JsonBody<ResizeVm>,
) -> Result<Json<Vm>, ApiError> {
    allow_on(&guard, "patch", &vm_id).await?;
    Ok(Json(state.vms.resize(vm_id, request).await?))
}

/// Deletes the VM and erases and frees its disk, or keeps the disk with
/// `?keep_disk=true`.
#[utoipa::path(
    delete,
    path = "/api/v1/vms/{vm_id}",
    tag = "vms",
    operation_id = "deleteVm",
    params(
        ("vm_id" = String, Path, description = "namespace.name"),
        ("keep_disk" = Option<bool>, Query, description = "Keep the disk (default false)"),
    ),
    responses(
        (status = 200, description = "Deleted", body = VmDeleted),
        (status = 401, description = "No valid bearer token (in a cluster)", body = ErrorBody),
        (status = 403, description = "The caller may not delete the namespace's PVCs (in a cluster)", body = ErrorBody),
        (status = 400, description = "An unknown query parameter", body = ErrorBody),
        (status = 404, description = "No such VM", body = ErrorBody),
        (status = 409, description = "The VM is still provisioning, or its disk cannot be erased now", body = ErrorBody),
    )
)]
pub async fn delete(
    State(state): State<ApiState>,
    guard: Guard,
    Path(vm_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<VmDeleted>, ApiError> {
    let keep_disk = keep_disk(query.as_deref())?;
    allow_on(&guard, "delete", &vm_id).await?;
    Ok(Json(state.vms.delete(vm_id, keep_disk).await?))
}

/// `verb` on the PVCs of the namespace `vm_id` names (an id that names none
/// is no VM: 404).
async fn allow_on(guard: &Guard, verb: &'static str, vm_id: &str) -> Result<(), ApiError> {
    let (namespace, _) = parse_vm_id(vm_id)?;
    guard.allow(Access::vms(verb, Some(&namespace))).await
}

/// `namespace=NAME`, the only query parameter GET /vms takes.
fn list_namespace(query: Option<&str>) -> Result<Option<String>, ApiError> {
    let mut namespace = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("namespace", value)) => {
                check_dns_label("namespace", value)?;
                namespace = Some(value.to_string());
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {pair:?}: GET /api/v1/vms takes only namespace=NAME"
                )));
            }
        }
    }
    Ok(namespace)
}

/// `keep_disk=true|false`, the only query parameter DELETE takes.
fn keep_disk(query: Option<&str>) -> Result<bool, ApiError> {
    let mut keep = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("keep_disk", "true")) => keep = true,
            Some(("keep_disk", "false")) => keep = false,
            Some(("keep_disk", other)) => {
                return Err(ApiError::bad_request(format!(
                    "keep_disk: {other:?} is not true or false"
                )));
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {pair:?}: DELETE takes only keep_disk=true|false"
                )));
            }
        }
    }
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::{keep_disk, list_namespace};

    #[test]
    fn namespace_is_the_only_list_parameter() {
        assert_eq!(list_namespace(None), Ok(None));
        assert_eq!(
            list_namespace(Some("namespace=vms-a")),
            Ok(Some("vms-a".into()))
        );
        assert!(list_namespace(Some("namespace=Bad_Name")).is_err());
        assert!(list_namespace(Some("all=true")).is_err());
    }

    #[test]
    fn keep_disk_is_the_only_query_parameter() {
        assert_eq!(keep_disk(None), Ok(false));
        assert_eq!(keep_disk(Some("keep_disk=true")), Ok(true));
        assert_eq!(keep_disk(Some("keep_disk=false")), Ok(false));
        assert!(keep_disk(Some("keep_disk=yes")).is_err());
        assert!(keep_disk(Some("force=true")).is_err());
    }
}
