//! The signed drives this node has found, and where a volume's extents lie on
//! them. A uuid the registry does not know triggers one rescan before it is
//! refused, so a drive attached a moment ago is found without a restart; and a
//! known drive's device is read again before it is used, because a drive
//! detached and another attached in its place between two scans (a hot-swap,
//! a loop device re-bound) leaves its old path naming another drive.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use uuid::Uuid;

use super::backend::Segment;
use super::drives::{self, SignedDrive};
use super::ownership::ErasedUnreleased;
use super::{GIB, NodeError, loopdev, signature};
use crate::ledger::VolumeExtent;

pub struct DriveRegistry {
    drives: RwLock<Vec<SignedDrive>>,
    /// Extra devices to consider besides the machine's block devices.
    extra: RwLock<Vec<PathBuf>>,
    /// The image files of simulated drives: a rescan also looks at the loop
    /// devices they are bound to now, so a simulated drive detached and
    /// attached again at another loop device is found again.
    images: Vec<PathBuf>,
    /// Whether a rescan looks at the machine's block devices at all. Simulated
    /// drives are this node's own: several simulated nodes on one machine (a
    /// test cluster) must not pick up each other's loop devices.
    scan_machine: bool,
    /// A simulated node's image directory: a rescan also takes the drives of
    /// images added there later (signed because the Node was labelled
    /// `vdrive.io/sign-drives`), at whatever loop devices they are bound to.
    sim_dir: Option<PathBuf>,
    /// Held while the drives' claim records are read and written (see
    /// [`super::ownership`]).
    claim_records: tokio::sync::Mutex<ErasedUnreleased>,
}

impl DriveRegistry {
    pub fn new(initial: Vec<SignedDrive>) -> Self {
        let extra = initial.iter().map(|d| d.path.clone()).collect();
        DriveRegistry {
            drives: RwLock::new(initial),
            extra: RwLock::new(extra),
            images: Vec::new(),
            scan_machine: true,
            sim_dir: None,
            claim_records: tokio::sync::Mutex::new(ErasedUnreleased::default()),
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

    /// A registry that only ever looks at these drives (simulated drives): at
    /// whatever loop devices their image files are bound to now, and at those
    /// of their paths that are not loop devices of an image. A loop device a
    /// drive was bound to at start is not looked at again as such: once the
    /// image is detached, anyone may bind another drive there (another
    /// simulated node on the same machine), and that drive is not this node's.
    pub fn only(initial: Vec<SignedDrive>) -> Self {
        let loops = loopdev::list().unwrap_or_default();
        let mut images = Vec::new();
        let mut extra = Vec::new();
        for drive in &initial {
            let device = std::fs::canonicalize(&drive.path).ok();
            let image = loops
                .iter()
                .find(|l| Some(&l.device) == device.as_ref() && l.offset_bytes == 0)
                .map(|l| l.backing.clone());
            match image {
                Some(image) => images.push(image),
                None => extra.push(drive.path.clone()),
            }
        }
        DriveRegistry {
            scan_machine: false,
            images,
            extra: RwLock::new(extra),
            ..DriveRegistry::new(initial)
        }
    }

    /// Also looks at the loop devices of every simulated image in `dir`, not
    /// only at those of the drives found at start.
    pub fn simulating_in(mut self, dir: &Path) -> Self {
        self.sim_dir = Some(std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()));
        self
    }

    /// The lock over the drives' claim records, and what it guards besides.
    pub fn claim_records(&self) -> &tokio::sync::Mutex<ErasedUnreleased> {
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
        if !self.images.is_empty() || self.sim_dir.is_some() {
            let ours = |backing: &Path| {
                self.images.iter().any(|i| i == backing)
                    || self
                        .sim_dir
                        .as_deref()
                        .is_some_and(|dir| drives::is_sim_image(backing, dir))
            };
            let rebound = loopdev::list()
                .unwrap_or_default()
                .into_iter()
                .filter(|l| l.offset_bytes == 0 && ours(&l.backing))
                .map(|l| l.device);
            for device in rebound {
                if !paths.contains(&device) {
                    paths.push(device);
                }
            }
        }
        let found = drives::discover(&paths);
        *self.drives.write().unwrap_or_else(|p| p.into_inner()) = found.clone();
        found
    }

    /// Keeps open, until the answer is dropped, the devices these drives were
    /// last seen at. The kernel writes back and drops a block device's page
    /// cache each time its last opener closes it, so the several reads of one
    /// erase (signature, claim record before and after, size) would each go to
    /// the drive again; while a handle is held they are answered from memory.
    /// Read-only and not exclusive: it bars no other user of the drive, and a
    /// device that now carries another drive is still caught by the reads
    /// themselves. A device that cannot be opened is left out (its reads fail
    /// on their own, with their own errors).
    pub fn hold_open<'a>(&self, uuids: impl IntoIterator<Item = &'a Uuid>) -> Vec<File> {
        let mut paths: Vec<PathBuf> = {
            // Copied out: an open may wait (a loop device being bound), and a
            // rescan must not wait for it.
            let drives = self.drives.read().unwrap_or_else(|p| p.into_inner());
            uuids
                .into_iter()
                .filter_map(|uuid| drives.iter().find(|d| d.signature.uuid == *uuid))
                .map(|d| d.path.clone())
                .collect()
        };
        paths.sort();
        paths.dedup();
        paths
            .into_iter()
            .filter_map(|p| File::open(p).ok())
            .collect()
    }

    /// The drive with this uuid, at the device that carries it now: the device
    /// it was last seen at is read again first, and if that holds another drive
    /// or none, the drives are rescanned. Extents are never located on a device
    /// that no longer carries their drive.
    pub fn find(&self, uuid: &Uuid) -> Option<SignedDrive> {
        let known = |list: &[SignedDrive]| list.iter().find(|d| d.signature.uuid == *uuid).cloned();
        if let Some(drive) = known(&self.all())
            && still_carries(&drive)
        {
            return Some(drive);
        }
        known(&self.rescan())
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

/// Whether the drive's device still carries the drive's signature.
fn still_carries(drive: &SignedDrive) -> bool {
    matches!(signature::read(&drive.path), Ok(Some(s)) if s.uuid == drive.signature.uuid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drive::DriveType;
    use crate::ledger::VolumeExtent;

    fn signed(path: &std::path::Path) -> SignedDrive {
        std::fs::File::create(path)
            .unwrap()
            .set_len(signature::HEADER_BYTES + 4 * GIB)
            .unwrap();
        let signature = signature::write(path, DriveType::Tlc).unwrap();
        SignedDrive {
            path: path.to_path_buf(),
            serial: path.display().to_string(),
            signature,
        }
    }

    #[test]
    fn an_extent_is_never_located_on_a_device_that_now_carries_another_drive() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("first"), dir.path().join("second"));
        let (a, b) = (signed(&first), signed(&second));
        let registry = DriveRegistry::only(vec![a.clone(), b.clone()]);
        // The two drives trade places between scans (detached, attached again
        // the other way round): each path now carries the other drive.
        let swap = dir.path().join("swap");
        std::fs::rename(&first, &swap).unwrap();
        std::fs::rename(&second, &first).unwrap();
        std::fs::rename(&swap, &second).unwrap();
        let extent = VolumeExtent {
            virtual_uuid: uuid::Uuid::new_v4(),
            physical_uuid: a.signature.uuid,
            drive_type: Some(DriveType::Tlc),
            offset_gib: 1,
            size_gib: 2,
        };
        let segment = registry.locate("n", &extent).unwrap();
        assert_eq!(segment.drive, second, "drive a is at the second path now");
        assert_eq!(registry.find(&b.signature.uuid).unwrap().path, first);
        // Gone altogether: refused, not located on whatever is left.
        std::fs::remove_file(&second).unwrap();
        let err = registry.locate("n", &extent).unwrap_err();
        assert!(matches!(err, NodeError::DriveNotAttached { .. }), "{err}");
    }

    #[test]
    fn holding_opens_each_known_drive_once() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (signed(&dir.path().join("a")), signed(&dir.path().join("b")));
        let registry = DriveRegistry::only(vec![a.clone(), b.clone()]);
        let unknown = Uuid::new_v4();
        let held = registry.hold_open([
            &a.signature.uuid,
            &a.signature.uuid,
            &b.signature.uuid,
            &unknown,
        ]);
        assert_eq!(held.len(), 2, "one handle per known drive");
        // A drive whose device is gone is left out; its reads fail on their own.
        std::fs::remove_file(&b.path).unwrap();
        assert_eq!(
            registry
                .hold_open([&a.signature.uuid, &b.signature.uuid])
                .len(),
            1
        );
    }
}
