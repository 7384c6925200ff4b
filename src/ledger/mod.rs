//! The capacity ledger: per node, the signed physical drives and the claims
//! (virtual drives) carved from them.
//!
//! Every change to a node's ledger is computed from a fresh snapshot and committed
//! with one compare-and-swap on that node's revision; the swap is the commit point.
//! Within one process concurrent changes to a node are combined by
//! `group_commit` into one swap, planned one after another against the
//! batch's running state, so many requests cost one write instead of queueing
//! for one each; across processes (several controllers, one Kubernetes API) the
//! revision check keeps extents from being double-booked and a conflict plans
//! the batch again, after jittered backoff.
//!
//! Around the record: `pool_share` holds the pools and each node's share of
//! one, `placement` where a new volume may go and what a node can still take,
//! `growth` how a volume grows. How many virtual drives one volume may have is
//! each node's own answer ([`NodeLedger::max_parts`]), from the backend its
//! drives report.

mod embedded;
mod error;
mod group_commit;
mod growth;
mod locks;
mod model;
mod placement;
mod pool_share;
mod room_cache;
mod store;

use std::sync::Arc;

use uuid::Uuid;

pub use embedded::EmbeddedStore;
pub use error::{LargestExtent, LedgerError, PoolLabel};
pub use model::{
    Claim, DriveHeader, NodeLedger, PhysicalDrive, ReportedDrive, SizeRange, Volume, VolumeExtent,
    VolumeSpec,
};
pub use placement::{
    Capacity, Unfit, VolumeClass, Wanted, candidate_nodes, capacity, largest_volume_gib, room_gib,
};
pub use pool_share::{Pool, PoolSettings, node_allowance_gib};
pub use store::{LedgerStore, Revision, Snapshot, StoreError};

use group_commit::{Change, GroupCommit};
use locks::KeyedLocks;
use placement::capacity_with;
use room_cache::RoomCache;

use crate::allocator::{self, AllocError, MAX_CAPACITY_GIB, Plan, Request};
use crate::drive::Extent;

/// A request to claim capacity for one volume on one node.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// The volume's name; claiming the same name again returns the same volume.
    pub volume_name: String,
    /// Who the volume is for (`namespace:pvc`); the volume name when empty.
    pub owner: String,
    /// The pool whose share the volume counts against, if any.
    pub pool: Option<Pool>,
    /// The layout of a new volume; its capacity is the size it gets.
    pub layout: Request,
    /// The sizes an existing volume of the same name may have to be this one
    /// (see [`Volume::satisfies`]).
    pub accepts: SizeRange,
    /// How the volume is used: `block`, or the filesystem of a mount volume
    /// (None: not known). Kept with the volume in its [`VolumeSpec`].
    pub access: Option<String>,
    /// The disk image written into the volume at its first staging, and its
    /// format when named (StorageClass `image`, `imageFormat`). Kept in its
    /// [`VolumeSpec`] too.
    pub image: Option<String>,
    pub image_format: Option<String>,
}

impl ClaimRequest {
    /// What placement needs to know about the request, whatever its size.
    pub fn class(&self) -> VolumeClass {
        VolumeClass {
            pool: self.pool,
            layout: self.layout,
        }
    }

    /// What a volume made for this request records it was asked for.
    pub fn spec(&self) -> VolumeSpec {
        VolumeSpec::new(&self.layout, self.access.clone())
            .with_image(self.image.clone(), self.image_format.clone())
    }
}

/// A node whose ledger cannot be read, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub node: String,
    pub reason: String,
}

impl std::fmt::Display for Quarantined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {} ({})", self.node, self.reason)
    }
}

/// The nodes' ledgers at one moment: those that can be read, and the others.
#[derive(Debug, Clone, Default)]
pub struct Survey {
    pub nodes: Vec<Arc<NodeLedger>>,
    pub quarantined: Vec<Quarantined>,
}

/// The outcome of registering a node's drives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveSync {
    pub ledger: NodeLedger,
    /// Drives the node no longer reports but that still hold claims.
    pub missing_with_claims: Vec<Uuid>,
    /// Drives whose header disagrees with the ledger, each with why: they take no
    /// new claims until reconciled.
    pub quarantined: Vec<(Uuid, String)>,
}

/// An allocation refusal, with the node's quarantined drives named when it has
/// any: otherwise "no capacity" on a node full of drives would be a riddle.
fn explain_quarantine(ledger: &NodeLedger, err: AllocError) -> LedgerError {
    let quarantined: Vec<String> = ledger
        .drives
        .iter()
        .filter(|d| !d.missing)
        .filter_map(|d| {
            let reason = d.quarantined.as_ref()?;
            Some(format!(
                "drive {} ({} GiB) is quarantined: {reason}",
                d.uuid, d.capacity_gib
            ))
        })
        .collect();
    if quarantined.is_empty() {
        return err.into();
    }
    LedgerError::Quarantined {
        node: ledger.node.clone(),
        source: err,
        quarantined: quarantined.join("; "),
    }
}

/// The capacity ledger over a store.
pub struct Ledger<S> {
    store: Arc<S>,
    pools: PoolSettings,
    commits: Arc<GroupCommit<S>>,
    name_locks: Arc<KeyedLocks>,
    rooms: RoomCache,
}

impl<S: LedgerStore> Ledger<S> {
    pub fn new(store: S, pools: PoolSettings) -> Self {
        let store = Arc::new(store);
        Ledger {
            commits: GroupCommit::new(store.clone()),
            store,
            pools,
            name_locks: Arc::default(),
            rooms: RoomCache::default(),
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn pool_settings(&self) -> &PoolSettings {
        &self.pools
    }

    pub async fn node(&self, node: &str) -> Result<Arc<NodeLedger>, LedgerError> {
        Ok(self.store.load(node).await?.ledger)
    }

    /// The node's ledger read from the store's source, past any cache.
    pub async fn node_latest(&self, node: &str) -> Result<Arc<NodeLedger>, LedgerError> {
        Ok(self.store.load_latest(node).await?.ledger)
    }

    /// Every node's ledger that can be read. A node whose ledger cannot be read
    /// is left out (see [`Ledger::survey`]): it takes no volumes and counts in
    /// no capacity, and the rest of the cluster keeps working.
    pub async fn nodes(&self) -> Result<Vec<Arc<NodeLedger>>, LedgerError> {
        Ok(self.survey().await?.nodes)
    }

    /// Every node's ledger that can be read, and the nodes kept aside because
    /// theirs cannot be (a malformed annotation): one bad node hurts only itself.
    pub async fn survey(&self) -> Result<Survey, LedgerError> {
        let mut survey = Survey::default();
        for name in self.store.node_names().await? {
            match self.store.load(&name).await {
                Ok(snapshot) => survey.nodes.push(snapshot.ledger),
                Err(StoreError::Corrupt { node, reason }) => {
                    survey.quarantined.push(Quarantined { node, reason })
                }
                Err(err) => return Err(err.into()),
            }
        }
        Ok(survey)
    }

    /// Records the drives a node reports now. New drives are added, known ones
    /// updated; a drive no longer reported is dropped if it holds no claims and kept,
    /// marked missing, if it does. A drive may not shrink below its claims. A drive
    /// whose header disagrees with the ledger (decided here, against the ledger
    /// this write is based on) is recorded quarantined: it takes no new claims.
    pub async fn sync_drives(
        &self,
        node: &str,
        reported: Vec<ReportedDrive>,
    ) -> Result<DriveSync, LedgerError> {
        for (i, ReportedDrive { drive, .. }) in reported.iter().enumerate() {
            if reported[..i].iter().any(|d| d.drive.uuid == drive.uuid) {
                return Err(invalid_drive(node, drive.uuid, "reported twice"));
            }
            if drive.capacity_gib == 0 || drive.capacity_gib > MAX_CAPACITY_GIB {
                return Err(invalid_drive(
                    node,
                    drive.uuid,
                    &format!(
                        "reports {} GiB; a drive has 1 to {MAX_CAPACITY_GIB} GiB after the signature header",
                        drive.capacity_gib
                    ),
                ));
            }
        }
        let node_name = node.to_string();
        self.update(node, move |ledger| {
            let node = node_name.as_str();
            let mut drives = Vec::with_capacity(reported.len());
            let mut missing = Vec::new();
            let mut quarantined = Vec::new();
            let mut judged = |reported: &ReportedDrive| {
                let reason = reported.header.disagreement(node, reported.drive.uuid, &ledger.claims);
                if let Some(reason) = &reason {
                    quarantined.push((reported.drive.uuid, reason.clone()));
                }
                PhysicalDrive {
                    missing: false,
                    quarantined: reason,
                    ..reported.drive.clone()
                }
            };
            for known in &ledger.drives {
                let holds_claims = ledger.claims.iter().any(|c| c.physical_uuid == known.uuid);
                if let Some(now) = reported.iter().find(|d| d.drive.uuid == known.uuid) {
                    let claimed_end = ledger
                        .claims
                        .iter()
                        .filter(|c| c.physical_uuid == known.uuid)
                        .map(|c| c.extent().end_gib())
                        .max()
                        .unwrap_or(0);
                    if now.drive.capacity_gib < claimed_end {
                        return Err(invalid_drive(
                            node,
                            known.uuid,
                            &format!(
                                "now reports {} GiB but claims reach {claimed_end} GiB; release those volumes before replacing the drive",
                                now.drive.capacity_gib
                            ),
                        ));
                    }
                    drives.push(judged(now));
                } else if holds_claims {
                    missing.push(known.uuid);
                    drives.push(PhysicalDrive { missing: true, ..known.clone() });
                }
            }
            for new in &reported {
                if !ledger.drives.iter().any(|d| d.uuid == new.drive.uuid) {
                    drives.push(judged(new));
                }
            }
            let changed = drives != ledger.drives;
            ledger.drives = drives;
            let result = DriveSync {
                ledger: ledger.clone(),
                missing_with_claims: missing,
                quarantined,
            };
            Ok(if changed { Change::Write(result) } else { Change::Unchanged(result) })
        })
        .await
    }

    /// Puts back into `node`'s ledger the claims a drive's own header lists
    /// (`vdrive drives adopt`): after a lost ledger, a renamed node or a moved
    /// drive. The drive is added if the ledger lacks it. A claim the ledger
    /// already has is kept as it is; one that overlaps a different claim of the
    /// ledger is refused, and then nothing is written: the two disagree about
    /// who owns those bytes, which only a person can settle.
    pub async fn adopt(
        &self,
        node: &str,
        drive: PhysicalDrive,
        claims: Vec<Claim>,
    ) -> Result<Vec<Claim>, LedgerError> {
        // A header may list a claim beside its grown self until the node next
        // rewrites it: only the largest of a volume's nested claims counts.
        let claims: Vec<Claim> = claims
            .iter()
            .enumerate()
            .filter(|(i, c)| {
                !claims.iter().enumerate().any(|(j, other)| {
                    j != *i
                        && other.volume_id == c.volume_id
                        && other.extent().contains(&c.extent())
                        && (other.extent() != c.extent() || j < *i)
                })
            })
            .map(|(_, c)| c.clone())
            .collect();
        let node_name = node.to_string();
        self.update(node, move |ledger| {
            let node = node_name.as_str();
            let mut added = Vec::new();
            if ledger.drive(&drive.uuid).is_none() {
                ledger.drives.push(PhysicalDrive {
                    missing: false,
                    quarantined: None,
                    ..drive.clone()
                });
            }
            for claim in &claims {
                let claim = Claim {
                    physical_uuid: drive.uuid,
                    ..claim.clone()
                };
                let same = |c: &Claim| {
                    c.physical_uuid == claim.physical_uuid
                        && c.volume_id == claim.volume_id
                        && c.extent() == claim.extent()
                };
                if ledger.claims.iter().any(same) {
                    continue;
                }
                if let Some(other) = ledger.claims.iter().find(|c| {
                    c.physical_uuid == drive.uuid && c.extent().overlaps(&claim.extent())
                }) {
                    return Err(invalid_drive(
                        node,
                        drive.uuid,
                        &format!(
                            "its header has volume {} at {} GiB ({} GiB) where the ledger has volume {} at {} GiB ({} GiB); nothing was adopted: find which volume really owns those bytes before changing either",
                            claim.volume_id, claim.offset_gib, claim.size_gib, other.volume_id, other.offset_gib, other.size_gib
                        ),
                    ));
                }
                if let Some(other) = ledger
                    .claims
                    .iter()
                    .find(|c| c.volume_name == claim.volume_name && c.volume_id != claim.volume_id)
                {
                    return Err(invalid_drive(
                        node,
                        drive.uuid,
                        &format!(
                            "its header has a volume named {:?} (id {}) but the ledger's volume of that name is {}; nothing was adopted",
                            claim.volume_name, claim.volume_id, other.volume_id
                        ),
                    ));
                }
                ledger.claims.push(claim.clone());
                added.push(claim);
            }
            Ok(Change::Write(added))
        })
        .await
    }

    /// Removes a missing drive and its claims from `node`'s ledger, unerased
    /// (`vdrive drives forget`): for a drive that is never coming back. Other
    /// claims of the volumes it held are marked releasing, so those extents are
    /// erased before reuse. A drive the node still reports is refused.
    pub async fn forget_drive(&self, node: &str, uuid: Uuid) -> Result<Vec<Claim>, LedgerError> {
        let node_name = node.to_string();
        self.update(node, move |ledger| {
            let node = node_name.as_str();
            let Some(drive) = ledger.drive(&uuid) else {
                return Ok(Change::Unchanged(Vec::new()));
            };
            if !drive.missing {
                return Err(invalid_drive(
                    node,
                    uuid,
                    "is present on its node, so it can be erased the normal way: delete its volumes instead of forgetting the drive",
                ));
            }
            let (gone, kept): (Vec<Claim>, Vec<Claim>) = std::mem::take(&mut ledger.claims)
                .into_iter()
                .partition(|c| c.physical_uuid == uuid);
            ledger.claims = kept;
            for claim in ledger.claims.iter_mut() {
                if gone.iter().any(|g| g.volume_id == claim.volume_id) {
                    claim.releasing = true;
                }
            }
            ledger.drives.retain(|d| d.uuid != uuid);
            Ok(Change::Write(gone))
        })
        .await
    }

    /// Sets the node's pool label (in Kubernetes the label is the Node's own).
    pub async fn set_pool(&self, node: &str, pool: Option<Pool>) -> Result<(), LedgerError> {
        self.update(node, move |ledger| {
            if ledger.pool == pool {
                return Ok(Change::Unchanged(()));
            }
            ledger.pool = pool;
            Ok(Change::Write(()))
        })
        .await
    }

    /// What a claim would get on `node` now, without claiming anything.
    pub async fn plan(&self, node: &str, layout: &Request) -> Result<Plan, LedgerError> {
        let ledger = self.node(node).await?;
        Ok(allocator::plan(layout, Some(&ledger.free_drives()))?)
    }

    /// Creates the volume `request` asks for on the first of the [`Wanted`] nodes
    /// that can take it ([`candidate_nodes`] decides the order), or returns the
    /// existing volume of that name if it satisfies the request. A node that
    /// refuses for reasons of its own (too full, too few parts, outside the pool)
    /// passes the request on; any other refusal ends it.
    pub async fn create(
        &self,
        request: &ClaimRequest,
        wanted: &Wanted,
    ) -> Result<Volume, LedgerError> {
        request.layout.validate()?;
        if let Some(existing) = self.volume_by_name(&request.volume_name).await? {
            return same_volume(existing, request).and_then(|v| on_wanted_node(v, wanted));
        }
        let nodes = self.nodes().await?;
        let mut failures = Vec::new();
        for node in candidate_nodes(&nodes, &request.class(), wanted, &self.pools)? {
            match self.claim(&node.node, request).await {
                // A volume of that name made meanwhile by another request may be
                // on any node.
                Ok(volume) => return on_wanted_node(volume, wanted),
                Err(err) if err.another_node_may_fit() => failures.push(err),
                Err(err) => return Err(err),
            }
        }
        Err(LedgerError::NoNodeFits { failures })
    }

    /// Room for `class` on every node of its pool (only on `only`, if given),
    /// and the largest volume of it one node could take now.
    pub async fn capacity(
        &self,
        class: &VolumeClass,
        only: Option<&str>,
    ) -> Result<Capacity, LedgerError> {
        let nodes = match only {
            // What csi-provisioner asks, once per node and class: only that
            // node's ledger is needed, not a survey of every node.
            Some(name) => self.readable_node(name).await?.into_iter().collect(),
            None => {
                let nodes = self.nodes().await?;
                self.rooms.keep_only(&nodes);
                nodes
            }
        };
        Ok(capacity_with(&nodes, class, only, |node| {
            self.rooms.room(node, class, &self.pools)
        }))
    }

    /// The node's ledger, or None when the store has no such node or cannot
    /// read its ledger (as [`Ledger::survey`] leaves such a node out).
    async fn readable_node(&self, node: &str) -> Result<Option<Arc<NodeLedger>>, LedgerError> {
        match self.store.load(node).await {
            Ok(snapshot) => Ok(Some(snapshot.ledger)),
            Err(StoreError::NodeNotFound(_) | StoreError::Corrupt { .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Claims a volume's virtual drives on `node`: all of them in one atomic step,
    /// or none. Claiming a name that exists returns the existing volume if it
    /// satisfies the request, and a [`LedgerError::NameConflict`] otherwise.
    pub async fn claim(&self, node: &str, request: &ClaimRequest) -> Result<Volume, LedgerError> {
        request.layout.validate()?;
        // Names are unique across nodes, but each node's swap only sees its own
        // node: hold the name from the cluster-wide check until the claim is
        // written or refused. The change holds it, not this call: a caller that
        // gives up must not let the same name be claimed on another node while
        // its change still waits to be written.
        let name = self.name_locks.lock(&request.volume_name).await;
        if let Some(existing) = self.volume_by_name(&request.volume_name).await? {
            return same_volume(existing, request);
        }
        let request = request.clone();
        let owner = if request.owner.is_empty() {
            request.volume_name.clone()
        } else {
            request.owner.clone()
        };
        let pools = self.pools;
        let node_name = node.to_string();
        self.update(node, move |ledger| {
            let _name = &name;
            let node = node_name.as_str();
            if let Some(existing) = ledger.volume_by_name(&request.volume_name) {
                return same_volume(existing, &request).map(Change::Unchanged);
            }
            if let Some(pool) = request.pool {
                check_pool_share(&pools, ledger, pool, request.layout.capacity_gib())?;
            }
            let plan = allocator::plan(&request.layout, Some(&ledger.free_drives()))
                .map_err(|e| explain_quarantine(ledger, e))?;
            // The node's own backend decides how many virtual drives a volume may have.
            if let Some(max) = ledger.max_parts()
                && plan.placements.len() > max as usize
            {
                let sizes: Vec<String> = plan
                    .placements
                    .iter()
                    .map(|p| format!("{} {} GiB", p.drive_type.label(), p.size_gib))
                    .collect();
                return Err(LedgerError::TooManyParts {
                    name: request.volume_name.clone(),
                    node: node.to_string(),
                    backend: ledger.backend(),
                    needed: plan.placements.len(),
                    max,
                    sizes: sizes.join(", "),
                    largest: LargestExtent(ledger.largest_free_extent(|t| request.layout.uses(t))),
                });
            }
            let volume_id = Uuid::new_v4().to_string();
            for (part, placement) in plan.placements.iter().enumerate() {
                let drive = &ledger.drives[placement.physical_index];
                let claim = Claim {
                    virtual_uuid: Uuid::new_v4(),
                    volume_id: volume_id.clone(),
                    volume_name: request.volume_name.clone(),
                    owner: owner.clone(),
                    pool: request.pool,
                    physical_uuid: drive.uuid,
                    offset_gib: placement.offset_gib,
                    size_gib: placement.size_gib,
                    part: part as u32,
                    fixed: request.layout.fixed_gib().is_some(),
                    releasing: false,
                    spec: (part == 0).then(|| request.spec()),
                };
                ledger.claims.push(claim);
            }
            let volume = ledger
                .volume(&volume_id)
                .ok_or_else(|| LedgerError::Invariant {
                    node: node.to_string(),
                    reason: "a plan without placements".into(),
                })?;
            Ok(Change::Write(volume))
        })
        .await
    }

    /// Grows a volume to `new_gib` by the rules of the `growth` module: its last virtual
    /// drive in place, else new virtual drives of the same type as far as the
    /// node's backend joins them; within the pool share; all in one atomic step or
    /// nothing. A fixed-size volume never grows. Growing to its current size or
    /// less changes nothing and returns the volume as it is.
    pub async fn grow(&self, volume_id: &str, new_gib: u64) -> Result<Volume, LedgerError> {
        let volume = self
            .volume(volume_id)
            .await?
            .ok_or_else(|| LedgerError::VolumeNotFound(volume_id.to_string()))?;
        let node = volume.node.clone();
        let pools = self.pools;
        let volume_id = volume_id.to_string();
        self.update(&volume.node, move |ledger| {
            grow_in(&pools, ledger, &node, &volume_id, new_gib)
        })
        .await
    }

    /// Whether [`Ledger::grow`] would grow `volume_id` to `new_gib` now, without
    /// growing it: the same checks and plan on a copy of the node's ledger. For
    /// a caller that asks someone else to grow the volume (a PVC's resize) and
    /// wants to say "no room" first.
    pub async fn check_growth(&self, volume_id: &str, new_gib: u64) -> Result<(), LedgerError> {
        let volume = self
            .volume(volume_id)
            .await?
            .ok_or_else(|| LedgerError::VolumeNotFound(volume_id.to_string()))?;
        let snapshot = self.store.load(&volume.node).await?;
        let mut ledger = Arc::unwrap_or_clone(snapshot.ledger);
        grow_in(&self.pools, &mut ledger, &volume.node, volume_id, new_gib).map(drop)
    }
    /// Releases every claim of `volume_id`. Releasing an unknown volume is not an
    /// error (it may have been released already): it returns None.
    pub async fn release(&self, volume_id: &str) -> Result<Option<Volume>, LedgerError> {
        for name in self.store.node_names().await? {
            let Some(volume) = self.node(&name).await?.volume(volume_id) else {
                continue;
            };
            return self.release_on(&name, &volume).await;
        }
        Ok(None)
    }

    /// Marks `volume_id`'s claims on `node` as releasing: the volume is gone, but
    /// its extents stay claimed until the node has erased them and calls
    /// [`Ledger::release_on`]. For a controller that cannot reach the drives.
    /// Retiring an unknown or already retired volume changes nothing.
    pub async fn retire_on(
        &self,
        node: &str,
        volume_id: &str,
    ) -> Result<Option<Volume>, LedgerError> {
        Ok(self
            .retire(node, volume_id)
            .await?
            .map(|(volume, _)| volume))
    }

    /// [`Ledger::retire_on`], also saying whether this call marked the volume
    /// (false: it was releasing already, someone else retired it).
    pub async fn retire(
        &self,
        node: &str,
        volume_id: &str,
    ) -> Result<Option<(Volume, bool)>, LedgerError> {
        let volume_id = volume_id.to_string();
        self.update(node, move |ledger| {
            let volume_id = volume_id.as_str();
            let Some(volume) = ledger.volume(volume_id) else {
                return Ok(Change::Unchanged(None));
            };
            if volume.releasing {
                return Ok(Change::Unchanged(Some((volume, false))));
            }
            for claim in ledger
                .claims
                .iter_mut()
                .filter(|c| c.volume_id == volume_id)
            {
                claim.releasing = true;
            }
            Ok(Change::Write(ledger.volume(volume_id).map(|v| (v, true))))
        })
        .await
    }

    /// Releases on a known node the claims of volume `erased` as it was erased:
    /// those within its extents. A claim the volume gained after that (adopted
    /// back from a drive's header, or grown) was not erased and stays until it
    /// is. Returns the volume as the ledger had it, None when it had none of it.
    pub async fn release_on(
        &self,
        node: &str,
        erased: &Volume,
    ) -> Result<Option<Volume>, LedgerError> {
        let erased = erased.clone();
        self.update(node, move |ledger| {
            let Some(volume) = ledger.volume(&erased.id) else {
                return Ok(Change::Unchanged(None));
            };
            let was_erased = |c: &Claim| {
                erased.extents.iter().any(|e| {
                    e.virtual_uuid == c.virtual_uuid
                        && e.physical_uuid == c.physical_uuid
                        && Extent::new(e.offset_gib, e.size_gib).contains(&c.extent())
                })
            };
            ledger
                .claims
                .retain(|c| c.volume_id != erased.id || !was_erased(c));
            if ledger.has_volume(&erased.id) {
                tracing::warn!(volume = %erased.id, "claims the volume gained after its erase stay until they are erased");
            }
            // A missing drive stays in the ledger only while claims point at it.
            let claims = &ledger.claims;
            ledger
                .drives
                .retain(|d| !d.missing || claims.iter().any(|c| c.physical_uuid == d.uuid));
            Ok(Change::Write(Some(volume)))
        })
        .await
    }

    pub async fn volume(&self, volume_id: &str) -> Result<Option<Volume>, LedgerError> {
        Ok(self.nodes().await?.iter().find_map(|n| n.volume(volume_id)))
    }

    /// Like [`Ledger::volume`], but None only when every node could be read: a
    /// volume found nowhere while a node is quarantined may be on that node, and
    /// the answer is [`LedgerError::Unreadable`] (a delete must not claim success).
    pub async fn volume_everywhere(&self, volume_id: &str) -> Result<Option<Volume>, LedgerError> {
        let survey = self.survey().await?;
        if let Some(volume) = survey.nodes.iter().find_map(|n| n.volume(volume_id)) {
            return Ok(Some(volume));
        }
        if survey.quarantined.is_empty() {
            return Ok(None);
        }
        Err(LedgerError::Unreadable {
            volume: volume_id.to_string(),
            nodes: survey.quarantined,
        })
    }

    pub async fn volume_by_name(&self, name: &str) -> Result<Option<Volume>, LedgerError> {
        Ok(self
            .nodes()
            .await?
            .iter()
            .find_map(|n| n.volume_by_name(name)))
    }

    /// Every node's live volumes, in volume id order.
    pub async fn volumes(&self) -> Result<Vec<Volume>, LedgerError> {
        Ok(self.volumes_page(0, usize::MAX, |v| v).await?.0)
    }

    /// One page of every node's live volumes in volume id order: from the
    /// `start`th on, at most `take` of them, each turned into what `each`
    /// makes of it; and how many live volumes there are in all. Only the
    /// page's volumes are assembled, one at a time: a page of a long list costs
    /// a sort of its ids, not a copy of every volume, and a whole list never
    /// holds each volume twice.
    pub async fn volumes_page<T>(
        &self,
        start: usize,
        take: usize,
        each: impl FnMut(Volume) -> T,
    ) -> Result<(Vec<T>, usize), LedgerError> {
        let nodes = self.nodes().await?;
        let mut ids: Vec<(&str, &NodeLedger)> = nodes
            .iter()
            .flat_map(|node| {
                node.live_volume_ids()
                    .into_iter()
                    .map(move |id| (id, node.as_ref()))
            })
            .collect();
        ids.sort_unstable_by(|a, b| a.0.cmp(b.0).then_with(|| a.1.node.cmp(&b.1.node)));
        let total = ids.len();
        let page = ids
            .iter()
            .skip(start)
            .take(take)
            .filter_map(|(id, node)| node.volume(id))
            .map(each)
            .collect();
        Ok((page, total))
    }

    /// Lets `change` decide on the node's ledger and writes the result, with
    /// whatever other changes to the node are waiting (see `group_commit`).
    async fn update<T, F>(&self, node: &str, change: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: FnMut(&mut NodeLedger) -> Result<Change<T>, LedgerError> + Send + 'static,
    {
        self.commits.update(node, change).await
    }
}

/// Whether `ledger`'s node may take `need_gib` more of `pool`'s capacity.
fn check_pool_share(
    pools: &PoolSettings,
    ledger: &NodeLedger,
    pool: Pool,
    need_gib: u64,
) -> Result<(), LedgerError> {
    if ledger.pool != Some(pool) {
        return Err(LedgerError::NotInPool {
            node: ledger.node.clone(),
            pool,
            label: PoolLabel(ledger.pool),
        });
    }
    let left = node_allowance_gib(ledger, pool, pools);
    if need_gib > left {
        return Err(LedgerError::PoolShareExhausted {
            node: ledger.node.clone(),
            pool,
            need_gib,
            left_gib: left,
            share_gib: pools.capacity_per_server_gib,
        });
    }
    Ok(())
}

/// Grows `volume_id` in `ledger` (see [`Ledger::grow`]).
fn grow_in(
    pools: &PoolSettings,
    ledger: &mut NodeLedger,
    node: &str,
    volume_id: &str,
    new_gib: u64,
) -> Result<Change<Volume>, LedgerError> {
    let volume = ledger
        .volume(volume_id)
        .filter(|v| !v.releasing)
        .ok_or_else(|| LedgerError::VolumeNotFound(volume_id.to_string()))?;
    if new_gib <= volume.capacity_gib {
        return Ok(Change::Unchanged(volume));
    }
    if volume.fixed {
        return Err(LedgerError::FixedSize {
            volume: volume_id.to_string(),
            gib: volume.capacity_gib,
            parts: volume.extents.len(),
        });
    }
    let delta = new_gib - volume.capacity_gib;
    if let Some(pool) = volume.pool {
        check_pool_share(pools, ledger, pool, delta)?;
    }
    let cannot = |reason: String| LedgerError::CannotGrow {
        volume: volume_id.to_string(),
        node: node.to_string(),
        want_gib: new_gib,
        reason,
    };
    if let Some(drive) = growth::missing_drive(ledger, &volume) {
        return Err(LedgerError::DriveNotAttached {
            volume: volume_id.to_string(),
            node: node.to_string(),
            want_gib: new_gib,
            drive,
        });
    }
    let growth = growth::plan(ledger, &volume, delta).map_err(cannot)?;
    growth::apply(ledger, &volume, growth).map_err(cannot)?;
    let grown = ledger
        .volume(volume_id)
        .ok_or_else(|| LedgerError::VolumeNotFound(volume_id.to_string()))?;
    Ok(Change::Write(grown))
}

/// Idempotency: the existing volume of the request's name is the one asked for
/// when it satisfies the request ([`Volume::satisfies`]) and was made with the
/// same layout and access ([`VolumeSpec`], where the ledger has it); otherwise
/// the name is taken.
fn same_volume(existing: Volume, request: &ClaimRequest) -> Result<Volume, LedgerError> {
    if !existing.satisfies(&request.accepts, request.pool) {
        return Err(LedgerError::NameConflict {
            name: existing.name,
            existing_gib: existing.capacity_gib,
            requested: request.accepts,
            existing_pool: PoolLabel(existing.pool),
            requested_pool: PoolLabel(request.pool),
        });
    }
    let requested = request.spec();
    let differences = existing
        .spec
        .as_ref()
        .map(|spec| spec.differences(&requested))
        .unwrap_or_default();
    if differences.is_empty() {
        Ok(existing)
    } else {
        Err(LedgerError::Incompatible {
            name: existing.name,
            node: existing.node,
            differences,
        })
    }
}

/// Idempotency: an existing volume is the one asked for only on a node the
/// request's accessibility requirements allow.
fn on_wanted_node(volume: Volume, wanted: &Wanted) -> Result<Volume, LedgerError> {
    match wanted {
        Wanted::Only(names) if !names.contains(&volume.node) => Err(LedgerError::Incompatible {
            differences: vec![format!(
                "it is on node {}, which the request's accessibility requirements ({}) do not allow",
                volume.node,
                names.join(", ")
            )],
            name: volume.name,
            node: volume.node,
        }),
        _ => Ok(volume),
    }
}

fn invalid_drive(node: &str, uuid: Uuid, reason: &str) -> LedgerError {
    LedgerError::InvalidDrive {
        node: node.to_string(),
        uuid,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests;
