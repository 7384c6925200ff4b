//! Pool status and health, derived from node ledgers (which carry each node's
//! `pool` label) and the settings. Values are whole GiB, under the `_gb` keys of
//! the pool API.

use std::borrow::Borrow;

use serde::Serialize;
use utoipa::ToSchema;

use super::{Pool, PoolSettings};
use crate::ledger::{NodeLedger, Quarantined};

/// One pool in `GET /api/v1/pools/status`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PoolStatus {
    pub servers: u64,
    pub total_capacity_gb: u64,
    pub used_capacity_gb: u64,
    pub available_capacity_gb: u64,
    pub usage_percentage: f64,
}

/// The system reserve in `GET /api/v1/pools/status`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ReserveStatus {
    pub total_servers: u64,
    pub total_capacity_gb: u64,
    pub used_capacity_gb: u64,
    pub available_capacity_gb: u64,
    pub usage_percentage: f64,
}

/// The whole body of `GET /api/v1/pools/status`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PoolsStatus {
    pub k8s_pool: PoolStatus,
    pub vm_pool: PoolStatus,
    pub system_reserve: ReserveStatus,
}

impl PoolsStatus {
    pub fn pool(&self, pool: Pool) -> &PoolStatus {
        match pool {
            Pool::K8s => &self.k8s_pool,
            Pool::Vm => &self.vm_pool,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Warning,
    Critical,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PoolHealths {
    pub k8s_pool: Health,
    pub vm_pool: Health,
}

/// The whole body of `GET /api/v1/pools/health`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct HealthReport {
    pub status: Health,
    pub pools: PoolHealths,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

/// Takes the nodes as they are held (`Arc<NodeLedger>` from a survey, or
/// plain ledgers): a cluster's ledgers are never copied to be counted.
pub fn pools_status<N: Borrow<NodeLedger>>(nodes: &[N], settings: &PoolSettings) -> PoolsStatus {
    let nodes = || nodes.iter().map(Borrow::borrow);
    let pool_status = |pool: Pool| {
        let members = nodes().filter(|n| n.pool == Some(pool));
        let servers = members.clone().count() as u64;
        let used: u64 = members.map(|n| n.claimed_for_pool_gib(Some(pool))).sum();
        let total = servers * settings.capacity_per_server_gib;
        PoolStatus {
            servers,
            total_capacity_gb: total,
            used_capacity_gb: used,
            available_capacity_gb: total.saturating_sub(used),
            usage_percentage: percentage(used, total),
        }
    };
    // A pool server's reserve holds whatever is on it outside its own pool: volumes
    // of no pool, and volumes of a pool the server has left.
    let pool_servers: Vec<&NodeLedger> = nodes().filter(|n| n.pool.is_some()).collect();
    let reserve_total = pool_servers.len() as u64 * settings.system_reserve_per_server_gib;
    let reserve_used: u64 = pool_servers
        .iter()
        .map(|n| n.claimed_gib() - n.claimed_for_pool_gib(n.pool))
        .sum();
    PoolsStatus {
        k8s_pool: pool_status(Pool::K8s),
        vm_pool: pool_status(Pool::Vm),
        system_reserve: ReserveStatus {
            total_servers: pool_servers.len() as u64,
            total_capacity_gb: reserve_total,
            used_capacity_gb: reserve_used,
            available_capacity_gb: reserve_total.saturating_sub(reserve_used),
            usage_percentage: percentage(reserve_used, reserve_total),
        },
    }
}

pub fn pools_health<N: Borrow<NodeLedger>>(nodes: &[N], settings: &PoolSettings) -> HealthReport {
    let status = pools_status(nodes, settings);
    let nodes: Vec<&NodeLedger> = nodes.iter().map(Borrow::borrow).collect();
    let mut warnings = Vec::new();
    let mut errors = Vec::new();

    let mut pool_health = |pool: Pool| {
        let s = status.pool(pool);
        let key = pool.api_key();
        let fix =
            format!("add servers with `kubectl label node <node> pool={pool}` or delete volumes");
        // Thresholds are compared on exact GiB, not on the rounded percentage, so
        // 75.004 % is above 75 % even though it is displayed as 75.00.
        let above =
            |percent: f64| s.used_capacity_gb as f64 * 100.0 > percent * s.total_capacity_gb as f64;
        let usage = format!(
            "{key} usage is {:.2}% ({} of {} GiB)",
            s.usage_percentage, s.used_capacity_gb, s.total_capacity_gb
        );
        let left_behind: u64 = nodes
            .iter()
            .filter(|n| n.pool != Some(pool))
            .map(|n| n.claimed_for_pool_gib(Some(pool)))
            .sum();
        if s.servers == 0 && left_behind > 0 {
            errors.push(format!(
                "{key} has no servers but {left_behind} GiB of its volumes remain on nodes outside it: {fix}"
            ));
            Health::Critical
        } else if above(settings.critical_percent) {
            errors.push(format!(
                "{usage}, above the {}% critical threshold: {fix}",
                settings.critical_percent
            ));
            Health::Critical
        } else if above(settings.warning_percent) {
            warnings.push(format!(
                "{usage}, above the {}% warning threshold: {fix}",
                settings.warning_percent
            ));
            Health::Warning
        } else {
            Health::Healthy
        }
    };
    let pools = PoolHealths {
        k8s_pool: pool_health(Pool::K8s),
        vm_pool: pool_health(Pool::Vm),
    };

    let reserve = &status.system_reserve;
    if reserve.used_capacity_gb > reserve.total_capacity_gb {
        warnings.push(format!(
            "the system reserve holds {} GiB, more than its {} GiB ({} servers × {} GiB): volumes outside the servers' own pools are eating into it; move or delete them",
            reserve.used_capacity_gb,
            reserve.total_capacity_gb,
            reserve.total_servers,
            settings.system_reserve_per_server_gib
        ));
    }

    for node in nodes {
        for pool in Pool::ALL {
            let held = node.claimed_for_pool_gib(Some(pool));
            if held > 0 && node.pool != Some(pool) {
                let volumes = node
                    .volumes()
                    .iter()
                    .filter(|v| v.pool == Some(pool))
                    .count();
                warnings.push(format!(
                    "node {} is not in the {pool} pool but still holds {held} GiB of its volumes ({volumes} volumes): move or delete them, or label the node pool={pool} again",
                    node.node
                ));
            }
        }
        let physical: u64 = node
            .drives
            .iter()
            .filter(|d| d.takes_claims())
            .map(|d| d.capacity_gib)
            .sum();
        if node.pool.is_some() && physical < settings.needed_per_server_gib() {
            warnings.push(format!(
                "node {} has {physical} GiB of signed drives, less than the {} GiB a pool server needs ({} GiB pool share + {} GiB system reserve): sign more drives on it",
                node.node,
                settings.needed_per_server_gib(),
                settings.capacity_per_server_gib,
                settings.system_reserve_per_server_gib
            ));
        }
        for drive in node.drives.iter().filter(|d| d.missing) {
            let held: u64 = node
                .claims
                .iter()
                .filter(|c| c.physical_uuid == drive.uuid)
                .map(|c| c.size_gib)
                .sum();
            errors.push(format!(
                "node {}: drive {} (serial {}) is missing but holds {held} GiB of claims: reattach the drive, or delete the volumes on it",
                node.node, drive.uuid, drive.serial
            ));
        }
        for drive in node.drives.iter().filter(|d| !d.missing) {
            if let Some(reason) = &drive.quarantined {
                errors.push(format!(
                    "node {}: drive {} (serial {}) is quarantined and takes no new volumes: {reason}",
                    node.node, drive.uuid, drive.serial
                ));
            }
        }
    }

    let mut overall = pools.k8s_pool.max(pools.vm_pool);
    if !warnings.is_empty() {
        overall = overall.max(Health::Warning);
    }
    if !errors.is_empty() {
        overall = Health::Critical;
    }
    HealthReport {
        status: overall,
        pools,
        warnings,
        errors,
    }
}

/// [`pools_health`], plus an error for every node kept aside because its ledger
/// cannot be read: it takes no volumes, and its capacity and usage count in no
/// pool, until it is repaired.
pub fn cluster_health<N: Borrow<NodeLedger>>(
    nodes: &[N],
    quarantined: &[Quarantined],
    settings: &PoolSettings,
) -> HealthReport {
    let mut report = pools_health(nodes, settings);
    for bad in quarantined {
        report.errors.push(format!(
            "node {} is quarantined: its ledger cannot be read ({}); it takes no new volumes and its capacity and usage count in no pool. Repair its vdrive.io annotations (`kubectl edit node {}`)",
            bad.node, bad.reason, bad.node
        ));
    }
    if !quarantined.is_empty() {
        report.status = Health::Critical;
    }
    report
}

/// `used / total` in percent, rounded to two decimals; 0 for an empty pool.
fn percentage(used: u64, total: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    (used as f64 * 10000.0 / total as f64).round() / 100.0
}

#[cfg(test)]
mod tests;
