//! A seeded chaos run against `vdrive all-in-one` on simulated drives: random
//! creates, stages, publishes, unpublishes, unstages, expansions and deletes,
//! some of them given up by their caller after a few milliseconds (the driver
//! goes on with the work) and some cut short by a SIGKILL of the driver, which is
//! then started again on the same state dir. The test keeps a model of every
//! volume; a call whose outcome it cannot know leaves the volume "pending", and
//! the next call on that volume first retries the pending one until it answers
//! (only OK, or ABORTED while the first one still runs, is acceptable). After
//! every restart and at the end the test converges and checks: ListVolumes is
//! the model, no extent is booked twice; every deleted volume's extents read
//! zeros; and after everything is deleted and the driver stopped, the drives'
//! data areas read zeros and no loop device or mount of the test is left.
//!
//! `VDRIVE_CHAOS_SEED` (default [`DEFAULT_SEED`]) replays a run;
//! `VDRIVE_CHAOS_OPS` (default [`DEFAULT_OPS`]) sets its length:
//! `VDRIVE_CHAOS_OPS=2000 cargo test --test chaos -- --nocapture`.
//!
//! Needs root and /dev/loop-control; without them it is skipped (with a message).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::{Whence, lseek};
use tonic::transport::Channel;
use tonic::{Code, Status};

mod support;

use support::devices::{loop_devices, mounts_under};
use support::driver::{Driver, Extent, GIB, ext4, extents, k8s_params, path_str, raw_block, xfs};
use vdrive::csi::proto::controller_client::ControllerClient;
use vdrive::csi::proto::node_client::NodeClient;
use vdrive::csi::proto::{
    CapacityRange, ControllerExpandVolumeRequest, CreateVolumeRequest, DeleteVolumeRequest,
    ListVolumesRequest, NodePublishVolumeRequest, NodeStageVolumeRequest,
    NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest, Volume, VolumeCapability,
};
use vdrive::node::signature::{self, HEADER_BYTES};

const DEFAULT_SEED: u64 = 20_240_917;
const DEFAULT_OPS: usize = 300;
/// Three 32 GiB drives: room for every volume the run keeps at once.
const DRIVES: &str = "tlc:32x2,qlc:32x1";
/// Most volumes alive at once.
const MAX_LIVE: usize = 10;
/// The largest a volume grows to.
const MAX_GIB: i64 = 6;
/// How long a call the test waits for may take (mkfs of a few GiB, an erase).
const PATIENCE: Duration = Duration::from_secs(120);
const MARKER_LEN: usize = 64 << 10;

// ---------------------------------------------------------------------------
// A small deterministic generator (splitmix64)
// ---------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    match std::env::var(key) {
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{key}={value:?} is not a number")),
        Err(_) => default,
    }
}

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ext4,
    Xfs,
    Block,
}

impl Kind {
    fn capability(self) -> VolumeCapability {
        match self {
            Kind::Ext4 => ext4(),
            Kind::Xfs => xfs(),
            Kind::Block => raw_block(),
        }
    }
}

/// Where a volume is, as far as the test knows for sure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Created,
    Staged,
    Published,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    Stage,
    Publish,
    Unpublish,
    Unstage,
    Expand(i64),
    Delete,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Expand(gib) => write!(f, "ControllerExpandVolume({gib} GiB)"),
            Op::Create => f.write_str("CreateVolume"),
            Op::Stage => f.write_str("NodeStageVolume"),
            Op::Publish => f.write_str("NodePublishVolume"),
            Op::Unpublish => f.write_str("NodeUnpublishVolume"),
            Op::Unstage => f.write_str("NodeUnstageVolume"),
            Op::Delete => f.write_str("DeleteVolume"),
        }
    }
}

#[derive(Debug)]
struct Vol {
    name: String,
    kind: Kind,
    /// The size CreateVolume asks for (the same on every retry).
    create_gib: i64,
    size_gib: i64,
    /// CreateVolume's answer, once known: its id and context (what kubelet
    /// passes to the node calls, also after an expansion).
    volume: Option<Volume>,
    phase: Phase,
    /// A call whose outcome is unknown (given up, or the driver was killed).
    pending: Option<Op>,
    /// The extents as last listed before a DeleteVolume was sent.
    extents: Vec<Extent>,
    markers: usize,
}

impl Vol {
    fn id(&self) -> &str {
        self.volume.as_ref().map_or("", |v| v.volume_id.as_str())
    }

    /// The calls that make sense from where the volume is.
    fn next_ops(&self) -> Vec<Op> {
        match self.phase {
            Phase::Created => {
                let mut ops = vec![Op::Stage, Op::Stage, Op::Delete];
                if self.size_gib < MAX_GIB {
                    ops.push(Op::Expand(self.size_gib + 1));
                }
                ops
            }
            // Repeating the call that got here must answer OK too.
            Phase::Staged => vec![Op::Publish, Op::Unstage, Op::Stage],
            Phase::Published => vec![Op::Unpublish, Op::Publish],
        }
    }
}

/// How a call is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Waited for; must answer.
    Patient,
    /// Given up after this long.
    GiveUpAfter(Duration),
    /// The driver is SIGKILLed this long after the call is sent.
    KillAfter(Duration),
}

/// A ready-to-send call, owning its client, so it can run in a task of its own.
enum Call {
    Create(ControllerClient<Channel>, CreateVolumeRequest),
    Delete(ControllerClient<Channel>, DeleteVolumeRequest),
    Expand(ControllerClient<Channel>, ControllerExpandVolumeRequest),
    Stage(NodeClient<Channel>, NodeStageVolumeRequest),
    Publish(NodeClient<Channel>, NodePublishVolumeRequest),
    Unpublish(NodeClient<Channel>, NodeUnpublishVolumeRequest),
    Unstage(NodeClient<Channel>, NodeUnstageVolumeRequest),
}

impl Call {
    fn new(driver: &Driver, vol: &Vol, op: Op) -> Call {
        let id = vol.id().to_string();
        let cap = vol.kind.capability();
        let context = vol
            .volume
            .as_ref()
            .map(|v| v.volume_context.clone())
            .unwrap_or_default();
        let staging = path_str(&driver.staging_path(&id));
        let target = path_str(&driver.target_path(&id));
        match op {
            Op::Create => Call::Create(
                driver.controller(),
                CreateVolumeRequest {
                    name: vol.name.clone(),
                    capacity_range: Some(CapacityRange {
                        required_bytes: vol.create_gib * GIB,
                        limit_bytes: 0,
                    }),
                    volume_capabilities: vec![cap],
                    parameters: k8s_params(),
                    ..Default::default()
                },
            ),
            Op::Delete => Call::Delete(
                driver.controller(),
                DeleteVolumeRequest {
                    volume_id: id,
                    secrets: HashMap::new(),
                },
            ),
            Op::Expand(gib) => Call::Expand(
                driver.controller(),
                ControllerExpandVolumeRequest {
                    volume_id: id,
                    capacity_range: Some(CapacityRange {
                        required_bytes: gib * GIB,
                        limit_bytes: 0,
                    }),
                    volume_capability: Some(cap),
                    ..Default::default()
                },
            ),
            Op::Stage => Call::Stage(
                driver.node(),
                NodeStageVolumeRequest {
                    volume_id: id,
                    staging_target_path: staging,
                    volume_capability: Some(cap),
                    volume_context: context,
                    ..Default::default()
                },
            ),
            Op::Publish => Call::Publish(
                driver.node(),
                NodePublishVolumeRequest {
                    volume_id: id,
                    staging_target_path: staging,
                    target_path: target,
                    volume_capability: Some(cap),
                    volume_context: context,
                    ..Default::default()
                },
            ),
            Op::Unpublish => Call::Unpublish(
                driver.node(),
                NodeUnpublishVolumeRequest {
                    volume_id: id,
                    target_path: target,
                },
            ),
            Op::Unstage => Call::Unstage(
                driver.node(),
                NodeUnstageVolumeRequest {
                    volume_id: id,
                    staging_target_path: staging,
                },
            ),
        }
    }

    /// Sends the call; the caller gives up after `deadline`. CreateVolume answers
    /// its volume, the others None.
    async fn send(self, deadline: Duration) -> Result<Option<Volume>, Status> {
        fn req<T>(message: T, deadline: Duration) -> tonic::Request<T> {
            let mut request = tonic::Request::new(message);
            request.set_timeout(deadline);
            request
        }
        let call = async move {
            match self {
                Call::Create(mut c, r) => {
                    Ok(c.create_volume(req(r, deadline)).await?.into_inner().volume)
                }
                Call::Delete(mut c, r) => c.delete_volume(req(r, deadline)).await.map(|_| None),
                Call::Expand(mut c, r) => c
                    .controller_expand_volume(req(r, deadline))
                    .await
                    .map(|_| None),
                Call::Stage(mut c, r) => c.node_stage_volume(req(r, deadline)).await.map(|_| None),
                Call::Publish(mut c, r) => {
                    c.node_publish_volume(req(r, deadline)).await.map(|_| None)
                }
                Call::Unpublish(mut c, r) => c
                    .node_unpublish_volume(req(r, deadline))
                    .await
                    .map(|_| None),
                Call::Unstage(mut c, r) => {
                    c.node_unstage_volume(req(r, deadline)).await.map(|_| None)
                }
            }
        };
        // Dropping the call on the client's side resets its stream: the caller has
        // really gone, whatever the server does with the deadline it was sent.
        match tokio::time::timeout(deadline, call).await {
            Ok(answer) => answer,
            Err(_) => Err(Status::deadline_exceeded("the client gave up")),
        }
    }
}

/// Whether an error only says the caller does not know what happened.
fn is_unknown_outcome(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::DeadlineExceeded | Code::Cancelled | Code::Unavailable | Code::Unknown
    )
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

struct Chaos {
    driver: Driver,
    seed: u64,
    rng: Rng,
    vols: BTreeMap<String, Vol>,
    next_name: usize,
    step: usize,
    /// Extents of deleted volumes not yet checked for zeros (their check waits
    /// until no call of another volume may be writing).
    unchecked: Vec<(String, Extent)>,
    stats: BTreeMap<&'static str, usize>,
}

impl Chaos {
    /// Context for every assertion: how to replay the run.
    fn at(&self) -> String {
        format!(
            "[seed {} (VDRIVE_CHAOS_SEED={}), step {}]",
            self.seed, self.seed, self.step
        )
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    async fn step_once(&mut self) {
        let live = self.vols.len();
        let create = live == 0 || (live < MAX_LIVE && self.rng.chance(25));
        let name = if create {
            let name = format!("chaos-{:04}", self.next_name);
            self.next_name += 1;
            let kind = [Kind::Ext4, Kind::Xfs, Kind::Block][self.rng.below(3) as usize];
            let gib = 1 + self.rng.below(4) as i64;
            self.vols.insert(
                name.clone(),
                Vol {
                    name: name.clone(),
                    kind,
                    create_gib: gib,
                    size_gib: gib,
                    volume: None,
                    phase: Phase::Created,
                    pending: None,
                    extents: Vec::new(),
                    markers: 0,
                },
            );
            name
        } else {
            let pick = self.rng.below(live as u64) as usize;
            let name = self.vols.keys().nth(pick).cloned().expect("a live volume");
            self.resolve(&name).await;
            name
        };
        let op = if create {
            Op::Create
        } else {
            let Some(vol) = self.vols.get(&name) else {
                return; // its pending delete went through
            };
            let ops = vol.next_ops();
            ops[self.rng.below(ops.len() as u64) as usize]
        };
        let roll = self.rng.below(100);
        let mode = if roll < 4 {
            Mode::KillAfter(Duration::from_millis(self.rng.below(25)))
        } else if roll < 24 {
            Mode::GiveUpAfter(Duration::from_millis(1 + self.rng.below(40)))
        } else {
            Mode::Patient
        };
        self.perform(&name, op, mode).await;
    }

    /// Sends `op` for volume `name` in `mode` and updates the model.
    async fn perform(&mut self, name: &str, op: Op, mode: Mode) {
        if op == Op::Delete {
            self.capture_extents(name).await;
        }
        let vol = &self.vols[name];
        eprintln!(
            "step {}: {op} {} ({}, {:?}, {} GiB, {:?}) {mode:?}",
            self.step,
            vol.name,
            vol.id(),
            vol.kind,
            vol.size_gib,
            vol.phase
        );
        let call = Call::new(&self.driver, vol, op);
        let answer = match mode {
            Mode::Patient => call.send(PATIENCE).await,
            Mode::GiveUpAfter(after) => call.send(after).await,
            Mode::KillAfter(after) => {
                let task = tokio::spawn(call.send(PATIENCE));
                tokio::time::sleep(after).await;
                self.driver.kill();
                self.count("kill");
                let answer = task.await.expect("the call's task");
                eprintln!("step {}: driver killed; restarting", self.step);
                self.driver.spawn().await;
                self.record(name, op, mode, answer).await;
                self.converge().await;
                self.check_ledger().await;
                return;
            }
        };
        self.record(name, op, mode, answer).await;
    }

    /// Takes in the answer to `op` for `name`.
    async fn record(
        &mut self,
        name: &str,
        op: Op,
        mode: Mode,
        answer: Result<Option<Volume>, Status>,
    ) {
        match answer {
            Ok(volume) => self.apply(name, op, volume).await,
            Err(status) if mode != Mode::Patient && is_unknown_outcome(&status) => {
                self.count(if matches!(mode, Mode::KillAfter(_)) {
                    "killed mid-call"
                } else {
                    "given up"
                });
                let vol = self.vols.get_mut(name).expect("the volume");
                vol.pending = Some(op);
            }
            Err(status)
                if matches!(op, Op::Expand(_)) && status.code() == Code::ResourceExhausted =>
            {
                // No room next to the volume: refused, nothing changed.
                eprintln!(
                    "step {}: expansion refused: {}",
                    self.step,
                    status.message()
                );
                self.count("expand refused");
            }
            Err(status) => panic!(
                "{} {op} of {name} ({}) answered {:?}: {}; the model has it {:?}",
                self.at(),
                self.vols[name].id(),
                status.code(),
                status.message(),
                self.vols[name].phase
            ),
        }
    }

    /// Retries the pending call of `name` until it answers: OK, or ABORTED while
    /// the first one still runs. Anything else fails the test.
    async fn resolve(&mut self, name: &str) {
        let Some(op) = self.vols[name].pending else {
            return;
        };
        let started = Instant::now();
        loop {
            let call = Call::new(&self.driver, &self.vols[name], op);
            match call.send(PATIENCE).await {
                Ok(volume) => {
                    self.count("resolved by a retry");
                    self.vols.get_mut(name).expect("the volume").pending = None;
                    self.apply(name, op, volume).await;
                    return;
                }
                Err(status) if status.code() == Code::Aborted => {
                    assert!(
                        started.elapsed() < PATIENCE,
                        "{} {op} of {name} is still in progress after {PATIENCE:?}: {}",
                        self.at(),
                        status.message()
                    );
                    self.count("retry aborted: still in progress");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(status)
                    if matches!(op, Op::Expand(_)) && status.code() == Code::ResourceExhausted =>
                {
                    self.count("expand refused");
                    self.vols.get_mut(name).expect("the volume").pending = None;
                    return;
                }
                Err(status) => panic!(
                    "{} a retry of {op} of {name} ({}) after its caller gave up answered {:?}: {}",
                    self.at(),
                    self.vols[name].id(),
                    status.code(),
                    status.message()
                ),
            }
        }
    }

    /// The model after `op` of `name` answered OK.
    async fn apply(&mut self, name: &str, op: Op, volume: Option<Volume>) {
        self.count(match op {
            Op::Create => "create",
            Op::Stage => "stage",
            Op::Publish => "publish",
            Op::Unpublish => "unpublish",
            Op::Unstage => "unstage",
            Op::Expand(_) => "expand",
            Op::Delete => "delete",
        });
        let at = self.at();
        let vol = self.vols.get_mut(name).expect("the volume");
        vol.pending = None;
        // A tenant writes once it has the volume: in the filesystem once staged,
        // to the device once published.
        let mut mark = None;
        match op {
            Op::Create => {
                let volume = volume.expect("CreateVolume answers a volume");
                if let Some(known) = &vol.volume {
                    assert_eq!(
                        known.volume_id, volume.volume_id,
                        "{at} {name}: one name, one volume"
                    );
                }
                assert_eq!(volume.capacity_bytes, vol.create_gib * GIB, "{at} {name}");
                vol.volume = Some(volume);
            }
            Op::Stage => {
                if vol.phase == Phase::Created {
                    vol.phase = Phase::Staged;
                    if vol.kind != Kind::Block {
                        mark = Some(Phase::Staged);
                    }
                }
            }
            Op::Publish => {
                if vol.phase == Phase::Staged {
                    vol.phase = Phase::Published;
                    if vol.kind == Kind::Block {
                        mark = Some(Phase::Published);
                    }
                }
            }
            Op::Unpublish => vol.phase = Phase::Staged,
            Op::Unstage => vol.phase = Phase::Created,
            Op::Expand(gib) => vol.size_gib = gib,
            Op::Delete => {
                let vol = self.vols.remove(name).expect("the volume");
                for extent in vol.extents {
                    self.unchecked.push((vol.name.clone(), extent));
                }
                if self.vols.values().all(|v| v.pending.is_none()) {
                    self.check_released().await;
                }
            }
        }
        match mark {
            Some(Phase::Staged) => self.mark_filesystem(name),
            Some(Phase::Published) => self.mark_block(name).await,
            _ => {}
        }
    }

    // ---- markers ----------------------------------------------------------

    fn marker(name: &str, k: usize) -> Vec<u8> {
        let tag = format!("{name}:{k}:");
        tag.bytes().cycle().take(MARKER_LEN).collect()
    }

    /// A tenant's data, written through the staged filesystem.
    fn mark_filesystem(&mut self, name: &str) {
        let staging = self.driver.staging_path(self.vols[name].id());
        let vol = self.vols.get_mut(name).expect("the volume");
        let k = vol.markers;
        vol.markers += 1;
        let path = staging.join(format!("marker-{k}"));
        let data = Self::marker(name, k).repeat(4);
        let written = File::create(&path).and_then(|mut f| {
            use std::io::Write;
            f.write_all(&data)?;
            f.sync_all()
        });
        if let Err(e) = written {
            panic!("{} cannot write {}: {e}", self.at(), path.display());
        }
    }

    /// A tenant's data, written to the published block device at its start,
    /// middle and end; checked to be where the volume's extents say on the drive.
    async fn mark_block(&mut self, name: &str) {
        let target = self.driver.target_path(self.vols[name].id());
        let size = self.vols[name].size_gib as u64 * GIB as u64;
        let vol = self.vols.get_mut(name).expect("the volume");
        let k = vol.markers;
        vol.markers += 1;
        let data = Self::marker(name, k);
        let offsets = [0, size / 2, size - MARKER_LEN as u64];
        let device = OpenOptions::new()
            .write(true)
            .open(&target)
            .unwrap_or_else(|e| panic!("{} cannot open {}: {e}", self.at(), target.display()));
        for offset in offsets {
            device
                .write_all_at(&data, offset)
                .unwrap_or_else(|e| panic!("{} cannot write {}: {e}", self.at(), target.display()));
        }
        device.sync_all().expect("flush the block device");
        drop(device);
        // The test's idea of where a volume lies on its drive must be right, or
        // the zero checks would prove nothing.
        let listed = self.list().await;
        let id = self.vols[name].id().to_string();
        let volume = listed
            .iter()
            .find(|v| v.volume_id == id)
            .unwrap_or_else(|| panic!("{} {name} ({id}) is not listed", self.at()));
        let extents = extents(volume);
        for offset in offsets {
            let (image, at) = self.locate(&extents, offset);
            let mut read = vec![0u8; MARKER_LEN];
            File::open(&image)
                .and_then(|f| f.read_exact_at(&mut read, at))
                .expect("read the drive image");
            assert!(
                read == data,
                "{} the marker written at byte {offset} of {name} is not at byte {at} of {}",
                self.at(),
                image.display()
            );
        }
    }

    /// The drive image and byte on it of byte `offset` of a volume made of `extents`.
    fn locate(&self, extents: &[Extent], mut offset: u64) -> (PathBuf, u64) {
        for extent in extents {
            let len = extent.size_gib * GIB as u64;
            if offset < len {
                let image = self.image_of(&extent.drive);
                return (
                    image,
                    HEADER_BYTES + extent.offset_gib * GIB as u64 + offset,
                );
            }
            offset -= len;
        }
        panic!("{} byte {offset} is past the volume's extents", self.at());
    }

    // ---- checks -----------------------------------------------------------

    /// The image file of the simulated drive with this uuid.
    fn image_of(&self, drive: &str) -> PathBuf {
        images(&self.driver)
            .into_iter()
            .find(|(_, uuid)| uuid == drive)
            .map(|(image, _)| image)
            .unwrap_or_else(|| panic!("{} no simulated drive has uuid {drive}", self.at()))
    }

    async fn list(&self) -> Vec<Volume> {
        self.driver
            .controller()
            .list_volumes(ListVolumesRequest {
                max_entries: 0,
                starting_token: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("{} ListVolumes: {e:?}", self.at()))
            .into_inner()
            .entries
            .into_iter()
            .filter_map(|e| e.volume)
            .collect()
    }

    /// The volume's extents as the ledger has them now, kept for the zero check
    /// after its deletion.
    async fn capture_extents(&mut self, name: &str) {
        let id = self.vols[name].id().to_string();
        let listed = self.list().await;
        let volume = listed
            .iter()
            .find(|v| v.volume_id == id)
            .unwrap_or_else(|| panic!("{} {name} ({id}) is not listed", self.at()));
        let extents = extents(volume);
        // A volume a tenant wrote to holds data on the drive, or the zero check
        // after its deletion would prove nothing.
        if self.vols[name].markers > 0 {
            let written = extents.iter().any(|e| {
                let from = HEADER_BYTES + e.offset_gib * GIB as u64;
                first_nonzero(
                    &self.image_of(&e.drive),
                    from,
                    from + e.size_gib * GIB as u64,
                )
                .is_some()
            });
            assert!(
                written,
                "{} {name} was written to, but its extents read zeros",
                self.at()
            );
        }
        self.vols.get_mut(name).expect("the volume").extents = extents;
    }

    /// Every pending call retried to its end.
    async fn converge(&mut self) {
        let pending: Vec<String> = self
            .vols
            .iter()
            .filter(|(_, v)| v.pending.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        for name in pending {
            self.resolve(&name).await;
        }
    }

    /// (1) ListVolumes is the model, sizes included; (2) no extent is booked twice.
    async fn check_ledger(&mut self) {
        let listed = self.list().await;
        let at = self.at();
        let mut listed_ids: Vec<(String, i64)> = listed
            .iter()
            .map(|v| (v.volume_id.clone(), v.capacity_bytes / GIB))
            .collect();
        listed_ids.sort();
        let mut model_ids: Vec<(String, i64)> = self
            .vols
            .values()
            .map(|v| (v.id().to_string(), v.size_gib))
            .collect();
        model_ids.sort();
        assert_eq!(
            listed_ids, model_ids,
            "{at} ListVolumes (left) is not the volumes the test holds (right)"
        );
        let mut booked: BTreeMap<String, Vec<(u64, u64, String)>> = BTreeMap::new();
        for volume in &listed {
            for extent in extents(volume) {
                booked.entry(extent.drive.clone()).or_default().push((
                    extent.offset_gib,
                    extent.offset_gib + extent.size_gib,
                    volume.volume_id.clone(),
                ));
            }
        }
        for (drive, mut extents) in booked {
            extents.sort();
            for pair in extents.windows(2) {
                assert!(
                    pair[0].1 <= pair[1].0,
                    "{at} drive {drive}: GiB {}..{} of {} overlaps GiB {}..{} of {}",
                    pair[0].0,
                    pair[0].1,
                    pair[0].2,
                    pair[1].0,
                    pair[1].1,
                    pair[1].2
                );
            }
        }
        self.count("ledger checks");
    }

    /// (3) Every released extent reads zeros, unless a live volume holds it again.
    async fn check_released(&mut self) {
        if self.unchecked.is_empty() {
            return;
        }
        let live: Vec<Extent> = self.list().await.iter().flat_map(extents).collect();
        for (name, extent) in std::mem::take(&mut self.unchecked) {
            let start = extent.offset_gib;
            let end = start + extent.size_gib;
            // The parts no live volume holds again.
            let mut free: Vec<(u64, u64)> = vec![(start, end)];
            for taken in live.iter().filter(|e| e.drive == extent.drive) {
                let (ts, te) = (taken.offset_gib, taken.offset_gib + taken.size_gib);
                free = free
                    .into_iter()
                    .flat_map(|(s, e)| {
                        let mut parts = Vec::new();
                        if s < ts.min(e) {
                            parts.push((s, ts.min(e)));
                        }
                        if te.max(s) < e {
                            parts.push((te.max(s), e));
                        }
                        parts
                    })
                    .collect();
            }
            let image = self.image_of(&extent.drive);
            for (s, e) in free {
                let from = HEADER_BYTES + s * GIB as u64;
                let to = HEADER_BYTES + e * GIB as u64;
                if let Some(at) = first_nonzero(&image, from, to) {
                    panic!(
                        "{} {name} was deleted, but byte {at} of {} (GiB {} of drive {}) is not zero",
                        self.at(),
                        image.display(),
                        (at - HEADER_BYTES) / GIB as u64,
                        extent.drive
                    );
                }
                self.count("released GiB checked zero");
            }
        }
    }
}

/// The simulated drives' image files and their uuids.
fn images(driver: &Driver) -> Vec<(PathBuf, String)> {
    let dir = driver.state_dir().join("simulated-drives");
    let mut found = Vec::new();
    for entry in fs::read_dir(&dir).expect("list the simulated drives") {
        let path = entry.expect("a directory entry").path();
        if let Ok(Some(sig)) = signature::read(&path) {
            found.push((path, sig.uuid.to_string()));
        }
    }
    found
}

/// The first byte in `from..to` of `image` that is not zero, reading only the
/// parts of the sparse file that hold data.
fn first_nonzero(image: &Path, from: u64, to: u64) -> Option<u64> {
    let file = File::open(image).expect("open the drive image");
    let mut at = from;
    let mut buf = vec![0u8; 1 << 20];
    while at < to {
        let Ok(data) = lseek(file.as_fd(), at as i64, Whence::SeekData) else {
            return None; // no data after `at`
        };
        let data = data as u64;
        if data >= to {
            return None;
        }
        let hole = lseek(file.as_fd(), data as i64, Whence::SeekHole).expect("SEEK_HOLE") as u64;
        let mut pos = data;
        while pos < hole.min(to) {
            let len = (hole.min(to) - pos).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..len], pos)
                .expect("read the drive image");
            if let Some(i) = buf[..len].iter().position(|&b| b != 0) {
                return Some(pos + i as u64);
            }
            pos += len as u64;
        }
        at = hole;
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_keeps_the_ledger_the_drives_and_the_node_consistent() {
    let seed: u64 = env_or("VDRIVE_CHAOS_SEED", DEFAULT_SEED);
    let ops: usize = env_or("VDRIVE_CHAOS_OPS", DEFAULT_OPS);
    eprintln!(
        "chaos: seed {seed}, {ops} operations (replay: VDRIVE_CHAOS_SEED={seed} VDRIVE_CHAOS_OPS={ops} cargo test --test chaos)"
    );
    let Some(driver) = Driver::start("chaos", DRIVES).await else {
        return;
    };
    let started = Instant::now();
    let mut chaos = Chaos {
        driver,
        seed,
        rng: Rng(seed),
        vols: BTreeMap::new(),
        next_name: 0,
        step: 0,
        unchecked: Vec::new(),
        stats: BTreeMap::new(),
    };
    for step in 0..ops {
        chaos.step = step;
        chaos.step_once().await;
    }

    // The end: everything pending settled, the ledger checked, then every volume
    // taken down and deleted.
    chaos.step = ops;
    chaos.converge().await;
    chaos.check_ledger().await;
    let names: Vec<String> = chaos.vols.keys().cloned().collect();
    for name in names {
        while let Some(vol) = chaos.vols.get(&name) {
            let op = match vol.phase {
                Phase::Published => Op::Unpublish,
                Phase::Staged => Op::Unstage,
                Phase::Created => Op::Delete,
            };
            chaos.perform(&name, op, Mode::Patient).await;
        }
    }
    chaos.check_ledger().await;
    chaos.check_released().await;
    // With nothing left, the drives' whole data areas read zeros.
    for (image, uuid) in images(&chaos.driver) {
        let len = fs::metadata(&image).expect("stat the drive image").len();
        if let Some(at) = first_nonzero(&image, HEADER_BYTES, len) {
            panic!(
                "{} every volume is deleted, but byte {at} of {} (drive {uuid}) is not zero",
                chaos.at(),
                image.display()
            );
        }
    }

    // (4) Stopped, the driver leaves no device or mount behind.
    let status = chaos.driver.stop().expect("the driver was running");
    assert!(
        status.success(),
        "{} the driver exited with {status}",
        chaos.at()
    );
    let dir = chaos.driver.dir.clone();
    let images: Vec<PathBuf> = fs::read_dir(dir.join("state/simulated-drives"))
        .expect("list the simulated drives")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    let devices = loop_devices();
    let drive_devices: Vec<&PathBuf> = devices
        .iter()
        .filter(|(_, backing)| backing.starts_with(&dir) || images.contains(backing))
        .map(|(device, _)| device)
        .collect();
    let left: Vec<&(PathBuf, PathBuf)> = devices
        .iter()
        .filter(|(device, backing)| {
            drive_devices.contains(&device) || drive_devices.contains(&backing)
        })
        .collect();
    assert!(
        left.is_empty(),
        "{} loop devices left: {left:?}",
        chaos.at()
    );
    let mounts = mounts_under(&dir);
    assert!(mounts.is_empty(), "{} mounts left: {mounts:?}", chaos.at());
    eprintln!(
        "chaos: seed {seed}, {ops} operations in {:.1?}: {:?}",
        started.elapsed(),
        chaos.stats
    );
}
