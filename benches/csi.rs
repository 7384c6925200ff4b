//! The CSI driver end to end: the real `vdrive all-in-one` binary on four sparse
//! simulated 64 GiB TLC drives, driven over its unix socket with the generated
//! gRPC clients, as a CO would.
//!
//! - `csi_controller/create_delete_sequential`: one CreateVolume (1 GiB) and its
//!   DeleteVolume (which erases the extent) per iteration.
//! - `csi_controller/create_delete_32_concurrent`: 32 tasks each creating and
//!   deleting its own volume; time per batch, throughput in volumes/s.
//! - `csi_node/stage_publish_ext4_first`: NodeStageVolume (loop device, blkid,
//!   mkfs.ext4, mount) + NodePublishVolume (bind mount) of a fresh volume; the
//!   create, unpublish, unstage and delete around it are not timed.
//! - `csi_node/stage_publish_ext4_restage`: the same for a volume already
//!   formatted (loop device, blkid, mount, bind mount).
//!
//! Needs root (loop devices, mounts) and mkfs.ext4. Everything lives in one temp
//! directory; a guard stops the driver and removes the mounts, loop devices and
//! the directory, also when a benchmark panics. After the run the medians and
//! a per-call breakdown (means, timed and untimed calls alike) are printed.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::Channel;
use vdrive::csi::capability;
use vdrive::csi::proto::controller_client::ControllerClient;
use vdrive::csi::proto::node_client::NodeClient;
use vdrive::csi::proto::volume_capability::access_mode::Mode;
use vdrive::csi::proto::{
    CapacityRange, CreateVolumeRequest, DeleteVolumeRequest, NodePublishVolumeRequest,
    NodeStageVolumeRequest, NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest, VolumeCapability,
};

const GIB: i64 = 1 << 30;
const SIMULATED_DRIVES: &str = "tlc:64x4";
const CONCURRENT: usize = 32;
const CONTROLLER_GROUP: &str = "csi_controller";
const NODE_GROUP: &str = "csi_node";

/// Per-call durations across all iterations (warm-up included), by benchmark
/// and call.
type Calls = BTreeMap<(&'static str, &'static str), (Duration, u32)>;
static CALLS: Mutex<Calls> = Mutex::new(BTreeMap::new());
static NAMES: AtomicU64 = AtomicU64::new(0);

fn record(bench: &'static str, call: &'static str, took: Duration) {
    let mut calls = CALLS.lock().unwrap_or_else(|p| p.into_inner());
    let entry = calls.entry((bench, call)).or_default();
    entry.0 += took;
    entry.1 += 1;
}

fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", NAMES.fetch_add(1, Ordering::Relaxed))
}

/// The running driver and its temp directory. Dropping it (also while a panic
/// unwinds) stops the driver, then removes whatever is left: mounts under the
/// directory, loop devices over the volumes, loop devices over its drive images,
/// and the directory itself.
struct Driver {
    child: Option<Child>,
    dir: PathBuf,
    endpoint: String,
}

impl Driver {
    fn start() -> Driver {
        let dir = tempfile::Builder::new()
            .prefix("vdrive-bench-")
            .tempdir_in("/tmp")
            .expect("temp dir")
            .keep();
        // Loop devices report their backing files by canonical path.
        let dir = std::fs::canonicalize(&dir).expect("canonical temp dir");
        let endpoint = format!("unix://{}", dir.join("csi.sock").display());
        let log = File::create(dir.join("vdrive.log")).expect("driver log");
        let spawned = Command::new(env!("CARGO_BIN_EXE_vdrive"))
            .arg("all-in-one")
            .args(["--endpoint", &endpoint])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--simulate-drives", SIMULATED_DRIVES])
            .args(["--node-id", "bench", "--pool", "k8s"])
            // A plain-text log, read back when something fails.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("driver log"))
            .stderr(log)
            .spawn();
        // The guard exists before anything else can fail.
        let mut driver = Driver {
            child: None,
            dir,
            endpoint,
        };
        driver.child = Some(spawned.expect("start vdrive all-in-one"));
        driver.wait_for_socket();
        driver
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("csi.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("vdrive.log")).unwrap_or_default()
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::fs::symlink_metadata(self.socket()).is_ok_and(|m| m.file_type().is_socket()) {
                return;
            }
            let child = self.child.as_mut().expect("driver child");
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "vdrive all-in-one exited ({status}) before serving; its log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "vdrive all-in-one did not create {} within 60 s; its log:\n{}",
                self.socket().display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => {
                    eprintln!("csi bench: vdrive did not stop within 20 s of SIGTERM; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Mount points at or under the temp directory, deepest first.
    fn mounts(&self) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = vdrive::node::mounts::mountinfo()
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|target| target.starts_with(&self.dir))
            .collect();
        found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        found.dedup();
        found
    }

    fn unmount_all(&self) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        // Stacked mounts show up again once the top one is gone.
        for _ in 0..10 {
            let mounts = self.mounts();
            if mounts.is_empty() {
                break;
            }
            for target in mounts {
                let plain = nix::mount::umount(&target);
                if plain.is_err() {
                    let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
                }
                removed.push(target);
            }
        }
        removed
    }

    /// Loop devices over the temp directory's drive images, and the volume loop
    /// devices over those, volumes first.
    fn loops(&self) -> Vec<PathBuf> {
        let all = loop_devices();
        let drives: Vec<PathBuf> = all
            .iter()
            .filter(|(_, backing)| backing.starts_with(&self.dir))
            .map(|(device, _)| device.clone())
            .collect();
        let volumes = all
            .iter()
            .filter(|(_, backing)| drives.contains(backing))
            .map(|(device, _)| device.clone());
        volumes.chain(drives.iter().cloned()).collect()
    }

    fn detach_all(&self) -> Vec<PathBuf> {
        let mut detached = Vec::new();
        for _ in 0..20 {
            let loops = self.loops();
            if loops.is_empty() {
                break;
            }
            for device in loops {
                let ok = Command::new("losetup")
                    .arg("-d")
                    .arg(&device)
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok && !detached.contains(&device) {
                    detached.push(device);
                }
            }
            // The kernel may defer a detach while udev still probes the device.
            std::thread::sleep(Duration::from_millis(100));
        }
        detached
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("csi bench: the driver's last log lines:");
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
        }
        let unmounted = self.unmount_all();
        let detached = self.detach_all();
        if !unmounted.is_empty() || !detached.is_empty() {
            eprintln!(
                "csi bench: cleaned up after the driver: unmounted {unmounted:?}, detached {detached:?}"
            );
        }
        let left_loops = self.loops();
        let left_mounts = self.mounts();
        if left_mounts.is_empty() {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                eprintln!("csi bench: cannot remove {}: {e}", self.dir.display());
            }
        } else {
            eprintln!(
                "csi bench: {} kept: still mounted there: {left_mounts:?}",
                self.dir.display()
            );
        }
        if !left_loops.is_empty() {
            eprintln!("csi bench: loop devices still attached: {left_loops:?}");
        }
    }
}

/// Every bound loop device and its backing file or device, from sysfs.
fn loop_devices() -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                return None;
            }
            let backing = std::fs::read_to_string(entry.path().join("loop/backing_file")).ok()?;
            let backing = backing.trim_end_matches('\n');
            let backing = backing.strip_suffix(" (deleted)").unwrap_or(backing);
            Some((Path::new("/dev").join(name), PathBuf::from(backing)))
        })
        .collect()
}

/// A volume as CreateVolume returned it.
#[derive(Clone)]
struct Vol {
    id: String,
    context: HashMap<String, String>,
}

/// Clients on one connection, and what every request carries.
#[derive(Clone)]
struct Csi {
    controller: ControllerClient<Channel>,
    node: NodeClient<Channel>,
    parameters: HashMap<String, String>,
    capability: VolumeCapability,
    dir: PathBuf,
    /// The benchmark the calls are recorded under.
    bench: &'static str,
}

impl Csi {
    fn for_bench(&self, bench: &'static str) -> Csi {
        Csi {
            bench,
            ..self.clone()
        }
    }

    async fn connect(driver: &Driver) -> Csi {
        let channel = vdrive::csi::server::connect(&driver.endpoint)
            .await
            .expect("connect to the driver's socket");
        let parameters = vdrive::csi::params::preset("k8s-pool-storage")
            .expect("the k8s-pool-storage preset")
            .parameters
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Csi {
            controller: ControllerClient::new(channel.clone()),
            node: NodeClient::new(channel),
            parameters,
            capability: capability::mount("ext4", Mode::SingleNodeWriter),
            dir: driver.dir.clone(),
            bench: "setup",
        }
    }

    fn staging(&self, vol: &Vol) -> String {
        self.dir.join("staging").join(&vol.id).display().to_string()
    }

    fn target(&self, vol: &Vol) -> String {
        self.dir.join("publish").join(&vol.id).display().to_string()
    }

    async fn create(&mut self, name: String) -> Vol {
        let start = Instant::now();
        let volume = self
            .controller
            .create_volume(CreateVolumeRequest {
                name,
                capacity_range: Some(CapacityRange {
                    required_bytes: GIB,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![self.capability.clone()],
                parameters: self.parameters.clone(),
                ..Default::default()
            })
            .await
            .expect("CreateVolume")
            .into_inner()
            .volume
            .expect("CreateVolume answers a volume");
        record(self.bench, "CreateVolume", start.elapsed());
        Vol {
            id: volume.volume_id,
            context: volume.volume_context,
        }
    }

    async fn delete(&mut self, vol: &Vol) {
        let start = Instant::now();
        self.controller
            .delete_volume(DeleteVolumeRequest {
                volume_id: vol.id.clone(),
                ..Default::default()
            })
            .await
            .expect("DeleteVolume");
        record(self.bench, "DeleteVolume", start.elapsed());
    }

    async fn stage(&mut self, vol: &Vol) {
        let start = Instant::now();
        self.node
            .node_stage_volume(NodeStageVolumeRequest {
                volume_id: vol.id.clone(),
                staging_target_path: self.staging(vol),
                volume_capability: Some(self.capability.clone()),
                volume_context: vol.context.clone(),
                ..Default::default()
            })
            .await
            .expect("NodeStageVolume");
        record(self.bench, "NodeStageVolume", start.elapsed());
    }

    async fn publish(&mut self, vol: &Vol) {
        let start = Instant::now();
        self.node
            .node_publish_volume(NodePublishVolumeRequest {
                volume_id: vol.id.clone(),
                staging_target_path: self.staging(vol),
                target_path: self.target(vol),
                volume_capability: Some(self.capability.clone()),
                volume_context: vol.context.clone(),
                ..Default::default()
            })
            .await
            .expect("NodePublishVolume");
        record(self.bench, "NodePublishVolume", start.elapsed());
    }

    async fn unpublish(&mut self, vol: &Vol) {
        let start = Instant::now();
        self.node
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: vol.id.clone(),
                target_path: self.target(vol),
            })
            .await
            .expect("NodeUnpublishVolume");
        record(self.bench, "NodeUnpublishVolume", start.elapsed());
    }

    async fn unstage(&mut self, vol: &Vol) {
        let start = Instant::now();
        self.node
            .node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: vol.id.clone(),
                staging_target_path: self.staging(vol),
            })
            .await
            .expect("NodeUnstageVolume");
        record(self.bench, "NodeUnstageVolume", start.elapsed());
    }

    /// Stage + publish, timed; returns how long the two took.
    async fn stage_publish(&mut self, vol: &Vol) -> Duration {
        let start = Instant::now();
        self.stage(vol).await;
        self.publish(vol).await;
        start.elapsed()
    }

    async fn unpublish_unstage(&mut self, vol: &Vol) {
        self.unpublish(vol).await;
        self.unstage(vol).await;
    }
}

fn csi(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let driver = Driver::start();
    let csi = rt.block_on(Csi::connect(&driver));

    let mut group = c.benchmark_group(CONTROLLER_GROUP);
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    group.bench_function("create_delete_sequential", |b| {
        b.to_async(&rt).iter_custom(|iterations| {
            let mut csi = csi.for_bench("create_delete_sequential");
            async move {
                let start = Instant::now();
                for _ in 0..iterations {
                    let vol = csi.create(unique_name("seq")).await;
                    csi.delete(&vol).await;
                }
                start.elapsed()
            }
        })
    });

    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(CONCURRENT as u64));
    group.bench_function(format!("create_delete_{CONCURRENT}_concurrent"), |b| {
        b.to_async(&rt).iter_custom(|iterations| {
            let csi = csi.for_bench("create_delete_32_concurrent");
            async move {
                let start = Instant::now();
                for _ in 0..iterations {
                    let mut tasks = tokio::task::JoinSet::new();
                    for _ in 0..CONCURRENT {
                        let mut csi = csi.clone();
                        tasks.spawn(async move {
                            let vol = csi.create(unique_name("batch")).await;
                            csi.delete(&vol).await;
                        });
                    }
                    // A failed task panics here, with its message.
                    while let Some(done) = tasks.join_next().await {
                        if let Err(e) = done {
                            std::panic::resume_unwind(e.into_panic());
                        }
                    }
                }
                start.elapsed()
            }
        })
    });
    group.finish();

    let mut group = c.benchmark_group(NODE_GROUP);
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("stage_publish_ext4_first", |b| {
        b.to_async(&rt).iter_custom(|iterations| {
            let mut csi = csi.for_bench("stage_publish_ext4_first");
            async move {
                let mut timed = Duration::ZERO;
                for _ in 0..iterations {
                    let vol = csi.create(unique_name("first")).await;
                    timed += csi.stage_publish(&vol).await;
                    csi.unpublish_unstage(&vol).await;
                    csi.delete(&vol).await;
                }
                timed
            }
        })
    });

    let mut setup = csi.for_bench("restage setup");
    let restaged = rt.block_on(async {
        let vol = setup.create(unique_name("restage")).await;
        setup.stage_publish(&vol).await;
        setup.unpublish_unstage(&vol).await;
        vol
    });
    group.bench_function("stage_publish_ext4_restage", |b| {
        b.to_async(&rt).iter_custom(|iterations| {
            let mut csi = csi.for_bench("stage_publish_ext4_restage");
            let vol = restaged.clone();
            async move {
                let mut timed = Duration::ZERO;
                for _ in 0..iterations {
                    timed += csi.stage_publish(&vol).await;
                    csi.unpublish_unstage(&vol).await;
                }
                timed
            }
        })
    });
    group.finish();
    rt.block_on(setup.delete(&restaged));
    drop(driver);
}

criterion_group!(benches, csi);

fn main() {
    let started = SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    report(started);
}

/// Where criterion keeps its results: $CRITERION_HOME, else `criterion/` in the
/// target directory this bench binary was built into (target/release/deps/csi-…).
fn criterion_home() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(PathBuf::from(home));
    }
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.join("criterion"))
}

/// Criterion's median time per iteration of one benchmark from this run, in ns.
fn median_ns(home: &Path, group: &str, bench: &str, since: SystemTime) -> Option<f64> {
    let path = home.join(group).join(bench).join("new/estimates.json");
    let fresh = std::fs::metadata(&path).ok()?.modified().ok()? >= since;
    if !fresh {
        return None;
    }
    let estimates: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    estimates["median"]["point_estimate"].as_f64()
}

fn report(started: SystemTime) {
    let Some(home) = criterion_home() else {
        return;
    };
    let concurrent = format!("create_delete_{CONCURRENT}_concurrent");
    let rows = [
        (CONTROLLER_GROUP, "create_delete_sequential", 1),
        (CONTROLLER_GROUP, concurrent.as_str(), CONCURRENT),
        (NODE_GROUP, "stage_publish_ext4_first", 1),
        (NODE_GROUP, "stage_publish_ext4_restage", 1),
    ];
    let mut lines = Vec::new();
    for (group, bench, volumes) in rows {
        let Some(ns) = median_ns(&home, group, bench, started) else {
            continue;
        };
        let ms = ns / 1e6;
        lines.push(if volumes > 1 {
            format!(
                "  {group}/{bench}: {ms:.2} ms per batch of {volumes} = {:.0} volumes/s ({:.2} ms per volume)",
                volumes as f64 * 1e9 / ns,
                ms / volumes as f64
            )
        } else {
            format!("  {group}/{bench}: {ms:.2} ms")
        });
    }
    if lines.is_empty() {
        return;
    }
    eprintln!("\ncsi bench medians (criterion, per iteration):");
    for line in lines {
        eprintln!("{line}");
    }
    let calls = CALLS.lock().unwrap_or_else(|p| p.into_inner());
    eprintln!("mean per call, all iterations incl. warm-up and untimed calls:");
    for ((bench, call), (total, count)) in calls.iter() {
        eprintln!(
            "  {bench:<28} {call:<20} {:>9.2} ms  ({count} calls)",
            total.as_secs_f64() * 1e3 / f64::from((*count).max(1))
        );
    }
}
