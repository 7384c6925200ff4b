//! Every metric vdrive exports, spelled once: its name, help text and type. The
//! chart's alerts and dashboard are checked against [`ALL`] (tests/manifests.rs),
//! so a metric renamed here fails the build of the rules that use it.

/// How a metric is exposed, which decides the series names a scrape shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Exposed as `<name>_total`.
    Counter,
    Gauge,
    /// Exposed as `<name>_bucket`, `<name>_sum` and `<name>_count`.
    Histogram,
}

/// One metric. The help text has no final period: the encoder adds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
}

impl Metric {
    const fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        Metric { name, help, kind }
    }

    /// The names of the series a scrape shows for this metric.
    pub fn series(&self) -> Vec<String> {
        match self.kind {
            Kind::Counter => vec![format!("{}_total", self.name)],
            Kind::Gauge => vec![self.name.to_string()],
            Kind::Histogram => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|suffix| format!("{}{suffix}", self.name))
                .collect(),
        }
    }
}

// ---- CSI, the allocator and the ledger (counters and a histogram) -----------

pub const CSI_CALLS: Metric = Metric::new(
    "vdrive_csi_calls",
    Kind::Counter,
    "CSI calls answered, by method and gRPC code",
);
pub const CSI_CALL_DURATION: Metric = Metric::new(
    "vdrive_csi_call_duration_seconds",
    Kind::Histogram,
    "How long CSI calls took to answer, by method",
);
pub const ALLOCATIONS: Metric = Metric::new(
    "vdrive_allocations",
    Kind::Counter,
    "CreateVolume requests by outcome: placed, no_capacity (no node has room), invalid (the request can never fit), failed (anything else)",
);
pub const LEDGER_CAS_CONFLICTS: Metric = Metric::new(
    "vdrive_ledger_cas_conflicts",
    Kind::Counter,
    "Ledger writes that lost a compare-and-swap to another writer",
);
pub const LEDGER_CAS_RETRIES: Metric = Metric::new(
    "vdrive_ledger_cas_retries",
    Kind::Counter,
    "Ledger writes recomputed and tried again after losing a compare-and-swap",
);
pub const API_REQUESTS: Metric = Metric::new(
    "vdrive_api_requests",
    Kind::Counter,
    "Requests to the pool API, by route, HTTP method and status",
);

// ---- the controller's gauges -------------------------------------------------

pub const POOL_SERVERS: Metric = Metric::new(
    "vdrive_pool_servers",
    Kind::Gauge,
    "Servers labelled into the pool",
);
pub const POOL_CAPACITY: Metric = Metric::new(
    "vdrive_pool_capacity_gib",
    Kind::Gauge,
    "The pool's capacity: servers x capacityPerServerGiB",
);
pub const POOL_USED: Metric = Metric::new(
    "vdrive_pool_used_gib",
    Kind::Gauge,
    "GiB the pool's volumes hold",
);
pub const POOL_HEALTH: Metric = Metric::new(
    "vdrive_pool_health",
    Kind::Gauge,
    "0 healthy, 1 warning, 2 critical",
);
pub const DRIVE_CAPACITY: Metric = Metric::new(
    "vdrive_drive_capacity_gib",
    Kind::Gauge,
    "Size of each signed drive in the ledger, by node, drive and type",
);
pub const DRIVE_CLAIMED: Metric = Metric::new(
    "vdrive_drive_claimed_gib",
    Kind::Gauge,
    "GiB of each drive its virtual drives claim (including volumes deleted but not erased yet)",
);
pub const DRIVE_LARGEST_FREE_EXTENT: Metric = Metric::new(
    "vdrive_drive_largest_free_extent_gib",
    Kind::Gauge,
    "The largest free extent of each drive, the largest virtual drive it can take now (0 for a missing or quarantined drive)",
);
pub const ORPHANED_CLAIMS: Metric = Metric::new(
    "vdrive_orphaned_claims",
    Kind::Gauge,
    "Volumes in the ledger that no PersistentVolume accounts for (last orphan check)",
);
pub const VOLUMES_MISSING_CLAIMS: Metric = Metric::new(
    "vdrive_volumes_missing_claims",
    Kind::Gauge,
    "vdrive PersistentVolumes whose claims are missing from the ledger (last orphan check)",
);
pub const QUARANTINED_NODES: Metric = Metric::new(
    "vdrive_quarantined_nodes",
    Kind::Gauge,
    "Nodes whose vdrive ledger (annotations) cannot be read: they take no volumes until repaired",
);

// ---- a node plugin's gauges ----------------------------------------------------

pub const NODE_CAPACITY: Metric = Metric::new(
    "vdrive_node_capacity_gib",
    Kind::Gauge,
    "GiB of this node's signed drives that are present and trusted (the vdrive.io/shared-drives-capacity resource)",
);
pub const NODE_MISSING_DRIVES_WITH_CLAIMS: Metric = Metric::new(
    "vdrive_node_missing_drives_with_claims",
    Kind::Gauge,
    "Signed drives this node no longer sees that still hold virtual drives",
);
pub const NODE_QUARANTINED_DRIVES: Metric = Metric::new(
    "vdrive_node_quarantined_drives",
    Kind::Gauge,
    "Signed drives here whose header disagrees with the ledger: they take no new virtual drives until `vdrive drives adopt` reconciles them",
);
pub const NODE_STRAY_LOOP_DEVICES: Metric = Metric::new(
    "vdrive_node_stray_loop_devices",
    Kind::Gauge,
    "Loop devices over this node's drives that matched no staged volume at the last scan (a mapping changed under vdrive, or a crash left them); each was detached once free",
);
pub const NODE_VOLUMES_AWAITING_ERASE: Metric = Metric::new(
    "vdrive_node_volumes_awaiting_erase",
    Kind::Gauge,
    "Deleted volumes whose extents this node has not erased and released yet (still staged, or failing)",
);
pub const NODE_ERASE_BACKLOG_AGE: Metric = Metric::new(
    "vdrive_node_erase_backlog_age_seconds",
    Kind::Gauge,
    "How long the oldest deleted volume has waited for this node to erase it, counted since this process first saw it waiting (0: none waits)",
);

/// Every metric, in the order of the README's list.
pub const ALL: &[Metric] = &[
    CSI_CALLS,
    CSI_CALL_DURATION,
    ALLOCATIONS,
    LEDGER_CAS_CONFLICTS,
    LEDGER_CAS_RETRIES,
    API_REQUESTS,
    POOL_SERVERS,
    POOL_CAPACITY,
    POOL_USED,
    POOL_HEALTH,
    DRIVE_CAPACITY,
    DRIVE_CLAIMED,
    DRIVE_LARGEST_FREE_EXTENT,
    ORPHANED_CLAIMS,
    VOLUMES_MISSING_CLAIMS,
    QUARANTINED_NODES,
    NODE_CAPACITY,
    NODE_MISSING_DRIVES_WITH_CLAIMS,
    NODE_QUARANTINED_DRIVES,
    NODE_STRAY_LOOP_DEVICES,
    NODE_VOLUMES_AWAITING_ERASE,
    NODE_ERASE_BACKLOG_AGE,
];

/// The metric a series name belongs to (`vdrive_csi_calls_total` → CSI_CALLS).
pub fn metric_of(series: &str) -> Option<&'static Metric> {
    ALL.iter()
        .find(|m| m.series().iter().any(|name| name == series))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn names_are_unique_prometheus_names_under_vdrive() {
        let mut seen = BTreeSet::new();
        for metric in ALL {
            assert!(metric.name.starts_with("vdrive_"), "{}", metric.name);
            assert!(
                metric
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                metric.name
            );
            assert!(!metric.help.ends_with('.'), "{}", metric.name);
            for series in metric.series() {
                assert!(seen.insert(series.clone()), "{series} twice");
            }
        }
    }

    #[test]
    fn series_names_lead_back_to_their_metric() {
        assert_eq!(metric_of("vdrive_csi_calls_total"), Some(&CSI_CALLS));
        assert_eq!(
            metric_of("vdrive_csi_call_duration_seconds_bucket"),
            Some(&CSI_CALL_DURATION)
        );
        assert_eq!(metric_of("vdrive_pool_used_gib"), Some(&POOL_USED));
        assert_eq!(metric_of("vdrive_csi_calls"), None);
    }
}
