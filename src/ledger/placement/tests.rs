//! Node choice and capacity answers on hand-made node ledgers.

use uuid::Uuid;

use super::*;
use crate::allocator::Ratio;
use crate::drive::Backend;
use crate::drive::DriveType::{self, Qlc, Tlc};
use crate::ledger::{Claim, PhysicalDrive};

fn drive(n: u128, drive_type: DriveType, capacity_gib: u64, backend: Backend) -> PhysicalDrive {
    PhysicalDrive {
        uuid: Uuid::from_u128(n),
        serial: format!("SN{n}"),
        drive_type,
        capacity_gib,
        backend,
        missing: false,
        quarantined: None,
    }
}

fn node(name: &str, pool: Option<Pool>, drives: Vec<PhysicalDrive>) -> Arc<NodeLedger> {
    Arc::new(NodeLedger {
        node: name.into(),
        pool,
        drives,
        claims: Vec::new(),
    })
}

/// Claims `size_gib` at the start of the node's first drive for `pool`.
fn with_claim(node: Arc<NodeLedger>, pool: Option<Pool>, size_gib: u64) -> Arc<NodeLedger> {
    let mut node = Arc::unwrap_or_clone(node);
    node.claims.push(Claim {
        virtual_uuid: Uuid::from_u128(1000),
        volume_id: "v".into(),
        volume_name: "pvc".into(),
        owner: "default:pvc".into(),
        pool,
        physical_uuid: node.drives[0].uuid,
        offset_gib: 0,
        size_gib,
        part: 0,
        fixed: false,
        releasing: false,
        spec: None,
    });
    assert_eq!(node.check_invariants(), Ok(()));
    Arc::new(node)
}

/// A class of `tlc:qlc` volumes over one drive core, 1 GiB minimum drive size.
fn class(pool: Option<Pool>, tlc: u32, qlc: u32) -> VolumeClass {
    let mut layout = Request::with_ratio(1, Ratio { tlc, qlc }, 1);
    layout.min_drive_gib = 1;
    VolumeClass { pool, layout }
}

fn names(nodes: &[Arc<NodeLedger>]) -> Vec<&str> {
    nodes.iter().map(|n| n.node.as_str()).collect()
}

fn cluster() -> Vec<Arc<NodeLedger>> {
    vec![
        node(
            "small",
            Some(Pool::K8s),
            vec![drive(1, Tlc, 100, Backend::Loop)],
        ),
        node(
            "big",
            Some(Pool::K8s),
            vec![drive(2, Tlc, 900, Backend::Loop)],
        ),
        node(
            "vm",
            Some(Pool::Vm),
            vec![drive(3, Qlc, 5000, Backend::Loop)],
        ),
        node("bare", Some(Pool::K8s), vec![]),
        node("plain", None, vec![drive(4, Tlc, 500, Backend::Loop)]),
    ]
}

#[test]
fn without_requirements_every_node_of_the_pool_with_drives_most_room_first() {
    let pools = PoolSettings::default();
    let k8s = class(Some(Pool::K8s), 1, 0);
    let nodes = cluster();
    let chosen = candidate_nodes(&nodes, &k8s, &Wanted::Anywhere, &pools).unwrap();
    assert_eq!(names(&chosen), ["big", "small"]);
    let any = candidate_nodes(&nodes, &class(None, 1, 0), &Wanted::Anywhere, &pools).unwrap();
    assert_eq!(
        names(&any),
        ["big", "plain", "small", "vm"],
        "vm has no TLC room"
    );
    let err = candidate_nodes(&nodes[3..4], &k8s, &Wanted::Anywhere, &pools).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no node in the k8s pool has signed drives: sign drives with `vdrive sign` and label servers pool=k8s|vm"
    );
}

#[test]
fn preferred_nodes_come_first_then_the_rest_by_room() {
    let pools = PoolSettings::default();
    let k8s = class(Some(Pool::K8s), 1, 0);
    let wanted = Wanted::Preferred(vec!["small".into(), "vm".into()]);
    let chosen = candidate_nodes(&cluster(), &k8s, &wanted, &pools).unwrap();
    assert_eq!(names(&chosen), ["small", "big"], "vm is outside the pool");
}

#[test]
fn requisite_nodes_only_and_each_refusal_says_why() {
    let pools = PoolSettings::default();
    let k8s = class(Some(Pool::K8s), 1, 0);
    let wanted = Wanted::Only(vec!["small".into()]);
    let chosen = candidate_nodes(&cluster(), &k8s, &wanted, &pools).unwrap();
    assert_eq!(names(&chosen), ["small"]);
    let wanted = Wanted::Only(vec![
        "vm".into(),
        "bare".into(),
        "plain".into(),
        "ghost".into(),
    ]);
    let err = candidate_nodes(&cluster(), &k8s, &wanted, &pools).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no requested node can take a volume in the k8s pool: vm is not in the k8s pool (label pool=vm); bare has no signed drives; plain is not in the k8s pool (label pool=none); ghost has no signed drives and no pool label"
    );
}

#[test]
fn room_is_the_free_space_of_the_class_types_within_the_pool_share() {
    let pools = PoolSettings::default();
    let mixed = node(
        "mixed",
        Some(Pool::K8s),
        vec![
            drive(1, Tlc, 1000, Backend::Dm),
            drive(2, Qlc, 4000, Backend::Dm),
        ],
    );
    assert_eq!(room_gib(&mixed, &class(None, 1, 0), &pools), 1000);
    assert_eq!(room_gib(&mixed, &class(None, 0, 1), &pools), 4000);
    assert_eq!(room_gib(&mixed, &class(None, 1, 4), &pools), 5000);
    assert_eq!(
        room_gib(&mixed, &class(Some(Pool::K8s), 1, 4), &pools),
        1500
    );
    let used = with_claim(mixed, Some(Pool::K8s), 600);
    assert_eq!(room_gib(&used, &class(Some(Pool::K8s), 1, 4), &pools), 900);
    assert_eq!(room_gib(&used, &class(None, 1, 0), &pools), 400);
}

#[test]
fn the_largest_volume_honours_each_nodes_own_backend() {
    let pools = PoolSettings::default();
    let tlc = class(None, 1, 0);
    let drives = |backend| vec![drive(1, Tlc, 600, backend), drive(2, Tlc, 500, backend)];
    let on_loop = node("loop", None, drives(Backend::Loop));
    let on_dm = node("dm", None, drives(Backend::Dm));
    assert_eq!(
        largest_volume_gib(&on_loop, &tlc, room_gib(&on_loop, &tlc, &pools)),
        600
    );
    assert_eq!(
        largest_volume_gib(&on_dm, &tlc, room_gib(&on_dm, &tlc, &pools)),
        1100
    );
    // Two cores need two drives: nothing on loop, the whole room on dm.
    let mut two_cores = tlc;
    two_cores.layout.drive_cores = 2;
    assert_eq!(largest_volume_gib(&on_loop, &two_cores, 1100), 0);
    assert_eq!(largest_volume_gib(&on_dm, &two_cores, 1100), 1100);
    // A fixed-size class fits whole or not at all.
    let fixed = VolumeClass {
        pool: None,
        layout: Request::fixed(2, 400, 1),
    };
    assert_eq!(largest_volume_gib(&on_dm, &fixed, 1100), 800);
    assert_eq!(largest_volume_gib(&on_loop, &fixed, 1100), 0);
    assert_eq!(largest_volume_gib(&on_dm, &fixed, 700), 0);
}

#[test]
fn capacity_adds_up_the_nodes_asked_about_in_the_pool() {
    let pools = PoolSettings::default();
    let nodes = cluster();
    let k8s = class(Some(Pool::K8s), 1, 0);
    assert_eq!(
        capacity(&nodes, &k8s, None, &pools),
        Capacity {
            available_gib: 1000,
            largest_gib: 900,
            minimum_gib: 1
        }
    );
    assert_eq!(
        capacity(&nodes, &k8s, Some("small"), &pools).available_gib,
        100
    );
    assert_eq!(capacity(&nodes, &k8s, Some("vm"), &pools).available_gib, 0);
    let fixed = VolumeClass {
        pool: None,
        layout: Request::fixed(3, 100, 1),
    };
    assert_eq!(capacity(&nodes, &fixed, None, &pools).minimum_gib, 300);
}

#[test]
fn when_every_node_refuses_the_first_one_speaks_for_all() {
    let failures: Vec<LedgerError> = (0..5)
        .map(|i| LedgerError::PoolShareExhausted {
            node: format!("n{i}"),
            pool: Pool::K8s,
            need_gib: 10,
            left_gib: 0,
            share_gib: 1500,
        })
        .collect();
    assert!(failures.iter().all(LedgerError::another_node_may_fit));
    let text = LedgerError::NoNodeFits { failures }.to_string();
    assert!(text.starts_with("node n0 has 0 GiB left"), "{text}");
    assert!(text.ends_with("; and 2 more nodes"), "{text}");
    assert_eq!(text.matches("GiB left").count(), 3, "{text}");
}
