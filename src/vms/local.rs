//! The VMs of `vdrive all-in-one`: each VM's record in the embedded store (the
//! ledger's file), its disk a volume made through the CSI socket the process
//! serves, like any other client's. The image is written by the node when the
//! disk is first staged, which this service does itself once, in the
//! background, to take the VM from Provisioning to Ready (or Failed, with the
//! node's reason); the disk is then unstaged and waits for its hypervisor.
//!
//! Records change under one lock, so two requests for one VM never interleave;
//! the long part (the image import) runs outside it, and a VM that is still
//! Provisioning refuses resize and delete with 409 until it is done. After a
//! restart, VMs left Provisioning are provisioned again: the CSI calls are
//! idempotent, and the node writes the image only into a blank disk.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tonic::Request;
use tracing::{info, warn};
use uuid::Uuid;

use super::{
    CreateVm, DISK_CLASS, ImageEntry, ResizeVm, Vm, VmDeleted, VmDisk, VmError, VmRuntime,
    VmStatus, parse_vm_id, resolve,
};
use crate::csi::params;
use crate::csi::proto::controller_client::ControllerClient;
use crate::csi::proto::node_client::NodeClient;
use crate::csi::proto::volume_capability::{AccessMode, AccessType, BlockVolume, access_mode};
use crate::csi::proto::{
    CapacityRange, ControllerExpandVolumeRequest, CreateVolumeRequest, DeleteVolumeRequest,
    NodeExpandVolumeRequest, NodeStageVolumeRequest, NodeUnstageVolumeRequest, VolumeCapability,
};
use crate::csi::server;
use crate::ledger::EmbeddedStore;
use crate::node::{GIB, NodeVolumes};
use crate::pools::Pool;

use super::Catalog;

/// The record kind of VMs in the embedded store.
const KIND: &str = "vm";
/// CreateVolume parameters naming the image the node writes into the disk.
pub use crate::csi::controller::{IMAGE_FORMAT_PARAM, IMAGE_PARAM};

const NO_RUNTIME: &str = "vdrive all-in-one runs no VMs: the disk is ready for your hypervisor (stage it with `vdrive csi stage --block`)";

/// VMs a restart left Provisioning ([`LocalVms::interrupted`]).
pub struct Interrupted(Vec<Stored>);

/// What the store keeps of a VM: what the API shows, plus what provisioning needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    vm: Vm,
    source: ImageEntry,
    /// CreateVolume's volume context, which staging hands back.
    volume_context: HashMap<String, String>,
    /// The CreateVolume name of this VM's disk, chosen when the VM is
    /// recorded: a VM made again under a kept disk's name gets a disk of its
    /// own, never the kept one back through CreateVolume's idempotency.
    disk_name: String,
}

pub struct LocalVms {
    store: EmbeddedStore,
    catalog: Catalog,
    /// The CSI socket this process serves.
    endpoint: String,
    /// Where provisioning stages disks (one directory per VM).
    staging_dir: PathBuf,
    volumes: Arc<NodeVolumes<EmbeddedStore>>,
    /// The pool this machine serves (`--pool`): VM disks need the vm pool.
    pool: Option<Pool>,
    /// Held while a record is read, checked and written.
    records: Mutex<()>,
}

impl LocalVms {
    pub fn new(
        store: EmbeddedStore,
        catalog: Catalog,
        endpoint: String,
        staging_dir: PathBuf,
        volumes: Arc<NodeVolumes<EmbeddedStore>>,
        pool: Option<Pool>,
    ) -> Arc<LocalVms> {
        Arc::new(LocalVms {
            store,
            catalog,
            endpoint,
            staging_dir,
            volumes,
            pool,
            records: Mutex::new(()),
        })
    }

    pub async fn list(&self) -> Result<Vec<Vm>, VmError> {
        let store = self.store.clone();
        let rows = blocking(move || store.records(KIND)).await?;
        rows.into_iter()
            .map(|(_, bytes)| decode(&bytes).map(|s| s.vm))
            .collect()
    }

    pub async fn get(&self, id: &str) -> Result<Vm, VmError> {
        Ok(self.load(id).await?.vm)
    }

    /// Records the VM, makes its disk, and starts writing its image: the answer
    /// is the VM Provisioning (or the reason it could not be made).
    pub async fn create(self: &Arc<Self>, request: CreateVm) -> Result<Vm, VmError> {
        let resolved = resolve(&request, &self.catalog)?;
        if self.pool != Some(Pool::Vm) {
            let serves = self
                .pool
                .map_or("no pool".to_string(), |p| format!("the {p} pool"));
            return Err(VmError::Precondition(format!(
                "VM disks come from the vm pool, and this all-in-one serves {serves}: start it with --pool vm"
            )));
        }
        let id = resolved.id();
        let stored = Stored {
            vm: Vm {
                id: id.clone(),
                name: resolved.name.clone(),
                namespace: resolved.namespace.clone(),
                image: resolved.image_name.clone(),
                server_type: resolved.server_type.clone(),
                cpu: resolved.cpu,
                memory: resolved.memory,
                storage: resolved.storage,
                status: VmStatus::Provisioning,
                reason: Some("making the disk".into()),
                disk: VmDisk {
                    volume_id: None,
                    node: None,
                    size_gb: resolved.storage,
                    pvc: None,
                },
                virtual_machine: VmRuntime {
                    created: false,
                    message: NO_RUNTIME.into(),
                },
            },
            source: resolved.image,
            volume_context: HashMap::new(),
            disk_name: disk_name(&resolved.namespace, &resolved.name, Uuid::new_v4()),
        };
        {
            let _records = self.records.lock().await;
            if !self.insert(&stored).await? {
                return Err(VmError::Exists {
                    namespace: resolved.namespace,
                    name: resolved.name,
                });
            }
        }
        match self.make_disk(stored).await {
            Ok(stored) => {
                self.provision_in_background(stored.clone());
                Ok(stored.vm)
            }
            Err(err) => {
                // Nothing half-made: no disk was claimed, so the record goes too.
                let _records = self.records.lock().await;
                if let Err(forget) = self.remove(&id).await {
                    warn!(vm = %id, %forget, "could not remove the record of a VM whose disk failed");
                }
                Err(err)
            }
        }
    }

    /// Grows the VM's disk to `new_size_gb`.
    /// The CSI calls run outside the records lock (an expansion waits on the
    /// ledger and the node): only reading and writing the record hold it.
    pub async fn resize(&self, id: &str, request: ResizeVm) -> Result<Vm, VmError> {
        let stored = {
            let _records = self.records.lock().await;
            self.load(id).await?
        };
        let current = stored.vm.storage;
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
        let volume_id = self.ready_disk(&stored, "resized")?;
        if request.new_size_gb == current {
            return Ok(stored.vm);
        }
        let bytes = gib_bytes(request.new_size_gb);
        let answer = ControllerClient::new(self.channel().await?)
            .controller_expand_volume(Request::new(ControllerExpandVolumeRequest {
                volume_id: volume_id.clone(),
                capacity_range: Some(CapacityRange {
                    required_bytes: bytes,
                    limit_bytes: 0,
                }),
                volume_capability: Some(block()),
                ..Default::default()
            }))
            .await
            .map_err(|status| VmError::from_csi(id, &status))?
            .into_inner();
        // A disk staged for its hypervisor grows now; an unstaged one is built
        // at its new size when it is next staged.
        let staged = self
            .volumes
            .staged_at(&volume_id)
            .await
            .map_err(|e| VmError::Internal(e.to_string()))?;
        if answer.node_expansion_required
            && let Some(path) = staged
        {
            NodeClient::new(self.channel().await?)
                .node_expand_volume(Request::new(NodeExpandVolumeRequest {
                    volume_id: volume_id.clone(),
                    volume_path: path.display().to_string(),
                    capacity_range: Some(CapacityRange {
                        required_bytes: bytes,
                        limit_bytes: 0,
                    }),
                    volume_capability: Some(block()),
                    ..Default::default()
                }))
                .await
                .map_err(|status| VmError::from_csi(id, &status))?;
        }
        let _records = self.records.lock().await;
        let mut stored = self.load(id).await?;
        // Two resizes at once: the ledger keeps the larger, and so does the record.
        stored.vm.storage = stored.vm.storage.max(request.new_size_gb);
        stored.vm.disk.size_gb = stored.vm.storage;
        self.save(&stored).await?;
        info!(vm = %id, gb = stored.vm.storage, "VM disk grown");
        Ok(stored.vm)
    }

    /// Deletes the VM; its disk is erased and released unless `keep_disk`.
    /// The erase runs outside the records lock (a large disk takes a while);
    /// a second delete meanwhile finds the disk gone or busy, which is safe.
    pub async fn delete(&self, id: &str, keep_disk: bool) -> Result<VmDeleted, VmError> {
        let stored = {
            let _records = self.records.lock().await;
            self.load(id).await?
        };
        if stored.vm.status == VmStatus::Provisioning {
            return Err(VmError::Busy {
                id: id.to_string(),
                reason: "its image is still being written; delete it when it is Ready or Failed"
                    .into(),
            });
        }
        let volume_id = stored.vm.disk.volume_id.clone();
        if !keep_disk && let Some(volume) = &volume_id {
            ControllerClient::new(self.channel().await?)
                .delete_volume(Request::new(DeleteVolumeRequest {
                    volume_id: volume.clone(),
                    secrets: HashMap::new(),
                }))
                .await
                .map_err(|status| VmError::from_csi(id, &status))?;
        }
        {
            let _records = self.records.lock().await;
            self.remove(id).await?;
        }
        info!(vm = %id, keep_disk, "VM deleted");
        Ok(VmDeleted {
            id: id.to_string(),
            disk: if keep_disk { "kept" } else { "deleted" }.into(),
            volume_id: volume_id.filter(|_| keep_disk),
        })
    }

    /// The VMs an earlier run left Provisioning. Read before the API serves:
    /// a VM created by this run is being provisioned by its own request, and
    /// provisioning it twice at once makes one of them fail.
    pub async fn interrupted(&self) -> Result<Interrupted, VmError> {
        let store = self.store.clone();
        let mut left = Vec::new();
        for (_, bytes) in blocking(move || store.records(KIND)).await? {
            let stored = decode(&bytes)?;
            if stored.vm.status == VmStatus::Provisioning {
                left.push(stored);
            }
        }
        Ok(Interrupted(left))
    }

    /// Provisions again the VMs [`Self::interrupted`] found.
    pub fn resume(self: &Arc<Self>, interrupted: Interrupted) {
        for stored in interrupted.0 {
            let id = stored.vm.id.clone();
            info!(vm = %id, "resuming the provisioning of a VM");
            let this = self.clone();
            tokio::spawn(async move {
                let made = match stored.vm.disk.volume_id {
                    Some(_) => Ok(stored),
                    None => this.make_disk(stored).await,
                };
                match made {
                    Ok(stored) => this.provision(stored).await,
                    Err(err) => this.fail(&id, err.to_string()).await,
                }
            });
        }
    }

    /// The disk's volume: CreateVolume with the vm class, block mode, and the
    /// image for the node. Idempotent by the volume's name.
    async fn make_disk(&self, mut stored: Stored) -> Result<Stored, VmError> {
        let id = stored.vm.id.clone();
        let preset = params::preset(DISK_CLASS)
            .ok_or_else(|| VmError::Internal(format!("the {DISK_CLASS} preset is missing")))?;
        let mut parameters: HashMap<String, String> = preset
            .parameters
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parameters.insert(IMAGE_PARAM.into(), stored.source.source.clone());
        if let Some(format) = &stored.source.format {
            parameters.insert(IMAGE_FORMAT_PARAM.into(), format.clone());
        }
        let volume = ControllerClient::new(self.channel().await?)
            .create_volume(Request::new(CreateVolumeRequest {
                name: stored.disk_name.clone(),
                capacity_range: Some(CapacityRange {
                    required_bytes: gib_bytes(stored.vm.storage),
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![block()],
                parameters,
                ..Default::default()
            }))
            .await
            .map_err(|status| VmError::from_csi(&id, &status))?
            .into_inner()
            .volume
            .ok_or_else(|| VmError::Internal("CreateVolume answered no volume".into()))?;
        stored.vm.disk.volume_id = Some(volume.volume_id.clone());
        stored.vm.disk.node = volume
            .accessible_topology
            .first()
            .and_then(|t| t.segments.values().next().cloned());
        stored.vm.reason = Some("writing the image into the disk".into());
        stored.volume_context = volume.volume_context;
        let _records = self.records.lock().await;
        self.save(&stored).await?;
        Ok(stored)
    }

    fn provision_in_background(self: &Arc<Self>, stored: Stored) {
        let this = self.clone();
        tokio::spawn(async move { this.provision(stored).await });
    }

    /// Stages the disk once (the node writes the image), unstages it, and
    /// records the outcome.
    async fn provision(&self, stored: Stored) {
        let id = stored.vm.id.clone();
        match self.stage_once(&stored).await {
            Ok(()) => {
                let _records = self.records.lock().await;
                match self.load(&id).await {
                    Ok(mut now) => {
                        now.vm.status = VmStatus::Ready;
                        now.vm.reason = None;
                        if let Err(err) = self.save(&now).await {
                            warn!(vm = %id, %err, "could not record that the VM is ready");
                        }
                        info!(vm = %id, "VM disk ready");
                    }
                    Err(err) => warn!(vm = %id, %err, "the VM's record went while provisioning"),
                }
            }
            Err(reason) => self.fail(&id, reason).await,
        }
    }

    async fn stage_once(&self, stored: &Stored) -> Result<(), String> {
        let volume_id = stored
            .vm
            .disk
            .volume_id
            .clone()
            .ok_or("the disk was never made")?;
        let staging = self.staging_dir.join(&stored.vm.id);
        tokio::fs::create_dir_all(&staging)
            .await
            .map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
        let staging_path = staging.display().to_string();
        let channel = self.channel().await.map_err(|e| e.to_string())?;
        let mut node = NodeClient::new(channel);
        let staged = node
            .node_stage_volume(Request::new(NodeStageVolumeRequest {
                volume_id: volume_id.clone(),
                staging_target_path: staging_path.clone(),
                volume_capability: Some(block()),
                volume_context: stored.volume_context.clone(),
                ..Default::default()
            }))
            .await;
        // Unstage whatever the stage left, whether or not it worked.
        let unstaged = node
            .node_unstage_volume(Request::new(NodeUnstageVolumeRequest {
                volume_id,
                staging_target_path: staging_path,
            }))
            .await;
        staged.map_err(|s| s.message().to_string())?;
        unstaged.map_err(|s| {
            format!(
                "the image is written, but the disk could not be unstaged: {}",
                s.message()
            )
        })?;
        let _ = tokio::fs::remove_dir(&staging).await;
        Ok(())
    }

    async fn fail(&self, id: &str, reason: String) {
        warn!(vm = %id, %reason, "VM provisioning failed");
        let _records = self.records.lock().await;
        match self.load(id).await {
            Ok(mut stored) => {
                stored.vm.status = VmStatus::Failed;
                stored.vm.reason = Some(reason);
                if let Err(err) = self.save(&stored).await {
                    warn!(vm = %id, %err, "could not record that the VM failed");
                }
            }
            Err(err) => warn!(vm = %id, %err, "the VM's record went while provisioning"),
        }
    }

    /// The volume of a disk that is done provisioning.
    fn ready_disk(&self, stored: &Stored, what: &str) -> Result<String, VmError> {
        let busy = |reason: &str| VmError::Busy {
            id: stored.vm.id.clone(),
            reason: reason.to_string(),
        };
        if stored.vm.status == VmStatus::Provisioning {
            return Err(busy(&format!(
                "its image is still being written; it can be {what} when it is Ready"
            )));
        }
        stored
            .vm
            .disk
            .volume_id
            .clone()
            .ok_or_else(|| busy("it has no disk"))
    }

    async fn channel(&self) -> Result<tonic::transport::Channel, VmError> {
        server::connect(&self.endpoint)
            .await
            .map_err(|e| VmError::Unavailable(format!("cannot reach the CSI socket: {e}")))
    }

    async fn load(&self, id: &str) -> Result<Stored, VmError> {
        parse_vm_id(id)?;
        let (store, key) = (self.store.clone(), id.to_string());
        match blocking(move || store.record(KIND, &key)).await? {
            Some(bytes) => decode(&bytes),
            None => Err(VmError::NotFound { id: id.to_string() }),
        }
    }

    async fn insert(&self, stored: &Stored) -> Result<bool, VmError> {
        let bytes = encode(stored)?;
        let (store, key) = (self.store.clone(), stored.vm.id.clone());
        blocking(move || store.put_record(KIND, &key, &bytes, true)).await
    }

    async fn save(&self, stored: &Stored) -> Result<(), VmError> {
        let bytes = encode(stored)?;
        let (store, key) = (self.store.clone(), stored.vm.id.clone());
        blocking(move || store.put_record(KIND, &key, &bytes, false))
            .await
            .map(drop)
    }

    async fn remove(&self, id: &str) -> Result<(), VmError> {
        let (store, key) = (self.store.clone(), id.to_string());
        blocking(move || store.remove_record(KIND, &key))
            .await
            .map(drop)
    }
}

impl super::VmBackend for LocalVms {
    fn create(self: Arc<Self>, request: CreateVm) -> BoxFuture<'static, Result<Vm, VmError>> {
        Box::pin(async move { LocalVms::create(&self, request).await })
    }

    fn list(
        self: Arc<Self>,
        namespace: Option<String>,
    ) -> BoxFuture<'static, Result<Vec<Vm>, VmError>> {
        Box::pin(async move {
            let mut vms = LocalVms::list(&self).await?;
            if let Some(namespace) = namespace {
                vms.retain(|vm| vm.namespace == namespace);
            }
            Ok(vms)
        })
    }

    fn get(self: Arc<Self>, id: String) -> BoxFuture<'static, Result<Vm, VmError>> {
        Box::pin(async move { LocalVms::get(&self, &id).await })
    }

    fn resize(
        self: Arc<Self>,
        id: String,
        request: ResizeVm,
    ) -> BoxFuture<'static, Result<Vm, VmError>> {
        Box::pin(async move { LocalVms::resize(&self, &id, request).await })
    }

    fn delete(
        self: Arc<Self>,
        id: String,
        keep_disk: bool,
    ) -> BoxFuture<'static, Result<VmDeleted, VmError>> {
        Box::pin(async move { LocalVms::delete(&self, &id, keep_disk).await })
    }
}

/// The name of a VM's disk volume: unambiguous (no part has a '/'), and one
/// of its own for each VM ever made under that name.
pub fn disk_name(namespace: &str, name: &str, instance: Uuid) -> String {
    format!("vm/{namespace}/{name}/{instance}")
}

fn block() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

/// GB (GiB) as CSI's bytes; sizes are checked against MAX_STORAGE_GB first.
fn gib_bytes(gib: u64) -> i64 {
    i64::try_from(gib.saturating_mul(GIB)).unwrap_or(i64::MAX)
}

fn encode(stored: &Stored) -> Result<Vec<u8>, VmError> {
    serde_json::to_vec(stored).map_err(|e| VmError::Internal(e.to_string()))
}

fn decode(bytes: &[u8]) -> Result<Stored, VmError> {
    serde_json::from_slice(bytes)
        .map_err(|e| VmError::Internal(format!("a VM record cannot be read: {e}")))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::ledger::StoreError> + Send + 'static,
) -> Result<T, VmError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| VmError::Internal(format!("the VM store task failed: {e}")))?
        .map_err(|e| VmError::Unavailable(e.to_string()))
}
