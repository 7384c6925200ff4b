//! Running vdrive day to day, in a real control plane (see `support::cluster`):
//! servers joining and leaving pools and pools changing health are logged and
//! raised as Events; a claim orphaned across two checks at least the configured
//! age apart is released on its own (and not before); a Node labelled
//! `vdrive.io/sign-drives` has its blank drives signed by its node plugin, and
//! a drive holding a filesystem left alone, with an Event saying so.
//!
//! The scenarios run in order on one cluster. Run with `e2e/run`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use support::cluster::{Cluster, Daemon, bin_dir_from_env, eventually};
use support::e2e::{
    ReleaseUnder, events_about, node_ledger, runtime, wait_for_event_at, wait_for_socket,
};

const DRIVER: &str = "csi.vdrive.io";
const K8S_CLASS: &str = "k8s-pool-storage";
const SIGN_LABEL: &str = "vdrive.io/sign-drives";
/// Each pool server's share: one 80 GiB volume puts a one-server pool at 80 %.
const SHARE_GIB: u64 = 100;
const DRIVES: &str = "tlc:160x1,qlc:160x1";
/// Orphan checks every 2 s; a claim is released once orphaned at two checks
/// at least 8 s apart.
const CHECK_SECONDS: u64 = 2;
const RELEASE_AFTER_SECONDS: u64 = 8;
const WAIT: Duration = Duration::from_secs(90);

/// Field order is drop order: vdrive stops before the control plane.
struct Setup {
    controller: Daemon,
    nodes: Vec<Daemon>,
    /// After the vdrive processes, before the cluster: whatever a failed
    /// scenario left staged, and the nodes' simulated drives.
    _release: ReleaseUnder,
    cluster: Cluster,
    vdrive: PathBuf,
    client: Client,
}

#[test]
#[ignore = "needs Kubernetes binaries: run e2e/run"]
fn running_vdrive_day_to_day() {
    let bin = bin_dir_from_env();
    runtime().block_on(async move {
        let setup = set_up(&bin).await;
        servers_joining_and_leaving_a_pool_are_logged_and_raised(&setup).await;
        only_the_replica_holding_the_lease_reports(&setup).await;
        an_orphan_is_released_after_two_checks_and_not_before(&setup).await;
        a_node_labelled_for_signing_signs_its_blank_drives(&setup).await;
    });
}

async fn set_up(bin: &Path) -> Setup {
    let cluster = Cluster::start(bin);
    let client = cluster.client().await;
    let vdrive = PathBuf::from(env!("CARGO_BIN_EXE_vdrive"));
    // n1 is in the k8s pool; n2 in none, until the test labels it.
    let mut nodes = Vec::new();
    for (name, pool) in [("n1", Some("k8s")), ("n2", None)] {
        let daemon = cluster
            .add_vdrive_node(name, pool, DRIVES, &["--rescan-interval=2"])
            .await;
        nodes.push(daemon);
    }
    // The pool's class, where its health Events are shown.
    let class: StorageClass = serde_json::from_value(json!({
        "metadata": { "name": K8S_CLASS },
        "provisioner": DRIVER,
        "parameters": { "pool": "k8s" },
        "volumeBindingMode": "WaitForFirstConsumer",
    }))
    .expect("a StorageClass");
    Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &class)
        .await
        .expect("the k8s pool's StorageClass");
    let mut command = cluster.vdrive_controller_command(
        "controller",
        &[
            &format!("--capacity-per-server-gib={SHARE_GIB}"),
            "--system-reserve-per-server-gib=20",
            &format!("--orphan-check-interval={CHECK_SECONDS}"),
            &format!("--orphan-auto-release-after={RELEASE_AFTER_SECONDS}"),
        ],
    );
    command.env_remove("POD_NAMESPACE");
    let mut controller = cluster.spawn("vdrive-controller", command);
    wait_for_socket(&cluster.socket("controller"), &mut controller).await;
    Setup {
        _release: ReleaseUnder::cluster(&cluster),
        controller,
        nodes,
        cluster,
        vdrive,
        client,
    }
}

// ---- scenario 1 ----------------------------------------------------------------

async fn servers_joining_and_leaving_a_pool_are_logged_and_raised(setup: &Setup) {
    // The controller says at start what each pool holds.
    eventually("the pools at start in the log", WAIT, || async {
        let log = setup.controller.log();
        log.contains("pool scaling: pool k8s starts with 1 servers and 100 GiB")
            .then_some(())
            .ok_or(log)
    })
    .await;

    set_label(setup, "n2", "pool", Some("k8s")).await;
    let joined = wait_for_event(setup, "n2", "PoolServerJoined", "joined").await;
    assert_eq!(
        joined,
        "server n2 joined pool k8s: pool k8s now has 2 servers and 200 GiB (0 GiB used, 0.00%)"
    );
    assert!(
        setup
            .controller
            .log()
            .contains("pool scaling: server n2 joined pool k8s"),
        "the join is in the controller's log"
    );

    set_label(setup, "n2", "pool", None).await;
    let left = wait_for_event(setup, "n2", "PoolServerLeft", "left").await;
    assert_eq!(
        left,
        "server n2 left pool k8s: pool k8s now has 1 server and 100 GiB (0 GiB used, 0.00%)"
    );
    assert!(
        setup
            .controller
            .log()
            .contains("pool scaling: server n2 left pool k8s")
    );
}

// ---- scenario 1b ---------------------------------------------------------------

/// A second controller replica in a pod's place (POD_NAMESPACE set): it
/// reports pool changes only while csi-provisioner's Lease names it.
async fn only_the_replica_holding_the_lease_reports(setup: &Setup) {
    const NAMESPACE: &str = "vdrive";
    const STANDBY: &str = "vdrive-controller-standby";
    setup.cluster.create_namespace(NAMESPACE).await;
    let leases: Api<Lease> = Api::namespaced(setup.client.clone(), NAMESPACE);
    let lease = |holder: &str| Lease {
        metadata: ObjectMeta {
            name: Some("csi-vdrive-io".into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(3600),
            renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            ..LeaseSpec::default()
        }),
    };
    let held = lease("another-replica");
    leases
        .create(&PostParams::default(), &held)
        .await
        .expect("the provisioner's Lease");
    let mut command = setup.cluster.vdrive_controller_command(
        "standby",
        &[
            &format!("--capacity-per-server-gib={SHARE_GIB}"),
            "--system-reserve-per-server-gib=20",
            "--orphan-check-interval=0",
            &format!("--instance={STANDBY}"),
        ],
    );
    command.env("POD_NAMESPACE", NAMESPACE);
    let mut standby = setup.cluster.spawn("vdrive-controller-standby", command);
    wait_for_socket(&setup.cluster.socket("standby"), &mut standby).await;
    eventually("the standby's view of the pools", WAIT, || async {
        let log = standby.log();
        log.contains("pool scaling: pool vm starts with 0 servers")
            .then_some(())
            .ok_or(log)
    })
    .await;

    // Not the holder: the change is the other controller's to report.
    set_label(setup, "n2", "pool", Some("vm")).await;
    wait_for_event(setup, "n2", "PoolServerJoined", "joined pool vm").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let by_standby = |reason: &'static str| async move {
        events_about(&setup.client, None, "n2", reason)
            .await
            .into_iter()
            .filter(|e| e.reporting_instance.as_deref() == Some(STANDBY))
            .filter_map(|e| e.note)
            .collect::<Vec<_>>()
    };
    assert_eq!(by_standby("PoolServerJoined").await, Vec::<String>::new());
    assert!(
        !standby
            .log()
            .contains("pool scaling: server n2 joined pool vm"),
        "a replica that does not lead stays quiet"
    );

    // The Lease moves to the standby: it reports the next change.
    let moved = lease(STANDBY);
    leases
        .replace("csi-vdrive-io", &PostParams::default(), &{
            let mut moved = moved;
            moved.metadata.resource_version = leases
                .get("csi-vdrive-io")
                .await
                .expect("the Lease")
                .metadata
                .resource_version;
            moved
        })
        .await
        .expect("the Lease moves to the standby");
    set_label(setup, "n2", "pool", None).await;
    eventually(
        "the standby reporting n2 leaving the vm pool",
        WAIT,
        || async {
            let notes = by_standby("PoolServerLeft").await;
            notes
                .iter()
                .any(|n| n.starts_with("server n2 left pool vm"))
                .then_some(())
                .ok_or(format!("{notes:?}"))
        },
    )
    .await;
    assert!(
        standby
            .log()
            .contains("pool scaling: server n2 left pool vm")
    );
    drop(standby);
}

// ---- scenario 2 ----------------------------------------------------------------

async fn an_orphan_is_released_after_two_checks_and_not_before(setup: &Setup) {
    // A volume made through CSI alone: no PersistentVolume will ever name it.
    // 80 of the pool's 100 GiB: the pool goes from healthy to warning.
    let endpoint = format!("unix://{}/controller.sock", setup.cluster.dir().display());
    let created = Command::new(&setup.vdrive)
        .args([
            "csi",
            "--endpoint",
            &endpoint,
            "create-volume",
            "left-behind",
            "--size",
            "80Gi",
            "--class",
            K8S_CLASS,
            "--node",
            "n1",
        ])
        .output()
        .expect("vdrive csi runs");
    assert!(
        created.status.success(),
        "create-volume: {}{}",
        String::from_utf8_lossy(&created.stderr),
        String::from_utf8_lossy(&created.stdout)
    );
    let volume = live_volumes(setup, "n1")
        .await
        .into_iter()
        .next()
        .expect("the volume's claims are in n1's ledger");

    let worse = wait_for_event(
        setup,
        K8S_CLASS,
        "PoolHealthChanged",
        "from healthy to warning",
    )
    .await;
    assert!(
        worse.starts_with(
            "pool k8s health changed from healthy to warning: pool k8s now has 1 server and 100 GiB (80 GiB used, 80.00%)"
        ),
        "{worse}"
    );

    // The first check that sees it reports it, and releases nothing.
    let (reported_at, _) =
        wait_for_event_at(&setup.client, None, "n1", "OrphanedClaim", &volume).await;
    assert!(
        live_volumes(setup, "n1").await.contains(&volume),
        "one check does not release"
    );
    assert!(
        event_times(setup, "n1", "OrphanedClaimReleased")
            .await
            .is_empty(),
        "nothing released at the first check"
    );

    let (released_at, note) =
        wait_for_event_at(&setup.client, None, "n1", "OrphanedClaimReleased", &volume).await;
    assert!(
        note.contains(&format!(
            "after it stayed orphaned for at least {RELEASE_AFTER_SECONDS}s"
        )),
        "{note}"
    );
    let waited = released_at.duration_since(reported_at);
    assert!(
        waited.as_secs_f64() >= (RELEASE_AFTER_SECONDS - 1) as f64,
        "released {waited:?} after it was first reported orphaned, sooner than {RELEASE_AFTER_SECONDS}s"
    );
    // Through the erase path: the node erases, then the claims leave the ledger.
    eventually(
        "the released claims gone from n1's ledger",
        WAIT,
        || async {
            let claims = node_claims(setup, "n1").await;
            claims.is_empty().then_some(()).ok_or(format!("{claims:?}"))
        },
    )
    .await;
    let better = wait_for_event(
        setup,
        K8S_CLASS,
        "PoolHealthChanged",
        "from warning to healthy",
    )
    .await;
    assert!(better.ends_with("(0 GiB used, 0.00%)"), "{better}");
}

// ---- scenario 3 ----------------------------------------------------------------

async fn a_node_labelled_for_signing_signs_its_blank_drives(setup: &Setup) {
    // Two more disks in n2's simulated machine: one blank, one with ext4.
    let dir = setup.cluster.dir().join("n2/simulated-drives");
    let blank = attach_image(&dir.join("sim-spare-0.img"), 64 << 30);
    let formatted = attach_image(&dir.join("sim-spare-1.img"), 1 << 30);
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&formatted)
        .status()
        .expect("mkfs.ext4 runs");
    assert!(mkfs.success(), "mkfs.ext4 {}", formatted.display());
    let drives_before = node_drives(setup, "n2").await;

    set_label(setup, "n2", SIGN_LABEL, Some("qlc")).await;
    let note = wait_for_event(setup, "n2", "DrivesSigned", "signed").await;
    assert!(
        note.starts_with("vdrive.io/sign-drives=qlc: signed 1 drive(s), skipped 3"),
        "{note}"
    );
    assert!(
        note.contains(&format!("signed {} as QLC", blank.display())),
        "{note}"
    );
    assert!(
        note.contains(&format!("skipped {}: ", formatted.display())) && note.contains("ext4"),
        "the formatted disk is skipped, saying why: {note}"
    );
    assert!(
        note.contains("already signed as vdrive"),
        "the drives signed before are skipped: {note}"
    );
    // The new drive is recorded on the Node without waiting for a restart.
    eventually("the new drive in n2's inventory", WAIT, || async {
        let now = node_drives(setup, "n2").await;
        (now.len() == drives_before.len() + 1)
            .then_some(())
            .ok_or(format!("{now:?}"))
    })
    .await;

    // A value that names no drive type is reported, and signs nothing.
    set_label(setup, "n2", SIGN_LABEL, Some("fast")).await;
    let bad = wait_for_event(setup, "n2", "InvalidSignDrivesLabel", "fast").await;
    assert!(bad.contains("set it to tlc or qlc"), "{bad}");
    assert_eq!(event_times(setup, "n2", "DrivesSigned").await.len(), 1);
    assert!(
        setup.nodes[1]
            .log()
            .contains("vdrive.io/sign-drives: signed"),
        "the node plugin logs what it signed"
    );
}

/// A sparse image of `bytes` attached as a loop device; its device.
fn attach_image(image: &Path, bytes: u64) -> PathBuf {
    let file = std::fs::File::create(image).expect("the image file");
    file.set_len(bytes).expect("the image's size");
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(image)
        .output()
        .expect("losetup runs");
    assert!(out.status.success(), "losetup {}", image.display());
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

// ---- helpers -------------------------------------------------------------------

async fn set_label(setup: &Setup, node: &str, key: &str, value: Option<&str>) {
    let patch = json!({ "metadata": { "labels": { key: value } } });
    Api::<Node>::all(setup.client.clone())
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("cannot label {node}: {e}"));
}

/// The claims in `node`'s annotations.
async fn node_claims(setup: &Setup, node: &str) -> Vec<vdrive::ledger::Claim> {
    node_ledger(&setup.client, node)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .claims
}

/// The volume ids with live (not releasing) claims on `node`.
async fn live_volumes(setup: &Setup, node: &str) -> Vec<String> {
    let mut ids: Vec<String> = node_claims(setup, node)
        .await
        .into_iter()
        .filter(|c| !c.releasing)
        .map(|c| c.volume_id)
        .collect();
    ids.dedup();
    ids
}

/// The uuids of the drives in `node`'s annotations.
async fn node_drives(setup: &Setup, node: &str) -> Vec<String> {
    node_ledger(&setup.client, node)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .drives
        .into_iter()
        .map(|d| d.uuid.to_string())
        .collect()
}

/// The times of the Events with `reason` about `name` (any namespace).
async fn event_times(setup: &Setup, name: &str, reason: &str) -> Vec<k8s_openapi::jiff::Timestamp> {
    events_about(&setup.client, None, name, reason)
        .await
        .into_iter()
        .filter_map(|e| e.event_time.map(|t| t.0))
        .collect()
}

/// Waits for an Event with `reason` about `name` whose note contains `text`;
/// its note. vdrive's Events carry their time, so one without is not it.
async fn wait_for_event(setup: &Setup, name: &str, reason: &str, text: &str) -> String {
    wait_for_event_at(&setup.client, None, name, reason, text)
        .await
        .1
}
