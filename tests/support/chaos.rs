//! The model, the calls and the checks of the seeded chaos runs (`tests/chaos.rs`
//! against `vdrive all-in-one`, `tests/e2e_chaos.rs` against `vdrive controller`
//! and `vdrive node` in a cluster). A [`Bed`] is what a run talks to and kills;
//! [`Chaos`] keeps a model of every volume, sends random CSI calls (some given
//! up after a few milliseconds, some cut short by a SIGKILL), optionally
//! detaches and re-attaches simulated drives, and checks the driver against
//! the model (see `tests/chaos.rs` for what is checked).

// Each test crate that says `mod support;` uses a different part of this.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::unistd::{Whence, lseek};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::devices::mounts_under;
use super::driver::{Extent, GIB, ext4, extents, k8s_params, path_str, raw_block, xfs};
use vdrive::csi::proto::controller_client::ControllerClient;
use vdrive::csi::proto::node_client::NodeClient;
use vdrive::csi::proto::{
    CapacityRange, ControllerExpandVolumeRequest, CreateVolumeRequest, DeleteVolumeRequest,
    ListVolumesRequest, NodePublishVolumeRequest, NodeStageVolumeRequest,
    NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest, Volume, VolumeCapability,
};
use vdrive::node::loopdev;
use vdrive::node::signature::{self, HEADER_BYTES};

/// Most volumes alive at once.
pub const MAX_LIVE: usize = 10;
/// The largest a volume grows to.
pub const MAX_GIB: i64 = 6;
/// How long a call the test waits for may take (mkfs of a few GiB, an erase).
pub const PATIENCE: Duration = Duration::from_secs(120);
const MARKER_LEN: usize = 64 << 10;

// ---------------------------------------------------------------------------
// What a run talks to
// ---------------------------------------------------------------------------

/// The driver under test: where to send CSI calls, where kubelet's paths are,
/// where the simulated drives' images are, and how to crash it.
#[allow(async_fn_in_trait)]
pub trait Bed {
    fn controller(&self) -> ControllerClient<Channel>;
    fn node(&self) -> NodeClient<Channel>;
    /// Where kubelet would stage `volume_id`.
    fn staging_path(&self, volume_id: &str) -> PathBuf;
    /// Where kubelet would publish `volume_id` for a pod.
    fn target_path(&self, volume_id: &str) -> PathBuf;
    /// The directory of the node's simulated drives (`<state-dir>/simulated-drives`).
    fn drives_dir(&self) -> PathBuf;
    /// SIGKILLs some of the driver's processes, chosen with `rng`; says which.
    fn kill(&mut self, rng: &mut Rng) -> &'static str;
    /// Starts again whatever [`Bed::kill`] killed, once it serves.
    async fn revive(&mut self);
    /// Whether DeleteVolume answers at once and leaves the erase to the node (a
    /// cluster): the claims stay releasing until the node has erased them, so
    /// a volume whose drive is away is deleted, and its claims wait for the
    /// drive. Otherwise (all-in-one) such a delete is refused.
    fn erases_later(&self) -> bool {
        false
    }
    /// The claims marked releasing now, as (volume id, drive uuid): deleted,
    /// not erased and released yet. Only a bed that [erases later](Bed::erases_later) has any.
    async fn releasing(&mut self, _at: &str) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Waits until the driver's ledger has the drives in `away` (uuids) as
    /// gone and every other drive as present; answers whether the bed can
    /// tell. One that cannot (all-in-one) may answer for a short while as
    /// if a drive that just went or came back had not.
    async fn await_drives(&mut self, _away: &[String], _at: &str) -> bool {
        false
    }
    /// Checks the bed's own record of the volumes (`(id, GiB)`, sorted) besides
    /// ListVolumes: the claims in the Node annotations, say.
    async fn check_store(&mut self, _volumes: &[(String, i64)], _at: &str) {}
}

// ---------------------------------------------------------------------------
// A small deterministic generator (splitmix64)
// ---------------------------------------------------------------------------

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
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
pub enum Kind {
    Ext4,
    Xfs,
    Block,
}

impl Kind {
    pub fn capability(self) -> VolumeCapability {
        match self {
            Kind::Ext4 => ext4(),
            Kind::Xfs => xfs(),
            Kind::Block => raw_block(),
        }
    }
}

/// Where a volume is, as far as the test knows for sure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Created,
    Staged,
    Published,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
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
pub struct Vol {
    pub name: String,
    pub kind: Kind,
    /// The size CreateVolume asks for (the same on every retry).
    pub create_gib: i64,
    pub size_gib: i64,
    /// CreateVolume's answer, once known: its id and context (what kubelet
    /// passes to the node calls, also after an expansion).
    pub volume: Option<Volume>,
    pub phase: Phase,
    /// A call whose outcome is unknown (given up, or the driver was killed).
    pub pending: Option<Op>,
    /// The extents as last listed before a DeleteVolume was sent.
    pub extents: Vec<Extent>,
    pub markers: usize,
}

impl Vol {
    pub fn id(&self) -> &str {
        self.volume.as_ref().map_or("", |v| v.volume_id.as_str())
    }

    /// The calls that make sense from where the volume is.
    pub fn next_ops(&self) -> Vec<Op> {
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
pub enum Mode {
    /// Waited for; must answer.
    Patient,
    /// Given up after this long.
    GiveUpAfter(Duration),
    /// The driver is SIGKILLed this long after the call is sent.
    KillAfter(Duration),
}

/// A ready-to-send call, owning its client, so it can run in a task of its own.
pub enum Call {
    Create(ControllerClient<Channel>, CreateVolumeRequest),
    Delete(ControllerClient<Channel>, DeleteVolumeRequest),
    Expand(ControllerClient<Channel>, ControllerExpandVolumeRequest),
    Stage(NodeClient<Channel>, NodeStageVolumeRequest),
    Publish(NodeClient<Channel>, NodePublishVolumeRequest),
    Unpublish(NodeClient<Channel>, NodeUnpublishVolumeRequest),
    Unstage(NodeClient<Channel>, NodeUnstageVolumeRequest),
}

impl Call {
    pub fn new<B: Bed>(driver: &B, vol: &Vol, op: Op) -> Call {
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
    pub async fn send(self, deadline: Duration) -> Result<Option<Volume>, Status> {
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
pub fn is_unknown_outcome(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::DeadlineExceeded | Code::Cancelled | Code::Unavailable | Code::Unknown
    )
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

pub struct Chaos<B: Bed> {
    pub bed: B,
    pub seed: u64,
    rng: Rng,
    vols: BTreeMap<String, Vol>,
    next_name: usize,
    pub step: usize,
    /// Extents of deleted volumes (name, id, extent) not yet checked for zeros
    /// (their check waits until no call of another volume may be writing, and
    /// until their node has erased them: for a volume deleted while a drive of
    /// it was away, until that drive is back).
    unchecked: Vec<(String, String, Extent)>,
    pub stats: BTreeMap<&'static str, usize>,
    /// Whether the run detaches and re-attaches simulated drives.
    moves_drives: bool,
    /// Simulated drives detached now: their uuids and images, and the step from
    /// which they may be attached again.
    detached: Vec<Detached>,
    /// Whether the driver's ledger is known to see the drives as the run left
    /// them ([`Bed::await_drives`]): then a call on a volume of a detached drive
    /// must be refused, and one on a drive that is back must not be.
    drives_seen: bool,
    /// Volumes deleted while a drive of them was away, and not back since:
    /// their ids and the drives of all their extents, sorted. Their node
    /// cannot erase them, so it must not release them.
    held: BTreeMap<String, Vec<String>>,
    /// When detached drives were last attached again while the driver ran.
    back_at: Option<Instant>,
}

/// A simulated drive the run has detached.
#[derive(Debug, Clone)]
struct Detached {
    uuid: String,
    image: PathBuf,
    /// The loop device it was bound to.
    device: PathBuf,
    until_step: usize,
}

impl<B: Bed> Chaos<B> {
    /// A run of `bed` replaying `seed`; `moves_drives` adds detaching and
    /// re-attaching simulated drives to what happens.
    pub fn new(bed: B, seed: u64, moves_drives: bool) -> Self {
        Chaos {
            bed,
            seed,
            rng: Rng(seed),
            vols: BTreeMap::new(),
            next_name: 0,
            step: 0,
            unchecked: Vec::new(),
            stats: BTreeMap::new(),
            moves_drives,
            detached: Vec::new(),
            drives_seen: true,
            held: BTreeMap::new(),
            back_at: None,
        }
    }

    /// Context for every assertion: how to replay the run.
    pub fn at(&self) -> String {
        format!(
            "[seed {} (VDRIVE_CHAOS_SEED={}), step {}]",
            self.seed, self.seed, self.step
        )
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    /// Runs `ops` random steps, then settles everything, checks the ledger,
    /// takes every volume down and deletes it, and checks that the drives' data
    /// areas read zeros.
    pub async fn run(&mut self, ops: usize) {
        for step in 0..ops {
            self.step = step;
            self.step_once().await;
        }
        self.step = ops;
        self.reattach_all().await;
        self.drives_changed().await;
        self.converge().await;
        self.check_ledger().await;
        let names: Vec<String> = self.vols.keys().cloned().collect();
        for name in names {
            while let Some(vol) = self.vols.get(&name) {
                let op = match vol.phase {
                    Phase::Published => Op::Unpublish,
                    Phase::Staged => Op::Unstage,
                    Phase::Created => Op::Delete,
                };
                self.perform(&name, op, Mode::Patient).await;
            }
        }
        self.check_ledger().await;
        self.check_released().await;
        // With nothing left, the drives' whole data areas read zeros.
        for (image, uuid) in images(&self.bed.drives_dir()) {
            let len = fs::metadata(&image).expect("stat the drive image").len();
            if let Some(at) = first_nonzero(&image, HEADER_BYTES, len) {
                panic!(
                    "{} every volume is deleted, but byte {at} of {} (drive {uuid}) is not zero",
                    self.at(),
                    image.display()
                );
            }
        }
    }

    pub async fn step_once(&mut self) {
        if !self.detached.is_empty() && self.detached.iter().all(|d| d.until_step <= self.step) {
            self.reattach_all().await;
            self.drives_changed().await;
            // The volumes deleted while their drive was away are erased now.
            if self.vols.values().all(|v| v.pending.is_none()) {
                self.check_released().await;
            }
        } else if self.moves_drives && self.detached.is_empty() && self.rng.chance(3) {
            self.detach_drives().await;
            return;
        }
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
        // A call on a volume whose drive is away is waited for: it must be
        // refused, and say why.
        let mode = if !create && self.on_detached(&name).await {
            Mode::Patient
        } else if roll < 4 {
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
        // Known before the call: a deleted volume is no longer listed.
        let away = self.on_detached(name).await;
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
        let call = Call::new(&self.bed, vol, op);
        let answer = match mode {
            Mode::Patient => {
                let mut answer = call.send(PATIENCE).await;
                // A bed that cannot tell when its driver has seen a drive come
                // back: the ledger may have it missing for a rescan more.
                let started = Instant::now();
                while !self.drives_seen
                    && !away
                    && matches!(op, Op::Expand(_))
                    && started.elapsed() < Duration::from_secs(10)
                    && matches!(&answer, Err(s) if s.code() == Code::FailedPrecondition
                        && s.message().contains("not attached"))
                {
                    self.count("expand retried: drive back, not rescanned yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    answer = Call::new(&self.bed, &self.vols[name], op)
                        .send(PATIENCE)
                        .await;
                }
                answer
            }
            Mode::GiveUpAfter(after) => call.send(after).await,
            Mode::KillAfter(after) => {
                let task = tokio::spawn(call.send(PATIENCE));
                tokio::time::sleep(after).await;
                let killed = self.bed.kill(&mut self.rng);
                self.count(killed);
                let answer = task.await.expect("the call's task");
                // A restarted node plugin attaches its drives again and may
                // erase at once: until now, what was held stays held.
                let held = self.held();
                self.releasing_held(&held).await;
                eprintln!("step {}: {killed}; restarting", self.step);
                self.bed.revive().await;
                self.reattached_by_restart();
                self.drives_changed().await;
                self.record(name, op, mode, away, answer).await;
                self.converge().await;
                self.check_ledger().await;
                return;
            }
        };
        self.record(name, op, mode, away, answer).await;
    }

    /// Takes in the answer to `op` for `name`; `away`: a drive of the volume
    /// was detached when the call was sent.
    async fn record(
        &mut self,
        name: &str,
        op: Op,
        mode: Mode,
        away: bool,
        answer: Result<Option<Volume>, Status>,
    ) {
        match answer {
            Ok(volume) => {
                if away {
                    self.accepted_while_away(name, op);
                }
                self.apply(name, op, volume).await
            }
            Err(status) if mode != Mode::Patient && is_unknown_outcome(&status) => {
                self.count(if matches!(mode, Mode::KillAfter(_)) {
                    "killed mid-call"
                } else {
                    "given up"
                });
                let vol = self.vols.get_mut(name).expect("the volume");
                vol.pending = Some(op);
            }
            Err(status) if op == Op::Create && self.short_of_drives(&status) => {
                // The drives that are here have no room for it: not created.
                eprintln!("step {}: create refused: {}", self.step, status.message());
                self.vols.remove(name);
                self.count("create refused: drives away");
            }
            Err(status)
                if matches!(op, Op::Expand(_))
                    && status.code() == Code::ResourceExhausted
                    && !(away && self.drives_seen) =>
            {
                // No room next to the volume: refused, nothing changed.
                eprintln!(
                    "step {}: expansion refused: {}",
                    self.step,
                    status.message()
                );
                self.count("expand refused");
            }
            Err(status)
                if status.code() == Code::FailedPrecondition
                    && (matches!(op, Op::Stage | Op::Expand(_))
                        || (op == Op::Delete && !self.bed.erases_later()))
                    && away =>
            {
                // Its drive is away: refused, nothing changed. A deleted volume
                // keeps its claims until its drive is back and it is erased.
                assert!(
                    status.message().contains("not attached")
                        && self
                            .detached
                            .iter()
                            .any(|d| status.message().contains(&d.uuid)),
                    "{} {op} of {name} on a detached drive is refused without naming the drive that is not attached: {}",
                    self.at(),
                    status.message()
                );
                if op == Op::Stage {
                    let staging = self.bed.staging_path(self.vols[name].id());
                    let mounted = mounts_under(&staging);
                    assert!(
                        mounted.is_empty(),
                        "{} a refused {op} of {name} left mounts: {mounted:?}",
                        self.at()
                    );
                }
                if op == Op::Delete {
                    self.vols.get_mut(name).expect("the volume").extents.clear();
                }
                eprintln!("step {}: refused: {}", self.step, status.message());
                self.count("refused: drive detached");
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
            let call = Call::new(&self.bed, &self.vols[name], op);
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
                Err(status) if op == Op::Create && self.short_of_drives(&status) => {
                    // Not created by the call given up either: a volume of
                    // this name would be answered.
                    self.vols.remove(name);
                    self.count("create refused: drives away");
                    return;
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

    /// `op` of `name` answered OK although a drive of the volume was detached:
    /// only a cluster's delete may (its node erases the volume once the drive
    /// is back), and an expansion while the bed cannot tell whether its driver
    /// has noticed yet.
    fn accepted_while_away(&mut self, name: &str, op: Op) {
        let at = self.at();
        match op {
            Op::Delete if self.bed.erases_later() => {
                let vol = &self.vols[name];
                let mut drives: Vec<String> = vol.extents.iter().map(|e| e.drive.clone()).collect();
                drives.sort();
                self.held.insert(vol.id().to_string(), drives);
                self.count("deleted while its drive is away");
            }
            Op::Delete => panic!(
                "{at} DeleteVolume of {name} answered OK while its drive is detached: its extents cannot have been erased"
            ),
            Op::Expand(_) if !self.drives_seen => {
                self.count("expanded before the driver saw its drive go")
            }
            _ => panic!(
                "{at} {op} of {name} answered OK while its drive is detached; it must be refused with FAILED_PRECONDITION"
            ),
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
                let id = vol.id().to_string();
                for extent in vol.extents {
                    self.unchecked.push((vol.name.clone(), id.clone(), extent));
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

    // ---- drives coming and going ----------------------------------------

    /// Whether any extent of `name` lies on a drive the run has detached.
    async fn on_detached(&self, name: &str) -> bool {
        if self.detached.is_empty() {
            return false;
        }
        let id = self.vols[name].id().to_string();
        let listed = self.list().await;
        let Some(volume) = listed.iter().find(|v| v.volume_id == id) else {
            return false;
        };
        extents(volume)
            .iter()
            .any(|e| self.detached.iter().any(|d| d.uuid == e.drive))
    }

    /// Detaches one or two simulated drives. Before a drive goes, its volumes
    /// are taken down (a drive with staged volumes is held open and its loop
    /// device stays). While the driver runs, the drives stay away for a few
    /// steps, then come back at whatever loop devices are free (two of them at
    /// each other's); or the driver is killed, the drives are detached and
    /// attached again the same way, and the driver is started on them.
    async fn detach_drives(&mut self) {
        let mut drives = images(&self.bed.drives_dir());
        drives.sort();
        let first = self.rng.below(drives.len() as u64) as usize;
        let mut chosen = vec![drives.remove(first)];
        if !drives.is_empty() && self.rng.chance(40) {
            let second = self.rng.below(drives.len() as u64) as usize;
            chosen.push(drives.remove(second));
        }
        let while_running = self.rng.chance(60);
        let uuids: Vec<String> = chosen.iter().map(|(_, uuid)| uuid.clone()).collect();
        eprintln!(
            "step {}: detaching drive(s) {uuids:?} {}",
            self.step,
            if while_running {
                "while the driver runs"
            } else {
                "while the driver is down"
            }
        );
        self.converge().await;
        self.take_down_volumes_on(&uuids).await;
        if !while_running {
            let killed = self.bed.kill(&mut self.rng);
            self.count(killed);
        }
        let mut gone = Vec::new();
        for (image, uuid) in chosen {
            let device = detach_image(&image)
                .unwrap_or_else(|e| panic!("{} cannot detach drive {uuid}: {e}", self.at()));
            self.count("drive detached");
            gone.push(Detached {
                uuid,
                image,
                device,
                until_step: self.step + 2 + self.rng.below(12) as usize,
            });
        }
        self.detached = gone;
        if !while_running {
            // Back before the driver starts, two of them at each other's devices:
            // the driver finds each where it is now.
            self.reattach_all().await;
            self.bed.revive().await;
            self.drives_changed().await;
            self.converge().await;
            self.check_ledger().await;
        } else {
            self.drives_changed().await;
        }
    }

    /// Whether `status` refuses a CreateVolume for lack of room because drives
    /// are away: detached now, or (where the bed cannot tell when its driver
    /// has seen them back) attached again only a moment ago.
    fn short_of_drives(&self, status: &Status) -> bool {
        let just_back = !self.drives_seen
            && self
                .back_at
                .is_some_and(|t| t.elapsed() < Duration::from_secs(10));
        status.code() == Code::ResourceExhausted && (!self.detached.is_empty() || just_back)
    }

    /// Waits until the driver has seen the drives come or go, where the bed
    /// can tell ([`Bed::await_drives`]).
    async fn drives_changed(&mut self) {
        let away: Vec<String> = self.detached.iter().map(|d| d.uuid.clone()).collect();
        let at = self.at();
        self.drives_seen = self.bed.await_drives(&away, &at).await;
    }

    /// Unpublishes and unstages every volume with an extent on these drives.
    async fn take_down_volumes_on(&mut self, uuids: &[String]) {
        let listed = self.list().await;
        let on: Vec<String> = listed
            .iter()
            .filter(|v| extents(v).iter().any(|e| uuids.contains(&e.drive)))
            .map(|v| v.volume_id.clone())
            .collect();
        let names: Vec<String> = self
            .vols
            .iter()
            .filter(|(_, v)| on.iter().any(|id| id == v.id()))
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            loop {
                let op = match self.vols[&name].phase {
                    Phase::Published => Op::Unpublish,
                    Phase::Staged => Op::Unstage,
                    Phase::Created => break,
                };
                self.perform(&name, op, Mode::Patient).await;
            }
        }
    }

    /// Attaches every detached drive again; two or more take each other's former
    /// loop devices where those are still free (the drives "moved").
    async fn reattach_all(&mut self) {
        // Up to now, nothing of a volume deleted while its drive was away was
        // released: it cannot have been erased.
        let held = self.held();
        self.releasing_held(&held).await;
        let gone = std::mem::take(&mut self.detached);
        // Every drive is back: the node may erase all of them now.
        self.held.clear();
        self.back_at = Some(Instant::now());
        let n = gone.len();
        for (k, drive) in gone.iter().enumerate() {
            let wanted = (n > 1).then(|| gone[(k + 1) % n].device.clone());
            let device = attach_image(&drive.image, wanted.as_deref()).unwrap_or_else(|e| {
                panic!("{} cannot attach drive {}: {e}", self.at(), drive.uuid)
            });
            eprintln!(
                "step {}: drive {} attached again at {} (was {})",
                self.step,
                drive.uuid,
                device.display(),
                drive.device.display()
            );
            self.count(if device == drive.device {
                "drive re-attached in place"
            } else {
                "drive re-attached elsewhere"
            });
        }
    }

    /// After a restart: the driver attaches its simulated drives at start, so a
    /// drive the run had detached is back.
    fn reattached_by_restart(&mut self) {
        if self.detached.is_empty() {
            return;
        }
        let bound = loopdev::list().expect("list the loop devices");
        let before = self.detached.len();
        self.detached
            .retain(|d| !bound.iter().any(|l| l.backing == d.image));
        self.forget_held_back();
        for _ in self.detached.len()..before {
            self.count("drive re-attached by a restart");
        }
    }

    // ---- markers ----------------------------------------------------------

    fn marker(name: &str, k: usize) -> Vec<u8> {
        let tag = format!("{name}:{k}:");
        tag.bytes().cycle().take(MARKER_LEN).collect()
    }

    /// A tenant's data, written through the staged filesystem.
    fn mark_filesystem(&mut self, name: &str) {
        let staging = self.bed.staging_path(self.vols[name].id());
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
        let target = self.bed.target_path(self.vols[name].id());
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
        images(&self.bed.drives_dir())
            .into_iter()
            .find(|(_, uuid)| uuid == drive)
            .map(|(image, _)| image)
            .unwrap_or_else(|| panic!("{} no simulated drive has uuid {drive}", self.at()))
    }

    async fn list(&self) -> Vec<Volume> {
        self.bed
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
    pub async fn converge(&mut self) {
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
    pub async fn check_ledger(&mut self) {
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
        self.bed.check_store(&model_ids, &at).await;
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

    /// The volumes deleted while a drive of them was away that is still away
    /// ([`Chaos::held`]); forgets those whose drives are all back.
    fn held(&mut self) -> BTreeMap<String, Vec<String>> {
        self.forget_held_back();
        self.held.clone()
    }

    /// Forgets the held volumes whose drives are all back: their node may
    /// erase and release them now.
    fn forget_held_back(&mut self) {
        let detached = &self.detached;
        self.held
            .retain(|_, drives| drives.iter().any(|u| detached.iter().any(|d| d.uuid == *u)));
    }

    /// The releasing claims now (volume id -> drives, sorted), after checking
    /// that every volume in `held` still has all of its claims, releasing.
    async fn releasing_held(
        &mut self,
        held: &BTreeMap<String, Vec<String>>,
    ) -> BTreeMap<String, Vec<String>> {
        let at = self.at();
        let mut releasing: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, drive) in self.bed.releasing(&at).await {
            releasing.entry(id).or_default().push(drive);
        }
        for drives in releasing.values_mut() {
            drives.sort();
        }
        if self.bed.erases_later() {
            for (id, drives) in held {
                assert_eq!(
                    releasing.get(id),
                    Some(drives),
                    "{at} volume {id} was deleted while a drive of it was detached: its claims (left, releasing now) must all stay releasing, unerased, until the drive is back (right: the drives of its extents)"
                );
                self.count("held claims checked releasing");
            }
        }
        releasing
    }

    /// Waits until the node has erased and released every deleted volume but
    /// those in `held`, which keep their claims meanwhile.
    async fn await_erased(&mut self, held: &BTreeMap<String, Vec<String>>) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let releasing = self.releasing_held(held).await;
            let waiting: Vec<&String> = releasing
                .keys()
                .filter(|id| !held.contains_key(*id))
                .collect();
            if waiting.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} the node did not erase and release the deleted volumes {waiting:?} within {PATIENCE:?}",
                self.at()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// (3) Every released extent reads zeros, unless a live volume holds it
    /// again. A volume deleted while a drive of it is away is checked once
    /// the drive is back and its node has erased and released it.
    pub async fn check_released(&mut self) {
        if self.unchecked.is_empty() {
            return;
        }
        let held = self.held();
        self.await_erased(&held).await;
        let (later, now): (Vec<_>, Vec<_>) = std::mem::take(&mut self.unchecked)
            .into_iter()
            .partition(|(_, id, _)| held.contains_key(id));
        self.unchecked = later;
        let live: Vec<Extent> = self.list().await.iter().flat_map(extents).collect();
        for (name, _, extent) in now {
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
pub fn images(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).expect("list the simulated drives") {
        let path = entry.expect("a directory entry").path();
        if let Ok(Some(sig)) = signature::read(&path) {
            found.push((path, sig.uuid.to_string()));
        }
    }
    found
}

/// The first byte in `from..to` of `image` that is not zero, reading only the
/// parts of the sparse file that hold data.
pub fn first_nonzero(image: &Path, from: u64, to: u64) -> Option<u64> {
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

/// Detaches the loop device `image` is bound to; answers that device. Refuses
/// (rather than leaving a detach pending) a device something holds open.
pub fn detach_image(image: &Path) -> Result<PathBuf, String> {
    let bound: Vec<PathBuf> = loopdev::list()
        .map_err(|e| format!("cannot list the loop devices: {e}"))?
        .into_iter()
        .filter(|l| l.backing == image)
        .map(|l| l.device)
        .collect();
    let [device] = bound.as_slice() else {
        return Err(format!("{} is bound to {bound:?}", image.display()));
    };
    let name = device
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let holders = fs::read_dir(format!("/sys/block/{name}/holders"))
        .map(|d| d.count())
        .unwrap_or(0);
    let stacked = loopdev::list()
        .map_err(|e| format!("cannot list the loop devices: {e}"))?
        .into_iter()
        .any(|l| l.backing == *device);
    if holders > 0 || stacked {
        return Err(format!("{} is in use", device.display()));
    }
    let out = Command::new("losetup")
        .arg("--detach")
        .arg(device)
        .output()
        .map_err(|e| format!("cannot run losetup: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    // The kernel finishes a detach once the last opener (udev's probe) closes it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while loopdev::list()
        .map_err(|e| format!("cannot list the loop devices: {e}"))?
        .iter()
        .any(|l| l.device == *device && l.backing == image)
    {
        if Instant::now() > deadline {
            return Err(format!(
                "{} stays bound to {}",
                device.display(),
                image.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(device.clone())
}

/// Binds `image` to a loop device again: `wanted` if that is free, else the
/// first free one; answers the device.
pub fn attach_image(image: &Path, wanted: Option<&Path>) -> Result<PathBuf, String> {
    let losetup = |args: &[&std::ffi::OsStr]| -> Result<String, String> {
        let out = Command::new("losetup")
            .args(args)
            .output()
            .map_err(|e| format!("cannot run losetup: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    if let Some(device) = wanted
        && losetup(&[device.as_os_str(), image.as_os_str()]).is_ok()
    {
        return Ok(device.to_path_buf());
    }
    losetup(&["--find".as_ref(), "--show".as_ref(), image.as_os_str()]).map(PathBuf::from)
}

/// No loop device over the simulated drives kept under `dir` (nor over those
/// devices) and no mount under `dir` is left.
pub fn assert_nothing_left(dir: &Path, at: &str) {
    let devices = loopdev::list().expect("list the loop devices");
    let drive_devices: Vec<&PathBuf> = devices
        .iter()
        .filter(|l| l.backing.starts_with(dir))
        .map(|l| &l.device)
        .collect();
    let left: Vec<&loopdev::LoopInfo> = devices
        .iter()
        .filter(|l| drive_devices.contains(&&l.device) || drive_devices.contains(&&l.backing))
        .collect();
    assert!(left.is_empty(), "{at} loop devices left: {left:?}");
    let mounts = mounts_under(dir);
    assert!(mounts.is_empty(), "{at} mounts left: {mounts:?}");
}
