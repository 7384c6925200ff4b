//! The machine's disks as the kernel describes them: the hardware facts of every
//! whole disk that may be a drive, and the reasons discovery or signing must leave
//! a disk alone. Everything comes from sysfs, the mount table and the swap table,
//! read under configurable roots, so tests describe a whole machine in a
//! temporary directory and nothing here opens a device.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use super::blockdev::Sysfs;
use super::mounts::{self, MountEntry};
use super::{GIB, NodeError};

/// The kinds of whole disk that may be drives, by the kernel's naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DiskKind {
    /// An NVMe namespace (`nvme0n1`).
    Nvme,
    /// SCSI, SAS, SATA (through libata) and USB disks (`sda`).
    Scsi,
    /// A virtio-blk disk of a virtual machine (`vda`).
    Virtio,
    /// A Xen virtual disk (`xvda`).
    Xen,
    /// A loop device over a whole file or device: a simulated drive.
    Loop,
}

impl DiskKind {
    /// The kind of the whole block device `name`, None for devices that are never
    /// drives: device-mapper, md, ram, zram, optical and the like.
    pub fn of(name: &str) -> Option<DiskKind> {
        // Longest prefix first: `xvd` before `vd`.
        [
            ("nvme", DiskKind::Nvme),
            ("xvd", DiskKind::Xen),
            ("vd", DiskKind::Virtio),
            ("sd", DiskKind::Scsi),
            ("loop", DiskKind::Loop),
        ]
        .into_iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map(|(_, kind)| kind)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DiskKind::Nvme => "nvme",
            DiskKind::Scsi => "scsi",
            DiskKind::Virtio => "virtio",
            DiskKind::Xen => "xen",
            DiskKind::Loop => "loop",
        }
    }
}

impl fmt::Display for DiskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the kernel reports about one whole disk that may be a drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveFacts {
    /// The kernel's name (`nvme0n1`).
    pub name: String,
    /// The device node (`/dev/nvme0n1`).
    pub path: PathBuf,
    pub kind: DiskKind,
    /// Serial number, else WWID, else (for a loop device) the backing file.
    pub serial: Option<String>,
    /// `device/model`: NVMe and SCSI disks have one; virtio and loop devices not.
    /// SCSI reports at most 16 characters, so a SATA drive's model is cut short.
    pub model: Option<String>,
    /// `size` × 512 (sysfs counts 512-byte sectors whatever the block size).
    pub size_bytes: u64,
    /// `queue/rotational`; None when absent.
    pub rotational: Option<bool>,
    pub logical_block_bytes: Option<u64>,
    pub physical_block_bytes: Option<u64>,
    /// `queue/optimal_io_size`; 0 when the device states no preference.
    pub optimal_io_bytes: u64,
    /// The device accepts discards (`queue/discard_max_bytes` > 0).
    pub discard: bool,
    /// The device zeroes ranges itself (`queue/write_zeroes_max_bytes` > 0).
    pub write_zeroes: bool,
}

impl DriveFacts {
    /// A guess of the flash type from hardware facts alone; None when there is no
    /// basis for one. Only ever shown beside the signed type, never used for it.
    pub fn type_guess(&self) -> Option<TypeGuess> {
        guess_type(self)
    }
}

/// The facts of whole disk `name` from the sysfs at `sys`, None when `name` is not
/// a drive: not a kind of disk drives come as (dm, md, ram, zram, optical), a
/// hidden per-path device of a multipath NVMe namespace, or a loop device that is
/// unbound, starts at an offset or reads a block device (vdrive's own extent
/// devices are such loops).
pub fn drive_facts(sys: &Sysfs, name: &str) -> Option<DriveFacts> {
    let kind = DiskKind::of(name)?;
    if sys.attribute(name, "hidden").as_deref() == Some("1") {
        return None;
    }
    // A simulated drive is a loop device over a whole image file. A loop device
    // over a block device is vdrive's own extent device, even at offset 0 (its
    // tenant may have moved it there): never a drive, or a rescan would take a
    // tenant's device for the drive under it.
    if kind == DiskKind::Loop
        && (sys
            .attribute(name, "loop/backing_file")
            .is_none_or(|backing| backing.starts_with("/dev/"))
            || sys.number(name, "loop/offset") != Some(0))
    {
        return None;
    }
    let queue = |attr: &str| sys.number(name, &format!("queue/{attr}"));
    Some(DriveFacts {
        name: name.to_string(),
        path: Path::new("/dev").join(name),
        kind,
        serial: serial_of(sys, name),
        model: sys.attribute(name, "device/model"),
        size_bytes: sys.number(name, "size").unwrap_or(0).saturating_mul(512),
        rotational: queue("rotational").map(|r| r != 0),
        logical_block_bytes: queue("logical_block_size"),
        physical_block_bytes: queue("physical_block_size"),
        optimal_io_bytes: queue("optimal_io_size").unwrap_or(0),
        discard: queue("discard_max_bytes").is_some_and(|n| n > 0),
        write_zeroes: queue("write_zeroes_max_bytes").is_some_and(|n| n > 0),
    })
}

/// A stable identifier of device `name`: its serial (virtio and some SCSI disks
/// carry it themselves, an NVMe namespace's is its controller's), else its WWID,
/// else a loop device's backing file.
pub fn serial_of(sys: &Sysfs, name: &str) -> Option<String> {
    [
        "serial",
        "device/serial",
        "wwid",
        "device/wwid",
        "loop/backing_file",
    ]
    .iter()
    .find_map(|attr| sys.attribute(name, attr))
}

/// Why a disk must be left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// The device reports no capacity: an empty card-reader slot or removable bay.
    Empty,
    /// It holds the root filesystem, directly or under device-mapper or md.
    RootDisk,
    /// The kernel found a partition table on it.
    Partitioned { partitions: Vec<String> },
    /// A filesystem on `device` is mounted: the disk itself or a partition of it,
    /// or (`stacked`) a device-mapper or md device over it.
    Mounted {
        device: String,
        mount_point: PathBuf,
        stacked: bool,
    },
    /// Swap is active on `device` (as for `Mounted`).
    Swap { device: String, stacked: bool },
    /// `holder` (device-mapper, md, bcache) is stacked on `device`, the disk or
    /// one of its partitions.
    Held { device: String, holder: String },
    /// A loop device reads the disk or one of its partitions.
    LoopOver { loop_device: String },
}

impl Skip {
    /// Whether discovery of signed drives must pass the disk by without opening
    /// it. A signed drive that vdrive is using has its own volumes stacked on it
    /// (dm devices, loop devices over extents), mounted or not: those are signing's
    /// concern only. What discovery refuses, a signed drive never has: the root
    /// filesystem, a partition table (the signature occupies the sectors where one
    /// would be) or a filesystem mounted from the disk itself.
    pub fn bars_discovery(&self) -> bool {
        match self {
            Skip::Empty | Skip::RootDisk | Skip::Partitioned { .. } => true,
            Skip::Mounted { stacked, .. } | Skip::Swap { stacked, .. } => !stacked,
            Skip::Held { .. } | Skip::LoopOver { .. } => false,
        }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::Empty => f.write_str("it reports size 0 (no medium)"),
            Skip::RootDisk => f.write_str("it holds the root filesystem"),
            Skip::Partitioned { partitions } => {
                write!(f, "it has partitions ({})", partitions.join(", "))
            }
            Skip::Mounted {
                device,
                mount_point,
                stacked,
            } => {
                let on = if *stacked { ", stacked on it," } else { "" };
                write!(f, "{device}{on} is mounted at {}", mount_point.display())
            }
            Skip::Swap { device, stacked } => {
                let on = if *stacked { ", stacked on it" } else { "" };
                write!(f, "swap is active on {device}{on}")
            }
            Skip::Held { device, holder } => write!(f, "{holder} is stacked on {device}"),
            Skip::LoopOver { loop_device } => write!(f, "loop device {loop_device} reads it"),
        }
    }
}

/// The machine as discovery sees it: sysfs, where device nodes live, and what the
/// mount and swap tables hold, resolved to kernel device names once (a node with
/// thousands of kubelet mounts has only a handful of mounted devices).
#[derive(Debug, Clone)]
pub struct Machine {
    sys: Sysfs,
    dev: PathBuf,
    /// Each mounted block device once, with its first mount point.
    mounted: Vec<(String, PathBuf)>,
    /// The device of the topmost mount at `/`.
    root: Option<String>,
    /// Block devices swap is active on.
    swapped: Vec<String>,
}

impl Machine {
    /// This machine: /sys, /dev, this process's mount table and /proc/swaps. In a
    /// container that is the container's view: the host's mounts count only when
    /// they are visible in it (the sign-drives Job mounts the host's root for that).
    pub fn read() -> Result<Machine, NodeError> {
        let swaps = match fs::read_to_string("/proc/swaps") {
            Ok(text) => parse_swaps(&text),
            // A kernel built without swap has no /proc/swaps: nothing is swapped on.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(NodeError::io("read", "/proc/swaps")(e)),
        };
        Ok(Machine::new(
            Sysfs::host(),
            "/dev",
            mounts::mountinfo()?,
            swaps,
        ))
    }

    pub fn new(
        sys: Sysfs,
        dev: impl Into<PathBuf>,
        mounts: Vec<MountEntry>,
        swaps: Vec<PathBuf>,
    ) -> Machine {
        let mut machine = Machine {
            sys,
            dev: dev.into(),
            mounted: Vec::new(),
            root: None,
            swapped: Vec::new(),
        };
        let mut seen = BTreeSet::new();
        for m in &mounts {
            let Some(device) = machine.mounted_device(m) else {
                continue;
            };
            if m.mount_point == Path::new("/") {
                machine.root = Some(device.clone());
            }
            if seen.insert(device.clone()) {
                machine.mounted.push((device, m.mount_point.clone()));
            }
        }
        // Swap files live on a mounted filesystem, which already counts.
        machine.swapped = swaps
            .iter()
            .filter_map(|path| machine.kernel_name_of(path))
            .collect();
        machine
    }

    pub fn sysfs(&self) -> &Sysfs {
        &self.sys
    }

    /// Every whole disk that may be a drive, with its facts, by name; each path is
    /// under this machine's device directory.
    pub fn drives(&self) -> Vec<DriveFacts> {
        self.sys
            .block_devices()
            .iter()
            .filter_map(|name| drive_facts(&self.sys, name))
            .map(|facts| DriveFacts {
                path: self.dev.join(&facts.name),
                ..facts
            })
            .collect()
    }

    /// The whole disks under the root filesystem (several for root on dm or md).
    pub fn root_disks(&self) -> BTreeSet<String> {
        self.root
            .as_deref()
            .map(|name| self.sys.disks_under(name))
            .unwrap_or_default()
    }

    /// The kernel name of the block device at `path` (`/dev/sdb1`,
    /// `/dev/mapper/vg-data`, `/dev/disk/by-id/...`), resolved under this
    /// machine's device directory; None for anything that is not a block device
    /// sysfs knows.
    pub fn kernel_name_of(&self, path: &Path) -> Option<String> {
        let relative = path.strip_prefix("/dev").ok()?;
        let local = self.dev.join(relative);
        // udev's names are symlinks to the kernel's; a node that is not there
        // (another machine's table, a test) is taken by its own name.
        let resolved = fs::canonicalize(&local).unwrap_or(local);
        let name = resolved.file_name()?.to_string_lossy().into_owned();
        self.sys.exists(&name).then_some(name)
    }

    /// The block device a mount is of. Filesystems such as btrfs report an
    /// anonymous device number; their source path then names the device.
    fn mounted_device(&self, m: &MountEntry) -> Option<String> {
        if m.major != 0 {
            self.sys.kernel_name(m.major, m.minor)
        } else if m.source.starts_with("/dev/") {
            self.kernel_name_of(Path::new(&m.source))
        } else {
            None
        }
    }

    /// Every reason to leave whole disk `disk` alone, gravest first; empty when
    /// there is none. Works for any whole block device, drive or not.
    pub fn reasons(&self, disk: &str) -> Vec<Skip> {
        let mut out = Vec::new();
        if self.sys.number(disk, "size") == Some(0) {
            out.push(Skip::Empty);
        }
        if self.root_disks().contains(disk) {
            out.push(Skip::RootDisk);
        }
        let partitions = self.sys.partitions(disk);
        let mut on_disk = partitions.clone();
        on_disk.push(disk.to_string());

        // Whether `device` lives on the disk, and if so whether through devices
        // stacked on it.
        let on_it = |device: &str| -> Option<bool> {
            self.sys
                .stack_under(device)
                .contains(disk)
                .then(|| !on_disk.iter().any(|d| d == device))
        };
        let mounted = self.mounted.iter().filter_map(|(device, mount_point)| {
            on_it(device).map(|stacked| Skip::Mounted {
                device: device.clone(),
                mount_point: mount_point.clone(),
                stacked,
            })
        });
        let swapped = self.swapped.iter().filter_map(|device| {
            on_it(device).map(|stacked| Skip::Swap {
                device: device.clone(),
                stacked,
            })
        });
        let (stacked, direct): (Vec<Skip>, Vec<Skip>) = mounted.chain(swapped).partition(|s| {
            matches!(
                s,
                Skip::Mounted { stacked: true, .. } | Skip::Swap { stacked: true, .. }
            )
        });
        out.extend(direct);
        if !partitions.is_empty() {
            out.push(Skip::Partitioned { partitions });
        }
        out.extend(stacked);
        for device in &on_disk {
            for holder in self.sys.holders(device) {
                out.push(Skip::Held {
                    device: device.clone(),
                    holder,
                });
            }
        }
        for loop_device in self.sys.block_devices() {
            let over_disk = loop_device.starts_with("loop")
                && self
                    .sys
                    .attribute(&loop_device, "loop/backing_file")
                    .and_then(|backing| self.kernel_name_of(Path::new(&backing)))
                    .is_some_and(|backing| on_disk.contains(&backing));
            if over_disk {
                out.push(Skip::LoopOver { loop_device });
            }
        }
        out
    }
}

/// The devices and files of /proc/swaps (header line first, then one per line).
fn parse_swaps(text: &str) -> Vec<PathBuf> {
    text.lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .map(PathBuf::from)
        .collect()
}

/// How much a guess is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confidence {
    /// The device itself says so.
    Strong,
    /// Circumstantial: a product name, or a flag a driver may have defaulted.
    Weak,
}

impl Confidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Confidence::Strong => "strong",
            Confidence::Weak => "weak",
        }
    }
}

/// A guess of what a drive is, from hardware facts, with what it rests on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeGuess {
    /// `qlc`, or `hdd` for a disk with spinning media (neither TLC nor QLC flash).
    pub value: &'static str,
    pub basis: String,
    pub confidence: Confidence,
}

/// Markers in model names of product lines built only from QLC flash, each with
/// the line it names. Lines that changed flash type during their life (Crucial
/// P2, several Kingston and WD lines) are left out on purpose: their name says
/// nothing. SATA drives report a model cut to 16 characters through SCSI, which
/// often drops the marker ("Samsung SSD 870 " for an 870 QVO).
const QLC_MODEL_MARKERS: &[(&str, &str)] = &[
    ("QVO", "Samsung 860/870 QVO"),
    ("SSDPEKNW", "Intel SSD 660p/665p"),
    ("SSDPEKNU", "Intel SSD 670p"),
    ("P1SSD8", "Crucial P1"),
    ("P3SSD8", "Crucial P3"),
    ("P3PSSD8", "Crucial P3 Plus"),
];

fn guess_type(facts: &DriveFacts) -> Option<TypeGuess> {
    // An NVMe namespace is rotational only when the device itself reports
    // rotational media (NVMe 2.0); the kernel's default is flash.
    if facts.kind == DiskKind::Nvme && facts.rotational == Some(true) {
        return Some(TypeGuess {
            value: "hdd",
            basis: "queue/rotational is 1: the NVMe device reports rotational media".into(),
            confidence: Confidence::Strong,
        });
    }
    let model = facts.model.as_deref().unwrap_or("");
    let upper = model.to_ascii_uppercase();
    if let Some((marker, line)) = QLC_MODEL_MARKERS
        .iter()
        .find(|(marker, _)| upper.contains(&marker.to_ascii_uppercase()))
    {
        return Some(TypeGuess {
            value: "qlc",
            basis: format!("model name {model:?} contains {marker:?} ({line}, a QLC product line)"),
            confidence: Confidence::Weak,
        });
    }
    // SCSI disks start out rotational and the kernel clears the flag only when
    // the drive reports a non-rotating medium; some bridges and controllers never
    // pass that on, so an SSD behind them looks rotational too. Virtio, Xen and
    // loop devices carry whatever the hypervisor or loop driver set, which says
    // nothing about the medium, so they get no guess.
    if facts.kind == DiskKind::Scsi && facts.rotational == Some(true) {
        return Some(TypeGuess {
            value: "hdd",
            basis: "queue/rotational is 1 on a SCSI/SATA disk: spinning media, unless a bridge hides a non-rotating one".into(),
            confidence: Confidence::Weak,
        });
    }
    None
}

/// `bytes` for people: 931.5 GiB, 3.49 TiB.
pub fn human_bytes(bytes: u64) -> String {
    const TIB: u64 = 1 << 40;
    if bytes >= TIB {
        format!("{:.2} TiB", bytes as f64 / TIB as f64)
    } else if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A made-up machine in a temporary directory, laid out like sysfs: devices
    //! under `sys/devices/...`, reached through the `block`, `class/block` and
    //! `dev/block` symlinks the real tree has.

    use std::os::unix::fs::symlink;

    use super::*;

    pub struct FakeMachine {
        pub dir: tempfile::TempDir,
        mountinfo: String,
        swaps: Vec<PathBuf>,
    }

    impl FakeMachine {
        pub fn new() -> FakeMachine {
            let dir = tempfile::tempdir().unwrap();
            for sub in ["sys/block", "sys/class/block", "sys/dev/block", "dev"] {
                fs::create_dir_all(dir.path().join(sub)).unwrap();
            }
            FakeMachine {
                dir,
                mountinfo: String::new(),
                swaps: Vec::new(),
            }
        }

        fn sys(&self) -> PathBuf {
            self.dir.path().join("sys")
        }

        fn write(dir: &Path, attrs: &[(&str, &str)]) {
            for (attr, value) in attrs {
                let file = dir.join(attr);
                fs::create_dir_all(file.parent().unwrap()).unwrap();
                fs::write(file, format!("{value}\n")).unwrap();
            }
        }

        fn link(&self, dir: &Path, name: &str, dev: &str) {
            symlink(dir, self.sys().join("class/block").join(name)).unwrap();
            symlink(dir, self.sys().join("dev/block").join(dev)).unwrap();
        }

        /// A whole block device `name`, numbered `dev`, with sysfs attributes.
        pub fn disk(&mut self, name: &str, dev: &str, attrs: &[(&str, &str)]) -> &mut Self {
            let dir = self.sys().join("devices/test/block").join(name);
            fs::create_dir_all(dir.join("holders")).unwrap();
            fs::create_dir_all(dir.join("slaves")).unwrap();
            Self::write(&dir, &[("dev", dev)]);
            Self::write(&dir, attrs);
            symlink(&dir, self.sys().join("block").join(name)).unwrap();
            self.link(&dir, name, dev);
            self
        }

        /// Partition `name` of `disk`.
        pub fn partition(&mut self, disk: &str, name: &str, dev: &str) -> &mut Self {
            let dir = self.sys().join("devices/test/block").join(disk).join(name);
            fs::create_dir_all(dir.join("holders")).unwrap();
            Self::write(&dir, &[("dev", dev), ("partition", "1"), ("size", "2048")]);
            self.link(&dir, name, dev);
            self
        }

        /// `upper` (a dm or md device) stacked on `lower`.
        pub fn stack(&mut self, lower: &str, upper: &str) -> &mut Self {
            let class = self.sys().join("class/block");
            fs::write(class.join(lower).join("holders").join(upper), "").unwrap();
            fs::write(class.join(upper).join("slaves").join(lower), "").unwrap();
            self
        }

        /// A mount of device `dev` (`major:minor`) from `source` at `target`.
        pub fn mount(&mut self, dev: &str, target: &str, fs_type: &str, source: &str) -> &mut Self {
            let id = self.mountinfo.lines().count() + 20;
            self.mountinfo.push_str(&format!(
                "{id} 1 {dev} / {target} rw,relatime - {fs_type} {source} rw\n"
            ));
            self
        }

        pub fn swap(&mut self, path: &str) -> &mut Self {
            self.swaps.push(PathBuf::from(path));
            self
        }

        /// A device node (or udev symlink, when `target` is given) under `dev/`.
        pub fn dev_node(&mut self, path: &str, target: Option<&str>) -> &mut Self {
            let node = self.dir.path().join("dev").join(path);
            fs::create_dir_all(node.parent().unwrap()).unwrap();
            match target {
                Some(target) => symlink(target, node).unwrap(),
                None => fs::write(node, "").unwrap(),
            }
            self
        }

        /// A sparse image standing in for device node `dev/<name>`, signed as
        /// `signed` when given.
        pub fn image(&mut self, name: &str, signed: Option<crate::drive::DriveType>) -> &mut Self {
            let path = self.dir.path().join("dev").join(name);
            let file = fs::File::create(&path).unwrap();
            file.set_len(crate::node::signature::HEADER_BYTES + 2 * GIB)
                .unwrap();
            if let Some(drive_type) = signed {
                crate::node::signature::write(&path, drive_type).unwrap();
            }
            self
        }

        pub fn machine(&self) -> Machine {
            Machine::new(
                Sysfs::at(self.sys()),
                self.dir.path().join("dev"),
                mounts::parse_mountinfo(&self.mountinfo),
                self.swaps.clone(),
            )
        }
    }

    /// Queue attributes of a flash disk.
    pub const FLASH: &[(&str, &str)] = &[
        ("queue/rotational", "0"),
        ("queue/logical_block_size", "512"),
        ("queue/physical_block_size", "4096"),
        ("queue/optimal_io_size", "131072"),
        ("queue/discard_max_bytes", "2199023255040"),
        ("queue/write_zeroes_max_bytes", "33554432"),
    ];

    /// Attributes of a spinning or unknown disk.
    pub const SPINNING: &[(&str, &str)] = &[
        ("queue/rotational", "1"),
        ("queue/logical_block_size", "512"),
        ("queue/physical_block_size", "512"),
        ("queue/optimal_io_size", "0"),
        ("queue/discard_max_bytes", "0"),
        ("queue/write_zeroes_max_bytes", "0"),
    ];

    fn with<'a>(
        base: &[(&'a str, &'a str)],
        more: &[(&'a str, &'a str)],
    ) -> Vec<(&'a str, &'a str)> {
        base.iter().chain(more).copied().collect()
    }

    /// A server: two NVMe drives; a root disk sda (sda1 /boot, sda2 under dm-0
    /// mounted at /); sdb partitioned; sdc with a mounted partition; sdd
    /// mounted whole (btrfs, anonymous device number); sde spinning; sdf an
    /// empty slot; sdg a whole-disk LVM PV whose dm-1 is mounted; vda a VM disk;
    /// vdb swap; loop0 a simulated drive with an extent device loop1 on it, loop2
    /// unbound; and devices that are never drives: dm, zram, md, a hidden NVMe path.
    pub fn server() -> FakeMachine {
        let mut m = FakeMachine::new();
        m.disk(
            "nvme0n1",
            "259:0",
            &with(
                FLASH,
                &[
                    ("size", "3907029168"),
                    ("device/model", "INTEL SSDPEKNW020T8                     "),
                    ("device/serial", "BTNH0001"),
                    ("wwid", "eui.0001"),
                ],
            ),
        )
        .disk(
            "nvme1n1",
            "259:1",
            &with(
                FLASH,
                &[
                    ("size", "7501476528"),
                    ("device/model", "SAMSUNG MZQL23T8HCLS-00A07"),
                    ("device/serial", "S64HNE0001"),
                ],
            ),
        )
        .disk(
            "nvme1c1n1",
            "259:9",
            &[("size", "7501476528"), ("hidden", "1")],
        )
        .disk(
            "sda",
            "8:0",
            &with(
                FLASH,
                &[("size", "937703088"), ("device/model", "SAMSUNG MZ7LH480")],
            ),
        )
        .partition("sda", "sda1", "8:1")
        .partition("sda", "sda2", "8:2")
        .disk("dm-0", "253:0", &[("size", "900000000")])
        .stack("sda2", "dm-0")
        .mount("8:1", "/boot", "ext4", "/dev/sda1")
        .mount("253:0", "/", "xfs", "/dev/mapper/vg-root")
        .disk("sdb", "8:16", &with(FLASH, &[("size", "937703088")]))
        .partition("sdb", "sdb1", "8:17")
        .disk("sdc", "8:32", &with(FLASH, &[("size", "937703088")]))
        .partition("sdc", "sdc1", "8:33")
        .mount("8:33", "/data", "ext4", "/dev/sdc1")
        .mount("8:33", "/data-again", "ext4", "/dev/sdc1")
        .disk("sdd", "8:48", &with(FLASH, &[("size", "937703088")]))
        .mount("0:45", "/srv", "btrfs", "/dev/sdd")
        .disk(
            "sde",
            "8:64",
            &with(
                SPINNING,
                &[("size", "7814037168"), ("device/model", "ST4000NM0035-1V4")],
            ),
        )
        .disk("sdf", "8:80", &with(SPINNING, &[("size", "0")]))
        .disk("sdg", "8:96", &with(FLASH, &[("size", "937703088")]))
        .disk("dm-1", "253:1", &[("size", "937703088")])
        .stack("sdg", "dm-1")
        .mount("253:1", "/var/lib/data", "xfs", "/dev/mapper/data-lv")
        .disk(
            "vda",
            "254:0",
            &with(SPINNING, &[("size", "104857600"), ("serial", "vm-disk-1")]),
        )
        .disk("vdb", "254:16", &with(SPINNING, &[("size", "8388608")]))
        .swap("/dev/mapper/swap")
        .dev_node("vdb", None)
        .dev_node("mapper/swap", Some("../vdb"))
        .disk(
            "loop0",
            "7:0",
            &with(
                SPINNING,
                &[
                    ("size", "33556480"),
                    ("loop/backing_file", "/var/lib/vdrive/sim-tlc-0.img"),
                    ("loop/offset", "0"),
                ],
            ),
        )
        .disk(
            "loop1",
            "7:1",
            &[
                ("size", "2097152"),
                ("loop/backing_file", "/dev/loop0"),
                ("loop/offset", "1048576"),
            ],
        )
        .disk("loop2", "7:2", &[("size", "0")])
        .disk("zram0", "252:0", &[("size", "16777216")])
        .disk("md0", "9:0", &[("size", "16777216")]);
        m
    }

    /// [`server`] with images for the disks discovery opens: nvme0n1 signed TLC,
    /// loop0 signed QLC, vda a second copy of nvme0n1's signature (one drive seen
    /// twice), the others blank.
    pub fn signed_server() -> FakeMachine {
        use crate::drive::DriveType;
        let mut m = server();
        m.image("nvme0n1", Some(DriveType::Tlc))
            .image("loop0", Some(DriveType::Qlc))
            .image("vda", None);
        for blank in ["nvme1n1", "sde", "sdg"] {
            m.image(blank, None);
        }
        use std::os::unix::fs::FileExt;
        let dev = m.dir.path().join("dev");
        let mut header = [0u8; 4096];
        fs::File::open(dev.join("nvme0n1"))
            .unwrap()
            .read_exact_at(&mut header, 0)
            .unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(dev.join("vda"))
            .unwrap()
            .write_all_at(&header, 0)
            .unwrap();
        m
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{FakeMachine, server};
    use super::*;

    fn names(facts: &[DriveFacts]) -> Vec<&str> {
        facts.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn reads_an_nvme_namespace() {
        let fake = server();
        let m = fake.machine();
        let facts = drive_facts(m.sysfs(), "nvme0n1").unwrap();
        assert_eq!(
            facts,
            DriveFacts {
                name: "nvme0n1".into(),
                path: "/dev/nvme0n1".into(),
                kind: DiskKind::Nvme,
                serial: Some("BTNH0001".into()),
                model: Some("INTEL SSDPEKNW020T8".into()),
                size_bytes: 3907029168 * 512,
                rotational: Some(false),
                logical_block_bytes: Some(512),
                physical_block_bytes: Some(4096),
                optimal_io_bytes: 131072,
                discard: true,
                write_zeroes: true,
            }
        );
    }

    #[test]
    fn a_bare_device_has_no_facts_it_does_not_report() {
        let mut m = FakeMachine::new();
        m.disk("vdc", "254:32", &[("size", "2097152")]);
        let facts = drive_facts(m.machine().sysfs(), "vdc").unwrap();
        assert_eq!(facts.kind, DiskKind::Virtio);
        assert_eq!(facts.size_bytes, GIB);
        assert_eq!(
            (
                facts.serial,
                facts.model,
                facts.rotational,
                facts.logical_block_bytes
            ),
            (None, None, None, None)
        );
        assert!(!facts.discard && !facts.write_zeroes);
        assert_eq!(facts.optimal_io_bytes, 0);
    }

    #[test]
    fn drives_are_whole_disks_and_simulated_drives_only() {
        let fake = server();
        let m = fake.machine();
        assert_eq!(
            names(&m.drives()),
            [
                "loop0", "nvme0n1", "nvme1n1", "sda", "sdb", "sdc", "sdd", "sde", "sdf", "sdg",
                "vda", "vdb"
            ],
            "no dm, md, zram, hidden NVMe path, unbound loop or loop at an offset"
        );
        let sim = drive_facts(m.sysfs(), "loop0").unwrap();
        assert_eq!(sim.kind, DiskKind::Loop);
        assert_eq!(sim.serial.as_deref(), Some("/var/lib/vdrive/sim-tlc-0.img"));
        assert_eq!(drive_facts(m.sysfs(), "loop1"), None);
        assert_eq!(drive_facts(m.sysfs(), "nvme1c1n1"), None);
    }

    #[test]
    fn a_loop_device_over_a_block_device_is_never_a_drive() {
        // An extent device whose tenant moved its offset to 0: it now reads the
        // drive's signature, but it is not a drive.
        let mut fake = FakeMachine::new();
        fake.disk(
            "loop3",
            "7:3",
            &[
                ("size", "2097152"),
                ("loop/backing_file", "/dev/nvme0n1"),
                ("loop/offset", "0"),
            ],
        );
        let m = fake.machine();
        assert_eq!(drive_facts(m.sysfs(), "loop3"), None);
        assert!(names(&m.drives()).is_empty());
    }

    #[test]
    fn the_root_disk_is_found_through_device_mapper() {
        let fake = server();
        let m = fake.machine();
        assert_eq!(m.root_disks(), BTreeSet::from(["sda".to_string()]));
        assert_eq!(FakeMachine::new().machine().root_disks(), BTreeSet::new());
    }

    #[test]
    fn every_reason_to_leave_a_disk_alone_is_named() {
        let fake = server();
        let m = fake.machine();
        let mounted = |device: &str, at: &str, stacked| Skip::Mounted {
            device: device.into(),
            mount_point: at.into(),
            stacked,
        };
        assert_eq!(
            m.reasons("sda"),
            [
                Skip::RootDisk,
                mounted("sda1", "/boot", false),
                Skip::Partitioned {
                    partitions: vec!["sda1".into(), "sda2".into()]
                },
                mounted("dm-0", "/", true),
                Skip::Held {
                    device: "sda2".into(),
                    holder: "dm-0".into()
                },
            ]
        );
        assert_eq!(
            m.reasons("sdb"),
            [Skip::Partitioned {
                partitions: vec!["sdb1".into()]
            }]
        );
        assert_eq!(
            m.reasons("sdc"),
            [
                mounted("sdc1", "/data", false),
                Skip::Partitioned {
                    partitions: vec!["sdc1".into()]
                }
            ],
            "one reason per mounted device, at its first mount"
        );
        assert_eq!(m.reasons("sdd"), [mounted("sdd", "/srv", false)]);
        assert_eq!(m.reasons("sdf"), [Skip::Empty]);
        assert_eq!(
            m.reasons("sdg"),
            [
                mounted("dm-1", "/var/lib/data", true),
                Skip::Held {
                    device: "sdg".into(),
                    holder: "dm-1".into()
                }
            ]
        );
        assert_eq!(
            m.reasons("vdb"),
            [Skip::Swap {
                device: "vdb".into(),
                stacked: false
            }],
            "swap through a udev symlink"
        );
        assert_eq!(
            m.reasons("loop0"),
            [Skip::LoopOver {
                loop_device: "loop1".into()
            }]
        );
        for free in ["nvme0n1", "nvme1n1", "sde", "vda"] {
            assert_eq!(m.reasons(free), [], "{free}");
        }
    }

    #[test]
    fn discovery_passes_by_only_what_a_signed_drive_never_has() {
        let fake = server();
        let m = fake.machine();
        let barred: Vec<String> = m
            .drives()
            .into_iter()
            .filter(|d| m.reasons(&d.name).iter().any(Skip::bars_discovery))
            .map(|d| d.name)
            .collect();
        assert_eq!(barred, ["sda", "sdb", "sdc", "sdd", "sdf", "vdb"]);
        // A drive vdrive uses has its dm devices (mounted or not) and extent loops
        // on it: sdg and loop0 stay visible to discovery.
        assert!(!m.reasons("sdg").iter().any(Skip::bars_discovery));
        assert!(!m.reasons("loop0").iter().any(Skip::bars_discovery));
    }

    #[test]
    fn reasons_read_for_people() {
        let fake = server();
        let m = fake.machine();
        let text: Vec<String> = m.reasons("sda").iter().map(|s| s.to_string()).collect();
        assert_eq!(
            text,
            [
                "it holds the root filesystem",
                "sda1 is mounted at /boot",
                "it has partitions (sda1, sda2)",
                "dm-0, stacked on it, is mounted at /",
                "dm-0 is stacked on sda2",
            ]
        );
        assert_eq!(Skip::Empty.to_string(), "it reports size 0 (no medium)");
        assert_eq!(
            m.reasons("loop0")[0].to_string(),
            "loop device loop1 reads it"
        );
    }

    #[test]
    fn paths_resolve_through_udev_symlinks_and_never_outside_sysfs() {
        let mut fake = server();
        fake.dev_node("dm-1", None)
            .dev_node("mapper/data-lv", Some("../dm-1"));
        let m = fake.machine();
        assert_eq!(
            m.kernel_name_of(Path::new("/dev/mapper/data-lv"))
                .as_deref(),
            Some("dm-1")
        );
        assert_eq!(
            m.kernel_name_of(Path::new("/dev/sdb1")).as_deref(),
            Some("sdb1")
        );
        assert_eq!(m.kernel_name_of(Path::new("/dev/nonesuch")), None);
        assert_eq!(m.kernel_name_of(Path::new("/dev/..")), None);
        assert_eq!(m.kernel_name_of(Path::new("/tmp/sim.img")), None);
    }

    #[test]
    fn parses_proc_swaps() {
        let text = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                    /dev/dm-1                               partition\t8388604\t\t0\t\t-2\n\
                    /swapfile                               file\t\t1048572\t\t0\t\t-3\n";
        assert_eq!(
            parse_swaps(text),
            [PathBuf::from("/dev/dm-1"), PathBuf::from("/swapfile")]
        );
        assert_eq!(
            parse_swaps("Filename Type Size Used Priority\n"),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn guesses_only_what_the_facts_support() {
        let fake = server();
        let m = fake.machine();
        let guess = |name: &str| drive_facts(m.sysfs(), name).unwrap().type_guess();

        let qlc = guess("nvme0n1").unwrap();
        assert_eq!((qlc.value, qlc.confidence), ("qlc", Confidence::Weak));
        assert!(
            qlc.basis.contains("SSDPEKNW") && qlc.basis.contains("660p"),
            "{}",
            qlc.basis
        );

        let hdd = guess("sde").unwrap();
        assert_eq!((hdd.value, hdd.confidence), ("hdd", Confidence::Weak));

        // A data-center TLC part, a VM disk and a simulated drive: no basis.
        for name in ["nvme1n1", "vda", "loop0"] {
            assert_eq!(guess(name), None, "{name}");
        }

        let mut spinning_nvme = FakeMachine::new();
        spinning_nvme.disk(
            "nvme5n1",
            "259:5",
            &[
                ("size", "100"),
                ("queue/rotational", "1"),
                ("device/model", "SAMSUNG SSD 870 QVO"),
            ],
        );
        let g = drive_facts(spinning_nvme.machine().sysfs(), "nvme5n1")
            .unwrap()
            .type_guess()
            .unwrap();
        assert_eq!(
            (g.value, g.confidence),
            ("hdd", Confidence::Strong),
            "the device's own word beats a name"
        );

        let mut qvo = FakeMachine::new();
        qvo.disk(
            "sdh",
            "8:112",
            &[("size", "100"), ("device/model", "Samsung SSD 870 QVO 1TB")],
        );
        qvo.disk(
            "sdi",
            "8:128",
            &[("size", "100"), ("device/model", "CT1000P2SSD8")],
        );
        let m = qvo.machine();
        assert_eq!(
            drive_facts(m.sysfs(), "sdh")
                .unwrap()
                .type_guess()
                .unwrap()
                .value,
            "qlc"
        );
        assert_eq!(
            drive_facts(m.sysfs(), "sdi").unwrap().type_guess(),
            None,
            "Crucial P2 shipped with TLC and with QLC"
        );
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_bytes(931 * GIB + GIB / 2), "931.5 GiB");
        assert_eq!(human_bytes(3 * (1 << 40) + (1 << 39)), "3.50 TiB");
        assert_eq!(human_bytes(512 << 20), "512.0 MiB");
    }

    #[test]
    fn the_machine_is_read_without_error_here() {
        // Reading only: sysfs, the mount table, /proc/swaps.
        let m = Machine::read().unwrap();
        for facts in m.drives() {
            assert_eq!(m.sysfs().whole_disk(&facts.name), facts.name);
            let _ = m.reasons(&facts.name);
        }
    }
}
