//! A seeded chaos run against vdrive in a Kubernetes control plane (see
//! `support::cluster`): `vdrive controller` keeps the ledger in the Node's
//! annotations and `vdrive node` builds the volumes on its simulated drives,
//! each its own process. The test plays kubelet and the CSI sidecars, sending
//! random creates, stages, publishes, unpublishes, unstages, expansions and
//! deletes straight to their unix sockets, some given up after a few
//! milliseconds and some cut short by a SIGKILL of the controller, the node
//! plugin or both, which are then started again; now and then the node's
//! simulated drives are detached and attached again, often at other loop
//! devices. The model and the checks are `tests/chaos.rs`'s (`support::chaos`),
//! plus: after every restart and at the end the live claims in the Node's
//! annotations are exactly the model's volumes and sizes and no extent is
//! booked twice; a deleted volume's extents, once its node has erased and
//! released them, read zeros; and when everything is deleted and the processes
//! stopped, no loop device or mount of the test is left.
//!
//! With a drive detached (and the node's rescan, every second here, has marked
//! it missing in the Node's annotations), stages and expansions of its volumes
//! are refused with FAILED_PRECONDITION naming the drive; a DeleteVolume answers
//! OK, as in any cluster, but the volume's claims must stay releasing, unerased,
//! for as long as the drive is away; once it is back the node erases and
//! releases them, and only then are their extents read for zeros.
//!
//! `VDRIVE_CHAOS_SEED` (default [`DEFAULT_SEED`]) replays a run;
//! `VDRIVE_CHAOS_OPS` (default [`DEFAULT_OPS`]) sets its length:
//! `VDRIVE_CHAOS_OPS=1000 VDRIVE_K8S_BIN=... cargo test --test e2e_chaos -- --ignored --nocapture`.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kube::Client;
use tonic::transport::Channel;

use support::chaos::{Bed, Chaos, Rng, assert_nothing_left, env_or, images};
use support::cluster::{Cluster, Daemon, bin_dir_from_env, eventually};
use support::e2e::ReleaseUnder;
use vdrive::csi::proto::controller_client::ControllerClient;
use vdrive::csi::proto::node_client::NodeClient;
use vdrive::ledger::NodeLedger;

const DEFAULT_SEED: u64 = 20_250_311;
const DEFAULT_OPS: usize = 400;
const NODE: &str = "chaos";
/// Two TLC drives for the k8s class (sparse: only written blocks use disk).
const DRIVES: &str = "tlc:64x2,qlc:32x1";
const WAIT: Duration = Duration::from_secs(90);

/// The cluster, the controller and the node plugin. Field order is drop order:
/// the vdrive processes stop before the control plane.
struct ClusterBed {
    controller: Daemon,
    node: Daemon,
    controller_channel: Option<Channel>,
    node_channel: Option<Channel>,
    /// What the last [`Bed::kill`] killed: the controller, the node plugin.
    killed: (bool, bool),
    client: Client,
    /// After the vdrive processes, before the cluster: whatever a failed run
    /// left staged, and the node's simulated drives.
    _release: ReleaseUnder,
    cluster: Cluster,
}

impl ClusterBed {
    async fn start(bin: &Path) -> ClusterBed {
        let cluster = Cluster::start(bin);
        let client = cluster.client().await;
        cluster.add_csi_node(NODE, Some("k8s")).await;
        let mut node = cluster.start_vdrive_node(
            NODE,
            DRIVES,
            &[
                // This machine's kernel has no device-mapper.
                "--unsafe-loop-block-volumes",
                // Drives detached and attached again are noticed within a second.
                "--rescan-interval=1",
            ],
        );
        let controller = cluster.vdrive_controller_command(
            "controller",
            &[
                "--orphan-check-interval=0",
                // A pool share the test's drives hold.
                "--capacity-per-server-gib=100",
                "--system-reserve-per-server-gib=20",
            ],
        );
        let mut controller = cluster.spawn("vdrive-controller", controller);
        let node_channel = node.serving(&cluster.endpoint(NODE)).await;
        let controller_channel = controller.serving(&cluster.endpoint("controller")).await;
        let bed = ClusterBed {
            _release: ReleaseUnder::cluster(&cluster),
            controller,
            node,
            controller_channel: Some(controller_channel),
            node_channel: Some(node_channel),
            killed: (false, false),
            client,
            cluster,
        };
        // The node has reported its drives before the first CreateVolume.
        let client = bed.client.clone();
        let client = &client;
        eventually(
            "the node's drives in its annotations",
            WAIT,
            || async move {
                let ledger = node_ledger(client).await?;
                if ledger.drives.len() == 3 {
                    Ok(())
                } else {
                    Err(format!("{} drives", ledger.drives.len()))
                }
            },
        )
        .await;
        bed
    }
}

fn sigkill(daemon: &Daemon) {
    let pid = daemon.pid().expect("the process was started");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap_or_else(|e| panic!("cannot kill {}: {e}", daemon.name()));
}

/// The chaos Node's ledger as its annotations say.
async fn node_ledger(client: &Client) -> Result<NodeLedger, String> {
    support::e2e::node_ledger(client, NODE).await
}

impl Bed for ClusterBed {
    fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(
            self.controller_channel
                .clone()
                .expect("the controller runs"),
        )
    }

    fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.node_channel.clone().expect("the node plugin runs"))
    }

    fn staging_path(&self, volume_id: &str) -> PathBuf {
        self.cluster.dir().join("staging").join(volume_id)
    }

    fn target_path(&self, volume_id: &str) -> PathBuf {
        self.cluster
            .dir()
            .join("pods")
            .join(volume_id)
            .join("volume")
    }

    fn drives_dir(&self) -> PathBuf {
        self.cluster.dir().join(NODE).join("simulated-drives")
    }

    fn kill(&mut self, rng: &mut Rng) -> &'static str {
        let (what, controller, node) = match rng.below(3) {
            0 => ("controller killed", true, false),
            1 => ("node plugin killed", false, true),
            _ => ("controller and node plugin killed", true, true),
        };
        if controller {
            sigkill(&self.controller);
            self.controller_channel = None;
        }
        if node {
            sigkill(&self.node);
            self.node_channel = None;
        }
        self.killed = (controller, node);
        what
    }

    async fn revive(&mut self) {
        let (controller, node) = std::mem::take(&mut self.killed);
        if node {
            // Reaps the killed process, then starts it again.
            self.node.restart();
            let endpoint = self.cluster.endpoint(NODE);
            self.node_channel = Some(self.node.serving(&endpoint).await);
        }
        if controller {
            self.controller.restart();
            let endpoint = self.cluster.endpoint("controller");
            self.controller_channel = Some(self.controller.serving(&endpoint).await);
        }
    }

    /// DeleteVolume marks the claims releasing; the node erases and releases
    /// them on its own, once it can reach their drive.
    fn erases_later(&self) -> bool {
        true
    }

    async fn releasing(&mut self, at: &str) -> Vec<(String, String)> {
        let ledger = node_ledger(&self.client)
            .await
            .unwrap_or_else(|e| panic!("{at} {e}"));
        ledger
            .claims
            .iter()
            .filter(|c| c.releasing)
            .map(|c| (c.volume_id.clone(), c.physical_uuid.to_string()))
            .collect()
    }

    /// The node's rescan has marked the drives in `away` missing (or dropped
    /// them, when nothing was on them) and every other drive present, in the
    /// Node's annotations the controller reads.
    async fn await_drives(&mut self, away: &[String], at: &str) -> bool {
        let all: Vec<String> = images(&self.drives_dir())
            .into_iter()
            .map(|(_, uuid)| uuid)
            .collect();
        let client = &self.client;
        let all = &all;
        eventually(
            &format!("{at} the node to see drives {away:?} gone and the others present"),
            WAIT,
            || async move {
                let ledger = node_ledger(client).await?;
                let present: Vec<&String> = all
                    .iter()
                    .filter(|uuid| {
                        ledger
                            .drives
                            .iter()
                            .any(|d| d.uuid.to_string() == **uuid && !d.missing)
                    })
                    .collect();
                let wanted: Vec<&String> = all.iter().filter(|u| !away.contains(u)).collect();
                if present == wanted {
                    Ok(())
                } else {
                    Err(format!("present: {present:?}"))
                }
            },
        )
        .await;
        true
    }

    /// The live claims in the Node's annotations are the model's volumes, and no
    /// extent is booked twice.
    async fn check_store(&mut self, volumes: &[(String, i64)], at: &str) {
        let ledger = node_ledger(&self.client)
            .await
            .unwrap_or_else(|e| panic!("{at} {e}"));
        ledger
            .check_invariants()
            .unwrap_or_else(|e| panic!("{at} the Node's ledger: {e}"));
        let mut live: BTreeMap<String, i64> = BTreeMap::new();
        for claim in ledger.claims.iter().filter(|c| !c.releasing) {
            *live.entry(claim.volume_id.clone()).or_default() +=
                i64::try_from(claim.size_gib).expect("a size");
        }
        let live: Vec<(String, i64)> = live.into_iter().collect();
        assert_eq!(
            live, volumes,
            "{at} the live claims in Node {NODE}'s annotations (left) are not the volumes the test holds (right)"
        );
    }
}

#[test]
#[ignore = "needs Kubernetes binaries: run e2e/run"]
fn chaos_in_a_cluster_keeps_the_node_annotations_the_drives_and_the_node_consistent() {
    let bin = bin_dir_from_env();
    let seed: u64 = env_or("VDRIVE_CHAOS_SEED", DEFAULT_SEED);
    let ops: usize = env_or("VDRIVE_CHAOS_OPS", DEFAULT_OPS);
    eprintln!(
        "e2e chaos: seed {seed}, {ops} operations (replay: VDRIVE_CHAOS_SEED={seed} VDRIVE_CHAOS_OPS={ops} cargo test --test e2e_chaos -- --ignored)"
    );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(async move {
            let started = Instant::now();
            let bed = ClusterBed::start(&bin).await;
            let ready = started.elapsed();
            let mut chaos = Chaos::new(bed, seed, true);
            chaos.run(ops).await;
            chaos.bed.check_store(&[], &chaos.at()).await;

            // Stopped, the node plugin detaches its simulated drives and
            // leaves nothing behind.
            chaos.bed.controller.stop();
            chaos.bed.node.stop();
            let dir = chaos.bed.cluster.dir().to_path_buf();
            assert_nothing_left(&dir, &chaos.at());
            eprintln!(
                "e2e chaos: seed {seed}, {ops} operations in {:.1?} (the cluster up in {ready:.1?}): {:?}",
                started.elapsed() - ready,
                chaos.stats
            );
        });
}
