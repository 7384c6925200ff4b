//! The CSI driver end to end: every test starts the real `vdrive all-in-one` on
//! simulated drives (sparse files on loop devices) in its own temp dir, with its
//! own node id, and talks CSI to it over its unix socket with the crate's client.
//!
//! Needs root and /dev/loop-control; without them every test is skipped (with a
//! message). The `Driver` fixture (tests/support/driver.rs) owns the process and
//! everything it makes, and cleans it up also when a test fails halfway.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tonic::Code;

mod support;

use support::devices::{mounts_under, volume_devices};
use support::driver::*;
use vdrive::csi::proto::volume_capability;
use vdrive::csi::proto::{
    CapacityRange, CreateVolumeRequest, GetPluginInfoRequest, ListVolumesRequest,
    NodeExpandVolumeRequest, NodeGetInfoRequest, NodeGetVolumeStatsRequest,
    NodePublishVolumeRequest, NodeStageVolumeRequest, ProbeRequest, Topology, TopologyRequirement,
    Volume, VolumeCapability, volume_usage,
};

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn ext4_volume_lives_through_its_whole_lifecycle() {
    let Some(driver) = Driver::start("lifecycle", SMALL_DRIVES).await else {
        return;
    };
    let initial = driver.capacity().await;
    assert_eq!(initial.available_capacity, 128 * GIB, "{initial:?}");

    let cap = ext4();
    let volume = driver
        .create("pvc-lifecycle", 2, cap.clone())
        .await
        .unwrap();
    assert_eq!(volume.capacity_bytes, 2 * GIB);
    assert_eq!(
        volume.volume_context.get("vdrive.io/node"),
        Some(&driver.node_id)
    );
    assert_eq!(
        volume.accessible_topology[0].segments.get(TOPOLOGY_KEY),
        Some(&driver.node_id)
    );
    let id = volume.volume_id.clone();

    let staging = driver.stage(&volume, &cap).await.unwrap();
    let staged = mounts_at(&staging);
    assert_eq!(staged.len(), 1, "{staged:?}");
    assert_eq!(staged[0].fs_type, "ext4");
    let target = driver.publish(&volume, &cap).await.unwrap();
    assert_eq!(mounts_at(&target).len(), 1);

    let payload = b"written through the published target\n";
    let mut file = fs::File::create(target.join("hello.txt")).unwrap();
    file.write_all(payload).unwrap();
    file.sync_all().unwrap();
    drop(file);

    let stats = driver
        .node()
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: path_str(&target),
            staging_target_path: path_str(&staging),
        })
        .await
        .unwrap()
        .into_inner();
    let usage = |unit: volume_usage::Unit| {
        stats
            .usage
            .iter()
            .find(|u| u.unit == unit as i32)
            .unwrap_or_else(|| panic!("no {unit:?} usage in {stats:?}"))
    };
    let bytes = usage(volume_usage::Unit::Bytes);
    assert!(
        bytes.total > GIB && bytes.total <= 2 * GIB,
        "a 2 GiB ext4 volume: {bytes:?}"
    );
    assert!(bytes.used > 0 && bytes.available > 0, "{bytes:?}");
    assert!(bytes.used + bytes.available <= bytes.total, "{bytes:?}");
    let inodes = usage(volume_usage::Unit::Inodes);
    assert!(
        inodes.total > 0 && inodes.used >= 12 && inodes.available > 0,
        "ext4 has reserved inodes plus ours: {inodes:?}"
    );

    driver.unpublish(&id, &target).await.unwrap();
    assert!(!target.exists(), "unpublish removes the target");
    assert!(mounts_at(&target).is_empty());
    driver.unstage(&id, &staging).await.unwrap();
    assert!(mounts_at(&staging).is_empty(), "unstage unmounts");

    let staging = driver.stage(&volume, &cap).await.unwrap();
    assert_eq!(fs::read(staging.join("hello.txt")).unwrap(), payload);
    driver.unstage(&id, &staging).await.unwrap();

    driver.delete(&id).await.unwrap();
    let listed = driver.list().await;
    assert!(listed.is_empty(), "deleted but listed: {listed:?}");
    assert_eq!(
        driver.capacity().await.available_capacity,
        initial.available_capacity
    );
}

/// What a raw-block tenant can do to a loop device it holds open read-write (no
/// capability needed): move its window to `offset` over the whole backing drive.
fn remap_loop_device(device: &Path, offset: u64) {
    const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
    const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .unwrap();
    // struct loop_info64: lo_offset at byte 24, lo_sizelimit at byte 32.
    let mut info = [0u8; 232];
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    assert_eq!(
        unsafe { libc::ioctl(fd, LOOP_GET_STATUS64, info.as_mut_ptr()) },
        0
    );
    info[24..32].copy_from_slice(&offset.to_ne_bytes());
    info[32..40].copy_from_slice(&0u64.to_ne_bytes());
    assert_eq!(
        unsafe { libc::ioctl(fd, LOOP_SET_STATUS64, info.as_ptr()) },
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loop_device_moved_under_its_volume_is_detached_and_reported() {
    let Some(driver) = Driver::start_with(
        "remapped",
        SMALL_DRIVES,
        &["--unsafe-loop-block-volumes", "--rescan-interval", "1"],
    )
    .await
    else {
        return;
    };
    let cap = raw_block();
    let volume = driver.create("pvc-remapped", 1, cap.clone()).await.unwrap();
    let id = volume.volume_id.clone();
    let staging = driver.stage(&volume, &cap).await.unwrap();
    let target = driver.publish(&volume, &cap).await.unwrap();
    let devices = volume_devices(&driver.dir);
    assert_eq!(devices.len(), 1, "{devices:?}");
    // A neighbour on a filesystem volume, which the sweep must leave alone.
    let fs_cap = ext4();
    let neighbour = driver
        .create("pvc-neighbour", 1, fs_cap.clone())
        .await
        .unwrap();
    let neighbour_staging = driver.stage(&neighbour, &fs_cap).await.unwrap();
    // Scans run every second: devices that match their volumes are not strays.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !driver.log().contains("which no staged volume owns"),
        "{}",
        driver.log()
    );

    // The tenant moves its device onto the drive's first byte: it now reads the
    // vdrive signature, and would read every other tenant's extent.
    remap_loop_device(&target, 0);
    let mut magic = [0u8; 8];
    fs::File::open(&target)
        .unwrap()
        .read_exact(&mut magic)
        .unwrap();
    assert_eq!(&magic, b"VDRIVE\0\x01", "the remap took effect");

    // The next scan finds it and names the volume. Published, it is left in
    // place: detached, its number could go to another volume, which this pod's
    // device node would then open.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !driver.log().contains("which no staged volume owns") {
        assert!(
            Instant::now() < deadline,
            "the remapped device was not reported; log:\n{}",
            driver.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = driver.log();
    assert!(
        log.contains(&format!("most likely volume {id}'s device")),
        "{log}"
    );
    assert!(log.contains("so it was left in place"), "{log}");
    assert!(log.contains(&target.display().to_string()), "{log}");
    assert!(volume_devices(&driver.dir).contains(&devices[0]));
    assert_eq!(
        mounts_at(&neighbour_staging).len(),
        1,
        "the neighbour stays staged"
    );

    // Unpublished, the next scan detaches it.
    driver.unpublish(&id, &target).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !driver.log().contains("it was detached") {
        assert!(
            Instant::now() < deadline,
            "the unpublished stray was not detached; log:\n{}",
            driver.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while volume_devices(&driver.dir).contains(&devices[0]) {
        assert!(
            Instant::now() < deadline,
            "the remapped device is still bound"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        mounts_at(&neighbour_staging).len(),
        1,
        "the neighbour stays staged"
    );
    assert_eq!(
        volume_devices(&driver.dir).len(),
        1,
        "only the neighbour's device is left"
    );
    driver
        .unstage(&neighbour.volume_id, &neighbour_staging)
        .await
        .unwrap();
    driver.delete(&neighbour.volume_id).await.unwrap();

    // The volume still unstages and deletes.
    driver.unstage(&id, &staging).await.unwrap();
    driver.delete(&id).await.unwrap();
    assert!(volume_devices(&driver.dir).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn xfs_volume_is_mounted_as_xfs() {
    let Some(driver) = Driver::start("xfs", SMALL_DRIVES).await else {
        return;
    };
    let cap = xfs();
    let volume = driver.create("pvc-xfs", 2, cap.clone()).await.unwrap();
    assert_eq!(
        volume
            .volume_context
            .get("vdrive.io/fs-type")
            .map(String::as_str),
        Some("xfs")
    );
    let staging = driver.stage(&volume, &cap).await.unwrap();
    let staged = mounts_at(&staging);
    assert_eq!(staged.len(), 1, "{staged:?}");
    assert_eq!(staged[0].fs_type, "xfs", "{staged:?}");
    assert!(staged[0].source.starts_with("/dev/loop"), "{staged:?}");
    let findmnt = run("findmnt", &["-n", "-o", "FSTYPE", &path_str(&staging)]);
    assert_eq!(String::from_utf8_lossy(&findmnt).trim(), "xfs");
    let size = fs_size_bytes(&staging);
    assert!(size > GIB as u64 && size <= 2 * GIB as u64, "{size}");

    driver.unstage(&volume.volume_id, &staging).await.unwrap();
    assert!(mounts_at(&staging).is_empty());
    driver.delete(&volume.volume_id).await.unwrap();
    assert!(driver.list().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn block_volume_keeps_what_was_written_to_it() {
    let Some(driver) = Driver::start("block", SMALL_DRIVES).await else {
        return;
    };
    let cap = raw_block();
    let volume = driver.create("pvc-block", 1, cap.clone()).await.unwrap();
    let id = volume.volume_id.clone();
    let staging = driver.stage(&volume, &cap).await.unwrap();
    let target = driver.publish(&volume, &cap).await.unwrap();
    let meta = fs::metadata(&target).unwrap();
    assert!(
        meta.file_type().is_block_device(),
        "the target is a block device node"
    );
    assert_eq!(block_size_bytes(&target), GIB);

    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 13) as u8).collect();
    let pattern_file = driver.dir.join("pattern");
    fs::write(&pattern_file, &pattern).unwrap();
    let of = format!("of={}", target.display());
    run(
        "dd",
        &[
            &format!("if={}", pattern_file.display()),
            &of,
            "bs=4096",
            "count=1",
            "seek=256",
            "oflag=direct",
            "conv=notrunc,fsync",
            "status=none",
        ],
    );

    driver.unpublish(&id, &target).await.unwrap();
    assert!(!target.exists());
    driver.unstage(&id, &staging).await.unwrap();
    let staging = driver.stage(&volume, &cap).await.unwrap();
    let target = driver.publish(&volume, &cap).await.unwrap();
    let read = run(
        "dd",
        &[
            &format!("if={}", target.display()),
            "bs=4096",
            "count=1",
            "skip=256",
            "iflag=direct",
            "status=none",
        ],
    );
    assert!(read == pattern, "the pattern did not come back");

    driver.unpublish(&id, &target).await.unwrap();
    driver.unstage(&id, &staging).await.unwrap();
    driver.delete(&id).await.unwrap();
    assert!(driver.list().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_volume_leaves_nothing_for_the_next_one() {
    let Some(driver) = Driver::start("erase", SMALL_DRIVES).await else {
        return;
    };
    let cap = raw_block();
    let first = driver.create("pvc-first", 1, cap.clone()).await.unwrap();
    let id = first.volume_id.clone();
    let staging = driver.stage(&first, &cap).await.unwrap();
    let target = driver.publish(&first, &cap).await.unwrap();
    run(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", target.display()),
            "bs=1M",
            "count=16",
            "oflag=direct",
            "conv=notrunc,fsync",
            "status=none",
        ],
    );
    driver.unpublish(&id, &target).await.unwrap();
    driver.unstage(&id, &staging).await.unwrap();

    let images = driver.state_dir().join("simulated-drives");
    let before = allocated_bytes(&images);
    assert!(before >= 16 << 20, "the data takes space: {before}");
    driver.delete(&id).await.unwrap();
    let after = allocated_bytes(&images);
    assert!(
        after + (15 << 20) <= before,
        "deleting punches holes: {before} bytes allocated before, {after} after"
    );

    // The next volume gets the same space, and reads zeros where the data was.
    let second = driver.create("pvc-second", 1, cap.clone()).await.unwrap();
    let place = |v: &Volume| {
        extents(v)
            .into_iter()
            .map(|e| (e.drive, e.offset_gib, e.size_gib))
            .collect::<Vec<_>>()
    };
    assert_eq!(place(&second), place(&first), "same extent reused");
    let staging = driver.stage(&second, &cap).await.unwrap();
    let target = driver.publish(&second, &cap).await.unwrap();
    let read = run(
        "dd",
        &[
            &format!("if={}", target.display()),
            "bs=1M",
            "count=16",
            "iflag=direct",
            "status=none",
        ],
    );
    assert_eq!(read.len(), 16 << 20);
    assert!(
        read.iter().all(|&b| b == 0),
        "the previous tenant's data is readable"
    );
    driver.unpublish(&second.volume_id, &target).await.unwrap();
    driver.unstage(&second.volume_id, &staging).await.unwrap();
    driver.delete(&second.volume_id).await.unwrap();
}

/// Bytes allocated on disk by the files in `dir` (sparse files count only their data).
fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir(dir)
        .expect("list the simulated drives")
        .map(|entry| {
            entry
                .expect("a directory entry")
                .metadata()
                .expect("stat")
                .blocks()
                * 512
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn data_survives_a_driver_restart() {
    let Some(mut driver) = Driver::start("restart", SMALL_DRIVES).await else {
        return;
    };
    let cap = ext4();
    let volume = driver.create("pvc-restart", 1, cap.clone()).await.unwrap();
    let id = volume.volume_id.clone();
    let staging = driver.stage(&volume, &cap).await.unwrap();
    let payload = b"before the restart\n";
    let mut file = fs::File::create(staging.join("data.txt")).unwrap();
    file.write_all(payload).unwrap();
    file.sync_all().unwrap();
    drop(file);
    driver.unstage(&id, &staging).await.unwrap();

    driver.restart().await;
    let listed = driver.list().await;
    assert_eq!(
        listed.iter().map(|v| &v.volume_id).collect::<Vec<_>>(),
        [&id],
        "the ledger keeps the volume"
    );
    let staging = driver.stage(&volume, &cap).await.unwrap();
    assert_eq!(fs::read(staging.join("data.txt")).unwrap(), payload);

    // Restart while the volume is staged: the drives stay attached, the mount and
    // the node's record of it survive, and it unstages and deletes afterwards.
    driver.restart().await;
    assert_eq!(mounts_at(&staging).len(), 1);
    assert_eq!(fs::read(staging.join("data.txt")).unwrap(), payload);
    let stats = driver
        .node()
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: path_str(&staging),
            staging_target_path: String::new(),
        })
        .await
        .expect("stats of a volume staged before the restart")
        .into_inner();
    assert!(stats.usage.iter().any(|u| u.total > 0), "{stats:?}");
    driver.unstage(&id, &staging).await.unwrap();
    assert!(mounts_at(&staging).is_empty());
    driver.delete(&id).await.unwrap();
    assert!(driver.list().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_ledger_quarantines_the_drive_until_adopted_from_its_header() {
    // One drive, so the new ledger has nowhere else to place a volume.
    let Some(mut driver) = Driver::start("lost-ledger", "tlc:8x1").await else {
        return;
    };
    let cap = ext4();
    let volume = driver.create("pvc-kept", 2, cap.clone()).await.unwrap();
    let id = volume.volume_id.clone();
    let staging = driver.stage(&volume, &cap).await.unwrap();
    let payload = b"written before the ledger was lost\n";
    let mut file = fs::File::create(staging.join("data.txt")).unwrap();
    file.write_all(payload).unwrap();
    file.sync_all().unwrap();
    drop(file);
    driver.unstage(&id, &staging).await.unwrap();

    // The state directory's ledger is lost; the drive is not.
    let status = driver.stop().expect("running");
    assert!(status.success(), "{}", driver.log());
    fs::remove_file(driver.state_dir().join("ledger.redb")).unwrap();
    driver.spawn().await;
    assert!(
        driver.list().await.is_empty(),
        "the new ledger knows no volume"
    );
    let err = assert_code(
        driver.create("pvc-new", 1, cap.clone()).await,
        Code::ResourceExhausted,
    );
    assert!(
        err.message().contains("quarantined") && err.message().contains(&id),
        "the refusal names the quarantine and the volume the drive lists: {}",
        err.message()
    );

    adopt_the_only_drive(&mut driver).await;
    let listed = driver.list().await;
    assert_eq!(
        listed.iter().map(|v| &v.volume_id).collect::<Vec<_>>(),
        [&id],
        "the volume is back in the ledger"
    );
    let other = driver.create("pvc-new", 1, cap.clone()).await.unwrap();
    assert_apart(&other, &extents(&volume));
    let staging = driver.stage(&volume, &cap).await.unwrap();
    assert_eq!(fs::read(staging.join("data.txt")).unwrap(), payload);
    driver.unstage(&id, &staging).await.unwrap();
    driver.delete(&id).await.unwrap();
    driver.delete(&other.volume_id).await.unwrap();
}

/// The image of the driver's one simulated drive.
fn the_only_drive_image(driver: &Driver) -> PathBuf {
    let images: Vec<PathBuf> = fs::read_dir(driver.state_dir().join("simulated-drives"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "img"))
        .collect();
    assert_eq!(images.len(), 1, "{images:?}");
    images[0].clone()
}

/// Stops the driver (all-in-one holds the ledger), brings the claims its one
/// drive's header lists back into the ledger with `vdrive drives adopt`, and
/// starts it again.
async fn adopt_the_only_drive(driver: &mut Driver) {
    let status = driver.stop().expect("running");
    assert!(status.success(), "{}", driver.log());
    let adopt = std::process::Command::new(env!("CARGO_BIN_EXE_vdrive"))
        .args(["drives", "adopt", "--node-id", &driver.node_id])
        .arg("--state-dir")
        .arg(driver.state_dir())
        .arg("--device")
        .arg(the_only_drive_image(driver))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&adopt.stdout).to_string()
        + &String::from_utf8_lossy(&adopt.stderr);
    assert!(adopt.status.success(), "{said}");
    assert!(said.contains("1 claim(s) brought back"), "{said}");
    driver.spawn().await;
}

/// Asserts that no extent of `volume` overlaps one of `kept`.
fn assert_apart(volume: &Volume, kept: &[Extent]) {
    for e in extents(volume) {
        assert!(
            kept.iter().all(|k| k.drive != e.drive
                || e.offset_gib >= k.offset_gib + k.size_gib
                || e.offset_gib + e.size_gib <= k.offset_gib),
            "the new volume {e:?} overlaps the kept one {kept:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_volume_grown_while_staged_is_on_its_drives_header_before_the_ledger_can_lose_it() {
    // One drive, so a new ledger would place the next volume where this one grew;
    // no rescan in the test's time, so only the grow itself writes the header.
    let Some(mut driver) =
        Driver::start_with("grown-header", "tlc:8x1", &["--rescan-interval", "3600"]).await
    else {
        return;
    };
    let cap = xfs();
    let volume = driver.create("pvc-grows", 1, cap.clone()).await.unwrap();
    let id = volume.volume_id.clone();
    let staging = driver.stage(&volume, &cap).await.unwrap();
    driver.expand(&id, 2 * GIB, &cap).await.unwrap();
    driver
        .node_expand(&id, &staging, &staging, 2 * GIB, &cap)
        .await
        .unwrap();
    // What only the grown GiB holds: the file's blocks land past the first GiB
    // once the first is full.
    fill_past_the_first_gib(&staging);
    let header = vdrive::node::claim_record::read(&the_only_drive_image(&driver))
        .unwrap()
        .expect("the drive has a claim record");
    let listed: Vec<(u64, u64)> = header
        .record
        .live_claims()
        .filter(|c| c.volume_id == id)
        .map(|c| (c.offset_gib, c.size_gib))
        .collect();
    assert_eq!(listed, [(0, 2)], "the header lists the grown claim");
    driver.unstage(&id, &staging).await.unwrap();

    // The ledger is lost before any rescan: the header alone brings the whole
    // grown volume back, and a new volume does not land on its second GiB.
    let status = driver.stop().expect("running");
    assert!(status.success(), "{}", driver.log());
    fs::remove_file(driver.state_dir().join("ledger.redb")).unwrap();
    driver.spawn().await;
    adopt_the_only_drive(&mut driver).await;
    let back = driver.list().await;
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(back[0].capacity_bytes, 2 * GIB, "adopted at its grown size");
    let other = driver.create("pvc-after", 1, cap.clone()).await.unwrap();
    assert_apart(&other, &extents(&back[0]));
    let staging = driver.stage(&volume, &cap).await.unwrap();
    assert_eq!(
        fs::read(staging.join("fill")).unwrap().len() as u64,
        FILL_BYTES,
        "the grown volume's data is whole"
    );
    driver.unstage(&id, &staging).await.unwrap();
    driver.delete(&id).await.unwrap();
    driver.delete(&other.volume_id).await.unwrap();
}

/// More than the first GiB of a 2 GiB volume can hold.
const FILL_BYTES: u64 = 1_200 << 20;

/// Writes [`FILL_BYTES`] of a pattern into `dir/fill`, synced.
fn fill_past_the_first_gib(dir: &Path) {
    let mut file = fs::File::create(dir.join("fill")).unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    for _ in 0..FILL_BYTES >> 20 {
        file.write_all(&chunk).unwrap();
    }
    file.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn xfs_volume_expands_online() {
    let Some(driver) = Driver::start("expand-xfs", SMALL_DRIVES).await else {
        return;
    };
    let cap = xfs();
    let volume = driver.create("pvc-grow-xfs", 2, cap.clone()).await.unwrap();
    let id = volume.volume_id.clone();
    let staging = driver.stage(&volume, &cap).await.unwrap();
    let target = driver.publish(&volume, &cap).await.unwrap();
    let before = fs_size_bytes(&target);

    let expanded = driver.expand(&id, 3 * GIB, &cap).await.unwrap();
    assert_eq!(expanded.capacity_bytes, 3 * GIB);
    assert!(expanded.node_expansion_required);

    let node_expanded = driver
        .node_expand(&id, &target, &staging, 3 * GIB, &cap)
        .await
        .unwrap();
    assert_eq!(node_expanded.capacity_bytes, 3 * GIB);
    let after = fs_size_bytes(&target);
    assert!(
        after >= before + (GIB as u64) * 9 / 10,
        "xfs grew from {before} to only {after} bytes"
    );
    assert!(after <= 3 * GIB as u64);

    driver.unpublish(&id, &target).await.unwrap();
    driver.unstage(&id, &staging).await.unwrap();
    driver.delete(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn ext4_volume_expanded_by_the_controller_grows_when_staged_again() {
    let Some(driver) = Driver::start("expand-ext4", SMALL_DRIVES).await else {
        return;
    };
    let cap = ext4();
    let volume = driver
        .create("pvc-grow-ext4", 2, cap.clone())
        .await
        .unwrap();
    let id = volume.volume_id.clone();
    let staging = driver.stage(&volume, &cap).await.unwrap();
    fs::write(staging.join("keep.txt"), b"kept across growth").unwrap();
    let before = fs_size_bytes(&staging);

    let expanded = driver.expand(&id, 3 * GIB, &cap).await.unwrap();
    assert_eq!(expanded.capacity_bytes, 3 * GIB);
    assert!(expanded.node_expansion_required);

    // Online growth of ext4 needs CAP_SYS_RESOURCE; without it the node says so.
    let online = driver
        .node_expand(&id, &staging, &staging, 3 * GIB, &cap)
        .await;
    if has_cap_sys_resource() {
        assert_eq!(online.unwrap().capacity_bytes, 3 * GIB);
    } else {
        assert_code(online, Code::FailedPrecondition);
        assert_eq!(fs_size_bytes(&staging), before, "no growth while mounted");
    }

    driver.unstage(&id, &staging).await.unwrap();
    let staging = driver.stage(&volume, &cap).await.unwrap();
    let after = fs_size_bytes(&staging);
    assert!(
        after >= before + (GIB as u64) * 9 / 10,
        "ext4 grew from {before} to only {after} bytes"
    );
    assert_eq!(
        fs::read(staging.join("keep.txt")).unwrap(),
        b"kept across growth"
    );
    driver.unstage(&id, &staging).await.unwrap();
    driver.delete(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_volume_grown_after_staging_keeps_its_drive_usable_and_leaves_no_claim_behind() {
    // One drive, so the next volume lands where the deleted one was.
    let Some(mut driver) = Driver::start("grown-deleted", "tlc:8x1").await else {
        return;
    };
    let cap = ext4();
    let grown = driver.create("pvc-grown", 1, cap.clone()).await.unwrap();
    let id = grown.volume_id.clone();
    // Staging puts the 1 GiB claim in the drive's header.
    let staging = driver.stage(&grown, &cap).await.unwrap();
    driver.unstage(&id, &staging).await.unwrap();
    driver.expand(&id, 2 * GIB, &cap).await.unwrap();
    // The header's claim is the smaller one the ledger grew: no lost ledger.
    driver.restart().await;
    assert_eq!(
        driver.capacity().await.available_capacity,
        6 * GIB,
        "a drive holding a grown volume is not quarantined"
    );
    driver.delete(&id).await.unwrap();

    let next = driver.create("pvc-next", 1, cap.clone()).await.unwrap();
    let place = |v: &Volume| {
        extents(v)
            .into_iter()
            .map(|e| (e.offset_gib, e.size_gib))
            .collect::<Vec<_>>()
    };
    assert_eq!(place(&next), [(0, 1)], "over the deleted volume's space");
    let staging = driver.stage(&next, &cap).await.unwrap();
    driver.unstage(&next.volume_id, &staging).await.unwrap();
    // The header must not count the deleted volume's first claim live: the
    // drive is not quarantined and the new volume deletes.
    driver.restart().await;
    assert_eq!(driver.capacity().await.available_capacity, 7 * GIB);
    driver.delete(&next.volume_id).await.unwrap();
    assert_eq!(driver.capacity().await.available_capacity, 8 * GIB);
}

/// Whether this process holds CAP_SYS_RESOURCE (bit 24 of CapEff).
fn has_cap_sys_resource() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|caps| u64::from_str_radix(caps.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_volume_returns_its_capacity() {
    let Some(driver) = Driver::start("capacity", SMALL_DRIVES).await else {
        return;
    };
    let before = driver.capacity().await;
    // The k8s class is TLC only: 2 × 64 GiB, well inside the 1500 GiB pool share.
    assert_eq!(before.available_capacity, 128 * GIB, "{before:?}");
    assert_eq!(before.maximum_volume_size, Some(64 * GIB), "{before:?}");

    let volume = driver.create("pvc-capacity", 3, ext4()).await.unwrap();
    let during = driver.capacity().await;
    assert_eq!(
        during.available_capacity,
        before.available_capacity - 3 * GIB,
        "{during:?}"
    );

    driver.delete(&volume.volume_id).await.unwrap();
    let after = driver.capacity().await;
    assert_eq!(after.available_capacity, before.available_capacity);
    assert_eq!(after.maximum_volume_size, before.maximum_volume_size);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_parameters_are_invalid_arguments_that_name_the_key() {
    let Some(driver) = Driver::start("params", SMALL_DRIVES).await else {
        return;
    };
    let mut unknown = k8s_params();
    unknown.insert("tlcRatio".into(), "1".into());
    let status = assert_code(
        driver
            .create_with("pvc-unknown-key", 1, ext4(), unknown)
            .await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("tlcRatio"), "{status:?}");

    let mut bad_value = k8s_params();
    bad_value.insert("driveCores".into(), "two".into());
    let status = assert_code(
        driver
            .create_with("pvc-bad-value", 1, ext4(), bad_value)
            .await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("driveCores"), "{status:?}");
    assert!(status.message().contains("two"), "{status:?}");

    assert!(driver.list().await.is_empty(), "nothing was created");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fixed_size_volume_refuses_expansion_naming_the_class_keys() {
    let Some(driver) = Driver::start("fixed", SMALL_DRIVES).await else {
        return;
    };
    let mut fixed = k8s_params();
    fixed.remove("tlc");
    fixed.remove("qlc");
    fixed.insert("numDrives".into(), "1".into());
    fixed.insert("driveCapacity".into(), "2".into());
    let cap = ext4();
    let volume = driver
        .create_with("pvc-fixed", 2, cap.clone(), fixed)
        .await
        .unwrap();
    assert_eq!(volume.capacity_bytes, 2 * GIB);
    let id = volume.volume_id.clone();
    let same = driver.expand(&id, 2 * GIB, &cap).await.unwrap();
    assert_eq!(
        same.capacity_bytes,
        2 * GIB,
        "expanding to its size is fine"
    );
    let status = assert_code(
        driver.expand(&id, 3 * GIB, &cap).await,
        Code::FailedPrecondition,
    );
    for key in ["numDrives", "driveCapacity", "fixed-size"] {
        assert!(status.message().contains(key), "{status:?}");
    }
    driver.delete(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loop_node_keeps_volumes_to_one_virtual_drive_and_says_so() {
    let Some(driver) = Driver::start("loop-parts", "tlc:8x1").await else {
        return;
    };
    // Two drive cores need two virtual drives, which a loop device cannot join.
    let mut two_cores = k8s_params();
    two_cores.insert("driveCores".into(), "2".into());
    let status = assert_code(
        driver
            .create_with("pvc-two-cores", 2, ext4(), two_cores.clone())
            .await,
        Code::FailedPrecondition,
    );
    for words in [
        "loop backend",
        "largest one-drive volume it holds now is 8 GiB of TLC",
        "device-mapper (dm)",
    ] {
        assert!(status.message().contains(words), "{status:?}");
    }
    let capacity = driver.capacity_with(two_cores).await;
    assert_eq!(capacity.maximum_volume_size, Some(0), "{capacity:?}");

    // Growth: in place while the GiB after it are free, then refused.
    let cap = ext4();
    let first = driver.create("pvc-first", 1, cap.clone()).await.unwrap();
    driver.create("pvc-second", 1, cap.clone()).await.unwrap();
    let status = assert_code(
        driver.expand(&first.volume_id, 2 * GIB, &cap).await,
        Code::ResourceExhausted,
    );
    assert!(status.message().contains("loop backend"), "{status:?}");

    // CreateVolume by name: a compatible size is the same volume, another conflicts.
    let again = driver.create("pvc-first", 1, cap.clone()).await.unwrap();
    assert_eq!(again.volume_id, first.volume_id);
    let status = assert_code(
        driver.create("pvc-first", 3, cap.clone()).await,
        Code::AlreadyExists,
    );
    assert!(
        status.message().contains("already exists with 1 GiB"),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_node_answers_resource_exhausted_with_the_seeds_message() {
    let Some(driver) = Driver::start("full", "tlc:8x1").await else {
        return;
    };
    driver.create("pvc-six", 6, ext4()).await.unwrap();
    let status = assert_code(
        driver.create("pvc-four", 4, ext4()).await,
        Code::ResourceExhausted,
    );
    // The drive-sharing seed's InsufficientDriveCapacityError, word for word.
    assert_eq!(
        status.message(),
        "Insufficient drive capacity: need 4 GiB, available 2 GiB"
    );
    assert_eq!(
        driver.list().await.len(),
        1,
        "the failed create left nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_creates_never_share_space() {
    let Some(driver) = Driver::start("concurrent", "tlc:64x2").await else {
        return;
    };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let controller = driver.controller();
        tasks.spawn(async move {
            let name = format!("pvc-many-{i:03}");
            let result = create_volume(controller, &name, 1, ext4(), k8s_params()).await;
            (name, result)
        });
    }
    let mut created: Vec<Volume> = Vec::new();
    let mut failed: Vec<(String, tonic::Status)> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("create task") {
            (_, Ok(volume)) => created.push(volume),
            (name, Err(status)) => failed.push((name, status)),
        }
    }
    for (name, status) in &failed {
        assert_eq!(status.code(), Code::ResourceExhausted, "{name}: {status:?}");
    }
    assert_eq!(created.len(), 128, "128 GiB of drives, 1 GiB each");
    assert_eq!(failed.len(), 72);

    let ids: HashSet<&str> = created.iter().map(|v| v.volume_id.as_str()).collect();
    assert_eq!(ids.len(), created.len(), "volume ids are distinct");
    let listed = driver.list().await;
    let listed_by_id: HashMap<&str, &Volume> =
        listed.iter().map(|v| (v.volume_id.as_str(), v)).collect();
    assert_eq!(listed.len(), created.len());
    for volume in &created {
        let entry = listed_by_id
            .get(volume.volume_id.as_str())
            .unwrap_or_else(|| panic!("{} is not listed", volume.volume_id));
        assert_eq!(extents(entry), extents(volume), "{}", volume.volume_id);
        assert_eq!(entry.capacity_bytes, GIB);
    }

    let mut by_drive: BTreeMap<String, Vec<(u64, u64, String)>> = BTreeMap::new();
    for volume in &created {
        let parts = extents(volume);
        assert_eq!(
            parts.iter().map(|e| e.size_gib).sum::<u64>(),
            1,
            "{parts:?}"
        );
        for extent in parts {
            assert_eq!(extent.drive_type.as_deref(), Some("tlc"), "{extent:?}");
            assert!(extent.offset_gib + extent.size_gib <= 64, "{extent:?}");
            by_drive.entry(extent.drive.clone()).or_default().push((
                extent.offset_gib,
                extent.size_gib,
                volume.volume_id.clone(),
            ));
        }
    }
    assert_eq!(by_drive.len(), 2, "both drives are used");
    for (drive, mut extents) in by_drive {
        extents.sort();
        for pair in extents.windows(2) {
            let ((offset, size, a), (next, _, b)) = (&pair[0], &pair[1]);
            assert!(
                offset + size <= *next,
                "on drive {drive}, {a} at {offset}+{size} GiB overlaps {b} at {next} GiB"
            );
        }
    }
    let capacity = driver.capacity().await;
    assert_eq!(capacity.available_capacity, 0, "{capacity:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_creates_of_one_name_make_one_volume() {
    let Some(driver) = Driver::start("one-name", SMALL_DRIVES).await else {
        return;
    };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let controller = driver.controller();
        tasks.spawn(async move {
            create_volume(controller, "pvc-same-name", 1, ext4(), k8s_params()).await
        });
    }
    let mut ids: HashSet<String> = HashSet::new();
    let mut successes = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("create task") {
            Ok(volume) => {
                successes += 1;
                ids.insert(volume.volume_id);
            }
            Err(status) => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
        }
    }
    assert!(successes >= 1);
    assert_eq!(ids.len(), 1, "every success is the same volume: {ids:?}");
    let listed = driver.list().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(ids.contains(&listed[0].volume_id));
}

#[tokio::test(flavor = "multi_thread")]
async fn node_and_delete_calls_are_idempotent() {
    let Some(driver) = Driver::start("idempotent", SMALL_DRIVES).await else {
        return;
    };
    let cap = ext4();
    let volume = driver.create("pvc-again", 1, cap.clone()).await.unwrap();
    let again = driver.create("pvc-again", 1, cap.clone()).await.unwrap();
    assert_eq!(again.volume_id, volume.volume_id, "CreateVolume by name");
    let id = volume.volume_id.clone();

    let staging = driver.stage(&volume, &cap).await.unwrap();
    driver.stage(&volume, &cap).await.expect("second stage");
    assert_eq!(mounts_at(&staging).len(), 1, "staged once");
    let target = driver.publish(&volume, &cap).await.unwrap();
    driver.publish(&volume, &cap).await.expect("second publish");
    assert_eq!(mounts_at(&target).len(), 1, "published once");

    driver.unpublish(&id, &target).await.unwrap();
    driver
        .unpublish(&id, &target)
        .await
        .expect("unpublish of a target that is gone");
    driver
        .unpublish(&id, &driver.dir.join("never-published"))
        .await
        .expect("unpublish of a path that never existed");
    driver.unstage(&id, &staging).await.unwrap();
    driver
        .unstage(&id, &staging)
        .await
        .expect("unstage of what is not staged");
    driver
        .unstage("no-such-volume", &driver.dir.join("never-staged"))
        .await
        .expect("unstage of an unknown volume");
    assert!(mounts_under(&driver.dir).is_empty());

    driver.delete(&id).await.unwrap();
    driver.delete(&id).await.expect("second delete");
    driver
        .delete("00000000-0000-0000-0000-000000000000")
        .await
        .expect("delete of an unknown id");
    assert!(driver.list().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_and_node_info() {
    let Some(driver) = Driver::start("identity", SMALL_DRIVES).await else {
        return;
    };
    let probe = driver
        .identity()
        .probe(ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(true));
    let info = driver
        .identity()
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "csi.vdrive.io");
    assert!(!info.vendor_version.is_empty());
    let node = driver
        .node()
        .node_get_info(NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(node.node_id, driver.node_id);
    let topology = node.accessible_topology.expect("accessible topology");
    assert_eq!(topology.segments.get(TOPOLOGY_KEY), Some(&driver.node_id));
}

// ---- regressions: the node never tears down or hands out what is in use -------

/// ListVolumes pages in volume id order and hands out tokens that lead through
/// the whole list once; a token it never issued, or one past the end of the
/// list, is Aborted with what to do.
#[tokio::test(flavor = "multi_thread")]
async fn list_volumes_pages_and_refuses_tokens_it_never_issued() {
    let Some(driver) = Driver::start("pages", SMALL_DRIVES).await else {
        return;
    };
    let mut ids = Vec::new();
    for i in 0..5 {
        let volume = driver
            .create(&format!("page-{i}"), 1, ext4())
            .await
            .unwrap();
        ids.push(volume.volume_id);
    }
    ids.sort();
    let page = |max_entries: i32, starting_token: &str| {
        let mut controller = driver.controller();
        let request = ListVolumesRequest {
            max_entries,
            starting_token: starting_token.to_string(),
        };
        async move {
            controller
                .list_volumes(request)
                .await
                .map(|r| r.into_inner())
        }
    };
    let mut walked = Vec::new();
    let mut token = String::new();
    let mut tokens = Vec::new();
    loop {
        let answer = page(2, &token).await.unwrap();
        assert!(answer.entries.len() <= 2, "{:?}", answer.entries);
        walked.extend(
            answer
                .entries
                .into_iter()
                .filter_map(|e| e.volume.map(|v| v.volume_id)),
        );
        if answer.next_token.is_empty() {
            break;
        }
        token = answer.next_token;
        tokens.push(token.clone());
    }
    assert_eq!(walked, ids, "every volume once, in id order");
    assert_eq!(tokens, ["2", "4"]);
    let whole = page(0, "").await.unwrap();
    assert_eq!(whole.entries.len(), 5);
    assert!(whole.next_token.is_empty());

    for bad in ["not-a-token", "6"] {
        let err = assert_code(page(2, bad).await.map(|_| ()), Code::Aborted);
        assert!(
            err.message().contains("list again from the start"),
            "{}",
            err.message()
        );
    }
    let err = assert_code(page(-1, "").await.map(|_| ()), Code::InvalidArgument);
    assert!(err.message().contains("max_entries"), "{}", err.message());
    for id in &ids {
        driver.delete(id).await.unwrap();
    }
}

/// A loop device over a volume's extent that no staging record accounts for
/// (left by a crash, or attached by hand) keeps DeleteVolume from erasing the
/// extent: it answers FailedPrecondition naming the device, and the data under
/// it stays. Once the device is gone, the delete erases.
/// The device of the simulated drive `extent` is on.
fn drive_device(driver: &Driver, extent: &vdrive::ledger::VolumeExtent) -> PathBuf {
    vdrive::node::loopdev::list()
        .unwrap()
        .into_iter()
        .filter(|l| l.backing.starts_with(&driver.dir) && l.offset_bytes == 0)
        .map(|l| l.device)
        .find(|d| {
            matches!(vdrive::node::signature::read(d), Ok(Some(s)) if s.uuid == extent.physical_uuid)
        })
        .expect("the extent's drive")
}

/// A drive whose header lists a volume the ledger no longer has (its ledger
/// was restored from an older copy while the node ran, before the node's next
/// drive scan quarantines the drive): a new volume placed over that claim is
/// neither staged nor erased, and the lost volume's bytes stay as they are.
#[tokio::test(flavor = "multi_thread")]
async fn a_volume_placed_over_a_claim_the_ledger_lost_is_neither_staged_nor_erased() {
    let Some(driver) =
        Driver::start_with("over-lost", "tlc:8x1", &["--rescan-interval", "3600"]).await
    else {
        return;
    };
    let cap = ext4();
    let volume = driver.create("pvc-over", 1, cap.clone()).await.unwrap();
    let context = vdrive::csi::context::decode(&volume.volume_context).unwrap();
    let [extent] = context.extents.as_slice() else {
        panic!("one extent: {:?}", context.extents);
    };
    let drive = drive_device(&driver, extent);
    // The drive still lists the lost volume, live, where the ledger has just
    // placed the new one, and still holds its data.
    let stored = vdrive::node::claim_record::read(&drive).unwrap();
    let mut record = stored
        .as_ref()
        .map(|s| s.record.clone())
        .expect("the node wrote the drive's record at start");
    record.claims.push(vdrive::ledger::Claim {
        virtual_uuid: uuid::Uuid::new_v4(),
        volume_id: "the-lost-volume".into(),
        volume_name: "pvc-lost".into(),
        owner: "default:data".into(),
        pool: None,
        physical_uuid: extent.physical_uuid,
        offset_gib: extent.offset_gib,
        size_gib: 1,
        part: 0,
        fixed: false,
        releasing: false,
        spec: None,
    });
    vdrive::node::claim_record::write(&drive, stored.as_ref(), &record).unwrap();
    let marker = b"the lost volume's data";
    let at = vdrive::node::signature::Signature::data_offset_bytes(extent.offset_gib) + 4096;
    {
        let device = fs::OpenOptions::new().write(true).open(&drive).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&device, marker, at).unwrap();
        device.sync_all().unwrap();
    }

    let err = assert_code(driver.stage(&volume, &cap).await, Code::FailedPrecondition);
    assert!(
        err.message().contains("the-lost-volume")
            && err.message().contains("is not staged")
            && err.message().contains("vdrive drives adopt"),
        "{}",
        err.message()
    );
    assert!(
        volume_devices(&driver.dir).is_empty() && mounts_under(&driver.dir).is_empty(),
        "the refused stage left no device and no mount"
    );
    let err = assert_code(
        driver.delete(&volume.volume_id).await,
        Code::FailedPrecondition,
    );
    assert!(
        err.message().contains("the-lost-volume"),
        "{}",
        err.message()
    );
    let mut read = vec![0u8; marker.len()];
    std::os::unix::fs::FileExt::read_exact_at(&fs::File::open(&drive).unwrap(), &mut read, at)
        .unwrap();
    assert_eq!(read, marker, "the lost volume's data is untouched");
    let after = vdrive::node::claim_record::read(&drive).unwrap().unwrap();
    assert!(
        after
            .record
            .live_claims()
            .any(|c| c.volume_id == "the-lost-volume"),
        "the header still counts the lost volume"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_over_an_extent_keeps_it_from_being_erased() {
    let Some(driver) = Driver::start("held", SMALL_DRIVES).await else {
        return;
    };
    let volume = driver.create("held", 1, raw_block()).await.unwrap();
    let context = vdrive::csi::context::decode(&volume.volume_context).unwrap();
    let [extent] = context.extents.as_slice() else {
        panic!("one extent: {:?}", context.extents);
    };
    let drive = drive_device(&driver, extent);
    let attach = || {
        vdrive::node::loopdev::attach(
            &drive,
            vdrive::node::signature::Signature::data_offset_bytes(extent.offset_gib),
            extent.size_gib * vdrive::node::GIB,
        )
        .unwrap()
    };
    let marker = b"written before the delete";
    let held = attach();
    {
        let device = fs::OpenOptions::new().write(true).open(&held).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&device, marker, 4096).unwrap();
        device.sync_all().unwrap();
    }

    let err = assert_code(
        driver.delete(&volume.volume_id).await,
        Code::FailedPrecondition,
    );
    assert!(
        err.message().contains("still has a device")
            && err.message().contains(&held.display().to_string()),
        "{}",
        err.message()
    );
    let read_at = |device: &Path| {
        let mut buf = vec![0u8; marker.len()];
        std::os::unix::fs::FileExt::read_exact_at(&fs::File::open(device).unwrap(), &mut buf, 4096)
            .unwrap();
        buf
    };
    assert_eq!(
        read_at(&held),
        marker,
        "nothing was erased under the device"
    );
    assert!(
        driver
            .list()
            .await
            .iter()
            .any(|v| v.volume_id == volume.volume_id),
        "the volume keeps its claim"
    );

    vdrive::node::loopdev::detach(&held).unwrap();
    driver.delete(&volume.volume_id).await.unwrap();
    let after = attach();
    let zeros = read_at(&after);
    vdrive::node::loopdev::detach(&after).unwrap();
    assert!(
        zeros.iter().all(|b| *b == 0),
        "erased once the device was gone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_published_volume_cannot_be_unstaged_or_deleted() {
    let Some(driver) = Driver::start("busy", SMALL_DRIVES).await else {
        return;
    };
    for (name, cap) in [("busy-block", raw_block()), ("busy-ext4", ext4())] {
        let volume = driver.create(name, 1, cap.clone()).await.unwrap();
        let id = volume.volume_id.clone();
        let staging = driver.stage(&volume, &cap).await.unwrap();
        let target = driver.publish(&volume, &cap).await.unwrap();
        let err = assert_code(
            driver.unstage(&id, &staging).await,
            Code::FailedPrecondition,
        );
        assert!(
            err.message().contains("still published"),
            "{}",
            err.message()
        );
        assert!(target.exists(), "the pod's target is untouched");
        if !volume_is_block(&cap) {
            assert!(
                !mounts_at(&staging).is_empty(),
                "the staging mount is untouched"
            );
        }
        let err = assert_code(driver.delete(&id).await, Code::FailedPrecondition);
        assert!(err.message().contains("still staged"), "{}", err.message());
        driver.unpublish(&id, &target).await.unwrap();
        driver.unstage(&id, &staging).await.unwrap();
        driver.delete(&id).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unstaging_another_volume_at_a_staging_path_touches_nothing() {
    let Some(driver) = Driver::start("foreign", SMALL_DRIVES).await else {
        return;
    };
    let cap = ext4();
    let volume = driver.create("mine", 1, cap.clone()).await.unwrap();
    let staging = driver.stage(&volume, &cap).await.unwrap();
    fs::write(staging.join("f"), b"still here").unwrap();
    // Not staged: OK, and the other volume's mount stays.
    driver.unstage("some-other-volume", &staging).await.unwrap();
    assert_eq!(fs::read(staging.join("f")).unwrap(), b"still here");
    // Staged elsewhere: refused.
    let elsewhere = driver.dir.join("elsewhere");
    let err = assert_code(
        driver.unstage(&volume.volume_id, &elsewhere).await,
        Code::FailedPrecondition,
    );
    assert!(err.message().contains("is staged at"), "{}", err.message());
    driver.unstage(&volume.volume_id, &staging).await.unwrap();
    driver.delete(&volume.volume_id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_stage_leaves_no_device_and_the_volume_can_be_deleted() {
    let Some(driver) = Driver::start("failstage", SMALL_DRIVES).await else {
        return;
    };
    let cap = ext4();
    let volume = driver.create("flagged", 1, ext4()).await.unwrap();
    // A file where the staging directory's parent should be: the device is
    // built, then the staging directory cannot be made.
    fs::write(driver.dir.join("staging"), b"in the way").unwrap();
    assert!(
        driver.stage(&volume, &cap).await.is_err(),
        "a staging directory that cannot be made fails the stage"
    );
    assert_eq!(
        volume_devices(&driver.dir),
        Vec::<PathBuf>::new(),
        "no loop device is left attached"
    );
    // Kubelet does not unstage after a failed stage: delete must still work.
    driver.delete(&volume.volume_id).await.unwrap();
    assert!(driver.list().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loop_node_refuses_raw_block_volumes_unless_told_it_is_a_test_bed() {
    // Without device-mapper a block volume would be a loop device its tenant can
    // remap (LOOP_SET_STATUS64) onto the whole shared drive.
    let Some(driver) = Driver::start_with("loopblock", SMALL_DRIVES, &[]).await else {
        return;
    };
    let cap = raw_block();
    let volume = driver.create("pvc-raw", 1, cap.clone()).await.unwrap();
    let refused = assert_code(driver.stage(&volume, &cap).await, Code::FailedPrecondition);
    for words in [
        "raw block volume",
        "loop",
        "device-mapper",
        "--unsafe-loop-block-volumes",
    ] {
        assert!(refused.message().contains(words), "{}", refused.message());
    }
    assert_eq!(
        volume_devices(&driver.dir),
        Vec::<PathBuf>::new(),
        "no loop device is made for a refused block volume"
    );
    // Filesystem volumes are the tenant's through a mount, not a device: served.
    let fs_volume = driver.create("pvc-fs", 1, ext4()).await.unwrap();
    let staging = driver.stage(&fs_volume, &ext4()).await.unwrap();
    driver
        .unstage(&fs_volume.volume_id, &staging)
        .await
        .unwrap();
    driver.delete(&fs_volume.volume_id).await.unwrap();
    driver.delete(&volume.volume_id).await.unwrap();
    assert!(driver.list().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_answer_only_for_the_volumes_own_paths() {
    let Some(driver) = Driver::start("statspath", SMALL_DRIVES).await else {
        return;
    };
    let cap = ext4();
    let volume = driver.create("stats", 1, cap.clone()).await.unwrap();
    let id = volume.volume_id.clone();
    let staging = driver.stage(&volume, &cap).await.unwrap();
    let stats = |path: &str| {
        let mut node = driver.node();
        let request = NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: path.to_string(),
            staging_target_path: String::new(),
        };
        async move { node.node_get_volume_stats(request).await }
    };
    assert!(stats(&path_str(&staging)).await.is_ok());
    assert_code(stats("/").await, Code::NotFound);
    driver.unstage(&id, &staging).await.unwrap();
    driver.delete(&id).await.unwrap();
}

// ---- node calls survive callers that give up, and crashes ----------------------

/// A filesystem of its own, on a loop-mounted image, for a driver's simulated
/// drives: freezing it holds every write to the drives (mkfs, for one) until it
/// is thawed. It lives outside the driver's dir (the driver's state dir links to
/// it), so it is released here, after the driver: drop it last.
struct DriveFs {
    dir: PathBuf,
    mount_point: PathBuf,
}

impl DriveFs {
    /// Made before the driver starts, so the drives are created on it.
    fn for_driver(driver: &Driver) -> DriveFs {
        let dir = tempfile::Builder::new()
            .prefix("vdrive-it-drivefs-")
            .tempdir()
            .expect("create a temp dir")
            .keep();
        let dir = fs::canonicalize(&dir).expect("resolve the temp dir");
        let image = dir.join("drives.img");
        let mount_point = dir.join("mnt");
        // The fixture exists before the mount does, so a failed one is cleaned up.
        let drive_fs = DriveFs {
            dir,
            mount_point: mount_point.clone(),
        };
        fs::create_dir_all(&mount_point).unwrap();
        fs::File::create(&image)
            .and_then(|f| f.set_len(1 << 30))
            .unwrap();
        run("mkfs.ext4", &["-q", "-F", &path_str(&image)]);
        run(
            "mount",
            &["-o", "loop", &path_str(&image), &path_str(&mount_point)],
        );
        fs::create_dir_all(driver.state_dir()).unwrap();
        std::os::unix::fs::symlink(&mount_point, driver.state_dir().join("simulated-drives"))
            .unwrap();
        drive_fs
    }

    fn freeze(&self) -> Frozen {
        run("fsfreeze", &["--freeze", &path_str(&self.mount_point)]);
        Frozen(self.mount_point.clone())
    }
}

impl Drop for DriveFs {
    fn drop(&mut self) {
        drop(Frozen(self.mount_point.clone()));
        support::devices::detach_loops_under(&self.mount_point);
        let unmounted = Command::new("umount")
            .arg(&self.mount_point)
            .status()
            .is_ok_and(|s| s.success());
        if unmounted {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("cleanup: cannot unmount {}", self.mount_point.display());
        }
    }
}

/// Thaws the drives' filesystem when dropped (also when a test fails: a frozen
/// filesystem would hold the driver, and its cleanup, forever).
struct Frozen(PathBuf);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze")
            .arg("--unfreeze")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stage_whose_caller_gave_up_keeps_the_volume_busy_until_it_has_ended() {
    let Some(driver) = Driver::unstarted("gaveup", SMALL_DRIVES, &[]) else {
        return;
    };
    let drives = DriveFs::for_driver(&driver);
    // Declared after `drives`, so stopped and cleaned up before it.
    let mut driver = driver;
    driver.spawn().await;
    let cap = ext4();
    let volume = driver.create("gave-up", 1, cap.clone()).await.unwrap();
    let id = volume.volume_id.clone();

    // Writes to the drives hang from here: the stage stops inside mkfs.
    let frozen = drives.freeze();
    let first = driver
        .stage_within(&volume, &cap, Duration::from_millis(500))
        .await;
    assert!(
        first.is_err(),
        "the stage cannot end while the drives are frozen: {first:?}"
    );
    // The caller has given up, but the stage's work goes on: a retry is refused.
    let retry = driver
        .stage_within(&volume, &cap, Duration::from_secs(5))
        .await;
    let err = assert_code(retry, Code::Aborted);
    assert!(
        err.message().contains(&id) && err.message().contains("still in progress"),
        "{}",
        err.message()
    );
    assert!(
        !driver.log().contains("volume staged"),
        "nothing has been staged yet"
    );

    // Once the first stage has really ended, a retry finds it done.
    drop(frozen);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match driver
            .stage_within(&volume, &cap, Duration::from_secs(30))
            .await
        {
            Ok(()) => break,
            Err(status) if status.code() == Code::Aborted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(status) => panic!("the retry after the first stage ended: {status:?}"),
        }
    }
    let staging = driver.staging_path(&id);
    assert_eq!(mounts_at(&staging).len(), 1, "staged once");
    assert_eq!(volume_devices(&drives.mount_point).len(), 1, "one device");
    fs::write(staging.join("f"), b"written").unwrap();
    assert_eq!(fs::read(staging.join("f")).unwrap(), b"written");

    driver.unstage(&id, &staging).await.unwrap();
    assert!(mounts_at(&staging).is_empty());
    assert_eq!(volume_devices(&drives.mount_point), Vec::<PathBuf>::new());
    driver.delete(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn unstage_takes_down_what_a_crash_left_unrecorded() {
    let Some(driver) = Driver::start("unrecorded", SMALL_DRIVES).await else {
        return;
    };
    for (name, cap) in [("lost-ext4", ext4()), ("lost-block", raw_block())] {
        let volume = driver.create(name, 1, cap.clone()).await.unwrap();
        let id = volume.volume_id.clone();
        let staging = driver.stage(&volume, &cap).await.unwrap();
        assert_eq!(volume_devices(&driver.dir).len(), 1);
        // The node lost its record of the stage (a crash before it was written).
        let record = driver
            .state_dir()
            .join("node/volumes")
            .join(format!("{id}.json"));
        fs::remove_file(&record).expect("the stage wrote a record");

        driver.unstage(&id, &staging).await.unwrap();
        assert!(mounts_at(&staging).is_empty(), "{name}: no mount is left");
        assert_eq!(
            volume_devices(&driver.dir),
            Vec::<PathBuf>::new(),
            "{name}: no device is left"
        );
        driver.delete(&id).await.unwrap();
    }
    assert!(driver.list().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn unstage_without_a_record_leaves_a_pods_mount_alone() {
    let Some(driver) = Driver::start("unrecordedpub", SMALL_DRIVES).await else {
        return;
    };
    let cap = ext4();
    let volume = driver
        .create("lost-published", 1, cap.clone())
        .await
        .unwrap();
    let id = volume.volume_id.clone();
    let staging = driver.stage(&volume, &cap).await.unwrap();
    let target = driver.publish(&volume, &cap).await.unwrap();
    fs::remove_file(
        driver
            .state_dir()
            .join("node/volumes")
            .join(format!("{id}.json")),
    )
    .unwrap();
    let err = assert_code(
        driver.unstage(&id, &staging).await,
        Code::FailedPrecondition,
    );
    assert!(
        err.message().contains("still published"),
        "{}",
        err.message()
    );
    assert_eq!(mounts_at(&target).len(), 1, "the pod's mount stays");
    assert_eq!(mounts_at(&staging).len(), 1, "the staging mount stays");
    driver.unpublish(&id, &target).await.unwrap();
    driver.unstage(&id, &staging).await.unwrap();
    assert!(mounts_under(&driver.dir.join("staging")).is_empty());
    driver.delete(&id).await.unwrap();
}

fn volume_is_block(cap: &VolumeCapability) -> bool {
    matches!(
        cap.access_type,
        Some(volume_capability::AccessType::Block(_))
    )
}

// ---- input hygiene ----------------------------------------------------------

/// NodeStageVolume of `volume` at `staging`, whatever the string.
async fn stage_at(
    driver: &Driver,
    volume: &Volume,
    cap: &VolumeCapability,
    staging: &str,
) -> Result<(), tonic::Status> {
    driver
        .node()
        .node_stage_volume(NodeStageVolumeRequest {
            volume_id: volume.volume_id.clone(),
            staging_target_path: staging.to_string(),
            volume_capability: Some(cap.clone()),
            volume_context: volume.volume_context.clone(),
            ..Default::default()
        })
        .await
        .map(drop)
}

/// NodePublishVolume of `volume` from `staging` at `target`, whatever the strings.
async fn publish_at(
    driver: &Driver,
    volume: &Volume,
    cap: &VolumeCapability,
    staging: &str,
    target: &str,
) -> Result<(), tonic::Status> {
    driver
        .node()
        .node_publish_volume(NodePublishVolumeRequest {
            volume_id: volume.volume_id.clone(),
            staging_target_path: staging.to_string(),
            target_path: target.to_string(),
            volume_capability: Some(cap.clone()),
            volume_context: volume.volume_context.clone(),
            ..Default::default()
        })
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread")]
async fn node_paths_must_be_absolute_and_clean() {
    let Some(driver) = Driver::start("paths", SMALL_DRIVES).await else {
        return;
    };
    let cap = ext4();
    let volume = driver.create("pvc-paths", 1, cap.clone()).await.unwrap();
    let id = volume.volume_id.clone();
    let dir = path_str(&driver.dir);
    let bad = [
        "staging/rel".to_string(),
        format!("{dir}/staging/../escape"),
        format!("{dir}/./escape"),
        format!("{dir}//escape"),
        format!("{dir}/escape/"),
        format!("{dir}/esc\0ape"),
    ];
    for path in &bad {
        let err = assert_code(
            stage_at(&driver, &volume, &cap, path).await,
            Code::InvalidArgument,
        );
        assert!(
            err.message().starts_with("staging_target_path"),
            "{path:?}: {}",
            err.message()
        );
        let err = assert_code(
            driver.unstage(&id, Path::new(path)).await,
            Code::InvalidArgument,
        );
        assert!(
            err.message().starts_with("staging_target_path"),
            "{}",
            err.message()
        );
        let err = assert_code(
            driver.unpublish(&id, Path::new(path)).await,
            Code::InvalidArgument,
        );
        assert!(
            err.message().starts_with("target_path"),
            "{}",
            err.message()
        );
    }
    assert!(!driver.dir.join("escape").exists(), "nothing was made");
    assert_eq!(volume_devices(&driver.dir), Vec::<PathBuf>::new());

    let staging = driver.stage(&volume, &cap).await.unwrap();
    let staging = path_str(&staging);
    for path in &bad {
        let err = assert_code(
            publish_at(&driver, &volume, &cap, &staging, path).await,
            Code::InvalidArgument,
        );
        assert!(
            err.message().starts_with("target_path"),
            "{}",
            err.message()
        );
        let err = assert_code(
            publish_at(&driver, &volume, &cap, path, &format!("{dir}/pods/t")).await,
            Code::InvalidArgument,
        );
        assert!(
            err.message().starts_with("staging_target_path"),
            "{}",
            err.message()
        );
    }
    // Stats and expansion name a volume by a path it was staged or published at:
    // any other path is one where the volume is not (csi-sanity asks "some/path").
    for path in ["some/path", &format!("{staging}/../x")] {
        let mut node = driver.node();
        let stats = node
            .node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: id.clone(),
                volume_path: path.to_string(),
                staging_target_path: String::new(),
            })
            .await;
        assert_code(stats, Code::NotFound);
        let expand = node
            .node_expand_volume(NodeExpandVolumeRequest {
                volume_id: id.clone(),
                volume_path: path.to_string(),
                ..Default::default()
            })
            .await;
        assert_code(expand, Code::NotFound);
    }
    driver.unstage(&id, Path::new(&staging)).await.unwrap();
    driver.delete(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kubelet_dir_keeps_node_paths_inside_it() {
    let Some(mut driver) = Driver::start("kubeletdir", SMALL_DRIVES).await else {
        return;
    };
    let kubelet = driver.dir.join("kubelet");
    driver
        .extra_args
        .push(format!("--kubelet-dir={}", path_str(&kubelet)));
    driver.restart().await;
    let cap = ext4();
    let volume = driver.create("pvc-kubelet", 1, cap.clone()).await.unwrap();
    let id = volume.volume_id.clone();
    // The fixture's usual paths are outside the kubelet directory.
    let err = assert_code(driver.stage(&volume, &cap).await, Code::InvalidArgument);
    assert!(
        err.message()
            .contains(&format!("is not inside {}", path_str(&kubelet))),
        "{}",
        err.message()
    );
    assert!(err.message().contains("--kubelet-dir"), "{}", err.message());
    let sibling = format!("{}2/staging", path_str(&kubelet));
    assert_code(
        stage_at(&driver, &volume, &cap, &sibling).await,
        Code::InvalidArgument,
    );
    assert_code(
        stage_at(&driver, &volume, &cap, &path_str(&kubelet)).await,
        Code::InvalidArgument,
    );

    let staging = path_str(&kubelet.join("plugins/csi/globalmount"));
    stage_at(&driver, &volume, &cap, &staging).await.unwrap();
    let outside = path_str(&driver.target_path(&id));
    let err = assert_code(
        publish_at(&driver, &volume, &cap, &staging, &outside).await,
        Code::InvalidArgument,
    );
    assert!(
        err.message().starts_with("target_path"),
        "{}",
        err.message()
    );
    let target = kubelet.join("pods/p1/volumes/mount");
    publish_at(&driver, &volume, &cap, &staging, &path_str(&target))
        .await
        .unwrap();
    assert_eq!(mounts_at(&target).len(), 1);
    driver.unpublish(&id, &target).await.unwrap();
    driver.unstage(&id, Path::new(&staging)).await.unwrap();
    driver.delete(&id).await.unwrap();
}

fn with_flags(mut cap: VolumeCapability, flags: &[&str]) -> VolumeCapability {
    if let Some(volume_capability::AccessType::Mount(mount)) = &mut cap.access_type {
        mount.mount_flags = flags.iter().map(ToString::to_string).collect();
    }
    cap
}

#[tokio::test(flavor = "multi_thread")]
async fn mount_flags_come_from_an_allow_list() {
    let Some(driver) = Driver::start("flags", SMALL_DRIVES).await else {
        return;
    };
    // A class (or PV) whose mount options are not on the list fails at creation.
    for (cap, flag) in [
        (with_flags(ext4(), &["noatime", "ro,exec"]), "ro,exec"),
        (with_flags(ext4(), &["dev"]), "dev"),
        (with_flags(ext4(), &["-o"]), "-o"),
        (with_flags(xfs(), &["data=ordered"]), "data=ordered"),
        (with_flags(ext4(), &["errors=panic"]), "errors=panic"),
    ] {
        let err = assert_code(
            driver.create("pvc-flags", 1, cap).await,
            Code::InvalidArgument,
        );
        assert!(
            err.message().contains(&format!("{flag:?}")),
            "{}",
            err.message()
        );
        assert!(
            err.message().contains("vdrive allows: ro, rw, noatime"),
            "{}",
            err.message()
        );
    }
    // The same flags at staging and publishing (a volume made with other ones).
    let volume = driver.create("pvc-flags", 1, ext4()).await.unwrap();
    let id = volume.volume_id.clone();
    for flags in [&["nosuid", "exec"][..], &["--bind"], &["noatime,dev"]] {
        let cap = with_flags(ext4(), flags);
        assert_code(driver.stage(&volume, &cap).await, Code::InvalidArgument);
    }
    assert_eq!(volume_devices(&driver.dir), Vec::<PathBuf>::new());
    // Allowed ones reach the mount.
    let cap = with_flags(ext4(), &["noatime", "nodev", "data=journal"]);
    let staging = driver.stage(&volume, &cap).await.unwrap();
    let options = String::from_utf8_lossy(&run(
        "findmnt",
        &["-n", "-o", "OPTIONS", "--mountpoint", &path_str(&staging)],
    ))
    .into_owned();
    assert!(
        options.contains("noatime") && options.contains("nodev"),
        "{options}"
    );
    let err = assert_code(
        driver
            .publish(&volume, &with_flags(ext4(), &["suid"]))
            .await,
        Code::InvalidArgument,
    );
    assert!(err.message().contains("\"suid\""), "{}", err.message());
    driver.unstage(&id, &staging).await.unwrap();
    driver.delete(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn create_volume_by_name_compares_parameters_access_and_topology() {
    let Some(driver) = Driver::start("same-name", SMALL_DRIVES).await else {
        return;
    };
    let volume = driver.create("pvc-same", 1, ext4()).await.unwrap();
    let again = driver.create("pvc-same", 1, ext4()).await.unwrap();
    assert_eq!(
        again.volume_id, volume.volume_id,
        "the same request is the same volume"
    );
    let conflict = |status: tonic::Status, words: &str| {
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
        assert!(status.message().contains(words), "{}", status.message());
    };
    conflict(
        driver.create("pvc-same", 1, xfs()).await.unwrap_err(),
        "it is an ext4 filesystem volume, not an xfs filesystem volume",
    );
    conflict(
        driver.create("pvc-same", 1, raw_block()).await.unwrap_err(),
        "not a raw block volume",
    );
    let mut params = k8s_params();
    params.insert("minDriveGiB".into(), "2".into());
    conflict(
        driver
            .create_with("pvc-same", 1, ext4(), params)
            .await
            .unwrap_err(),
        "minDriveGiB 1, not 2",
    );
    let mut params = k8s_params();
    params.insert("tlc".into(), "0".into());
    params.insert("qlc".into(), "1".into());
    conflict(
        driver
            .create_with("pvc-same", 1, ext4(), params)
            .await
            .unwrap_err(),
        "tlc:qlc 1:0, not tlc:qlc 0:1",
    );
    let on = |node: &str| {
        let mut controller = driver.controller();
        let request = CreateVolumeRequest {
            name: "pvc-same".into(),
            capacity_range: Some(CapacityRange {
                required_bytes: GIB,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![ext4()],
            parameters: k8s_params(),
            accessibility_requirements: Some(TopologyRequirement {
                requisite: vec![Topology {
                    segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node.to_string())]),
                }],
                preferred: vec![],
            }),
            ..Default::default()
        };
        async move { controller.create_volume(request).await }
    };
    conflict(
        on("another-node").await.unwrap_err(),
        "accessibility requirements (another-node) do not allow",
    );
    let here = on(&driver.node_id)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(here.volume_id, volume.volume_id);
    assert_eq!(driver.list().await.len(), 1);
    driver.delete(&volume.volume_id).await.unwrap();
}

/// What a stage killed while mkfs ran leaves on the volume's extent: an ext4
/// made with `uuid`, holding a file `stale` when `with_file`. Made with the
/// driver stopped.
fn half_made_filesystem(driver: &Driver, volume: &Volume, uuid: &str, with_file: bool) {
    let extent = extents(volume)[0].clone();
    let image = support::chaos::images(&driver.state_dir().join("simulated-drives"))
        .into_iter()
        .find(|(_, id)| *id == extent.drive)
        .map(|(path, _)| path)
        .expect("the volume's drive image");
    let offset = vdrive::node::signature::HEADER_BYTES + extent.offset_gib * GIB as u64;
    let run = |program: &str, args: &[&str]| {
        let out = Command::new(program).args(args).output().expect(program);
        assert!(out.status.success(), "{program} {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let device = run(
        "losetup",
        &[
            "--find",
            "--show",
            "--offset",
            &offset.to_string(),
            "--sizelimit",
            &(extent.size_gib * GIB as u64).to_string(),
            path_str(&image).as_str(),
        ],
    );
    let mount_at = driver.dir.join("half-made");
    let made = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-U", uuid, &device])
        .output()
        .is_ok_and(|o| o.status.success())
        && (!with_file || {
            fs::create_dir_all(&mount_at).is_ok()
                && Command::new("mount")
                    .args([device.as_str(), path_str(&mount_at).as_str()])
                    .status()
                    .is_ok_and(|s| s.success())
                && {
                    let written = fs::write(mount_at.join("stale"), b"half-made").is_ok();
                    let unmounted = Command::new("umount")
                        .arg(&mount_at)
                        .status()
                        .is_ok_and(|s| s.success());
                    written && unmounted
                }
        });
    run("losetup", &["-d", &device]);
    assert!(made, "make the half-made filesystem");
}

/// The stage's intent record, marked as a stage cut short mid-mkfs leaves it.
fn mark_formatting(driver: &Driver, volume: &Volume) -> PathBuf {
    let id = &volume.volume_id;
    let records = driver.state_dir().join("node").join("volumes");
    fs::create_dir_all(&records).unwrap();
    let parts: Vec<serde_json::Value> = extents(volume)
        .iter()
        .map(|e| {
            serde_json::json!({
                "virtual_uuid": e.virtual_uuid, "physical_uuid": e.drive, "type": e.drive_type,
                "offset_gib": e.offset_gib, "size_gib": e.size_gib,
            })
        })
        .collect();
    let record = serde_json::json!({
        "volume_id": id, "extents": parts, "block": false, "fs_type": null,
        "staging_path": path_str(&driver.staging_path(id)),
        "published": [], "single_writer": false, "formatting": true,
    });
    let path = records.join(format!("{id}.json"));
    fs::write(&path, record.to_string()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stage_cut_short_mid_format_formats_again() {
    let Some(mut driver) = Driver::start("midformat", SMALL_DRIVES).await else {
        return;
    };
    let cap = ext4();
    let volume = driver.create("halfmade", 1, cap.clone()).await.unwrap();
    let id = volume.volume_id.clone();
    assert!(driver.stop().is_some_and(|s| s.success()));
    let foreign = "0b3c5d7e-0000-4000-8000-00000000f00d";
    half_made_filesystem(&driver, &volume, foreign, false);

    // Without a record of the interrupted format, that is someone else's
    // filesystem: refused, never mounted.
    driver.spawn().await;
    let refused = driver
        .stage(&volume, &cap)
        .await
        .expect_err("a foreign filesystem");
    assert!(refused.message().contains(foreign), "{}", refused.message());
    assert!(driver.stop().is_some_and(|s| s.success()));

    // With the stage's intent record marked "formatting", it is the half-made
    // filesystem of that stage, over a device that was blank: formatted again.
    let record_path = mark_formatting(&driver, &volume);
    driver.spawn().await;
    let staging = driver.stage(&volume, &cap).await.expect("formatted again");
    fs::write(staging.join("hello"), b"written").unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(&record_path).unwrap()).unwrap();
    assert_eq!(record["formatting"], false, "{record}");
    assert_eq!(record["fs_type"], "ext4", "{record}");
    // Restaged, it is the volume's own filesystem now: kept, not formatted.
    driver.unstage(&id, &staging).await.unwrap();
    let staging = driver.stage(&volume, &cap).await.unwrap();
    assert_eq!(fs::read(staging.join("hello")).unwrap(), b"written");
    driver.unstage(&id, &staging).await.unwrap();
    driver.delete(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn unstaging_after_a_format_cut_short_wipes_the_half_made_filesystem() {
    let Some(mut driver) = Driver::start("midformat-unstage", SMALL_DRIVES).await else {
        return;
    };
    let cap = ext4();
    let volume = driver.create("halfmade", 1, cap.clone()).await.unwrap();
    let id = volume.volume_id.clone();
    assert!(driver.stop().is_some_and(|s| s.success()));
    // The half-made filesystem carries the volume's own uuid, as vdrive's mkfs
    // writes it: only the record's mark tells it from a finished one.
    half_made_filesystem(&driver, &volume, &id, true);
    mark_formatting(&driver, &volume);

    // The CO unstages before staging again (kubelet may): the mark goes with
    // the record, so the half-made filesystem must go too.
    driver.spawn().await;
    driver
        .unstage(&id, &driver.staging_path(&id))
        .await
        .expect("unstage after a cut-short stage");
    let staging = driver.stage(&volume, &cap).await.expect("stage");
    assert!(
        !staging.join("stale").exists(),
        "the half-made filesystem was mounted as the volume's"
    );
    driver.unstage(&id, &staging).await.unwrap();
    driver.delete(&id).await.unwrap();
}
