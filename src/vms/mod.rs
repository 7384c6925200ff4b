//! VM disks from the vm pool: what the pool API's `/api/v1/vms` asks for and
//! answers, the catalogs that turn an `image` and a `server_type` into a source
//! and a size, and the VM service of `vdrive all-in-one` ([`local`]).
//!
//! A VM's disk is a raw block volume of the vm pool (class `vm-pool-storage`),
//! `storage` GB (GiB) large; the node writes the VM's image into it the first
//! time it is staged. The record of a VM lives where its disk's platform keeps
//! records: all-in-one's embedded store here, the PVC in a cluster.

pub mod catalog;
pub mod cluster;
mod error;
pub mod local;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use catalog::{Catalog, ImageEntry, ServerType};
pub use error::VmError;

/// The namespace of a VM whose request names none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The StorageClass preset a VM's disk is made with.
pub const DISK_CLASS: &str = "vm-pool-storage";

/// `POST /api/v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    /// The VM's name: a DNS label (lowercase letters, digits and '-', at most 63).
    #[schema(
        example = "test-vm",
        pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length = 63
    )]
    pub name: String,
    /// An image of the image catalog; written into the disk before first use.
    #[schema(example = "ubuntu22")]
    pub image: String,
    /// A size of the server-type catalog, giving `cpu` and `memory` defaults.
    #[serde(default)]
    #[schema(example = "cx21")]
    pub server_type: Option<String>,
    /// Virtual CPUs; overrides the server type's.
    #[serde(default)]
    #[schema(example = 2, minimum = 1)]
    pub cpu: Option<u32>,
    /// Memory in GB; overrides the server type's.
    #[serde(default)]
    #[schema(example = 4, minimum = 1)]
    pub memory: Option<u32>,
    /// The disk's size in GB (GiB: 1 GB here is 2^30 bytes).
    #[schema(example = 50, minimum = 1, maximum = 1048576)]
    pub storage: u64,
    /// Where the VM lives (default: `default`).
    #[serde(default)]
    #[schema(
        example = "default",
        pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length = 63
    )]
    pub namespace: Option<String>,
}

/// `POST /api/v1/vms/{vm_id}/resize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeVm {
    /// The disk's new size in GB (GiB); never smaller than it is.
    #[schema(example = 100, minimum = 1, maximum = 1048576)]
    pub new_size_gb: u64,
}

/// Where a VM's disk is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum VmStatus {
    /// The disk is being made and its image written.
    Provisioning,
    /// The disk holds its image and can be used.
    Ready,
    /// The disk could not be made or its image not written; `reason` says why.
    Failed,
}

/// The disk of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmDisk {
    /// The CSI volume id, once the disk exists.
    pub volume_id: Option<String>,
    /// The server the disk lives on, once it exists.
    pub node: Option<String>,
    /// Its size in GB (GiB).
    pub size_gb: u64,
    /// `namespace/name` of the PersistentVolumeClaim, in a cluster.
    pub pvc: Option<String>,
}

/// Whether a virtual machine object was made beside the disk, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmRuntime {
    pub created: bool,
    pub message: String,
}

/// A VM, as every `/api/v1/vms` answer shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Vm {
    /// `namespace.name`: stable, and unambiguous since neither has a dot.
    #[schema(example = "default.test-vm")]
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub image: String,
    pub server_type: Option<String>,
    pub cpu: u32,
    /// GB.
    pub memory: u32,
    /// The disk's size in GB (GiB).
    pub storage: u64,
    pub status: VmStatus,
    /// Why the VM is Failed (or what Provisioning waits for).
    pub reason: Option<String>,
    pub disk: VmDisk,
    pub virtual_machine: VmRuntime,
}

/// `GET /api/v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmList {
    pub vms: Vec<Vm>,
}

/// `DELETE /api/v1/vms/{vm_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmDeleted {
    pub id: String,
    /// `deleted` (erased and released) or `kept` (`?keep_disk=true`).
    pub disk: String,
    /// The kept disk's volume id, to reuse or delete it later.
    pub volume_id: Option<String>,
}

/// Where VMs are kept and their disks made: all-in-one's [`local::LocalVms`],
/// or a cluster's PVCs. The API serves whichever it is given.
pub trait VmBackend: Send + Sync {
    fn create(self: Arc<Self>, request: CreateVm) -> BoxFuture<'static, Result<Vm, VmError>>;
    /// The VMs of `namespace`, or of every namespace.
    fn list(
        self: Arc<Self>,
        namespace: Option<String>,
    ) -> BoxFuture<'static, Result<Vec<Vm>, VmError>>;
    fn get(self: Arc<Self>, id: String) -> BoxFuture<'static, Result<Vm, VmError>>;
    fn resize(
        self: Arc<Self>,
        id: String,
        request: ResizeVm,
    ) -> BoxFuture<'static, Result<Vm, VmError>>;
    fn delete(
        self: Arc<Self>,
        id: String,
        keep_disk: bool,
    ) -> BoxFuture<'static, Result<VmDeleted, VmError>>;
}

/// A request checked against the catalogs: everything a VM's record needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub name: String,
    pub namespace: String,
    pub image_name: String,
    pub image: ImageEntry,
    pub server_type: Option<String>,
    pub cpu: u32,
    pub memory: u32,
    pub storage: u64,
}

impl Resolved {
    pub fn id(&self) -> String {
        vm_id(&self.namespace, &self.name)
    }
}

/// The largest disk a request may ask for: 1 PiB, far past any server, and
/// small enough that its bytes never overflow.
pub const MAX_STORAGE_GB: u64 = 1 << 20;

/// Checks `request` and fills it in from `catalog`.
pub fn resolve(request: &CreateVm, catalog: &Catalog) -> Result<Resolved, VmError> {
    check_dns_label("name", &request.name)?;
    let namespace = request
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    check_dns_label("namespace", &namespace)?;
    if request.storage == 0 || request.storage > MAX_STORAGE_GB {
        return Err(VmError::Invalid(format!(
            "storage: {} GB is not a disk size: ask for 1 to {MAX_STORAGE_GB} GB",
            request.storage
        )));
    }
    let image = catalog.image(&request.image)?.clone();
    let defaults = request
        .server_type
        .as_deref()
        .map(|name| catalog.server_type(name))
        .transpose()?;
    let cpu = request.cpu.or(defaults.map(|d| d.cpu));
    let memory = request.memory.or(defaults.map(|d| d.memory));
    let (Some(cpu), Some(memory)) = (cpu, memory) else {
        return Err(VmError::Invalid(format!(
            "give a server_type (one of {}) or both cpu and memory",
            catalog.server_type_names()
        )));
    };
    for (field, value) in [("cpu", cpu), ("memory", memory)] {
        if value == 0 {
            return Err(VmError::Invalid(format!("{field}: must be at least 1")));
        }
    }
    Ok(Resolved {
        name: request.name.clone(),
        namespace,
        image_name: request.image.clone(),
        image,
        server_type: request.server_type.clone(),
        cpu,
        memory,
        storage: request.storage,
    })
}

/// `namespace.name`.
pub fn vm_id(namespace: &str, name: &str) -> String {
    format!("{namespace}.{name}")
}

/// The namespace and name an id names, checked.
pub fn parse_vm_id(id: &str) -> Result<(String, String), VmError> {
    let not_found = || VmError::NotFound { id: id.to_string() };
    let (namespace, name) = id.split_once('.').ok_or_else(not_found)?;
    if check_dns_label("namespace", namespace).is_err() || check_dns_label("name", name).is_err() {
        return Err(not_found());
    }
    Ok((namespace.to_string(), name.to_string()))
}

/// A DNS label (RFC 1123): what Kubernetes accepts as a namespace, and what a
/// VM's name must be so that its PVC and VirtualMachine can carry it.
pub fn check_dns_label(field: &str, value: &str) -> Result<(), VmError> {
    let valid = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(VmError::Invalid(format!(
            "{field}: {value:?} is not a DNS label: use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        )))
    }
}

#[cfg(test)]
mod tests;
