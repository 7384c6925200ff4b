//! Facts about block devices, from the kernel: size, device number, the disk a
//! partition belongs to, and what is stacked on or under a device (sysfs).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::NodeError;

// BLKGETSIZE64 = _IOR(0x12, 114, size_t): the device size in bytes.
nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);

// BLKDISCARD = _IO(0x12, 119), BLKZEROOUT = _IO(0x12, 127): take {start, length}.
nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);
nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);

/// Zeroes `len` bytes at `offset` of the open block device with the device's
/// write-zeroes offload (NVMe Write Zeroes, or a hole punched under a loop
/// device). Ok(false) when the device has no offload: the kernel would fall back
/// to writing every zero itself, which for a large extent takes hours.
pub fn zero_out(file: &File, path: &Path, offset: u64, len: u64) -> Result<bool, NodeError> {
    let Some(name) = kernel_name_of(path)? else {
        return Ok(false);
    };
    let offload = attribute(&name, "queue/write_zeroes_max_bytes");
    if offload.is_none_or(|max| max == "0") {
        return Ok(false);
    }
    // First ask for zeroes that may also be unmapped (fallocate PUNCH_HOLE on the
    // block device): reads return zeros all the same, and under a loop device the
    // backing file's space is freed instead of allocated, as BLKZEROOUT (which
    // forbids unmapping) would do.
    let punch = nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
        | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
    if let (Ok(at), Ok(length)) = (i64::try_from(offset), i64::try_from(len))
        && nix::fcntl::fallocate(file, punch, at, length).is_ok()
    {
        return Ok(true);
    }
    zero_out_by_kernel(file, path, offset, len)?;
    Ok(true)
}

/// Zeroes the range with BLKZEROOUT whether or not the device has an offload:
/// without one the kernel writes the zeros itself (slow, but never skipped, and
/// without filling the page cache).
pub fn zero_out_by_kernel(
    file: &File,
    path: &Path,
    offset: u64,
    len: u64,
) -> Result<(), NodeError> {
    let range = [offset, len];
    // SAFETY: the fd is open; the kernel reads two u64s from `range`.
    unsafe { blkzeroout(file.as_raw_fd(), &range) }.map_err(|source| NodeError::Ioctl {
        op: "BLKZEROOUT",
        device: path.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// Discards `len` bytes at `offset` of the open block device: frees the flash
/// behind it. Whether later reads return zeros is up to the device (see
/// `nvme::deallocate_reads_zeroes`).
pub fn discard(file: &File, path: &Path, offset: u64, len: u64) -> Result<(), NodeError> {
    let range = [offset, len];
    // SAFETY: the fd is open; the kernel reads two u64s from `range`.
    unsafe { blkdiscard(file.as_raw_fd(), &range) }.map_err(|source| NodeError::Ioctl {
        op: "BLKDISCARD",
        device: path.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// Size in bytes: of the device for a block device, of the file otherwise.
pub fn size_bytes(path: &Path) -> Result<u64, NodeError> {
    let file = File::open(path).map_err(NodeError::io("open", path))?;
    let meta = file.metadata().map_err(NodeError::io("stat", path))?;
    if !meta.file_type().is_block_device() {
        return Ok(meta.len());
    }
    let mut size = 0u64;
    // SAFETY: the fd is open for the duration of the call and `size` is a valid u64
    // the kernel writes into.
    unsafe { blkgetsize64(file.as_raw_fd(), &mut size) }.map_err(|source| NodeError::Ioctl {
        op: "BLKGETSIZE64",
        device: path.to_path_buf(),
        source,
    })?;
    Ok(size)
}

pub fn is_block_device(path: &Path) -> Result<bool, NodeError> {
    let meta = fs::metadata(path).map_err(NodeError::io("stat", path))?;
    Ok(meta.file_type().is_block_device())
}

/// `(major, minor)` of a block device node, None for anything else.
pub fn dev_number(path: &Path) -> Result<Option<(u64, u64)>, NodeError> {
    let meta = fs::metadata(path).map_err(NodeError::io("stat", path))?;
    if !meta.file_type().is_block_device() {
        return Ok(None);
    }
    let rdev = meta.rdev();
    Ok(Some((libc::major(rdev) as u64, libc::minor(rdev) as u64)))
}

/// The kernel's name (`nvme0n1`, `loop3`, `vda1`) of device `major:minor`.
pub fn kernel_name(major: u64, minor: u64) -> Option<String> {
    Sysfs::host().kernel_name(major, minor)
}

/// The kernel's name of the block device node at `path`.
pub fn kernel_name_of(path: &Path) -> Result<Option<String>, NodeError> {
    Ok(dev_number(path)?.and_then(|(major, minor)| kernel_name(major, minor)))
}

/// The disk `name` is a partition of, or `name` itself when it is a whole disk.
pub fn whole_disk(name: &str) -> String {
    Sysfs::host().whole_disk(name)
}

/// The partitions the kernel knows on disk `name`.
pub fn partitions(name: &str) -> Vec<String> {
    Sysfs::host().partitions(name)
}

/// Devices stacked on `name` (device-mapper, md, bcache...).
pub fn holders(name: &str) -> Vec<String> {
    Sysfs::host().holders(name)
}

/// The whole disks that device `name` ultimately lives on: itself (or its disk) for a
/// plain device or partition, the disks under its `slaves/` for dm and md devices.
pub fn disks_under(name: &str) -> BTreeSet<String> {
    Sysfs::host().disks_under(name)
}

/// A sysfs attribute of device `name`, trimmed; None when absent or empty.
pub fn attribute(name: &str, attr: &str) -> Option<String> {
    Sysfs::host().attribute(name, attr)
}

/// The kernel's block-device tree in sysfs under a root: `/sys` on a machine, or a
/// directory shaped the same way (plain files, directories and the `class/block`
/// and `dev/block` symlinks) so tests can describe any machine.
///
/// The layout read: `block/<disk>` for every whole block device (with its
/// partitions as subdirectories holding a `partition` file), `class/block/<name>`
/// for every device and partition, `dev/block/<major>:<minor>` naming a device by
/// number, and `holders/`, `slaves/` listing what is stacked on or under a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysfs {
    root: PathBuf,
}

impl Sysfs {
    /// The running kernel's sysfs.
    pub fn host() -> Self {
        Sysfs::at("/sys")
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        Sysfs { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join("class/block").join(name)
    }

    /// Whether the kernel knows a block device or partition called `name`.
    pub fn exists(&self, name: &str) -> bool {
        // A name from a file or mount table could hold `/` or `..`; it must not
        // reach outside class/block.
        !name.is_empty() && !name.contains('/') && name != ".." && self.dir(name).exists()
    }

    /// Every whole block device (`/sys/block`), sorted by name; empty when sysfs
    /// cannot be listed.
    pub fn block_devices(&self) -> Vec<String> {
        dir_names(&self.root.join("block"))
    }

    /// A sysfs attribute of device `name`, trimmed; None when absent or empty.
    pub fn attribute(&self, name: &str, attr: &str) -> Option<String> {
        let value = read_attribute(&self.dir(name).join(attr))?;
        let value = value.trim();
        (!value.is_empty()).then(|| value.to_string())
    }

    /// An attribute that is a whole number; None when absent or not a number.
    pub fn number(&self, name: &str, attr: &str) -> Option<u64> {
        self.attribute(name, attr)?.parse().ok()
    }

    /// The kernel's name of device `major:minor`.
    pub fn kernel_name(&self, major: u64, minor: u64) -> Option<String> {
        let link = fs::read_link(self.root.join(format!("dev/block/{major}:{minor}"))).ok()?;
        Some(link.file_name()?.to_string_lossy().into_owned())
    }

    /// The disk `name` is a partition of, or `name` itself when it is a whole disk.
    pub fn whole_disk(&self, name: &str) -> String {
        if !self.dir(name).join("partition").exists() {
            return name.to_string();
        }
        // class/block/vda1 -> .../block/vda/vda1: the parent directory is the disk.
        fs::canonicalize(self.dir(name))
            .ok()
            .and_then(|dir| Some(dir.parent()?.file_name()?.to_string_lossy().into_owned()))
            .unwrap_or_else(|| name.to_string())
    }

    /// The partitions the kernel knows on disk `name`.
    pub fn partitions(&self, name: &str) -> Vec<String> {
        dir_names(&self.dir(name))
            .into_iter()
            .filter(|part| self.dir(name).join(part).join("partition").exists())
            .collect()
    }

    /// Devices stacked on `name` (device-mapper, md, bcache...).
    pub fn holders(&self, name: &str) -> Vec<String> {
        dir_names(&self.dir(name).join("holders"))
    }

    /// Devices `name` is stacked on (for dm and md devices).
    pub fn slaves(&self, name: &str) -> Vec<String> {
        dir_names(&self.dir(name).join("slaves"))
    }

    /// The whole disks that device `name` ultimately lives on: itself (or its disk)
    /// for a plain device or partition, the disks under its `slaves/` for dm and md.
    pub fn disks_under(&self, name: &str) -> BTreeSet<String> {
        let mut disks = BTreeSet::new();
        let mut todo = vec![name.to_string()];
        let mut seen = BTreeSet::new();
        while let Some(dev) = todo.pop() {
            if !seen.insert(dev.clone()) {
                continue;
            }
            let slaves = self.slaves(&dev);
            if slaves.is_empty() {
                disks.insert(self.whole_disk(&dev));
            } else {
                todo.extend(slaves);
            }
        }
        disks
    }

    /// Every device from `name` down to the disks it lives on, each as its whole
    /// disk: `dm-2` over `dm-1` over `sdb1` gives {dm-2, dm-1, sdb}.
    pub fn stack_under(&self, name: &str) -> BTreeSet<String> {
        let mut stack = BTreeSet::new();
        let mut todo = vec![name.to_string()];
        while let Some(dev) = todo.pop() {
            if stack.insert(self.whole_disk(&dev)) {
                todo.extend(self.slaves(&dev));
            }
        }
        stack
    }
}

/// A sysfs attribute's text. The kernel hands an attribute over in one read of
/// at most a page, so one read into a page-sized buffer is the whole of it;
/// only a buffer filled to the brim is read on. Cheaper than `read_to_string`
/// (no stat, no second read), which counts: DeleteVolume reads the backing
/// file of every loop device on the machine.
fn read_attribute(path: &Path) -> Option<String> {
    const PAGE: usize = 4096;
    let mut file = File::open(path).ok()?;
    let mut buf = vec![0u8; PAGE];
    let len = file.read(&mut buf).ok()?;
    buf.truncate(len);
    if len == PAGE {
        file.read_to_end(&mut buf).ok()?;
    }
    String::from_utf8(buf).ok()
}

fn dir_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_of_a_regular_file_is_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        File::create(&path).unwrap().set_len(12345).unwrap();
        assert_eq!(size_bytes(&path).unwrap(), 12345);
        assert!(!is_block_device(&path).unwrap());
        assert_eq!(dev_number(&path).unwrap(), None);
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = size_bytes(Path::new("/nonexistent/vdrive")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vdrive"), "{err}");
    }
}
