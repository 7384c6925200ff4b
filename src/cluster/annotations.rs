//! The two Node annotations that hold a node's ledger in Kubernetes, in the
//! drive-sharing spec's format so that its `kubectl get node … | jq` reads them:
//!
//! - `vdrive.io/virtual-drive-claims`: one entry per virtual drive,
//!   `{"<virtual uuid>": ["<namespace>:<pvc>", "<physical uuid>", <GiB>, <offset GiB>,
//!   "<volume id>", "<pool>"|null, "<volume name>", <part>, markers...]}`. The
//!   spec's three fields come first; what vdrive needs follows. Optional trailing
//!   markers, each at most once and written in this order: `"releasing"` (a
//!   deleted volume's extent that its node has not erased yet) and `"fixed"` (the
//!   volume came from a fixed-size class and never grows). An entry without
//!   markers is exactly the eight-element form older versions wrote, and a
//!   releasing extent of a volume that is not fixed is their nine-element form,
//!   so those still read both ways; only a fixed volume's entries are new.
//!   A volume's first virtual drive (part 0) ends with one object more, what
//!   the volume was asked for (its class's layout under the StorageClass keys'
//!   names, and `access`: `block` or the filesystem), e.g. `{"tlc":1,"qlc":0,
//!   "driveCores":1,"minDriveGiB":1,"maxVirtualDrivesPerCore":8,
//!   "enforceMinDrivesPerTypePerCore":true,"access":"ext4"}`; entries written
//!   before it was kept have none and still read.
//! - `vdrive.io/shared-drives`: the node's signed drives, `[{"uuid", "serial",
//!   "type", "capacityGiB", "backend", "missing"?, "quarantined"?}]`; `backend` is
//!   how the node builds volumes on the drive (`loop` or `dm`, absent: `loop`),
//!   which bounds how many virtual drives one of its volumes may have;
//!   `quarantined` says why a drive here takes no new claims (its header
//!   disagrees with the ledger).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::drive::{Backend, DriveType};
use crate::ledger::{Claim, PhysicalDrive};
use crate::pools::Pool;

pub const CLAIMS_ANNOTATION: &str = "vdrive.io/virtual-drive-claims";
pub const DRIVES_ANNOTATION: &str = "vdrive.io/shared-drives";
/// The Node label that puts a server in a pool (`pool=k8s|vm`).
pub const POOL_LABEL: &str = "pool";
/// The extended resource a node advertises: GiB of signed drives.
pub const CAPACITY_RESOURCE: &str = "vdrive.io/shared-drives-capacity";

/// The most GiB an offset or a size may reach: what a drive's bytes can address
/// (u64 bytes). Anything past it is a hand edit or corruption, never a drive.
const MAX_GIB: u64 = u64::MAX >> 30;

const RELEASING: &str = "releasing";
const FIXED: &str = "fixed";

pub fn encode_claims(claims: &[Claim]) -> String {
    let entries: Map<String, Value> = claims
        .iter()
        .map(|c| {
            let mut entry = vec![
                json!(c.owner),
                json!(c.physical_uuid),
                json!(c.size_gib),
                json!(c.offset_gib),
                json!(c.volume_id),
                json!(c.pool.map(Pool::as_str)),
                json!(c.volume_name),
                json!(c.part),
            ];
            if c.releasing {
                entry.push(json!(RELEASING));
            }
            if c.fixed {
                entry.push(json!(FIXED));
            }
            if let Some(spec) = &c.spec {
                entry.push(json!(spec));
            }
            (c.virtual_uuid.to_string(), Value::Array(entry))
        })
        .collect();
    Value::Object(entries).to_string()
}

/// Parses the claims annotation. Any malformed entry fails the whole node: a
/// ledger read in part would hand out space that is in use.
pub fn decode_claims(text: &str) -> Result<Vec<Claim>, String> {
    let entries: Map<String, Value> = serde_json::from_str(text)
        .map_err(|e| format!("{CLAIMS_ANNOTATION} is not a JSON object: {e}"))?;
    entries
        .into_iter()
        .map(|(key, value)| {
            decode_claim(&key, value).map_err(|e| format!("{CLAIMS_ANNOTATION} entry {key:?}: {e}"))
        })
        .collect()
}

fn decode_claim(key: &str, value: Value) -> Result<Claim, String> {
    let virtual_uuid = Uuid::parse_str(key).map_err(|e| format!("the key is not a uuid: {e}"))?;
    let Value::Array(fields) = value else {
        return Err("not an array".into());
    };
    if !(8..=11).contains(&fields.len()) {
        return Err(format!(
            "has {} fields; expected [owner, physical uuid, GiB, offset GiB, volume id, pool, volume name, part] and optionally \"{RELEASING}\", \"{FIXED}\" and the volume's spec",
            fields.len()
        ));
    }
    let text = |i: usize, what: &str| {
        fields[i]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("field {i} ({what}) is not a string"))
    };
    let number = |i: usize, what: &str| {
        fields[i]
            .as_u64()
            .ok_or_else(|| format!("field {i} ({what}) is not a whole number"))
    };
    let pool = match &fields[5] {
        Value::Null => None,
        Value::String(name) => Some(
            name.parse::<Pool>()
                .map_err(|e| format!("field 5 (pool): {e}"))?,
        ),
        _ => return Err("field 5 (pool) is neither a string nor null".into()),
    };
    let (mut releasing, mut fixed) = (false, false);
    let mut spec = None;
    for (i, marker) in fields.iter().enumerate().skip(8) {
        if marker.is_object() {
            if spec.is_some() {
                return Err(format!("field {i} repeats the volume's spec"));
            }
            spec = Some(
                serde_json::from_value(marker.clone())
                    .map_err(|e| format!("field {i} (the volume's spec): {e}"))?,
            );
            continue;
        }
        let seen = match marker.as_str() {
            Some(RELEASING) => &mut releasing,
            Some(FIXED) => &mut fixed,
            _ => {
                return Err(format!(
                    "field {i} is {marker}, expected \"{RELEASING}\" or \"{FIXED}\""
                ));
            }
        };
        if std::mem::replace(seen, true) {
            return Err(format!("field {i} repeats the marker {marker}"));
        }
    }
    let (size_gib, offset_gib) = (number(2, "GiB")?, number(3, "offset GiB")?);
    if offset_gib
        .checked_add(size_gib)
        .is_none_or(|end| end > MAX_GIB)
    {
        return Err(format!(
            "field 3 (offset GiB) {offset_gib} + field 2 (GiB) {size_gib} ends past the largest drive vdrive can address ({MAX_GIB} GiB)"
        ));
    }
    Ok(Claim {
        virtual_uuid,
        owner: text(0, "owner")?,
        physical_uuid: Uuid::parse_str(&text(1, "physical uuid")?)
            .map_err(|e| format!("field 1 (physical uuid): {e}"))?,
        size_gib,
        offset_gib,
        volume_id: text(4, "volume id")?,
        pool,
        volume_name: text(6, "volume name")?,
        part: u32::try_from(number(7, "part")?)
            .map_err(|_| "field 7 (part) is too large".to_string())?,
        fixed,
        releasing,
        spec,
    })
}

/// One drive as the `vdrive.io/shared-drives` annotation lists it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SharedDrive {
    uuid: Uuid,
    serial: String,
    #[serde(rename = "type")]
    drive_type: DriveType,
    #[serde(rename = "capacityGiB")]
    capacity_gib: u64,
    /// How the node builds volumes on this drive (`loop` or `dm`).
    #[serde(default)]
    backend: Backend,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    missing: bool,
    /// Why the drive takes no new claims although it is here (its header
    /// disagrees with the ledger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quarantined: Option<String>,
}

pub fn encode_drives(drives: &[PhysicalDrive]) -> String {
    let listed: Vec<SharedDrive> = drives
        .iter()
        .map(|d| SharedDrive {
            uuid: d.uuid,
            serial: d.serial.clone(),
            drive_type: d.drive_type,
            capacity_gib: d.capacity_gib,
            backend: d.backend,
            missing: d.missing,
            quarantined: d.quarantined.clone(),
        })
        .collect();
    serde_json::to_string(&listed).unwrap_or_else(|_| "[]".to_string())
}

pub fn decode_drives(text: &str) -> Result<Vec<PhysicalDrive>, String> {
    let listed: Vec<SharedDrive> = serde_json::from_str(text)
        .map_err(|e| format!("{DRIVES_ANNOTATION} is not a list of drives: {e}"))?;
    if let Some(huge) = listed.iter().find(|d| d.capacity_gib > MAX_GIB) {
        return Err(format!(
            "{DRIVES_ANNOTATION}: drive {} has capacityGiB {}, more than vdrive can address ({MAX_GIB} GiB)",
            huge.uuid, huge.capacity_gib
        ));
    }
    Ok(listed
        .into_iter()
        .map(|d| PhysicalDrive {
            uuid: d.uuid,
            serial: d.serial,
            drive_type: d.drive_type,
            capacity_gib: d.capacity_gib,
            backend: d.backend,
            missing: d.missing,
            quarantined: d.quarantined,
        })
        .collect())
}

/// The pool a `pool` label value names; any other value is no pool.
pub fn pool_from_label(value: Option<&str>) -> Option<Pool> {
    value.and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(part: u32, releasing: bool) -> Claim {
        Claim {
            virtual_uuid: Uuid::from_u128(0x31de939a + part as u128),
            volume_id: "5f1c".into(),
            volume_name: "pvc-1".into(),
            owner: "default:data".into(),
            pool: Some(Pool::K8s),
            physical_uuid: Uuid::from_u128(0xfb05d910),
            offset_gib: 10 * part as u64,
            size_gib: 10,
            part,
            fixed: false,
            releasing,
            spec: None,
        }
    }

    #[test]
    fn claims_lead_with_the_specs_three_fields() {
        let text = encode_claims(&[claim(0, false)]);
        let parsed: Value = serde_json::from_str(&text).unwrap();
        let entry = &parsed["00000000-0000-0000-0000-000031de939a"];
        assert_eq!(entry[0], "default:data");
        assert_eq!(entry[1], "00000000-0000-0000-0000-0000fb05d910");
        assert_eq!(entry[2], 10);
        assert_eq!(entry.as_array().unwrap().len(), 8);
    }

    #[test]
    fn claims_round_trip_including_releasing_and_no_pool() {
        let mut outside = claim(1, true);
        outside.pool = None;
        let claims = vec![claim(0, false), outside];
        assert_eq!(decode_claims(&encode_claims(&claims)).unwrap(), claims);
    }

    #[test]
    fn a_fixed_volumes_marker_follows_releasing_and_plain_entries_keep_the_old_form() {
        let mut fixed = claim(0, false);
        fixed.fixed = true;
        let mut both = claim(1, true);
        both.fixed = true;
        let text = encode_claims(&[fixed.clone(), both.clone(), claim(2, true)]);
        let parsed: Value = serde_json::from_str(&text).unwrap();
        let entry = |part: u128| {
            parsed[Uuid::from_u128(0x31de939a + part).to_string()]
                .as_array()
                .unwrap()
                .clone()
        };
        assert_eq!(entry(0)[8..], [json!("fixed")]);
        assert_eq!(entry(1)[8..], [json!("releasing"), json!("fixed")]);
        assert_eq!(
            entry(2)[8..],
            [json!("releasing")],
            "as older versions wrote it"
        );
        assert_eq!(
            decode_claims(&text).unwrap(),
            vec![fixed.clone(), both.clone(), claim(2, true)]
        );
        // Markers are read in any order.
        let swapped = r#"{"00000000-0000-0000-0000-000000000002": ["a:b", "00000000-0000-0000-0000-000000000001", 1, 0, "v", null, "n", 0, "fixed", "releasing"]}"#;
        let read = decode_claims(swapped).unwrap();
        assert!(read[0].fixed && read[0].releasing);
    }

    #[test]
    fn a_volumes_spec_rides_on_its_first_part_after_the_markers() {
        use crate::allocator::{Ratio, Request};
        use crate::ledger::VolumeSpec;
        let spec = VolumeSpec::new(
            &Request::with_ratio(10, Ratio { tlc: 1, qlc: 0 }, 1),
            Some("ext4".into()),
        );
        let mut first = claim(0, true);
        first.fixed = true;
        first.spec = Some(spec.clone());
        let text = encode_claims(&[first.clone(), claim(1, false)]);
        let parsed: Value = serde_json::from_str(&text).unwrap();
        let entry = parsed[first.virtual_uuid.to_string()].as_array().unwrap();
        assert_eq!(entry[8..10], [json!("releasing"), json!("fixed")]);
        assert_eq!(entry[10]["driveCores"], 1);
        assert_eq!(entry[10]["access"], "ext4");
        assert_eq!(
            decode_claims(&text).unwrap(),
            vec![first.clone(), claim(1, false)]
        );
        // Two specs, or one that is not a spec, are refused.
        let twice = text.replacen("\"ext4\"}]", "\"ext4\"},{}]", 1);
        assert!(decode_claims(&twice).is_err(), "{twice}");
        let bad = r#"{"00000000-0000-0000-0000-000000000002": ["a:b", "00000000-0000-0000-0000-000000000001", 1, 0, "v", null, "n", 0, {"tlc": "x"}]}"#;
        assert!(decode_claims(bad).unwrap_err().contains("spec"));
    }

    #[test]
    fn malformed_claims_are_refused_whole() {
        for bad in [
            "[]",
            r#"{"not-a-uuid": ["a:b", "00000000-0000-0000-0000-000000000001", 1, 0, "v", null, "n", 0]}"#,
            r#"{"00000000-0000-0000-0000-000000000002": ["a:b", "00000000-0000-0000-0000-000000000001", 1]}"#,
            r#"{"00000000-0000-0000-0000-000000000002": ["a:b", "00000000-0000-0000-0000-000000000001", -1, 0, "v", null, "n", 0]}"#,
            r#"{"00000000-0000-0000-0000-000000000002": ["a:b", "00000000-0000-0000-0000-000000000001", 1, 0, "v", "ceph", "n", 0]}"#,
            r#"{"00000000-0000-0000-0000-000000000002": ["a:b", "00000000-0000-0000-0000-000000000001", 1, 0, "v", null, "n", 0, "gone"]}"#,
            r#"{"00000000-0000-0000-0000-000000000002": ["a:b", "00000000-0000-0000-0000-000000000001", 1, 0, "v", null, "n", 0, "fixed", "fixed"]}"#,
            r#"{"00000000-0000-0000-0000-000000000002": ["a:b", "00000000-0000-0000-0000-000000000001", 1, 0, "v", null, "n", 0, "releasing", "fixed", "fixed"]}"#,
        ] {
            assert!(decode_claims(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn offsets_and_sizes_that_overflow_are_refused_not_added() {
        for (size, offset) in [
            (1, u64::MAX),
            (u64::MAX, 1),
            (u64::MAX, u64::MAX),
            (1, MAX_GIB),
        ] {
            let text = format!(
                r#"{{"00000000-0000-0000-0000-000000000002": ["a:b", "00000000-0000-0000-0000-000000000001", {size}, {offset}, "v", null, "n", 0]}}"#
            );
            let err = decode_claims(&text).unwrap_err();
            assert!(
                err.contains(CLAIMS_ANNOTATION) && err.contains("past the largest drive"),
                "{err}"
            );
        }
        let text = format!(
            r#"{{"00000000-0000-0000-0000-000000000002": ["a:b", "00000000-0000-0000-0000-000000000001", 1, {}, "v", null, "n", 0]}}"#,
            MAX_GIB - 1
        );
        assert!(decode_claims(&text).is_ok());
        let huge = r#"[{"uuid":"00000000-0000-0000-0000-000000000007","serial":"S7","type":"qlc","capacityGiB":18446744073709551615}]"#;
        assert!(decode_drives(huge).unwrap_err().contains("capacityGiB"));
    }

    #[test]
    fn drives_round_trip_and_name_their_backend() {
        let drive = |n: u128, backend: Backend| PhysicalDrive {
            uuid: Uuid::from_u128(n),
            serial: format!("S{n}"),
            drive_type: DriveType::Qlc,
            capacity_gib: 7680,
            backend,
            missing: n == 7,
            quarantined: None,
        };
        let drives = vec![drive(7, Backend::Loop), drive(8, Backend::Dm)];
        let text = encode_drives(&drives);
        assert!(text.contains(r#""capacityGiB":7680"#), "{text}");
        assert!(text.contains(r#""backend":"loop""#), "{text}");
        assert!(text.contains(r#""backend":"dm""#), "{text}");
        assert_eq!(decode_drives(&text).unwrap(), drives);
        assert!(decode_drives("{}").is_err());
        assert!(
            decode_drives(r#"[{"uuid":"00000000-0000-0000-0000-000000000007","serial":"S7","type":"qlc","capacityGiB":1,"backend":"spdk"}]"#).is_err(),
            "an unknown backend is not guessed"
        );
        // A list without backends (as a test or a hand edit may write) reads as loop.
        let bare = decode_drives(r#"[{"uuid":"00000000-0000-0000-0000-000000000007","serial":"S7","type":"qlc","capacityGiB":1}]"#).unwrap();
        assert_eq!(bare[0].backend, Backend::Loop);
    }

    #[test]
    fn only_the_two_pools_are_pools() {
        assert_eq!(pool_from_label(Some("k8s")), Some(Pool::K8s));
        assert_eq!(pool_from_label(Some("vm")), Some(Pool::Vm));
        assert_eq!(pool_from_label(Some("gpu")), None);
        assert_eq!(pool_from_label(None), None);
    }
}
