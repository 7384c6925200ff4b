//! What the ledger records for one node: its signed drives and the claims on them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::pool_share::Pool;
use crate::allocator::{FreeDrive, Request, Shape};
use crate::drive::{Backend, DriveType, Extent};

/// A physical drive signed for shared use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhysicalDrive {
    pub uuid: Uuid,
    pub serial: String,
    #[serde(rename = "type")]
    pub drive_type: DriveType,
    /// Whole GiB after the signature header.
    pub capacity_gib: u64,
    /// How the drive's node builds volumes on it. Ledgers written before this was
    /// recorded were all loop.
    #[serde(default)]
    pub backend: Backend,
    /// The node no longer sees this drive, but claims still point at it: it stays in
    /// the ledger (never silently dropped) and takes no new claims.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub missing: bool,
    /// Why the drive takes no new claims although it is here: its own header
    /// disagrees with this ledger (another owner, claims the ledger lost, a
    /// damaged record). Cleared when they agree again (`vdrive drives adopt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<String>,
}

impl PhysicalDrive {
    /// Whether new claims may be placed on the drive: it is here and trusted.
    pub fn takes_claims(&self) -> bool {
        !self.missing && self.quarantined.is_none()
    }
}

/// What a drive's own header says about whose it is (see the node's claim record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriveHeader {
    /// No claim record: never owned (freshly signed, or signed before records).
    Blank,
    /// The node that owns the drive and the claims still live on it.
    Owned { owner: String, claims: Vec<Claim> },
    /// A record is there but no copy of it can be read.
    Unreadable(String),
}

/// A drive as its node reports it: what it is, and what its header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedDrive {
    pub drive: PhysicalDrive,
    pub header: DriveHeader,
}

impl DriveHeader {
    /// Why `drive` on `node` must take no new claims, given `ledger`'s claims:
    /// None when the header and the ledger agree. They agree when the drive is
    /// unowned or the node's own, and every claim live in the header is in the
    /// ledger; the ledger may hold more (claims not written to the drive yet),
    /// and bigger ones: a claim the ledger grew in place since the header listed
    /// it is the same volume's, within what the ledger holds.
    pub fn disagreement(&self, node: &str, drive: uuid::Uuid, ledger: &[Claim]) -> Option<String> {
        let adopt = format!(
            "if the ledger is what was lost, or the drive moved here, bring its claims back with `vdrive drives adopt --drive {drive}` on this node"
        );
        match self {
            DriveHeader::Blank => None,
            DriveHeader::Unreadable(reason) => Some(format!(
                "its header's claim record cannot be read ({reason}), so what is carved on it cannot be told"
            )),
            DriveHeader::Owned { owner, claims } if owner != node => Some(format!(
                "its header says it belongs to node {owner:?} ({} virtual drive(s)), not {node:?}: the node was renamed, the drive moved, or another server sees it too; {adopt}",
                claims.len()
            )),
            DriveHeader::Owned { claims, .. } => {
                let lost: Vec<String> = claims
                    .iter()
                    .filter(|c| {
                        !ledger.iter().any(|l| {
                            l.physical_uuid == drive
                                && l.volume_id == c.volume_id
                                && l.extent().contains(&c.extent())
                        })
                    })
                    .map(|c| {
                        format!(
                            "{} at {} GiB ({} GiB)",
                            c.volume_id, c.offset_gib, c.size_gib
                        )
                    })
                    .collect();
                (!lost.is_empty()).then(|| {
                    format!(
                        "its header lists {} virtual drive(s) this node's ledger does not ({}): the ledger was lost or forked; {adopt}",
                        lost.len(),
                        lost.join(", ")
                    )
                })
            }
        }
    }
}

/// One virtual drive: a contiguous extent of a physical drive owned by one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub virtual_uuid: Uuid,
    pub volume_id: String,
    pub volume_name: String,
    /// Who asked, `namespace:name` (a PVC), or the volume name when no owner is known.
    pub owner: String,
    pub pool: Option<Pool>,
    pub physical_uuid: Uuid,
    pub offset_gib: u64,
    pub size_gib: u64,
    /// Position of this virtual drive within its volume's linear device.
    pub part: u32,
    /// The volume came from a fixed-size class (`numDrives` × `driveCapacity`) and
    /// keeps that size: it never grows. Recorded because ControllerExpandVolume
    /// carries no class parameters to tell.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fixed: bool,
    /// The volume was deleted and its node has not erased this extent yet. The
    /// extent stays claimed (never handed out unerased) but belongs to no volume.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub releasing: bool,
    /// What the volume was asked for, kept on its first virtual drive (part 0)
    /// only; None on the others and on claims recorded before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<VolumeSpec>,
}

/// What a volume was asked for beyond its size and pool: the layout its class's
/// parameters resolved to, and how it is used. Kept with the volume so that a
/// CreateVolume repeated under its name is compared with all of it. The names
/// are the StorageClass keys'.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tlc: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qlc: Option<u32>,
    #[serde(rename = "numDrives", default, skip_serializing_if = "Option::is_none")]
    pub num_drives: Option<u32>,
    #[serde(
        rename = "driveCapacity",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub drive_capacity_gib: Option<u64>,
    #[serde(rename = "driveCores")]
    pub drive_cores: u32,
    #[serde(rename = "minDriveGiB")]
    pub min_drive_gib: u64,
    #[serde(rename = "maxVirtualDrivesPerCore")]
    pub max_virtual_drives_per_core: u32,
    #[serde(rename = "enforceMinDrivesPerTypePerCore")]
    pub enforce_min_drives_per_type_per_core: bool,
    /// `block`, or the filesystem of a mount volume; None when not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
    /// The disk image written into the volume at its first staging (a path on
    /// the node or an http(s) URL), and its format when the class named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(
        rename = "imageFormat",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub image_format: Option<String>,
}

impl VolumeSpec {
    /// The spec of a volume made with `layout` (its size aside) for `access`.
    pub fn new(layout: &Request, access: Option<String>) -> Self {
        let (ratio, fixed) = match layout.shape {
            Shape::Ratio { ratio, .. } => (Some(ratio), None),
            Shape::Fixed {
                num_drives,
                drive_capacity_gib,
            } => (None, Some((num_drives, drive_capacity_gib))),
        };
        VolumeSpec {
            tlc: ratio.map(|r| r.tlc),
            qlc: ratio.map(|r| r.qlc),
            num_drives: fixed.map(|f| f.0),
            drive_capacity_gib: fixed.map(|f| f.1),
            drive_cores: layout.drive_cores,
            min_drive_gib: layout.min_drive_gib,
            max_virtual_drives_per_core: layout.max_virtual_drives_per_core,
            enforce_min_drives_per_type_per_core: layout.enforce_min_drives_per_type_per_core,
            access,
            image: None,
            image_format: None,
        }
    }

    /// The spec with the image (and image format) the volume is created with.
    pub fn with_image(mut self, image: Option<String>, format: Option<String>) -> Self {
        self.image = image;
        self.image_format = format;
        self
    }

    fn layout(&self) -> String {
        match (self.num_drives, self.drive_capacity_gib) {
            (Some(n), Some(gib)) => format!("numDrives × driveCapacity {n} × {gib} GiB"),
            _ => format!(
                "tlc:qlc {}:{}",
                self.tlc.unwrap_or(0),
                self.qlc.unwrap_or(0)
            ),
        }
    }

    /// How `requested` differs from this (the existing volume's) spec, for
    /// people: "driveCores 1, not 2". Access is compared only where both know it.
    pub fn differences(&self, requested: &VolumeSpec) -> Vec<String> {
        let mut differ = Vec::new();
        if self.layout() != requested.layout() {
            differ.push(format!(
                "it was made with {}, not {}",
                self.layout(),
                requested.layout()
            ));
        }
        let mut compare = |what: &str, mine: String, theirs: String| {
            if mine != theirs {
                differ.push(format!("{what} {mine}, not {theirs}"));
            }
        };
        compare(
            "driveCores",
            self.drive_cores.to_string(),
            requested.drive_cores.to_string(),
        );
        compare(
            "minDriveGiB",
            self.min_drive_gib.to_string(),
            requested.min_drive_gib.to_string(),
        );
        compare(
            "maxVirtualDrivesPerCore",
            self.max_virtual_drives_per_core.to_string(),
            requested.max_virtual_drives_per_core.to_string(),
        );
        compare(
            "enforceMinDrivesPerTypePerCore",
            self.enforce_min_drives_per_type_per_core.to_string(),
            requested.enforce_min_drives_per_type_per_core.to_string(),
        );
        let image = |spec: &VolumeSpec| match (&spec.image, &spec.image_format) {
            (None, _) => "none".to_string(),
            (Some(image), None) => image.clone(),
            (Some(image), Some(format)) => format!("{image} ({format})"),
        };
        if (&self.image, &self.image_format) != (&requested.image, &requested.image_format) {
            differ.push(format!(
                "its image is {}, not {}",
                image(self),
                image(requested)
            ));
        }
        let describe = |access: &str| match access {
            "block" => "a raw block volume".to_string(),
            fs => format!("an {fs} filesystem volume"),
        };
        if let (Some(mine), Some(theirs)) = (&self.access, &requested.access)
            && mine != theirs
        {
            differ.push(format!(
                "it is {}, not {}",
                describe(mine),
                describe(theirs)
            ));
        }
        differ
    }
}

impl Claim {
    pub fn extent(&self) -> Extent {
        Extent::new(self.offset_gib, self.size_gib)
    }
}

/// One node's ledger: the unit that changes in one atomic step.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeLedger {
    pub node: String,
    /// The node's `pool` label.
    pub pool: Option<Pool>,
    pub drives: Vec<PhysicalDrive>,
    pub claims: Vec<Claim>,
}

/// One extent of a volume, with what the node needs to build the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeExtent {
    pub virtual_uuid: Uuid,
    pub physical_uuid: Uuid,
    #[serde(rename = "type")]
    pub drive_type: Option<DriveType>,
    pub offset_gib: u64,
    pub size_gib: u64,
}

/// A volume as the ledger knows it: its claims gathered in device order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub node: String,
    pub owner: String,
    pub pool: Option<Pool>,
    pub capacity_gib: u64,
    /// TLC extents first, then QLC: the order of the volume's linear device.
    pub extents: Vec<VolumeExtent>,
    /// Made by a fixed-size class; it keeps its size (see [`Claim::fixed`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fixed: bool,
    /// Deleted, waiting for its node to erase the extents (see [`Claim::releasing`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub releasing: bool,
    /// What it was asked for (see [`Claim::spec`]); None for volumes recorded
    /// before that was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<VolumeSpec>,
}

/// The sizes a request accepts, in whole GiB: CSI's `required_bytes` rounded up
/// and `limit_bytes` rounded down, since every volume is whole GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeRange {
    pub min_gib: u64,
    /// None: no upper limit.
    pub max_gib: Option<u64>,
}

impl SizeRange {
    pub fn exactly(gib: u64) -> Self {
        SizeRange {
            min_gib: gib,
            max_gib: Some(gib),
        }
    }

    pub fn contains(&self, gib: u64) -> bool {
        gib >= self.min_gib && self.max_gib.is_none_or(|max| gib <= max)
    }
}

impl std::fmt::Display for SizeRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.max_gib {
            Some(max) if max == self.min_gib => write!(f, "{max} GiB"),
            Some(max) => write!(f, "{} to {max} GiB", self.min_gib),
            None => write!(f, "at least {} GiB", self.min_gib),
        }
    }
}

impl Volume {
    /// The one idempotency rule for creating a volume by name: an existing volume
    /// is the one asked for when its size is one the request accepts and it is in
    /// the same pool. Anything else under the same name is a conflict.
    pub fn satisfies(&self, sizes: &SizeRange, pool: Option<Pool>) -> bool {
        sizes.contains(self.capacity_gib) && self.pool == pool
    }
}

impl NodeLedger {
    pub fn new(node: impl Into<String>) -> Self {
        NodeLedger {
            node: node.into(),
            ..NodeLedger::default()
        }
    }

    pub fn drive(&self, uuid: &Uuid) -> Option<&PhysicalDrive> {
        self.drives.iter().find(|d| d.uuid == *uuid)
    }

    /// The drives that are there now: missing ones take no new claims.
    pub fn present_drives(&self) -> impl Iterator<Item = &PhysicalDrive> {
        self.drives.iter().filter(|d| !d.missing)
    }

    /// How the node builds volumes: device-mapper when every drive it has now
    /// reports dm, loop otherwise (a node with no drives, or one still reporting a
    /// loop drive, is held to loop's limits).
    pub fn backend(&self) -> Backend {
        let mut present = self.present_drives().peekable();
        if present.peek().is_some() && present.all(|d| d.backend == Backend::Dm) {
            Backend::Dm
        } else {
            Backend::Loop
        }
    }

    /// Most virtual drives one volume may have on this node: no limit when its
    /// backend joins extents (dm), one when a volume is one loop device over one
    /// extent.
    pub fn max_parts(&self) -> Option<u32> {
        match self.backend() {
            Backend::Dm => None,
            Backend::Loop => Some(1),
        }
    }

    pub fn capacity_gib(&self) -> u64 {
        self.drives.iter().map(|d| d.capacity_gib).sum()
    }

    pub fn claimed_gib(&self) -> u64 {
        self.claims.iter().map(|c| c.size_gib).sum()
    }

    /// GiB claimed for `pool` (None: claims made outside any pool).
    pub fn claimed_for_pool_gib(&self, pool: Option<Pool>) -> u64 {
        self.claims
            .iter()
            .filter(|c| c.pool == pool)
            .map(|c| c.size_gib)
            .sum()
    }

    /// Puts the claims in (physical drive, offset) order, the order the ledger
    /// writes them in, so that deriving free space needs no sort.
    pub fn normalize(&mut self) {
        // A stable sort is linear on the nearly sorted list a single change leaves.
        self.claims
            .sort_by_key(|c| (c.physical_uuid.as_u128(), c.offset_gib));
    }

    /// The free extents of each drive, in drive order: the gaps between its claims.
    /// Missing and quarantined drives offer none.
    pub fn free_drives(&self) -> Vec<FreeDrive> {
        // This runs on every CreateVolume and GetCapacity: one pass over the claims,
        // a sort only if the ledger was not normalized, a binary search per drive.
        let mut used: Vec<(u128, Extent)> = self
            .claims
            .iter()
            .map(|c| (c.physical_uuid.as_u128(), c.extent()))
            .collect();
        if !used.is_sorted() {
            used.sort_unstable();
        }
        self.drives
            .iter()
            .map(|drive| {
                let id = drive.uuid.as_u128();
                let start = used.partition_point(|(d, _)| *d < id);
                let end = start + used[start..].partition_point(|(d, _)| *d == id);
                let extents = if !drive.takes_claims() {
                    Vec::new()
                } else {
                    gaps(drive.capacity_gib, used[start..end].iter().map(|(_, e)| *e))
                };
                FreeDrive {
                    drive_type: drive.drive_type,
                    extents,
                }
            })
            .collect()
    }

    /// The biggest free extent on the present drives of the types `uses` accepts:
    /// the largest volume of one virtual drive this node could hold now.
    pub fn largest_free_extent(
        &self,
        uses: impl Fn(DriveType) -> bool,
    ) -> Option<(DriveType, u64)> {
        self.free_drives()
            .iter()
            .filter(|d| uses(d.drive_type))
            .map(|d| (d.drive_type, d.largest_extent_gib()))
            .filter(|(_, gib)| *gib > 0)
            .max_by_key(|(_, gib)| *gib)
    }

    /// Gaps between the claims on `drive`, from offset 0 to its capacity.
    pub fn free_extents(&self, drive: &PhysicalDrive) -> Vec<Extent> {
        let mut used: Vec<Extent> = self
            .claims
            .iter()
            .filter(|c| c.physical_uuid == drive.uuid)
            .map(Claim::extent)
            .collect();
        used.sort_unstable();
        gaps(drive.capacity_gib, used.into_iter())
    }

    pub fn has_volume(&self, volume_id: &str) -> bool {
        self.claims.iter().any(|c| c.volume_id == volume_id)
    }

    /// The claims of volume `volume_id` on this node (its virtual drives).
    pub fn claims_of(&self, volume_id: &str) -> Vec<Claim> {
        self.claims
            .iter()
            .filter(|c| c.volume_id == volume_id)
            .cloned()
            .collect()
    }

    /// The volume `volume_id` as recorded on this node, if any.
    pub fn volume(&self, volume_id: &str) -> Option<Volume> {
        self.assemble(|c| c.volume_id == volume_id)
    }

    /// The live volume named `name`; a deleted one still being erased is not it.
    pub fn volume_by_name(&self, name: &str) -> Option<Volume> {
        self.assemble(|c| c.volume_name == name && !c.releasing)
    }

    /// Every live volume on this node, in the order their first claim was made.
    pub fn volumes(&self) -> Vec<Volume> {
        self.volumes_where(|c| !c.releasing)
    }

    /// The ids of this node's live volumes, each once, in no particular order.
    pub fn live_volume_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self
            .claims
            .iter()
            .filter(|c| !c.releasing)
            .map(|c| c.volume_id.as_str())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Deleted volumes whose extents wait for this node to erase them.
    pub fn releasing_volumes(&self) -> Vec<Volume> {
        self.volumes_where(|c| c.releasing)
    }

    fn volumes_where(&self, keep: impl Fn(&Claim) -> bool) -> Vec<Volume> {
        let mut ids: Vec<&str> = Vec::new();
        for claim in self.claims.iter().filter(|c| keep(c)) {
            if !ids.contains(&claim.volume_id.as_str()) {
                ids.push(&claim.volume_id);
            }
        }
        ids.into_iter().filter_map(|id| self.volume(id)).collect()
    }

    fn assemble(&self, belongs: impl Fn(&Claim) -> bool) -> Option<Volume> {
        let mut claims: Vec<&Claim> = self.claims.iter().filter(|c| belongs(c)).collect();
        let first = *claims.first()?;
        claims.sort_by_key(|c| c.part);
        Some(Volume {
            id: first.volume_id.clone(),
            name: first.volume_name.clone(),
            node: self.node.clone(),
            owner: first.owner.clone(),
            pool: first.pool,
            capacity_gib: claims.iter().map(|c| c.size_gib).sum(),
            releasing: claims.iter().any(|c| c.releasing),
            fixed: claims.iter().any(|c| c.fixed),
            spec: claims.iter().find_map(|c| c.spec.clone()),
            extents: claims
                .iter()
                .map(|c| VolumeExtent {
                    virtual_uuid: c.virtual_uuid,
                    physical_uuid: c.physical_uuid,
                    drive_type: self.drive(&c.physical_uuid).map(|d| d.drive_type),
                    offset_gib: c.offset_gib,
                    size_gib: c.size_gib,
                })
                .collect(),
        })
    }

    /// Checks the ledger's invariants: drive uuids are unique, every claim lies within
    /// a known drive, and no two claims overlap. Returns the first violation found.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut drives: Vec<&PhysicalDrive> = self.drives.iter().collect();
        drives.sort_unstable_by_key(|d| d.uuid);
        if let Some(pair) = drives.windows(2).find(|w| w[0].uuid == w[1].uuid) {
            return Err(format!("drive {} is listed twice", pair[0].uuid));
        }
        let mut virtual_ids: Vec<u128> = self
            .claims
            .iter()
            .map(|c| c.virtual_uuid.as_u128())
            .collect();
        virtual_ids.sort_unstable();
        if let Some(pair) = virtual_ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!(
                "virtual drive {} is claimed twice",
                Uuid::from_u128(pair[0])
            ));
        }
        let order = |c: &&Claim| (c.physical_uuid.as_u128(), c.offset_gib);
        let mut claims: Vec<&Claim> = self.claims.iter().collect();
        // Checked on every write; a normalized ledger is already in this order.
        if !claims.is_sorted_by_key(order) {
            claims.sort_unstable_by_key(order);
        }
        for (i, claim) in claims.iter().enumerate() {
            let drive = drives
                .binary_search_by_key(&claim.physical_uuid, |d| d.uuid)
                .map(|at| drives[at])
                .map_err(|_| {
                    format!(
                        "claim {} is on drive {}, which is not signed on {}",
                        claim.virtual_uuid, claim.physical_uuid, self.node
                    )
                })?;
            if claim.size_gib == 0 || claim.extent().end_gib() > drive.capacity_gib {
                return Err(format!(
                    "claim {} ({} GiB at {} GiB) does not fit drive {} of {} GiB",
                    claim.virtual_uuid,
                    claim.size_gib,
                    claim.offset_gib,
                    drive.uuid,
                    drive.capacity_gib
                ));
            }
            if let Some(previous) = i.checked_sub(1).map(|p| claims[p])
                && previous.physical_uuid == claim.physical_uuid
                && previous.extent().overlaps(&claim.extent())
            {
                return Err(format!(
                    "claims {} and {} overlap on drive {}",
                    previous.virtual_uuid, claim.virtual_uuid, claim.physical_uuid
                ));
            }
        }
        Ok(())
    }
}

/// The free gaps of a drive of `capacity_gib` around `used` extents sorted by offset.
fn gaps(capacity_gib: u64, used: impl Iterator<Item = Extent>) -> Vec<Extent> {
    let mut free = Vec::new();
    let mut cursor = 0u64;
    for extent in used {
        if extent.offset_gib > cursor {
            free.push(Extent::new(cursor, extent.offset_gib - cursor));
        }
        cursor = cursor.max(extent.end_gib());
    }
    if capacity_gib > cursor {
        free.push(Extent::new(cursor, capacity_gib - cursor));
    }
    free
}
