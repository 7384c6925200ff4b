//! Pool status and health against the dynamic-storage-pools specification: its
//! scaling examples, its API shapes, and its 75 % / 90 % thresholds.

use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::drive::DriveType;
use crate::ledger::{Claim, PhysicalDrive};

/// What a pool server needs (1500 GiB share + 300 GiB reserve): no capacity warning.
const SERVER_GIB: u64 = 1800;

fn settings() -> PoolSettings {
    PoolSettings::default()
}

fn drive(node: &str, n: u8, capacity_gib: u64) -> PhysicalDrive {
    PhysicalDrive {
        uuid: Uuid::new_v4(),
        serial: format!("{node}-SN{n}"),
        drive_type: DriveType::Tlc,
        capacity_gib,
        backend: Default::default(),
        missing: false,
        quarantined: None,
    }
}

/// A node labelled `pool` (None: no label) with one drive of `capacity_gib`.
fn node_with(name: &str, pool: Option<Pool>, capacity_gib: u64) -> NodeLedger {
    NodeLedger {
        node: name.to_string(),
        pool,
        drives: vec![drive(name, 0, capacity_gib)],
        claims: Vec::new(),
    }
}

/// A node labelled `pool` (None: no label) with enough physical space for a pool server.
fn server(name: &str, pool: Option<Pool>) -> NodeLedger {
    node_with(name, pool, SERVER_GIB)
}

/// Adds a one-extent volume of `size_gib` for `pool` on drive `drive_index`, right
/// after the claims already on that drive.
fn claim_on(node: &mut NodeLedger, drive_index: usize, pool: Option<Pool>, size_gib: u64) {
    let physical_uuid = node.drives[drive_index].uuid;
    let offset_gib = node
        .claims
        .iter()
        .filter(|c| c.physical_uuid == physical_uuid)
        .map(|c| c.offset_gib + c.size_gib)
        .max()
        .unwrap_or(0);
    let volume_name = format!("{}-vol-{}", node.node, node.claims.len());
    node.claims.push(Claim {
        virtual_uuid: Uuid::new_v4(),
        volume_id: Uuid::new_v4().to_string(),
        volume_name: volume_name.clone(),
        owner: format!("default:{volume_name}"),
        pool,
        physical_uuid,
        offset_gib,
        size_gib,
        part: 0,
        fixed: false,
        releasing: false,
        spec: None,
    });
    assert_eq!(
        node.check_invariants(),
        Ok(()),
        "fixture must be a valid ledger"
    );
}

fn claim(node: &mut NodeLedger, pool: Option<Pool>, size_gib: u64) {
    claim_on(node, 0, pool, size_gib);
}

fn servers(prefix: &str, pool: Pool, count: usize) -> Vec<NodeLedger> {
    (1..=count)
        .map(|i| server(&format!("{prefix}-{i}"), Some(pool)))
        .collect()
}

fn find<'a>(nodes: &'a mut [NodeLedger], name: &str) -> &'a mut NodeLedger {
    nodes.iter_mut().find(|n| n.node == name).unwrap()
}

/// Pool totals and server counts (used capacity is covered elsewhere).
fn capacities(status: &PoolsStatus) -> [(u64, u64); 3] {
    [
        (status.k8s_pool.servers, status.k8s_pool.total_capacity_gb),
        (status.vm_pool.servers, status.vm_pool.total_capacity_gb),
        (
            status.system_reserve.total_servers,
            status.system_reserve.total_capacity_gb,
        ),
    ]
}

/// The only server of `pool`, holding `used_gib` of it (no claim for 0: claims are never empty).
fn one_pool_server_with(pool: Pool, used_gib: u64) -> Vec<NodeLedger> {
    let mut node = server("solo", Some(pool));
    if used_gib > 0 {
        claim(&mut node, Some(pool), used_gib);
    }
    vec![node]
}

// --- Pool Scaling Examples -------------------------------------------------------

#[test]
fn example_1_adding_a_k8s_server_adds_its_share_to_the_k8s_pool_only() {
    let mut nodes = servers("k8s", Pool::K8s, 2);
    nodes.extend(servers("vm", Pool::Vm, 2));
    let before = pools_status(&nodes, &settings());
    assert_eq!(capacities(&before), [(2, 3000), (2, 3000), (4, 1200)]);

    nodes.push(server("new-k8s-server", None));
    // An unlabelled node contributes nothing, not even reserve.
    assert_eq!(
        capacities(&pools_status(&nodes, &settings())),
        [(2, 3000), (2, 3000), (4, 1200)]
    );

    find(&mut nodes, "new-k8s-server").pool = Some(Pool::K8s);
    let after = pools_status(&nodes, &settings());
    assert_eq!(capacities(&after), [(3, 4500), (2, 3000), (5, 1500)]);
    assert_eq!(after.vm_pool, before.vm_pool, "the VM pool is unchanged");
}

#[test]
fn example_2_removing_the_label_takes_the_share_out_of_the_pool() {
    let mut nodes = servers("k8s", Pool::K8s, 3);
    nodes.extend(servers("vm", Pool::Vm, 2));
    let before = pools_status(&nodes, &settings());
    assert_eq!(capacities(&before), [(3, 4500), (2, 3000), (5, 1500)]);

    find(&mut nodes, "k8s-3").pool = None; // kubectl label node old-k8s-server pool-
    let after = pools_status(&nodes, &settings());
    assert_eq!(capacities(&after), [(2, 3000), (2, 3000), (4, 1200)]);
    assert_eq!(after.vm_pool, before.vm_pool, "the VM pool is unchanged");
}

#[test]
fn example_3_moving_a_server_moves_its_share_between_pools() {
    let mut nodes = vec![
        server("server-1", Some(Pool::K8s)),
        server("server-2", Some(Pool::K8s)),
    ];
    nodes.extend(servers("vm", Pool::Vm, 2));
    assert_eq!(
        capacities(&pools_status(&nodes, &settings())),
        [(2, 3000), (2, 3000), (4, 1200)]
    );

    find(&mut nodes, "server-1").pool = Some(Pool::Vm); // kubectl label node server-1 pool=vm
    let after = pools_status(&nodes, &settings());
    assert_eq!(capacities(&after), [(1, 1500), (3, 4500), (4, 1200)]);
}

#[test]
fn capacity_follows_the_settings() {
    let settings = PoolSettings {
        capacity_per_server_gib: 1000,
        system_reserve_per_server_gib: 100,
        ..PoolSettings::default()
    };
    let mut nodes = servers("k8s", Pool::K8s, 2);
    nodes.extend(servers("vm", Pool::Vm, 1));
    assert_eq!(
        capacities(&pools_status(&nodes, &settings)),
        [(2, 2000), (1, 1000), (3, 300)]
    );
}

// --- GET /api/v1/pools/status -----------------------------------------------------

/// The specification's status example: k8s 3 servers with 1200 GiB used, vm 2 servers
/// with 800 GiB used, and 200 GiB of the reserve used: 150 GiB of volumes of no pool
/// on a k8s server, and 50 GiB of k8s volumes left on a server that moved to vm.
fn status_example() -> Vec<NodeLedger> {
    let mut nodes = servers("k8s", Pool::K8s, 3);
    nodes.extend(servers("vm", Pool::Vm, 2));
    claim(&mut nodes[0], Some(Pool::K8s), 500);
    claim(&mut nodes[0], None, 150);
    claim(&mut nodes[1], Some(Pool::K8s), 400);
    claim(&mut nodes[2], Some(Pool::K8s), 200);
    claim(&mut nodes[2], Some(Pool::K8s), 100);
    claim(&mut nodes[3], Some(Pool::Vm), 500);
    claim(&mut nodes[4], Some(Pool::Vm), 300);
    claim(&mut nodes[4], Some(Pool::K8s), 50); // from before vm-2 left the k8s pool
    nodes
}

#[test]
fn status_matches_the_specification_example() {
    let status = pools_status(&status_example(), &settings());
    assert_eq!(
        status.k8s_pool,
        PoolStatus {
            servers: 3,
            total_capacity_gb: 4500,
            used_capacity_gb: 1200,
            available_capacity_gb: 3300,
            usage_percentage: 26.67,
        }
    );
    assert_eq!(
        status.vm_pool,
        PoolStatus {
            servers: 2,
            total_capacity_gb: 3000,
            used_capacity_gb: 800,
            available_capacity_gb: 2200,
            usage_percentage: 26.67,
        }
    );
    assert_eq!(
        status.system_reserve,
        ReserveStatus {
            total_servers: 5,
            total_capacity_gb: 1500,
            used_capacity_gb: 200,
            available_capacity_gb: 1300,
            usage_percentage: 13.33,
        }
    );
}

#[test]
fn status_serializes_to_the_specification_shape() {
    let status = pools_status(&status_example(), &settings());
    assert_eq!(
        serde_json::to_value(&status).unwrap(),
        json!({
            "k8s_pool": {
                "servers": 3,
                "total_capacity_gb": 4500,
                "used_capacity_gb": 1200,
                "available_capacity_gb": 3300,
                "usage_percentage": 26.67
            },
            "vm_pool": {
                "servers": 2,
                "total_capacity_gb": 3000,
                "used_capacity_gb": 800,
                "available_capacity_gb": 2200,
                "usage_percentage": 26.67
            },
            "system_reserve": {
                "total_servers": 5,
                "total_capacity_gb": 1500,
                "used_capacity_gb": 200,
                "available_capacity_gb": 1300,
                "usage_percentage": 13.33
            }
        })
    );
}

#[test]
fn status_pool_accessor_returns_each_pool() {
    let status = pools_status(&status_example(), &settings());
    assert_eq!(status.pool(Pool::K8s), &status.k8s_pool);
    assert_eq!(status.pool(Pool::Vm), &status.vm_pool);
}

#[test]
fn usage_percentage_is_rounded_to_two_decimals() {
    for (used, expected) in [
        (1, 0.07),
        (500, 33.33),
        (1000, 66.67),
        (1499, 99.93),
        (1500, 100.0),
    ] {
        let status = pools_status(&one_pool_server_with(Pool::Vm, used), &settings());
        assert_eq!(
            status.vm_pool.usage_percentage, expected,
            "{used} of 1500 GiB"
        );
        assert_eq!(status.vm_pool.available_capacity_gb, 1500 - used);
    }
}

// --- GET /api/v1/pools/health -----------------------------------------------------

#[test]
fn health_of_the_specification_example_is_healthy() {
    let mut nodes = status_example();
    // Without the stranded k8s volume on vm-2 (that case has its own test).
    nodes[4].claims.retain(|c| c.pool != Some(Pool::K8s));
    let report = pools_health(&nodes, &settings());
    assert_eq!(
        serde_json::to_value(&report).unwrap(),
        json!({
            "status": "healthy",
            "pools": {
                "k8s_pool": "healthy",
                "vm_pool": "healthy"
            },
            "warnings": [],
            "errors": []
        })
    );
}

#[test]
fn thresholds_are_above_75_warning_and_above_90_critical() {
    let cases = [
        (0, Health::Healthy),
        (1125, Health::Healthy),  // exactly 75 %
        (1126, Health::Warning),  // 75.07 %
        (1350, Health::Warning),  // exactly 90 %
        (1351, Health::Critical), // 90.07 %
        (1500, Health::Critical), // full
    ];
    for pool in Pool::ALL {
        for (used, expected) in cases {
            let report = pools_health(&one_pool_server_with(pool, used), &settings());
            let what = format!("{used} of 1500 GiB in the {pool} pool");
            let (this, other) = match pool {
                Pool::K8s => (report.pools.k8s_pool, report.pools.vm_pool),
                Pool::Vm => (report.pools.vm_pool, report.pools.k8s_pool),
            };
            assert_eq!(this, expected, "{what}");
            assert_eq!(other, Health::Healthy, "{what}");
            assert_eq!(report.status, expected, "{what}: overall");
            match expected {
                Health::Healthy => {
                    assert_eq!(report.warnings, Vec::<String>::new(), "{what}");
                    assert_eq!(report.errors, Vec::<String>::new(), "{what}");
                }
                Health::Warning => {
                    assert_eq!(report.warnings.len(), 1, "{what}: {:?}", report.warnings);
                    assert!(
                        report.warnings[0].contains(pool.api_key()),
                        "{what}: {:?}",
                        report.warnings
                    );
                    assert!(
                        report.warnings[0].contains("75"),
                        "{what}: {:?}",
                        report.warnings
                    );
                    assert_eq!(report.errors, Vec::<String>::new(), "{what}");
                }
                Health::Critical => {
                    assert_eq!(report.errors.len(), 1, "{what}: {:?}", report.errors);
                    assert!(
                        report.errors[0].contains(pool.api_key()),
                        "{what}: {:?}",
                        report.errors
                    );
                    assert!(
                        report.errors[0].contains("90"),
                        "{what}: {:?}",
                        report.errors
                    );
                    assert_eq!(report.warnings, Vec::<String>::new(), "{what}");
                }
            }
        }
    }
}

#[test]
fn thresholds_follow_the_settings() {
    let settings = PoolSettings {
        warning_percent: 50.0,
        critical_percent: 60.0,
        ..PoolSettings::default()
    };
    let health = |used| {
        pools_health(&one_pool_server_with(Pool::K8s, used), &settings)
            .pools
            .k8s_pool
    };
    assert_eq!(health(750), Health::Healthy);
    assert_eq!(health(751), Health::Warning);
    assert_eq!(health(900), Health::Warning);
    assert_eq!(health(901), Health::Critical);
}

#[test]
fn overall_status_is_the_worst_pool() {
    let mixed = |k8s_used, vm_used| {
        let mut k8s = server("k8s-1", Some(Pool::K8s));
        claim(&mut k8s, Some(Pool::K8s), k8s_used);
        let mut vm = server("vm-1", Some(Pool::Vm));
        claim(&mut vm, Some(Pool::Vm), vm_used);
        pools_health(&[k8s, vm], &settings())
    };

    let report = mixed(1200, 100);
    assert_eq!(
        (report.pools.k8s_pool, report.pools.vm_pool),
        (Health::Warning, Health::Healthy)
    );
    assert_eq!(report.status, Health::Warning);

    let report = mixed(1200, 1400);
    assert_eq!(
        (report.pools.k8s_pool, report.pools.vm_pool),
        (Health::Warning, Health::Critical)
    );
    assert_eq!(report.status, Health::Critical);
    assert_eq!((report.warnings.len(), report.errors.len()), (1, 1));

    let report = mixed(1400, 100);
    assert_eq!(
        (report.pools.k8s_pool, report.pools.vm_pool),
        (Health::Critical, Health::Healthy)
    );
    assert_eq!(report.status, Health::Critical);
}

#[test]
fn health_serializes_warning_and_critical_in_lowercase() {
    let mut k8s = server("k8s-1", Some(Pool::K8s));
    claim(&mut k8s, Some(Pool::K8s), 1200);
    let mut vm = server("vm-1", Some(Pool::Vm));
    claim(&mut vm, Some(Pool::Vm), 1400);
    let value = serde_json::to_value(pools_health(&[k8s, vm], &settings())).unwrap();
    assert_eq!(value["status"], "critical");
    assert_eq!(
        value["pools"],
        json!({"k8s_pool": "warning", "vm_pool": "critical"})
    );
    assert_eq!(value["warnings"].as_array().map(Vec::len), Some(1));
    assert_eq!(value["errors"].as_array().map(Vec::len), Some(1));
}

// --- A node that left its pool --------------------------------------------------

#[test]
fn volumes_left_behind_by_a_relabelled_node_are_reported_not_dropped() {
    let mut stays = server("k8s-1", Some(Pool::K8s));
    claim(&mut stays, Some(Pool::K8s), 300);
    // moved from k8s to vm, holding two k8s volumes
    let mut moved = server("moved", Some(Pool::Vm));
    claim(&mut moved, Some(Pool::K8s), 250);
    claim(&mut moved, Some(Pool::K8s), 150);
    claim(&mut moved, Some(Pool::Vm), 100);
    // lost its label, holding one k8s volume
    let mut unlabelled = server("unlabelled", None);
    claim(&mut unlabelled, Some(Pool::K8s), 200);
    let nodes = [stays, moved, unlabelled];

    let status = pools_status(&nodes, &settings());
    assert_eq!(
        status.k8s_pool,
        PoolStatus {
            servers: 1,
            total_capacity_gb: 1500,
            used_capacity_gb: 300,
            available_capacity_gb: 1200,
            usage_percentage: 20.0,
        },
        "only the pool's own servers count toward it"
    );
    assert_eq!(
        (status.vm_pool.servers, status.vm_pool.used_capacity_gb),
        (1, 100)
    );
    assert_eq!(
        status.system_reserve,
        ReserveStatus {
            total_servers: 2,
            total_capacity_gb: 600,
            used_capacity_gb: 400,
            available_capacity_gb: 200,
            usage_percentage: 66.67,
        },
        "the k8s volumes on the vm server sit in its reserve"
    );

    let report = pools_health(&nodes, &settings());
    assert_eq!(report.errors, Vec::<String>::new());
    assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
    let moved_warning = &report.warnings[0];
    assert!(moved_warning.contains("node moved "), "{moved_warning}");
    assert!(moved_warning.contains("k8s pool"), "{moved_warning}");
    assert!(moved_warning.contains("400 GiB"), "{moved_warning}");
    assert!(moved_warning.contains("2 volumes"), "{moved_warning}");
    assert!(moved_warning.contains("pool=k8s"), "{moved_warning}");
    let unlabelled_warning = &report.warnings[1];
    assert!(
        unlabelled_warning.contains("node unlabelled "),
        "{unlabelled_warning}"
    );
    assert!(
        unlabelled_warning.contains("200 GiB"),
        "{unlabelled_warning}"
    );
    assert!(
        unlabelled_warning.contains("1 volumes"),
        "{unlabelled_warning}"
    );
    assert_eq!(
        (report.pools.k8s_pool, report.pools.vm_pool),
        (Health::Healthy, Health::Healthy)
    );
    assert_eq!(
        report.status,
        Health::Warning,
        "a warning makes the whole report a warning"
    );
}

#[test]
fn every_pool_gib_is_either_counted_in_its_pool_or_named_in_a_warning() {
    let mut nodes = status_example();
    nodes.push(server("spare", None));
    claim(&mut nodes[5], Some(Pool::Vm), 70);
    find(&mut nodes, "k8s-2").pool = Some(Pool::Vm);
    let status = pools_status(&nodes, &settings());
    let report = pools_health(&nodes, &settings());
    for pool in Pool::ALL {
        let everywhere: u64 = nodes
            .iter()
            .map(|n| n.claimed_for_pool_gib(Some(pool)))
            .sum();
        let stranded: Vec<&NodeLedger> = nodes
            .iter()
            .filter(|n| n.pool != Some(pool) && n.claimed_for_pool_gib(Some(pool)) > 0)
            .collect();
        let stranded_gib: u64 = stranded
            .iter()
            .map(|n| n.claimed_for_pool_gib(Some(pool)))
            .sum();
        assert_eq!(
            status.pool(pool).used_capacity_gb + stranded_gib,
            everywhere,
            "{pool}"
        );
        for node in stranded {
            let held = format!("node {} is not in the {pool} pool", node.node);
            assert!(
                report.warnings.iter().any(|w| w.contains(&held)),
                "{held}: {:?}",
                report.warnings
            );
        }
    }
}

// --- Physical capacity and missing drives ----------------------------------------

#[test]
fn a_pool_server_short_of_physical_capacity_gets_a_warning_naming_it() {
    let nodes = [
        node_with("small", Some(Pool::K8s), 1799),
        node_with("exact", Some(Pool::Vm), 1800),
        node_with("not-a-pool-server", None, 100),
    ];
    let report = pools_health(&nodes, &settings());
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    let warning = &report.warnings[0];
    assert!(warning.contains("node small "), "{warning}");
    assert!(warning.contains("1799 GiB"), "{warning}");
    assert!(warning.contains("1800 GiB"), "{warning}");
    assert_eq!(report.errors, Vec::<String>::new());
    assert_eq!(
        (report.pools.k8s_pool, report.pools.vm_pool),
        (Health::Healthy, Health::Healthy)
    );
    assert_eq!(report.status, Health::Warning);
}

#[test]
fn physical_capacity_counts_every_drive_of_the_node() {
    let mut node = node_with("two-drives", Some(Pool::K8s), 900);
    node.drives.push(drive("two-drives", 1, 900));
    let report = pools_health(&[node], &settings());
    assert_eq!(report.warnings, Vec::<String>::new());
    assert_eq!(report.status, Health::Healthy);
}

#[test]
fn a_missing_drive_holding_claims_is_an_error_and_makes_the_cluster_critical() {
    let mut node = node_with("k8s-1", Some(Pool::K8s), 1000);
    node.drives.push(drive("k8s-1", 1, 1000));
    claim_on(&mut node, 0, Some(Pool::K8s), 100);
    claim_on(&mut node, 1, Some(Pool::K8s), 60);
    claim_on(&mut node, 1, None, 40);
    node.drives[1].missing = true;
    let missing = node.drives[1].clone();

    let report = pools_health(&[node], &settings());
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    let error = &report.errors[0];
    assert!(error.contains("node k8s-1"), "{error}");
    assert!(error.contains(&missing.uuid.to_string()), "{error}");
    assert!(error.contains(&missing.serial), "{error}");
    assert!(
        error.contains("100 GiB"),
        "{error}: the claims on the missing drive only"
    );
    // A missing drive's capacity is not there: the node is short of a pool server's space.
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(
        report.warnings[0].contains("has 1000 GiB of signed drives"),
        "{:?}",
        report.warnings
    );
    assert_eq!(
        (report.pools.k8s_pool, report.pools.vm_pool),
        (Health::Healthy, Health::Healthy)
    );
    assert_eq!(report.status, Health::Critical);
}

#[test]
fn a_quarantined_drive_is_an_error_and_its_space_is_not_counted() {
    let mut node = node_with("k8s-1", Some(Pool::K8s), 1000);
    node.drives.push(drive("k8s-1", 1, 1000));
    node.drives[1].quarantined = Some("its header says it belongs to node \"k8s-9\"".into());
    let quarantined = node.drives[1].clone();

    let report = pools_health(&[node], &settings());
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    let error = &report.errors[0];
    assert!(error.contains("node k8s-1"), "{error}");
    assert!(error.contains(&quarantined.uuid.to_string()), "{error}");
    assert!(
        error.contains("quarantined") && error.contains("k8s-9"),
        "{error}"
    );
    assert!(
        report.warnings[0].contains("has 1000 GiB of signed drives"),
        "{:?}",
        report.warnings
    );
    assert_eq!(report.status, Health::Critical);
}

#[test]
fn thresholds_compare_exact_usage_not_the_rounded_percentage() {
    // 100 servers: 112501 of 150000 GiB is 75.0007 %, shown as 75.0 but above 75 %.
    let mut nodes = servers("k8s", Pool::K8s, 100);
    for node in nodes.iter_mut().take(75) {
        claim(node, Some(Pool::K8s), 1500);
    }
    claim(&mut nodes[99], Some(Pool::K8s), 1);
    let status = pools_status(&nodes, &settings());
    assert_eq!(status.k8s_pool.used_capacity_gb, 112501);
    assert_eq!(status.k8s_pool.usage_percentage, 75.0);
    assert_eq!(
        pools_health(&nodes, &settings()).pools.k8s_pool,
        Health::Warning
    );
}

#[test]
fn a_pool_without_servers_whose_volumes_remain_elsewhere_is_critical() {
    let mut node = server("was-k8s", None);
    claim(&mut node, Some(Pool::K8s), 200);
    let report = pools_health(&[node], &settings());
    assert_eq!(report.pools.k8s_pool, Health::Critical);
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains("k8s_pool has no servers but 200 GiB")),
        "{:?}",
        report.errors
    );
    assert_eq!(report.status, Health::Critical);
}

#[test]
fn an_overcommitted_system_reserve_is_a_warning() {
    let mut node = server("k8s-1", Some(Pool::K8s));
    claim(&mut node, None, 500);
    let report = pools_health(&[node], &settings());
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("the system reserve holds 500 GiB, more than its 300 GiB")),
        "{:?}",
        report.warnings
    );
    assert_eq!(report.status, Health::Warning);
}

// --- Empty cluster -------------------------------------------------------------------

#[test]
fn an_empty_cluster_is_all_zeros_and_healthy() {
    let zero = PoolStatus {
        servers: 0,
        total_capacity_gb: 0,
        used_capacity_gb: 0,
        available_capacity_gb: 0,
        usage_percentage: 0.0,
    };
    let zero_reserve = ReserveStatus {
        total_servers: 0,
        total_capacity_gb: 0,
        used_capacity_gb: 0,
        available_capacity_gb: 0,
        usage_percentage: 0.0,
    };
    // No nodes at all, and nodes that are in no pool and hold nothing.
    for nodes in [Vec::new(), vec![server("a", None), server("b", None)]] {
        let status = pools_status(&nodes, &settings());
        assert_eq!(
            status,
            PoolsStatus {
                k8s_pool: zero.clone(),
                vm_pool: zero.clone(),
                system_reserve: zero_reserve.clone(),
            }
        );
        let report = pools_health(&nodes, &settings());
        assert_eq!(
            report,
            HealthReport {
                status: Health::Healthy,
                pools: PoolHealths {
                    k8s_pool: Health::Healthy,
                    vm_pool: Health::Healthy,
                },
                warnings: Vec::new(),
                errors: Vec::new(),
            }
        );
    }
}

#[test]
fn a_quarantined_node_is_a_health_error_naming_it_and_why() {
    let nodes = [server("n1", Some(Pool::K8s))];
    assert_eq!(
        cluster_health(&nodes, &[], &settings()),
        pools_health(&nodes, &settings())
    );
    let bad = crate::ledger::Quarantined {
        node: "n2".into(),
        reason: "vdrive.io/virtual-drive-claims is not a JSON object".into(),
    };
    let report = cluster_health(&nodes, &[bad], &settings());
    assert_eq!(report.status, Health::Critical);
    assert_eq!(report.pools.k8s_pool, Health::Healthy);
    assert_eq!(report.errors.len(), 1);
    let error = &report.errors[0];
    assert!(error.contains("node n2 is quarantined"), "{error}");
    assert!(error.contains("not a JSON object"), "{error}");
    assert!(error.contains("kubectl edit node n2"), "{error}");
}
