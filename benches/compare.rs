//! vdrive against csi-driver-host-path, the Kubernetes CSI project's example
//! driver, under the same provisioning load: CreateVolume of a 1 GiB volume and
//! its DeleteVolume, by 1, 32 and 256 workers at once, for mount (ext4) and for
//! block volumes. The two drivers run side by side for the whole bench and take
//! turns, round by round (vdrive, host-path, vdrive, …), so both see the machine
//! in the same state; each round makes fresh volumes and deletes them all.
//! Every round's figures are printed as it ends, then a table of the medians
//! and the ratio vdrive / host-path. Beside the rates, each driver's CPU time
//! per create + delete pair (its process's user and system time over the
//! round): on a machine whose cores are busy, that is what bounds the rate.
//!
//! What each driver does for one volume:
//! - vdrive (`all-in-one` on simulated TLC drives, the `k8s-pool-storage`
//!   class): CreateVolume plans an extent and commits the claim to its ledger
//!   (fsync); DeleteVolume erases the extent (a hole punched in the drive image,
//!   flushed) and commits the release. Mount and block differ only in the
//!   capability recorded.
//! - host-path: CreateVolume makes a directory (mount), or allocates a 1 GiB
//!   file with fallocate and binds a loop device to it (block), then rewrites its
//!   state file (no fsync); DeleteVolume undoes that. One lock serialises all of
//!   its calls.
//!
//! host-path is not part of this repository: build its `hostpathplugin` command
//! from csi-driver-host-path's sources (`go build ./cmd/hostpathplugin` in a
//! checkout of a release) and name the binary in `VDRIVE_BENCH_HOSTPATH`:
//!
//! ```sh
//! VDRIVE_BENCH_HOSTPATH=/path/to/hostpathplugin cargo bench --bench compare
//! ```
//!
//! `VDRIVE_BENCH_LOADS=mount:32` (a comma-separated list) runs only those loads.
//!
//! Needs root (loop devices, mounts), mkfs.ext4 and mount. host-path keeps its
//! volumes in a sparse ext4 image of its own, mounted in its temp dir, as
//! vdrive's simulated drives are sparse images: 256 fallocated GiB at once cost
//! no disk space. At the end both drivers must list no volume, host-path's
//! state dir must hold no volume, and once both are stopped no loop device or
//! mount of either may be left.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "common/load.rs"]
mod load;

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use load::{CreateLoad, PairReport, walk_volumes};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use support::devices::{mounts_under, release_and_remove, volume_devices};
use support::driver::{Driver, GIB, ext4, k8s_params, raw_block};
use tonic::transport::Channel;
use vdrive::csi::proto::VolumeCapability;
use vdrive::csi::proto::controller_client::ControllerClient;
use vdrive::node::loopdev;

/// The environment variable naming the host-path driver's binary.
const HOSTPATH_BINARY_VAR: &str = "VDRIVE_BENCH_HOSTPATH";
/// Optional: only these loads, e.g. `mount:32,block:1` (all six when unset).
const LOADS_VAR: &str = "VDRIVE_BENCH_LOADS";
/// Rounds per driver and load; the median of them is reported.
const ROUNDS: usize = 5;
/// Workers at once, and the volumes each round of that many workers makes:
/// enough for a steady state, few enough that the whole bench takes minutes.
const LOADS: [(usize, usize); 3] = [(1, 400), (32, 800), (256, 1024)];
/// Four sparse 128 GiB TLC drives: 256 volumes of 1 GiB at once fit with room.
const VDRIVE_DRIVES: &str = "tlc:128x4";
/// host-path's sparse filesystem: room for 256 fallocated GiB and its metadata.
const HOSTPATH_FS_GIB: u64 = 320;
const HOSTPATH_DRIVER_NAME: &str = "hostpath.csi.k8s.io";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Mount,
    Block,
}

impl Access {
    fn name(self) -> &'static str {
        match self {
            Access::Mount => "mount",
            Access::Block => "block",
        }
    }

    fn capability(self) -> VolumeCapability {
        match self {
            Access::Mount => ext4(),
            Access::Block => raw_block(),
        }
    }
}

fn main() -> ExitCode {
    // `cargo test --benches` runs bench binaries without `--bench`: nothing to
    // check here beyond that it builds.
    if !std::env::args().any(|a| a == "--bench") {
        println!("compare: a benchmark; run it with `cargo bench --bench compare`");
        return ExitCode::SUCCESS;
    }
    let Some(hostpath_binary) = std::env::var_os(HOSTPATH_BINARY_VAR).map(PathBuf::from) else {
        eprintln!(
            "compare: no comparison without csi-driver-host-path.\n\
             Build its hostpathplugin command from the csi-driver-host-path sources \
             (in a checkout of a release: go build -o hostpathplugin ./cmd/hostpathplugin) \
             and run this again with {HOSTPATH_BINARY_VAR}=/path/to/hostpathplugin."
        );
        return ExitCode::FAILURE;
    };
    if !hostpath_binary.is_file() {
        eprintln!(
            "compare: {HOSTPATH_BINARY_VAR}={} is not a file",
            hostpath_binary.display()
        );
        return ExitCode::FAILURE;
    }
    if !nix::unistd::geteuid().is_root() || !Path::new("/dev/loop-control").exists() {
        eprintln!("compare: needs root and /dev/loop-control (loop devices, mounts)");
        return ExitCode::FAILURE;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dirs = rt.block_on(compare(&hostpath_binary));
    // Both drivers are stopped and their temp dirs released by now.
    let left = leftovers(&dirs);
    if left.is_empty() {
        println!("\nclean: no volume, loop device, mount or temp dir of either driver is left");
        ExitCode::SUCCESS
    } else {
        eprintln!("\ncompare: left behind: {left:?}");
        ExitCode::FAILURE
    }
}

/// The loads `VDRIVE_BENCH_LOADS` names, or all of them; panics on a load
/// that is not one of the six, naming them.
fn chosen_loads() -> Vec<(Access, usize)> {
    let all: Vec<(Access, usize)> = [Access::Mount, Access::Block]
        .into_iter()
        .flat_map(|a| LOADS.map(|(c, _)| (a, c)))
        .collect();
    let Ok(wanted) = std::env::var(LOADS_VAR) else {
        return all;
    };
    wanted
        .split(',')
        .map(|load| {
            all.iter()
                .copied()
                .find(|(a, c)| format!("{}:{c}", a.name()) == load.trim())
                .unwrap_or_else(|| {
                    panic!(
                        "{LOADS_VAR}: {load:?} is not a load; the loads are {}",
                        all.iter()
                            .map(|(a, c)| format!("{}:{c}", a.name()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
        })
        .collect()
}

/// Starts both drivers, runs every load on both, checks that both are empty,
/// and stops them; answers their temp dirs, to check that nothing is left.
async fn compare(hostpath_binary: &Path) -> [PathBuf; 2] {
    // This machine's kernel has no device-mapper: vdrive's block volumes are
    // loop devices, which the fixture's default flags allow.
    let vdrive = Driver::start("compare", VDRIVE_DRIVES)
        .await
        .expect("root was checked");
    let hostpath = HostPath::start(hostpath_binary).await;
    println!(
        "vdrive all-in-one ({VDRIVE_DRIVES}) in {}\nhost-path ({}) in {}",
        vdrive.dir.display(),
        hostpath_binary.display(),
        hostpath.dir.display()
    );
    let drivers = [
        Side {
            name: "vdrive",
            endpoint: vdrive.endpoint.clone(),
            parameters: k8s_params(),
            pid: vdrive.child.as_ref().expect("vdrive runs").id(),
        },
        Side {
            name: "host-path",
            endpoint: hostpath.endpoint.clone(),
            // host-path reads no parameter but `kind`, which needs --capacity.
            parameters: HashMap::new(),
            pid: hostpath.child.as_ref().expect("host-path runs").id(),
        },
    ];
    let started = Instant::now();
    let mut rows = Vec::new();
    let chosen = chosen_loads();
    for access in [Access::Mount, Access::Block] {
        for (concurrency, volumes) in LOADS {
            if !chosen.contains(&(access, concurrency)) {
                continue;
            }
            println!(
                "\n{} c={concurrency}: {volumes} volumes per round",
                access.name()
            );
            let mut figures: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
            for round in 1..=ROUNDS {
                for (side, figures) in drivers.iter().zip(figures.iter_mut()) {
                    let load = CreateLoad {
                        endpoint: side.endpoint.clone(),
                        parameters: side.parameters.clone(),
                        capability: access.capability(),
                        required_bytes: GIB,
                        topologies: Vec::new(),
                        concurrency,
                        count: volumes,
                        name_prefix: format!(
                            "{}-{concurrency}-r{round}-{}",
                            access.name(),
                            side.name
                        ),
                    };
                    let cpu_before = cpu_time(side.pid);
                    let report = load.run_with_deletes().await;
                    let cpu_per_pair =
                        cpu_time(side.pid).saturating_sub(cpu_before) / volumes as u32;
                    assert!(
                        report.failures.is_empty(),
                        "{} round {round}: {} calls failed (volumes left: {:?}), the first: {:?}",
                        side.name,
                        report.failures.len(),
                        report.kept,
                        report.failures[0]
                    );
                    println!(
                        "  round {round} {:<9} {}  CPU {} a pair",
                        side.name,
                        describe(&report),
                        ms(cpu_per_pair)
                    );
                    figures.push(Round {
                        report,
                        cpu_per_pair,
                    });
                }
            }
            rows.push(Row::new(access, concurrency, &figures));
        }
    }
    println!(
        "\nall rounds in {:.0} s; medians of {ROUNDS} rounds per driver \
         (volumes/s: CreateVolume + DeleteVolume pairs per second):\n",
        started.elapsed().as_secs_f64()
    );
    print_table(&rows);

    let listed = [
        walk_volumes(&vdrive.controller(), 100).await.0,
        walk_volumes(&hostpath.controller().await, 100).await.0,
    ];
    assert_eq!(
        listed,
        [0, 0],
        "ListVolumes after the bench: vdrive, host-path"
    );
    let volume_files = hostpath.volume_files();
    assert!(
        volume_files.is_empty(),
        "host-path's state dir still holds volumes: {volume_files:?}"
    );
    assert!(
        volume_devices(&vdrive.dir).is_empty(),
        "vdrive left volume loop devices"
    );
    assert!(
        hostpath.volume_loops().is_empty(),
        "host-path left loop devices over its volumes"
    );
    let dirs = [vdrive.dir.clone(), hostpath.dir.clone()];
    drop(vdrive);
    drop(hostpath);
    dirs
}

/// One driver as the load sees it.
struct Side {
    name: &'static str,
    endpoint: String,
    parameters: HashMap<String, String>,
    /// The driver's process, whose CPU time each round reads.
    pid: u32,
}

/// One driver's round: its calls, and the CPU its process spent per create +
/// delete pair (the kernel's own threads, such as loop workers and the
/// journal, work for it uncounted).
struct Round {
    report: PairReport,
    cpu_per_pair: Duration,
}

/// The user and system CPU time process `pid` (all its threads) has used so
/// far, from /proc/<pid>/stat, to the kernel's clock tick (10 ms here; a round
/// takes hundreds of them).
fn cpu_time(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    // The fields after the command name (which ends at the last ')'): the
    // state first, so utime and stime (fields 14 and 15) are the 12th and 13th.
    let after_name = stat.rfind(')').map_or("", |at| &stat[at + 1..]);
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| {
            f.parse()
                .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {f:?}: {e}"))
        })
        .collect();
    let ticks: u64 = fields.iter().sum();
    // SAFETY: sysconf reads a configuration value and touches no memory of ours.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / per_second)
}

fn describe(report: &PairReport) -> String {
    format!(
        "{:>7.0} volumes/s  create p50 {:>8} p99 {:>8}  delete p50 {:>8} p99 {:>8}",
        report.pairs.per_second(),
        ms(report.create.percentile(50.0)),
        ms(report.create.percentile(99.0)),
        ms(report.delete.percentile(50.0)),
        ms(report.delete.percentile(99.0)),
    )
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1e3)
}

/// The medians of one load's rounds, per driver.
struct Row {
    access: Access,
    concurrency: usize,
    /// vdrive, host-path.
    rate: [f64; 2],
    create_p50: [Duration; 2],
    create_p99: [Duration; 2],
    delete_p50: [Duration; 2],
    delete_p99: [Duration; 2],
    cpu_per_pair: [Duration; 2],
}

impl Row {
    fn new(access: Access, concurrency: usize, figures: &[Vec<Round>; 2]) -> Row {
        let each = |f: &dyn Fn(&Round) -> Duration| {
            figures
                .each_ref()
                .map(|rounds| median(rounds.iter().map(f).collect()))
        };
        Row {
            access,
            concurrency,
            rate: figures.each_ref().map(|rounds| {
                let mut rates: Vec<f64> =
                    rounds.iter().map(|r| r.report.pairs.per_second()).collect();
                rates.sort_by(f64::total_cmp);
                rates[rates.len() / 2]
            }),
            create_p50: each(&|r| r.report.create.percentile(50.0)),
            create_p99: each(&|r| r.report.create.percentile(99.0)),
            delete_p50: each(&|r| r.report.delete.percentile(50.0)),
            delete_p99: each(&|r| r.report.delete.percentile(99.0)),
            cpu_per_pair: each(&|r| r.cpu_per_pair),
        }
    }
}

/// The middle value (of an odd count; the upper middle of an even one).
fn median(mut values: Vec<Duration>) -> Duration {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn print_table(rows: &[Row]) {
    println!(
        "| access | c | vdrive volumes/s | host-path volumes/s | vdrive / host-path | \
         create p50 / p99, vdrive | create p50 / p99, host-path | \
         delete p50 / p99, vdrive | delete p50 / p99, host-path | \
         CPU a pair, vdrive / host-path |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {} / {} | {} / {} | {} / {} | {} / {} | {} / {} |",
            row.access.name(),
            row.concurrency,
            row.rate[0],
            row.rate[1],
            row.rate[0] / row.rate[1],
            ms(row.create_p50[0]),
            ms(row.create_p99[0]),
            ms(row.create_p50[1]),
            ms(row.create_p99[1]),
            ms(row.delete_p50[0]),
            ms(row.delete_p99[0]),
            ms(row.delete_p50[1]),
            ms(row.delete_p99[1]),
            ms(row.cpu_per_pair[0]),
            ms(row.cpu_per_pair[1]),
        );
    }
}

/// Loop devices and mounts of either temp dir, and the dirs themselves, still
/// there.
fn leftovers(dirs: &[PathBuf]) -> Vec<String> {
    let mut left = Vec::new();
    for dir in dirs {
        for device in loopdev::list().expect("list the loop devices") {
            if device.backing.starts_with(dir) {
                left.push(format!(
                    "{} over {}",
                    device.device.display(),
                    device.backing.display()
                ));
            }
        }
        left.extend(
            mounts_under(dir)
                .into_iter()
                .map(|m| format!("mount {}", m.target.display())),
        );
        if dir.exists() {
            left.push(format!("dir {}", dir.display()));
        }
    }
    left
}

/// csi-driver-host-path's plugin, for one node, as its deployment starts it,
/// with its state dir on a sparse ext4 image mounted in a temp dir of its own.
/// Dropping it (also while a panic unwinds) stops the plugin, detaches the loop
/// devices it left over its block volumes, unmounts the image and removes the
/// temp dir.
struct HostPath {
    /// The temp dir (canonical): socket, log, image, and the image's mount point.
    dir: PathBuf,
    endpoint: String,
    child: Option<Child>,
}

impl HostPath {
    async fn start(binary: &Path) -> HostPath {
        let dir = tempfile::Builder::new()
            .prefix("vdrive-bench-hostpath-")
            .tempdir()
            .expect("create a temp dir")
            .keep();
        let dir = fs::canonicalize(&dir).expect("resolve the temp dir");
        // The guard exists before anything is mounted or started.
        let mut hostpath = HostPath {
            endpoint: format!("unix://{}", dir.join("csi.sock").display()),
            dir,
            child: None,
        };
        hostpath.make_state_fs();
        hostpath.spawn(binary).await;
        hostpath
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("hostpath.log")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A sparse ext4 image mounted at the state dir. Few inodes (it holds a few
    /// hundred files), so there are no inode tables to initialise in the background
    /// while the bench runs.
    fn make_state_fs(&self) {
        let image = self.dir.join("state.img");
        File::create(&image)
            .and_then(|f| f.set_len(HOSTPATH_FS_GIB << 30))
            .expect("create host-path's sparse image");
        support::driver::run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-N",
                "4096",
                "-E",
                "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
                &support::driver::path_str(&image),
            ],
        );
        fs::create_dir(self.state_dir()).expect("create host-path's state dir");
        support::driver::run(
            "mount",
            &[
                "-o",
                "loop,noinit_itable",
                &support::driver::path_str(&image),
                &support::driver::path_str(&self.state_dir()),
            ],
        );
    }

    async fn spawn(&mut self, binary: &Path) {
        let log = File::create(self.log_path()).expect("create host-path's log");
        let child = Command::new(binary)
            .arg(format!("--endpoint={}", self.endpoint))
            .arg(format!("--nodeid=bench-{}", std::process::id()))
            .arg(format!("--drivername={HOSTPATH_DRIVER_NAME}"))
            .arg(format!("--statedir={}", self.state_dir().display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("start hostpathplugin");
        self.child = Some(child);
        let log_path = self.log_path();
        support::driver::wait_until_serving(
            &mut self.child,
            &self.endpoint,
            "hostpathplugin",
            || fs::read_to_string(&log_path).unwrap_or_default(),
        )
        .await;
    }

    async fn controller(&self) -> ControllerClient<Channel> {
        let channel = vdrive::csi::server::connect(&self.endpoint)
            .await
            .expect("connect to host-path");
        ControllerClient::new(channel)
    }

    /// What the state dir holds besides host-path's state file and ext4's own
    /// lost+found: volumes (directories, block files) or snapshots.
    fn volume_files(&self) -> Vec<PathBuf> {
        fs::read_dir(self.state_dir())
            .expect("read host-path's state dir")
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.path())
            .filter(|path| {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name != "state.json" && name != "lost+found"
            })
            .collect()
    }

    /// Loop devices over files in the state dir: host-path's block volumes.
    fn volume_loops(&self) -> Vec<loopdev::LoopInfo> {
        let state_dir = self.state_dir();
        loopdev::list()
            .unwrap_or_default()
            .into_iter()
            .filter(|device| device.backing.starts_with(&state_dir))
            .collect()
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    eprintln!("hostpathplugin ignored SIGTERM for 30 s: killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }
}

impl Drop for HostPath {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- hostpathplugin log ---\n{}--- end of log ---",
                self.log()
            );
        }
        // Its block volumes' loop devices hold files on the image: they go first,
        // or the image cannot be unmounted.
        for device in self.volume_loops() {
            if let Err(e) = loopdev::detach(&device.device) {
                eprintln!("cleanup: cannot detach {}: {e}", device.device.display());
            }
        }
        release_and_remove(&self.dir);
    }
}
