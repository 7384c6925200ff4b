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
//! Needs root (loop devices, mounts) and mkfs.ext4. The driver runs in the
//! integration tests' fixture (`tests/support/driver.rs`): one temp directory,
//! whose guard stops the driver and removes the mounts, loop devices and the
//! directory, also when a benchmark panics. After the run the medians and a
//! per-call breakdown (means, timed and untimed calls alike) are printed.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group};
use support::driver::{Driver, GIB, k8s_params};
use tonic::transport::Channel;
use vdrive::csi::capability;
use vdrive::csi::proto::controller_client::ControllerClient;
use vdrive::csi::proto::node_client::NodeClient;
use vdrive::csi::proto::volume_capability::access_mode::Mode;
use vdrive::csi::proto::{
    CapacityRange, CreateVolumeRequest, DeleteVolumeRequest, NodePublishVolumeRequest,
    NodeStageVolumeRequest, NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest, VolumeCapability,
};

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

    fn connect(driver: &Driver) -> Csi {
        Csi {
            controller: driver.controller(),
            node: driver.node(),
            parameters: k8s_params(),
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
    // Mount volumes only: no block volumes, so no --unsafe-loop-block-volumes.
    let driver = rt
        .block_on(Driver::start_with("csi-bench", SIMULATED_DRIVES, &[]))
        .expect("the csi bench needs root and /dev/loop-control");
    let csi = Csi::connect(&driver);

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
