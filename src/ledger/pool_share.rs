//! The pools as the ledger needs them: which pool a node and a volume belong to,
//! the pool knobs, and the per-node share rule every claim and growth is checked
//! against. They live here, under the ledger, because the ledger enforces them;
//! `crate::pools` builds status and health on top and re-exports them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::model::NodeLedger;

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

/// What `node` may still place for `pool`: its share minus what the pool's volumes
/// already hold there; nothing when the node is not in that pool.
pub fn node_allowance_gib(node: &NodeLedger, pool: Pool, settings: &PoolSettings) -> u64 {
    if node.pool != Some(pool) {
        return 0;
    }
    settings
        .capacity_per_server_gib
        .saturating_sub(node.claimed_for_pool_gib(Some(pool)))
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::drive::DriveType;
    use crate::ledger::{Claim, PhysicalDrive};

    /// A node labelled `pool` with one 2000 GiB drive.
    fn server(pool: Option<Pool>) -> NodeLedger {
        NodeLedger {
            node: "server-1".into(),
            pool,
            drives: vec![PhysicalDrive {
                uuid: Uuid::from_u128(1),
                serial: "SN1".into(),
                drive_type: DriveType::Tlc,
                capacity_gib: 2000,
                backend: Default::default(),
                missing: false,
                quarantined: None,
            }],
            claims: Vec::new(),
        }
    }

    /// Adds a one-extent volume of `size_gib` for `pool` after the drive's claims.
    fn claim(node: &mut NodeLedger, pool: Option<Pool>, size_gib: u64) {
        let offset_gib = node.claimed_gib();
        let n = node.claims.len();
        node.claims.push(Claim {
            virtual_uuid: Uuid::from_u128(100 + n as u128),
            volume_id: format!("v{n}"),
            volume_name: format!("pvc-{n}"),
            owner: format!("default:pvc-{n}"),
            pool,
            physical_uuid: node.drives[0].uuid,
            offset_gib,
            size_gib,
            part: 0,
            fixed: false,
            releasing: false,
            spec: None,
        });
        assert_eq!(node.check_invariants(), Ok(()));
    }

    #[test]
    fn allowance_is_the_share_minus_the_pools_own_claims_on_the_node() {
        let settings = PoolSettings::default();
        let mut node = server(Some(Pool::K8s));
        assert_eq!(node_allowance_gib(&node, Pool::K8s, &settings), 1500);
        claim(&mut node, Some(Pool::K8s), 1000);
        claim(&mut node, Some(Pool::Vm), 200); // stranded: from when it was a vm server
        assert_eq!(node_allowance_gib(&node, Pool::K8s, &settings), 500);
        assert_eq!(node_allowance_gib(&node, Pool::Vm, &settings), 0);
    }

    #[test]
    fn allowance_ignores_claims_of_no_pool_and_never_goes_negative() {
        let settings = PoolSettings::default();
        let mut node = server(Some(Pool::K8s));
        claim(&mut node, None, 250);
        assert_eq!(node_allowance_gib(&node, Pool::K8s, &settings), 1500);
        claim(&mut node, Some(Pool::K8s), 1600);
        assert_eq!(node_allowance_gib(&node, Pool::K8s, &settings), 0);
    }

    #[test]
    fn an_unlabelled_node_has_no_allowance() {
        let settings = PoolSettings::default();
        let mut node = server(None);
        claim(&mut node, Some(Pool::K8s), 100);
        for pool in Pool::ALL {
            assert_eq!(node_allowance_gib(&node, pool, &settings), 0, "{pool}");
        }
    }
}
