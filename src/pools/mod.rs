//! The per-server pools of the dynamic-storage-pools specification.
//!
//! A node labelled `pool=k8s` or `pool=vm` contributes `capacityPerServerGiB` to that
//! pool and keeps `systemReservePerServerGiB` back. Everything a pool reports is
//! derived from node labels plus the ledger's claims at the moment it is asked, so
//! relabelling a node changes its pool's capacity at once and nothing is stored twice.
//!
//! The pool names, the knobs and the per-node share rule belong to the ledger, which
//! enforces them on every claim ([`crate::ledger::Pool`] and its neighbours); they
//! are re-exported here so that callers find everything about pools in one place.

mod status;

pub use crate::ledger::{Pool, PoolSettings, node_allowance_gib};
pub use status::{
    Health, HealthReport, PoolHealths, PoolStatus, PoolsStatus, ReserveStatus, cluster_health,
    pools_health, pools_status,
};

/// The label key that puts a node into a pool.
pub const POOL_LABEL: &str = "pool";
