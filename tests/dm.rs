//! Device-mapper linear devices against a real kernel: creating, reading back
//! through the underlying ranges, growing online, refusing to remove an open
//! device, and leaving nothing behind when creation fails. Needs root, loop
//! devices and device-mapper, so every test is ignored unless run inside the VM
//! test bed. Every device a test makes is owned by a guard whose Drop removes it,
//! so a failing test leaks nothing.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use vdrive::node::dm::{self, Linear};
use vdrive::node::{NodeError, blockdev, loopdev};

const MIB: u64 = 1 << 20;
const SECTORS_PER_MIB: u64 = MIB / 512;
/// The size of the file behind the test's loop device.
const BACKING_MIB: u64 = 64;

/// Detaches a loop device on drop. Declared before the dm devices on it, so it
/// drops after them.
struct Loop {
    device: PathBuf,
    major: u64,
    minor: u64,
    backing: PathBuf,
    _dir: TempDir,
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Err(e) = loopdev::detach(&self.device) {
            eprintln!("cleanup: cannot detach {}: {e}", self.device.display());
        }
    }
}

/// Removes a dm device on drop.
struct Dm(String);

impl Drop for Dm {
    fn drop(&mut self) {
        if let Err(e) = dm::remove(&self.0) {
            eprintln!("cleanup: cannot remove dm device {}: {e}", self.0);
        }
    }
}

/// Puts a renamed file back on drop.
struct Renamed {
    from: PathBuf,
    to: PathBuf,
}

impl Drop for Renamed {
    fn drop(&mut self) {
        if let Err(e) = fs::rename(&self.to, &self.from) {
            eprintln!("cleanup: cannot rename {} back: {e}", self.to.display());
        }
    }
}

fn require_dm() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root: run them inside the VM test bed (tests/vm/run)"
    );
    assert!(
        dm::available(),
        "device-mapper is not available (no /dev/mapper/control or dm-mod): \
         run inside the VM test bed (tests/vm/run)"
    );
}

/// A name no other test (or earlier run) uses.
fn name(tag: &str) -> String {
    format!("vdrive-dmtest-{}-{tag}", std::process::id())
}

/// A loop device over a sparse file of BACKING_MIB.
fn backing() -> Loop {
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing.img");
    File::create(&backing)
        .unwrap()
        .set_len(BACKING_MIB * MIB)
        .unwrap();
    let device = loopdev::attach(&backing, 0, 0).unwrap();
    let (major, minor) = blockdev::dev_number(&device).unwrap().unwrap();
    Loop {
        device,
        major,
        minor,
        backing,
        _dir: dir,
    }
}

/// `mib` MiB of `lo` starting `at_mib` MiB into it.
fn range(lo: &Loop, at_mib: u64, mib: u64) -> Linear {
    Linear {
        major: lo.major,
        minor: lo.minor,
        start_sector: at_mib * SECTORS_PER_MIB,
        sectors: mib * SECTORS_PER_MIB,
    }
}

fn create(name: &str, table: &[Linear]) -> (Dm, PathBuf) {
    let path = dm::create_linear(name, &format!("TEST-{name}"), table).unwrap();
    (Dm(name.to_string()), path)
}

/// Bytes that differ in every sector and between calls with different `seed`s.
fn pattern(seed: u64, len: u64) -> Vec<u8> {
    (0..len / 8)
        .flat_map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed).to_le_bytes())
        .collect()
}

fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(data, offset).unwrap();
    file.sync_all().unwrap();
}

fn read_at(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    let mut file = File::open(path).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    let mut data = vec![0u8; len as usize];
    file.read_exact(&mut data).unwrap();
    data
}

/// The device's size in sectors as sysfs reports it.
fn sysfs_sectors(major: u64, minor: u64) -> u64 {
    fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/size"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn listed(name: &str) -> bool {
    dm::list().unwrap().iter().any(|(n, _, _)| n == name)
}

/// A block major no driver has registered here (from the experimental range).
fn unused_major() -> u64 {
    let devices = fs::read_to_string("/proc/devices").unwrap();
    let block = devices
        .split("Block devices:")
        .nth(1)
        .expect("/proc/devices lists block devices");
    let used: Vec<u64> = block
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    (240..=254)
        .find(|m| !used.contains(m))
        .expect("a free block major in 240..=254")
}

#[test]
#[ignore = "needs device-mapper: run inside the VM test bed (tests/vm/run)"]
fn a_linear_device_joins_two_ranges() {
    require_dm();
    let lo = backing();
    let name = name("join");
    // 2 MiB at 1 MiB, then 1 MiB at 20 MiB.
    let table = [range(&lo, 1, 2), range(&lo, 20, 1)];
    let (guard, path) = create(&name, &table);

    let meta = fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_block_device(), "{}", path.display());
    let info = dm::info(&name).unwrap().expect("the device exists");
    assert_eq!(
        (
            nix::sys::stat::major(meta.rdev()),
            nix::sys::stat::minor(meta.rdev())
        ),
        (info.major, info.minor)
    );
    assert_eq!(info.name, name);
    assert_eq!(info.uuid, format!("TEST-{name}"));
    assert!(info.live_table && !info.suspended, "{info:?}");
    assert_eq!(info.open_count, 0);
    assert!(listed(&name));
    assert!(
        dm::list()
            .unwrap()
            .contains(&(name.clone(), info.major, info.minor))
    );
    assert_eq!(dm::table(&name).unwrap(), Some(table.to_vec()));
    assert_eq!(blockdev::size_bytes(&path).unwrap(), 3 * MIB);
    assert_eq!(sysfs_sectors(info.major, info.minor), 3 * SECTORS_PER_MIB);

    // What goes in through the dm device lands in the two ranges, in order, and
    // nowhere else.
    let data = pattern(1, 3 * MIB);
    write_at(&path, 0, &data);
    assert_eq!(read_at(&lo.backing, MIB, 2 * MIB), data[..2 * MIB as usize]);
    assert_eq!(
        read_at(&lo.backing, 20 * MIB, MIB),
        data[2 * MIB as usize..]
    );
    assert!(read_at(&lo.backing, 0, MIB).iter().all(|&b| b == 0));
    assert!(
        read_at(&lo.backing, 3 * MIB, 17 * MIB)
            .iter()
            .all(|&b| b == 0)
    );
    assert!(read_at(&lo.backing, 21 * MIB, MIB).iter().all(|&b| b == 0));
    // And reads through it see the ranges.
    assert_eq!(read_at(&path, 0, 3 * MIB), data);

    assert!(dm::remove(&name).unwrap());
    drop(guard);
    assert_eq!(dm::info(&name).unwrap(), None);
    assert_eq!(dm::table(&name).unwrap(), None);
    assert!(!listed(&name));
    assert!(!path.exists(), "{} is still there", path.display());
    assert!(!dm::remove(&name).unwrap(), "a second remove finds nothing");
}

#[test]
#[ignore = "needs device-mapper: run inside the VM test bed (tests/vm/run)"]
fn reload_grows_a_device_online() {
    require_dm();
    let lo = backing();
    let name = name("grow");
    let first = range(&lo, 1, 1);
    let (_guard, path) = create(&name, &[first]);
    let info = dm::info(&name).unwrap().unwrap();
    // A holder stays open across the reloads, as a mounted filesystem would.
    let holder = File::open(&path).unwrap();
    let data = pattern(2, MIB);
    write_at(&path, 0, &data);

    // Appending a segment.
    let grown = [first, range(&lo, 20, 1)];
    dm::reload_linear(&name, &grown).unwrap();
    assert_eq!(dm::table(&name).unwrap(), Some(grown.to_vec()));
    assert_eq!(blockdev::size_bytes(&path).unwrap(), 2 * MIB);
    assert_eq!(sysfs_sectors(info.major, info.minor), 2 * SECTORS_PER_MIB);
    let now = dm::info(&name).unwrap().unwrap();
    assert!(
        !now.suspended && now.live_table && now.open_count >= 1,
        "{now:?}"
    );
    let mut old = vec![0u8; MIB as usize];
    holder.read_exact_at(&mut old, 0).unwrap();
    assert_eq!(old, data, "the mapped sectors kept their data");
    let more = pattern(3, MIB);
    write_at(&path, MIB, &more);
    assert_eq!(read_at(&lo.backing, 20 * MIB, MIB), more);

    // The same table again changes nothing.
    dm::reload_linear(&name, &grown).unwrap();

    // Lengthening the last segment.
    let longer = [first, range(&lo, 20, 2)];
    dm::reload_linear(&name, &longer).unwrap();
    assert_eq!(blockdev::size_bytes(&path).unwrap(), 3 * MIB);

    // Refused: shrinking, moving mapped sectors, a segment on no device. The live
    // table stays, resumed.
    let shrink = dm::reload_linear(&name, &grown).unwrap_err();
    assert!(matches!(shrink, NodeError::WouldShrink { .. }), "{shrink}");
    let moved = dm::reload_linear(&name, &[range(&lo, 2, 1), range(&lo, 20, 2)]).unwrap_err();
    assert!(matches!(moved, NodeError::DmInvalid { .. }), "{moved}");
    let nowhere = Linear {
        major: unused_major(),
        minor: 0,
        start_sector: 0,
        sectors: SECTORS_PER_MIB,
    };
    let missing = [first, range(&lo, 20, 2), nowhere];
    let err = dm::reload_linear(&name, &missing).unwrap_err();
    eprintln!("expected: {err}");
    let past_end = [first, range(&lo, 20, 2), range(&lo, BACKING_MIB - 1, 2)];
    let err = dm::reload_linear(&name, &past_end).unwrap_err();
    eprintln!("expected: {err}");
    assert_eq!(dm::table(&name).unwrap(), Some(longer.to_vec()));
    let now = dm::info(&name).unwrap().unwrap();
    assert!(!now.suspended && now.live_table, "{now:?}");
    assert_eq!(blockdev::size_bytes(&path).unwrap(), 3 * MIB);

    // No failed table lingers as the inactive one: the next grow is what goes live.
    let last = [first, range(&lo, 20, 2), range(&lo, 30, 1)];
    dm::reload_linear(&name, &last).unwrap();
    assert_eq!(dm::table(&name).unwrap(), Some(last.to_vec()));
    assert_eq!(blockdev::size_bytes(&path).unwrap(), 4 * MIB);
    holder.read_exact_at(&mut old, 0).unwrap();
    assert_eq!(old, data);
}

#[test]
#[ignore = "needs device-mapper: run inside the VM test bed (tests/vm/run)"]
fn an_open_device_is_not_removed() {
    require_dm();
    let lo = backing();
    let name = name("busy");
    let (_guard, path) = create(&name, &[range(&lo, 0, 1)]);
    let holder = File::open(&path).unwrap();

    let start = Instant::now();
    let err = dm::remove(&name).unwrap_err();
    match &err {
        NodeError::DmBusy {
            name: busy,
            open_count,
            ..
        } => {
            assert_eq!(busy, &name);
            assert!(*open_count >= 1, "{err}");
        }
        other => panic!("expected DmBusy, got {other}"),
    }
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "retried first"
    );
    let info = dm::info(&name).unwrap().expect("still there");
    assert!(!info.suspended && info.live_table, "{info:?}");
    assert_eq!(dm::table(&name).unwrap(), Some(vec![range(&lo, 0, 1)]));

    drop(holder);
    assert!(dm::remove(&name).unwrap());
    assert_eq!(dm::info(&name).unwrap(), None);
}

#[test]
#[ignore = "needs device-mapper: run inside the VM test bed (tests/vm/run)"]
fn a_failed_create_leaves_nothing_behind() {
    require_dm();
    let lo = backing();
    let nowhere = Linear {
        major: unused_major(),
        minor: 0,
        start_sector: 0,
        sectors: SECTORS_PER_MIB,
    };
    let cases = [
        ("nodev", vec![range(&lo, 0, 1), nowhere]),
        (
            "pastend",
            vec![range(&lo, 0, 1), range(&lo, BACKING_MIB - 1, 2)],
        ),
    ];
    for (tag, table) in cases {
        let name = name(tag);
        let _guard = Dm(name.clone());
        let err = dm::create_linear(&name, "", &table).unwrap_err();
        eprintln!("expected: {err}");
        assert_eq!(dm::info(&name).unwrap(), None, "{tag}");
        assert!(!listed(&name), "{tag}");
        assert!(!Path::new("/dev/mapper").join(&name).exists(), "{tag}");
    }

    // A name in use: the create fails and the existing device is untouched.
    let name = name("taken");
    let table = [range(&lo, 0, 1)];
    let (_guard, _path) = create(&name, &table);
    let before = dm::info(&name).unwrap().unwrap();
    let err = dm::create_linear(&name, "TEST-other", &[range(&lo, 4, 1)]).unwrap_err();
    eprintln!("expected: {err}");
    assert_eq!(dm::info(&name).unwrap(), Some(before));
    assert_eq!(dm::table(&name).unwrap(), Some(table.to_vec()));
}

#[test]
#[ignore = "needs device-mapper: run inside the VM test bed (tests/vm/run)"]
fn without_a_kernel_node_a_mapper_node_is_made_and_removed() {
    require_dm();
    let lo = backing();
    let name = name("mknod");
    let (guard, kernel_node) = create(&name, &[range(&lo, 0, 2)]);
    let info = dm::info(&name).unwrap().unwrap();
    assert!(kernel_node.starts_with("/dev"));

    // As if devtmpfs were not there: hide the kernel's node, and leave a stale
    // node of another device where ours will go.
    let hidden = kernel_node.with_extension("hidden");
    fs::rename(&kernel_node, &hidden).unwrap();
    let renamed = Renamed {
        from: kernel_node.clone(),
        to: hidden,
    };
    let mapper = Path::new("/dev/mapper").join(&name);
    nix::sys::stat::mknod(
        &mapper,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();

    let path = dm::device_path(info.major, info.minor, &name).unwrap();
    assert_eq!(path, mapper);
    let meta = fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_block_device());
    assert_eq!(meta.rdev(), nix::sys::stat::makedev(info.major, info.minor));
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(blockdev::size_bytes(&path).unwrap(), 2 * MIB);
    let data = pattern(4, MIB);
    write_at(&path, MIB, &data);
    assert_eq!(read_at(&lo.backing, MIB, MIB), data);
    // Asked again, the node is reused.
    assert_eq!(
        dm::device_path(info.major, info.minor, &name).unwrap(),
        mapper
    );

    drop(renamed);
    assert!(dm::remove(&name).unwrap());
    drop(guard);
    assert!(
        !mapper.exists(),
        "the node made for the device went with it"
    );
}

#[test]
#[ignore = "needs device-mapper: run inside the VM test bed (tests/vm/run)"]
fn the_kernel_speaks_version_4() {
    require_dm();
    let (major, minor, _) = dm::version().unwrap();
    assert_eq!(major, 4);
    assert!(minor >= 1, "4.{minor}");
    assert_eq!(dm::info(&name("absent")).unwrap(), None);
    assert_eq!(dm::table(&name("absent")).unwrap(), None);
}

#[test]
fn invalid_input_never_reaches_the_kernel() {
    // Runs everywhere, with or without device-mapper.
    let err = dm::create_linear("a/b", "", &[]).unwrap_err();
    assert!(err.to_string().contains("a/b"), "{err}");
    let err = dm::reload_linear("vdrive-ok", &[]).unwrap_err();
    assert!(matches!(err, NodeError::DmInvalid { .. }), "{err}");
}
