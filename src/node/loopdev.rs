//! Loop devices over one extent of a drive: the `loop` backend's building block.
//! The kernel's view (sysfs `loop/` attributes) is the source of truth for what is
//! bound; losetup(8) does the binding.

use std::ffi::OsString;
use std::fs::{self, File};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::{NodeError, blockdev, cmd, mounts};

/// A bound loop device as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopInfo {
    pub device: PathBuf,
    /// The backing file or device, as the kernel resolved it when binding.
    pub backing: PathBuf,
    pub offset_bytes: u64,
    /// 0: up to the end of the backing file.
    pub sizelimit_bytes: u64,
    pub direct_io: bool,
}

/// How long a detach may take to finish (the kernel defers it while the device is
/// briefly held open, e.g. by udev's probe).
const DETACH_WAIT: Duration = Duration::from_secs(5);

/// Every bound loop device, by name.
pub fn list() -> Result<Vec<LoopInfo>, NodeError> {
    // A device may be detached while we read it: then it is simply not listed.
    Ok(loop_names()?
        .iter()
        .filter_map(|n| info_by_name(n))
        .collect())
}

/// The bound loop devices over `backing` (canonical). Of the others only the
/// backing file is read: this runs on every DeleteVolume, and a simulated
/// node's drives are loop devices themselves.
fn over(backing: &Path) -> Result<Vec<LoopInfo>, NodeError> {
    Ok(loop_names()?
        .iter()
        .filter(|n| {
            blockdev::attribute(n, "loop/backing_file").is_some_and(|b| Path::new(&b) == backing)
        })
        .filter_map(|n| info_by_name(n))
        .filter(|l| l.backing == backing)
        .collect())
}

/// The names of the bound loop devices, in number order.
fn loop_names() -> Result<Vec<String>, NodeError> {
    let mut names = bound_loop_names().map_or_else(all_loop_names, Ok)?;
    names.sort_by_cached_key(|n| n[4..].parse::<u64>().unwrap_or(u64::MAX));
    Ok(names)
}

fn is_loop_name(name: &str) -> bool {
    name.strip_prefix("loop")
        .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
}

/// The loop devices with a size, from /proc/partitions, which lists only
/// block devices of non-zero capacity: a bound loop device, never an unbound
/// one. A server that ran many containers keeps hundreds of unbound
/// `/sys/block/loopN` nodes, and this runs several times per DeleteVolume,
/// so asking each of them would cost more than the erase. None when the file
/// cannot be read.
fn bound_loop_names() -> Option<Vec<String>> {
    let text = fs::read_to_string("/proc/partitions").ok()?;
    Some(loop_names_in_partitions(&text))
}

/// The loop devices of a /proc/partitions text (`major minor #blocks name`).
fn loop_names_in_partitions(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.split_whitespace().nth(3))
        .filter(|name| is_loop_name(name))
        .map(str::to_string)
        .collect()
}

/// Every loop device node in sysfs, bound or not.
fn all_loop_names() -> Result<Vec<String>, NodeError> {
    let entries = fs::read_dir("/sys/block").map_err(NodeError::io("list", "/sys/block"))?;
    Ok(entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_loop_name(n))
        .collect())
}

fn info_by_name(name: &str) -> Option<LoopInfo> {
    let attr = |a: &str| blockdev::attribute(name, &format!("loop/{a}"));
    Some(LoopInfo {
        device: Path::new("/dev").join(name),
        backing: PathBuf::from(attr("backing_file")?),
        offset_bytes: attr("offset")?.parse().ok()?,
        sizelimit_bytes: attr("sizelimit")?.parse().ok()?,
        direct_io: attr("dio").as_deref() == Some("1"),
    })
}

/// The binding of loop device `device`; None when it is not a bound loop device
/// (or does not exist).
pub fn info(device: &Path) -> Result<Option<LoopInfo>, NodeError> {
    if !device.exists() {
        return Ok(None);
    }
    Ok(blockdev::kernel_name_of(device)?.and_then(|name| info_by_name(&name)))
}

/// The path the kernel will report as the backing file: absolute, symlinks resolved.
fn canonical(backing: &Path) -> Result<PathBuf, NodeError> {
    fs::canonicalize(backing).map_err(NodeError::io("resolve", backing))
}

/// An existing loop device over `backing` at `offset_bytes`: staging the same
/// extent twice reuses it instead of binding a second one.
pub fn find(backing: &Path, offset_bytes: u64) -> Result<Option<PathBuf>, NodeError> {
    let backing = canonical(backing)?;
    Ok(over(&backing)?
        .into_iter()
        .find(|l| l.offset_bytes == offset_bytes)
        .map(|l| l.device))
}

/// A loop device over any byte of `size_bytes` of `backing` from `offset_bytes`.
pub fn covering(
    backing: &Path,
    offset_bytes: u64,
    size_bytes: u64,
) -> Result<Option<PathBuf>, NodeError> {
    let backing = canonical(backing)?;
    let end = offset_bytes.saturating_add(size_bytes);
    Ok(over(&backing)?
        .into_iter()
        .find(|l| {
            let lo_end = match l.sizelimit_bytes {
                0 => u64::MAX,
                limit => l.offset_bytes.saturating_add(limit),
            };
            l.offset_bytes < end && offset_bytes < lo_end
        })
        .map(|l| l.device))
}

/// losetup's arguments to bind `backing`: options, then `--` before the path.
fn attach_args(backing: &Path, offset_bytes: u64, size_bytes: u64, dio: bool) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--find".into(),
        "--show".into(),
        "--offset".into(),
        offset_bytes.to_string().into(),
        "--sizelimit".into(),
        size_bytes.to_string().into(),
    ];
    if dio {
        args.push("--direct-io=on".into());
    }
    args.extend(["--".into(), backing.into()]);
    args
}

/// losetup's argument to detach `device`. losetup takes --detach's device as the
/// option's own argument (`--detach -- X` would detach a device named "--"):
/// joined to it with `=`, the path is never read as an option.
fn detach_arg(device: &Path) -> OsString {
    let mut arg = OsString::from("--detach=");
    arg.push(device.as_os_str());
    arg
}

/// Binds a new loop device to `size_bytes` of `backing` (a file or block device,
/// itself possibly a loop device) starting at `offset_bytes`, with direct I/O so
/// data is not cached twice. Direct I/O needs the offset aligned to the backing's
/// logical block size and a backing filesystem that supports it; without it the
/// device runs buffered, with a warning. `size_bytes` 0 means up to the end.
/// The device is checked to have exactly the size asked for (an extent past the
/// end of its drive is refused, not silently cut short).
pub fn attach(backing: &Path, offset_bytes: u64, size_bytes: u64) -> Result<PathBuf, NodeError> {
    let backing = canonical(backing)?;
    let args = |dio: bool| attach_args(&backing, offset_bytes, size_bytes, dio);
    let before = over(&backing)?;
    let device = match cmd::run("losetup", &args(true)) {
        Ok(out) => out,
        Err(err) => {
            // Kernels or losetups that fail outright when direct I/O is refused may
            // leave the device bound: release it, then bind buffered.
            tracing::warn!(backing = %backing.display(), error = %err, "losetup with direct I/O failed; retrying buffered");
            for stray in over(&backing)? {
                if stray.backing == backing
                    && stray.offset_bytes == offset_bytes
                    && !before.contains(&stray)
                {
                    detach(&stray.device)?;
                }
            }
            cmd::run("losetup", &args(false))?
        }
    };
    let device = PathBuf::from(device.trim());
    if device.as_os_str().is_empty() {
        return Err(NodeError::Output {
            command: cmd::display("losetup", &args(true)),
            reason: "no device name printed".into(),
        });
    }
    if let Err(err) = check_attached(&device, &backing, offset_bytes, size_bytes) {
        if let Err(undo) = detach(&device) {
            tracing::warn!(device = %device.display(), error = %undo, "cannot detach a loop device that failed its checks");
        }
        return Err(err);
    }
    Ok(device)
}

fn check_attached(
    device: &Path,
    backing: &Path,
    offset_bytes: u64,
    size_bytes: u64,
) -> Result<(), NodeError> {
    let info = info(device)?.ok_or_else(|| NodeError::NotLoop {
        device: device.to_path_buf(),
    })?;
    if !info.direct_io {
        // This kernel (6.x) clears the flag silently instead of failing the bind.
        tracing::warn!(device = %device.display(), backing = %backing.display(), "direct I/O refused by the backing store; loop device runs buffered");
    }
    let actual_bytes = blockdev::size_bytes(device)?;
    if size_bytes != 0 && actual_bytes != size_bytes {
        return Err(NodeError::SizeMismatch {
            device: device.to_path_buf(),
            backing: backing.to_path_buf(),
            offset_bytes,
            wanted_bytes: size_bytes,
            actual_bytes,
        });
    }
    Ok(())
}

/// Asks the kernel to unbind `device` once nobody holds it open (at once when
/// nobody does), without waiting: for a device whose holder vdrive does not
/// control.
pub fn detach_when_free(device: &Path) -> Result<(), NodeError> {
    cmd::run("losetup", &[detach_arg(device)]).map(|_| ())
}

/// Unbinds a loop device and waits until the kernel has let go of it. A device
/// that is already gone or unbound is fine; a mounted one is refused (the kernel
/// would only defer the detach until the unmount).
pub fn detach(device: &Path) -> Result<(), NodeError> {
    if info(device)?.is_none() {
        return Ok(());
    }
    if let Some((major, minor)) = blockdev::dev_number(device)?
        && let Some(m) = mounts::mountinfo()?
            .into_iter()
            .find(|m| (m.major, m.minor) == (major, minor))
    {
        return Err(NodeError::Busy {
            device: device.to_path_buf(),
            mount_point: m.mount_point,
        });
    }
    let result = cmd::run("losetup", &[detach_arg(device)]);
    let start = Instant::now();
    while info(device)?.is_some() {
        if start.elapsed() >= DETACH_WAIT {
            result?;
            return Err(NodeError::DetachStuck {
                device: device.to_path_buf(),
                waited_ms: DETACH_WAIT.as_millis() as u64,
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
    // Gone: whatever losetup said (e.g. it raced with another detach) does not matter.
    Ok(())
}

/// Size of the device in bytes.
pub fn size_bytes(device: &Path) -> Result<u64, NodeError> {
    blockdev::size_bytes(device)
}

/// `struct loop_info64` from <linux/loop.h> (libc does not define it).
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

// The loop ioctls predate _IOC encoding: their numbers are plain constants.
nix::ioctl_write_ptr_bad!(loop_set_status64, 0x4C04, LoopInfo64);
nix::ioctl_read_bad!(loop_get_status64, 0x4C05, LoopInfo64);

/// Grows a bound loop device to `size_bytes` online (mounted or not) by raising its
/// size limit, then checks the kernel's new size. Shrinking is refused: it would
/// cut the filesystem on top.
pub fn set_size(device: &Path, size_bytes: u64) -> Result<(), NodeError> {
    let Some(bound) = info(device)? else {
        return Err(NodeError::NotLoop {
            device: device.to_path_buf(),
        });
    };
    let current_bytes = blockdev::size_bytes(device)?;
    if size_bytes == current_bytes {
        return Ok(());
    }
    if size_bytes < current_bytes {
        return Err(NodeError::WouldShrink {
            device: device.to_path_buf(),
            current_bytes,
            wanted_bytes: size_bytes,
        });
    }
    let file = File::open(device).map_err(NodeError::io("open", device))?;
    let ioctl_err = |op| {
        move |source| NodeError::Ioctl {
            op,
            device: device.to_path_buf(),
            source,
        }
    };
    // SAFETY: LoopInfo64 is plain old data; all-zero is a valid value.
    let mut status: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open and `status` has the kernel's loop_info64 layout.
    unsafe { loop_get_status64(file.as_raw_fd(), &mut status) }
        .map_err(ioctl_err("LOOP_GET_STATUS64"))?;
    let previous = status.lo_sizelimit;
    status.lo_sizelimit = size_bytes;
    // Passing back what GET returned keeps offset and flags as they are; the kernel
    // resizes the device when the size limit changes.
    // SAFETY: as above; the kernel only reads `status`.
    unsafe { loop_set_status64(file.as_raw_fd(), &status) }
        .map_err(ioctl_err("LOOP_SET_STATUS64"))?;
    let actual_bytes = blockdev::size_bytes(device)?;
    if actual_bytes != size_bytes {
        // The backing store has less room than asked for: put the old limit back
        // rather than leave a device of an unplanned size.
        status.lo_sizelimit = previous;
        // SAFETY: as above.
        if let Err(e) = unsafe { loop_set_status64(file.as_raw_fd(), &status) } {
            tracing::warn!(device = %device.display(), error = %e, "cannot restore the previous loop size limit");
        }
        return Err(NodeError::SizeMismatch {
            device: device.to_path_buf(),
            backing: bound.backing,
            offset_bytes: bound.offset_bytes,
            wanted_bytes: size_bytes,
            actual_bytes,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_partitions_names_the_loop_devices_it_lists() {
        let text = "major minor  #blocks  name\n\n 252        0  264241152 vda\n 252        1  264240111 vda1\n   7        0   67109888 loop0\n   7       12    1048576 loop12\n 259        0    1000000 nvme0n1\n   7       13    1048576 loopback\n";
        assert_eq!(loop_names_in_partitions(text), ["loop0", "loop12"]);
    }

    #[test]
    fn a_bound_loop_device_is_listed() {
        if !Path::new("/dev/loop-control").exists() || !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root and loop devices");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("drive.img");
        fs::File::create(&image).unwrap().set_len(16 << 20).unwrap();
        let device = attach(&image, 1 << 20, 4 << 20).unwrap();
        let listed = list();
        let from_partitions = bound_loop_names();
        detach(&device).unwrap();
        let name = device.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            from_partitions.unwrap().contains(&name),
            "{name} is in /proc/partitions"
        );
        let info = listed
            .unwrap()
            .into_iter()
            .find(|l| l.device == device)
            .expect("the bound device is listed");
        assert_eq!(info.backing, image.canonicalize().unwrap());
        assert_eq!(
            (info.offset_bytes, info.sizelimit_bytes),
            (1 << 20, 4 << 20)
        );
    }

    #[test]
    fn paths_are_never_read_as_options() {
        let backing = Path::new("/-drive.img");
        let args = attach_args(backing, 1 << 20, 1 << 30, true);
        let tail: [OsString; 2] = ["--".into(), backing.into()];
        assert_eq!(args[args.len() - 2..], tail);
        assert_eq!(
            detach_arg(Path::new("/dev/loop7")),
            OsString::from("--detach=/dev/loop7")
        );
    }

    #[test]
    fn loop_info64_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
    }

    #[test]
    fn a_path_that_is_not_a_loop_device_has_no_info() {
        assert_eq!(info(Path::new("/nonexistent/loop9")).unwrap(), None);
        assert_eq!(info(Path::new("/proc/self/mountinfo")).unwrap(), None);
        detach(Path::new("/nonexistent/loop9")).unwrap();
    }
}
