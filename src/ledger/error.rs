//! What can go wrong when reading or changing the ledger.

use thiserror::Error;
use uuid::Uuid;

use super::pool_share::Pool;
use super::store::StoreError;
use crate::allocator::AllocError;
use crate::drive::{Backend, DriveType};

#[derive(Debug, Error)]
pub enum LedgerError {
    /// The allocator found no layout (or the request was malformed).
    #[error(transparent)]
    Allocation(#[from] AllocError),

    /// A claim request reused a volume name with a different size or pool.
    #[error(
        "volume {name:?} already exists with {existing_gib} GiB in pool {existing_pool}; a request for {requested_gib} GiB in pool {requested_pool} under the same name conflicts. Use another name, or delete the existing volume first"
    )]
    NameConflict {
        name: String,
        existing_gib: u64,
        requested_gib: u64,
        existing_pool: PoolLabel,
        requested_pool: PoolLabel,
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
        /// The largest free extent of the request's drive types, e.g. "3840 GiB TLC".
        largest: LargestExtent,
    },

    /// The volume is not in the ledger.
    #[error("volume {0} does not exist")]
    VolumeNotFound(String),

    /// A volume cannot grow where it lies.
    #[error("volume {volume} cannot grow to {want_gib} GiB on node {node}: {reason}")]
    CannotGrow {
        volume: String,
        node: String,
        want_gib: u64,
        reason: String,
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
