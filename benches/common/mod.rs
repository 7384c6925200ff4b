//! A busy node shared by the benchmarks: 24 drives (12 TLC of 3840 GiB, 12 QLC of
//! 7680 GiB) holding 500 claims, with every third claim released again so the free
//! space is fragmented as on a node that has lived a while.

use uuid::Uuid;
use vdrive::drive::{Backend, DriveType};
use vdrive::ledger::{Claim, NodeLedger, PhysicalDrive};

pub const DRIVES: usize = 24;
pub const CLAIMS: usize = 500;

pub fn busy_node() -> NodeLedger {
    let mut node = NodeLedger::new("bench-node");
    node.drives = (0..DRIVES)
        .map(|i| {
            let tlc = i < DRIVES / 2;
            PhysicalDrive {
                uuid: Uuid::from_u128(i as u128 + 1),
                serial: format!("BENCH{i:03}"),
                drive_type: if tlc { DriveType::Tlc } else { DriveType::Qlc },
                capacity_gib: if tlc { 3840 } else { 7680 },
                // as on a production node: any number of virtual drives per volume
                backend: Backend::Dm,
                missing: false,
                quarantined: None,
            }
        })
        .collect();
    let mut cursor = [0u64; DRIVES];
    let mut made = 0;
    let mut n = 0;
    while made < CLAIMS {
        let drive = n % DRIVES;
        let slot = n / DRIVES;
        let size = 20 + (n as u64 * 7) % 60;
        let offset = cursor[drive];
        cursor[drive] += size;
        // every third slot of each drive is free: the released claims of an older tenant
        if slot % 3 != 2 {
            node.claims.push(Claim {
                virtual_uuid: Uuid::from_u128(1_000_000 + n as u128),
                volume_id: format!("vol-{n}"),
                volume_name: format!("pvc-{n}"),
                owner: format!("default:pvc-{n}"),
                pool: None,
                physical_uuid: node.drives[drive].uuid,
                offset_gib: offset,
                size_gib: size,
                part: 0,
                fixed: false,
                releasing: false,
                spec: None,
            });
            made += 1;
        }
        n += 1;
    }
    // as the ledger writes it
    node.normalize();
    let fragmented = node.free_drives().iter().all(|d| d.extents.len() > 1);
    assert!(
        fragmented,
        "every drive of the fixture has holes between claims"
    );
    node
}
