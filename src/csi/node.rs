//! CSI Node service: builds a volume's device from its extents on this node's
//! signed drives, formats and mounts it, publishes it, reports and grows it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};
use tracing::{info, instrument, warn};
use uuid::Uuid;

use super::capability;
use super::context;
use super::controller::{ExtentEraser, GIB, TOPOLOGY_KEY};
use super::inflight::InFlight;
use super::proto::node_server::Node;
use super::proto::*;
use crate::ledger::{Ledger, LedgerStore, Volume, VolumeExtent};
use crate::node::drives::{self, SignedDrive};
use crate::node::{NodeError, fs, loopdev, mounts, signature};

impl From<NodeError> for Status {
    fn from(err: NodeError) -> Self {
        use tonic::Code;
        let code = match &err {
            // Input the request carried.
            NodeError::InvalidSpec { .. } | NodeError::UnsupportedFs { .. } => {
                Code::InvalidArgument
            }
            // The node or the device is not in the state the call needs.
            NodeError::BadSignature { .. }
            | NodeError::Shrunk { .. }
            | NodeError::TooSmall { .. }
            | NodeError::NotBlockDevice { .. }
            | NodeError::NotWholeDisk { .. }
            | NodeError::RootDisk { .. }
            | NodeError::Mounted { .. }
            | NodeError::InUse { .. }
            | NodeError::HasData { .. }
            | NodeError::AlreadySigned { .. }
            | NodeError::AmbiguousFs { .. }
            | NodeError::SizeMismatch { .. }
            | NodeError::WouldShrink { .. }
            | NodeError::OutOfBounds { .. }
            | NodeError::NotLoop { .. }
            | NodeError::Busy { .. }
            | NodeError::ResizeNotPermitted { .. }
            | NodeError::NotMounted { .. } => Code::FailedPrecondition,
            // Transient: the kernel is still letting go; the CO retries.
            NodeError::MountBusy { .. } | NodeError::DetachStuck { .. } => Code::Unavailable,
            // The machine lacks a tool, or the kernel or a tool failed.
            NodeError::ToolMissing { .. }
            | NodeError::Io { .. }
            | NodeError::Command { .. }
            | NodeError::Output { .. }
            | NodeError::Ioctl { .. } => Code::Internal,
        };
        Status::new(code, err.to_string())
    }
}

/// A filesystem this much smaller than its device is grown at staging (ext4
/// leaves a partial last block group unused, so an exact match is too strict).
const GROW_SLACK_BYTES: u64 = 64 << 20;

/// The signed drives this node has found, refreshed when a uuid is not known.
#[derive(Default)]
pub struct DriveRegistry {
    drives: RwLock<Vec<SignedDrive>>,
    /// Extra devices to consider besides the machine's block devices.
    extra: RwLock<Vec<PathBuf>>,
}

impl DriveRegistry {
    pub fn new(initial: Vec<SignedDrive>) -> Self {
        let extra = initial.iter().map(|d| d.path.clone()).collect();
        DriveRegistry {
            drives: RwLock::new(initial),
            extra: RwLock::new(extra),
        }
    }

    pub fn all(&self) -> Vec<SignedDrive> {
        self.drives
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Scans the machine's block devices (and known extra paths) for signed drives.
    pub fn rescan(&self) -> Vec<SignedDrive> {
        let mut paths = drives::candidates();
        for extra in self.extra.read().unwrap_or_else(|p| p.into_inner()).iter() {
            if !paths.contains(extra) {
                paths.push(extra.clone());
            }
        }
        let found = drives::discover(&paths);
        *self.drives.write().unwrap_or_else(|p| p.into_inner()) = found.clone();
        found
    }

    fn find(&self, uuid: &Uuid) -> Option<SignedDrive> {
        let known = |list: &[SignedDrive]| list.iter().find(|d| d.signature.uuid == *uuid).cloned();
        known(&self.all()).or_else(|| known(&self.rescan()))
    }
}

/// What this node remembers about a staged volume, so unstage, publish, stats
/// and expansion (whose requests carry no volume context) find its device.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Staged {
    volume_id: String,
    device: PathBuf,
    extents: Vec<VolumeExtent>,
    block: bool,
    fs_type: Option<String>,
    staging_path: PathBuf,
    /// Target paths the volume is published at, and whether one of them was
    /// published single-writer (which admits no second target).
    #[serde(default)]
    published: Vec<PathBuf>,
    #[serde(default)]
    single_writer: bool,
}

pub struct NodeService<S> {
    node_id: String,
    ledger: Arc<Ledger<S>>,
    drives: Arc<DriveRegistry>,
    state_dir: PathBuf,
    max_volumes: i64,
    in_flight: InFlight,
}

impl<S: LedgerStore> NodeService<S> {
    pub fn new(
        node_id: String,
        ledger: Arc<Ledger<S>>,
        drives: Arc<DriveRegistry>,
        state_dir: PathBuf,
        max_volumes: i64,
    ) -> Self {
        NodeService {
            node_id,
            ledger,
            drives,
            state_dir,
            max_volumes,
            in_flight: InFlight::default(),
        }
    }

    fn record_path(&self, volume_id: &str) -> PathBuf {
        // Volume ids are ours (uuids) but arrive from the wire: keep them a file name.
        let safe: String = volume_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.state_dir.join("volumes").join(format!("{safe}.json"))
    }

    fn load_record(&self, volume_id: &str) -> Result<Option<Staged>, Status> {
        let path = self.record_path(volume_id);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Status::internal(format!(
                    "staging record {} is unreadable: {e}",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Status::internal(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    fn save_record(&self, record: &Staged) -> Result<(), Status> {
        let path = self.record_path(&record.volume_id);
        let io =
            |e: std::io::Error| Status::internal(format!("cannot write {}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let bytes =
            serde_json::to_vec_pretty(record).map_err(|e| Status::internal(e.to_string()))?;
        // Write then rename, so a crash never leaves half a record.
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    fn remove_record(&self, volume_id: &str) -> Result<(), Status> {
        match std::fs::remove_file(self.record_path(volume_id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Status::internal(e.to_string()))
            }
            _ => Ok(()),
        }
    }

    /// Whether any volume is staged on this node (their devices sit on the drives).
    pub fn has_staged_volumes(&self) -> bool {
        std::fs::read_dir(self.state_dir.join("volumes"))
            .map(|mut entries| {
                entries.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json")))
            })
            .unwrap_or(false)
    }

    /// The volume as the ledger records it on this node; the context must agree.
    async fn checked_volume(
        &self,
        volume_id: &str,
        ctx: &context::VolumeContext,
    ) -> Result<Volume, Status> {
        if ctx.node != self.node_id {
            return Err(Status::failed_precondition(format!(
                "volume {volume_id} lives on node {}, not on this node ({})",
                ctx.node, self.node_id
            )));
        }
        let volume = self
            .ledger
            .node(&self.node_id)
            .await?
            .volume(volume_id)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "volume {volume_id} has no claims on node {}",
                    self.node_id
                ))
            })?;
        let same = |a: &VolumeExtent, b: &VolumeExtent| {
            (a.virtual_uuid, a.physical_uuid, a.offset_gib)
                == (b.virtual_uuid, b.physical_uuid, b.offset_gib)
        };
        let agrees = volume.extents.len() == ctx.extents.len()
            && volume
                .extents
                .iter()
                .zip(&ctx.extents)
                .all(|(a, b)| same(a, b));
        if !agrees {
            return Err(Status::failed_precondition(format!(
                "the volume context of {volume_id} does not match its claims in the ledger; refusing to build a device from it"
            )));
        }
        Ok(volume)
    }

    /// The drive an extent lies on, checked against the drive's bounds.
    fn drive_for(&self, extent: &VolumeExtent) -> Result<SignedDrive, Status> {
        let drive = self.drives.find(&extent.physical_uuid).ok_or_else(|| {
            Status::failed_precondition(format!(
                "drive {} is not attached to node {}: reattach it or check `vdrive sign show`",
                extent.physical_uuid, self.node_id
            ))
        })?;
        if extent.offset_gib + extent.size_gib > drive.signature.capacity_gib() {
            return Err(Status::failed_precondition(format!(
                "extent {} GiB at {} GiB lies outside drive {} ({} GiB)",
                extent.size_gib,
                extent.offset_gib,
                extent.physical_uuid,
                drive.signature.capacity_gib()
            )));
        }
        Ok(drive)
    }

    /// Attaches (or finds) the loop device over the volume's single extent.
    fn build_device(&self, volume: &Volume) -> Result<PathBuf, Status> {
        let [extent] = volume.extents.as_slice() else {
            return Err(Status::failed_precondition(format!(
                "volume {} is made of {} virtual drives; this node's loop backend builds a device from one",
                volume.id,
                volume.extents.len()
            )));
        };
        let drive = self.drive_for(extent)?;
        let offset = signature::HEADER_BYTES + extent.offset_gib * GIB;
        let size = extent.size_gib * GIB;
        if let Some(device) = loopdev::find(&drive.path, offset)? {
            if loopdev::size_bytes(&device)? < size {
                loopdev::set_size(&device, size)?;
            }
            return Ok(device);
        }
        Ok(loopdev::attach(&drive.path, offset, size)?)
    }
}

fn require(value: &str, what: &str) -> Result<(), Status> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!(
            "{what} must not be empty"
        )))
    } else {
        Ok(())
    }
}

/// Runs blocking node work (commands, mounts) off the async executor's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(format!("node task failed: {e}")))?
}

#[tonic::async_trait]
impl<S: LedgerStore> Node for NodeService<S> {
    #[instrument(skip_all, fields(volume = %request.get_ref().volume_id))]
    async fn node_stage_volume(
        &self,
        request: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        require(&req.volume_id, "volume_id")?;
        require(&req.staging_target_path, "staging_target_path")?;
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
        capability::validate(cap)?;
        let ctx = context::decode(&req.volume_context)?;
        let _flight = self.in_flight.begin(&req.volume_id)?;
        let volume = self.checked_volume(&req.volume_id, &ctx).await?;

        let block = capability::is_block(cap);
        let fs_type = capability::fs_type(cap).unwrap_or(&ctx.fs_type).to_string();
        let fs = if block {
            None
        } else {
            Some(
                fs_type
                    .parse::<fs::FsType>()
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            )
        };
        let staging = PathBuf::from(&req.staging_target_path);
        let flags = capability::mount_flags(cap).to_vec();
        let read_only = capability::is_read_only_mode(cap);
        let device = self.build_device(&volume)?;
        self.save_record(&Staged {
            volume_id: volume.id.clone(),
            device: device.clone(),
            extents: volume.extents.clone(),
            block,
            fs_type: fs.map(|_| fs_type.clone()),
            staging_path: staging.clone(),
            published: Vec::new(),
            single_writer: false,
        })?;
        let Some(fs) = fs else {
            info!(device = %device.display(), "block volume staged");
            return Ok(Response::new(NodeStageVolumeResponse {}));
        };
        let volume_uuid = Uuid::parse_str(&volume.id).ok();
        blocking(move || {
            if mounts::is_mount_point(&staging)? {
                return match mounts::mount_source(&staging)? {
                    Some(source) if same_device(&source, &device) => Ok(()),
                    other => Err(Status::already_exists(format!(
                        "{} is already mounted from {}, not from this volume's device {}",
                        staging.display(),
                        other.map_or("an unknown source".into(), |s| s.display().to_string()),
                        device.display()
                    ))),
                };
            }
            match fs::identify(&device)? {
                None => fs::format(&device, fs, volume_uuid)?,
                Some(found) if found.kind == fs.as_str() => {
                    // Ours only if it carries this volume's uuid: a filesystem left by
                    // an earlier tenant of this space must never be mounted.
                    if volume_uuid.is_some() && found.uuid != volume_uuid {
                        return Err(Status::failed_precondition(format!(
                            "the space of this volume holds a {} filesystem that is not this volume's (uuid {}); it was not wiped when its previous volume was deleted. Refusing to mount it",
                            found.kind,
                            found.uuid.map_or("unknown".into(), |u| u.to_string())
                        )));
                    }
                }
                Some(found) => {
                    return Err(Status::failed_precondition(format!(
                        "volume is already formatted as {}, not {}: stage it with fsType {}",
                        found.kind,
                        fs.as_str(),
                        found.kind
                    )));
                }
            }
            // A volume expanded while it was not staged (or whose node could not
            // grow it online) is grown here, before the workload sees it.
            let device_bytes = loopdev::size_bytes(&device)?;
            if fs == fs::FsType::Ext4
                && fs::ext4_size_bytes(&device)?.is_some_and(|fs_bytes| fs_bytes + GROW_SLACK_BYTES < device_bytes)
            {
                fs::grow(&device, &staging, fs)?;
            }
            std::fs::create_dir_all(&staging).map_err(|e| Status::internal(format!("cannot create {}: {e}", staging.display())))?;
            mounts::mount(&device, &staging, Some(fs.as_str()), &flags, read_only)?;
            if fs == fs::FsType::Xfs && !read_only {
                // Cheap and a no-op when the filesystem already fills the device.
                fs::grow(&device, &staging, fs)?;
            }
            Ok(())
        })
        .await?;
        info!("volume staged");
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume = %request.get_ref().volume_id))]
    async fn node_unstage_volume(
        &self,
        request: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        require(&req.volume_id, "volume_id")?;
        require(&req.staging_target_path, "staging_target_path")?;
        let _flight = self.in_flight.begin(&req.volume_id)?;
        let record = self.load_record(&req.volume_id)?;
        let staging = PathBuf::from(&req.staging_target_path);
        blocking(move || {
            let mounted_from = if mounts::is_mount_point(&staging)? {
                mounts::mount_source(&staging)?
            } else {
                None
            };
            mounts::unmount(&staging)?;
            // detach leaves anything that is not a bound loop device alone.
            if let Some(device) = record.map(|r| r.device).or(mounted_from) {
                loopdev::detach(&device)?;
            }
            Ok(())
        })
        .await?;
        self.remove_record(&req.volume_id)?;
        info!("volume unstaged");
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume = %request.get_ref().volume_id))]
    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        require(&req.volume_id, "volume_id")?;
        require(&req.staging_target_path, "staging_target_path")?;
        require(&req.target_path, "target_path")?;
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
        capability::validate(cap)?;
        let _flight = self.in_flight.begin(&req.volume_id)?;
        let record = self.load_record(&req.volume_id)?.ok_or_else(|| {
            Status::failed_precondition(format!(
                "volume {} is not staged on this node: call NodeStageVolume first",
                req.volume_id
            ))
        })?;
        let read_only = req.readonly || capability::is_read_only_mode(cap);
        let target = PathBuf::from(&req.target_path);
        let block = capability::is_block(cap);
        let single_writer = capability::is_single_writer(cap);
        let elsewhere = record.published.iter().any(|p| *p != target);
        if elsewhere && (single_writer || record.single_writer) {
            return Err(Status::failed_precondition(format!(
                "volume {} is published single-writer at {}; it cannot be published at a second target",
                req.volume_id,
                record
                    .published
                    .first()
                    .map_or(String::new(), |p| p.display().to_string())
            )));
        }
        if block != record.block {
            return Err(Status::invalid_argument(format!(
                "volume {} was staged as {} and cannot be published as {}",
                req.volume_id,
                if record.block { "block" } else { "mount" },
                if block { "block" } else { "mount" }
            )));
        }
        let mut updated = record.clone();
        if !updated.published.contains(&target) {
            updated.published.push(target.clone());
        }
        updated.single_writer |= single_writer;
        blocking(move || {
            if mounts::is_mount_point(&target)? {
                return Ok(());
            }
            let io = |e: std::io::Error| {
                Status::internal(format!("cannot create {}: {e}", target.display()))
            };
            if block {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(io)?;
                }
                if !target.exists() {
                    std::fs::File::create(&target).map_err(io)?;
                }
                mounts::bind_mount(&record.device, &target, read_only)?;
            } else {
                std::fs::create_dir_all(&target).map_err(io)?;
                mounts::bind_mount(&record.staging_path, &target, read_only)?;
            }
            Ok(())
        })
        .await?;
        self.save_record(&updated)?;
        info!("volume published");
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume = %request.get_ref().volume_id))]
    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        require(&req.volume_id, "volume_id")?;
        require(&req.target_path, "target_path")?;
        let _flight = self.in_flight.begin(&req.volume_id)?;
        let target = PathBuf::from(&req.target_path);
        let record = self.load_record(&req.volume_id)?;
        let unmount_target = target.clone();
        blocking(move || {
            let target = unmount_target;
            mounts::unmount(&target)?;
            let removed = match std::fs::symlink_metadata(&target) {
                Ok(meta) if meta.is_dir() => std::fs::remove_dir(&target),
                Ok(_) => std::fs::remove_file(&target),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
            removed
                .map_err(|e| Status::internal(format!("cannot remove {}: {e}", target.display())))
        })
        .await?;
        if let Some(mut record) = record {
            record.published.retain(|p| *p != target);
            record.single_writer &= !record.published.is_empty();
            self.save_record(&record)?;
        }
        info!("volume unpublished");
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        require(&req.volume_id, "volume_id")?;
        require(&req.volume_path, "volume_path")?;
        let record = self.load_record(&req.volume_id)?.ok_or_else(|| {
            Status::not_found(format!(
                "volume {} is not staged on this node",
                req.volume_id
            ))
        })?;
        let path = PathBuf::from(&req.volume_path);
        let usage = blocking(move || {
            if !path.exists() {
                return Err(Status::not_found(format!(
                    "{} does not exist",
                    path.display()
                )));
            }
            let gib_bytes = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
            if record.block {
                let total = loopdev::size_bytes(&record.device)?;
                return Ok(vec![VolumeUsage {
                    total: gib_bytes(total),
                    unit: volume_usage::Unit::Bytes as i32,
                    ..Default::default()
                }]);
            }
            if !mounts::is_mount_point(&path)? {
                return Err(Status::not_found(format!(
                    "{} is not where volume {} is mounted",
                    path.display(),
                    record.volume_id
                )));
            }
            let stats = mounts::stats(&path)?;
            Ok(vec![
                VolumeUsage {
                    available: gib_bytes(stats.available_bytes),
                    total: gib_bytes(stats.total_bytes),
                    used: gib_bytes(stats.used_bytes),
                    unit: volume_usage::Unit::Bytes as i32,
                },
                VolumeUsage {
                    available: gib_bytes(stats.available_inodes),
                    total: gib_bytes(stats.total_inodes),
                    used: gib_bytes(stats.used_inodes),
                    unit: volume_usage::Unit::Inodes as i32,
                },
            ])
        })
        .await?;
        Ok(Response::new(NodeGetVolumeStatsResponse {
            usage,
            volume_condition: None,
        }))
    }

    #[instrument(skip_all, fields(volume = %request.get_ref().volume_id))]
    async fn node_expand_volume(
        &self,
        request: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        require(&req.volume_id, "volume_id")?;
        require(&req.volume_path, "volume_path")?;
        let _flight = self.in_flight.begin(&req.volume_id)?;
        let record = self.load_record(&req.volume_id)?.ok_or_else(|| {
            Status::not_found(format!(
                "volume {} is not staged on this node",
                req.volume_id
            ))
        })?;
        let volume = self
            .ledger
            .node(&self.node_id)
            .await?
            .volume(&req.volume_id)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "volume {} has no claims on this node",
                    req.volume_id
                ))
            })?;
        let required = req
            .capacity_range
            .as_ref()
            .map_or(0, |r| r.required_bytes.max(0) as u64);
        let claimed = volume.capacity_gib * GIB;
        if required > claimed {
            return Err(Status::failed_precondition(format!(
                "volume {} is claimed at {} GiB but {required} bytes were asked: expand it through the controller first",
                req.volume_id, volume.capacity_gib
            )));
        }
        blocking(move || {
            if loopdev::size_bytes(&record.device)? < claimed {
                loopdev::set_size(&record.device, claimed)?;
            }
            if let Some(fs_type) = &record.fs_type {
                let fs = fs_type
                    .parse::<fs::FsType>()
                    .map_err(|e| Status::internal(e.to_string()))?;
                fs::grow(&record.device, &record.staging_path, fs)?;
            }
            Ok(())
        })
        .await?;
        info!(gib = volume.capacity_gib, "volume expanded on the node");
        Ok(Response::new(NodeExpandVolumeResponse {
            capacity_bytes: i64::try_from(claimed).unwrap_or(i64::MAX),
        }))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::rpc::Type;
        let capabilities = [
            Type::StageUnstageVolume,
            Type::GetVolumeStats,
            Type::ExpandVolume,
            Type::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(|t| NodeServiceCapability {
            r#type: Some(node_service_capability::Type::Rpc(
                node_service_capability::Rpc { r#type: t as i32 },
            )),
        })
        .collect();
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: self.max_volumes,
            accessible_topology: Some(Topology {
                segments: HashMap::from([(TOPOLOGY_KEY.to_string(), self.node_id.clone())]),
            }),
        }))
    }
}

/// Two paths name the same block device (e.g. /dev/loop3 and a symlink to it).
fn same_device(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

impl<S: LedgerStore> ExtentEraser for NodeService<S> {
    fn erase(&self, volume: &Volume) -> Result<bool, Status> {
        if volume.node != self.node_id {
            return Ok(false);
        }
        for extent in &volume.extents {
            let Some(drive) = self.drives.find(&extent.physical_uuid) else {
                warn!(drive = %extent.physical_uuid, "drive of a deleted volume is missing; its space is released unerased");
                continue;
            };
            let offset = signature::HEADER_BYTES + extent.offset_gib * GIB;
            if let Some(device) = loopdev::find(&drive.path, offset)? {
                return Err(Status::failed_precondition(format!(
                    "volume {} is still staged ({} is attached): unstage it before deleting",
                    volume.id,
                    device.display()
                )));
            }
            drives::erase(&drive.path, offset, extent.size_gib * GIB)?;
        }
        Ok(true)
    }
}
