//! Physical drives: finding the signed ones, signing new ones safely, and
//! simulating drives with loop devices over sparse files.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{FallocateFlags, fallocate};
use uuid::Uuid;

use super::blockdev::Sysfs;
use super::discovery::{self, DriveFacts, Machine, Skip};
use super::flush::Flushes;
use super::signature::{self, HEADER_BYTES, Signature};
use super::{GIB, NodeError, blockdev, cmd, loopdev};
use crate::drive::{Backend, DriveType};
use crate::ledger::PhysicalDrive;

/// A drive carrying a valid vdrive signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedDrive {
    pub path: PathBuf,
    pub serial: String,
    pub signature: Signature,
}

impl SignedDrive {
    /// The drive as the ledger records it, with the backend this node builds
    /// volumes on it with.
    pub fn to_physical(&self, backend: Backend) -> PhysicalDrive {
        PhysicalDrive {
            uuid: self.signature.uuid,
            serial: self.serial.clone(),
            drive_type: self.signature.drive_type,
            capacity_gib: self.signature.capacity_gib(),
            backend,
            missing: false,
            quarantined: None,
        }
    }
}

/// The whole disks discovery may open to look for a vdrive signature: NVMe
/// namespaces, SCSI/SATA, virtio and Xen disks, and loop devices bound to a file
/// or device at offset 0 (simulated drives), except a disk holding the root
/// filesystem, a partitioned disk, a disk with a filesystem or swap of its own in
/// use, and an empty slot (see [`Skip::bars_discovery`]). When the mount or swap
/// table cannot be read no disk can be told unused, and none is returned.
pub fn candidates() -> Vec<PathBuf> {
    match Machine::read() {
        Ok(machine) => candidates_on(&machine),
        Err(error) => {
            tracing::warn!(%error, "no drives discovered: cannot tell which disks are in use");
            Vec::new()
        }
    }
}

/// [`candidates`] on a given machine.
pub fn candidates_on(machine: &Machine) -> Vec<PathBuf> {
    machine
        .drives()
        .into_iter()
        .filter(|disk| {
            let barred: Vec<Skip> = machine
                .reasons(&disk.name)
                .into_iter()
                .filter(Skip::bars_discovery)
                .collect();
            if !barred.is_empty() {
                // Debug only: a rescan runs every 30 s and the root disk is always here.
                tracing::debug!(disk = %disk.path.display(), reasons = %join(&barred), "not a drive");
            }
            barred.is_empty()
        })
        .map(|disk| disk.path)
        .collect()
}

/// Reasons as one line: "a; b; c".
pub fn join(reasons: &[Skip]) -> String {
    let mut out = String::new();
    for (i, reason) in reasons.iter().enumerate() {
        let sep = if i == 0 { "" } else { "; " };
        let _ = write!(out, "{sep}{reason}");
    }
    out
}

/// A stable identifier for the drive: its serial, else its WWID, else (for a loop
/// device) its backing file, else its kernel name.
pub fn serial(path: &Path) -> String {
    let name = blockdev::kernel_name_of(path)
        .ok()
        .flatten()
        .or_else(|| Some(path.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_else(|| path.display().to_string());
    discovery::serial_of(&Sysfs::host(), &name).unwrap_or(name)
}

/// The signed drives among `paths`. Unreadable drives and damaged signatures are
/// logged and skipped; a uuid seen twice (one image bound to two loop devices) is
/// reported once, at its first path.
pub fn discover(paths: &[PathBuf]) -> Vec<SignedDrive> {
    let mut found: Vec<SignedDrive> = Vec::new();
    for path in paths {
        match signature::read(path) {
            Ok(Some(signature)) => {
                if let Some(first) = found.iter().find(|d| d.signature.uuid == signature.uuid) {
                    tracing::warn!(uuid = %signature.uuid, first = %first.path.display(), again = %path.display(), "drive seen twice; using the first path");
                    continue;
                }
                found.push(SignedDrive {
                    path: path.clone(),
                    serial: serial(path),
                    signature,
                });
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(path = %path.display(), %error, "skipping drive"),
        }
    }
    found
}

pub fn find_by_uuid(paths: &[PathBuf], uuid: Uuid) -> Option<SignedDrive> {
    discover(paths)
        .into_iter()
        .find(|d| d.signature.uuid == uuid)
}

/// The whole disks under the root filesystem (several for root on dm or md).
pub fn root_disks() -> Result<BTreeSet<String>, NodeError> {
    Ok(Machine::read()?.root_disks())
}

/// Signs the whole disk at `path` as a vdrive drive of `drive_type`.
///
/// Refused always: anything that is not a whole block device, the root disk, a
/// disk with a mounted filesystem or active swap on it or any partition, a disk
/// something is stacked on (dm, md, a loop device). Refused unless `force`: a disk
/// already signed, or carrying a partition table or filesystem signature; with
/// `force` those signatures are wiped first.
pub fn sign(path: &Path, drive_type: DriveType, force: bool) -> Result<SignedDrive, NodeError> {
    let not_block = || NodeError::NotBlockDevice {
        path: path.to_path_buf(),
    };
    if !blockdev::is_block_device(path)? {
        return Err(not_block());
    }
    let name = blockdev::kernel_name_of(path)?.ok_or_else(not_block)?;
    let disk = blockdev::whole_disk(&name);
    if disk != name {
        return Err(NodeError::NotWholeDisk {
            device: path.to_path_buf(),
            disk,
        });
    }
    let reasons = Machine::read()?.reasons(&name);
    refuse_in_use(path, &reasons)?;

    match signature::read(path) {
        Ok(Some(existing)) if !force => {
            return Err(NodeError::AlreadySigned {
                device: path.to_path_buf(),
                uuid: existing.uuid,
            });
        }
        Err(error) if !force => {
            return Err(NodeError::HasData {
                device: path.to_path_buf(),
                found: format!("an unusable vdrive signature ({error})"),
            });
        }
        _ => {}
    }
    refuse_claimed(path)?;
    if force {
        // Clears partition tables (both GPT copies) and filesystem magic, so no
        // tool mistakes the drive for what it was.
        cmd::run(
            "wipefs",
            &[
                "--all".as_ref(),
                "--quiet".as_ref(),
                "--".as_ref(),
                path.as_os_str(),
            ],
        )?;
    } else {
        let mut found = existing_signatures(path)?;
        for reason in &reasons {
            if let Skip::Partitioned { partitions } = reason {
                found.push(format!("partitions {}", partitions.join(", ")));
            }
        }
        if !found.is_empty() {
            return Err(NodeError::HasData {
                device: path.to_path_buf(),
                found: found.join(", "),
            });
        }
    }
    // Nothing a former user left on the drive may reach a tenant: the header
    // goes first (a sign cut short leaves an unsigned drive), then the data area
    // is zeroed and flushed, and only then is the drive signed.
    signature::clear(path)?;
    let data_bytes = blockdev::size_bytes(path)?.saturating_sub(HEADER_BYTES) / GIB * GIB;
    tracing::info!(device = %path.display(), gib = data_bytes / GIB, "zeroing the drive before signing it");
    erase(path, HEADER_BYTES, data_bytes)?;
    let signature = signature::write(path, drive_type)?;
    tracing::info!(device = %path.display(), uuid = %signature.uuid, %drive_type, capacity_gib = signature.capacity_gib(), "signed drive");
    Ok(SignedDrive {
        path: path.to_path_buf(),
        serial: serial(path),
        signature,
    })
}

/// Refuses, whatever `--force` says, a drive whose own header lists live
/// claims: re-signing it would hand other tenants' data to new ones. A damaged
/// record is no such list (the drive cannot be used as it is anyway).
fn refuse_claimed(path: &Path) -> Result<(), NodeError> {
    let Ok(Some(stored)) = super::claim_record::read(path) else {
        return Ok(());
    };
    let live: Vec<&str> = stored
        .record
        .live_claims()
        .map(|c| c.volume_id.as_str())
        .collect();
    if live.is_empty() {
        return Ok(());
    }
    Err(NodeError::ClaimedDrive {
        device: path.to_path_buf(),
        owner: stored.record.owner.clone(),
        count: live.len(),
        volumes: live.join(", "),
    })
}

/// Refuses a disk that the system uses, whatever `--force` says: the root disk,
/// a disk with a filesystem or swap in use on it or on anything stacked on it, and
/// a disk with devices stacked on it or loop devices reading it. Partitions (which
/// `--force` wipes) and an empty device (refused as too small) are left to the caller.
fn refuse_in_use(path: &Path, reasons: &[Skip]) -> Result<(), NodeError> {
    let device = path.to_path_buf();
    let in_use = |user: String| NodeError::InUse {
        device: device.clone(),
        user,
    };
    for reason in reasons {
        return Err(match reason {
            Skip::RootDisk => NodeError::RootDisk {
                device: device.clone(),
            },
            Skip::Mounted { mount_point, .. } => NodeError::Mounted {
                device: device.clone(),
                mount_point: mount_point.clone(),
            },
            Skip::Swap { device, .. } => in_use(format!("swap on /dev/{device}")),
            Skip::Held { device, holder } => in_use(format!("/dev/{holder} (stacked on {device})")),
            Skip::LoopOver { loop_device } => {
                in_use(format!("loop device /dev/{loop_device} over it"))
            }
            Skip::Empty | Skip::Partitioned { .. } => continue,
        });
    }
    Ok(())
}

/// Partition-table and filesystem signatures wipefs finds on the device itself.
fn existing_signatures(path: &Path) -> Result<Vec<String>, NodeError> {
    let args = [
        "--no-act".as_ref(),
        "--json".as_ref(),
        "--".as_ref(),
        path.as_os_str(),
    ];
    let out = cmd::run("wipefs", &args)?;
    // Older wipefs prints nothing at all when there is nothing.
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    let bad = |reason: String| NodeError::Output {
        command: cmd::display("wipefs", &args),
        reason,
    };
    let json: serde_json::Value = serde_json::from_str(&out).map_err(|e| bad(e.to_string()))?;
    let signatures = json
        .get("signatures")
        .and_then(|s| s.as_array())
        .ok_or_else(|| bad("no \"signatures\" list".into()))?;
    Ok(signatures
        .iter()
        .map(|s| {
            let kind = s.get("type").and_then(|t| t.as_str()).unwrap_or("unknown");
            let offset = s.get("offset").map(|o| o.to_string()).unwrap_or_default();
            format!("a {kind} signature at offset {}", offset.trim_matches('"'))
        })
        .collect())
}

/// What a sweep ([`sign_all_not_root`]) did with one disk.
#[derive(Debug)]
pub enum Swept {
    Signed(SignedDrive),
    /// Left alone without being opened, for these reasons.
    Skipped(Vec<Skip>),
    /// [`sign`] refused or failed; [`NodeError::AlreadySigned`] for a drive
    /// that is vdrive's already.
    NotSigned(NodeError),
}

/// Every disk a sweep looks at, with the reasons to leave it alone (none: the
/// sweep may sign it). The same reasons as discovery's, and more: a sweep also
/// leaves alone whatever has devices stacked on it or loop devices reading it.
pub fn sweep_plan(machine: &Machine) -> Vec<(DriveFacts, Vec<Skip>)> {
    machine
        .drives()
        .into_iter()
        .map(|disk| {
            let reasons = machine.reasons(&disk.name);
            (disk, reasons)
        })
        .collect()
}

/// Signs every drive of this machine that nothing uses; one outcome per disk.
/// Never touched, whatever `force` says: the root disk, a partitioned disk (only a
/// disk named with `--device` is wiped of its partitions), a disk with a mounted
/// filesystem, swap, or devices on it, an empty slot, and a drive that already
/// carries a valid vdrive signature (its volumes and ledger claims hang on it).
/// `force` wipes filesystem signatures and damaged vdrive signatures.
pub fn sign_all_not_root(
    drive_type: DriveType,
    force: bool,
) -> Result<Vec<(PathBuf, Swept)>, NodeError> {
    sign_all_not_root_where(drive_type, force, |_, _| true)
}

/// [`sign_all_not_root`] over only the disks `within` keeps (a simulated
/// node's own images); the others are not looked at, nor reported.
pub fn sign_all_not_root_where(
    drive_type: DriveType,
    force: bool,
    within: impl Fn(&Machine, &DriveFacts) -> bool,
) -> Result<Vec<(PathBuf, Swept)>, NodeError> {
    let machine = Machine::read()?;
    Ok(sweep_plan(&machine)
        .into_iter()
        .filter(|(disk, _)| within(&machine, disk))
        .map(|(disk, reasons)| {
            let path = disk.path;
            // Discovery would read this disk's signature; a drive in use by vdrive
            // is then reported as already signed rather than as in use.
            if !reasons.iter().any(Skip::bars_discovery)
                && let Ok(Some(existing)) = signature::read(&path)
            {
                let err = NodeError::AlreadySigned {
                    device: path.clone(),
                    uuid: existing.uuid,
                };
                return (path, Swept::NotSigned(err));
            }
            if !reasons.is_empty() {
                return (path, Swept::Skipped(reasons));
            }
            let outcome = match sign(&path, drive_type, force) {
                Ok(drive) => Swept::Signed(drive),
                Err(err) => Swept::NotSigned(err),
            };
            (path, outcome)
        })
        .collect())
}

/// One disk as `vdrive sign show` reports it.
#[derive(Debug)]
pub struct DiskReport {
    pub facts: DriveFacts,
    pub state: DiskState,
}

#[derive(Debug)]
pub enum DiskState {
    Signed(SignedDrive),
    /// No vdrive signature. `in_use` says why a sweep would leave it alone
    /// (empty: a sweep would sign it, unless it holds a filesystem).
    Unsigned {
        in_use: Vec<Skip>,
    },
    /// Not opened: discovery passes it by for these reasons.
    Skipped(Vec<Skip>),
    /// Cannot be read, or carries a damaged signature.
    Unreadable(NodeError),
    /// The drive already reported at `first` (one image bound to two loop devices).
    Duplicate {
        uuid: Uuid,
        first: PathBuf,
    },
}

/// Every disk of `machine` that may be a drive, with what discovery makes of it:
/// its signed drives are exactly what [`discover`] finds among [`candidates_on`].
pub fn survey(machine: &Machine) -> Vec<DiskReport> {
    let mut out: Vec<DiskReport> = Vec::new();
    for facts in machine.drives() {
        let reasons = machine.reasons(&facts.name);
        let state = if reasons.iter().any(Skip::bars_discovery) {
            DiskState::Skipped(reasons)
        } else {
            match signature::read(&facts.path) {
                Ok(Some(signature)) => {
                    let first = out.iter().find_map(|r| match &r.state {
                        DiskState::Signed(d) if d.signature.uuid == signature.uuid => {
                            Some(d.path.clone())
                        }
                        _ => None,
                    });
                    match first {
                        Some(first) => DiskState::Duplicate {
                            uuid: signature.uuid,
                            first,
                        },
                        None => DiskState::Signed(SignedDrive {
                            path: facts.path.clone(),
                            serial: facts.serial.clone().unwrap_or_else(|| facts.name.clone()),
                            signature,
                        }),
                    }
                }
                Ok(None) => DiskState::Unsigned { in_use: reasons },
                Err(error) => DiskState::Unreadable(error),
            }
        };
        out.push(DiskReport { facts, state });
    }
    out
}

/// Erases the extent of `size_bytes` at `offset_bytes` of a signed drive, so the
/// next volume carved there reads zeros: no byte, filesystem or partition table
/// of an earlier tenant is ever readable. Where the drive zeroes ranges cheaply
/// (a discard an NVMe drive promises reads back as zeros, a write-zeroes
/// offload, or a hole punched in a file or under a loop device) that is used;
/// otherwise every byte is written with zeros, however long it
/// takes: a discard alone does not promise zeros on read. The drive is flushed
/// before this returns, so "erased" survives a power cut.
/// Refuses the signature header, ranges past the end, and a range that a loop
/// device is attached to.
pub fn erase(drive: &Path, offset_bytes: u64, size_bytes: u64) -> Result<(), NodeError> {
    if let Some(device) = loopdev::covering(drive, offset_bytes, size_bytes)? {
        return Err(NodeError::InUse {
            device: drive.to_path_buf(),
            user: format!("{} (attached to the range being erased)", device.display()),
        });
    }
    erase_unheld(drive, offset_bytes, size_bytes)
}

/// [`erase`] of a range the caller has just found no device over: a node's
/// backend looks for loop and dm devices both
/// ([`super::backend::DeviceBackend::holder`]), so the loop devices are not
/// listed a second time. The range's bounds are still checked here.
pub fn erase_unheld(drive: &Path, offset_bytes: u64, size_bytes: u64) -> Result<(), NodeError> {
    let refuse = |reason: String| NodeError::OutOfBounds {
        device: drive.to_path_buf(),
        offset_bytes,
        size_bytes,
        reason,
    };
    if offset_bytes < HEADER_BYTES {
        return Err(refuse(
            "it overlaps the vdrive signature in the first MiB".into(),
        ));
    }
    if size_bytes == 0 || offset_bytes % 512 != 0 || size_bytes % 512 != 0 {
        return Err(refuse(
            "offset and size must be non-zero multiples of 512 bytes".into(),
        ));
    }
    let drive_bytes = blockdev::size_bytes(drive)?;
    let end = offset_bytes.saturating_add(size_bytes);
    if end > drive_bytes {
        return Err(refuse(format!("the drive ends at byte {drive_bytes}")));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(drive)
        .map_err(NodeError::io("open for erasing", drive))?;
    let block = blockdev::is_block_device(drive)?;
    let zeroed = if block {
        discard_to_zeros(&file, drive, offset_bytes, size_bytes)
            || blockdev::zero_out(&file, drive, offset_bytes, size_bytes)?
    } else {
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match (i64::try_from(offset_bytes), i64::try_from(size_bytes)) {
            (Ok(at), Ok(len)) => fallocate(&file, flags, at, len).is_ok(),
            _ => false,
        }
    };
    if !zeroed {
        tracing::warn!(drive = %drive.display(), bytes = size_bytes, "the drive cannot zero ranges cheaply; writing zeros over the whole extent");
        if block {
            blockdev::zero_out_by_kernel(&file, drive, offset_bytes, size_bytes)?;
        } else {
            write_zeros(&file, drive, offset_bytes, size_bytes)?;
        }
    }
    // Shared with the other erasers of this drive that finish meanwhile.
    Flushes::global()
        .flush(drive, &file)
        .map_err(NodeError::io("flush", drive))
}

/// Erases the range with one discard where the drive promises that discarded
/// blocks read as zeros (an NVMe namespace whose DLFEAT says so), and checks
/// that the range's first and last 4 KiB do. False when the drive makes no
/// such promise, or did not keep it: then the range is zeroed the slow way.
fn discard_to_zeros(file: &fs::File, drive: &Path, offset_bytes: u64, size_bytes: u64) -> bool {
    const PROBE: u64 = 4096;
    if size_bytes < PROBE || !super::nvme::deallocate_reads_zeroes(file, drive) {
        return false;
    }
    if let Err(err) = blockdev::discard(file, drive, offset_bytes, size_bytes) {
        tracing::warn!(drive = %drive.display(), %err, "discard failed; zeroing instead");
        return false;
    }
    let mut probe = vec![0u8; PROBE as usize];
    for at in [offset_bytes, offset_bytes + size_bytes - PROBE] {
        let zeros = file.read_exact_at(&mut probe, at).is_ok() && probe.iter().all(|b| *b == 0);
        if !zeros {
            tracing::warn!(drive = %drive.display(), at, "the drive promised zeros after a discard but reads data; zeroing instead");
            return false;
        }
    }
    true
}

/// Writes zeros over the range, 1 MiB at a time.
fn write_zeros(
    file: &fs::File,
    drive: &Path,
    offset_bytes: u64,
    size_bytes: u64,
) -> Result<(), NodeError> {
    let zeros = vec![0u8; 1 << 20];
    let end = offset_bytes.saturating_add(size_bytes);
    let mut at = offset_bytes;
    while at < end {
        let n = (end - at).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], at)
            .map_err(NodeError::io("zero", drive))?;
        at += n;
    }
    Ok(())
}

/// One entry of a simulation spec: `count` drives of `size_gib` GiB of data each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimDrives {
    pub drive_type: DriveType,
    pub size_gib: u64,
    pub count: u32,
}

/// More loop devices than this in one spec is a typo, not a test setup.
const MAX_SIM_DRIVES: u32 = 64;

/// Parses `tlc:3840x4,qlc:7680x2` (type:GiB x count; `x count` defaults to 1).
pub fn parse_spec(spec: &str) -> Result<Vec<SimDrives>, NodeError> {
    let invalid = |reason: String| NodeError::InvalidSpec {
        spec: spec.to_string(),
        reason,
    };
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (kind, rest) = item
            .split_once(':')
            .ok_or_else(|| invalid(format!("{item:?} has no `type:` prefix")))?;
        let drive_type: DriveType = kind.trim().parse().map_err(invalid)?;
        let (size, count) = rest.split_once(['x', 'X']).unwrap_or((rest, "1"));
        let number = |what: &str, s: &str| match s.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(invalid(format!(
                "{what} {s:?} in {item:?} is not a positive whole number"
            ))),
        };
        let size_gib = number("size", size)?;
        let count = number("count", count)?;
        out.push(SimDrives {
            drive_type,
            size_gib,
            count: u32::try_from(count).unwrap_or(u32::MAX),
        });
    }
    if out.is_empty() {
        return Err(invalid("it names no drives".into()));
    }
    let total: u64 = out.iter().map(|d| u64::from(d.count)).sum();
    if total > u64::from(MAX_SIM_DRIVES) {
        return Err(invalid(format!(
            "{total} drives is more than {MAX_SIM_DRIVES}"
        )));
    }
    Ok(out)
}

/// Simulated drives: for each drive of `spec` a sparse image `<dir>/sim-<type>-<n>.img`
/// (1 MiB header + the size in GiB) bound to a loop device and signed. Calling it
/// again reuses the images, their loop devices and their signatures, so a node keeps
/// its drive identities across restarts.
pub fn simulate(dir: &Path, spec: &str) -> Result<Vec<SignedDrive>, NodeError> {
    let spec = parse_spec(spec)?;
    fs::create_dir_all(dir).map_err(NodeError::io("create", dir))?;
    let mut drives = Vec::new();
    for drive_type in DriveType::ALL {
        let mut n = 0;
        for entry in spec.iter().filter(|d| d.drive_type == drive_type) {
            for _ in 0..entry.count {
                let image = dir.join(format!("sim-{drive_type}-{n}.img"));
                drives.push(simulate_one(&image, drive_type, entry.size_gib)?);
                n += 1;
            }
        }
    }
    Ok(drives)
}

fn simulate_one(
    image: &Path,
    drive_type: DriveType,
    size_gib: u64,
) -> Result<SignedDrive, NodeError> {
    let want_bytes = HEADER_BYTES + size_gib * GIB;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(image)
        .map_err(NodeError::io("create", image))?;
    let image = fs::canonicalize(image).map_err(NodeError::io("resolve", image))?;
    let bound = loopdev::list()?
        .into_iter()
        .find(|l| l.backing == image && l.offset_bytes == 0);
    let len = file
        .metadata()
        .map_err(NodeError::io("stat", &image))?
        .len();
    if len != want_bytes {
        if bound.is_none() && signature::read(&image)?.is_none() {
            // Sparse: no space is used until written.
            file.set_len(want_bytes)
                .map_err(NodeError::io("resize", &image))?;
        } else {
            tracing::warn!(image = %image.display(), len, want_bytes, "simulated drive keeps its signed size");
        }
    }
    drop(file);
    let device = match bound {
        Some(lo) => lo.device,
        None => loopdev::attach(&image, 0, 0)?,
    };
    match signature::read(&device)? {
        Some(signature) => {
            if signature.drive_type != drive_type {
                tracing::warn!(image = %image.display(), signed = %signature.drive_type, "simulated drive keeps its signed type");
            }
            Ok(SignedDrive {
                serial: serial(&device),
                path: device,
                signature,
            })
        }
        None => sign(&device, drive_type, false),
    }
}

/// Whether a loop device's backing file is one of `dir`'s simulated images (also
/// after the image was deleted, which the kernel marks with " (deleted)").
pub fn is_sim_image(backing: &Path, dir: &Path) -> bool {
    let text = backing.to_string_lossy();
    let path = Path::new(text.strip_suffix(" (deleted)").unwrap_or(&text));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.parent() == Some(dir) && name.starts_with("sim-") && name.ends_with(".img")
}

/// Detaches the loop devices of `dir`'s simulated drives (and extent devices left
/// on them), returning the drives' devices. Mounted extent devices are refused.
pub fn detach_simulated(dir: &Path) -> Result<Vec<PathBuf>, NodeError> {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let loops = loopdev::list()?;
    let sims: Vec<PathBuf> = loops
        .iter()
        .filter(|l| is_sim_image(&l.backing, &dir))
        .map(|l| l.device.clone())
        .collect();
    let mut first_error = None;
    let on_sims = loops
        .iter()
        .filter(|l| sims.contains(&l.backing))
        .map(|l| &l.device);
    for device in on_sims.chain(&sims) {
        if let Err(error) = loopdev::detach(device) {
            tracing::warn!(device = %device.display(), %error, "cannot detach");
            first_error.get_or_insert(error);
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(sims),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_spec() {
        let spec = parse_spec("tlc:3840x4, qlc:7680X2,tlc:100").unwrap();
        assert_eq!(
            spec,
            vec![
                SimDrives {
                    drive_type: DriveType::Tlc,
                    size_gib: 3840,
                    count: 4
                },
                SimDrives {
                    drive_type: DriveType::Qlc,
                    size_gib: 7680,
                    count: 2
                },
                SimDrives {
                    drive_type: DriveType::Tlc,
                    size_gib: 100,
                    count: 1
                },
            ]
        );
    }

    #[test]
    fn spec_errors_say_what_and_how() {
        for (spec, needle) in [
            ("", "names no drives"),
            ("tlc3840x4", "no `type:` prefix"),
            ("slc:10x1", "unknown drive type"),
            ("tlc:0x1", "size \"0\""),
            ("tlc:10x", "count \"\""),
            ("tlc:1.5x2", "size \"1.5\""),
            ("tlc:1x100", "more than 64"),
        ] {
            let err = parse_spec(spec).unwrap_err().to_string();
            assert!(err.contains(needle), "{spec:?}: {err}");
            assert!(err.contains("tlc:3840x4,qlc:7680x2"), "{err}");
        }
    }

    #[test]
    fn a_regular_file_is_not_signed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.img");
        fs::File::create(&path).unwrap().set_len(2 * GIB).unwrap();
        let err = sign(&path, DriveType::Tlc, true).unwrap_err();
        assert!(matches!(err, NodeError::NotBlockDevice { .. }), "{err}");
    }

    #[test]
    fn the_root_disk_is_refused_even_with_force() {
        let Some(root) = root_disks().unwrap().into_iter().next() else {
            return; // root on a filesystem without a device (container overlay)
        };
        let err = sign(&Path::new("/dev").join(&root), DriveType::Tlc, true).unwrap_err();
        assert!(matches!(err, NodeError::RootDisk { .. }), "{err}");
    }

    #[test]
    fn candidates_are_whole_drives_only() {
        for path in candidates() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                !["ram", "zram", "dm-", "md", "sr"]
                    .iter()
                    .any(|p| name.starts_with(p)),
                "{name}"
            );
            assert_eq!(blockdev::whole_disk(&name), name);
        }
    }

    fn names(paths: &[PathBuf]) -> Vec<String> {
        paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn discovery_and_the_sweep_agree_on_what_to_leave_alone() {
        let fake = discovery::fake::server();
        let m = fake.machine();
        let candidates = candidates_on(&m);
        assert_eq!(
            names(&candidates),
            ["loop0", "nvme0n1", "nvme1n1", "sde", "sdg", "vda"],
            "never the root disk, a partitioned or mounted disk, swap, an empty slot"
        );
        let plan = sweep_plan(&m);
        let signable: Vec<PathBuf> = plan
            .iter()
            .filter(|(_, reasons)| reasons.is_empty())
            .map(|(disk, _)| disk.path.clone())
            .collect();
        assert_eq!(names(&signable), ["nvme0n1", "nvme1n1", "sde", "vda"]);
        assert!(
            signable.iter().all(|p| candidates.contains(p)),
            "a sweep signs only disks discovery would then find"
        );
        // Every disk the sweep passes by says why.
        let skipped: Vec<(String, String)> = plan
            .iter()
            .filter(|(_, reasons)| !reasons.is_empty())
            .map(|(disk, reasons)| (disk.name.clone(), join(reasons)))
            .collect();
        assert_eq!(
            skipped,
            [
                ("loop0".into(), "loop device loop1 reads it".into()),
                (
                    "sda".into(),
                    "it holds the root filesystem; sda1 is mounted at /boot; \
                     it has partitions (sda1, sda2); dm-0, stacked on it, is mounted at /; \
                     dm-0 is stacked on sda2"
                        .into()
                ),
                ("sdb".into(), "it has partitions (sdb1)".into()),
                (
                    "sdc".into(),
                    "sdc1 is mounted at /data; it has partitions (sdc1)".into()
                ),
                ("sdd".into(), "sdd is mounted at /srv".into()),
                ("sdf".into(), "it reports size 0 (no medium)".into()),
                (
                    "sdg".into(),
                    "dm-1, stacked on it, is mounted at /var/lib/data; dm-1 is stacked on sdg"
                        .into()
                ),
                ("vdb".into(), "swap is active on vdb".into()),
            ]
        );
    }

    #[test]
    fn the_survey_finds_what_discovery_finds_and_says_why_for_the_rest() {
        let fake = discovery::fake::signed_server();
        let m = fake.machine();
        let reports = survey(&m);
        let state = |name: &str| {
            &reports
                .iter()
                .find(|r| r.facts.name == name)
                .unwrap_or_else(|| panic!("{name} not surveyed"))
                .state
        };
        let DiskState::Signed(tlc) = state("nvme0n1") else {
            panic!("{:?}", state("nvme0n1"));
        };
        assert_eq!(tlc.signature.drive_type, DriveType::Tlc);
        assert_eq!(tlc.serial, "BTNH0001");
        assert!(
            matches!(state("loop0"), DiskState::Signed(d) if d.signature.drive_type == DriveType::Qlc)
        );
        assert!(
            matches!(state("vda"), DiskState::Duplicate { uuid, first } if *uuid == tlc.signature.uuid && *first == tlc.path)
        );
        assert!(matches!(state("nvme1n1"), DiskState::Unsigned { in_use } if in_use.is_empty()));
        assert!(
            matches!(state("sdg"), DiskState::Unsigned { in_use } if in_use.len() == 2),
            "unsigned, and a sweep would leave it alone"
        );
        for skipped in ["sda", "sdb", "sdc", "sdd", "sdf", "vdb"] {
            assert!(
                matches!(state(skipped), DiskState::Skipped(_)),
                "{skipped}: {:?}",
                state(skipped)
            );
        }
        // The same signed drives as discover() over the candidates.
        let signed: Vec<(PathBuf, Uuid)> = reports
            .iter()
            .filter_map(|r| match &r.state {
                DiskState::Signed(d) => Some((d.path.clone(), d.signature.uuid)),
                _ => None,
            })
            .collect();
        let discovered: Vec<(PathBuf, Uuid)> = discover(&candidates_on(&m))
            .into_iter()
            .map(|d| (d.path, d.signature.uuid))
            .collect();
        assert_eq!(signed, discovered);
    }

    #[test]
    fn erase_zeroes_a_file_extent_and_guards_its_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drive.img");
        fs::File::create(&path)
            .unwrap()
            .set_len(HEADER_BYTES + 2 * GIB)
            .unwrap();
        signature::write(&path, DriveType::Tlc).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let ext0 = Signature::data_offset_bytes(0);
        let ext1 = Signature::data_offset_bytes(1);
        for at in [ext0, ext0 + GIB / 2, ext1 - 1, ext1] {
            file.write_all_at(&[0xee], at).unwrap();
        }
        erase(&path, ext0, GIB).unwrap();
        let byte = |at| {
            let mut b = [0u8];
            file.read_exact_at(&mut b, at).unwrap();
            b[0]
        };
        assert_eq!(
            [byte(ext0), byte(ext0 + GIB / 2), byte(ext1 - 1)],
            [0, 0, 0]
        );
        assert_eq!(byte(ext1), 0xee, "the next extent is untouched");
        assert!(
            signature::read(&path).unwrap().is_some(),
            "the signature is untouched"
        );

        for (offset, size) in [(0, GIB), (ext1, 2 * GIB), (ext0 + 1, GIB), (ext0, 0)] {
            let err = erase(&path, offset, size).unwrap_err();
            assert!(
                matches!(err, NodeError::OutOfBounds { .. }),
                "{offset} {size}: {err}"
            );
        }
    }

    #[test]
    fn recognises_simulated_images() {
        let dir = Path::new("/tmp/d");
        assert!(is_sim_image(Path::new("/tmp/d/sim-tlc-0.img"), dir));
        assert!(is_sim_image(
            Path::new("/tmp/d/sim-qlc-3.img (deleted)"),
            dir
        ));
        assert!(!is_sim_image(Path::new("/tmp/d/other.img"), dir));
        assert!(!is_sim_image(Path::new("/tmp/e/sim-tlc-0.img"), dir));
    }

    #[test]
    fn physical_drive_carries_the_signature() {
        let drive = SignedDrive {
            path: "/dev/loop0".into(),
            serial: "S1".into(),
            signature: Signature {
                uuid: Uuid::new_v4(),
                drive_type: DriveType::Qlc,
                size_bytes: HEADER_BYTES + 7 * GIB + 12,
            },
        };
        let p = drive.to_physical(Backend::Loop);
        assert_eq!(
            (
                p.uuid,
                p.serial.as_str(),
                p.drive_type,
                p.capacity_gib,
                p.backend,
                p.missing
            ),
            (
                drive.signature.uuid,
                "S1",
                DriveType::Qlc,
                7,
                Backend::Loop,
                false
            )
        );
    }
}
