//! What every `tests/e2e_*.rs` does with vdrive in a [`Cluster`]: start `vdrive
//! node` and `vdrive controller` as the cluster's processes, wait for their
//! sockets, clean up their drives and mounts, and read what they wrote back from
//! the API: the ledger in the Nodes' annotations and the Events they raised.

// Each test crate that says `mod support;` uses a different part of this.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use vdrive::cluster::annotations::{
    CLAIMS_ANNOTATION, DRIVES_ANNOTATION, decode_claims, decode_drives,
};
use vdrive::ledger::NodeLedger;

use super::cluster::{Cluster, Daemon, eventually};
use super::devices::release_everything_under;

/// How long the helpers here wait for the cluster to show something.
const WAIT: Duration = Duration::from_secs(90);
/// The CSI driver vdrive registers, and the topology key its nodes report.
const DRIVER: &str = "csi.vdrive.io";
const TOPOLOGY_KEY: &str = "topology.vdrive.io/node";

/// The vdrive binary cargo built for these tests.
pub fn vdrive_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vdrive"))
}

/// The runtime the e2e tests block on, from plain `#[test]`s: several
/// threads, so that a scenario's blocking calls (running `vdrive`, waiting on
/// a process) do not stall the kube clients and CSI channels it also drives.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Waits up to 30 s for `daemon` to create `path` (its socket), failing at
/// once with its log if it exits first.
pub async fn wait_for_socket(path: &Path, daemon: &mut Daemon) {
    for _ in 0..300 {
        if path.exists() {
            return;
        }
        daemon.assert_running();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} never appeared; log:\n{}", path.display(), daemon.log());
}

/// Releases the devices and mounts under a cluster's directory when dropped:
/// the simulated drives of its `vdrive node`s and whatever a failed test left
/// staged. Keep it after the vdrive processes (they hold the drives) and
/// before the [`Cluster`] (it removes the directory): as a field of a test's
/// fixture, or as a local declared between them.
pub struct ReleaseUnder(PathBuf);

impl ReleaseUnder {
    pub fn cluster(cluster: &Cluster) -> ReleaseUnder {
        ReleaseUnder(cluster.dir().to_path_buf())
    }
}

impl Drop for ReleaseUnder {
    fn drop(&mut self) {
        if !release_everything_under(&self.0) {
            eprintln!("cleanup: mounts remain under {}", self.0.display());
        }
    }
}

impl Cluster {
    /// Where a vdrive process started by the helpers below serves CSI:
    /// `<dir>/<name>.sock`.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir().join(format!("{name}.sock"))
    }

    /// `unix://` + [`Cluster::socket`], as `--endpoint` and CSI clients take it.
    pub fn endpoint(&self, name: &str) -> String {
        format!("unix://{}", self.socket(name).display())
    }

    /// Starts `vdrive node` for Node `name` on simulated `drives` (a
    /// `--simulate-drives` spec), serving on [`Cluster::socket`]`(name)`, with
    /// its state in `<dir>/<name>` and the kubelet's paths under the cluster's
    /// directory (the test plays kubelet). `extra_args` are the test's own
    /// flags (a rescan interval, a metrics address). Does not wait for it.
    pub fn start_vdrive_node(&self, name: &str, drives: &str, extra_args: &[&str]) -> Daemon {
        let dir = self.dir().display();
        let mut command = Command::new(vdrive_bin());
        command
            .arg("node")
            .arg(format!("--endpoint={}", self.endpoint(name)))
            .arg(format!("--node-id={name}"))
            .arg(format!("--state-dir={dir}/{name}"))
            .arg(format!("--simulate-drives={drives}"))
            .arg(format!("--kubelet-dir={dir}"))
            .arg(format!("--kubeconfig={}", self.kubeconfig_path().display()))
            .args(extra_args)
            .env("RUST_LOG", "info");
        self.spawn(&format!("vdrive-node-{name}"), command)
    }

    /// Adds Node `name` (8 CPUs, 32Gi) and its CSINode for vdrive, as its
    /// kubelet would: labelled with vdrive's topology key, and `pool=<pool>`
    /// when it serves one.
    pub async fn add_csi_node(&self, name: &str, pool: Option<&str>) {
        let mut labels = vec![(TOPOLOGY_KEY, name)];
        labels.extend(pool.map(|pool| ("pool", pool)));
        self.add_node(name, &labels, "8", "32Gi").await;
        self.create_csinode(name, DRIVER, &[TOPOLOGY_KEY]).await;
    }

    /// A server joining the cluster: [`Cluster::add_csi_node`], then its
    /// `vdrive node` ([`Cluster::start_vdrive_node`]), serving once this returns.
    pub async fn add_vdrive_node(
        &self,
        name: &str,
        pool: Option<&str>,
        drives: &str,
        extra_args: &[&str],
    ) -> Daemon {
        self.add_csi_node(name, pool).await;
        let mut daemon = self.start_vdrive_node(name, drives, extra_args);
        wait_for_socket(&self.socket(name), &mut daemon).await;
        daemon
    }

    /// Starts [`Cluster::vdrive_controller_command`] as `vdrive-controller`
    /// (`vdrive-controller-<socket>` when it is one of several) and waits
    /// until it serves.
    pub async fn start_vdrive_controller(&self, socket: &str, extra_args: &[&str]) -> Daemon {
        let name = match socket {
            "controller" => "vdrive-controller".to_string(),
            other => format!("vdrive-controller-{other}"),
        };
        let command = self.vdrive_controller_command(socket, extra_args);
        let mut daemon = self.spawn(&name, command);
        wait_for_socket(&self.socket(socket), &mut daemon).await;
        daemon
    }

    /// The plain `vdrive controller` most tests need, on socket `controller`:
    /// orphan checks off (their Events and releases would be the tests' noise)
    /// and small pool shares, so that the simulated drives fill a server.
    pub async fn start_vdrive_controller_with_shares(
        &self,
        share_gib: u64,
        reserve_gib: u64,
    ) -> Daemon {
        self.start_vdrive_controller(
            "controller",
            &[
                "--orphan-check-interval=0",
                &format!("--capacity-per-server-gib={share_gib}"),
                &format!("--system-reserve-per-server-gib={reserve_gib}"),
            ],
        )
        .await
    }

    /// `vdrive controller` as the cluster's admin, serving on
    /// [`Cluster::socket`]`(socket)`. Not started: callers name the process,
    /// and some change its environment first. `extra_args` carry everything
    /// the tests set differently, `--orphan-check-interval` included.
    pub fn vdrive_controller_command(&self, socket: &str, extra_args: &[&str]) -> Command {
        self.vdrive_controller_command_as(self.kubeconfig_path(), socket, extra_args)
    }

    /// Like [`Cluster::vdrive_controller_command`], with the credentials in
    /// `kubeconfig` (a ServiceAccount's, to test the RBAC the controller gets).
    pub fn vdrive_controller_command_as(
        &self,
        kubeconfig: &Path,
        socket: &str,
        extra_args: &[&str],
    ) -> Command {
        let mut command = Command::new(vdrive_bin());
        command
            .arg("controller")
            .arg(format!("--endpoint={}", self.endpoint(socket)))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(extra_args)
            .env("RUST_LOG", "info");
        command
    }
}

/// The ledger of Node `name` as its annotations say, decoded by vdrive's own
/// code; why not, when the Node is missing or an annotation does not decode.
pub async fn node_ledger(client: &Client, name: &str) -> Result<NodeLedger, String> {
    let node = Api::<Node>::all(client.clone())
        .get_opt(name)
        .await
        .map_err(|e| format!("Node {name}: {e}"))?
        .ok_or_else(|| format!("no Node {name}"))?;
    let annotations = node.annotations();
    let mut ledger = NodeLedger::new(name);
    if let Some(text) = annotations.get(CLAIMS_ANNOTATION) {
        ledger.claims = decode_claims(text)?;
    }
    if let Some(text) = annotations.get(DRIVES_ANNOTATION) {
        ledger.drives = decode_drives(text)?;
    }
    Ok(ledger)
}

/// The Events with `reason` about the object `name`, in `namespace` or (None)
/// in every namespace; why not, when they cannot be listed.
pub async fn try_events_about(
    client: &Client,
    namespace: Option<&str>,
    name: &str,
    reason: &str,
) -> Result<Vec<Event>, String> {
    let events: Api<Event> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let list = events
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("cannot list the Events: {e}"))?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .collect())
}

/// [`try_events_about`], failing the test when the Events cannot be listed.
pub async fn events_about(
    client: &Client,
    namespace: Option<&str>,
    name: &str,
    reason: &str,
) -> Vec<Event> {
    try_events_about(client, namespace, name, reason)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Waits for an Event with `reason` about `name` (see [`try_events_about`])
/// whose note contains `containing` ("" for any); its note. The Event's time
/// is not asked for: the sidecars' Events, recorded through core/v1, may have
/// none.
pub async fn wait_for_event(
    client: &Client,
    namespace: Option<&str>,
    name: &str,
    reason: &str,
    containing: &str,
) -> String {
    wait_for_event_where(client, namespace, name, reason, containing, |_| Some(()))
        .await
        .1
}

/// Like [`wait_for_event`], for an Event that has a time (vdrive's own,
/// recorded through events.k8s.io/v1): its time and its note.
pub async fn wait_for_event_at(
    client: &Client,
    namespace: Option<&str>,
    name: &str,
    reason: &str,
    containing: &str,
) -> (Timestamp, String) {
    wait_for_event_where(client, namespace, name, reason, containing, |e| {
        e.event_time.as_ref().map(|t| t.0)
    })
    .await
}

/// The first Event with `reason` about `name` whose note contains
/// `containing` and from which `pick` takes something, once there is one:
/// what `pick` took, and the note.
async fn wait_for_event_where<T>(
    client: &Client,
    namespace: Option<&str>,
    name: &str,
    reason: &str,
    containing: &str,
    pick: impl Fn(&Event) -> Option<T>,
) -> (T, String) {
    let pick = &pick;
    eventually(
        &format!("a {reason} Event on {name} saying {containing:?}"),
        WAIT,
        || async move {
            let found = try_events_about(client, namespace, name, reason).await?;
            found
                .iter()
                .find_map(|e| {
                    let note = e.note.clone().filter(|n| n.contains(containing))?;
                    Some((pick(e)?, note))
                })
                .ok_or_else(|| format!("notes so far: {:?}", notes(&found)))
        },
    )
    .await
}

/// The notes of `events`, for the messages of a wait that gave up.
pub fn notes(events: &[Event]) -> Vec<String> {
    events.iter().filter_map(|e| e.note.clone()).collect()
}
