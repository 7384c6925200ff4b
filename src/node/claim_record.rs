//! The claim record: what a signed drive itself says about whose it is and what is
//! carved on it, kept in its header the way LVM keeps a volume group's metadata on
//! each physical volume. The ledger stays the cluster's view; the record lets a
//! node notice, before anything is allocated on the drive, that the ledger lost
//! or forked (a node renamed, a Node re-created, a state directory lost, a drive
//! moved to another server), and lets an operator rebuild the ledger from it.
//!
//! Two copies live in the header after the signature, each a slot of
//! [`SLOT_BYTES`]: a write goes to the slot not holding the newest valid copy and
//! is flushed, so a torn write leaves the previous copy readable. Each slot:
//!
//! | bytes   | field                                   |
//! | ------- | --------------------------------------- |
//! | 0..8    | magic `VDRVREC1`                        |
//! | 8..16   | generation (u64, newest wins)           |
//! | 16..20  | length of the JSON body (u32)           |
//! | 20..24  | CRC-32 of bytes 8..20 and the body      |
//! | 24..    | the body: [`ClaimRecord`] as JSON       |
//!
//! A freshly signed drive has zeros there: no record, no owner, nothing claimed.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::NodeError;
use super::signature::{HEADER_BYTES, crc32};
use crate::drive::Extent;
use crate::ledger::Claim;

pub const MAGIC: [u8; 8] = *b"VDRVREC1";
/// Where the first slot starts; the signature keeps everything before it.
pub const FIRST_SLOT: u64 = 64 << 10;
/// Each slot's size: two of them fill the header after [`FIRST_SLOT`].
pub const SLOT_BYTES: u64 = (HEADER_BYTES - FIRST_SLOT) / 2;
const PREFIX: usize = 24;
/// Writes are padded to whole 4 KiB blocks.
const BLOCK: usize = 4096;

/// The drive's own account of itself.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRecord {
    /// The node whose ledger the claims below belong to.
    pub owner: String,
    /// The virtual drives carved on this drive, as the owner's ledger had them.
    pub claims: Vec<Claim>,
    /// Extents this node has erased whose claims the ledger may not have released
    /// yet: a claim listed here is no evidence of a lost ledger.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub erased: Vec<ErasedExtent>,
}

/// An extent erased for a volume that is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasedExtent {
    pub volume_id: String,
    pub offset_gib: u64,
    pub size_gib: u64,
}

impl ErasedExtent {
    pub fn of(claim: &Claim) -> Self {
        ErasedExtent {
            volume_id: claim.volume_id.clone(),
            offset_gib: claim.offset_gib,
            size_gib: claim.size_gib,
        }
    }

    /// Whether this erased extent covers `claim`: the same volume's, and within
    /// it. A volume grown after its header listed it leaves that smaller claim
    /// in the header beside the grown extent that is erased.
    pub fn is(&self, claim: &Claim) -> bool {
        self.volume_id == claim.volume_id
            && Extent::new(self.offset_gib, self.size_gib).contains(&claim.extent())
    }
}

impl ClaimRecord {
    /// The claims the record still holds live: not erased.
    pub fn live_claims(&self) -> impl Iterator<Item = &Claim> {
        self.claims
            .iter()
            .filter(|c| !self.erased.iter().any(|e| e.is(c)))
    }
}

/// A record as read, with the generation it was written with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub generation: u64,
    pub record: ClaimRecord,
}

fn slot_offset(slot: u64) -> u64 {
    FIRST_SLOT + slot * SLOT_BYTES
}

/// Encodes one slot's bytes, padded to whole blocks.
fn encode(generation: u64, record: &ClaimRecord) -> Result<Vec<u8>, String> {
    let body = serde_json::to_vec(record).map_err(|e| e.to_string())?;
    let len = u32::try_from(body.len()).map_err(|_| "the record is too large".to_string())?;
    let total = PREFIX + body.len();
    if total as u64 > SLOT_BYTES {
        return Err(format!(
            "{} claims take {total} bytes, more than the {SLOT_BYTES} bytes a drive's header keeps for them",
            record.claims.len()
        ));
    }
    let mut buf = Vec::with_capacity(total.div_ceil(BLOCK) * BLOCK);
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&generation.to_le_bytes());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&body);
    let crc = crc32(&[&buf[8..20], &body[..]].concat());
    buf[20..24].copy_from_slice(&crc.to_le_bytes());
    buf.resize(total.div_ceil(BLOCK) * BLOCK, 0);
    Ok(buf)
}

/// What one slot holds: nothing (no magic), a valid record, or damage.
#[derive(Debug, PartialEq, Eq)]
enum Slot {
    Empty,
    Valid(Stored),
    Damaged(String),
}

fn decode_prefix(prefix: &[u8; PREFIX]) -> Option<(u64, u32, u32)> {
    if prefix[..8] != MAGIC {
        return None;
    }
    let mut generation = [0u8; 8];
    generation.copy_from_slice(&prefix[8..16]);
    let mut len = [0u8; 4];
    len.copy_from_slice(&prefix[16..20]);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&prefix[20..24]);
    Some((
        u64::from_le_bytes(generation),
        u32::from_le_bytes(len),
        u32::from_le_bytes(crc),
    ))
}

fn read_slot(file: &File, path: &Path, slot: u64) -> Result<Slot, NodeError> {
    let at = slot_offset(slot);
    let mut prefix = [0u8; PREFIX];
    file.read_exact_at(&mut prefix, at)
        .map_err(NodeError::io("read the claim record of", path))?;
    let Some((generation, len, stored_crc)) = decode_prefix(&prefix) else {
        return Ok(Slot::Empty);
    };
    if PREFIX as u64 + u64::from(len) > SLOT_BYTES {
        return Ok(Slot::Damaged(format!(
            "slot {slot} claims a {len}-byte body, larger than the slot"
        )));
    }
    let mut body = vec![0u8; len as usize];
    file.read_exact_at(&mut body, at + PREFIX as u64)
        .map_err(NodeError::io("read the claim record of", path))?;
    let crc = crc32(&[&prefix[8..20], &body[..]].concat());
    if crc != stored_crc {
        return Ok(Slot::Damaged(format!("slot {slot} fails its checksum")));
    }
    match serde_json::from_slice::<ClaimRecord>(&body) {
        Ok(record) => Ok(Slot::Valid(Stored { generation, record })),
        Err(e) => Ok(Slot::Damaged(format!("slot {slot} does not parse: {e}"))),
    }
}

/// Reads a drive's claim record: None when the drive has none (never owned),
/// the newest valid copy otherwise. One damaged copy is a torn write and is
/// ignored; only when every copy that is there is damaged is the record lost,
/// which is an error: the drive's claims cannot be told.
pub fn read(path: &Path) -> Result<Option<Stored>, NodeError> {
    let file = File::open(path).map_err(NodeError::io("open", path))?;
    let slots = [read_slot(&file, path, 0)?, read_slot(&file, path, 1)?];
    let newest = slots
        .iter()
        .filter_map(|s| match s {
            Slot::Valid(stored) => Some(stored),
            _ => None,
        })
        .max_by_key(|s| s.generation);
    if let Some(stored) = newest {
        return Ok(Some(stored.clone()));
    }
    let damage: Vec<&str> = slots
        .iter()
        .filter_map(|s| match s {
            Slot::Damaged(reason) => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    if damage.is_empty() {
        Ok(None)
    } else {
        Err(NodeError::BadClaimRecord {
            path: path.to_path_buf(),
            reason: damage.join("; "),
        })
    }
}

/// Writes `record` as the drive's newest copy, after `previous` (what [`read`]
/// returned), into the other slot, and flushes it. Refused, with nothing
/// written, when the drive's newest copy is no longer `previous`: another
/// process (`vdrive drives adopt` beside a running node) wrote it since, and
/// writing over that would lose its change. Within one process the callers
/// hold the claim-record lock from their read to this write.
pub fn write(
    path: &Path,
    previous: Option<&Stored>,
    record: &ClaimRecord,
) -> Result<Stored, NodeError> {
    let on_drive = read(path)?.map(|s| s.generation);
    let expected = previous.map(|p| p.generation);
    if on_drive != expected {
        return Err(NodeError::ClaimRecordChanged {
            path: path.to_path_buf(),
            read: expected.unwrap_or(0),
            now: on_drive.unwrap_or(0),
        });
    }
    let generation = previous.map_or(1, |p| p.generation.saturating_add(1));
    let bytes = encode(generation, record).map_err(|reason| NodeError::BadClaimRecord {
        path: path.to_path_buf(),
        reason,
    })?;
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(NodeError::io("open for writing", path))?;
    file.write_all_at(&bytes, slot_offset(generation % 2))
        .map_err(NodeError::io("write the claim record to", path))?;
    file.sync_all()
        .map_err(NodeError::io("flush the claim record to", path))?;
    Ok(Stored {
        generation,
        record: record.clone(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::node::GIB;
    use uuid::Uuid;

    /// A sparse drive image with a blank header.
    pub(crate) fn image() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drive.img");
        File::create(&path)
            .unwrap()
            .set_len(HEADER_BYTES + GIB)
            .unwrap();
        (dir, path)
    }

    /// A claim of `volume` on drive 7, as the node's tests use them.
    pub(crate) fn claim(volume: &str, offset_gib: u64, size_gib: u64) -> Claim {
        Claim {
            virtual_uuid: Uuid::new_v4(),
            volume_id: volume.into(),
            volume_name: format!("pvc-{volume}"),
            owner: "default:data".into(),
            pool: None,
            physical_uuid: Uuid::from_u128(7),
            offset_gib,
            size_gib,
            part: 0,
            fixed: false,
            releasing: false,
            spec: None,
        }
    }

    fn record(claims: Vec<Claim>) -> ClaimRecord {
        ClaimRecord {
            owner: "node-a".into(),
            claims,
            erased: vec![],
        }
    }

    #[test]
    fn the_slots_fit_between_the_signature_and_the_first_extent() {
        const { assert!(FIRST_SLOT >= 4096) };
        assert_eq!(slot_offset(2), HEADER_BYTES);
    }

    #[test]
    fn a_blank_header_has_no_record() {
        let (_dir, path) = image();
        assert_eq!(read(&path).unwrap(), None);
    }

    #[test]
    fn writes_alternate_slots_and_the_newest_wins() {
        let (_dir, path) = image();
        let first = write(&path, None, &record(vec![claim("a", 0, 10)])).unwrap();
        let second = write(&path, Some(&first), &record(vec![claim("b", 10, 5)])).unwrap();
        assert_eq!(second.generation, first.generation + 1);
        assert_eq!(read(&path).unwrap(), Some(second.clone()));
        let third = write(&path, Some(&second), &record(vec![])).unwrap();
        assert_eq!(read(&path).unwrap(), Some(third));
    }

    #[test]
    fn a_write_from_a_copy_another_writer_has_replaced_is_refused() {
        let (_dir, path) = image();
        let first = write(&path, None, &record(vec![claim("a", 0, 10)])).unwrap();
        // Another process writes after this one read `first`.
        let theirs = write(&path, Some(&first), &record(vec![claim("b", 10, 5)])).unwrap();
        let err = write(&path, Some(&first), &record(vec![claim("c", 20, 5)])).unwrap_err();
        assert!(
            matches!(
                err,
                NodeError::ClaimRecordChanged {
                    read: 1,
                    now: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("run it again"), "{err}");
        assert_eq!(read(&path).unwrap(), Some(theirs.clone()), "theirs is kept");
        // A first write onto a drive someone else has just given a record too.
        let (_dir, blank) = image();
        write(&blank, None, &record(vec![])).unwrap();
        let err = write(&blank, None, &record(vec![claim("d", 0, 1)])).unwrap_err();
        assert!(
            matches!(
                err,
                NodeError::ClaimRecordChanged {
                    read: 0,
                    now: 1,
                    ..
                }
            ),
            "{err}"
        );
        // Read again, the write goes through.
        let now = read(&path).unwrap();
        write(&path, now.as_ref(), &record(vec![claim("c", 20, 5)])).unwrap();
    }

    #[test]
    fn a_torn_write_leaves_the_previous_copy() {
        let (_dir, path) = image();
        let first = write(&path, None, &record(vec![claim("a", 0, 10)])).unwrap();
        let second = write(&path, Some(&first), &record(vec![claim("b", 0, 10)])).unwrap();
        // Tear the newest copy: flip a byte of its body.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"X", slot_offset(second.generation % 2) + PREFIX as u64 + 3)
            .unwrap();
        assert_eq!(read(&path).unwrap(), Some(first));
    }

    #[test]
    fn a_record_with_every_copy_damaged_is_an_error_not_a_blank() {
        let (_dir, path) = image();
        let first = write(&path, None, &record(vec![claim("a", 0, 10)])).unwrap();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"X", slot_offset(first.generation % 2) + 16)
            .unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
    }

    #[test]
    fn erased_extents_are_not_live() {
        let mut r = record(vec![claim("a", 0, 10), claim("b", 10, 5)]);
        r.erased.push(ErasedExtent::of(&r.claims[0]));
        let live: Vec<&str> = r.live_claims().map(|c| c.volume_id.as_str()).collect();
        assert_eq!(live, ["b"]);
    }

    #[test]
    fn an_erased_grown_extent_covers_the_claim_listed_before_it_grew() {
        // Staged at 2 GiB, grown to 5 GiB in place, staged again, deleted.
        let mut r = record(vec![claim("a", 0, 2), claim("a", 0, 5), claim("b", 5, 1)]);
        r.erased.push(ErasedExtent::of(&r.claims[1]));
        let live: Vec<&str> = r.live_claims().map(|c| c.volume_id.as_str()).collect();
        assert_eq!(live, ["b"]);
        // Another volume's claim in the same place is not erased by it.
        let r = ClaimRecord {
            erased: vec![ErasedExtent::of(&claim("a", 0, 5))],
            ..record(vec![claim("c", 1, 2)])
        };
        assert_eq!(r.live_claims().count(), 1);
    }

    #[test]
    fn a_record_too_large_for_its_slot_is_refused() {
        let (_dir, path) = image();
        let many: Vec<Claim> = (0..4000).map(|i| claim(&format!("v{i}"), i, 1)).collect();
        let err = write(&path, None, &record(many)).unwrap_err().to_string();
        assert!(err.contains("4000 claims"), "{err}");
        assert_eq!(read(&path).unwrap(), None);
    }

    #[test]
    fn how_many_claims_fit_in_a_slot() {
        // A typical claim: a CSI volume id, a PV name, a PVC owner of common length.
        let one = serde_json::to_vec(&claim("vol-0123456789abcdef", 0, 1))
            .unwrap()
            .len();
        let fit = (SLOT_BYTES as usize - PREFIX) / (one + 1);
        assert!(fit >= 1000, "{fit} claims of {one} bytes");
    }
}
