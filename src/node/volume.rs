//! The node's volume lifecycle, without gRPC: stage (build the device, format,
//! mount), publish, unpublish, unstage, stats, expand and erase. The device comes
//! from the node's [`DeviceBackend`]; what was staged where is kept in
//! [`StagingRecords`]; the ledger says which extents a volume owns, and every
//! extent is checked against this node's own signed drives before it is used.
//!
//! Staging writes its record first (the intent), then acts: a call cancelled or
//! crashed half-way leaves a record, so unstage still finds and takes down
//! whatever was made.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;
use uuid::Uuid;

use super::backend::{DeviceBackend, Segment};
use super::publish::{self, Formatting, MountSpec};
use super::registry::DriveRegistry;
use super::staging::{StagingRecord, StagingRecords};
use super::{GIB, NodeError, blockdev, drives, fs, image, loopdev, mounts, ownership};
use crate::drive::Backend;
use crate::ledger::{Claim, Ledger, LedgerStore, NodeLedger, Volume, VolumeExtent};

/// Wipes a volume's extents before their claims are released, so the next
/// tenant of that space never reads this one's data. All-in-one's controller
/// calls it before releasing; in a cluster the node's reclaimer does.
pub trait ExtentEraser: Send + Sync {
    /// Erases `volume`'s extents if they are on this eraser's node. Only
    /// [`Erasure::Erased`] lets the caller release the claims.
    fn erase(&self, volume: &Volume) -> Erasure;
}

/// What became of an erase: callers match all three, so "not erased" can never
/// be mistaken for "erased".
#[derive(Debug)]
#[must_use]
pub enum Erasure {
    /// Every extent reads zeros and the drive was flushed: release the claims.
    Erased,
    /// Not erased yet (the drive is missing or busy, the volume still staged, its
    /// header disagrees...): the claims stay, and a later try may succeed.
    NotYet(NodeError),
    /// The volume lives on another node; that node's eraser must do it.
    NotOurs,
}

/// NodeStageVolume, as the core sees it.
pub struct StageRequest {
    pub volume_id: String,
    /// The node and extents the volume context names; they must match the ledger.
    pub context_node: String,
    pub context_extents: Vec<VolumeExtent>,
    pub staging_path: PathBuf,
    pub block: bool,
    pub fs_type: Option<fs::FsType>,
    pub mount_flags: Vec<String>,
    pub read_only: bool,
    /// The disk image to write into a blank block volume (volume context).
    pub image: Option<image::Image>,
}

/// NodePublishVolume, as the core sees it.
pub struct PublishRequest {
    pub volume_id: String,
    pub staging_path: PathBuf,
    pub target_path: PathBuf,
    pub block: bool,
    pub read_only: bool,
    pub single_writer: bool,
}

/// What NodeGetVolumeStats reports.
pub enum Usage {
    Block { total_bytes: u64 },
    Filesystem(mounts::Stats),
}

pub struct NodeVolumes<S> {
    node_id: String,
    ledger: Arc<Ledger<S>>,
    drives: Arc<DriveRegistry>,
    records: StagingRecords,
    backend: Arc<dyn DeviceBackend>,
    /// Where images are downloaded and converted while they are imported.
    scratch: PathBuf,
    /// Whether raw block volumes may be loop devices (test beds without dm).
    unsafe_loop_block: bool,
}

/// What the blocking half of a node call works with: everything of the node
/// but the ledger. Record files, drive rescans, sysfs and mountinfo reads,
/// commands and ioctls all happen here, off the async executor's threads.
#[derive(Clone)]
struct OnNode {
    node_id: String,
    drives: Arc<DriveRegistry>,
    records: StagingRecords,
    backend: Arc<dyn DeviceBackend>,
    scratch: PathBuf,
}

/// Runs blocking node work (records, rescans, commands, mounts, ioctls) off the
/// async executor.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| NodeError::Task(e.to_string()))?
}

fn mode(block: bool) -> &'static str {
    if block { "block" } else { "mount" }
}

impl<S: LedgerStore> NodeVolumes<S> {
    pub fn new(
        node_id: String,
        ledger: Arc<Ledger<S>>,
        drives: Arc<DriveRegistry>,
        state_dir: &Path,
        backend: Arc<dyn DeviceBackend>,
    ) -> Self {
        NodeVolumes {
            node_id,
            ledger,
            drives,
            records: StagingRecords::new(state_dir),
            backend,
            scratch: state_dir.join("images"),
            unsafe_loop_block: false,
        }
    }

    /// Lets raw block volumes be loop devices, which their tenant can remap onto
    /// the whole drive: only for test beds whose kernel has no device-mapper.
    pub fn allow_unsafe_loop_block_volumes(mut self, allow: bool) -> Self {
        self.unsafe_loop_block = allow;
        self
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn backend(&self) -> Backend {
        self.backend.kind()
    }

    /// Whether any volume is staged on this node (their devices sit on the drives).
    pub fn has_staged_volumes(&self) -> bool {
        self.records.any()
    }

    fn locate(&self, extents: &[VolumeExtent]) -> Result<Vec<Segment>, NodeError> {
        self.drives.locate_all(&self.node_id, extents)
    }

    /// Where the volume is staged on this node, if it is.
    pub async fn staged_at(&self, volume_id: &str) -> Result<Option<PathBuf>, NodeError> {
        let node = self.on_node();
        let id = volume_id.to_string();
        let record = blocking(move || node.records.load(&id)).await?;
        Ok(record.map(|r| r.staging_path))
    }

    /// Looks for loop devices over this node's drives that no staged volume
    /// accounts for, and detaches each (see [`OnNode::stray_loop_devices`]).
    /// Only a loop node makes loop devices over its drives.
    pub async fn sweep_stray_devices(&self) -> Result<Vec<StrayDevice>, NodeError> {
        if self.backend.kind() != Backend::Loop {
            return Ok(Vec::new());
        }
        let node = self.on_node();
        blocking(move || node.sweep_stray_loop_devices()).await
    }

    fn on_node(&self) -> OnNode {
        OnNode {
            node_id: self.node_id.clone(),
            drives: self.drives.clone(),
            records: self.records.clone(),
            backend: self.backend.clone(),
            scratch: self.scratch.clone(),
        }
    }

    /// The volume as the ledger records it on this node, and its claims; the
    /// context must agree.
    async fn checked_volume(
        &self,
        volume_id: &str,
        context_node: &str,
        context_extents: &[VolumeExtent],
    ) -> Result<(Volume, Vec<Claim>), NodeError> {
        if context_node != self.node_id {
            return Err(NodeError::WrongNode {
                volume: volume_id.to_string(),
                on: context_node.to_string(),
                here: self.node_id.clone(),
            });
        }
        // A volume created a moment ago may not have reached a cached ledger yet.
        let (ledger, volume) = self.ledger_with_volume(volume_id, |_| true).await?;
        let same = |a: &VolumeExtent, b: &VolumeExtent| {
            (a.virtual_uuid, a.physical_uuid, a.offset_gib)
                == (b.virtual_uuid, b.physical_uuid, b.offset_gib)
        };
        // A context written before the volume grew lists fewer extents: every one
        // it lists must still be the volume's, in place.
        let agrees = context_extents.len() <= volume.extents.len()
            && !context_extents.is_empty()
            && volume
                .extents
                .iter()
                .zip(context_extents)
                .all(|(a, b)| same(a, b));
        if !agrees {
            return Err(NodeError::ContextMismatch {
                volume: volume_id.to_string(),
            });
        }
        if volume.releasing {
            return Err(NodeError::Deleted {
                volume: volume_id.to_string(),
            });
        }
        let claims = ledger.claims_of(&volume.id);
        Ok((volume, claims))
    }

    /// The volume as this node's ledger has it: from a cached ledger when that
    /// copy is `fresh_enough`, else read past the cache (a volume created or
    /// grown a moment ago may not have reached the cache yet).
    async fn ledger_volume(
        &self,
        volume_id: &str,
        fresh_enough: impl Fn(&Volume) -> bool,
    ) -> Result<Volume, NodeError> {
        Ok(self.ledger_with_volume(volume_id, fresh_enough).await?.1)
    }

    /// The node's ledger that holds `volume_id` as [`Self::ledger_volume`]
    /// chooses it, and the volume in it.
    async fn ledger_with_volume(
        &self,
        volume_id: &str,
        fresh_enough: impl Fn(&Volume) -> bool,
    ) -> Result<(Arc<NodeLedger>, Volume), NodeError> {
        let cached = self.ledger.node(&self.node_id).await?;
        let ledger = match cached.volume(volume_id) {
            Some(volume) if fresh_enough(&volume) => return Ok((cached, volume)),
            _ => self.ledger.node_latest(&self.node_id).await?,
        };
        match ledger.volume(volume_id) {
            Some(volume) => Ok((ledger, volume)),
            None => Err(NodeError::NoClaims {
                volume: volume_id.to_string(),
                node: self.node_id.clone(),
            }),
        }
    }

    pub async fn stage(&self, req: StageRequest) -> Result<(), NodeError> {
        // A loop device's mapping can be changed by anyone who has it open
        // read-write (LOOP_SET_STATUS64 needs no capability): a raw block tenant
        // must never hold one over a shared drive.
        if req.block && self.backend.kind() == Backend::Loop && !self.unsafe_loop_block {
            return Err(NodeError::LoopBlockRefused {
                volume: req.volume_id,
            });
        }
        let (volume, claims) = self
            .checked_volume(&req.volume_id, &req.context_node, &req.context_extents)
            .await?;
        if volume.extents.len() > self.backend.kind().max_parts().unwrap_or(usize::MAX) {
            return Err(NodeError::TooManyParts {
                volume: volume.id,
                parts: volume.extents.len(),
                backend: self.backend.kind(),
            });
        }
        let node = self.on_node();
        blocking(move || node.stage(volume, &claims, req)).await
    }

    /// Takes down what this node has of the volume at `staging`: what its record
    /// says, and what is really there after a crash left no record (a mount of
    /// the volume's device at `staging`, the device itself). Unstaging a volume
    /// that has nothing here is fine.
    pub async fn unstage(&self, volume_id: &str, staging: &Path) -> Result<(), NodeError> {
        let node = self.on_node();
        let id = volume_id.to_string();
        let record = blocking(move || node.records.load(&id)).await?;
        let extents = match &record {
            Some(record) if record.staging_path != staging => {
                return Err(NodeError::StagingPathMismatch {
                    volume: volume_id.to_string(),
                    staged_at: record.staging_path.clone(),
                    given: staging.to_path_buf(),
                });
            }
            Some(record) => record.extents.clone(),
            // No record (a stage crashed before writing it, or it was lost): the
            // ledger still says where the volume's device would be.
            None => match self.ledger_volume(volume_id, |_| true).await {
                Ok(volume) => volume.extents,
                // Not this node's volume: nothing of it can be here, and another
                // volume's mount at that path is not ours to touch.
                Err(NodeError::NoClaims { .. }) => return Ok(()),
                Err(err) => return Err(err),
            },
        };
        let node = self.on_node();
        let (id, staging) = (volume_id.to_string(), staging.to_path_buf());
        let formatting = record.as_ref().is_some_and(|r| r.formatting);
        blocking(move || node.unstage(&id, &staging, record.is_some(), formatting, &extents)).await
    }

    pub async fn publish(&self, req: PublishRequest) -> Result<(), NodeError> {
        let node = self.on_node();
        blocking(move || node.publish(req)).await
    }

    pub async fn unpublish(&self, volume_id: &str, target: &Path) -> Result<(), NodeError> {
        let node = self.on_node();
        let (id, target) = (volume_id.to_string(), target.to_path_buf());
        blocking(move || node.unpublish(&id, &target)).await
    }

    pub async fn stats(&self, volume_id: &str, path: &Path) -> Result<Usage, NodeError> {
        let node = self.on_node();
        let (id, path) = (volume_id.to_string(), path.to_path_buf());
        blocking(move || node.stats(&id, &path)).await
    }

    /// Grows a staged volume's device to what the ledger claims for it (the
    /// controller has grown the claims), then its filesystem, online. Returns the
    /// volume's size in bytes.
    pub async fn expand(&self, volume_id: &str, required_bytes: u64) -> Result<u64, NodeError> {
        let node = self.on_node();
        let id = volume_id.to_string();
        let record = blocking(move || node.records.load(&id))
            .await?
            .ok_or_else(|| NodeError::NotStaged {
                volume: volume_id.to_string(),
            })?;
        // The controller has just grown the claims: a cached copy may predate it.
        let min_gib = required_bytes.div_ceil(GIB);
        let (ledger, volume) = self
            .ledger_with_volume(volume_id, |v| v.capacity_gib >= min_gib)
            .await?;
        // Saturating: no byte count above u64 can be asked for anyway.
        let claimed = volume.capacity_gib.saturating_mul(GIB);
        if required_bytes > claimed {
            return Err(NodeError::NotClaimed {
                volume: volume_id.to_string(),
                claimed_gib: volume.capacity_gib,
                asked_bytes: required_bytes,
            });
        }
        let claims = ledger.claims_of(&volume.id);
        let node = self.on_node();
        blocking(move || node.expand(record, &claims, volume.extents)).await?;
        Ok(claimed)
    }
}

/// Zeroes the first MiB of a device whose mkfs was cut short (its staging
/// record says so), where every filesystem vdrive makes has its superblock:
/// the device was blank before that mkfs, so it reads blank again, and the
/// next stage formats it instead of mounting the half-made filesystem, which
/// already carries the volume's uuid.
fn wipe_half_made_filesystem(device: &Path) -> Result<(), NodeError> {
    const HEAD: u64 = 1 << 20;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(device)
        .map_err(NodeError::io("open", device))?;
    let len = blockdev::size_bytes(device)?.min(HEAD);
    blockdev::zero_out_by_kernel(&file, device, 0, len)?;
    file.sync_all().map_err(NodeError::io("flush", device))
}

/// A loop device over one of this node's drives that no staged volume accounts
/// for: its mapping was changed under it (whoever holds a loop device open
/// read-write can move it), or a crash left it behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrayDevice {
    pub device: PathBuf,
    pub drive: PathBuf,
    pub offset_bytes: u64,
    /// 0: to the end of the drive.
    pub sizelimit_bytes: u64,
    /// The staged volume whose device this most likely was (the one of that size
    /// whose own device is missing), if any.
    pub volume: Option<String>,
    /// Where it is mounted or bind-published, if anywhere: then it is left in
    /// place.
    pub in_use_at: Vec<PathBuf>,
    /// Whether the kernel was asked to detach it.
    pub detached: bool,
}

impl OnNode {
    /// Loop devices over this node's drives whose offset and size match no part
    /// of a staged volume, each asked to detach once free unless it is mounted or
    /// published. The devices are
    /// listed before the records are read: staging writes its record before it
    /// builds, and unstage takes the device down before the record, so a device
    /// in the middle of either is never taken for a stray.
    fn sweep_stray_loop_devices(&self) -> Result<Vec<StrayDevice>, NodeError> {
        let drives: Vec<PathBuf> = self
            .drives
            .all()
            .iter()
            .filter_map(|d| std::fs::canonicalize(&d.path).ok())
            .collect();
        let loops: Vec<loopdev::LoopInfo> = loopdev::list()?
            .into_iter()
            .filter(|l| drives.contains(&l.backing))
            .collect();
        if loops.is_empty() {
            return Ok(Vec::new());
        }
        // Each staged part with its drive's path as the kernel reports backing
        // files (resolved once here, not per device compared).
        let mut staged: Vec<(String, Segment)> = Vec::new();
        for record in self.records.all()? {
            for mut part in self.locate(&record.extents).unwrap_or_default() {
                if let Ok(resolved) = std::fs::canonicalize(&part.drive) {
                    part.drive = resolved;
                }
                staged.push((record.volume_id.clone(), part));
            }
        }
        let accounts = |l: &loopdev::LoopInfo, part: &Segment| {
            part.drive == l.backing
                && part.offset_bytes == l.offset_bytes
                && l.sizelimit_bytes != 0
                && l.sizelimit_bytes <= part.size_bytes
        };
        let mut strays = Vec::new();
        for l in &loops {
            if staged.iter().any(|(_, part)| accounts(l, part)) {
                continue;
            }
            // The staged parts on this drive left without a device: the one of
            // this size, or the only one.
            let orphaned: Vec<&(String, Segment)> = staged
                .iter()
                .filter(|(_, part)| {
                    part.drive == l.backing && !loops.iter().any(|other| accounts(other, part))
                })
                .collect();
            let volume = orphaned
                .iter()
                .find(|(_, part)| part.size_bytes == l.sizelimit_bytes)
                .or(match orphaned.as_slice() {
                    [only] => Some(only),
                    _ => None,
                })
                .map(|(id, _)| id.clone());
            // A device still mounted or bind-published (a pod's device node) is
            // left in place: once detached, its number could go to another
            // volume, which that pod's device node would then open.
            let in_use_at = mounts::mount_points_of(&l.device)?;
            let detached = in_use_at.is_empty() && loopdev::detach_when_free(&l.device).is_ok();
            strays.push(StrayDevice {
                device: l.device.clone(),
                drive: l.backing.clone(),
                offset_bytes: l.offset_bytes,
                sizelimit_bytes: l.sizelimit_bytes,
                volume,
                in_use_at,
                detached,
            });
        }
        Ok(strays)
    }

    /// Writes a volume's claims into its drives' headers before the volume is
    /// used (see [`ownership::record_claims`]).
    fn record_on_drives(
        &self,
        claims: &[Claim],
        extents: &[VolumeExtent],
        parts: &[Segment],
    ) -> Result<(), NodeError> {
        let mut records = self.drives.claim_records().blocking_lock();
        for (part, extent) in parts.iter().zip(extents) {
            let on_drive: Vec<&Claim> = claims
                .iter()
                .filter(|c| {
                    c.physical_uuid == extent.physical_uuid && c.offset_gib == extent.offset_gib
                })
                .collect();
            ownership::record_claims(&self.node_id, &part.drive, &on_drive)?;
        }
        for claim in claims {
            records.staged(&claim.volume_id);
        }
        Ok(())
    }

    fn locate(&self, extents: &[VolumeExtent]) -> Result<Vec<Segment>, NodeError> {
        self.drives.locate_all(&self.node_id, extents)
    }

    fn stage(&self, volume: Volume, claims: &[Claim], req: StageRequest) -> Result<(), NodeError> {
        let existing = self.records.load(&volume.id)?;
        if let Some(record) = &existing
            && (record.staging_path != req.staging_path || record.block != req.block)
        {
            return Err(NodeError::StagedElsewhere {
                volume: volume.id,
                mode: record.mode(),
                path: record.staging_path.clone(),
            });
        }
        let parts = self.locate(&volume.extents)?;
        self.record_on_drives(claims, &volume.extents, &parts)?;
        // Intent first: from here on, unstage finds whatever this call makes.
        let mut record = existing.clone().unwrap_or_else(|| {
            StagingRecord::new(&volume.id, Vec::new(), req.block, req.staging_path.clone())
        });
        record.extents = volume.extents.clone();
        self.records.save(&record)?;
        // A volume published to a workload (a VM on its disk) is never imported into.
        let in_use = existing.as_ref().is_some_and(|r| !r.published.is_empty());
        // mkfs runs between two record writes: a stage that finds the mark was
        // cut short mid-format (a crash, a kill), and formats again.
        let formatting = Cell::new(false);
        let mark = |on: bool| {
            let mut marked = record.clone();
            marked.formatting = on;
            self.records.save(&marked)?;
            formatting.set(on);
            Ok(())
        };
        let format = Formatting {
            interrupted: record.formatting,
            mark: &mark,
        };
        match self.build_and_mount(&volume.id, &parts, &req, in_use, &format) {
            Ok(fs) => {
                record.fs_type = fs.map(|f| f.as_str().to_string());
                record.formatting = false;
                self.records.save(&record)
            }
            // The record keeps the mark: the next stage formats again.
            Err(err) if formatting.get() => Err(err),
            Err(err) => {
                if existing.is_none() {
                    // Best effort: a stale intent record only makes unstage look.
                    let _ = self.records.remove(&volume.id);
                }
                Err(err)
            }
        }
    }

    /// The volume's device, and its filesystem mounted at the staging path
    /// (None for a block volume, which gets its image if it has one and is
    /// blank). A failure takes down a device built here.
    fn build_and_mount(
        &self,
        volume_id: &str,
        parts: &[Segment],
        req: &StageRequest,
        in_use: bool,
        format: &Formatting<'_>,
    ) -> Result<Option<fs::FsType>, NodeError> {
        let (device, built_here) = self.backend.ensure(volume_id, parts)?;
        let result = if req.block {
            match &req.image {
                Some(wanted) if !in_use => {
                    image::write_if_blank(&device, wanted, &self.scratch, volume_id).map(|_| None)
                }
                _ => Ok(None),
            }
        } else {
            let spec = MountSpec {
                wanted: req.fs_type,
                volume_uuid: Uuid::parse_str(volume_id).ok(),
                flags: &req.mount_flags,
                read_only: req.read_only,
                formatting: format,
            };
            publish::mount_staged(&device, &req.staging_path, &spec).map(Some)
        };
        if result.is_err() && built_here {
            // Nothing half-made: a device this call built goes again. (A partial
            // image is harmless: its first MiB is still zero, so the next stage
            // imports again.)
            if let Err(undo) = self.backend.remove(volume_id, &device) {
                warn!(%undo, device = %device.display(), "could not take down the device of a failed stage");
            }
        }
        result
    }

    /// Unmounts the volume's device from `staging` and takes the device down,
    /// whether or not a record remembers them; then drops the record. The
    /// device is found from the volume's `extents`, never trusted by name.
    fn unstage(
        &self,
        id: &str,
        staging: &Path,
        recorded: bool,
        formatting: bool,
        extents: &[VolumeExtent],
    ) -> Result<(), NodeError> {
        let parts = match self.locate(extents) {
            Ok(parts) => parts,
            // Nothing recorded, and the drive is not here to look at: nothing of
            // the volume can be found, unless something is mounted at the path.
            Err(err) if !recorded => {
                return if mounts::is_mount_point(staging)? {
                    Err(err)
                } else {
                    Ok(())
                };
            }
            Err(err) => return Err(err),
        };
        if let Some(device) = self.backend.find(id, &parts)? {
            // Check everything before taking anything down: any mount of the
            // device but the staging path is a pod's.
            let staged_at = mounts::resolve(staging);
            let still: Vec<String> = mounts::mount_points_of(&device)?
                .into_iter()
                .filter(|at| *at != staged_at)
                .map(|at| at.display().to_string())
                .collect();
            if !still.is_empty() {
                return Err(NodeError::StillPublished {
                    volume: id.to_string(),
                    at: still.join(", "),
                });
            }
            if publish::mounted_from(staging, &device)? {
                mounts::unmount(staging)?;
            }
            if formatting {
                wipe_half_made_filesystem(&device)?;
            }
            self.backend.remove(id, &device)?;
        } else if formatting {
            // The mark goes with the record: its half-made filesystem must go
            // first, or the next stage would take it for the volume's own.
            let (device, _) = self.backend.ensure(id, &parts)?;
            let wiped = wipe_half_made_filesystem(&device);
            self.backend.remove(id, &device)?;
            wiped?;
        }
        self.records.remove(id)
    }

    fn publish(&self, req: PublishRequest) -> Result<(), NodeError> {
        let mut record =
            self.records
                .load(&req.volume_id)?
                .ok_or_else(|| NodeError::StageFirst {
                    volume: req.volume_id.clone(),
                })?;
        if record.staging_path != req.staging_path {
            return Err(NodeError::StagingPathMismatch {
                volume: req.volume_id,
                staged_at: record.staging_path,
                given: req.staging_path,
            });
        }
        if req.block != record.block {
            return Err(NodeError::AccessTypeMismatch {
                volume: req.volume_id,
                staged: record.mode(),
                asked: mode(req.block),
            });
        }
        let elsewhere = record.published.iter().any(|p| *p != req.target_path);
        if elsewhere && (req.single_writer || record.single_writer) {
            return Err(NodeError::SingleWriter {
                volume: req.volume_id,
                at: record.published.first().cloned().unwrap_or_default(),
            });
        }
        let parts = self.locate(&record.extents)?;
        let id = &req.volume_id;
        let device = self
            .backend
            .find(id, &parts)?
            .ok_or_else(|| NodeError::DeviceGone { volume: id.clone() })?;
        if !req.block && !publish::mounted_from(&record.staging_path, &device)? {
            return Err(NodeError::NotMountedAtStaging {
                volume: id.clone(),
                path: record.staging_path,
            });
        }
        publish::bind_target(
            &device,
            &record.staging_path,
            &req.target_path,
            req.block,
            req.read_only,
        )?;
        if !record.published.contains(&req.target_path) {
            record.published.push(req.target_path);
        }
        record.single_writer |= req.single_writer;
        self.records.save(&record)
    }

    fn unpublish(&self, id: &str, at: &Path) -> Result<(), NodeError> {
        let record = self.records.load(id)?;
        // A target this volume was not published at must at least be mounted
        // from its device before it is taken away.
        let check = match &record {
            Some(r) if !r.published.iter().any(|p| p == at) => Some(self.locate(&r.extents)?),
            _ => None,
        };
        if mounts::is_mount_point(at)? {
            if let Some(parts) = check {
                let ours = self
                    .backend
                    .find(id, &parts)?
                    .is_some_and(|d| publish::mounted_from(at, &d).unwrap_or(false));
                if !ours {
                    return Err(NodeError::NotPublishedHere {
                        volume: id.to_string(),
                        target: at.to_path_buf(),
                    });
                }
            }
            mounts::unmount(at)?;
        }
        publish::remove_target(at)?;
        if let Some(mut record) = record {
            record.published.retain(|p| p != at);
            record.single_writer &= !record.published.is_empty();
            self.records.save(&record)?;
        }
        Ok(())
    }

    fn stats(&self, id: &str, path: &Path) -> Result<Usage, NodeError> {
        let record = self.records.load(id)?.ok_or_else(|| NodeError::NotStaged {
            volume: id.to_string(),
        })?;
        if record.staging_path != path && !record.published.iter().any(|p| p == path) {
            return Err(NodeError::UnknownPath {
                volume: id.to_string(),
                path: path.to_path_buf(),
            });
        }
        let parts = self.locate(&record.extents)?;
        if !path.exists() {
            return Err(NodeError::PathMissing {
                path: path.to_path_buf(),
            });
        }
        let device = self
            .backend
            .find(id, &parts)?
            .ok_or_else(|| NodeError::NotStaged {
                volume: id.to_string(),
            })?;
        if record.block {
            return Ok(Usage::Block {
                total_bytes: blockdev::size_bytes(&device)?,
            });
        }
        if !publish::mounted_from(path, &device)? {
            return Err(NodeError::UnknownPath {
                volume: id.to_string(),
                path: path.to_path_buf(),
            });
        }
        Ok(Usage::Filesystem(mounts::stats(path)?))
    }

    /// Grows the staged volume's device to `extents` (the ledger's, now), then
    /// its filesystem.
    fn expand(
        &self,
        mut record: StagingRecord,
        claims: &[Claim],
        extents: Vec<VolumeExtent>,
    ) -> Result<(), NodeError> {
        let parts = self.locate(&extents)?;
        // As for a stage: the grown claims are on their drives' headers before
        // the tenant can write there (the filesystem grows into them at once),
        // so a ledger lost before the next rescan still finds them.
        self.record_on_drives(claims, &extents, &parts)?;
        // Intent first: once the device has grown, unstage must know its new
        // extents even if growing the filesystem fails below.
        if record.extents != extents {
            record.extents = extents;
            self.records.save(&record)?;
        }
        let (device, _) = self.backend.ensure(&record.volume_id, &parts)?;
        if let Some(fs_type) = &record.fs_type {
            let fs: fs::FsType = fs_type.parse()?;
            fs::grow(&device, &record.staging_path, fs)?;
        }
        Ok(())
    }
}

impl<S: LedgerStore> ExtentEraser for NodeVolumes<S> {
    fn erase(&self, volume: &Volume) -> Erasure {
        if volume.node != self.node_id {
            return Erasure::NotOurs;
        }
        match self.erase_here(volume) {
            Ok(()) => Erasure::Erased,
            Err(err) => Erasure::NotYet(err),
        }
    }
}

impl<S: LedgerStore> NodeVolumes<S> {
    /// Erases a deleted volume of this node: refused while it is staged, while a
    /// device covers any of its extents, or while a drive's header disagrees that
    /// the extents are this volume's; then each extent is zeroed and flushed, and
    /// marked erased in its drive's claim record.
    fn erase_here(&self, volume: &Volume) -> Result<(), NodeError> {
        if let Some(record) = self.records.load(&volume.id)? {
            return Err(NodeError::StillStaged {
                volume: volume.id.clone(),
                path: record.staging_path,
            });
        }
        // Open until the end, so the reads below come from the page cache.
        let _open = self
            .drives
            .hold_open(volume.extents.iter().map(|e| &e.physical_uuid));
        // Every extent is located and checked before any is erased: a volume
        // whose drive is missing keeps all of its claims until the drive is back.
        let parts = self.locate(&volume.extents)?;
        for part in &parts {
            if let Some(device) = self.backend.holder(part)? {
                return Err(NodeError::StillHasDevice {
                    volume: volume.id.clone(),
                    device,
                });
            }
        }
        // The claim-record lock is held to check and to mark, not while zeroing
        // (which may take long): nothing can claim a releasing extent meanwhile,
        // and the mark is written before the caller releases the claims.
        {
            let _records = self.drives.claim_records().blocking_lock();
            for (part, extent) in parts.iter().zip(&volume.extents) {
                ownership::check_erasable(&self.node_id, &part.drive, &volume.id, extent)?;
            }
        }
        // No device covered any extent a moment ago (the checks above); what
        // could make one now is this volume's own stage, which its in-flight
        // key keeps out.
        for part in &parts {
            drives::erase_unheld(&part.drive, part.offset_bytes, part.size_bytes)?;
        }
        let mut records = self.drives.claim_records().blocking_lock();
        for (part, extent) in parts.iter().zip(&volume.extents) {
            ownership::mark_erased(&part.drive, &volume.id, extent)?;
        }
        records.erased(&volume.id);
        Ok(())
    }
}
