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
use super::controller::{ExtentEraser, TOPOLOGY_KEY};
use super::inflight::InFlight;
use super::proto::node_server::Node;
use super::proto::*;
use crate::ledger::{Ledger, LedgerStore, Volume, VolumeExtent};
use crate::node::drives::{self, SignedDrive};
use crate::node::{GIB, NodeError, fs, loopdev, mounts, signature};

impl From<NodeError> for Status {
    fn from(err: NodeError) -> Self {
        use tonic::Code;
        let code = match &err {
            // Input the request carried.
            NodeError::InvalidSpec { .. }
            | NodeError::UnsupportedFs { .. }
            | NodeError::DmInvalid { .. } => Code::InvalidArgument,
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
            NodeError::MountBusy { .. }
            | NodeError::DetachStuck { .. }
            | NodeError::DmBusy { .. } => Code::Unavailable,
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
pub struct DriveRegistry {
    drives: RwLock<Vec<SignedDrive>>,
    /// Extra devices to consider besides the machine's block devices.
    extra: RwLock<Vec<PathBuf>>,
    /// Whether a rescan looks at the machine's block devices at all. Simulated
    /// drives are this node's own: several simulated nodes on one machine (a
    /// test cluster) must not pick up each other's loop devices.
    scan_machine: bool,
}

impl DriveRegistry {
    pub fn new(initial: Vec<SignedDrive>) -> Self {
        let extra = initial.iter().map(|d| d.path.clone()).collect();
        DriveRegistry {
            drives: RwLock::new(initial),
            extra: RwLock::new(extra),
            scan_machine: true,
        }
    }

    /// A registry that only ever looks at these drives' devices (simulated drives).
    pub fn only(initial: Vec<SignedDrive>) -> Self {
        DriveRegistry {
            scan_machine: false,
            ..DriveRegistry::new(initial)
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
        let mut paths = if self.scan_machine {
            drives::candidates()
        } else {
            Vec::new()
        };
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
/// and expansion (whose requests carry no volume context) know it. The device
/// itself is never remembered by name: loop device numbers are reused, so it is
/// found again each time as the loop device over exactly this extent.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Staged {
    volume_id: String,
    extent: VolumeExtent,
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

/// Where an extent lies: the drive's device, and the byte range on it.
struct Location {
    drive: PathBuf,
    offset: u64,
    size: u64,
}

impl Location {
    /// The loop device over exactly this range, if one is attached.
    fn device(&self) -> Result<Option<PathBuf>, Status> {
        Ok(loopdev::find(&self.drive, self.offset)?)
    }
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
    /// `in_flight` is shared with the controller when both run in one process,
    /// so that a volume is never deleted while it is being staged.
    pub fn new(
        node_id: String,
        ledger: Arc<Ledger<S>>,
        drives: Arc<DriveRegistry>,
        state_dir: PathBuf,
        max_volumes: i64,
        in_flight: InFlight,
    ) -> Self {
        NodeService {
            node_id,
            ledger,
            drives,
            state_dir,
            max_volumes,
            in_flight,
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
        // A volume created a moment ago may not have reached a cached ledger yet.
        let volume = match self.ledger.node(&self.node_id).await?.volume(volume_id) {
            Some(volume) => Some(volume),
            None => self
                .ledger
                .node_latest(&self.node_id)
                .await?
                .volume(volume_id),
        }
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
        if volume.releasing {
            return Err(Status::not_found(format!(
                "volume {volume_id} was deleted; its extents are waiting to be erased"
            )));
        }
        Ok(volume)
    }

    /// The drive and byte range of an extent, checked against the drive's bounds.
    fn locate(&self, extent: &VolumeExtent) -> Result<Location, Status> {
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
        Ok(Location {
            drive: drive.path,
            offset: signature::HEADER_BYTES + extent.offset_gib * GIB,
            size: extent.size_gib * GIB,
        })
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

/// Attaches (or finds) the loop device over `at`. The bool says whether this call
/// attached it, so that a failure later in the same call can take it down again.
fn device_over(at: &Location) -> Result<(PathBuf, bool), Status> {
    match at.device()? {
        Some(device) => {
            let current = loopdev::size_bytes(&device)?;
            if current > at.size {
                return Err(Status::failed_precondition(format!(
                    "{} covers this extent but is larger than the volume ({current} > {} bytes): it is not this volume's device; detach it",
                    device.display(),
                    at.size
                )));
            }
            if current < at.size {
                loopdev::set_size(&device, at.size)?;
            }
            Ok((device, false))
        }
        None => Ok((loopdev::attach(&at.drive, at.offset, at.size)?, true)),
    }
}

/// Formats (if blank) and mounts a volume's device at its staging path; returns
/// the filesystem it carries.
fn mount_staged(
    device: &Path,
    staging: &Path,
    wanted: Option<fs::FsType>,
    volume_uuid: Option<Uuid>,
    flags: &[String],
    read_only: bool,
) -> Result<fs::FsType, Status> {
    let parse = |kind: &str| kind.parse::<fs::FsType>().map_err(Status::from);
    if mounts::is_mount_point(staging)? {
        let source = mounts::mount_source(staging)?;
        if !source.as_deref().is_some_and(|s| same_device(s, device)) {
            return Err(Status::already_exists(format!(
                "{} is already mounted from {}, not from this volume's device {}",
                staging.display(),
                source.map_or("an unknown source".into(), |s| s.display().to_string()),
                device.display()
            )));
        }
        return match fs::detect(device)? {
            Some(kind) => parse(&kind),
            None => Err(Status::internal(format!(
                "{} is mounted but holds no filesystem",
                device.display()
            ))),
        };
    }
    // The directory first: nothing is formatted for a staging path that cannot exist.
    std::fs::create_dir_all(staging)
        .map_err(|e| Status::internal(format!("cannot create {}: {e}", staging.display())))?;
    let fs = match fs::identify(device)? {
        None => {
            let fs = wanted.unwrap_or(fs::FsType::Ext4);
            fs::format(device, fs, volume_uuid)?;
            fs
        }
        Some(found) => {
            // Ours only if it carries this volume's uuid: a filesystem left by an
            // earlier tenant of this space must never be mounted.
            if volume_uuid.is_some() && found.uuid != volume_uuid {
                return Err(Status::failed_precondition(format!(
                    "the space of this volume holds {} (uuid {}) that is not this volume's; it was not wiped when its previous volume was deleted. Refusing to mount it",
                    found.kind,
                    found.uuid.map_or("unknown".into(), |u| u.to_string())
                )));
            }
            let fs = parse(&found.kind)?;
            if let Some(wanted) = wanted.filter(|w| *w != fs) {
                return Err(Status::failed_precondition(format!(
                    "volume is already formatted as {}, not {}: stage it with fsType {}",
                    fs.as_str(),
                    wanted.as_str(),
                    fs.as_str()
                )));
            }
            // A volume expanded while it was not staged (or whose node could not
            // grow it online) is grown here, before the workload sees it.
            let device_bytes = loopdev::size_bytes(device)?;
            if fs == fs::FsType::Ext4
                && fs::ext4_size_bytes(device)?
                    .is_some_and(|fs_bytes| fs_bytes + GROW_SLACK_BYTES < device_bytes)
            {
                fs::grow(device, staging, fs)?;
            }
            fs
        }
    };
    mounts::mount(device, staging, Some(fs.as_str()), flags, read_only)?;
    if fs == fs::FsType::Xfs && !read_only {
        // Cheap, and a no-op when the filesystem already fills the device.
        if let Err(err) = fs::grow(device, staging, fs) {
            let _ = mounts::unmount(staging);
            return Err(err.into());
        }
    }
    Ok(fs)
}

/// Whether `path` is mounted from `device`.
fn mounted_from(path: &Path, device: &Path) -> Result<bool, Status> {
    Ok(mounts::is_mount_point(path)?
        && mounts::mount_source(path)?.is_some_and(|s| same_device(&s, device)))
}

/// Removes a target this driver created: an empty directory or an empty file
/// (the bind point of a block volume). Never anything with content.
fn remove_target(target: &Path) -> Result<(), Status> {
    let removed = match std::fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir(target),
        Ok(meta) if meta.is_file() && meta.len() == 0 => std::fs::remove_file(target),
        Ok(_) => {
            return Err(Status::failed_precondition(format!(
                "{} is not an empty directory or file that vdrive created; leaving it alone",
                target.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    removed.map_err(|e| Status::internal(format!("cannot remove {}: {e}", target.display())))
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
        let [extent] = volume.extents.as_slice() else {
            return Err(Status::failed_precondition(format!(
                "volume {} is made of {} virtual drives; this node's loop backend builds a device from one",
                volume.id,
                volume.extents.len()
            )));
        };
        let block = capability::is_block(cap);
        let staging = PathBuf::from(&req.staging_target_path);
        let existing = self.load_record(&volume.id)?;
        if let Some(record) = &existing {
            if record.staging_path != staging || record.block != block {
                return Err(Status::failed_precondition(format!(
                    "volume {} is already staged as {} at {}; unstage it there first",
                    volume.id,
                    if record.block { "block" } else { "mount" },
                    record.staging_path.display()
                )));
            }
        }
        let wanted = match capability::fs_type(cap).or(ctx.fs_type.as_deref()) {
            Some(name) if !block => Some(name.parse::<fs::FsType>().map_err(Status::from)?),
            _ => None,
        };
        let at = self.locate(extent)?;
        let volume_uuid = Uuid::parse_str(&volume.id).ok();
        let flags = capability::mount_flags(cap).to_vec();
        let read_only = capability::is_read_only_mode(cap);
        let stage_at = staging.clone();
        let (device, attached_here, fs) = blocking(move || {
            let (device, attached_here) = device_over(&at)?;
            if block {
                return Ok((device, attached_here, None));
            }
            match mount_staged(&device, &stage_at, wanted, volume_uuid, &flags, read_only) {
                Ok(fs) => Ok((device, attached_here, Some(fs))),
                Err(err) => {
                    // Nothing half-made: a device this call attached goes again.
                    if attached_here {
                        let _ = loopdev::detach(&device);
                    }
                    Err(err)
                }
            }
        })
        .await?;
        let record = Staged {
            volume_id: volume.id.clone(),
            extent: extent.clone(),
            block,
            fs_type: fs.map(|f| f.as_str().to_string()),
            staging_path: staging.clone(),
            published: existing
                .as_ref()
                .map(|r| r.published.clone())
                .unwrap_or_default(),
            single_writer: existing.is_some_and(|r| r.single_writer),
        };
        if let Err(err) = self.save_record(&record) {
            if attached_here {
                let _ = blocking(move || {
                    if !block {
                        mounts::unmount(&staging)?;
                    }
                    Ok(loopdev::detach(&device)?)
                })
                .await;
            }
            return Err(err);
        }
        info!(block, "volume staged");
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
        let staging = PathBuf::from(&req.staging_target_path);
        let Some(record) = self.load_record(&req.volume_id)? else {
            // Not staged here: nothing of this volume to take down, and another
            // volume's mount at that path is not ours to touch.
            return Ok(Response::new(NodeUnstageVolumeResponse {}));
        };
        if record.staging_path != staging {
            return Err(Status::failed_precondition(format!(
                "volume {} is staged at {}, not at {}",
                req.volume_id,
                record.staging_path.display(),
                staging.display()
            )));
        }
        let at = self.locate(&record.extent)?;
        let published = record.published.clone();
        blocking(move || {
            // Check everything before taking anything down.
            let device = at.device()?;
            let still: Vec<String> = published
                .iter()
                .filter(|t| {
                    device
                        .as_deref()
                        .is_some_and(|d| mounted_from(t, d).unwrap_or(true))
                })
                .map(|t| t.display().to_string())
                .collect();
            if !still.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "volume is still published at {}: unpublish it first",
                    still.join(", ")
                )));
            }
            if let Some(device) = &device
                && !record.block
                && mounted_from(&staging, device)?
            {
                mounts::unmount(&staging)?;
            }
            if let Some(device) = device {
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
        require(&req.target_path, "target_path")?;
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
        capability::validate(cap)?;
        require(&req.staging_target_path, "staging_target_path")?;
        let _flight = self.in_flight.begin(&req.volume_id)?;
        let mut record = self.load_record(&req.volume_id)?.ok_or_else(|| {
            Status::failed_precondition(format!(
                "volume {} is not staged on this node: call NodeStageVolume first",
                req.volume_id
            ))
        })?;
        if record.staging_path != Path::new(&req.staging_target_path) {
            return Err(Status::failed_precondition(format!(
                "volume {} is staged at {}, not at {}",
                req.volume_id,
                record.staging_path.display(),
                req.staging_target_path
            )));
        }
        let block = capability::is_block(cap);
        if block != record.block {
            return Err(Status::invalid_argument(format!(
                "volume {} was staged as {} and cannot be published as {}",
                req.volume_id,
                if record.block { "block" } else { "mount" },
                if block { "block" } else { "mount" }
            )));
        }
        let target = PathBuf::from(&req.target_path);
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
        let read_only = req.readonly || capability::is_read_only_mode(cap);
        let at = self.locate(&record.extent)?;
        let staging = record.staging_path.clone();
        let publish_at = target.clone();
        blocking(move || {
            let target = publish_at;
            let device = at.device()?.ok_or_else(|| {
                Status::failed_precondition(
                    "the volume's device is gone (the node restarted?): stage it again",
                )
            })?;
            if !block && !mounted_from(&staging, &device)? {
                return Err(Status::failed_precondition(format!(
                    "the volume is not mounted at its staging path {}: stage it again",
                    staging.display()
                )));
            }
            if mounts::is_mount_point(&target)? {
                return if mounted_from(&target, &device)? {
                    Ok(())
                } else {
                    Err(Status::already_exists(format!(
                        "{} is already mounted from something else",
                        target.display()
                    )))
                };
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
                mounts::bind_mount(&device, &target, read_only)?;
            } else {
                std::fs::create_dir_all(&target).map_err(io)?;
                mounts::bind_mount(&staging, &target, read_only)?;
            }
            Ok(())
        })
        .await?;
        if !record.published.contains(&target) {
            record.published.push(target);
        }
        record.single_writer |= single_writer;
        self.save_record(&record)?;
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
        let location = match &record {
            Some(r) if !r.published.contains(&target) => Some(self.locate(&r.extent)?),
            _ => None,
        };
        let unpublish_at = target.clone();
        blocking(move || {
            let target = unpublish_at;
            if mounts::is_mount_point(&target)? {
                // A target this volume was not published at must at least be
                // mounted from its device before it is taken away.
                if let Some(at) = location {
                    let ours = at
                        .device()?
                        .is_some_and(|d| mounted_from(&target, &d).unwrap_or(false));
                    if !ours {
                        return Err(Status::failed_precondition(format!(
                            "{} is not where this volume is published",
                            target.display()
                        )));
                    }
                }
                mounts::unmount(&target)?;
            }
            remove_target(&target)
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
        if record.staging_path != path && !record.published.contains(&path) {
            return Err(Status::not_found(format!(
                "{} is neither where volume {} is staged nor where it is published",
                path.display(),
                record.volume_id
            )));
        }
        let at = self.locate(&record.extent)?;
        let usage = blocking(move || {
            if !path.exists() {
                return Err(Status::not_found(format!(
                    "{} does not exist",
                    path.display()
                )));
            }
            let signed = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
            let device = at.device()?.ok_or_else(|| {
                Status::not_found(format!(
                    "volume {} has no device on this node",
                    record.volume_id
                ))
            })?;
            if record.block {
                return Ok(vec![VolumeUsage {
                    total: signed(loopdev::size_bytes(&device)?),
                    unit: volume_usage::Unit::Bytes as i32,
                    ..Default::default()
                }]);
            }
            if !mounted_from(&path, &device)? {
                return Err(Status::not_found(format!(
                    "volume {} is not mounted at {}",
                    record.volume_id,
                    path.display()
                )));
            }
            let stats = mounts::stats(&path)?;
            Ok(vec![
                VolumeUsage {
                    available: signed(stats.available_bytes),
                    total: signed(stats.total_bytes),
                    used: signed(stats.used_bytes),
                    unit: volume_usage::Unit::Bytes as i32,
                },
                VolumeUsage {
                    available: signed(stats.available_inodes),
                    total: signed(stats.total_inodes),
                    used: signed(stats.used_inodes),
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
        let required = req.capacity_range.as_ref().map_or(0, |r| r.required_bytes);
        let required = u64::try_from(required).map_err(|_| {
            Status::invalid_argument("capacity_range required_bytes must not be negative")
        })?;
        let _flight = self.in_flight.begin(&req.volume_id)?;
        let record = self.load_record(&req.volume_id)?.ok_or_else(|| {
            Status::not_found(format!(
                "volume {} is not staged on this node",
                req.volume_id
            ))
        })?;
        let cached = self
            .ledger
            .node(&self.node_id)
            .await?
            .volume(&req.volume_id);
        // The controller has just grown the claim; a cached ledger may lag behind.
        let volume = match cached {
            Some(volume) if volume.capacity_gib * GIB >= required => Some(volume),
            _ => self
                .ledger
                .node_latest(&self.node_id)
                .await?
                .volume(&req.volume_id),
        }
        .ok_or_else(|| {
            Status::not_found(format!(
                "volume {} has no claims on this node",
                req.volume_id
            ))
        })?;
        let claimed = volume.capacity_gib * GIB;
        if required > claimed {
            return Err(Status::failed_precondition(format!(
                "volume {} is claimed at {} GiB but {required} bytes were asked: expand it through the controller first",
                req.volume_id, volume.capacity_gib
            )));
        }
        let [extent] = volume.extents.as_slice() else {
            return Err(Status::failed_precondition(
                "only one-drive volumes grow on a loop-backend node",
            ));
        };
        let at = self.locate(extent)?;
        blocking(move || {
            let device = at.device()?.ok_or_else(|| {
                Status::failed_precondition("the volume's device is gone: stage it again")
            })?;
            if loopdev::size_bytes(&device)? < claimed {
                loopdev::set_size(&device, claimed)?;
            }
            if let Some(fs_type) = &record.fs_type {
                let fs = fs_type.parse::<fs::FsType>().map_err(Status::from)?;
                fs::grow(&device, &record.staging_path, fs)?;
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
        if let Some(record) = self.load_record(&volume.id)? {
            return Err(Status::failed_precondition(format!(
                "volume {} is still staged at {}: unstage it before deleting",
                volume.id,
                record.staging_path.display()
            )));
        }
        for extent in &volume.extents {
            let Ok(at) = self.locate(extent) else {
                warn!(drive = %extent.physical_uuid, "drive of a deleted volume is missing; its space is released unerased");
                continue;
            };
            if let Some(device) = at.device()? {
                return Err(Status::failed_precondition(format!(
                    "volume {} still has a device ({}) on this node: unstage it before deleting",
                    volume.id,
                    device.display()
                )));
            }
            drives::erase(&at.drive, at.offset, at.size)?;
        }
        Ok(true)
    }
}
