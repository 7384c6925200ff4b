//! Whose each drive is. A node reports its drives to the ledger together with
//! what their headers say (the ledger quarantines a drive whose header disagrees),
//! then writes each drive's claim record from the ledger it just wrote, so the
//! drive keeps an up-to-date account of itself.
//!
//! The ledger's claims only ever reach a header after the ledger has them, and
//! leave it (marked erased) before the ledger releases them, so a header listing
//! a live claim the ledger lacks means the ledger lost it. Reading headers,
//! reporting and writing happen under the registry's claim-record lock, which
//! erase also takes to mark what it erased: a report never works from a header
//! read before an erase that the ledger has since released.

use std::collections::HashSet;
use std::path::Path;

use uuid::Uuid;

use super::NodeError;
use super::claim_record::{self, ClaimRecord, ErasedExtent, Stored};
use super::drives::SignedDrive;
use super::registry::DriveRegistry;
use crate::drive::{Backend, Extent};
use crate::ledger::{
    Claim, DriveHeader, DriveSync, Ledger, LedgerStore, NodeLedger, ReportedDrive, VolumeExtent,
};

/// The volumes this node has erased whose release the ledger may not have
/// committed yet, kept under the claim-record lock. A drive scan that reads the
/// ledger in that window would otherwise write such a volume into a header it
/// was never in (a volume deleted before it was staged has no claim there to
/// mark erased), as a live claim, and the scan after the release would take
/// that for a lost ledger and quarantine the drive.
#[derive(Debug, Default, Clone)]
pub struct ErasedUnreleased(HashSet<String>);

impl ErasedUnreleased {
    /// `volume` was erased here; its release follows.
    pub fn erased(&mut self, volume: &str) {
        self.0.insert(volume.to_string());
    }

    /// `volume` is being staged: it is live after all (its delete was cut
    /// short before the release, and the volume is used again).
    pub fn staged(&mut self, volume: &str) {
        self.0.remove(volume);
    }

    pub fn contains(&self, volume: &str) -> bool {
        self.0.contains(volume)
    }

    /// Forgets the volumes `ledger` no longer has: released.
    pub fn keep_only_in(&mut self, ledger: &NodeLedger) {
        self.0.retain(|volume| ledger.has_volume(volume));
    }
}

/// A drive found on this node and its claim record as read.
pub struct FoundDrive {
    pub drive: SignedDrive,
    pub record: Result<Option<Stored>, NodeError>,
}

/// Reads the claim record of each drive. Blocking.
pub fn read_records(found: Vec<SignedDrive>) -> Vec<FoundDrive> {
    found
        .into_iter()
        .map(|drive| FoundDrive {
            record: claim_record::read(&drive.path),
            drive,
        })
        .collect()
}

/// What a claim record says, as the ledger judges it.
pub fn header_of(record: &Result<Option<Stored>, NodeError>) -> DriveHeader {
    match record {
        Ok(None) => DriveHeader::Blank,
        Ok(Some(stored)) => DriveHeader::Owned {
            owner: stored.record.owner.clone(),
            claims: stored.record.live_claims().cloned().collect(),
        },
        Err(err) => DriveHeader::Unreadable(err.to_string()),
    }
}

/// The record drive `uuid` should carry for `ledger`: the ledger's claims on it,
/// but none of an `erased` volume the drive does not list already (a listed one
/// carries its erased mark), and of the extents erased earlier those whose
/// claims the ledger still holds.
pub fn record_for(
    ledger: &NodeLedger,
    uuid: Uuid,
    previous: Option<&ClaimRecord>,
    erased: &ErasedUnreleased,
) -> ClaimRecord {
    let listed =
        |volume: &str| previous.is_some_and(|p| p.claims.iter().any(|c| c.volume_id == volume));
    let claims: Vec<Claim> = ledger
        .claims
        .iter()
        .filter(|c| c.physical_uuid == uuid)
        .filter(|c| !erased.contains(&c.volume_id) || listed(&c.volume_id))
        .cloned()
        .collect();
    let erased = previous
        .map(|p| p.erased.iter())
        .into_iter()
        .flatten()
        .filter(|e| claims.iter().any(|c| e.is(c)))
        .cloned()
        .collect();
    ClaimRecord {
        owner: ledger.node.clone(),
        claims,
        erased,
    }
}

/// Writes the record of every drive the ledger trusts (present, not quarantined)
/// where it differs from what the drive carries. Blocking. Returns the drives
/// whose record could not be written, with why.
pub fn write_records(
    ledger: &NodeLedger,
    found: &[FoundDrive],
    erased: &ErasedUnreleased,
) -> Vec<(Uuid, NodeError)> {
    let mut failed = Vec::new();
    for found in found {
        let uuid = found.drive.signature.uuid;
        let trusted = ledger.drive(&uuid).is_some_and(|d| d.takes_claims());
        let Ok(previous) = &found.record else {
            continue;
        };
        if !trusted {
            continue;
        }
        let wanted = record_for(ledger, uuid, previous.as_ref().map(|p| &p.record), erased);
        if previous.as_ref().is_some_and(|p| p.record == wanted) {
            continue;
        }
        if let Err(err) = claim_record::write(&found.drive.path, previous.as_ref(), &wanted) {
            failed.push((uuid, err));
        }
    }
    failed
}

/// Reports `found` (this node's drives now) to the ledger with their headers,
/// then brings the headers up to date from the ledger.
pub async fn report_drives<S: LedgerStore>(
    ledger: &Ledger<S>,
    registry: &DriveRegistry,
    node: &str,
    found: Vec<SignedDrive>,
    backend: Backend,
) -> Result<DriveSync, NodeError> {
    let mut records = registry.claim_records().lock().await;
    let found = tokio::task::spawn_blocking(move || read_records(found))
        .await
        .map_err(|e| NodeError::Task(e.to_string()))?;
    let reported = found
        .iter()
        .map(|f| ReportedDrive {
            drive: f.drive.to_physical(backend),
            header: header_of(&f.record),
        })
        .collect();
    let sync = ledger.sync_drives(node, reported).await?;
    let written = sync.ledger.clone();
    let erased = records.clone();
    let failed = tokio::task::spawn_blocking(move || write_records(&written, &found, &erased))
        .await
        .map_err(|e| NodeError::Task(e.to_string()))?;
    records.keep_only_in(&sync.ledger);
    drop(records);
    for (drive, err) in failed {
        tracing::warn!(%drive, %err, "could not write the drive's claim record");
    }
    for (drive, reason) in &sync.quarantined {
        tracing::warn!(%drive, %reason, "drive quarantined: it takes no new volumes");
    }
    Ok(sync)
}

/// Checks, before the extent of deleted `volume` is erased, that the drive's
/// header agrees it is this node's to erase: the record is readable, names this
/// node (or there is none), and lists no other volume's live claim over it.
/// Blocking; the caller holds the claim-record lock.
pub fn check_erasable(
    node: &str,
    path: &Path,
    volume: &str,
    extent: &VolumeExtent,
) -> Result<(), NodeError> {
    let Some(stored) = claim_record::read(path)? else {
        return Ok(());
    };
    if stored.record.owner != node {
        return Err(NodeError::NotOurDrive {
            path: path.to_path_buf(),
            owner: stored.record.owner,
            node: node.to_string(),
        });
    }
    let span = Extent::new(extent.offset_gib, extent.size_gib);
    if let Some(other) = stored
        .record
        .live_claims()
        .find(|c| c.volume_id != volume && c.extent().overlaps(&span))
    {
        return Err(NodeError::ClaimedByAnother {
            path: path.to_path_buf(),
            volume: volume.to_string(),
            other: other.volume_id.clone(),
            offset_gib: other.offset_gib,
            size_gib: other.size_gib,
        });
    }
    Ok(())
}

/// Marks the extent of deleted `volume` erased in the drive's record, so the
/// record no longer counts it live. Blocking; the caller holds the claim-record
/// lock.
pub fn mark_erased(path: &Path, volume: &str, extent: &VolumeExtent) -> Result<(), NodeError> {
    let Some(stored) = claim_record::read(path)? else {
        // No record: nothing on the drive counts this extent.
        return Ok(());
    };
    let erased = ErasedExtent {
        volume_id: volume.to_string(),
        offset_gib: extent.offset_gib,
        size_gib: extent.size_gib,
    };
    let mut record = stored.record.clone();
    // A mark matters only beside a claim the record lists (it makes that claim
    // not live); the others are dropped, so the list never outgrows the claims
    // between two rescans, however many volumes are deleted meanwhile.
    record
        .erased
        .retain(|e| record.claims.iter().any(|c| e.is(c)));
    if record.claims.iter().any(|c| erased.is(c)) && !record.erased.contains(&erased) {
        record.erased.push(erased);
    }
    if record == stored.record {
        return Ok(());
    }
    claim_record::write(path, Some(&stored), &record).map(|_| ())
}

/// Makes sure the drive's record lists `claims` (a volume about to be staged on
/// it, or grown while staged) as live before any tenant data is written there:
/// a volume staged a moment after it was created is on its drives' headers even
/// if the ledger is lost before the next report. Refused, with the header left
/// as it is: a drive whose header names another node, and a claim over another
/// volume's live claim (the ledger placed it there after losing that volume, so
/// staging would hand that volume's data to this one). Blocking; the caller
/// holds the claim-record lock.
pub fn record_claims(node: &str, path: &Path, claims: &[&Claim]) -> Result<(), NodeError> {
    let stored = claim_record::read(path)?;
    let mut record = match &stored {
        Some(stored) if stored.record.owner != node => {
            return Err(NodeError::NotOurDrive {
                path: path.to_path_buf(),
                owner: stored.record.owner.clone(),
                node: node.to_string(),
            });
        }
        Some(stored) => stored.record.clone(),
        None => ClaimRecord {
            owner: node.to_string(),
            ..ClaimRecord::default()
        },
    };
    for claim in claims {
        let span = claim.extent();
        if let Some(other) = record
            .live_claims()
            .find(|c| c.volume_id != claim.volume_id && c.extent().overlaps(&span))
        {
            return Err(NodeError::StagedOverAnother {
                path: path.to_path_buf(),
                volume: claim.volume_id.clone(),
                other: other.volume_id.clone(),
                offset_gib: other.offset_gib,
                size_gib: other.size_gib,
            });
        }
    }
    let before = record.clone();
    // The volume is live (a deleted one is not staged): a mark left by a delete
    // that erased it and then failed to release it would keep its new data
    // uncounted.
    record
        .erased
        .retain(|e| !claims.iter().any(|claim| e.is(claim)));
    for claim in claims {
        if record.claims.contains(claim) {
            continue;
        }
        // A claim grown in place replaces what the record listed of it.
        record.claims.retain(|c| {
            !(c.volume_id == claim.volume_id
                && c.physical_uuid == claim.physical_uuid
                && claim.extent().contains(&c.extent()))
        });
        record.claims.push((*claim).clone());
    }
    if record == before {
        return Ok(());
    }
    claim_record::write(path, stored.as_ref(), &record).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::claim_record::tests::claim;
    use crate::node::{GIB, signature::HEADER_BYTES};

    /// A sparse 8 GiB drive image with a blank header.
    fn drive_image(dir: &tempfile::TempDir) -> std::path::PathBuf {
        let path = dir.path().join("drive.img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(HEADER_BYTES + 8 * GIB)
            .unwrap();
        path
    }

    #[test]
    fn staging_a_grown_volume_replaces_its_smaller_claim_in_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = drive_image(&dir);
        record_claims("n", &path, &[&claim("a", 0, 2), &claim("b", 4, 1)]).unwrap();
        record_claims("n", &path, &[&claim("a", 0, 3)]).unwrap();
        let record = claim_record::read(&path).unwrap().unwrap().record;
        let listed: Vec<(String, u64)> = record
            .claims
            .iter()
            .map(|c| (c.volume_id.clone(), c.size_gib))
            .collect();
        assert_eq!(listed, [("b".to_string(), 1), ("a".to_string(), 3)]);
        let err = record_claims("m", &path, &[&claim("c", 6, 1)]).unwrap_err();
        assert!(matches!(err, NodeError::NotOurDrive { .. }), "{err}");
    }

    #[test]
    fn staging_over_another_volumes_live_claim_is_refused_and_the_header_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = drive_image(&dir);
        // b is live on the drive; a ledger that lost it placed x over it.
        record_claims("n", &path, &[&claim("b", 2, 2)]).unwrap();
        let stored = claim_record::read(&path).unwrap().unwrap();
        let err = record_claims("n", &path, &[&claim("x", 3, 2)]).unwrap_err();
        match &err {
            NodeError::StagedOverAnother {
                volume,
                other,
                offset_gib,
                size_gib,
                ..
            } => assert_eq!(
                (volume.as_str(), other.as_str(), *offset_gib, *size_gib),
                ("x", "b", 2, 2)
            ),
            other => panic!("expected StagedOverAnother, got {other}"),
        }
        assert!(err.to_string().contains("vdrive drives adopt"), "{err}");
        assert_eq!(
            claim_record::read(&path).unwrap().unwrap(),
            stored,
            "the header is left as it was"
        );
        // Right next to b, or over b's space once b is erased, is fine.
        record_claims("n", &path, &[&claim("x", 4, 2)]).unwrap();
        mark_erased(&path, "b", &extent(2, 2)).unwrap();
        record_claims("n", &path, &[&claim("y", 2, 2)]).unwrap();
        let record = claim_record::read(&path).unwrap().unwrap().record;
        let live: Vec<&str> = record.live_claims().map(|c| c.volume_id.as_str()).collect();
        assert_eq!(live, ["x", "y"]);
    }

    #[test]
    fn staging_a_volume_whose_delete_was_cut_short_counts_it_live_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = drive_image(&dir);
        record_claims("n", &path, &[&claim("a", 0, 2)]).unwrap();
        // Erased and marked, but the release never happened: the ledger still
        // has a live, and a stage writes to it again.
        mark_erased(&path, "a", &extent(0, 2)).unwrap();
        let marked = claim_record::read(&path).unwrap().unwrap().record;
        assert_eq!(marked.live_claims().count(), 0);
        record_claims("n", &path, &[&claim("a", 0, 2)]).unwrap();
        let record = claim_record::read(&path).unwrap().unwrap().record;
        assert!(record.erased.is_empty(), "{record:?}");
        let live: Vec<&str> = record.live_claims().map(|c| c.volume_id.as_str()).collect();
        assert_eq!(live, ["a"], "a lost ledger would find a on the drive");
    }

    #[test]
    fn a_scan_between_an_erase_and_its_release_leaves_the_erased_volume_out_of_the_header() {
        let drive = Uuid::from_u128(7);
        let (v, b, w) = (claim("v", 0, 2), claim("b", 4, 1), claim("w", 6, 1));
        let ledger = NodeLedger {
            node: "n".into(),
            pool: None,
            drives: Vec::new(),
            claims: vec![v.clone(), b.clone(), w.clone()],
        };
        // The header lists b (staged) and w (staged, then erased): v was
        // created, never staged, and has just been erased.
        let previous = ClaimRecord {
            owner: "n".into(),
            claims: vec![b.clone(), w.clone()],
            erased: vec![ErasedExtent::of(&w)],
        };
        let listed = |record: &ClaimRecord| {
            let mut ids: Vec<String> = record.claims.iter().map(|c| c.volume_id.clone()).collect();
            ids.sort();
            ids
        };
        let none = ErasedUnreleased::default();
        assert_eq!(
            listed(&record_for(&ledger, drive, Some(&previous), &none)),
            ["b", "v", "w"],
            "a scan lists the ledger's claims, v too while it is not erased"
        );

        let mut erased = ErasedUnreleased::default();
        erased.erased("v");
        erased.erased("w");
        let record = record_for(&ledger, drive, Some(&previous), &erased);
        assert_eq!(
            listed(&record),
            ["b", "w"],
            "v is left out; w keeps its mark"
        );
        let live: Vec<&str> = record.live_claims().map(|c| c.volume_id.as_str()).collect();
        assert_eq!(live, ["b"]);
        // After the releases, the header agrees with the ledger.
        let released = NodeLedger {
            claims: vec![b.clone()],
            ..ledger.clone()
        };
        let header = DriveHeader::Owned {
            owner: "n".into(),
            claims: record.live_claims().cloned().collect(),
        };
        assert_eq!(header.disagreement("n", drive, &released.claims), None);

        // Released volumes are forgotten; a volume staged again is live again.
        erased.erased("b");
        erased.keep_only_in(&released);
        assert!(!erased.contains("v") && !erased.contains("w"));
        erased.staged("b");
        assert!(!erased.contains("b"));
    }

    fn extent(offset_gib: u64, size_gib: u64) -> VolumeExtent {
        VolumeExtent {
            virtual_uuid: Uuid::nil(),
            physical_uuid: Uuid::nil(),
            drive_type: None,
            offset_gib,
            size_gib,
        }
    }

    #[test]
    fn erasing_marks_only_what_the_header_lists_and_drops_stale_marks() {
        let dir = tempfile::tempdir().unwrap();
        let path = drive_image(&dir);
        record_claims("n", &path, &[&claim("a", 0, 2), &claim("b", 4, 1)]).unwrap();
        mark_erased(&path, "a", &extent(0, 2)).unwrap();
        let stored = claim_record::read(&path).unwrap().unwrap();
        assert_eq!(
            stored.record.live_claims().count(),
            1,
            "a is erased, b live"
        );

        // A volume the header never listed (deleted before it was staged)
        // needs no mark, and nothing is written for it.
        mark_erased(&path, "never-staged", &extent(6, 1)).unwrap();
        let after = claim_record::read(&path).unwrap().unwrap();
        assert_eq!(after.generation, stored.generation);

        // Once a rescan has dropped a's claim, its mark goes with the next write.
        let mut rescanned = after.record.clone();
        rescanned.claims.retain(|c| c.volume_id != "a");
        claim_record::write(&path, Some(&after), &rescanned).unwrap();
        mark_erased(&path, "b", &extent(4, 1)).unwrap();
        let record = claim_record::read(&path).unwrap().unwrap().record;
        let marks: Vec<&str> = record.erased.iter().map(|e| e.volume_id.as_str()).collect();
        assert_eq!(marks, ["b"]);
        assert_eq!(record.live_claims().count(), 0);
    }
}
