//! The node's volume lifecycle, without gRPC: stage (build the device, format,
//! mount), publish, unpublish, unstage, stats, expand and erase. The device comes
//! from the node's [`DeviceBackend`]; what was staged where is kept in
//! [`StagingRecords`]; the ledger says which extents a volume owns, and every
//! extent is checked against this node's own signed drives before it is used.
//!
//! Staging writes its record first (the intent), then acts: a call cancelled or
//! crashed half-way leaves a record, so unstage still finds and takes down
//! whatever was made.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;
use uuid::Uuid;

use super::backend::{DeviceBackend, Segment};
use super::publish::{self, MountSpec};
use super::registry::DriveRegistry;
use super::staging::{StagingRecord, StagingRecords};
use super::{GIB, NodeError, blockdev, drives, fs, mounts};
use crate::drive::Backend;
use crate::ledger::{Ledger, LedgerStore, Volume, VolumeExtent};

/// Wipes a volume's extents before their claims are released, so the next
/// tenant of that space never reads this one's data. All-in-one's controller
/// calls it before releasing; in a cluster the node's reclaimer does.
pub trait ExtentEraser: Send + Sync {
    /// Erases `volume`'s extents if they are on this eraser's node; returns
    /// whether it did (false: another node's volume). An error leaves the claims
    /// where they are: nothing is released unerased.
    fn erase(&self, volume: &Volume) -> Result<bool, NodeError>;
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
    /// Whether raw block volumes may be loop devices (test beds without dm).
    unsafe_loop_block: bool,
}

/// Runs blocking node work (commands, mounts, ioctls) off the async executor.
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

    /// The volume as the ledger records it on this node; the context must agree.
    async fn checked_volume(
        &self,
        volume_id: &str,
        context_node: &str,
        context_extents: &[VolumeExtent],
    ) -> Result<Volume, NodeError> {
        if context_node != self.node_id {
            return Err(NodeError::WrongNode {
                volume: volume_id.to_string(),
                on: context_node.to_string(),
                here: self.node_id.clone(),
            });
        }
        // A volume created a moment ago may not have reached a cached ledger yet.
        let volume = self.ledger_volume(volume_id, |_| true).await?;
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
        Ok(volume)
    }

    /// The volume as this node's ledger has it: from a cached ledger when that
    /// copy is `fresh_enough`, else read past the cache (a volume created or
    /// grown a moment ago may not have reached the cache yet).
    async fn ledger_volume(
        &self,
        volume_id: &str,
        fresh_enough: impl Fn(&Volume) -> bool,
    ) -> Result<Volume, NodeError> {
        let cached = self.ledger.node(&self.node_id).await?.volume(volume_id);
        match cached {
            Some(volume) if fresh_enough(&volume) => Some(volume),
            _ => self
                .ledger
                .node_latest(&self.node_id)
                .await?
                .volume(volume_id),
        }
        .ok_or_else(|| NodeError::NoClaims {
            volume: volume_id.to_string(),
            node: self.node_id.clone(),
        })
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
        let volume = self
            .checked_volume(&req.volume_id, &req.context_node, &req.context_extents)
            .await?;
        if volume.extents.len() > self.backend.kind().max_parts().unwrap_or(usize::MAX) {
            return Err(NodeError::TooManyParts {
                volume: volume.id,
                parts: volume.extents.len(),
                backend: self.backend.kind(),
            });
        }
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
        // Intent first: from here on, unstage finds whatever this call makes.
        let mut record = existing.clone().unwrap_or_else(|| {
            StagingRecord::new(&volume.id, Vec::new(), req.block, req.staging_path.clone())
        });
        record.extents = volume.extents.clone();
        self.records.save(&record)?;
        let backend = self.backend.clone();
        let volume_id = volume.id.clone();
        let staging = req.staging_path.clone();
        let made = blocking(move || {
            let (device, built_here) = backend.ensure(&volume_id, &parts)?;
            if req.block {
                return Ok(None);
            }
            let spec = MountSpec {
                wanted: req.fs_type,
                volume_uuid: Uuid::parse_str(&volume_id).ok(),
                flags: &req.mount_flags,
                read_only: req.read_only,
            };
            match publish::mount_staged(&device, &staging, &spec) {
                Ok(fs) => Ok(Some(fs)),
                Err(err) => {
                    // Nothing half-made: a device this call built goes again.
                    if built_here && let Err(undo) = backend.remove(&volume_id, &device) {
                        warn!(%undo, device = %device.display(), "could not take down the device of a failed stage");
                    }
                    Err(err)
                }
            }
        })
        .await;
        match made {
            Ok(fs) => {
                record.fs_type = fs.map(|f| f.as_str().to_string());
                self.records.save(&record)
            }
            Err(err) => {
                if existing.is_none() {
                    // Best effort: a stale intent record only makes unstage look.
                    let _ = self.records.remove(&volume.id);
                }
                Err(err)
            }
        }
    }

    pub async fn unstage(&self, volume_id: &str, staging: &Path) -> Result<(), NodeError> {
        let Some(record) = self.records.load(volume_id)? else {
            // Not staged here: nothing of this volume to take down, and another
            // volume's mount at that path is not ours to touch.
            return Ok(());
        };
        if record.staging_path != staging {
            return Err(NodeError::StagingPathMismatch {
                volume: volume_id.to_string(),
                staged_at: record.staging_path,
                given: staging.to_path_buf(),
            });
        }
        let parts = self.locate(&record.extents)?;
        let backend = self.backend.clone();
        let id = volume_id.to_string();
        blocking(move || {
            // Check everything before taking anything down.
            let device = backend.find(&id, &parts)?;
            let still: Vec<String> = record
                .published
                .iter()
                .filter(|t| {
                    device
                        .as_deref()
                        .is_some_and(|d| publish::mounted_from(t, d).unwrap_or(true))
                })
                .map(|t| t.display().to_string())
                .collect();
            if !still.is_empty() {
                return Err(NodeError::StillPublished {
                    volume: id,
                    at: still.join(", "),
                });
            }
            if let Some(device) = &device {
                if !record.block && publish::mounted_from(&record.staging_path, device)? {
                    mounts::unmount(&record.staging_path)?;
                }
                backend.remove(&id, device)?;
            }
            Ok(())
        })
        .await?;
        self.records.remove(volume_id)
    }

    pub async fn publish(&self, req: PublishRequest) -> Result<(), NodeError> {
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
        let backend = self.backend.clone();
        let staging = record.staging_path.clone();
        let target = req.target_path.clone();
        let (id, block, read_only) = (req.volume_id.clone(), req.block, req.read_only);
        blocking(move || {
            let device = backend
                .find(&id, &parts)?
                .ok_or_else(|| NodeError::DeviceGone { volume: id.clone() })?;
            if !block && !publish::mounted_from(&staging, &device)? {
                return Err(NodeError::NotMountedAtStaging {
                    volume: id,
                    path: staging,
                });
            }
            publish::bind_target(&device, &staging, &target, block, read_only)
        })
        .await?;
        if !record.published.contains(&req.target_path) {
            record.published.push(req.target_path);
        }
        record.single_writer |= req.single_writer;
        self.records.save(&record)
    }

    pub async fn unpublish(&self, volume_id: &str, target: &Path) -> Result<(), NodeError> {
        let record = self.records.load(volume_id)?;
        // A target this volume was not published at must at least be mounted
        // from its device before it is taken away.
        let check = match &record {
            Some(r) if !r.published.iter().any(|p| p == target) => Some(self.locate(&r.extents)?),
            _ => None,
        };
        let backend = self.backend.clone();
        let (id, at) = (volume_id.to_string(), target.to_path_buf());
        blocking(move || {
            if mounts::is_mount_point(&at)? {
                if let Some(parts) = check {
                    let ours = backend
                        .find(&id, &parts)?
                        .is_some_and(|d| publish::mounted_from(&at, &d).unwrap_or(false));
                    if !ours {
                        return Err(NodeError::NotPublishedHere {
                            volume: id,
                            target: at,
                        });
                    }
                }
                mounts::unmount(&at)?;
            }
            publish::remove_target(&at)
        })
        .await?;
        if let Some(mut record) = record {
            record.published.retain(|p| p != target);
            record.single_writer &= !record.published.is_empty();
            self.records.save(&record)?;
        }
        Ok(())
    }

    pub async fn stats(&self, volume_id: &str, path: &Path) -> Result<Usage, NodeError> {
        let record = self
            .records
            .load(volume_id)?
            .ok_or_else(|| NodeError::NotStaged {
                volume: volume_id.to_string(),
            })?;
        if record.staging_path != path && !record.published.iter().any(|p| p == path) {
            return Err(NodeError::UnknownPath {
                volume: volume_id.to_string(),
                path: path.to_path_buf(),
            });
        }
        let parts = self.locate(&record.extents)?;
        let backend = self.backend.clone();
        let path = path.to_path_buf();
        blocking(move || {
            if !path.exists() {
                return Err(NodeError::PathMissing { path });
            }
            let device =
                backend
                    .find(&record.volume_id, &parts)?
                    .ok_or_else(|| NodeError::NotStaged {
                        volume: record.volume_id.clone(),
                    })?;
            if record.block {
                return Ok(Usage::Block {
                    total_bytes: blockdev::size_bytes(&device)?,
                });
            }
            if !publish::mounted_from(&path, &device)? {
                return Err(NodeError::UnknownPath {
                    volume: record.volume_id,
                    path,
                });
            }
            Ok(Usage::Filesystem(mounts::stats(&path)?))
        })
        .await
    }

    /// Grows a staged volume's device to what the ledger claims for it (the
    /// controller has grown the claims), then its filesystem, online. Returns the
    /// volume's size in bytes.
    pub async fn expand(&self, volume_id: &str, required_bytes: u64) -> Result<u64, NodeError> {
        let mut record = self
            .records
            .load(volume_id)?
            .ok_or_else(|| NodeError::NotStaged {
                volume: volume_id.to_string(),
            })?;
        // The controller has just grown the claims: a cached copy may predate it.
        let min_gib = required_bytes.div_ceil(GIB);
        let volume = self
            .ledger_volume(volume_id, |v| v.capacity_gib >= min_gib)
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
        let parts = self.locate(&volume.extents)?;
        // Intent first: once the device has grown, unstage must know its new
        // extents even if growing the filesystem fails below.
        if record.extents != volume.extents {
            record.extents = volume.extents;
            self.records.save(&record)?;
        }
        let backend = self.backend.clone();
        let staged = record;
        blocking(move || {
            let (device, _) = backend.ensure(&staged.volume_id, &parts)?;
            if let Some(fs_type) = &staged.fs_type {
                let fs: fs::FsType = fs_type.parse()?;
                fs::grow(&device, &staged.staging_path, fs)?;
            }
            Ok(())
        })
        .await?;
        Ok(claimed)
    }
}

impl<S: LedgerStore> ExtentEraser for NodeVolumes<S> {
    fn erase(&self, volume: &Volume) -> Result<bool, NodeError> {
        if volume.node != self.node_id {
            return Ok(false);
        }
        if let Some(record) = self.records.load(&volume.id)? {
            return Err(NodeError::StillStaged {
                volume: volume.id.clone(),
                path: record.staging_path,
            });
        }
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
        for part in &parts {
            drives::erase(&part.drive, part.offset_bytes, part.size_bytes)?;
        }
        Ok(true)
    }
}
