//! The VMs of a cluster, served by every `vdrive controller` replica: a VM is
//! a PersistentVolumeClaim named after it in its namespace (class
//! `vm-pool-storage`, block mode, ReadWriteOnce, `storage` Gi), labelled
//! `vdrive.io/vm=<name>` and annotated with what it was asked for. The PVC is
//! the only record: every answer is read from the API server, every change is
//! a write to it, so any replica answers and no leader is needed.
//!
//! Where the cluster serves `kubevirt.io/v1` VirtualMachines, each VM also gets
//! one, named after it, with its CPU and memory and the PVC as its disk, run
//! at once (`runStrategy: Always`): its virt-launcher pod is the consumer that
//! makes the WaitForFirstConsumer class bind the disk on the pod's node.
//!
//! Status, from what the cluster shows:
//! - `Provisioning` while the PVC is Pending (no consumer scheduled yet: the
//!   honest state of a WaitForFirstConsumer disk), and while it is Bound but no
//!   pod using it has run yet: the node writes the image at the disk's first
//!   stage, which kubelet does before it starts that pod;
//! - `Ready` once a pod using the disk has been Running (the stage, and so the
//!   image write, succeeded), recorded on the PVC as
//!   `vdrive.io/vm-image-written` so that it stays Ready when the VM stops;
//! - `Failed` when the PVC is Lost (its PersistentVolume is gone).
//!
//! The last Warning Event of the PVC (a provisioning or resize failure) is in
//! the reason. The image written is the catalog's entry of the PVC's
//! `vdrive.io/vm-image` ([`ClusterVms`] as [`VolumeImages`]): a PVC's own
//! annotations never choose what a node reads.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tonic::Status;
use tracing::{info, warn};

use super::{
    Catalog, CreateVm, DISK_CLASS, ResizeVm, Resolved, Vm, VmDeleted, VmDisk, VmError, VmRuntime,
    VmStatus, parse_vm_id, resolve, vm_id,
};
use crate::csi::controller::{TOPOLOGY_KEY, VolumeImage, VolumeImages};
use crate::ledger::{Ledger, LedgerStore};
use crate::node::IMAGE_NOT_WRITTEN;

/// The label that makes a PVC a VM's record; its value is the VM's name.
pub const VM_LABEL: &str = "vdrive.io/vm";
/// The catalog name of the VM's image.
pub const IMAGE_ANNOTATION: &str = "vdrive.io/vm-image";
/// The image's source and format when the VM was made (shown, never read back
/// as a source: the catalog's entry is what the node gets).
pub const IMAGE_SOURCE_ANNOTATION: &str = "vdrive.io/vm-image-source";
pub const IMAGE_FORMAT_ANNOTATION: &str = "vdrive.io/vm-image-format";
pub const SERVER_TYPE_ANNOTATION: &str = "vdrive.io/vm-server-type";
pub const CPU_ANNOTATION: &str = "vdrive.io/vm-cpu";
/// GB.
pub const MEMORY_ANNOTATION: &str = "vdrive.io/vm-memory";
/// Set once a pod using the disk has run: its image is written.
pub const IMAGE_WRITTEN_ANNOTATION: &str = "vdrive.io/vm-image-written";

/// KubeVirt's VirtualMachine.
pub const KUBEVIRT_API_VERSION: &str = "kubevirt.io/v1";
const KUBEVIRT_GROUP: &str = "kubevirt.io";
const KUBEVIRT_VERSION: &str = "v1";
const VM_KIND: &str = "VirtualMachine";
const VM_PLURAL: &str = "virtualmachines";
/// The name of the disk (and volume) in the VirtualMachine.
const VM_DISK: &str = "disk";

const GI: u64 = 1 << 30;

pub struct ClusterVms {
    client: Client,
    catalog: Catalog,
    /// Asked before a disk's PVC is grown, so that no room is the API's 507.
    growth: Option<Arc<dyn DiskGrowth>>,
}

/// Whether a disk can grow now: the controller's ledger, asked before the PVC
/// is patched (csi-resizer grows it later, and would only warn on the PVC).
pub trait DiskGrowth: Send + Sync {
    fn check(&self, volume_id: &str, new_gib: u64) -> BoxFuture<'_, Result<(), Status>>;
}

impl<S: LedgerStore> DiskGrowth for Ledger<S> {
    fn check(&self, volume_id: &str, new_gib: u64) -> BoxFuture<'_, Result<(), Status>> {
        let volume_id = volume_id.to_string();
        Box::pin(async move {
            self.check_growth(&volume_id, new_gib)
                .await
                .map_err(Status::from)
        })
    }
}

impl ClusterVms {
    pub fn new(
        client: Client,
        catalog: Catalog,
        growth: Option<Arc<dyn DiskGrowth>>,
    ) -> Arc<ClusterVms> {
        Arc::new(ClusterVms {
            client,
            catalog,
            growth,
        })
    }

    fn pvcs(&self, namespace: &str) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn virtual_machines(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &virtual_machine_resource())
    }

    /// Whether the cluster serves KubeVirt's VirtualMachines (asked each time,
    /// so that installing KubeVirt takes effect at once).
    async fn kubevirt(&self) -> Result<bool, VmError> {
        match self
            .client
            .list_api_group_resources(KUBEVIRT_API_VERSION)
            .await
        {
            Ok(list) => Ok(list.resources.iter().any(|r| r.name == VM_PLURAL)),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(err) => Err(VmError::Unavailable(format!(
                "cannot ask the API server whether it serves {KUBEVIRT_API_VERSION}: {err}"
            ))),
        }
    }

    pub async fn create(&self, request: CreateVm) -> Result<Vm, VmError> {
        let resolved = resolve(&request, &self.catalog)?;
        let pvcs = self.pvcs(&resolved.namespace);
        let exists = || VmError::Exists {
            namespace: resolved.namespace.clone(),
            name: resolved.name.clone(),
        };
        let claim = pvcs
            .create(&PostParams::default(), &disk_claim(&resolved))
            .await
            .map_err(|e| match e {
                kube::Error::Api(status) if status.code == 409 => exists(),
                kube::Error::Api(status) if status.code == 404 => VmError::Invalid(format!(
                    "namespace: there is no namespace {:?} to make the VM's PVC in: create it first ({})",
                    resolved.namespace, status.message
                )),
                other => api_error(&resolved.id(), "create the PVC of", other),
            })?;
        let runtime = match self.kubevirt().await {
            Ok(true) => {
                let made = self
                    .virtual_machines(&resolved.namespace)
                    .create(&PostParams::default(), &virtual_machine(&resolved)?)
                    .await;
                if let Err(err) = made {
                    // Nothing half-made: the disk goes with the VM it was for.
                    self.forget_claim(&resolved).await;
                    return Err(match err {
                        kube::Error::Api(status) if status.code == 409 => exists(),
                        other => api_error(&resolved.id(), "create the VirtualMachine of", other),
                    });
                }
                created_runtime(&resolved.name)
            }
            Ok(false) => no_kubevirt(),
            Err(err) => {
                self.forget_claim(&resolved).await;
                return Err(err);
            }
        };
        info!(vm = %resolved.id(), "VM created");
        Ok(vm_of(&claim, &View::default(), runtime))
    }

    async fn forget_claim(&self, resolved: &Resolved) {
        if let Err(err) = self
            .pvcs(&resolved.namespace)
            .delete(&resolved.name, &DeleteParams::default())
            .await
        {
            warn!(vm = %resolved.id(), %err, "could not delete the PVC of a VM that was not made");
        }
    }

    pub async fn list(&self, namespace: Option<String>) -> Result<Vec<Vm>, VmError> {
        let pvcs: Api<PersistentVolumeClaim> = match &namespace {
            Some(namespace) => self.pvcs(namespace),
            None => Api::all(self.client.clone()),
        };
        let claims = pvcs
            .list(&ListParams::default().labels(VM_LABEL))
            .await
            .map_err(|e| api_error("*", "list the PVCs of", e))?;
        let kubevirt = self.kubevirt().await?;
        let mut vms = Vec::with_capacity(claims.items.len());
        for claim in claims.items {
            vms.push(self.show(claim, kubevirt).await?);
        }
        Ok(vms)
    }

    pub async fn get(&self, id: &str) -> Result<Vm, VmError> {
        let claim = self.claim(id).await?;
        let kubevirt = self.kubevirt().await?;
        self.show(claim, kubevirt).await
    }

    /// Grows the disk: the PVC's request, which csi-resizer carries out. The
    /// answer comes at once, with the growth pending in `reason` until the
    /// PVC's capacity shows it (a failure is then the reason's last warning).
    pub async fn resize(&self, id: &str, request: ResizeVm) -> Result<Vm, VmError> {
        let claim = self.claim(id).await?;
        let current = requested_gib(&claim).unwrap_or(0);
        if request.new_size_gb < current {
            return Err(VmError::Shrink {
                id: id.to_string(),
                current,
            });
        }
        if request.new_size_gb > super::MAX_STORAGE_GB {
            return Err(VmError::Invalid(format!(
                "new_size_gb: {} GB is more than the {} GB a disk may have",
                request.new_size_gb,
                super::MAX_STORAGE_GB
            )));
        }
        let kubevirt = self.kubevirt().await?;
        if request.new_size_gb == current {
            return self.show(claim, kubevirt).await;
        }
        if phase(&claim) != "Bound" {
            return Err(VmError::Busy {
                id: id.to_string(),
                reason: "its disk is not bound yet (the PVC is Pending until its VM's pod is scheduled); resize it once it is".into(),
            });
        }
        if let Some(growth) = &self.growth {
            let pv = claim.spec.as_ref().and_then(|s| s.volume_name.clone());
            let handle = match pv {
                Some(pv) => self.volume_of(&pv).await?.map(|(handle, _)| handle),
                None => None,
            };
            if let Some(handle) = handle {
                growth
                    .check(&handle, request.new_size_gb)
                    .await
                    .map_err(|status| VmError::from_csi(id, &status))?;
            }
        }
        let (namespace, name) = parse_vm_id(id)?;
        let patch = json!({
            "spec": { "resources": { "requests": { "storage": format!("{}Gi", request.new_size_gb) } } }
        });
        let grown = self
            .pvcs(&namespace)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| api_error(id, "grow the PVC of", e))?;
        info!(vm = %id, gb = request.new_size_gb, "VM disk growing");
        self.show(grown, kubevirt).await
    }

    /// Deletes the VirtualMachine (if any), then the disk: the PV the class
    /// retains is switched to Delete (the API made it, the API frees it) and
    /// the PVC deleted. `keep_disk` keeps both, and drops the PVC's VM label.
    pub async fn delete(&self, id: &str, keep_disk: bool) -> Result<VmDeleted, VmError> {
        let claim = self.claim(id).await?;
        let (namespace, name) = parse_vm_id(id)?;
        if self.kubevirt().await? {
            match self
                .virtual_machines(&namespace)
                .delete(&name, &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => return Err(api_error(id, "delete the VirtualMachine of", err)),
            }
        }
        let volume = claim.spec.as_ref().and_then(|s| s.volume_name.clone());
        let pvcs = self.pvcs(&namespace);
        if keep_disk {
            let patch = json!({ "metadata": { "labels": { VM_LABEL: null } } });
            pvcs.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| api_error(id, "unlabel the PVC of", e))?;
        } else {
            if let Some(pv) = &volume {
                self.free_pv(id, pv, &claim).await?;
            }
            match pvcs.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => return Err(api_error(id, "delete the PVC of", err)),
            }
        }
        let volume_id = match (&volume, keep_disk) {
            (Some(pv), true) => self.volume_of(pv).await?.map(|(handle, _)| handle),
            _ => None,
        };
        info!(vm = %id, keep_disk, "VM deleted");
        Ok(VmDeleted {
            id: id.to_string(),
            disk: if keep_disk { "kept" } else { "deleted" }.into(),
            volume_id: volume_id.or_else(|| volume.filter(|_| keep_disk)),
        })
    }

    /// The PVC of VM `id`; 404 when there is none, or it is no VM's.
    async fn claim(&self, id: &str) -> Result<PersistentVolumeClaim, VmError> {
        let (namespace, name) = parse_vm_id(id)?;
        let claim = self
            .pvcs(&namespace)
            .get_opt(&name)
            .await
            .map_err(|e| api_error(id, "read the PVC of", e))?;
        // A VM's PVC is labelled as one and of the VM class: a label alone, which
        // anyone who may edit PVCs can set, must not make another PVC a VM whose
        // delete switches its PV to Delete.
        match claim {
            Some(claim)
                if claim.labels().get(VM_LABEL) == Some(&name)
                    && claim
                        .spec
                        .as_ref()
                        .and_then(|s| s.storage_class_name.as_deref())
                        == Some(DISK_CLASS) =>
            {
                Ok(claim)
            }
            _ => Err(VmError::NotFound { id: id.to_string() }),
        }
    }

    /// Switches the PV of a VM's disk to Delete, so that deleting the PVC frees
    /// the disk — only a vdrive PV bound to exactly this PVC (by uid): the
    /// controller's rights must never free someone else's retained volume.
    async fn free_pv(
        &self,
        id: &str,
        pv: &str,
        claim: &PersistentVolumeClaim,
    ) -> Result<(), VmError> {
        let pvs = Api::<PersistentVolume>::all(self.client.clone());
        let Some(found) = pvs
            .get_opt(pv)
            .await
            .map_err(|e| api_error(id, "read the PersistentVolume of", e))?
        else {
            return Ok(());
        };
        let spec = found.spec.as_ref();
        let ours = spec
            .and_then(|s| s.csi.as_ref())
            .is_some_and(|c| c.driver == crate::csi::identity::DRIVER_NAME);
        let bound_here = spec
            .and_then(|s| s.claim_ref.as_ref())
            .and_then(|r| r.uid.as_deref())
            .is_some_and(|uid| Some(uid) == claim.metadata.uid.as_deref());
        if !ours || !bound_here {
            return Err(VmError::Precondition(format!(
                "PersistentVolume {pv} is not a vdrive disk bound to this VM's PVC: it is left as it is; delete the VM with ?keep_disk=true"
            )));
        }
        let patch = json!({ "spec": { "persistentVolumeReclaimPolicy": "Delete" } });
        match pvs
            .patch(pv, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(err) => Err(api_error(id, "free the PersistentVolume of", err)),
        }
    }

    /// The VM a PVC records, with what the cluster shows of its disk.
    async fn show(&self, claim: PersistentVolumeClaim, kubevirt: bool) -> Result<Vm, VmError> {
        let namespace = claim.namespace().unwrap_or_default();
        let name = claim.name_any();
        let id = vm_id(&namespace, &name);
        let mut view = View {
            kubevirt,
            ..View::default()
        };
        if let Some(pv) = claim.spec.as_ref().and_then(|s| s.volume_name.clone())
            && let Some((handle, node)) = self.volume_of(&pv).await?
        {
            view.volume_id = Some(handle);
            view.node = node;
        }
        view.image_written = claim.annotations().contains_key(IMAGE_WRITTEN_ANNOTATION);
        if !view.image_written && phase(&claim) == "Bound" {
            let consumers = self.consumers(&claim).await?;
            if consumers.iter().any(|pod| pod_phase(pod) == "Running") {
                view.image_written = true;
                self.record_written(&namespace, &name).await;
            } else {
                view.image_failed = self.image_failure(&namespace, &consumers).await;
            }
        }
        view.warning = self.last_warning(&namespace, &name).await;
        let runtime = if kubevirt {
            match self.virtual_machines(&namespace).get_opt(&name).await {
                Ok(Some(_)) => created_runtime(&name),
                Ok(None) => VmRuntime {
                    created: false,
                    message: format!(
                        "no VirtualMachine {namespace}/{name}: it was deleted, or the VM was made before KubeVirt was installed"
                    ),
                },
                Err(err) => return Err(api_error(&id, "read the VirtualMachine of", err)),
            }
        } else {
            no_kubevirt()
        };
        Ok(vm_of(&claim, &view, runtime))
    }

    /// The volume handle and node of PV `name`.
    async fn volume_of(&self, name: &str) -> Result<Option<(String, Option<String>)>, VmError> {
        let pv = Api::<PersistentVolume>::all(self.client.clone())
            .get_opt(name)
            .await
            .map_err(|e| api_error(name, "read the PersistentVolume", e))?;
        Ok(pv.and_then(|pv| {
            let spec = pv.spec?;
            let handle = spec.csi?.volume_handle;
            let node = spec
                .node_affinity
                .and_then(|a| a.required)
                .and_then(|r| r.node_selector_terms.into_iter().next())
                .and_then(|t| t.match_expressions)
                .and_then(|e| e.into_iter().find(|e| e.key == TOPOLOGY_KEY))
                .and_then(|e| e.values)
                .and_then(|v| v.into_iter().next());
            Some((handle, node))
        }))
    }

    /// The pods that use the PVC. One that is, or was seen, Running had the
    /// disk staged by kubelet first, and staging writes the image.
    async fn consumers(&self, claim: &PersistentVolumeClaim) -> Result<Vec<Pod>, VmError> {
        let namespace = claim.namespace().unwrap_or_default();
        let name = claim.name_any();
        let pods = Api::<Pod>::namespaced(self.client.clone(), &namespace)
            .list(&ListParams::default())
            .await
            .map_err(|e| api_error(&vm_id(&namespace, &name), "list the pods using", e))?;
        Ok(pods
            .items
            .into_iter()
            .filter(|pod| {
                pod.spec
                    .as_ref()
                    .and_then(|s| s.volumes.as_ref())
                    .is_some_and(|volumes| {
                        volumes.iter().any(|v| {
                            v.persistent_volume_claim
                                .as_ref()
                                .is_some_and(|c| c.claim_name == name)
                        })
                    })
            })
            .collect())
    }

    /// Why the node will never write the image, from kubelet's FailedMount
    /// Events on the pods that use the disk: the node's own message, from
    /// [`IMAGE_NOT_WRITTEN`] on. A failure retrying can mend (a download that
    /// timed out) does not carry it and leaves the VM Provisioning.
    async fn image_failure(&self, namespace: &str, consumers: &[Pod]) -> Option<String> {
        let events = Api::<Event>::namespaced(self.client.clone(), namespace);
        for pod in consumers {
            let selector = format!(
                "involvedObject.kind=Pod,involvedObject.name={},reason=FailedMount",
                pod.name_any()
            );
            let list = match events.list(&ListParams::default().fields(&selector)).await {
                Ok(list) => list,
                Err(err) => {
                    warn!(pod = %pod.name_any(), %err, "could not read the pod's events");
                    continue;
                }
            };
            if let Some(reason) = list
                .items
                .iter()
                .filter_map(|e| e.message.as_deref())
                .find_map(|m| m.find(IMAGE_NOT_WRITTEN).map(|at| m[at..].to_string()))
            {
                return Some(reason);
            }
        }
        None
    }

    async fn record_written(&self, namespace: &str, name: &str) {
        let patch = json!({ "metadata": { "annotations": { IMAGE_WRITTEN_ANNOTATION: "true" } } });
        if let Err(err) = self
            .pvcs(namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            warn!(vm = %vm_id(namespace, name), %err, "could not record that the image is written");
        }
    }

    /// The newest Warning Event about the PVC, if any (failures to read them
    /// are logged and left out: they only add to the reason).
    async fn last_warning(&self, namespace: &str, name: &str) -> Option<String> {
        let selector = format!(
            "involvedObject.kind=PersistentVolumeClaim,involvedObject.name={name},type=Warning"
        );
        let events = Api::<Event>::namespaced(self.client.clone(), namespace)
            .list(&ListParams::default().fields(&selector))
            .await;
        match events {
            Ok(list) => list
                .items
                .into_iter()
                .max_by_key(|e| {
                    e.last_timestamp
                        .as_ref()
                        .map(|t| t.0)
                        .or_else(|| e.event_time.as_ref().map(|t| t.0))
                })
                .map(|e| {
                    format!(
                        "{}: {}",
                        e.reason.unwrap_or_default(),
                        e.message.unwrap_or_default()
                    )
                }),
            Err(err) => {
                warn!(vm = %vm_id(namespace, name), %err, "could not read the PVC's events");
                None
            }
        }
    }
}

/// What the cluster shows of a VM beside its PVC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub kubevirt: bool,
    pub volume_id: Option<String>,
    pub node: Option<String>,
    pub image_written: bool,
    /// The node's reason the image will never be written (see
    /// [`ClusterVms::image_failure`]).
    pub image_failed: Option<String>,
    pub warning: Option<String>,
}

/// The PVC that is VM `resolved`'s disk and record.
pub fn disk_claim(resolved: &Resolved) -> PersistentVolumeClaim {
    let mut annotations = BTreeMap::from([
        (IMAGE_ANNOTATION.to_string(), resolved.image_name.clone()),
        (
            IMAGE_SOURCE_ANNOTATION.to_string(),
            resolved.image.source.clone(),
        ),
        (CPU_ANNOTATION.to_string(), resolved.cpu.to_string()),
        (MEMORY_ANNOTATION.to_string(), resolved.memory.to_string()),
    ]);
    if let Some(format) = &resolved.image.format {
        annotations.insert(IMAGE_FORMAT_ANNOTATION.to_string(), format.clone());
    }
    if let Some(server_type) = &resolved.server_type {
        annotations.insert(SERVER_TYPE_ANNOTATION.to_string(), server_type.clone());
    }
    let mut claim = PersistentVolumeClaim::default();
    claim.metadata.name = Some(resolved.name.clone());
    claim.metadata.namespace = Some(resolved.namespace.clone());
    claim.metadata.labels = Some(BTreeMap::from([(
        VM_LABEL.to_string(),
        resolved.name.clone(),
    )]));
    claim.metadata.annotations = Some(annotations);
    claim.spec = Some(k8s_openapi::api::core::v1::PersistentVolumeClaimSpec {
        storage_class_name: Some(DISK_CLASS.to_string()),
        volume_mode: Some("Block".into()),
        access_modes: Some(vec!["ReadWriteOnce".into()]),
        resources: Some(k8s_openapi::api::core::v1::VolumeResourceRequirements {
            requests: Some(BTreeMap::from([(
                "storage".to_string(),
                Quantity(format!("{}Gi", resolved.storage)),
            )])),
            limits: None,
        }),
        ..Default::default()
    });
    claim
}

fn virtual_machine_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(KUBEVIRT_GROUP, KUBEVIRT_VERSION, VM_KIND),
        VM_PLURAL,
    )
}

/// KubeVirt's VirtualMachine of VM `resolved`: its CPU cores and memory, the
/// PVC as its one disk, started at once (its pod is the disk's first consumer).
pub fn virtual_machine(resolved: &Resolved) -> Result<DynamicObject, VmError> {
    let labels = json!({ VM_LABEL: resolved.name });
    let value: Value = json!({
        "apiVersion": KUBEVIRT_API_VERSION,
        "kind": VM_KIND,
        "metadata": {
            "name": resolved.name,
            "namespace": resolved.namespace,
            "labels": labels,
        },
        "spec": {
            "runStrategy": "Always",
            "template": {
                "metadata": { "labels": labels },
                "spec": {
                    "domain": {
                        "cpu": { "cores": resolved.cpu },
                        "resources": { "requests": { "memory": format!("{}Gi", resolved.memory) } },
                        "devices": {
                            "disks": [{ "name": VM_DISK, "disk": { "bus": "virtio" } }],
                        },
                    },
                    "volumes": [{
                        "name": VM_DISK,
                        "persistentVolumeClaim": { "claimName": resolved.name },
                    }],
                },
            },
        },
    });
    serde_json::from_value(value)
        .map_err(|e| VmError::Internal(format!("cannot build a VirtualMachine: {e}")))
}

fn created_runtime(name: &str) -> VmRuntime {
    VmRuntime {
        created: true,
        message: format!("VirtualMachine {name} ({KUBEVIRT_API_VERSION}), runStrategy Always"),
    }
}

fn no_kubevirt() -> VmRuntime {
    VmRuntime {
        created: false,
        message: format!(
            "KubeVirt is not installed (the cluster serves no {KUBEVIRT_API_VERSION} VirtualMachine): only the disk was made; a pod that uses its PVC binds it"
        ),
    }
}

fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn phase(claim: &PersistentVolumeClaim) -> &str {
    claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// The VM a PVC records, its status from `view`.
pub fn vm_of(claim: &PersistentVolumeClaim, view: &View, runtime: VmRuntime) -> Vm {
    let namespace = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    let annotations = claim.annotations();
    let number = |key: &str| {
        annotations
            .get(key)
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    };
    let requested = requested_gib(claim).unwrap_or(0);
    let capacity = claim
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| gib_of(&q.0));
    let (status, reason) = status_of(claim, view, requested, capacity);
    Vm {
        id: vm_id(&namespace, &name),
        name: name.clone(),
        namespace: namespace.clone(),
        image: annotations
            .get(IMAGE_ANNOTATION)
            .cloned()
            .unwrap_or_default(),
        server_type: annotations.get(SERVER_TYPE_ANNOTATION).cloned(),
        cpu: number(CPU_ANNOTATION),
        memory: number(MEMORY_ANNOTATION),
        storage: requested,
        status,
        reason,
        disk: VmDisk {
            volume_id: view.volume_id.clone(),
            node: view.node.clone(),
            size_gb: capacity.unwrap_or(requested),
            pvc: Some(format!("{namespace}/{name}")),
        },
        virtual_machine: runtime,
    }
}

/// Provisioning, Ready or Failed, and why (see the module's docs).
pub fn status_of(
    claim: &PersistentVolumeClaim,
    view: &View,
    requested: u64,
    capacity: Option<u64>,
) -> (VmStatus, Option<String>) {
    let name = claim.name_any();
    let consumer = if view.kubevirt {
        format!("the VM's pod (virt-launcher of VirtualMachine {name})")
    } else {
        format!("a pod that uses PVC {name}")
    };
    let (status, mut reason) = match phase(claim) {
        "Lost" => (
            VmStatus::Failed,
            Some(format!(
                "the disk is lost: its PersistentVolume {} is gone",
                claim
                    .spec
                    .as_ref()
                    .and_then(|s| s.volume_name.as_deref())
                    .unwrap_or("?")
            )),
        ),
        "Bound" if view.image_written => (VmStatus::Ready, None),
        "Bound" if view.image_failed.is_some() => (VmStatus::Failed, view.image_failed.clone()),
        "Bound" => (
            VmStatus::Provisioning,
            Some(format!(
                "the disk is bound{}; its node writes the image when {consumer} first stages it",
                view.node
                    .as_deref()
                    .map(|n| format!(" on node {n}"))
                    .unwrap_or_default()
            )),
        ),
        _ => (
            VmStatus::Provisioning,
            Some(format!(
                "waiting for the disk to be bound: {DISK_CLASS} binds on first consumer, so the PVC stays Pending until {consumer} is scheduled"
            )),
        ),
    };
    if let Some(capacity) = capacity
        && capacity < requested
    {
        let growing = format!("the disk grows from {capacity} to {requested} GB");
        reason = Some(match reason {
            Some(r) => format!("{r}; {growing}"),
            None => growing,
        });
    }
    let settled = status == VmStatus::Ready && reason.is_none();
    if let Some(warning) = &view.warning
        && !settled
    {
        let last = format!("last warning: {warning}");
        reason = Some(match reason {
            Some(r) => format!("{r}; {last}"),
            None => last,
        });
    }
    (status, reason)
}

/// The PVC's requested size in whole GiB.
pub fn requested_gib(claim: &PersistentVolumeClaim) -> Option<u64> {
    claim
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .and_then(|q| gib_of(&q.0))
}

/// A storage quantity in whole GiB, rounded up (binary and decimal suffixes,
/// or plain bytes).
pub fn gib_of(quantity: &str) -> Option<u64> {
    let quantity = quantity.trim();
    let split = quantity
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(quantity.len());
    let (digits, suffix) = quantity.split_at(split);
    let number: u64 = digits.parse().ok()?;
    let unit: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    let bytes = number.checked_mul(unit)?;
    Some(bytes.div_ceil(GI))
}

/// A failed API call on behalf of VM `id`, as the API reports it.
fn api_error(id: &str, doing: &str, err: kube::Error) -> VmError {
    match err {
        kube::Error::Api(status) if status.code == 404 => VmError::NotFound { id: id.to_string() },
        // A ResourceQuota of the namespace refuses with 403 too: no room there.
        kube::Error::Api(status)
            if status.code == 403 && status.message.contains("exceeded quota") =>
        {
            VmError::NoRoom(format!(
                "the namespace's ResourceQuota refused to {doing} VM {id:?}: {}",
                status.message
            ))
        }
        kube::Error::Api(status) if status.code == 403 => VmError::Internal(format!(
            "the controller may not {doing} VM {id:?}: {} (check the chart's RBAC)",
            status.message
        )),
        kube::Error::Api(status) if status.code == 409 => VmError::Busy {
            id: id.to_string(),
            reason: status.message,
        },
        kube::Error::Api(status) if status.code == 422 || status.code == 400 => {
            VmError::Invalid(format!(
                "the API server refused to {doing} VM {id:?}: {}",
                status.message
            ))
        }
        other => VmError::Unavailable(format!("cannot {doing} VM {id:?}: {other}")),
    }
}

impl super::VmBackend for ClusterVms {
    fn create(self: Arc<Self>, request: CreateVm) -> BoxFuture<'static, Result<Vm, VmError>> {
        Box::pin(async move { ClusterVms::create(&self, request).await })
    }

    fn list(
        self: Arc<Self>,
        namespace: Option<String>,
    ) -> BoxFuture<'static, Result<Vec<Vm>, VmError>> {
        Box::pin(async move { ClusterVms::list(&self, namespace).await })
    }

    fn get(self: Arc<Self>, id: String) -> BoxFuture<'static, Result<Vm, VmError>> {
        Box::pin(async move { ClusterVms::get(&self, &id).await })
    }

    fn resize(
        self: Arc<Self>,
        id: String,
        request: ResizeVm,
    ) -> BoxFuture<'static, Result<Vm, VmError>> {
        Box::pin(async move { ClusterVms::resize(&self, &id, request).await })
    }

    fn delete(
        self: Arc<Self>,
        id: String,
        keep_disk: bool,
    ) -> BoxFuture<'static, Result<VmDeleted, VmError>> {
        Box::pin(async move { ClusterVms::delete(&self, &id, keep_disk).await })
    }
}

/// The image of a VM's PVC: the catalog's entry of its `vdrive.io/vm-image`,
/// for PVCs labelled as a VM's. A PVC that names an image the catalog lacks
/// is refused (the provisioner retries and reports it on the PVC).
impl VolumeImages for ClusterVms {
    fn image_for<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<VolumeImage>, String>> {
        Box::pin(async move {
            let claim = self
                .pvcs(namespace)
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?;
            let Some(claim) = claim else {
                return Ok(None);
            };
            if !claim.labels().contains_key(VM_LABEL) {
                return Ok(None);
            }
            let Some(image) = claim.annotations().get(IMAGE_ANNOTATION) else {
                return Ok(None);
            };
            let entry = self.catalog.image(image).map_err(|e| e.to_string())?;
            Ok(Some((entry.source.clone(), entry.format.clone())))
        })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PersistentVolumeClaimStatus;

    use super::*;

    fn resolved() -> Resolved {
        let request = CreateVm {
            name: "test-vm".into(),
            image: "ubuntu22".into(),
            server_type: Some("cx21".into()),
            cpu: None,
            memory: Some(6),
            storage: 50,
            namespace: Some("vms-a".into()),
        };
        resolve(&request, &Catalog::default()).expect("a valid request")
    }

    #[test]
    fn a_vm_is_a_block_pvc_of_the_vm_class_with_its_request_on_it() {
        let claim = serde_json::to_value(disk_claim(&resolved())).expect("json");
        assert_eq!(claim["metadata"]["name"], "test-vm");
        assert_eq!(claim["metadata"]["namespace"], "vms-a");
        assert_eq!(claim["metadata"]["labels"][VM_LABEL], "test-vm");
        let annotations = &claim["metadata"]["annotations"];
        assert_eq!(annotations[IMAGE_ANNOTATION], "ubuntu22");
        assert!(
            annotations[IMAGE_SOURCE_ANNOTATION]
                .as_str()
                .is_some_and(|s| s.starts_with("https://cloud-images.ubuntu.com/"))
        );
        assert_eq!(annotations[IMAGE_FORMAT_ANNOTATION], "qcow2");
        assert_eq!(annotations[SERVER_TYPE_ANNOTATION], "cx21");
        assert_eq!(annotations[CPU_ANNOTATION], "2");
        assert_eq!(annotations[MEMORY_ANNOTATION], "6");
        let spec = &claim["spec"];
        assert_eq!(spec["storageClassName"], "vm-pool-storage");
        assert_eq!(spec["volumeMode"], "Block");
        assert_eq!(spec["accessModes"], json!(["ReadWriteOnce"]));
        assert_eq!(spec["resources"]["requests"]["storage"], "50Gi");
    }

    #[test]
    fn the_virtual_machine_runs_on_the_pvc_with_its_cpu_and_memory() {
        let vm = serde_json::to_value(virtual_machine(&resolved()).expect("built")).expect("json");
        assert_eq!(vm["apiVersion"], "kubevirt.io/v1");
        assert_eq!(vm["kind"], "VirtualMachine");
        assert_eq!(vm["metadata"]["name"], "test-vm");
        assert_eq!(vm["metadata"]["namespace"], "vms-a");
        assert!(vm["metadata"].get("ownerReferences").is_none());
        let spec = &vm["spec"];
        assert_eq!(spec["runStrategy"], "Always");
        let domain = &spec["template"]["spec"]["domain"];
        assert_eq!(domain["cpu"]["cores"], 2);
        assert_eq!(domain["resources"]["requests"]["memory"], "6Gi");
        assert_eq!(domain["devices"]["disks"][0]["name"], "disk");
        assert_eq!(
            spec["template"]["spec"]["volumes"][0],
            json!({ "name": "disk", "persistentVolumeClaim": { "claimName": "test-vm" } })
        );
    }

    fn with_phase(phase: &str, capacity: Option<&str>) -> PersistentVolumeClaim {
        let mut claim = disk_claim(&resolved());
        claim.status = Some(PersistentVolumeClaimStatus {
            phase: Some(phase.into()),
            capacity: capacity
                .map(|c| BTreeMap::from([("storage".to_string(), Quantity(c.to_string()))])),
            ..Default::default()
        });
        claim
    }

    #[test]
    fn api_server_refusals_map_to_what_the_caller_can_do() {
        let refusal = |code: u16, message: &str| {
            kube::Error::Api(
                kube::core::Status {
                    code,
                    message: message.into(),
                    ..Default::default()
                }
                .boxed(),
            )
        };
        let quota = api_error(
            "a.b",
            "create the PVC of",
            refusal(
                403,
                "persistentvolumeclaims \"b\" is forbidden: exceeded quota: q, requested: requests.storage=50Gi",
            ),
        );
        assert_eq!(quota.kind(), "insufficient_storage", "{quota}");
        assert!(quota.to_string().contains("exceeded quota"), "{quota}");
        let rbac = api_error("a.b", "create the PVC of", refusal(403, "forbidden"));
        assert_eq!(
            rbac.kind(),
            "internal",
            "the controller's own rights: {rbac}"
        );
        assert!(rbac.to_string().contains("chart's RBAC"), "{rbac}");
        assert_eq!(
            api_error("a.b", "read the PVC of", refusal(404, "not found")).kind(),
            "not_found"
        );
        assert_eq!(
            api_error("a.b", "patch", refusal(422, "invalid")).kind(),
            "invalid_request"
        );
    }

    #[test]
    fn status_follows_the_pvc_and_its_consumer() {
        let pending = vm_of(
            &with_phase("Pending", None),
            &View::default(),
            no_kubevirt(),
        );
        assert_eq!(pending.status, VmStatus::Provisioning);
        let reason = pending.reason.expect("a reason");
        assert!(
            reason.contains("stays Pending until a pod that uses PVC test-vm is scheduled"),
            "{reason}"
        );
        assert_eq!(pending.id, "vms-a.test-vm");
        assert_eq!((pending.cpu, pending.memory, pending.storage), (2, 6, 50));
        assert_eq!(pending.disk.pvc.as_deref(), Some("vms-a/test-vm"));

        let kubevirt = View {
            kubevirt: true,
            warning: Some("ProvisioningFailed: no room".into()),
            ..View::default()
        };
        let waiting = vm_of(&with_phase("Pending", None), &kubevirt, no_kubevirt());
        let reason = waiting.reason.expect("a reason");
        assert!(reason.contains("virt-launcher"), "{reason}");
        assert!(
            reason.ends_with("last warning: ProvisioningFailed: no room"),
            "{reason}"
        );

        let bound = View {
            node: Some("n3".into()),
            ..View::default()
        };
        let staging = vm_of(&with_phase("Bound", Some("50Gi")), &bound, no_kubevirt());
        assert_eq!(staging.status, VmStatus::Provisioning);
        assert!(
            staging
                .reason
                .expect("a reason")
                .contains("bound on node n3")
        );

        // The node's reason, as kubelet's FailedMount Event on the pod carries it.
        let failed = View {
            image_failed: Some(format!(
                "{IMAGE_NOT_WRITTEN}: downloading image http://images/x.qcow2 was answered with HTTP 404 Not Found: check that the URL serves the image"
            )),
            ..bound.clone()
        };
        let broken = vm_of(&with_phase("Bound", Some("50Gi")), &failed, no_kubevirt());
        assert_eq!(broken.status, VmStatus::Failed);
        assert!(
            broken
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with(IMAGE_NOT_WRITTEN) && r.contains("HTTP 404")),
            "{broken:?}"
        );

        let written = View {
            image_written: true,
            ..bound
        };
        let ready = vm_of(&with_phase("Bound", Some("50Gi")), &written, no_kubevirt());
        assert_eq!((ready.status, ready.reason), (VmStatus::Ready, None));

        let mut growing = with_phase("Bound", Some("50Gi"));
        if let Some(spec) = growing.spec.as_mut()
            && let Some(resources) = spec.resources.as_mut()
        {
            resources.requests = Some(BTreeMap::from([(
                "storage".to_string(),
                Quantity("80Gi".into()),
            )]));
        }
        let grown = vm_of(&growing, &written, no_kubevirt());
        assert_eq!(grown.status, VmStatus::Ready);
        assert_eq!((grown.storage, grown.disk.size_gb), (80, 50));
        assert_eq!(
            grown.reason.as_deref(),
            Some("the disk grows from 50 to 80 GB")
        );

        let lost = vm_of(&with_phase("Lost", None), &View::default(), no_kubevirt());
        assert_eq!(lost.status, VmStatus::Failed);
    }

    #[test]
    fn quantities_in_whole_gib() {
        assert_eq!(gib_of("50Gi"), Some(50));
        assert_eq!(gib_of("1Ti"), Some(1024));
        assert_eq!(gib_of("1536Mi"), Some(2));
        assert_eq!(gib_of("10G"), Some(10));
        assert_eq!(gib_of(&(3u64 << 30).to_string()), Some(3));
        assert_eq!(gib_of("1.5Gi"), None);
        assert_eq!(gib_of("lots"), None);
    }
}
