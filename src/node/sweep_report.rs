//! What a sweep (`vdrive sign --all-not-root`, or the node plugin signing its
//! drives because its Node is labelled `vdrive.io/sign-drives`) did, disk by
//! disk, told the same way by both: the drives it signed, the disks it left
//! alone and why, and the disks it could not sign.

use std::path::{Path, PathBuf};

use super::NodeError;
use super::discovery::{DiskKind, DriveFacts, Machine, Skip};
use super::drives::{self, SignedDrive, Swept};
use crate::drive::DriveType;

/// Signs this machine's unused drives as `drive_type` with the rules of
/// `vdrive sign --all-not-root` (no `--force`), for the node plugin.
///
/// Without `only_images_in` (a real server) loop devices are never looked
/// at: on a server they are other software's (a file-backed raw block volume
/// of another driver, a mounted image not mounted right now), and only a
/// person naming one with `vdrive sign --device` may make it a drive. With
/// `only_images_in`, a simulated node's directory, only the loop devices of
/// the simulated images there are: the other loop devices of a test machine
/// belong to other nodes or other tests.
pub fn sign_unused(
    drive_type: DriveType,
    only_images_in: Option<&Path>,
) -> Result<SweepReport, NodeError> {
    let dir = only_images_in.map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.to_path_buf()));
    let results = drives::sign_all_not_root_where(drive_type, false, |machine, disk| {
        in_scope(machine, disk, dir.as_deref())
    })?;
    Ok(SweepReport::of(results))
}

/// Whether the node plugin's sweep looks at `disk` at all (see [`sign_unused`]).
fn in_scope(machine: &Machine, disk: &DriveFacts, only_images_in: Option<&Path>) -> bool {
    let Some(dir) = only_images_in else {
        return disk.kind != DiskKind::Loop;
    };
    disk.kind == DiskKind::Loop
        && machine
            .sysfs()
            .attribute(&disk.name, "loop/backing_file")
            .is_some_and(|backing| drives::is_sim_image(Path::new(&backing), dir))
}

#[derive(Debug, Default)]
pub struct SweepReport {
    pub signed: Vec<(PathBuf, SignedDrive)>,
    /// Left alone, with why (one line of reasons).
    pub skipped: Vec<(PathBuf, String)>,
    /// Could not be signed although nothing said to leave them alone.
    pub failed: Vec<(PathBuf, String)>,
    /// Whether a partitioned disk was skipped (the report says how to use one).
    pub partitioned: bool,
}

impl SweepReport {
    /// Sorts a sweep's outcomes. A sweep never re-signs: a drive already
    /// vdrive's is skipped, as is anything a sweep must leave alone (the root
    /// disk, a drive in use, mounted or holding data); only a drive that could
    /// not be signed for another reason has failed.
    pub fn of(results: Vec<(PathBuf, Swept)>) -> SweepReport {
        let mut report = SweepReport::default();
        for (path, outcome) in results {
            match outcome {
                Swept::Signed(drive) => report.signed.push((path, drive)),
                Swept::Skipped(reasons) => {
                    report.partitioned |= reasons
                        .iter()
                        .any(|r| matches!(r, Skip::Partitioned { .. }));
                    report.skipped.push((path, drives::join(&reasons)));
                }
                Swept::NotSigned(NodeError::AlreadySigned { uuid, .. }) => {
                    report
                        .skipped
                        .push((path, format!("already signed as vdrive {uuid}")));
                }
                Swept::NotSigned(err) if is_left_alone(&err) => {
                    report.skipped.push((path, err.to_string()));
                }
                Swept::NotSigned(err) => report.failed.push((path, err.to_string())),
            }
        }
        report
    }

    pub fn is_failure(&self) -> bool {
        !self.failed.is_empty()
    }

    /// One line per disk, then the hints: what `vdrive sign` prints.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .signed
            .iter()
            .map(|(path, drive)| {
                format!(
                    "signed {} as {} ({} GiB, uuid {})",
                    path.display(),
                    drive.signature.drive_type.label(),
                    drive.signature.capacity_gib(),
                    drive.signature.uuid
                )
            })
            .collect();
        out.extend(
            self.skipped
                .iter()
                .map(|(path, why)| format!("skipped {}: {why}", path.display())),
        );
        out.extend(
            self.failed
                .iter()
                .map(|(path, why)| format!("not signed {}: {why}", path.display())),
        );
        if out.is_empty() {
            out.push("no drive to sign: this machine has no disk that may be a drive".into());
        }
        if self.partitioned {
            out.push(
                "a sweep never signs a partitioned disk: to use one, sign it alone with \
                 `vdrive sign --device PATH --type tlc|qlc --force` (its partitions are wiped)"
                    .into(),
            );
        }
        out
    }

    /// The whole report in one paragraph (an Event's note).
    pub fn summary(&self) -> String {
        let mut head = vec![format!("signed {} drive(s)", self.signed.len())];
        if !self.skipped.is_empty() {
            head.push(format!("skipped {}", self.skipped.len()));
        }
        if !self.failed.is_empty() {
            head.push(format!("failed {}", self.failed.len()));
        }
        format!("{}: {}", head.join(", "), self.lines().join("; "))
    }
}

/// Drives a sweep must not touch: the root disk, partitions, drives in use or
/// mounted, drives holding data (without --force), drives already signed.
fn is_left_alone(err: &NodeError) -> bool {
    matches!(
        err,
        NodeError::RootDisk { .. }
            | NodeError::NotWholeDisk { .. }
            | NodeError::Mounted { .. }
            | NodeError::InUse { .. }
            | NodeError::HasData { .. }
            | NodeError::AlreadySigned { .. }
    )
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn left_alone_and_already_signed_are_skips_and_other_errors_fail() {
        let report = SweepReport::of(vec![
            (
                PathBuf::from("/dev/nvme1n1"),
                Swept::NotSigned(NodeError::AlreadySigned {
                    device: PathBuf::from("/dev/nvme1n1"),
                    uuid: Uuid::nil(),
                }),
            ),
            (
                PathBuf::from("/dev/nvme2n1"),
                Swept::NotSigned(NodeError::HasData {
                    device: PathBuf::from("/dev/nvme2n1"),
                    found: "an ext4 filesystem".into(),
                }),
            ),
            (
                PathBuf::from("/dev/nvme3n1"),
                Swept::NotSigned(NodeError::io("write", Path::new("/dev/nvme3n1"))(
                    std::io::Error::from_raw_os_error(5),
                )),
            ),
        ]);
        assert_eq!(report.signed.len(), 0);
        assert_eq!(report.skipped.len(), 2);
        assert_eq!(report.failed.len(), 1);
        assert!(report.is_failure());
        let lines = report.lines();
        assert!(lines[0].starts_with("skipped /dev/nvme1n1: already signed as vdrive"));
        assert!(lines[1].starts_with("skipped /dev/nvme2n1:"), "{lines:?}");
        assert!(
            lines[2].starts_with("not signed /dev/nvme3n1:"),
            "{lines:?}"
        );
        assert!(
            report
                .summary()
                .starts_with("signed 0 drive(s), skipped 2, failed 1: ")
        );
    }

    #[test]
    fn a_sweep_skips_drives_it_must_not_touch_and_fails_on_the_rest() {
        let device = PathBuf::from("/dev/sdz");
        assert!(is_left_alone(&NodeError::RootDisk {
            device: device.clone()
        }));
        assert!(is_left_alone(&NodeError::AlreadySigned {
            device: device.clone(),
            uuid: Uuid::nil(),
        }));
        assert!(!is_left_alone(&NodeError::NotBlockDevice { path: device }));
    }

    #[test]
    fn a_real_server_never_sweeps_loop_devices_and_a_simulated_node_only_its_images() {
        let fake = crate::node::discovery::fake::server();
        let machine = fake.machine();
        let in_scope_with = |dir: Option<&str>| -> Vec<String> {
            machine
                .drives()
                .into_iter()
                .filter(|d| in_scope(&machine, d, dir.map(Path::new)))
                .map(|d| d.name)
                .collect()
        };
        let real = in_scope_with(None);
        assert!(!real.is_empty(), "the server's disks are looked at");
        assert!(
            real.iter().all(|name| !name.starts_with("loop")),
            "no loop device on a real server: {real:?}"
        );
        assert_eq!(in_scope_with(Some("/var/lib/vdrive")), ["loop0"]);
        assert!(in_scope_with(Some("/var/lib/elsewhere")).is_empty());
    }

    #[test]
    fn an_empty_sweep_says_there_was_nothing_to_sign() {
        let report = SweepReport::of(Vec::new());
        assert!(!report.is_failure());
        assert_eq!(
            report.lines(),
            ["no drive to sign: this machine has no disk that may be a drive"]
        );
    }
}
