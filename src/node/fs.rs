//! Filesystems on a volume's device: detecting, creating and growing them.

use std::ffi::OsString;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use uuid::Uuid;

use super::{NodeError, cmd, mounts};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsType {
    Ext4,
    Xfs,
}

impl FsType {
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FsType {
    type Err = NodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ext4" => Ok(FsType::Ext4),
            "xfs" => Ok(FsType::Xfs),
            _ => Err(NodeError::UnsupportedFs {
                given: s.to_string(),
            }),
        }
    }
}

/// What blkid finds on the device itself: `KEY=value` pairs, None when nothing.
fn probe(device: &Path) -> Result<Option<Vec<(String, String)>>, NodeError> {
    // -p probes the device itself (no cache); export format gives TYPE, UUID, PTTYPE.
    let args = [
        "-p".as_ref(),
        "-o".as_ref(),
        "export".as_ref(),
        "--".as_ref(),
        device.as_os_str(),
    ];
    let out = cmd::output("blkid", &args)?;
    match out.status.code() {
        Some(0) => Ok(Some(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )),
        // 2: nothing found.
        Some(2) => Ok(None),
        // 8: several signatures disagree (e.g. leftovers of two filesystems).
        Some(8) => Err(NodeError::AmbiguousFs {
            device: device.to_path_buf(),
            found: "several conflicting signatures".into(),
        }),
        _ => Err(cmd::failed("blkid", &args, &out)),
    }
}

fn value(pairs: &[(String, String)], key: &str) -> Option<String> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

/// What a device holds, from one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its filesystem type (`ext4`, `xfs`, `swap`...), or for a device with a
    /// partition table e.g. `gpt partition table`.
    pub kind: String,
    /// The filesystem's UUID, when it has one that is a UUID.
    pub uuid: Option<Uuid>,
}

/// What `device` already holds; None only when blkid finds nothing at all: only
/// then is the device safe to format.
pub fn identify(device: &Path) -> Result<Option<Found>, NodeError> {
    let Some(pairs) = probe(device)? else {
        return Ok(None);
    };
    let kind = match (value(&pairs, "TYPE"), value(&pairs, "PTTYPE")) {
        (Some(fs), _) => fs,
        (None, Some(pt)) => format!("{pt} partition table"),
        (None, None) => "an unnamed signature".to_string(),
    };
    let uuid = value(&pairs, "UUID").and_then(|id| Uuid::parse_str(&id).ok());
    Ok(Some(Found { kind, uuid }))
}

/// The filesystem type (or other signature) on `device`; see [`identify`].
pub fn detect(device: &Path) -> Result<Option<String>, NodeError> {
    Ok(identify(device)?.map(|found| found.kind))
}

/// The UUID of the filesystem on `device`; None when there is no filesystem or
/// its id is not a UUID (vfat serials, for instance).
pub fn uuid(device: &Path) -> Result<Option<Uuid>, NodeError> {
    Ok(identify(device)?.and_then(|found| found.uuid))
}

/// Creates a filesystem on `device`, overwriting whatever is there: call
/// [`detect`] first. With `uuid` the filesystem carries it (the volume's id), so
/// a filesystem can later be told apart from one an earlier tenant left. Inode
/// tables and the journal are initialised lazily so a large volume formats in
/// seconds.
pub fn format(device: &Path, fs: FsType, uuid: Option<Uuid>) -> Result<(), NodeError> {
    let (program, args) = format_command(device, fs, uuid);
    cmd::run(program, &args).map(drop)
}

/// The mkfs command line for [`format`]; every tool vdrive runs gets `--` before
/// its paths, so no path is ever read as an option.
fn format_command(device: &Path, fs: FsType, uuid: Option<Uuid>) -> (&'static str, Vec<OsString>) {
    let mut args: Vec<OsString> = match fs {
        // -m 0: a volume belongs to one workload, no blocks reserved for root.
        FsType::Ext4 => [
            "-F",
            "-q",
            "-m",
            "0",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
        ]
        .map(OsString::from)
        .to_vec(),
        FsType::Xfs => vec!["-f".into(), "-q".into()],
    };
    if let Some(uuid) = uuid {
        match fs {
            FsType::Ext4 => args.extend(["-U".into(), uuid.to_string().into()]),
            FsType::Xfs => args.extend(["-m".into(), format!("uuid={uuid}").into()]),
        }
    }
    args.extend(["--".into(), device.into()]);
    let program = match fs {
        FsType::Ext4 => "mkfs.ext4",
        FsType::Xfs => "mkfs.xfs",
    };
    (program, args)
}

/// The size of the ext4 filesystem on `device`, from its superblock (block count
/// × block size); None when the device holds no ext4 superblock.
pub fn ext4_size_bytes(device: &Path) -> Result<Option<u64>, NodeError> {
    use std::io::{Read, Seek, SeekFrom};
    // The superblock starts 1024 bytes in; the fields are little-endian.
    const SUPERBLOCK: u64 = 1024;
    const MAGIC: u16 = 0xEF53;
    const INCOMPAT_64BIT: u32 = 0x80;
    let mut sb = [0u8; 1024];
    let mut file = std::fs::File::open(device).map_err(NodeError::io("open", device))?;
    file.seek(SeekFrom::Start(SUPERBLOCK))
        .and_then(|_| file.read_exact(&mut sb))
        .map_err(NodeError::io("read the superblock of", device))?;
    let u16_at = |at: usize| u16::from_le_bytes([sb[at], sb[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
    if u16_at(0x38) != MAGIC {
        return Ok(None);
    }
    let mut blocks = u64::from(u32_at(0x04));
    if u32_at(0x60) & INCOMPAT_64BIT != 0 {
        blocks |= u64::from(u32_at(0x150)) << 32;
    }
    let block_size = 1024u64 << u32_at(0x18).min(16);
    Ok(Some(blocks.saturating_mul(block_size)))
}

/// Grows the filesystem on `device` to the device's size. ext4 grows mounted or
/// not (unmounted after a forced check, as resize2fs requires); xfs only grows
/// while mounted, at `mount_path`.
pub fn grow(device: &Path, mount_path: &Path, fs: FsType) -> Result<(), NodeError> {
    let mounted = mounts::is_mount_point(mount_path)?;
    match fs {
        FsType::Ext4 => {
            if !mounted {
                // -p repairs only what is safe without a person; it fails otherwise.
                let args = [
                    "-f".as_ref(),
                    "-p".as_ref(),
                    "--".as_ref(),
                    device.as_os_str(),
                ];
                let out = cmd::output("e2fsck", &args)?;
                // Exit 0: clean, 1: errors corrected.
                if !matches!(out.status.code(), Some(0 | 1)) {
                    return Err(cmd::failed("e2fsck", &args, &out));
                }
            }
            let args = ["--".as_ref(), device.as_os_str()];
            let out = cmd::output("resize2fs", &args)?;
            if out.status.success() {
                return Ok(());
            }
            // The kernel answers EPERM to an online resize without CAP_SYS_RESOURCE.
            if mounted && String::from_utf8_lossy(&out.stderr).contains("Permission denied") {
                return Err(NodeError::ResizeNotPermitted {
                    device: device.to_path_buf(),
                });
            }
            Err(cmd::failed("resize2fs", &args, &out))
        }
        FsType::Xfs if mounted => {
            cmd::run("xfs_growfs", &["--".as_ref(), mount_path.as_os_str()]).map(drop)
        }
        FsType::Xfs => Err(NodeError::NotMounted {
            device: device.to_path_buf(),
            path: mount_path.to_path_buf(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_supported_types_and_names_them_otherwise() {
        assert_eq!("ext4".parse::<FsType>().unwrap(), FsType::Ext4);
        assert_eq!("XFS".parse::<FsType>().unwrap(), FsType::Xfs);
        let err = "btrfs".parse::<FsType>().unwrap_err();
        assert!(err.to_string().contains("\"btrfs\""), "{err}");
        assert!(err.to_string().contains("ext4 or xfs"), "{err}");
    }

    #[test]
    fn mkfs_is_told_where_its_options_end() {
        let device = Path::new("/dev/loop7");
        for fs in [FsType::Ext4, FsType::Xfs] {
            let (_, args) = format_command(device, fs, Some(Uuid::nil()));
            let tail: [OsString; 2] = ["--".into(), device.into()];
            assert_eq!(args[args.len() - 2..], tail, "{fs}");
        }
    }

    #[test]
    fn formats_and_detects_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs.img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        assert_eq!(detect(&path).unwrap(), None);
        assert_eq!(uuid(&path).unwrap(), None);
        let id = Uuid::new_v4();
        format(&path, FsType::Ext4, Some(id)).unwrap();
        assert_eq!(detect(&path).unwrap().as_deref(), Some("ext4"));
        assert_eq!(uuid(&path).unwrap(), Some(id));
        assert_eq!(ext4_size_bytes(&path).unwrap(), Some(64 << 20));
    }
}
