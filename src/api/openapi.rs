//! The API's OpenAPI document, generated from the handlers' annotations and
//! the very types they parse and answer with.

use std::sync::OnceLock;

use axum::Json;
use serde_json::Value;
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
pub async fn document() -> Json<Value> {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    Json(DOCUMENT.get_or_init(generate).clone())
}

/// The document as JSON. utoipa 5 writes a link's fields in Rust's snake_case
/// (`operation_id`); OpenAPI spells them in camelCase, and clients that follow
/// links (schemathesis's stateful tests) need that spelling.
pub fn generate() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|e| {
        serde_json::json!({"error": {"kind": "internal", "message": format!("the OpenAPI document cannot be written: {e}")}})
    });
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        let responses = paths
            .values_mut()
            .filter_map(Value::as_object_mut)
            .flat_map(|operations| operations.values_mut())
            .filter_map(|operation| operation.get_mut("responses")?.as_object_mut())
            .flat_map(|responses| responses.values_mut());
        for response in responses {
            let Some(links) = response.get_mut("links").and_then(Value::as_object_mut) else {
                continue;
            };
            for link in links.values_mut().filter_map(Value::as_object_mut) {
                for (snake, camel) in [
                    ("operation_id", "operationId"),
                    ("operation_ref", "operationRef"),
                    ("request_body", "requestBody"),
                ] {
                    if let Some(value) = link.remove(snake) {
                        link.insert(camel.to_string(), value);
                    }
                }
            }
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_name_operations_that_exist_in_openapi_spelling() {
        let doc = generate();
        let operation_ids: Vec<&str> = doc["paths"]
            .as_object()
            .expect("paths")
            .values()
            .flat_map(|ops| ops.as_object().expect("operations").values())
            .filter_map(|op| op["operationId"].as_str())
            .collect();
        let links = doc["paths"]["/api/v1/vms"]["post"]["responses"]["201"]["links"]
            .as_object()
            .expect("createVm's 201 has links");
        assert_eq!(links.len(), 3);
        for (name, link) in links {
            let target = link["operationId"].as_str().expect("operationId");
            assert!(operation_ids.contains(&target), "{name} -> {target}");
            assert!(link.get("operation_id").is_none(), "{link}");
            assert_eq!(link["parameters"]["vm_id"], "$response.body#/id");
        }
    }
}
