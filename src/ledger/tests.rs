//! Ledger behaviour on the real embedded store (a redb file in a temp dir).

use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::allocator::{AllocError, Ratio, Shape};
use crate::drive::Backend;
use crate::drive::DriveType::{self, Qlc, Tlc};

const NODE: &str = "node-a";

/// A drive of a device-mapper node, where a volume may have any number of parts.
pub(super) fn drive(n: u128, drive_type: DriveType, capacity_gib: u64) -> PhysicalDrive {
    PhysicalDrive {
        uuid: Uuid::from_u128(n),
        serial: format!("SN{n}"),
        drive_type,
        capacity_gib,
        backend: Backend::Dm,
        missing: false,
        quarantined: None,
    }
}

/// Drives reported with blank headers (never owned): the ledger alone decides.
pub(super) fn blank(drives: Vec<PhysicalDrive>) -> Vec<ReportedDrive> {
    drives
        .into_iter()
        .map(|drive| ReportedDrive {
            drive,
            header: DriveHeader::Blank,
        })
        .collect()
}

/// A drive of a loop node, where a volume is one virtual drive.
fn loop_drive(n: u128, drive_type: DriveType, capacity_gib: u64) -> PhysicalDrive {
    PhysicalDrive {
        backend: Backend::Loop,
        ..drive(n, drive_type, capacity_gib)
    }
}

pub(super) fn tlc_request(name: &str, gib: u64) -> ClaimRequest {
    let mut layout = Request::with_ratio(gib, Ratio { tlc: 1, qlc: 0 }, 1);
    layout.min_drive_gib = 1;
    ClaimRequest {
        volume_name: name.to_string(),
        owner: format!("default:{name}"),
        pool: None,
        layout,
        accepts: SizeRange::exactly(gib),
        access: None,
        image: None,
        image_format: None,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    ledger: Ledger<EmbeddedStore>,
}

fn fixture(drives: Vec<PhysicalDrive>) -> (tokio::runtime::Runtime, Fixture) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let ledger = Ledger::new(EmbeddedStore::open(&path).unwrap(), PoolSettings::default());
    rt.block_on(ledger.sync_drives(NODE, blank(drives)))
        .unwrap();
    (
        rt,
        Fixture {
            _dir: dir,
            path,
            ledger,
        },
    )
}

#[test]
fn a_claim_is_recorded_and_survives_reopening() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 3840)]);
    let volume = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("pvc-1", 100)))
        .unwrap();
    assert_eq!(volume.capacity_gib, 100);
    assert_eq!(volume.node, NODE);
    assert_eq!(volume.owner, "default:pvc-1");
    assert_eq!(volume.extents.len(), 1);
    assert_eq!(volume.extents[0].drive_type, Some(Tlc));
    let before = rt.block_on(f.ledger.node(NODE)).unwrap();
    drop(f.ledger);
    let reopened = Ledger::new(
        EmbeddedStore::open(&f.path).unwrap(),
        PoolSettings::default(),
    );
    assert_eq!(rt.block_on(reopened.node(NODE)).unwrap(), before);
    assert_eq!(
        rt.block_on(reopened.volume(&volume.id)).unwrap(),
        Some(volume)
    );
}

#[test]
fn the_same_name_is_the_same_volume_and_another_size_conflicts() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 3840)]);
    let first = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("pvc-1", 100)))
        .unwrap();
    let again = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("pvc-1", 100)))
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(rt.block_on(f.ledger.node(NODE)).unwrap().claims.len(), 1);
    let err = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("pvc-1", 200)))
        .unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::NameConflict {
                existing_gib: 100,
                requested: SizeRange {
                    min_gib: 200,
                    max_gib: Some(200)
                },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn release_frees_the_space_and_unknown_volumes_are_fine() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 1000)]);
    let volume = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("a", 1000)))
        .unwrap();
    assert!(
        rt.block_on(f.ledger.claim(NODE, &tlc_request("b", 1)))
            .is_err(),
        "drive is full"
    );
    assert_eq!(
        rt.block_on(f.ledger.release(&volume.id)).unwrap(),
        Some(volume.clone())
    );
    assert_eq!(rt.block_on(f.ledger.release(&volume.id)).unwrap(), None);
    assert_eq!(
        rt.block_on(f.ledger.release("no-such-volume")).unwrap(),
        None
    );
    assert_eq!(rt.block_on(f.ledger.node(NODE)).unwrap().claimed_gib(), 0);
    rt.block_on(f.ledger.claim(NODE, &tlc_request("b", 1000)))
        .unwrap();
}

#[test]
fn a_retired_volume_keeps_its_space_until_its_node_releases_it() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 1000)]);
    let volume = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("a", 1000)))
        .unwrap();
    let retired = rt
        .block_on(f.ledger.retire_on(NODE, &volume.id))
        .unwrap()
        .unwrap();
    assert!(retired.releasing);
    // Retiring again changes nothing; the volume is gone for every reader but
    // the node that erases it.
    let revision = rt.block_on(f.ledger.store().load(NODE)).unwrap().revision;
    rt.block_on(f.ledger.retire_on(NODE, &volume.id)).unwrap();
    assert_eq!(
        rt.block_on(f.ledger.store().load(NODE)).unwrap().revision,
        revision
    );
    let node = rt.block_on(f.ledger.node(NODE)).unwrap();
    assert!(node.volumes().is_empty());
    assert_eq!(node.releasing_volumes(), vec![retired.clone()]);
    assert_eq!(rt.block_on(f.ledger.volume_by_name("a")).unwrap(), None);
    assert!(matches!(
        rt.block_on(f.ledger.grow(&volume.id, 1000)),
        Err(LedgerError::VolumeNotFound(_))
    ));
    // Its extent is still taken: nothing is handed out unerased.
    assert!(
        rt.block_on(f.ledger.claim(NODE, &tlc_request("a", 1)))
            .is_err()
    );
    assert_eq!(
        rt.block_on(f.ledger.release_on(NODE, &volume))
            .unwrap()
            .map(|v| v.id),
        Some(volume.id.clone())
    );
    let again = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("a", 1000)))
        .unwrap();
    assert_ne!(again.id, volume.id, "a new volume under the old name");
}

#[test]
fn a_release_frees_only_what_was_erased() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 1000)]);
    let node = |rt: &tokio::runtime::Runtime| rt.block_on(f.ledger.node(NODE)).unwrap();
    // a is erased as it is; then a claim of it comes back from another drive's
    // header (`vdrive drives adopt`) before the release.
    let a = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("a", 100)))
        .unwrap();
    let mut adopted = node(&rt).claims_of(&a.id).remove(0);
    adopted.virtual_uuid = uuid::Uuid::new_v4();
    adopted.physical_uuid = drive(2, Tlc, 1000).uuid;
    adopted.part = 1;
    adopted.size_gib = 50;
    rt.block_on(
        f.ledger
            .adopt(NODE, drive(2, Tlc, 1000), vec![adopted.clone()]),
    )
    .unwrap();
    assert_eq!(
        rt.block_on(f.ledger.release_on(NODE, &a))
            .unwrap()
            .map(|v| v.capacity_gib),
        Some(150),
        "the volume as the ledger had it"
    );
    assert_eq!(
        node(&rt).claims_of(&a.id),
        [adopted],
        "the claim that was not erased stays"
    );

    // b is erased at 100 GiB, then grows in place before the release.
    let b = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("b", 100)))
        .unwrap();
    rt.block_on(f.ledger.grow(&b.id, 200)).unwrap();
    rt.block_on(f.ledger.release_on(NODE, &b)).unwrap();
    assert_eq!(
        node(&rt).volume(&b.id).map(|v| v.capacity_gib),
        Some(200),
        "a claim larger than what was erased stays whole"
    );
    let grown = node(&rt).volume(&b.id).unwrap();
    rt.block_on(f.ledger.release_on(NODE, &grown)).unwrap();
    assert_eq!(node(&rt).volume(&b.id), None);
}

#[test]
fn seed_capacity_management_example() {
    // 4 × 3840 GiB; cluster A takes 6000, cluster B 5000: 4360 GiB left, 8000 does not fit.
    let drives = (1..=4).map(|n| drive(n, Tlc, 3840)).collect();
    let (rt, f) = fixture(drives);
    rt.block_on(f.ledger.claim(NODE, &tlc_request("cluster-a", 6000)))
        .unwrap();
    rt.block_on(f.ledger.claim(NODE, &tlc_request("cluster-b", 5000)))
        .unwrap();
    let node = rt.block_on(f.ledger.node(NODE)).unwrap();
    assert_eq!(node.capacity_gib() - node.claimed_gib(), 4360);
    let err = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("cluster-c", 8000)))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Insufficient drive capacity: need 8000 GiB, available 4360 GiB"
    );
}

#[test]
fn seed_physical_drive_example_three_tenants_on_one_drive() {
    // "Physical Drive (3840 GiB): VD1 → A (1000), VD2 → B (1500), Available: 1340"
    let (rt, f) = fixture(vec![drive(1, Tlc, 3840)]);
    let a = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("cluster-a", 1000)))
        .unwrap();
    let b = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("cluster-b", 1500)))
        .unwrap();
    assert_eq!(
        (a.extents[0].offset_gib, b.extents[0].offset_gib),
        (0, 1000)
    );
    let node = rt.block_on(f.ledger.node(NODE)).unwrap();
    assert_eq!(
        node.free_extents(&node.drives[0]),
        vec![Extent::new(2500, 1340)]
    );
}

#[test]
fn a_failed_claim_writes_nothing() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 1000), drive(2, Qlc, 1000)]);
    let before = rt.block_on(f.ledger.store().load(NODE)).unwrap();
    let mut request = tlc_request("big", 5000);
    request.layout = Request::with_ratio(1500, Ratio { tlc: 1, qlc: 0 }, 1);
    let err = rt.block_on(f.ledger.claim(NODE, &request)).unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::Allocation(AllocError::InsufficientDrives { .. })
        ),
        "{err}"
    );
    let after = rt.block_on(f.ledger.store().load(NODE)).unwrap();
    assert_eq!(
        (before.revision, before.ledger),
        (after.revision, after.ledger)
    );
}

#[test]
fn a_mixed_volume_lists_tlc_extents_first() {
    let (rt, f) = fixture(vec![drive(1, Qlc, 7680), drive(2, Tlc, 3840)]);
    let mut request = tlc_request("mixed", 7000);
    request.layout = Request::with_ratio(7000, Ratio { tlc: 1, qlc: 4 }, 3).enforce_per_type(false);
    let volume = rt.block_on(f.ledger.claim(NODE, &request)).unwrap();
    let layout: Vec<(Option<DriveType>, u64)> = volume
        .extents
        .iter()
        .map(|e| (e.drive_type, e.size_gib))
        .collect();
    assert_eq!(
        layout,
        vec![(Some(Tlc), 1400), (Some(Qlc), 2800), (Some(Qlc), 2800)]
    );
}

#[test]
fn pool_membership_and_share_bound_a_claim() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 3840)]);
    let mut request = tlc_request("pvc", 1000);
    request.pool = Some(Pool::K8s);
    let err = rt.block_on(f.ledger.claim(NODE, &request)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "node node-a is not in the k8s pool (its pool label is none). Label it with `kubectl label node node-a pool=k8s`, or place the volume on a node of that pool"
    );
    rt.block_on(f.ledger.set_pool(NODE, Some(Pool::K8s)))
        .unwrap();
    rt.block_on(f.ledger.claim(NODE, &request)).unwrap();
    request.volume_name = "pvc-2".into();
    request.layout = tlc_request("x", 501).layout;
    let err = rt.block_on(f.ledger.claim(NODE, &request)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "node node-a has 500 GiB left of its 1500 GiB k8s pool share, but 501 GiB were requested. Request less capacity, free volumes on this node, or add servers to the k8s pool"
    );
    request.layout = tlc_request("x", 500).layout;
    rt.block_on(f.ledger.claim(NODE, &request)).unwrap();
}

#[test]
fn vanished_drives_keep_their_claims_and_empty_ones_go() {
    let (rt, f) = fixture(vec![
        drive(1, Tlc, 1000),
        drive(2, Tlc, 1000),
        drive(3, Tlc, 1000),
    ]);
    let volume = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("a", 1000)))
        .unwrap();
    let held_by = volume.extents[0].physical_uuid;
    let sync = rt
        .block_on(f.ledger.sync_drives(NODE, blank(vec![])))
        .unwrap();
    assert_eq!(sync.missing_with_claims, vec![held_by]);
    assert_eq!(
        sync.ledger.drives.len(),
        1,
        "only the drive that holds a claim is kept"
    );
    assert!(sync.ledger.drives[0].missing);
    assert!(
        rt.block_on(f.ledger.claim(NODE, &tlc_request("b", 1)))
            .is_err(),
        "a missing drive takes no claims"
    );
    // releasing its last volume lets the missing drive go
    let (rt2, g) = fixture(vec![drive(1, Tlc, 1000)]);
    let only = rt2
        .block_on(g.ledger.claim(NODE, &tlc_request("x", 10)))
        .unwrap();
    rt2.block_on(g.ledger.sync_drives(NODE, blank(vec![])))
        .unwrap();
    rt2.block_on(g.ledger.release(&only.id)).unwrap();
    assert!(rt2.block_on(g.ledger.node(NODE)).unwrap().drives.is_empty());
    // it comes back
    let sync = rt
        .block_on(f.ledger.sync_drives(NODE, blank(vec![drive(1, Tlc, 1000)])))
        .unwrap();
    assert!(sync.missing_with_claims.is_empty());
    assert!(!sync.ledger.drives.iter().any(|d| d.missing));
}

#[test]
fn a_drive_cannot_shrink_below_its_claims() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 1000)]);
    rt.block_on(f.ledger.claim(NODE, &tlc_request("a", 800)))
        .unwrap();
    let err = rt
        .block_on(f.ledger.sync_drives(NODE, blank(vec![drive(1, Tlc, 500)])))
        .unwrap_err();
    assert!(err.to_string().contains("claims reach 800 GiB"), "{err}");
    assert!(
        rt.block_on(f.ledger.sync_drives(NODE, blank(vec![drive(1, Tlc, 0)])))
            .is_err()
    );
    assert!(
        rt.block_on(
            f.ledger
                .sync_drives(NODE, blank(vec![drive(1, Tlc, 9), drive(1, Tlc, 9)]))
        )
        .is_err()
    );
}

#[test]
fn a_second_process_cannot_open_the_same_ledger() {
    let (_rt, f) = fixture(vec![]);
    let err = EmbeddedStore::open(&f.path)
        .err()
        .expect("the file is locked");
    assert!(
        err.to_string().contains(&f.path.display().to_string()),
        "{err}"
    );
}

/// Many concurrent claims through two ledgers sharing one store: the per-node lock
/// does not help across ledgers, so this exercises the compare-and-swap retry.
#[test]
fn concurrent_claims_never_double_book() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("ledger.redb")).unwrap();
    let ledgers = [
        Arc::new(Ledger::new(store.clone(), PoolSettings::default())),
        Arc::new(Ledger::new(store, PoolSettings::default())),
    ];
    let drives = (1..=4).map(|n| drive(n, Tlc, 1000)).collect();
    rt.block_on(ledgers[0].sync_drives(NODE, blank(drives)))
        .unwrap();
    let results = rt.block_on(async {
        let tasks: Vec<_> = (0..120)
            .map(|i| {
                let ledger = ledgers[i % 2].clone();
                tokio::spawn(
                    async move { ledger.claim(NODE, &tlc_request(&format!("v{i}"), 40)).await },
                )
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        results
    });
    let node = rt.block_on(ledgers[0].node(NODE)).unwrap();
    node.check_invariants().unwrap();
    let made: Vec<&Volume> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    // 4000 GiB / 40 = 100 volumes fit exactly; the rest are refused, not double-booked.
    assert_eq!(made.len(), 100);
    assert_eq!(node.claimed_gib(), 4000);
    for volume in made {
        assert_eq!(node.volume(&volume.id).as_ref(), Some(volume));
    }
}

// ---- property tests -----------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Claim {
        gib: u64,
        cores: u32,
        tlc: u32,
        qlc: u32,
    },
    Release {
        pick: usize,
    },
    Grow {
        pick: usize,
        by_gib: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u64..1500, 1u32..4, 0u32..3, 0u32..3).prop_map(|(gib, cores, tlc, qlc)| Op::Claim { gib, cores, tlc, qlc }),
        2 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        2 => (any::<usize>(), 1u64..800).prop_map(|(pick, by_gib)| Op::Grow { pick, by_gib }),
    ]
}

fn drives_strategy() -> impl Strategy<Value = Vec<PhysicalDrive>> {
    prop::collection::vec((prop::bool::ANY, 1u64..3000), 1..6).prop_map(|spec| {
        spec.into_iter()
            .enumerate()
            .map(|(i, (tlc, gib))| drive(i as u128 + 1, if tlc { Tlc } else { Qlc }, gib))
            .collect()
    })
}

fn assert_consistent(node: &NodeLedger) {
    node.check_invariants().unwrap();
    for drive in &node.drives {
        let claimed: u64 = node
            .claims
            .iter()
            .filter(|c| c.physical_uuid == drive.uuid)
            .map(|c| c.size_gib)
            .sum();
        let free: u64 = node.free_extents(drive).iter().map(|e| e.size_gib).sum();
        assert_eq!(
            claimed + free,
            drive.capacity_gib,
            "claimed + free = capacity on {}",
            drive.uuid
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn random_claims_growths_and_releases_keep_the_ledger_sound(drives in drives_strategy(), ops in prop::collection::vec(op(), 1..40)) {
        let (rt, f) = fixture(drives);
        let mut live: Vec<String> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let before = rt.block_on(f.ledger.store().load(NODE)).unwrap();
            match *op {
                Op::Claim { gib, cores, tlc, qlc } => {
                    let mut request = tlc_request(&format!("v{i}"), gib);
                    request.layout = Request::with_ratio(gib, Ratio { tlc, qlc }, cores).enforce_per_type(i % 2 == 0);
                    request.layout.min_drive_gib = 64;
                    match rt.block_on(f.ledger.claim(NODE, &request)) {
                        Ok(volume) => {
                            prop_assert_eq!(volume.capacity_gib, gib);
                            live.push(volume.id);
                        }
                        Err(_) => {
                            let after = rt.block_on(f.ledger.store().load(NODE)).unwrap();
                            prop_assert_eq!(&before.revision, &after.revision, "a failed claim changed the revision");
                            prop_assert_eq!(&before.ledger, &after.ledger, "a failed claim changed the ledger");
                        }
                    }
                }
                Op::Release { pick } if !live.is_empty() => {
                    let id = live.remove(pick % live.len());
                    prop_assert!(rt.block_on(f.ledger.release(&id)).unwrap().is_some());
                }
                Op::Release { .. } => {}
                Op::Grow { pick, by_gib } if !live.is_empty() => {
                    let id = &live[pick % live.len()];
                    let old = rt.block_on(f.ledger.volume(id)).unwrap().unwrap();
                    match rt.block_on(f.ledger.grow(id, old.capacity_gib + by_gib)) {
                        Ok(grown) => {
                            prop_assert_eq!(grown.capacity_gib, old.capacity_gib + by_gib);
                            // Growth only appends: the old extents keep their place
                            // (the last one may be longer), new ones are of its type.
                            let kept = old.extents.len() - 1;
                            prop_assert_eq!(&grown.extents[..kept], &old.extents[..kept]);
                            let last = &old.extents[kept];
                            prop_assert_eq!(grown.extents[kept].virtual_uuid, last.virtual_uuid);
                            prop_assert_eq!(grown.extents[kept].offset_gib, last.offset_gib);
                            for extent in &grown.extents[kept..] {
                                prop_assert_eq!(extent.drive_type, last.drive_type);
                            }
                        }
                        Err(_) => {
                            let after = rt.block_on(f.ledger.store().load(NODE)).unwrap();
                            prop_assert_eq!(&before.revision, &after.revision, "a failed growth changed the revision");
                        }
                    }
                }
                Op::Grow { .. } => {}
            }
            assert_consistent(&rt.block_on(f.ledger.node(NODE)).unwrap());
        }
        let last = rt.block_on(f.ledger.node(NODE)).unwrap();
        prop_assert_eq!(last.volumes().len(), live.len());
        drop(f.ledger);
        let reopened = Ledger::new(EmbeddedStore::open(&f.path).unwrap(), PoolSettings::default());
        prop_assert_eq!(rt.block_on(reopened.node(NODE)).unwrap(), last);
    }
}

// ---- growth ---------------------------------------------------------------------

/// The volume's extents as (drive number, offset, size), in device order.
fn layout_of(volume: &Volume) -> Vec<(u128, u64, u64)> {
    volume
        .extents
        .iter()
        .map(|e| (e.physical_uuid.as_u128(), e.offset_gib, e.size_gib))
        .collect()
}

/// Asserts that `attempt` failed and left the node's ledger as it was.
fn refused_and_unwritten(
    rt: &tokio::runtime::Runtime,
    f: &Fixture,
    attempt: impl FnOnce() -> Result<Volume, LedgerError>,
) -> LedgerError {
    let before = rt.block_on(f.ledger.store().load(NODE)).unwrap();
    let err = attempt().expect_err("the growth must be refused");
    let after = rt.block_on(f.ledger.store().load(NODE)).unwrap();
    assert_eq!(
        (before.revision, before.ledger),
        (after.revision, after.ledger),
        "a refused growth wrote nothing"
    );
    err
}

#[test]
fn a_volume_grows_in_place_when_the_next_gib_are_free() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 1000), drive(2, Tlc, 1000)]);
    let a = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("a", 100)))
        .unwrap();
    let grown = rt.block_on(f.ledger.grow(&a.id, 300)).unwrap();
    assert_eq!(grown.capacity_gib, 300);
    assert_eq!(layout_of(&grown), [(1, 0, 300)], "still one virtual drive");
    assert_eq!(grown.extents[0].virtual_uuid, a.extents[0].virtual_uuid);
    assert!(matches!(
        rt.block_on(f.ledger.grow("nope", 5)),
        Err(LedgerError::VolumeNotFound(_))
    ));
}

#[test]
fn growing_to_the_size_it_has_or_less_changes_nothing() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 1000)]);
    let a = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("a", 100)))
        .unwrap();
    let grown = rt.block_on(f.ledger.grow(&a.id, 300)).unwrap();
    let revision = rt.block_on(f.ledger.store().load(NODE)).unwrap().revision;
    for again in [300, 200] {
        assert_eq!(rt.block_on(f.ledger.grow(&a.id, again)).unwrap(), grown);
    }
    assert_eq!(
        rt.block_on(f.ledger.store().load(NODE)).unwrap().revision,
        revision,
        "a repeated expansion writes nothing"
    );
}

#[test]
fn a_blocked_volume_adds_a_virtual_drive_on_another_drive_of_its_type() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 1000), drive(2, Tlc, 500)]);
    let a = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("a", 100)))
        .unwrap();
    // b fills the rest of drive 1 right behind a
    let b = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("b", 900)))
        .unwrap();
    assert_eq!(layout_of(&b), [(1, 100, 900)]);
    let grown = rt.block_on(f.ledger.grow(&a.id, 300)).unwrap();
    assert_eq!(layout_of(&grown), [(1, 0, 100), (2, 0, 200)]);
    // the new part comes after the old one, and it grows in place from now on
    let grown = rt.block_on(f.ledger.grow(&a.id, 400)).unwrap();
    assert_eq!(layout_of(&grown), [(1, 0, 100), (2, 0, 300)]);
    let node = rt.block_on(f.ledger.node(NODE)).unwrap();
    let mut parts: Vec<u32> = node
        .claims
        .iter()
        .filter(|c| c.volume_id == a.id)
        .map(|c| c.part)
        .collect();
    parts.sort();
    assert_eq!(parts, [0, 1]);
    assert!(
        node.claims
            .iter()
            .filter(|c| c.volume_id == a.id)
            .all(|c| c.owner == "default:a" && c.volume_name == "a" && !c.fixed)
    );
}

#[test]
fn growth_no_single_extent_holds_is_split_over_the_largest_free_extents() {
    let (rt, f) = fixture(vec![
        drive(1, Tlc, 200),
        drive(2, Tlc, 150),
        drive(3, Tlc, 100),
    ]);
    let a = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("a", 200)))
        .unwrap();
    assert_eq!(layout_of(&a), [(1, 0, 200)]);
    let grown = rt.block_on(f.ledger.grow(&a.id, 400)).unwrap();
    assert_eq!(layout_of(&grown), [(1, 0, 200), (2, 0, 150), (3, 0, 50)]);
    assert_consistent(&rt.block_on(f.ledger.node(NODE)).unwrap());
}

#[test]
fn growth_never_uses_another_drive_type() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 100), drive(2, Qlc, 5000)]);
    let a = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("a", 100)))
        .unwrap();
    let err = refused_and_unwritten(&rt, &f, || rt.block_on(f.ledger.grow(&a.id, 150)));
    assert_eq!(
        err.to_string(),
        "volume ".to_string()
            + &a.id
            + " cannot grow to 150 GiB on node node-a: only 0 GiB are free right after its last virtual drive on drive 00000000-0000-0000-0000-000000000001 and it needs 50 GiB more, and the TLC drives of node node-a have 0 GiB free in all (a volume grows with the type of its last virtual drive, TLC). Free space on this node, or create a new volume of the size you need and copy the data"
    );
    // A mixed volume's last virtual drive is QLC: it grows with QLC.
    let mut mixed = tlc_request("mixed", 1000);
    mixed.layout = Request::with_ratio(1000, Ratio { tlc: 0, qlc: 1 }, 1);
    mixed.layout.min_drive_gib = 1;
    let m = rt.block_on(f.ledger.claim(NODE, &mixed)).unwrap();
    let grown = rt.block_on(f.ledger.grow(&m.id, 4000)).unwrap();
    assert!(grown.extents.iter().all(|e| e.drive_type == Some(Qlc)));
}

#[test]
fn a_mixed_volume_grows_at_its_qlc_end() {
    let (rt, f) = fixture(vec![drive(1, Qlc, 7680), drive(2, Tlc, 3840)]);
    let mut request = tlc_request("mixed", 7000);
    request.layout = Request::with_ratio(7000, Ratio { tlc: 1, qlc: 4 }, 3).enforce_per_type(false);
    let volume = rt.block_on(f.ledger.claim(NODE, &request)).unwrap();
    let grown = rt.block_on(f.ledger.grow(&volume.id, 7500)).unwrap();
    let types: Vec<Option<DriveType>> = grown.extents.iter().map(|e| e.drive_type).collect();
    assert_eq!(
        types,
        [Some(Tlc), Some(Qlc), Some(Qlc)],
        "TLC first, then QLC"
    );
    assert_eq!(grown.extents.last().unwrap().size_gib, 3300);
}

#[test]
fn growth_never_uses_a_missing_drive() {
    let (rt, f) = fixture(vec![
        drive(1, Tlc, 300),
        drive(2, Tlc, 200),
        drive(3, Tlc, 80),
    ]);
    let a = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("a", 300)))
        .unwrap();
    assert_eq!(layout_of(&a), [(1, 0, 300)]);
    // drive 2 holds a volume, then vanishes: it stays, marked missing, 190 GiB free
    let on_two = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("on-two", 10)))
        .unwrap();
    assert_eq!(layout_of(&on_two), [(2, 0, 10)]);
    rt.block_on(
        f.ledger
            .sync_drives(NODE, blank(vec![drive(1, Tlc, 300), drive(3, Tlc, 80)])),
    )
    .unwrap();
    let err = refused_and_unwritten(&rt, &f, || rt.block_on(f.ledger.grow(&a.id, 400)));
    assert!(err.to_string().contains("have 80 GiB free in all"), "{err}");
    let grown = rt.block_on(f.ledger.grow(&a.id, 380)).unwrap();
    assert_eq!(layout_of(&grown), [(1, 0, 300), (3, 0, 80)]);
    // a volume with a part on a missing drive does not grow at all, and says
    // which drive to reattach (FAILED_PRECONDITION: not a lack of space)
    let err = refused_and_unwritten(&rt, &f, || rt.block_on(f.ledger.grow(&on_two.id, 11)));
    assert!(
        matches!(err, LedgerError::DriveNotAttached { drive, .. } if drive == Uuid::from_u128(2)),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!(
            "its drive {} is not attached to node {NODE}",
            Uuid::from_u128(2)
        )),
        "{err}"
    );
}

#[test]
fn a_loop_node_grows_in_place_or_not_at_all() {
    let (rt, f) = fixture(vec![loop_drive(1, Tlc, 1000), loop_drive(2, Tlc, 500)]);
    let a = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("a", 100)))
        .unwrap();
    assert_eq!(
        layout_of(&rt.block_on(f.ledger.grow(&a.id, 300)).unwrap()),
        [(1, 0, 300)]
    );
    rt.block_on(f.ledger.claim(NODE, &tlc_request("b", 100)))
        .unwrap();
    let err = refused_and_unwritten(&rt, &f, || rt.block_on(f.ledger.grow(&a.id, 301)));
    assert!(matches!(err, LedgerError::CannotGrow { .. }), "{err}");
    assert!(
        err.to_string().contains(
            "only 0 GiB are free right after its last virtual drive on drive 00000000-0000-0000-0000-000000000001 and it needs 1 GiB more, and node node-a builds volumes with the loop backend, which makes a volume from at most 1 virtual drive(s)"
        ),
        "{err}"
    );
    assert!(err.to_string().contains("device-mapper (dm)"), "{err}");
}

#[test]
fn growth_counts_against_the_pool_share() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 3840)]);
    rt.block_on(f.ledger.set_pool(NODE, Some(Pool::K8s)))
        .unwrap();
    let mut request = tlc_request("a", 1000);
    request.pool = Some(Pool::K8s);
    let a = rt.block_on(f.ledger.claim(NODE, &request)).unwrap();
    let err = refused_and_unwritten(&rt, &f, || rt.block_on(f.ledger.grow(&a.id, 1501)));
    assert!(
        matches!(
            err,
            LedgerError::PoolShareExhausted {
                need_gib: 501,
                left_gib: 500,
                ..
            }
        ),
        "{err}"
    );
    rt.block_on(f.ledger.grow(&a.id, 1500)).unwrap();
}

#[test]
fn a_growth_check_answers_as_growth_would_and_changes_nothing() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 3840)]);
    rt.block_on(f.ledger.set_pool(NODE, Some(Pool::K8s)))
        .unwrap();
    let mut request = tlc_request("a", 1000);
    request.pool = Some(Pool::K8s);
    let a = rt.block_on(f.ledger.claim(NODE, &request)).unwrap();
    let err = rt
        .block_on(f.ledger.check_growth(&a.id, 1501))
        .expect_err("past the pool share");
    assert!(
        matches!(err, LedgerError::PoolShareExhausted { need_gib: 501, .. }),
        "{err}"
    );
    let before = rt.block_on(f.ledger.volume(&a.id)).unwrap();
    rt.block_on(f.ledger.check_growth(&a.id, 1500)).unwrap();
    assert_eq!(
        rt.block_on(f.ledger.volume(&a.id)).unwrap(),
        before,
        "a check grows nothing"
    );
    assert!(matches!(
        rt.block_on(f.ledger.check_growth("no-such-volume", 5)),
        Err(LedgerError::VolumeNotFound(_))
    ));
}

#[test]
fn a_fixed_size_volume_never_grows_and_remembers_it() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 3840)]);
    let mut request = tlc_request("fixed", 800);
    request.layout = Request::fixed(2, 400, 1);
    let volume = rt.block_on(f.ledger.claim(NODE, &request)).unwrap();
    assert!(volume.fixed);
    assert_eq!(rt.block_on(f.ledger.grow(&volume.id, 800)).unwrap(), volume);
    let err = refused_and_unwritten(&rt, &f, || rt.block_on(f.ledger.grow(&volume.id, 801)));
    assert_eq!(
        err.to_string(),
        format!(
            "volume {} cannot be expanded: it was made by a fixed-size StorageClass (numDrives × driveCapacity) as 2 virtual drive(s), 800 GiB in all, and keeps that size. For more space, create a volume of a class without numDrives and driveCapacity (sized by tlc and qlc) and copy the data",
            volume.id
        )
    );
    // It is remembered by the store, not by the request.
    drop(f.ledger);
    let reopened = Ledger::new(
        EmbeddedStore::open(&f.path).unwrap(),
        PoolSettings::default(),
    );
    let read = rt.block_on(reopened.volume(&volume.id)).unwrap().unwrap();
    assert!(read.fixed);
    assert!(matches!(
        rt.block_on(reopened.grow(&volume.id, 1600)),
        Err(LedgerError::FixedSize { .. })
    ));
    let plain = rt
        .block_on(reopened.claim(NODE, &tlc_request("plain", 10)))
        .unwrap();
    assert!(!plain.fixed);
}

#[test]
fn a_layout_with_more_parts_than_a_loop_node_joins_is_refused_before_claiming() {
    let (rt, f) = fixture(vec![loop_drive(1, Tlc, 600), loop_drive(2, Tlc, 500)]);
    let request = tlc_request("two-drives", 1000);
    let err = rt.block_on(f.ledger.claim(NODE, &request)).unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::TooManyParts {
                backend: Backend::Loop,
                needed: 2,
                max: 1,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "volume \"two-drives\" needs 2 virtual drives (TLC 500 GiB, TLC 500 GiB) on node node-a, but that node builds volumes with the loop backend, which makes a volume from at most 1 virtual drive(s); the largest one-drive volume it holds now is 600 GiB of TLC. Place the volume on a node whose drives use the device-mapper (dm) backend, or use a StorageClass with driveCores: \"1\" and a single type (tlc: \"1\", qlc: \"0\" or tlc: \"0\", qlc: \"1\") and request at most that size"
    );
    assert_eq!(rt.block_on(f.ledger.node(NODE)).unwrap().claims.len(), 0);
    // What fits one drive is made on the same node.
    rt.block_on(f.ledger.claim(NODE, &tlc_request("one-drive", 600)))
        .unwrap();
}

#[test]
fn a_node_joins_parts_only_when_all_its_present_drives_are_dm() {
    let mut node = NodeLedger::new(NODE);
    assert_eq!(node.max_parts(), Some(1), "no drives: held to loop's limit");
    node.drives = vec![drive(1, Tlc, 100), drive(2, Qlc, 100)];
    assert_eq!((node.backend(), node.max_parts()), (Backend::Dm, None));
    node.drives.push(loop_drive(3, Tlc, 100));
    assert_eq!((node.backend(), node.max_parts()), (Backend::Loop, Some(1)));
    node.drives[2].missing = true;
    assert_eq!(node.max_parts(), None, "a missing drive does not count");
    // Ledgers written before backends were recorded read as loop.
    let old: PhysicalDrive = serde_json::from_str(
        r#"{"uuid":"00000000-0000-0000-0000-000000000001","serial":"S","type":"tlc","capacity_gib":5}"#,
    )
    .unwrap();
    assert_eq!(old.backend, Backend::Loop);
}

#[test]
fn a_dm_node_makes_multi_part_volumes() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 600), drive(2, Tlc, 500)]);
    let volume = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("two-drives", 1000)))
        .unwrap();
    assert_eq!(volume.extents.len(), 2);
}

#[test]
fn one_name_is_one_volume_even_when_claimed_on_two_nodes_at_once() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::new(
        EmbeddedStore::open(dir.path().join("ledger.redb")).unwrap(),
        PoolSettings::default(),
    ));
    for (node, n) in [("a", 1), ("b", 2)] {
        rt.block_on(ledger.sync_drives(node, blank(vec![drive(n, Tlc, 1000)])))
            .unwrap();
    }
    let volumes = rt.block_on(async {
        let mut tasks = Vec::new();
        for round in 0..25 {
            for node in ["a", "b"] {
                let ledger = ledger.clone();
                tasks.push(tokio::spawn(async move {
                    ledger
                        .claim(node, &tlc_request(&format!("pvc-{round}"), 5))
                        .await
                }));
            }
        }
        let mut ids = Vec::new();
        for task in tasks {
            ids.push(task.await.unwrap().unwrap().id);
        }
        ids
    });
    let all = rt.block_on(ledger.volumes()).unwrap();
    assert_eq!(all.len(), 25, "each name became exactly one volume");
    for pair in volumes.chunks(2) {
        assert_eq!(pair[0], pair[1], "both callers got the same volume");
    }
}

#[test]
fn an_existing_volume_of_an_accepted_size_is_the_one_asked_for() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 1000)]);
    let first = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("pvc-1", 100)))
        .unwrap();
    // A request for "at least 60 GiB" would make 60, but 100 is what it accepts.
    let mut request = tlc_request("pvc-1", 60);
    request.accepts = SizeRange {
        min_gib: 60,
        max_gib: None,
    };
    assert_eq!(
        rt.block_on(f.ledger.create(&request, &Wanted::Anywhere))
            .unwrap(),
        first
    );
    assert_eq!(rt.block_on(f.ledger.claim(NODE, &request)).unwrap(), first);
    request.accepts.max_gib = Some(99);
    let err = rt
        .block_on(f.ledger.create(&request, &Wanted::Anywhere))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "volume \"pvc-1\" already exists with 100 GiB in pool none; a request for 60 to 99 GiB in pool none under the same name conflicts. Use another name, or delete the existing volume first"
    );
    // Same size, other pool: another volume, so a conflict.
    request.accepts.max_gib = None;
    request.pool = Some(Pool::K8s);
    assert!(matches!(
        rt.block_on(f.ledger.claim(NODE, &request)),
        Err(LedgerError::NameConflict { .. })
    ));
    assert_eq!(rt.block_on(f.ledger.volumes()).unwrap().len(), 1);
}

#[test]
fn volumes_page_through_every_node_in_id_order_without_deleted_ones() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 100)]);
    rt.block_on(
        f.ledger
            .sync_drives("node-b", blank(vec![drive(2, Tlc, 100)])),
    )
    .unwrap();
    let mut ids = Vec::new();
    for (i, node) in [NODE, "node-b", NODE, "node-b", NODE].iter().enumerate() {
        let volume = rt
            .block_on(f.ledger.claim(node, &tlc_request(&format!("v{i}"), 1)))
            .unwrap();
        ids.push(volume.id);
    }
    let deleted = ids.remove(1);
    rt.block_on(f.ledger.retire_on("node-b", &deleted))
        .unwrap()
        .unwrap();
    ids.sort();

    let page = |start, take| {
        rt.block_on(f.ledger.volumes_page(start, take, |v| v.id))
            .unwrap()
    };
    assert_eq!(
        page(0, usize::MAX),
        (ids.clone(), 4),
        "all, deleted left out"
    );
    assert_eq!(page(0, 3), (ids[..3].to_vec(), 4));
    assert_eq!(page(3, 3), (ids[3..].to_vec(), 4));
    assert_eq!(page(4, 3), (vec![], 4), "past the end: an empty page");
}

#[test]
fn create_goes_to_the_next_node_when_the_preferred_one_is_full() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 100)]);
    rt.block_on(
        f.ledger
            .sync_drives("node-b", blank(vec![drive(2, Tlc, 1000)])),
    )
    .unwrap();
    let preferred = Wanted::Preferred(vec![NODE.to_string()]);
    let volume = rt
        .block_on(f.ledger.create(&tlc_request("big", 500), &preferred))
        .unwrap();
    assert_eq!(volume.node, "node-b");
    let small = rt
        .block_on(f.ledger.create(&tlc_request("small", 50), &preferred))
        .unwrap();
    assert_eq!(small.node, NODE, "the preferred node when it fits");
    let only = Wanted::Only(vec![NODE.to_string()]);
    let err = rt
        .block_on(f.ledger.create(&tlc_request("too-big", 60), &only))
        .unwrap_err();
    assert!(
        matches!(&err, LedgerError::NoNodeFits { failures } if failures.len() == 1),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "Insufficient drive capacity: need 60 GiB, available 50 GiB"
    );
}

// --- Drive headers: a ledger that lost or forked is noticed --------------------

fn with_header(drive: PhysicalDrive, header: DriveHeader) -> Vec<ReportedDrive> {
    vec![ReportedDrive { drive, header }]
}

fn owned_by(owner: &str, claims: Vec<Claim>) -> DriveHeader {
    DriveHeader::Owned {
        owner: owner.into(),
        claims,
    }
}

#[test]
fn a_header_listing_claims_the_ledger_lost_quarantines_the_drive() {
    // The node's ledger is new (lost); the drive says volume "a" lives on it.
    let (rt, old) = fixture(vec![drive(1, Tlc, 1000)]);
    let a = rt
        .block_on(old.ledger.claim(NODE, &tlc_request("a", 100)))
        .unwrap();
    let on_drive = rt.block_on(old.ledger.node(NODE)).unwrap().claims.clone();

    let (rt, lost) = fixture(vec![]);
    let sync = rt
        .block_on(lost.ledger.sync_drives(
            NODE,
            with_header(drive(1, Tlc, 1000), owned_by(NODE, on_drive.clone())),
        ))
        .unwrap();
    let (uuid, reason) = &sync.quarantined[0];
    assert_eq!(*uuid, Uuid::from_u128(1));
    assert!(
        reason.contains(&a.id) && reason.contains("ledger was lost or forked"),
        "{reason}"
    );
    assert!(reason.contains("vdrive drives adopt --drive"), "{reason}");
    let recorded = &sync.ledger.drives[0];
    assert_eq!(recorded.quarantined.as_deref(), Some(reason.as_str()));
    let err = rt
        .block_on(lost.ledger.claim(NODE, &tlc_request("b", 1)))
        .unwrap_err();
    assert!(err.to_string().contains("quarantined"), "{err}");
    assert!(
        rt.block_on(lost.ledger.node(NODE))
            .unwrap()
            .claims
            .is_empty(),
        "nothing was placed over volume a"
    );
    assert_eq!(
        rt.block_on(lost.ledger.node(NODE)).unwrap().free_drives()[0].extents,
        vec![]
    );
}

#[test]
fn a_header_that_agrees_with_the_ledger_or_lags_it_is_trusted() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 1000)]);
    rt.block_on(f.ledger.claim(NODE, &tlc_request("a", 100)))
        .unwrap();
    let claims = rt.block_on(f.ledger.node(NODE)).unwrap().claims.clone();
    for header in [
        DriveHeader::Blank,
        owned_by(NODE, vec![]),
        owned_by(NODE, claims.clone()),
    ] {
        let sync = rt
            .block_on(
                f.ledger
                    .sync_drives(NODE, with_header(drive(1, Tlc, 1000), header)),
            )
            .unwrap();
        assert!(sync.quarantined.is_empty(), "{:?}", sync.quarantined);
        assert!(sync.ledger.drives[0].takes_claims());
    }
    // The header listed the volume before the ledger grew it in place.
    let mut before_growth = claims.clone();
    before_growth[0].size_gib -= 40;
    let sync = rt
        .block_on(f.ledger.sync_drives(
            NODE,
            with_header(drive(1, Tlc, 1000), owned_by(NODE, before_growth)),
        ))
        .unwrap();
    assert!(sync.quarantined.is_empty(), "{:?}", sync.quarantined);
    // The same volume id at another offset, or bigger than the ledger's claim,
    // is not the ledger's claim.
    let mut moved = claims.clone();
    moved[0].offset_gib += 1;
    let mut bigger = claims.clone();
    bigger[0].size_gib += 1;
    for header in [moved, bigger] {
        let sync = rt
            .block_on(f.ledger.sync_drives(
                NODE,
                with_header(drive(1, Tlc, 1000), owned_by(NODE, header)),
            ))
            .unwrap();
        assert_eq!(sync.quarantined.len(), 1);
    }
}

#[test]
fn a_drive_owned_by_another_node_or_with_an_unreadable_record_is_quarantined() {
    let (rt, f) = fixture(vec![]);
    let sync = rt
        .block_on(f.ledger.sync_drives(
            NODE,
            with_header(drive(1, Tlc, 1000), owned_by("node-old", vec![])),
        ))
        .unwrap();
    assert!(
        sync.quarantined[0]
            .1
            .contains("belongs to node \"node-old\""),
        "{:?}",
        sync.quarantined
    );
    let sync = rt
        .block_on(f.ledger.sync_drives(
            NODE,
            with_header(
                drive(1, Tlc, 1000),
                DriveHeader::Unreadable("slot 0 fails its checksum".into()),
            ),
        ))
        .unwrap();
    assert!(sync.quarantined[0].1.contains("slot 0 fails its checksum"));
    assert!(
        rt.block_on(f.ledger.claim(NODE, &tlc_request("b", 1)))
            .is_err()
    );
    // Once the header agrees again (adopted), the quarantine lifts.
    let sync = rt
        .block_on(f.ledger.sync_drives(
            NODE,
            with_header(drive(1, Tlc, 1000), owned_by(NODE, vec![])),
        ))
        .unwrap();
    assert!(sync.quarantined.is_empty());
    rt.block_on(f.ledger.claim(NODE, &tlc_request("b", 1)))
        .unwrap();
}

#[test]
fn a_quarantined_drive_does_not_grow_its_volumes_in_place() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 1000)]);
    let a = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("a", 100)))
        .unwrap();
    rt.block_on(f.ledger.sync_drives(
        NODE,
        with_header(drive(1, Tlc, 1000), owned_by("elsewhere", vec![])),
    ))
    .unwrap();
    let err = rt.block_on(f.ledger.grow(&a.id, 200)).unwrap_err();
    assert!(err.to_string().contains("quarantined"), "{err}");
}

#[test]
fn adopting_a_drive_brings_its_claims_back_and_refuses_a_disagreement() {
    let (rt, old) = fixture(vec![drive(1, Tlc, 1000)]);
    let a = rt
        .block_on(old.ledger.claim(NODE, &tlc_request("a", 100)))
        .unwrap();
    let on_drive = rt.block_on(old.ledger.node(NODE)).unwrap().claims.clone();

    let (rt, lost) = fixture(vec![]);
    let added = rt
        .block_on(
            lost.ledger
                .adopt(NODE, drive(1, Tlc, 1000), on_drive.clone()),
        )
        .unwrap();
    assert_eq!(added, on_drive);
    assert_eq!(
        rt.block_on(lost.ledger.volume(&a.id))
            .unwrap()
            .unwrap()
            .capacity_gib,
        100
    );
    // Adopting again changes nothing.
    assert!(
        rt.block_on(
            lost.ledger
                .adopt(NODE, drive(1, Tlc, 1000), on_drive.clone())
        )
        .unwrap()
        .is_empty()
    );
    // The header now agrees: new volumes go after volume a, never over it.
    let sync = rt
        .block_on(lost.ledger.sync_drives(
            NODE,
            with_header(drive(1, Tlc, 1000), owned_by(NODE, on_drive.clone())),
        ))
        .unwrap();
    assert!(sync.quarantined.is_empty());
    let b = rt
        .block_on(lost.ledger.claim(NODE, &tlc_request("b", 10)))
        .unwrap();
    assert!(b.extents[0].offset_gib >= 100);

    // A header claim over a different ledger claim is refused, and nothing is written.
    let mut clash = on_drive[0].clone();
    clash.volume_id = "other".into();
    clash.volume_name = "pvc-other".into();
    let before = rt.block_on(lost.ledger.node(NODE)).unwrap();
    let err = rt
        .block_on(lost.ledger.adopt(NODE, drive(1, Tlc, 1000), vec![clash]))
        .unwrap_err();
    assert!(err.to_string().contains("nothing was adopted"), "{err}");
    assert_eq!(rt.block_on(lost.ledger.node(NODE)).unwrap(), before);
}

#[test]
fn forgetting_a_missing_drive_drops_its_claims_and_retires_the_rest_of_their_volumes() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 100), drive(2, Tlc, 100)]);
    // 150 GiB: a volume over both drives.
    let both = rt
        .block_on(f.ledger.claim(NODE, &tlc_request("both", 150)))
        .unwrap();
    assert_eq!(both.extents.len(), 2);
    let err = rt
        .block_on(f.ledger.forget_drive(NODE, Uuid::from_u128(1)))
        .unwrap_err();
    assert!(
        err.to_string().contains("delete its volumes instead"),
        "{err}"
    );
    rt.block_on(f.ledger.sync_drives(NODE, blank(vec![drive(2, Tlc, 100)])))
        .unwrap();
    let gone = rt
        .block_on(f.ledger.forget_drive(NODE, Uuid::from_u128(1)))
        .unwrap();
    assert_eq!(gone.len(), 1);
    let node = rt.block_on(f.ledger.node(NODE)).unwrap();
    assert!(node.drive(&Uuid::from_u128(1)).is_none());
    assert!(node.claims.iter().all(|c| c.releasing), "{:?}", node.claims);
    assert_eq!(node.releasing_volumes().len(), 1);
}

// ---- one unreadable node hurts only itself --------------------------------------

/// The embedded store, plus one node whose ledger cannot be read (as a Node
/// with a malformed annotation reads in a cluster).
struct WithUnreadable {
    inner: EmbeddedStore,
    broken: String,
}

impl LedgerStore for WithUnreadable {
    async fn load(&self, node: &str) -> Result<Snapshot, StoreError> {
        if node == self.broken {
            return Err(StoreError::Corrupt {
                node: node.to_string(),
                reason: "vdrive.io/virtual-drive-claims is not a JSON object".into(),
            });
        }
        self.inner.load(node).await
    }

    async fn compare_and_swap(
        &self,
        expected: &Revision,
        ledger: Arc<NodeLedger>,
    ) -> Result<bool, StoreError> {
        self.inner.compare_and_swap(expected, ledger).await
    }

    async fn node_names(&self) -> Result<Vec<String>, StoreError> {
        let mut names = self.inner.node_names().await?;
        names.push(self.broken.clone());
        Ok(names)
    }
}

#[test]
fn an_unreadable_node_is_quarantined_and_the_others_keep_working() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = WithUnreadable {
        inner: EmbeddedStore::open(dir.path().join("ledger.redb")).unwrap(),
        broken: "node-bad".into(),
    };
    let ledger = Ledger::new(store, PoolSettings::default());
    rt.block_on(async {
        ledger
            .sync_drives(NODE, blank(vec![drive(1, Tlc, 3840)]))
            .await
            .unwrap();
        let survey = ledger.survey().await.unwrap();
        assert_eq!(survey.nodes.len(), 1);
        assert_eq!(
            survey.quarantined,
            vec![Quarantined {
                node: "node-bad".into(),
                reason: "vdrive.io/virtual-drive-claims is not a JSON object".into(),
            }]
        );

        // Creates land on the readable node; capacity and lists count it alone.
        let volume = ledger
            .create(&tlc_request("pvc-1", 100), &Wanted::Anywhere)
            .await
            .unwrap();
        assert_eq!(volume.node, NODE);
        let class = tlc_request("any", 1).class();
        let capacity = ledger.capacity(&class, None).await.unwrap();
        assert_eq!(capacity.available_gib, 3840 - 100);
        let of_bad = ledger.capacity(&class, Some("node-bad")).await.unwrap();
        assert_eq!((of_bad.available_gib, of_bad.largest_gib), (0, 0));
        let of_unknown = ledger.capacity(&class, Some("no-such-node")).await.unwrap();
        assert_eq!(of_unknown.available_gib, 0);
        assert_eq!(ledger.volumes().await.unwrap().len(), 1);
        // Asked for by name, the bad node refuses whatever it is asked.
        let only_bad = Wanted::Only(vec!["node-bad".into()]);
        assert!(
            ledger
                .create(&tlc_request("pvc-2", 1), &only_bad)
                .await
                .is_err()
        );

        // A volume found nowhere may be on the bad node: that is not "gone".
        let found = ledger.volume_everywhere(&volume.id).await.unwrap();
        assert_eq!(found.map(|v| v.id), Some(volume.id.clone()));
        let unknown = ledger.volume_everywhere("no-such-volume").await;
        let Err(err @ LedgerError::Unreadable { .. }) = unknown else {
            panic!("expected Unreadable, got {unknown:?}");
        };
        let message = err.to_string();
        assert!(
            message.contains("node node-bad") && message.contains("not a JSON object"),
            "{message}"
        );
        assert!(message.contains("kubectl edit node"), "{message}");
    });
}

#[test]
fn with_every_node_readable_an_unknown_volume_is_simply_gone() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 3840)]);
    assert!(
        rt.block_on(f.ledger.volume_everywhere("nope"))
            .unwrap()
            .is_none()
    );
}

#[test]
fn the_same_name_with_another_layout_access_or_node_conflicts() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 3840), drive(2, Qlc, 3840)]);
    let mut request = tlc_request("pvc-1", 100);
    request.access = Some("ext4".into());
    let first = rt
        .block_on(f.ledger.create(&request, &Wanted::Anywhere))
        .unwrap();
    assert_eq!(
        rt.block_on(f.ledger.create(&request, &Wanted::Only(vec![NODE.into()])))
            .unwrap(),
        first,
        "the same request, on an allowed node, is the same volume"
    );
    let conflict = |request: &ClaimRequest, wanted: &Wanted| match rt
        .block_on(f.ledger.create(request, wanted))
    {
        Err(err @ LedgerError::Incompatible { .. }) => err.to_string(),
        other => panic!("expected a conflict, got {other:?}"),
    };
    let mut qlc = request.clone();
    qlc.layout = Request {
        shape: Shape::Ratio {
            capacity_gib: 100,
            ratio: Ratio { tlc: 0, qlc: 1 },
        },
        ..request.layout
    };
    assert!(
        conflict(&qlc, &Wanted::Anywhere).contains("it was made with tlc:qlc 1:0, not tlc:qlc 0:1"),
        "{}",
        conflict(&qlc, &Wanted::Anywhere)
    );
    let mut cores = request.clone();
    cores.layout.drive_cores = 2;
    assert!(conflict(&cores, &Wanted::Anywhere).contains("driveCores 1, not 2"));
    let mut block = request.clone();
    block.access = Some("block".into());
    let text = conflict(&block, &Wanted::Anywhere);
    assert!(
        text.contains("it is an ext4 filesystem volume, not a raw block volume"),
        "{text}"
    );
    assert!(
        text.starts_with("volume \"pvc-1\" already exists on node"),
        "{text}"
    );
    let text = conflict(&request, &Wanted::Only(vec!["elsewhere".into()]));
    assert!(
        text.contains("accessibility requirements (elsewhere) do not allow"),
        "{text}"
    );
    // Preferences are not requirements: the volume is where it is.
    assert_eq!(
        rt.block_on(
            f.ledger
                .create(&request, &Wanted::Preferred(vec!["elsewhere".into()]))
        )
        .unwrap(),
        first
    );
    // A request that does not say how the volume is used is compared without it.
    let mut unknown = request.clone();
    unknown.access = None;
    assert_eq!(
        rt.block_on(f.ledger.create(&unknown, &Wanted::Anywhere))
            .unwrap(),
        first
    );
    assert_eq!(rt.block_on(f.ledger.volumes()).unwrap().len(), 1);
}

#[test]
fn the_same_name_with_another_image_conflicts_and_the_image_is_kept() {
    let (rt, f) = fixture(vec![drive(1, Tlc, 3840)]);
    let mut request = tlc_request("vm-1", 10);
    request.access = Some("block".into());
    request.image = Some("/images/a.qcow2".into());
    let first = rt
        .block_on(f.ledger.create(&request, &Wanted::Anywhere))
        .unwrap();
    let spec = first.spec.clone().unwrap();
    assert_eq!(spec.image.as_deref(), Some("/images/a.qcow2"));
    assert_eq!(spec.image_format, None);
    assert_eq!(
        rt.block_on(f.ledger.create(&request, &Wanted::Anywhere))
            .unwrap(),
        first
    );
    let conflict =
        |request: &ClaimRequest| match rt.block_on(f.ledger.create(request, &Wanted::Anywhere)) {
            Err(err @ LedgerError::Incompatible { .. }) => err.to_string(),
            other => panic!("expected a conflict, got {other:?}"),
        };
    let mut other = request.clone();
    other.image = Some("https://images.example/b.img".into());
    let text = conflict(&other);
    assert!(
        text.contains("its image is /images/a.qcow2, not https://images.example/b.img"),
        "{text}"
    );
    let mut formatted = request.clone();
    formatted.image_format = Some("qcow2".into());
    assert!(conflict(&formatted).contains("not /images/a.qcow2 (qcow2)"));
    let mut none = request.clone();
    none.image = None;
    assert!(conflict(&none).contains("its image is /images/a.qcow2, not none"));
}

#[test]
fn volumes_recorded_without_a_spec_compare_by_size_and_pool() {
    // A claim as older versions stored it: no spec.
    let old = r#"{"virtual_uuid":"00000000-0000-0000-0000-000000000002","volume_id":"v","volume_name":"pvc-old","owner":"a:b","pool":null,"physical_uuid":"00000000-0000-0000-0000-000000000001","offset_gib":0,"size_gib":10,"part":0}"#;
    let claim: Claim = serde_json::from_str(old).unwrap();
    assert_eq!(claim.spec, None);
    let mut ledger = NodeLedger::new(NODE);
    ledger.drives.push(drive(1, Tlc, 100));
    ledger.claims.push(claim);
    let volume = ledger.volume("v").unwrap();
    let mut request = tlc_request("pvc-old", 10);
    request.layout.drive_cores = 3;
    request.access = Some("block".into());
    assert_eq!(same_volume(volume.clone(), &request).unwrap(), volume);
    request.accepts = SizeRange::exactly(11);
    assert!(matches!(
        same_volume(volume, &request),
        Err(LedgerError::NameConflict { .. })
    ));
}

#[test]
fn adopting_a_header_that_lists_a_volume_beside_its_grown_self_takes_the_grown_claim() {
    let (rt, old) = fixture(vec![drive(1, Tlc, 1000)]);
    rt.block_on(old.ledger.claim(NODE, &tlc_request("a", 2)))
        .unwrap();
    let small = rt.block_on(old.ledger.node(NODE)).unwrap().claims[0].clone();
    let grown = Claim {
        size_gib: 5,
        ..small.clone()
    };
    let (rt, lost) = fixture(vec![]);
    let added = rt
        .block_on(
            lost.ledger
                .adopt(NODE, drive(1, Tlc, 1000), vec![small, grown.clone()]),
        )
        .unwrap();
    assert_eq!(added, vec![grown]);
    let volume = rt
        .block_on(lost.ledger.volume(&added[0].volume_id))
        .unwrap()
        .unwrap();
    assert_eq!(volume.capacity_gib, 5);
}

// ---- capacity answers are remembered only while they are true ------------------

#[test]
fn remembered_capacity_is_always_what_the_ledger_says_now() {
    let (rt, f) = fixture(vec![
        drive(1, Tlc, 1000),
        drive(2, Qlc, 2000),
        drive(3, Tlc, 500),
    ]);
    rt.block_on(
        f.ledger
            .sync_drives("node-b", blank(vec![drive(4, Tlc, 800)])),
    )
    .unwrap();
    let classes = [tlc_request("any", 1).class(), {
        let mut mixed = tlc_request("mixed", 40);
        mixed.layout = Request::with_ratio(40, Ratio { tlc: 1, qlc: 3 }, 2);
        mixed.class()
    }];
    let check = |step: &str| {
        let nodes = rt.block_on(f.ledger.nodes()).unwrap();
        for class in &classes {
            for only in [None, Some(NODE), Some("node-b")] {
                let remembered = rt.block_on(f.ledger.capacity(class, only)).unwrap();
                let computed = capacity(&nodes, class, only, &f.ledger.pools);
                assert_eq!(remembered, computed, "{step}, {only:?}, {class:?}");
            }
        }
    };
    check("at first");
    check("asked again");
    let mut made = Vec::new();
    for i in 0..6 {
        let volume = rt
            .block_on(
                f.ledger
                    .claim(NODE, &tlc_request(&format!("pvc-{i}"), 90 + i)),
            )
            .unwrap();
        check(&format!("after claim {i}"));
        made.push(volume);
    }
    for volume in made.iter().step_by(2) {
        rt.block_on(f.ledger.release_on(NODE, volume)).unwrap();
        check(&format!("after releasing {}", volume.name));
    }
    rt.block_on(f.ledger.grow(&made[1].id, 400)).unwrap();
    check("after growth");
    assert_eq!(f.ledger.rooms.remembered(), 2);
}
