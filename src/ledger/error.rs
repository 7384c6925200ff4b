//! What can go wrong when reading or changing the ledger.

use thiserror::Error;
use uuid::Uuid;

use super::Quarantined;
use super::model::SizeRange;
use super::placement::Unfit;
use super::pool_share::Pool;
use super::store::StoreError;
use crate::allocator::AllocError;
use crate::drive::{Backend, DriveType};

#[derive(Debug, Clone, Error)]
pub enum LedgerError {
    /// A volume is on no readable node while some node cannot be read.
    #[error(
        "volume {volume} is on no node whose ledger can be read, but {} cannot be read, so it may be there: repair that node's ledger (in a cluster: fix its vdrive.io annotations with `kubectl edit node <node>`), then retry",
        join(nodes, " and ")
    )]
    Unreadable {
        volume: String,
        nodes: Vec<Quarantined>,
    },

    /// The allocator found no layout (or the request was malformed).
    #[error(transparent)]
    Allocation(#[from] AllocError),

    /// The allocator found no layout on a node some of whose drives are
    /// quarantined: the refusal says why those drives are not offered.
    #[error("{source} on node {node}; {quarantined}")]
    Quarantined {
        node: String,
        source: AllocError,
        /// "drive U is quarantined: why; ..." for each quarantined drive.
        quarantined: String,
    },

    /// A claim request reused a volume name with a size or pool the existing volume
    /// does not have.
    #[error(
        "volume {name:?} already exists with {existing_gib} GiB in pool {existing_pool}; a request for {requested} in pool {requested_pool} under the same name conflicts. Use another name, or delete the existing volume first"
    )]
    NameConflict {
        name: String,
        existing_gib: u64,
        requested: SizeRange,
        existing_pool: PoolLabel,
        requested_pool: PoolLabel,
    },

    /// A claim request reused a volume name with another layout, access or
    /// topology than the existing volume's.
    #[error(
        "volume {name:?} already exists on node {node}, but differs from this request: {}. Use another name, or delete the existing volume first",
        .differences.join("; ")
    )]
    Incompatible {
        name: String,
        node: String,
        differences: Vec<String>,
    },

    /// A pool volume was asked for on a node that is not in that pool.
    #[error(
        "node {node} is not in the {pool} pool (its pool label is {label}). Label it with `kubectl label node {node} pool={pool}`, or place the volume on a node of that pool"
    )]
    NotInPool {
        node: String,
        pool: Pool,
        label: PoolLabel,
    },

    /// The node's share of the pool has less room left than requested.
    #[error(
        "node {node} has {left_gib} GiB left of its {share_gib} GiB {pool} pool share, but {need_gib} GiB were requested. Request less capacity, free volumes on this node, or add servers to the {pool} pool"
    )]
    PoolShareExhausted {
        node: String,
        pool: Pool,
        need_gib: u64,
        left_gib: u64,
        share_gib: u64,
    },

    /// The layout needs more virtual drives than the node's backend joins into one
    /// volume.
    #[error(
        "volume {name:?} needs {needed} virtual drives ({sizes}) on node {node}, but that node builds volumes with the {backend} backend, which makes a volume from at most {max} virtual drive(s); the largest one-drive volume it holds now is {largest}. Place the volume on a node whose drives use the device-mapper (dm) backend, or use a StorageClass with driveCores: \"1\" and a single type (tlc: \"1\", qlc: \"0\" or tlc: \"0\", qlc: \"1\") and request at most that size"
    )]
    TooManyParts {
        name: String,
        node: String,
        backend: Backend,
        needed: usize,
        max: u32,
        sizes: String,
        /// The largest free extent of the request's drive types ("3840 GiB of TLC").
        largest: LargestExtent,
    },

    /// No node has present drives (of the class's pool, for a pool class).
    #[error(
        "no node{} has signed drives: sign drives with `vdrive sign` and label servers pool=k8s|vm",
        in_pool(*.pool)
    )]
    NoNodeWithDrives { pool: Option<Pool> },

    /// None of the nodes the CO asked for can take a volume of the class at all.
    #[error(
        "no requested node can take a volume{}: {}",
        in_pool(*.pool),
        join(.reasons, "; ")
    )]
    NoRequestedNode {
        pool: Option<Pool>,
        reasons: Vec<Unfit>,
    },

    /// Every candidate node refused the volume; the first is the most wanted one
    /// (with WaitForFirstConsumer, the pod's node).
    #[error("{}", no_node_fits(.failures))]
    NoNodeFits { failures: Vec<LedgerError> },

    /// The volume is not in the ledger.
    #[error("volume {0} does not exist")]
    VolumeNotFound(String),

    /// The volume came from a fixed-size class and keeps its size.
    #[error(
        "volume {volume} cannot be expanded: it was made by a fixed-size StorageClass (numDrives × driveCapacity) as {parts} virtual drive(s), {gib} GiB in all, and keeps that size. For more space, create a volume of a class without numDrives and driveCapacity (sized by tlc and qlc) and copy the data"
    )]
    FixedSize {
        volume: String,
        gib: u64,
        parts: usize,
    },

    /// A volume cannot grow on its node.
    #[error("volume {volume} cannot grow to {want_gib} GiB on node {node}: {reason}")]
    CannotGrow {
        volume: String,
        node: String,
        want_gib: u64,
        reason: String,
    },

    /// A volume cannot grow while one of its drives is not attached to its node:
    /// its extents there could be neither checked nor extended.
    #[error(
        "volume {volume} cannot grow to {want_gib} GiB: its drive {drive} is not attached to node {node} (the node's last drive scan did not find it). Reattach the drive, then expand again"
    )]
    DriveNotAttached {
        volume: String,
        node: String,
        want_gib: u64,
        drive: Uuid,
    },

    /// A drive list handed to the ledger is inconsistent with itself or the claims.
    #[error("drive {uuid} on node {node}: {reason}")]
    InvalidDrive {
        node: String,
        uuid: Uuid,
        reason: String,
    },

    /// Other writers kept changing the node's ledger; nothing was written by this call.
    #[error(
        "the ledger of node {node} changed under this request {attempts} times in a row; nothing was written, try again"
    )]
    Contended { node: String, attempts: u32 },

    /// A change would have broken a ledger invariant; it was not written. A bug, never input.
    #[error("refusing to write the ledger of node {node}: {reason}")]
    Invariant { node: String, reason: String },

    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A node's or volume's pool for messages: the pool name, or "none".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLabel(pub Option<Pool>);

impl std::fmt::Display for PoolLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(pool) => write!(f, "{pool}"),
            None => f.write_str("none"),
        }
    }
}

/// A node's largest free extent for messages: "3840 GiB of TLC", or "none".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LargestExtent(pub Option<(DriveType, u64)>);

impl std::fmt::Display for LargestExtent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some((drive_type, gib)) => write!(f, "{gib} GiB of {}", drive_type.label()),
            None => f.write_str("none (no free extent of its drive types)"),
        }
    }
}

impl LedgerError {
    /// Whether this refusal is about one node only, so another node may fit.
    pub fn another_node_may_fit(&self) -> bool {
        matches!(
            self,
            LedgerError::Allocation(
                AllocError::InsufficientDriveCapacity { .. }
                    | AllocError::InsufficientDrives { .. }
                    | AllocError::NoLayoutFits(_)
            ) | LedgerError::Quarantined { .. }
                | LedgerError::Store(StoreError::AnnotationsFull { .. })
                | LedgerError::NotInPool { .. }
                | LedgerError::PoolShareExhausted { .. }
                | LedgerError::TooManyParts { .. }
        )
    }
}

/// " in the k8s pool", or nothing for a class without a pool.
fn in_pool(pool: Option<Pool>) -> String {
    pool.map_or(String::new(), |p| format!(" in the {p} pool"))
}

fn join(items: &[impl std::fmt::Display], separator: &str) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(separator)
}

/// The first three nodes' reasons, and how many more refused.
fn no_node_fits(failures: &[LedgerError]) -> String {
    if failures.is_empty() {
        return "no node can take this volume".into();
    }
    let mut text = join(&failures[..failures.len().min(3)], "; ");
    if failures.len() > 3 {
        text.push_str(&format!("; and {} more nodes", failures.len() - 3));
    }
    text
}
