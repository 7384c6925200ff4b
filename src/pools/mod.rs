//! The per-server pools of the dynamic-storage-pools specification.
//!
//! A node labelled `pool=k8s` or `pool=vm` contributes `capacityPerServerGiB` to that
//! pool and keeps `systemReservePerServerGiB` back. Everything a pool reports is
//! derived from node labels plus the ledger's claims at the moment it is asked, so
//! relabelling a node changes its pool's capacity at once and nothing is stored twice.

mod status;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use status::{
    Health, HealthReport, PoolHealths, PoolStatus, PoolsStatus, ReserveStatus, node_allowance_gib,
    pools_health, pools_status,
};

/// The label key that puts a node into a pool.
pub const POOL_LABEL: &str = "pool";

/// The two pools a server can belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    K8s,
    Vm,
}

impl Pool {
    pub const ALL: [Pool; 2] = [Pool::K8s, Pool::Vm];

    /// The label value (`pool=k8s`).
    pub fn as_str(self) -> &'static str {
        match self {
            Pool::K8s => "k8s",
            Pool::Vm => "vm",
        }
    }

    /// The key in the pool API's JSON (`k8s_pool`).
    pub fn api_key(self) -> &'static str {
        match self {
            Pool::K8s => "k8s_pool",
            Pool::Vm => "vm_pool",
        }
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Pool {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "k8s" => Ok(Pool::K8s),
            "vm" => Ok(Pool::Vm),
            other => Err(format!("unknown pool {other:?}: use k8s or vm")),
        }
    }
}

/// The pool knobs, with the specification's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PoolSettings {
    /// What each labelled server contributes to its pool (1.5 TB).
    pub capacity_per_server_gib: u64,
    /// What each labelled server keeps back for the system (300 GB).
    pub system_reserve_per_server_gib: u64,
    /// Usage above this percentage makes a pool `warning`.
    pub warning_percent: f64,
    /// Usage above this percentage makes a pool `critical`.
    pub critical_percent: f64,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            capacity_per_server_gib: 1500,
            system_reserve_per_server_gib: 300,
            warning_percent: 75.0,
            critical_percent: 90.0,
        }
    }
}

impl PoolSettings {
    /// Physical space a pool server needs: its pool share plus the system reserve.
    pub fn needed_per_server_gib(&self) -> u64 {
        self.capacity_per_server_gib + self.system_reserve_per_server_gib
    }
}
