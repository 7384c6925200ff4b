//! What this node remembers about a staged volume, so unstage, publish, stats
//! and expansion (whose requests carry no volume context) know it. One JSON file
//! per volume under `<state dir>/volumes/`, replaced atomically.
//!
//! The device itself is never remembered by name: loop device numbers are reused
//! and a dm device is found again by its name and checked against its table, so
//! each call finds the device from the extents recorded here.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::NodeError;
use crate::ledger::VolumeExtent;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingRecord {
    pub volume_id: String,
    /// The volume's extents in device order when it was staged (or last grown).
    #[serde(default)]
    pub extents: Vec<VolumeExtent>,
    /// Records written before volumes could have several parts held one extent.
    #[serde(default, skip_serializing)]
    extent: Option<VolumeExtent>,
    pub block: bool,
    pub fs_type: Option<String>,
    pub staging_path: PathBuf,
    /// Target paths the volume is published at, and whether one of them was
    /// published single-writer (which admits no second target).
    #[serde(default)]
    pub published: Vec<PathBuf>,
    #[serde(default)]
    pub single_writer: bool,
    /// mkfs was started on the (blank) device and has not been seen to end.
    #[serde(default)]
    pub formatting: bool,
}

impl StagingRecord {
    pub fn new(
        volume_id: &str,
        extents: Vec<VolumeExtent>,
        block: bool,
        staging_path: PathBuf,
    ) -> Self {
        StagingRecord {
            volume_id: volume_id.to_string(),
            extents,
            extent: None,
            block,
            fs_type: None,
            staging_path,
            published: Vec::new(),
            single_writer: false,
            formatting: false,
        }
    }

    pub fn mode(&self) -> &'static str {
        if self.block { "block" } else { "mount" }
    }
}

/// The records of one node, in one directory.
#[derive(Clone)]
pub struct StagingRecords {
    dir: PathBuf,
}

impl StagingRecords {
    pub fn new(state_dir: &Path) -> Self {
        StagingRecords {
            dir: state_dir.join("volumes"),
        }
    }

    fn path(&self, volume_id: &str) -> PathBuf {
        // Volume ids are ours (uuids) but arrive from the wire: keep them a file name.
        let safe: String = volume_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{safe}.json"))
    }

    pub fn load(&self, volume_id: &str) -> Result<Option<StagingRecord>, NodeError> {
        let path = self.path(volume_id);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(NodeError::io("read", path)(e)),
        };
        let mut record: StagingRecord =
            serde_json::from_slice(&bytes).map_err(|e| NodeError::Record {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if let Some(old) = record.extent.take()
            && record.extents.is_empty()
        {
            record.extents.push(old);
        }
        if record.volume_id != volume_id {
            return Err(NodeError::Record {
                path,
                reason: format!("it belongs to volume {}", record.volume_id),
            });
        }
        Ok(Some(record))
    }

    pub fn save(&self, record: &StagingRecord) -> Result<(), NodeError> {
        let path = self.path(&record.volume_id);
        std::fs::create_dir_all(&self.dir).map_err(NodeError::io("create", &self.dir))?;
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| NodeError::Record {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        // Write, flush, then rename: a crash never leaves half a record.
        let tmp = path.with_extension("json.tmp");
        write_synced(&tmp, &bytes)?;
        std::fs::rename(&tmp, &path).map_err(NodeError::io("rename", &tmp))
    }

    pub fn remove(&self, volume_id: &str) -> Result<(), NodeError> {
        let path = self.path(volume_id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(NodeError::io("remove", path)(e))
            }
            _ => Ok(()),
        }
    }

    /// Every staging record on this node.
    pub fn all(&self) -> Result<Vec<StagingRecord>, NodeError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(NodeError::io("list", &self.dir)(e)),
        };
        let mut records = Vec::new();
        for entry in entries {
            let path = entry.map_err(NodeError::io("list", &self.dir))?.path();
            let Some(volume_id) = path
                .extension()
                .filter(|x| *x == "json")
                .and_then(|_| path.file_stem())
                .and_then(|stem| stem.to_str())
            else {
                continue;
            };
            if let Some(record) = self.load(volume_id)? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Whether any volume is staged on this node (their devices sit on the drives).
    pub fn any(&self) -> bool {
        std::fs::read_dir(&self.dir)
            .map(|mut entries| {
                entries.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json")))
            })
            .unwrap_or(false)
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(NodeError::io("create", path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(NodeError::io("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn extent(offset_gib: u64) -> VolumeExtent {
        VolumeExtent {
            virtual_uuid: Uuid::new_v4(),
            physical_uuid: Uuid::new_v4(),
            drive_type: None,
            offset_gib,
            size_gib: 1,
        }
    }

    #[test]
    fn records_round_trip_and_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let records = StagingRecords::new(dir.path());
        assert!(!records.any());
        let record = StagingRecord::new("v-1", vec![extent(0), extent(3)], false, "/s".into());
        records.save(&record).unwrap();
        assert!(records.any());
        assert_eq!(records.load("v-1").unwrap(), Some(record));
        records.remove("v-1").unwrap();
        records.remove("v-1").unwrap();
        assert_eq!(records.load("v-1").unwrap(), None);
    }

    #[test]
    fn a_one_extent_record_of_an_older_node_reads_as_one_part() {
        let dir = tempfile::tempdir().unwrap();
        let records = StagingRecords::new(dir.path());
        let old = extent(7);
        let text = serde_json::json!({
            "volume_id": "v-2", "extent": old, "block": true, "fs_type": null,
            "staging_path": "/s", "published": [], "single_writer": false
        });
        std::fs::create_dir_all(dir.path().join("volumes")).unwrap();
        std::fs::write(dir.path().join("volumes/v-2.json"), text.to_string()).unwrap();
        let record = records.load("v-2").unwrap().unwrap();
        assert_eq!(record.extents, vec![old]);
    }

    #[test]
    fn an_unreadable_record_is_an_error_not_an_absence() {
        let dir = tempfile::tempdir().unwrap();
        let records = StagingRecords::new(dir.path());
        std::fs::create_dir_all(dir.path().join("volumes")).unwrap();
        std::fs::write(dir.path().join("volumes/v-3.json"), "{not json").unwrap();
        assert!(matches!(records.load("v-3"), Err(NodeError::Record { .. })));
    }
}
