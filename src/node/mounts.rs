//! Mounts: what is mounted where (from /proc/self/mountinfo), mounting and
//! bind-publishing through mount(8), unmounting, and usage statistics.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{MntFlags, umount2};

use super::{NodeError, blockdev, cmd};

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub major: u64,
    pub minor: u64,
    /// The directory of the source filesystem that is mounted (not `/` for binds).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

/// Usage of the filesystem at a path, in bytes and inodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
    pub total_inodes: u64,
    pub available_inodes: u64,
    pub used_inodes: u64,
}

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Every mount this process sees, in mount order.
pub fn mountinfo() -> Result<Vec<MountEntry>, NodeError> {
    let text = fs::read_to_string(MOUNTINFO).map_err(NodeError::io("read", MOUNTINFO))?;
    Ok(parse_mountinfo(&text))
}

/// Parses mountinfo text; lines that do not have the documented shape are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    // id parent major:minor root mount_point options [optional...] - fstype source super
    let fields: Vec<&str> = line.split(' ').collect();
    let dash = fields.iter().position(|f| *f == "-")?;
    if dash < 6 || fields.len() < dash + 3 {
        return None;
    }
    let (major, minor) = fields[2].split_once(':')?;
    Some(MountEntry {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        root: unescape(fields[3]),
        mount_point: unescape(fields[4]),
        fs_type: fields[dash + 1].to_string(),
        source: unescape(fields[dash + 2]).to_string_lossy().into_owned(),
    })
}

/// Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline,
/// `\134` backslash) in mountinfo paths.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |acc, b| acc * 8 + (b - b'0') as u32);
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The path as the kernel reports mount points: absolute, symlinks resolved.
/// A path that cannot be resolved (gone, or a dead mount) is used as given.
pub fn resolve(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The topmost mount at exactly `path`.
fn mount_at(path: &Path) -> Result<Option<MountEntry>, NodeError> {
    let path = resolve(path);
    Ok(mountinfo()?
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path))
}

/// Whether something is mounted at exactly `path` (not merely under a mount).
pub fn is_mount_point(path: &Path) -> Result<bool, NodeError> {
    Ok(mount_at(path)?.is_some())
}

/// The block device mounted at `target` (for a bind-mounted device node, that
/// device); None when nothing is mounted there or it is not backed by a device.
pub fn mount_source(target: &Path) -> Result<Option<PathBuf>, NodeError> {
    let Some(entry) = mount_at(target)? else {
        return Ok(None);
    };
    if entry.fs_type == "devtmpfs" {
        // A raw block volume: a device node bind-mounted from /dev.
        return Ok(Some(
            Path::new("/dev").join(entry.root.strip_prefix("/").unwrap_or(&entry.root)),
        ));
    }
    if entry.major != 0
        && let Some(name) = blockdev::kernel_name(entry.major, entry.minor)
    {
        return Ok(Some(Path::new("/dev").join(name)));
    }
    Ok(entry
        .source
        .starts_with('/')
        .then(|| PathBuf::from(entry.source)))
}

/// Every mount point of `device`: mounts of its filesystem (and binds of them),
/// and binds of the device node itself (a raw block volume's targets).
pub fn mount_points_of(device: &Path) -> Result<Vec<PathBuf>, NodeError> {
    let Some((major, minor)) = blockdev::dev_number(device)? else {
        return Ok(Vec::new());
    };
    let node = blockdev::kernel_name(major, minor).map(|name| Path::new("/").join(name));
    Ok(mountinfo()?
        .into_iter()
        .filter(|m| {
            (m.major, m.minor) == (major, minor)
                || (m.fs_type == "devtmpfs" && node.as_deref() == Some(m.root.as_path()))
        })
        .map(|m| m.mount_point)
        .collect())
}

/// Mounts `source` on `target` with mount(8), which turns option strings into
/// flags and filesystem data the way every admin expects.
pub fn mount(
    source: &Path,
    target: &Path,
    fstype: Option<&str>,
    options: &[String],
    read_only: bool,
) -> Result<(), NodeError> {
    let args = mount_args(source, target, fstype, options, read_only);
    cmd::run("mount", &args).map(drop)
}

/// mount(8)'s arguments for [`mount`]: options first, then `--`, so that no path
/// is ever read as an option.
fn mount_args(
    source: &Path,
    target: &Path,
    fstype: Option<&str>,
    options: &[String],
    read_only: bool,
) -> Vec<OsString> {
    let mut opts: Vec<&str> = options
        .iter()
        .map(String::as_str)
        .filter(|o| !o.is_empty())
        .collect();
    if read_only {
        opts.push("ro");
    }
    let mut args: Vec<OsString> = Vec::new();
    if let Some(fstype) = fstype {
        args.extend(["-t".into(), fstype.into()]);
    }
    if !opts.is_empty() {
        args.extend(["-o".into(), opts.join(",").into()]);
    }
    args.extend(["--".into(), source.into(), target.into()]);
    args
}

/// Bind-mounts `source` (a directory or a device node) on `target`. A read-only
/// bind needs a second, remount step; if that fails the bind is undone so no
/// writable mount is left behind.
pub fn bind_mount(source: &Path, target: &Path, read_only: bool) -> Result<(), NodeError> {
    cmd::run(
        "mount",
        &[
            "--bind".as_ref(),
            "--".as_ref(),
            source.as_os_str(),
            target.as_os_str(),
        ],
    )?;
    if read_only
        && let Err(err) = cmd::run(
            "mount",
            &[
                "-o".as_ref(),
                "remount,bind,ro".as_ref(),
                "--".as_ref(),
                target.as_os_str(),
            ],
        )
    {
        if let Err(undo) = unmount(target) {
            tracing::warn!(target = %target.display(), error = %undo, "cannot undo a bind mount that failed to become read-only");
        }
        return Err(err);
    }
    Ok(())
}

/// How long an unmount retries while the target is busy.
const BUSY_WAIT: Duration = Duration::from_secs(3);

/// Unmounts `target`, including mounts stacked on it; nothing mounted is fine.
/// A busy target is retried for a moment: a file descriptor can outlive its
/// `close` briefly in a child another thread has just forked (until its exec).
pub fn unmount(target: &Path) -> Result<(), NodeError> {
    let start = Instant::now();
    loop {
        // A repeated publish can stack mounts; each call removes the topmost one.
        if !is_mount_point(target)? {
            return Ok(());
        }
        match umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
            // EINVAL: not a mount point (any more); ENOENT: the target is gone.
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
            Err(Errno::EBUSY) if start.elapsed() < BUSY_WAIT => {
                thread::sleep(Duration::from_millis(50))
            }
            Err(Errno::EBUSY) => {
                return Err(NodeError::MountBusy {
                    target: target.to_path_buf(),
                    waited_ms: BUSY_WAIT.as_millis() as u64,
                });
            }
            Err(e) => return Err(NodeError::io("unmount", target)(e.into())),
        }
    }
}

/// Usage of the filesystem mounted at (or containing) `path`.
pub fn stats(path: &Path) -> Result<Stats, NodeError> {
    let vfs =
        nix::sys::statvfs::statvfs(path).map_err(|e| NodeError::io("statvfs", path)(e.into()))?;
    let frsize = vfs.fragment_size() as u64;
    let blocks = vfs.blocks() as u64;
    let free = vfs.blocks_free() as u64;
    let files = vfs.files() as u64;
    Ok(Stats {
        total_bytes: blocks * frsize,
        available_bytes: vfs.blocks_available() as u64 * frsize,
        used_bytes: blocks.saturating_sub(free) * frsize,
        total_inodes: files,
        available_inodes: vfs.files_available() as u64,
        used_inodes: files.saturating_sub(vfs.files_free() as u64),
    })
}

/// Size in bytes of a raw block volume (statvfs means nothing for a device node).
pub fn block_size_bytes(device: &Path) -> Result<u64, NodeError> {
    blockdev::size_bytes(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 27 7:3 / /var/lib/kubelet/pods/a\\040b/vol rw,relatime shared:5 master:2 - xfs /dev/loop3 rw
91 27 0:6 /loop4 /var/lib/kubelet/plugins/dev rw - devtmpfs devtmpfs rw
garbage line
";

    #[test]
    fn mount_is_told_where_its_options_end() {
        let args = mount_args(
            Path::new("/dev/loop3"),
            Path::new("/var/lib/kubelet/x"),
            Some("ext4"),
            &["noatime".into()],
            true,
        );
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "-t",
                "ext4",
                "-o",
                "noatime,ro",
                "--",
                "/dev/loop3",
                "/var/lib/kubelet/x"
            ]
        );
    }

    #[test]
    fn parses_fields_and_optional_tags() {
        let mounts = parse_mountinfo(SAMPLE);
        assert_eq!(mounts.len(), 4);
        assert_eq!((mounts[1].major, mounts[1].minor), (254, 0));
        assert_eq!(mounts[1].mount_point, Path::new("/"));
        assert_eq!(mounts[2].fs_type, "xfs");
        assert_eq!(mounts[2].source, "/dev/loop3");
        assert_eq!(mounts[3].root, Path::new("/loop4"));
    }

    #[test]
    fn unescapes_octal_sequences() {
        let mounts = parse_mountinfo(SAMPLE);
        assert_eq!(
            mounts[2].mount_point,
            Path::new("/var/lib/kubelet/pods/a b/vol")
        );
        assert_eq!(unescape("a\\011b\\134c\\012"), Path::new("a\tb\\c\n"));
        assert_eq!(unescape("trailing\\04"), Path::new("trailing\\04"));
    }

    #[test]
    fn root_is_a_mount_point_and_a_missing_path_is_not() {
        assert!(is_mount_point(Path::new("/")).unwrap());
        assert!(!is_mount_point(Path::new("/nonexistent/vdrive/target")).unwrap());
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(dir.path()).unwrap());
        unmount(dir.path()).unwrap();
    }

    #[test]
    fn stats_are_consistent() {
        let s = stats(Path::new("/")).unwrap();
        assert!(s.total_bytes > 0);
        assert!(s.used_bytes <= s.total_bytes);
        assert!(s.available_bytes <= s.total_bytes);
        assert!(s.used_inodes <= s.total_inodes);
    }
}
