//! Gauges computed from the ledger on each scrape, where the ledger is (the
//! controller, all-in-one): the pools' servers, capacity, usage and health, and
//! each drive's size, claims and largest free extent.

use std::sync::Arc;

use super::gauges::Gauges;
use super::names::{
    DRIVE_CAPACITY, DRIVE_CLAIMED, DRIVE_LARGEST_FREE_EXTENT, POOL_CAPACITY, POOL_HEALTH,
    POOL_SERVERS, POOL_USED,
};
use super::server::Refresh;
use crate::ledger::{Ledger, LedgerStore, NodeLedger};
use crate::pools::{Health, Pool, pools_health, pools_status};

/// On each scrape: the pools' servers, capacity, usage and health, and every
/// drive's size, claims and largest free extent, from the watched labels and
/// the ledger (never stored twice).
pub fn refresh<S: LedgerStore + 'static>(ledger: Arc<Ledger<S>>, gauges: Arc<Gauges>) -> Refresh {
    Arc::new(move || {
        let ledger = ledger.clone();
        let gauges = gauges.clone();
        Box::pin(async move {
            let Ok(nodes) = ledger.nodes().await else {
                return;
            };
            let settings = ledger.pool_settings();
            let status = pools_status(&nodes, settings);
            let health = pools_health(&nodes, settings);
            for pool in Pool::ALL {
                let s = status.pool(pool);
                let labels = [("pool", pool.as_str())];
                gauges.set(&POOL_SERVERS, &labels, s.servers as f64);
                gauges.set(&POOL_CAPACITY, &labels, s.total_capacity_gb as f64);
                gauges.set(&POOL_USED, &labels, s.used_capacity_gb as f64);
                let level = match pool {
                    Pool::K8s => health.pools.k8s_pool,
                    Pool::Vm => health.pools.vm_pool,
                };
                let level = match level {
                    Health::Healthy => 0.0,
                    Health::Warning => 1.0,
                    Health::Critical => 2.0,
                };
                gauges.set(&POOL_HEALTH, &labels, level);
            }
            drive_gauges(&nodes, &gauges);
        })
    })
}

/// Each drive of each node: its size, what its virtual drives claim, and the
/// largest virtual drive it could take now.
fn drive_gauges(nodes: &[Arc<NodeLedger>], gauges: &Gauges) {
    let mut capacity = Vec::new();
    let mut claimed = Vec::new();
    let mut largest_free = Vec::new();
    for node in nodes {
        for (drive, free) in node.drives.iter().zip(node.free_drives()) {
            let uuid = drive.uuid.to_string();
            let labels = || {
                vec![
                    ("node", node.node.clone()),
                    ("drive", uuid.clone()),
                    ("type", drive.drive_type.as_str().to_string()),
                ]
            };
            let claims: u64 = node
                .claims
                .iter()
                .filter(|c| c.physical_uuid == drive.uuid)
                .map(|c| c.size_gib)
                .sum();
            let largest = free.extents.iter().map(|e| e.size_gib).max().unwrap_or(0);
            capacity.push((labels(), drive.capacity_gib as f64));
            claimed.push((labels(), claims as f64));
            largest_free.push((labels(), largest as f64));
        }
    }
    gauges.replace(&DRIVE_CAPACITY, capacity);
    gauges.replace(&DRIVE_CLAIMED, claimed);
    gauges.replace(&DRIVE_LARGEST_FREE_EXTENT, largest_free);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::{Ratio, Request};
    use crate::ledger::{
        ClaimRequest, DriveHeader, EmbeddedStore, PhysicalDrive, PoolSettings, ReportedDrive,
        SizeRange,
    };
    use crate::metrics::Metrics;

    const NODE: &str = "n1";
    const DRIVE: &str = "00000000-0000-0000-0000-000000000001";

    #[tokio::test]
    async fn each_drive_shows_its_size_claims_and_largest_free_extent() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("ledger.redb")).unwrap();
        let ledger = Arc::new(Ledger::new(store, PoolSettings::default()));
        let drive: PhysicalDrive = serde_json::from_value(serde_json::json!({
            "uuid": DRIVE, "serial": "SN1", "type": "tlc", "capacity_gib": 64,
        }))
        .unwrap();
        let reported = ReportedDrive {
            drive,
            header: DriveHeader::Blank,
        };
        ledger.sync_drives(NODE, vec![reported]).await.unwrap();
        let mut layout = Request::with_ratio(10, Ratio { tlc: 1, qlc: 0 }, 1);
        layout.min_drive_gib = 1;
        let request = ClaimRequest {
            volume_name: "pvc-1".into(),
            owner: String::new(),
            pool: None,
            layout,
            accepts: SizeRange::exactly(10),
            access: None,
            image: None,
            image_format: None,
        };
        ledger.claim(NODE, &request).await.unwrap();

        let metrics = Metrics::new();
        refresh(ledger.clone(), metrics.gauges().clone())().await;
        let labels = [("node", NODE), ("drive", DRIVE), ("type", "tlc")];
        let gauges = metrics.gauges();
        assert_eq!(gauges.get(&DRIVE_CAPACITY, &labels), Some(64.0));
        assert_eq!(gauges.get(&DRIVE_CLAIMED, &labels), Some(10.0));
        assert_eq!(gauges.get(&DRIVE_LARGEST_FREE_EXTENT, &labels), Some(54.0));
        // Both pools are always shown, empty or not.
        for pool in ["k8s", "vm"] {
            assert_eq!(gauges.get(&POOL_SERVERS, &[("pool", pool)]), Some(0.0));
        }

        // A drive the node no longer sees stays in the ledger while it holds a
        // claim, missing: still shown, with no free extent.
        ledger.sync_drives(NODE, Vec::new()).await.unwrap();
        refresh(ledger.clone(), metrics.gauges().clone())().await;
        let missing = gauges.get(&DRIVE_LARGEST_FREE_EXTENT, &labels);
        assert_eq!(missing, Some(0.0), "a missing drive offers no extent");
        assert_eq!(gauges.get(&DRIVE_CLAIMED, &labels), Some(10.0));
    }
}
