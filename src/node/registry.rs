//! The signed drives this node has found, and where a volume's extents lie on
//! them. A uuid the registry does not know triggers one rescan before it is
//! refused, so a drive attached a moment ago is found without a restart.

use std::path::PathBuf;
use std::sync::RwLock;

use uuid::Uuid;

use super::backend::Segment;
use super::drives::{self, SignedDrive};
use super::{GIB, NodeError, signature};
use crate::ledger::VolumeExtent;

pub struct DriveRegistry {
    drives: RwLock<Vec<SignedDrive>>,
    /// Extra devices to consider besides the machine's block devices.
    extra: RwLock<Vec<PathBuf>>,
    /// Whether a rescan looks at the machine's block devices at all. Simulated
    /// drives are this node's own: several simulated nodes on one machine (a
    /// test cluster) must not pick up each other's loop devices.
    scan_machine: bool,
    /// Held while the drives' claim records are read and written (see
    /// [`super::ownership`]).
    claim_records: tokio::sync::Mutex<()>,
}

impl DriveRegistry {
    pub fn new(initial: Vec<SignedDrive>) -> Self {
        let extra = initial.iter().map(|d| d.path.clone()).collect();
        DriveRegistry {
            drives: RwLock::new(initial),
            extra: RwLock::new(extra),
            scan_machine: true,
            claim_records: tokio::sync::Mutex::new(()),
        }
    }

    /// The registry of a node's drives found at start: [`Self::only`] those when
    /// they are simulated, else [`Self::new`] (the machine's, rescanned).
    pub fn at_start(found: Vec<SignedDrive>, simulated: bool) -> Self {
        if simulated {
            DriveRegistry::only(found)
        } else {
            DriveRegistry::new(found)
        }
    }

    /// A registry that only ever looks at these drives' devices (simulated drives).
    pub fn only(initial: Vec<SignedDrive>) -> Self {
        DriveRegistry {
            scan_machine: false,
            ..DriveRegistry::new(initial)
        }
    }

    /// The lock over the drives' claim records.
    pub fn claim_records(&self) -> &tokio::sync::Mutex<()> {
        &self.claim_records
    }

    pub fn all(&self) -> Vec<SignedDrive> {
        self.drives
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Scans the machine's block devices (and known extra paths) for signed drives.
    pub fn rescan(&self) -> Vec<SignedDrive> {
        let mut paths = if self.scan_machine {
            drives::candidates()
        } else {
            Vec::new()
        };
        for extra in self.extra.read().unwrap_or_else(|p| p.into_inner()).iter() {
            if !paths.contains(extra) {
                paths.push(extra.clone());
            }
        }
        let found = drives::discover(&paths);
        *self.drives.write().unwrap_or_else(|p| p.into_inner()) = found.clone();
        found
    }

    pub fn find(&self, uuid: &Uuid) -> Option<SignedDrive> {
        let known = |list: &[SignedDrive]| list.iter().find(|d| d.signature.uuid == *uuid).cloned();
        known(&self.all()).or_else(|| known(&self.rescan()))
    }

    /// The drive and byte range of an extent, checked against the drive's bounds.
    pub fn locate(&self, node: &str, extent: &VolumeExtent) -> Result<Segment, NodeError> {
        let drive =
            self.find(&extent.physical_uuid)
                .ok_or_else(|| NodeError::DriveNotAttached {
                    drive: extent.physical_uuid,
                    node: node.to_string(),
                })?;
        let capacity_gib = drive.signature.capacity_gib();
        if extent.offset_gib.saturating_add(extent.size_gib) > capacity_gib {
            return Err(NodeError::ExtentOutsideDrive {
                drive: extent.physical_uuid,
                offset_gib: extent.offset_gib,
                size_gib: extent.size_gib,
                capacity_gib,
            });
        }
        Ok(Segment {
            drive: drive.path,
            offset_bytes: signature::HEADER_BYTES + extent.offset_gib * GIB,
            size_bytes: extent.size_gib * GIB,
        })
    }

    /// Every extent of a volume, located, in device order.
    pub fn locate_all(
        &self,
        node: &str,
        extents: &[VolumeExtent],
    ) -> Result<Vec<Segment>, NodeError> {
        extents.iter().map(|e| self.locate(node, e)).collect()
    }
}
