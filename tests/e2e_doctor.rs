//! `vdrive doctor` against a real control plane (see `support::cluster`):
//! `vdrive controller`, csi-provisioner with leader election, and one `vdrive
//! node` per simulated server with loop-backed drives. Green on the healthy
//! cluster, `--probe` included; then it names the node whose plugin stopped
//! and the pool node without drives, with their fixes, and exits 1.
//!
//! No kubelet runs: the test creates the Nodes and CSINodes a kubelet would.
//! Run with `e2e/run`.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::storage::v1::{CSINode, CSIStorageCapacity};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use support::cluster::{Cluster, Daemon, bin_dir_from_env, eventually};
use support::e2e::{ReleaseUnder, runtime};

const NAMESPACE: &str = "vdrive";
/// Small pool shares, so that the simulated drives are enough for a server.
const SHARE_GIB: u64 = 100;
const RESERVE_GIB: u64 = 20;
const DRIVES: &str = "tlc:160x1,qlc:160x1";
const WAIT: Duration = Duration::from_secs(90);
/// The chart's helm test ServiceAccount.
const DOCTOR_ACCOUNT: &str = "vdrive-doctor";
/// The Helm scripts/render-manifests builds and caches.
const HELM_VERSION: &str = "v3.22.0";

/// Field order is drop order: vdrive and the provisioner stop before the
/// control plane.
struct Setup {
    nodes: BTreeMap<String, Daemon>,
    _controller: Daemon,
    _provisioner: Daemon,
    /// After the vdrive processes, before the cluster: the nodes' simulated
    /// drives, and whatever the probe left staged.
    _release: ReleaseUnder,
    cluster: Cluster,
    client: Client,
}

/// What one `vdrive doctor` run said.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Setup {
    /// Runs `vdrive doctor` against this cluster, as its admin, with the
    /// test's pool shares.
    fn doctor(&self, args: &[&str]) -> Outcome {
        self.doctor_as(self.cluster.kubeconfig_path(), args)
    }

    /// Runs `vdrive doctor` with the credentials in `kubeconfig`.
    fn doctor_as(&self, kubeconfig: &Path, args: &[&str]) -> Outcome {
        let out = Command::new(env!("CARGO_BIN_EXE_vdrive"))
            .arg("doctor")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--capacity-per-server-gib={SHARE_GIB}"))
            .arg(format!("--system-reserve-per-server-gib={RESERVE_GIB}"))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run vdrive doctor: {e}"));
        let outcome = Outcome {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!(
            "vdrive doctor {args:?} exited {:?}:\n{}{}",
            outcome.code, outcome.stdout, outcome.stderr
        );
        outcome
    }
}

async fn set_up(bin: &Path) -> Setup {
    let cluster = Cluster::start(bin);
    let client = cluster.client().await;
    // The CSIDriver, the StorageClasses and the vdrive namespace as deploy/
    // installs them. Not its workloads: vdrive runs as the processes below,
    // and controller pods that no kubelet ever starts would rightly fail the
    // controller check.
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut apply = vec!["apply".to_string()];
    for file in ["namespace.yaml", "csidriver.yaml", "storageclasses.yaml"] {
        apply.push("-f".to_string());
        apply.push(deploy.join(file).display().to_string());
    }
    cluster.kubectl(apply);

    let mut nodes = BTreeMap::new();
    for (name, pool) in [("n1", "k8s"), ("n2", "vm")] {
        let daemon = cluster.add_vdrive_node(name, Some(pool), DRIVES, &[]).await;
        nodes.insert(name.to_string(), daemon);
    }
    let socket = cluster.socket("controller");
    let controller = cluster
        .start_vdrive_controller_with_shares(SHARE_GIB, RESERVE_GIB)
        .await;
    // Leader election as the chart runs it, its Lease in vdrive's namespace.
    let provisioner = cluster.start_provisioner(
        &socket,
        &[
            "--strict-topology",
            "--timeout=30s",
            "--retry-interval-max=5s",
            "--leader-election",
            &format!("--leader-election-namespace={NAMESPACE}"),
        ],
    );
    Setup {
        _release: ReleaseUnder::cluster(&cluster),
        nodes,
        _controller: controller,
        _provisioner: provisioner,
        cluster,
        client,
    }
}

/// The provisioner leads and has published capacity for both classes on
/// every node: what a settled cluster looks like.
async fn wait_until_settled(setup: &Setup, nodes: &[&str]) {
    let leases: Api<Lease> = Api::namespaced(setup.client.clone(), NAMESPACE);
    let leases = &leases;
    eventually("the provisioner's Lease", WAIT, || async move {
        let lease = leases
            .get_opt("csi-vdrive-io")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no Lease vdrive/csi-vdrive-io yet")?;
        lease
            .spec
            .and_then(|s| s.holder_identity)
            .map(|_| ())
            .ok_or_else(|| "held by nobody".to_string())
    })
    .await;
    let capacities: Api<CSIStorageCapacity> = Api::all(setup.client.clone());
    let capacities = &capacities;
    eventually(
        "capacity for both classes on every node",
        WAIT,
        || async move {
            let found = capacities
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items;
            let published = found.len();
            if published >= nodes.len() * 2 {
                Ok(())
            } else {
                Err(format!("{published} CSIStorageCapacity objects"))
            }
        },
    )
    .await;
}

fn findings(outcome: &Outcome) -> Vec<Value> {
    let report: Value = serde_json::from_str(&outcome.stdout)
        .unwrap_or_else(|e| panic!("-o json printed no JSON ({e}): {}", outcome.stdout));
    report["findings"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no findings array in {report}"))
}

fn failed<'a>(findings: &'a [Value], check: &str, subject: &str) -> Option<&'a Value> {
    findings
        .iter()
        .find(|f| f["check"] == check && f["subject"] == subject && f["status"] == "fail")
}

#[test]
#[ignore = "needs Kubernetes binaries: run e2e/run"]
fn doctor_is_green_on_a_healthy_cluster_and_names_each_fault() {
    let bin = bin_dir_from_env();
    runtime().block_on(async move {
        let mut setup = set_up(&bin).await;
        wait_until_settled(&setup, &["n1", "n2"]).await;
        healthy_with_a_probe(&setup);
        the_helm_test_account_is_enough(&setup).await;
        a_stopped_node_plugin_is_named(&mut setup).await;
        a_pool_node_without_drives_is_named(&setup).await;
    });
}

fn healthy_with_a_probe(setup: &Setup) {
    let green = setup.doctor(&["--probe", "--probe-timeout=90s"]);
    assert_eq!(green.code, Some(0), "doctor on a healthy cluster");
    for step in [
        "probe create",
        "probe bind",
        "probe delete",
        "controller",
        "orphans",
    ] {
        assert!(
            green
                .stdout
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(step)),
            "no ok {step} line in:\n{}",
            green.stdout
        );
    }
    assert!(green.stderr.is_empty(), "diagnostics: {}", green.stderr);
    // The probe cleaned up after itself.
    let leftovers = setup.cluster.kubectl([
        "get",
        "pvc",
        "-A",
        "-l",
        "app.kubernetes.io/component=doctor-probe",
        "-o",
        "name",
    ]);
    assert_eq!(leftovers.trim(), "", "the probe's claims are gone");

    // A class that keeps its volumes would keep the probe's: refused.
    let kept = setup.doctor(&["--probe", "--storage-class=vm-pool-storage", "-o", "json"]);
    assert_eq!(kept.code, Some(1), "a probe of a Retain class");
    let refused = findings(&kept)
        .into_iter()
        .find(|f| f["check"] == "probe" && f["status"] == "fail")
        .unwrap_or_else(|| panic!("no probe failure in {}", kept.stdout));
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or_default()
            .contains("retains"),
        "{refused}"
    );

    let json = setup.doctor(&["-o", "json"]);
    assert_eq!(json.code, Some(0));
    let report: Value = serde_json::from_str(&json.stdout).unwrap_or_default();
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["summary"]["fail"], 0, "{report}");
}

/// The chart's helm test account (probe on, as `--set doctor.probe=true`
/// renders it) may do all that doctor does: with a token of it, doctor is
/// as green as with the admin's.
async fn the_helm_test_account_is_enough(setup: &Setup) {
    let rendered = render_chart(&[
        "--show-only",
        "templates/tests/doctor.yaml",
        "--set",
        "doctor.probe=true",
    ]);
    // The account and its rights; the Pod itself needs a kubelet.
    let objects: Vec<&str> = rendered
        .split("\n---\n")
        .filter(|doc| !doc.lines().any(|l| l == "kind: Pod"))
        .collect();
    setup.cluster.apply(&objects.join("\n---\n"));
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": { "audiences": [], "expirationSeconds": 3600 },
    }))
    .unwrap_or_default();
    let token = Api::<ServiceAccount>::namespaced(setup.client.clone(), NAMESPACE)
        .create_token_request(DOCTOR_ACCOUNT, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("cannot get a token of {DOCTOR_ACCOUNT}: {e}"))
        .status
        .map(|s| s.token)
        .unwrap_or_else(|| panic!("the token request came back without a token"));
    let admin = std::fs::read_to_string(setup.cluster.kubeconfig_path())
        .unwrap_or_else(|e| panic!("cannot read the admin kubeconfig: {e}"));
    let mut config: Value = serde_json::from_str(&admin)
        .unwrap_or_else(|e| panic!("the admin kubeconfig is not JSON: {e}"));
    config["users"][0]["user"] = json!({ "token": token });
    let path = setup.cluster.dir().join("doctor.kubeconfig");
    std::fs::write(&path, config.to_string())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));

    let outcome = setup.doctor_as(&path, &["--probe", "--probe-timeout=90s"]);
    assert_eq!(
        outcome.code,
        Some(0),
        "doctor as {DOCTOR_ACCOUNT}: the chart's rights fall short"
    );
    assert!(
        !outcome.stdout.contains("cannot read"),
        "{}",
        outcome.stdout
    );
}

/// `helm template` of the chart with `args`. The Helm that
/// scripts/render-manifests builds, or `VDRIVE_HELM`.
fn render_chart(args: &[&str]) -> String {
    let helm = std::env::var_os("VDRIVE_HELM")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("VDRIVE_TOOLS_DIR")
                .map(PathBuf::from)
                .or_else(|| Some(PathBuf::from(std::env::var_os("HOME")?).join(".cache/vdrive/tools")))?;
            Some(cache.join(format!("helm-{HELM_VERSION}/helm")))
        })
        .filter(|path| path.exists())
        .unwrap_or_else(|| {
            panic!("no helm: run scripts/render-manifests once (it builds Helm {HELM_VERSION}), or set VDRIVE_HELM")
        });
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/vdrive");
    let out = Command::new(&helm)
        .arg("template")
        .arg("vdrive")
        .arg(&chart)
        .args(["--namespace", NAMESPACE])
        // The test cluster's version (helm template assumes an old one).
        .args(["--kube-version", "1.36.3"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", helm.display()));
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The node plugin on n2 stops and kubelet drops its registration.
async fn a_stopped_node_plugin_is_named(setup: &mut Setup) {
    if let Some(plugin) = setup.nodes.get_mut("n2") {
        plugin.stop();
    }
    Api::<CSINode>::all(setup.client.clone())
        .delete("n2", &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("cannot delete CSINode n2: {e}"));
    let text = setup.doctor(&[]);
    assert_eq!(text.code, Some(1), "doctor with n2's plugin stopped");
    let line = text
        .stdout
        .lines()
        .position(|l| l.starts_with("FAIL") && l.contains("node-plugin n2"))
        .unwrap_or_else(|| panic!("no node-plugin failure for n2 in:\n{}", text.stdout));
    let fix = text.stdout.lines().nth(line + 1).unwrap_or_default();
    assert!(
        fix.contains("fix: kubectl -n vdrive rollout status ds/vdrive-node"),
        "{fix}"
    );

    let json = setup.doctor(&["-o", "json"]);
    assert_eq!(json.code, Some(1));
    assert!(failed(&findings(&json), "node-plugin", "n2").is_some());
}

/// n3 is labelled into the k8s pool with a registered plugin, but no node
/// plugin ever reported a drive there.
async fn a_pool_node_without_drives_is_named(setup: &Setup) {
    setup.cluster.add_csi_node("n3", Some("k8s")).await;
    let json = setup.doctor(&["-o", "json"]);
    assert_eq!(json.code, Some(1), "doctor with n3 driveless");
    let all = findings(&json);
    let drives = failed(&all, "drives", "n3")
        .unwrap_or_else(|| panic!("no drives failure for n3 in {all:?}"));
    let fix = drives["fix"].as_str().unwrap_or_default();
    assert!(
        fix.contains("vdrive sign --all-not-root --type=tlc"),
        "{fix}"
    );
    assert!(
        drives["message"]
            .as_str()
            .unwrap_or_default()
            .contains("n3"),
        "{drives}"
    );
    // The text report names it too.
    let text = setup.doctor(&[]);
    assert_eq!(text.code, Some(1));
    assert!(
        text.stdout
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("drives n3")),
        "{}",
        text.stdout
    );
}

/// No API server to ask is an operational error, exit 2, said on stderr; bad
/// flags are too. Needs no cluster.
#[test]
fn no_api_server_or_bad_flags_exit_2() {
    let dir = std::env::temp_dir().join(format!("vdrive-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let kubeconfig = dir.join("kubeconfig");
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "gone", "cluster": { "server": "https://127.0.0.1:1", "insecure-skip-tls-verify": true } }],
        "users": [{ "name": "nobody", "user": { "token": "x" } }],
        "contexts": [{ "name": "gone", "context": { "cluster": "gone", "user": "nobody" } }],
        "current-context": "gone",
    });
    std::fs::write(&kubeconfig, config.to_string())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", kubeconfig.display()));
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vdrive"))
            .arg("doctor")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run vdrive doctor: {e}"))
    };
    let unreachable = run(&[&format!("--kubeconfig={}", kubeconfig.display())]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(unreachable.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert!(
        stderr.contains("cannot reach the Kubernetes API server"),
        "{stderr}"
    );

    let bad = run(&["--output=yaml"]);
    assert_eq!(bad.status.code(), Some(2));
    let bad = run(&["--probe-timeout=soon"]);
    assert_eq!(bad.status.code(), Some(2));
}
