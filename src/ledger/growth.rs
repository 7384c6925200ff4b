//! How a volume grows: pure decisions over one node's ledger.
//!
//! A volume is one linear device over its virtual drives in part order, TLC first
//! and then QLC, so it can only grow at its end, and the order of types must hold:
//! - its last virtual drive grows in place when the GiB right after it are free;
//! - otherwise new virtual drives of the last one's type are added after it, on
//!   any present drive of that type, placed by the allocator's rule, split over
//!   several free extents (largest first) when no single one holds the growth;
//! - only as many virtual drives as the node's backend joins
//!   ([`NodeLedger::max_parts`]): a loop node grows in place or not at all.

use uuid::Uuid;

use super::model::{Claim, NodeLedger, Volume};
use crate::allocator::{self, Placement};
use crate::drive::DriveType;

/// How a volume gets its extra GiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Growth {
    /// The last virtual drive grows by this much where it lies.
    InPlace { virtual_uuid: Uuid, by_gib: u64 },
    /// New virtual drives follow the last one, in this order.
    NewParts(Vec<Placement>),
}

/// The first drive `volume` has an extent on that its node does not see now
/// (marked missing, or gone from the ledger): such a volume does not grow.
pub(super) fn missing_drive(ledger: &NodeLedger, volume: &Volume) -> Option<Uuid> {
    volume
        .extents
        .iter()
        .map(|e| e.physical_uuid)
        .find(|uuid| ledger.drive(uuid).is_none_or(|d| d.missing))
}

/// How `volume` on `ledger` can grow by `by_gib`, or why it cannot (a sentence
/// that says what to change). Its drives are all present ([`missing_drive`]).
pub(super) fn plan(ledger: &NodeLedger, volume: &Volume, by_gib: u64) -> Result<Growth, String> {
    for extent in &volume.extents {
        let drive = ledger.drive(&extent.physical_uuid);
        if let Some(reason) = drive.and_then(|d| d.quarantined.as_deref()) {
            return Err(format!(
                "its drive {} is quarantined: {reason}",
                extent.physical_uuid
            ));
        }
    }
    let last = volume
        .extents
        .last()
        .ok_or_else(|| "it has no virtual drives".to_string())?;
    let drive = ledger
        .drive(&last.physical_uuid)
        .ok_or_else(|| format!("its drive {} is not in the ledger", last.physical_uuid))?;
    let end = last.offset_gib + last.size_gib;
    let room = ledger
        .free_extents(drive)
        .into_iter()
        .find(|free| free.offset_gib == end)
        .map_or(0, |free| free.size_gib);
    if by_gib <= room {
        return Ok(Growth::InPlace {
            virtual_uuid: last.virtual_uuid,
            by_gib,
        });
    }
    let not_in_place = format!(
        "only {room} GiB are free right after its last virtual drive on drive {} and it needs {by_gib} GiB more",
        drive.uuid
    );
    let parts = volume.extents.len();
    let max_parts = ledger.max_parts();
    let joins_more = |added: usize| max_parts.is_none_or(|max| parts + added <= max as usize);
    if let Some(max) = max_parts
        && !joins_more(1)
    {
        return Err(format!(
            "{not_in_place}, and node {} builds volumes with the {} backend, which makes a volume from at most {max} virtual drive(s), so none can be added elsewhere. Free the space after it, use a node whose drives use the device-mapper (dm) backend, or create a new volume of the size you need and copy the data",
            ledger.node,
            ledger.backend(),
        ));
    }
    let drive_type = drive.drive_type;
    let placements = allocator::place_extension(&ledger.free_drives(), drive_type, by_gib)
        .ok_or_else(|| {
            format!(
                "{not_in_place}, and the {} drives of node {} have {} GiB free in all (a volume grows with the type of its last virtual drive, {0}). Free space on this node, or create a new volume of the size you need and copy the data",
                drive_type.label(),
                ledger.node,
                free_gib(ledger, drive_type)
            )
        })?;
    if !joins_more(placements.len()) {
        return Err(format!(
            "{not_in_place}; the free {} space is split so that it needs {} more virtual drives, more than the {} backend of node {} joins. Free space on this node, or create a new volume of the size you need and copy the data",
            drive_type.label(),
            placements.len(),
            ledger.backend(),
            ledger.node
        ));
    }
    Ok(Growth::NewParts(placements))
}

/// Writes `growth` of `volume` into `ledger`. New virtual drives take the part
/// numbers after the volume's last, so the linear device only gets longer.
pub(super) fn apply(
    ledger: &mut NodeLedger,
    volume: &Volume,
    growth: Growth,
) -> Result<(), String> {
    let mine = |c: &&Claim| c.volume_id == volume.id;
    match growth {
        Growth::InPlace {
            virtual_uuid,
            by_gib,
        } => {
            let claim = ledger
                .claims
                .iter_mut()
                .find(|c| c.virtual_uuid == virtual_uuid)
                .ok_or_else(|| "its last claim vanished".to_string())?;
            claim.size_gib += by_gib;
        }
        Growth::NewParts(placements) => {
            let template = ledger
                .claims
                .iter()
                .filter(mine)
                .max_by_key(|c| c.part)
                .cloned()
                .ok_or_else(|| "its claims vanished".to_string())?;
            for (n, placement) in placements.iter().enumerate() {
                let drive = ledger
                    .drives
                    .get(placement.physical_index)
                    .ok_or_else(|| "a placement names no drive".to_string())?;
                let claim = Claim {
                    virtual_uuid: Uuid::new_v4(),
                    physical_uuid: drive.uuid,
                    offset_gib: placement.offset_gib,
                    size_gib: placement.size_gib,
                    part: template.part + 1 + n as u32,
                    releasing: false,
                    // The volume's spec stays on its first part only.
                    spec: None,
                    ..template.clone()
                };
                ledger.claims.push(claim);
            }
        }
    }
    Ok(())
}

fn free_gib(ledger: &NodeLedger, drive_type: DriveType) -> u64 {
    ledger
        .free_drives()
        .iter()
        .filter(|d| d.drive_type == drive_type)
        .map(|d| d.free_gib())
        .sum()
}
