//! `kubectl vdrive` against a real control plane: the binary symlinked as
//! kubectl-vdrive, two `vdrive node`s with loop-backed drives and a `vdrive
//! controller`, volumes made over CSI; every table is checked row by row against
//! the ledger in the Nodes' annotations, and `-o json|yaml`, `--kubeconfig`,
//! `--context` and `-n` are exercised. Run with `e2e/run`.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::cluster::{Cluster, Daemon, bin_dir_from_env};
use support::e2e::{ReleaseUnder, node_ledger, runtime};
use vdrive::ledger::{Claim, PhysicalDrive};

const DRIVER: &str = "csi.vdrive.io";
const DRIVES: &str = "tlc:160x1,qlc:160x1";
const SHARE_GIB: u64 = 100;
const RESERVE_GIB: u64 = 20;

/// The cluster, the vdrive processes, and the plugin's symlink. Field order is
/// drop order: vdrive stops before the control plane.
struct Setup {
    controller: Daemon,
    _nodes: Vec<Daemon>,
    /// After the vdrive processes, before the cluster: whatever a failed
    /// scenario left staged, and the nodes' simulated drives.
    _release: ReleaseUnder,
    cluster: Cluster,
    plugin: PathBuf,
    _plugin_dir: tempfile::TempDir,
}

/// One run of the plugin.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Setup {
    fn kubeconfig(&self) -> String {
        self.cluster.kubeconfig_path().display().to_string()
    }

    /// `kubectl-vdrive ARGS` with no ambient kubeconfig.
    fn plugin_with_env(&self, args: &[&str], kubeconfig_env: Option<&str>) -> Run {
        let mut command = Command::new(&self.plugin);
        command.args(args).env("HOME", self.cluster.dir());
        match kubeconfig_env {
            Some(path) => command.env("KUBECONFIG", path),
            None => command.env_remove("KUBECONFIG"),
        };
        let out = command.output().expect("run kubectl-vdrive");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `kubectl-vdrive ARGS --kubeconfig <the cluster's>`, which must exit `code`.
    fn plugin(&self, args: &[&str], code: i32) -> Run {
        let kubeconfig = self.kubeconfig();
        let mut all = args.to_vec();
        all.extend(["--kubeconfig", &kubeconfig]);
        let run = self.plugin_with_env(&all, None);
        assert_eq!(
            run.code, code,
            "{args:?}\nstdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        );
        run
    }

    fn vdrive(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_vdrive"))
            .args(args)
            .output()
            .expect("run vdrive");
        assert!(out.status.success(), "vdrive {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A table's data rows, each split into its cells (no cell has blanks).
fn rows(table: &str, headers: &[&str]) -> Vec<Vec<String>> {
    let mut lines = table.lines();
    let head: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(head, headers, "{table}");
    lines
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn gi(gib: u64) -> String {
    format!("{gib}Gi")
}

/// Each node's ledger, read straight from its annotations.
async fn ledger(client: &kube::Client) -> BTreeMap<String, (Vec<PhysicalDrive>, Vec<Claim>)> {
    let mut out = BTreeMap::new();
    for name in ["n1", "n2"] {
        let ledger = node_ledger(client, name)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        out.insert(name.to_string(), (ledger.drives, ledger.claims));
    }
    out
}

/// The largest gap between the claims on a drive, computed apart from vdrive's
/// own allocator.
fn largest_gap(drive: &PhysicalDrive, claims: &[Claim]) -> u64 {
    let mut used: Vec<(u64, u64)> = claims
        .iter()
        .filter(|c| c.physical_uuid == drive.uuid)
        .map(|c| (c.offset_gib, c.offset_gib + c.size_gib))
        .collect();
    used.sort_unstable();
    let (mut at, mut largest) = (0, 0);
    for (start, end) in used {
        largest = largest.max(start.saturating_sub(at));
        at = at.max(end);
    }
    largest.max(drive.capacity_gib.saturating_sub(at))
}

async fn set_up() -> Setup {
    let cluster = Cluster::start(&bin_dir_from_env());
    let mut nodes = Vec::new();
    for (name, pool) in [("n1", "k8s"), ("n2", "vm")] {
        nodes.push(cluster.add_vdrive_node(name, Some(pool), DRIVES, &[]).await);
    }
    let controller = cluster
        .start_vdrive_controller_with_shares(SHARE_GIB, RESERVE_GIB)
        .await;
    let plugin_dir = tempfile::tempdir().expect("a temp dir");
    let plugin = plugin_dir.path().join("kubectl-vdrive");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vdrive"), &plugin).expect("symlink the plugin");
    Setup {
        _release: ReleaseUnder::cluster(&cluster),
        controller,
        _nodes: nodes,
        cluster,
        plugin,
        _plugin_dir: plugin_dir,
    }
}

/// Creates a volume over CSI; its id.
fn create_volume(
    setup: &Setup,
    name: &str,
    class: &str,
    node: &str,
    pvc: Option<(&str, &str)>,
) -> String {
    let endpoint = format!("unix://{}/controller.sock", setup.cluster.dir().display());
    let mut args = vec![
        "csi".to_string(),
        format!("--endpoint={endpoint}"),
        "create-volume".into(),
        name.into(),
        "--size=10Gi".into(),
        format!("--class={class}"),
        format!("--node={node}"),
    ];
    if let Some((namespace, claim)) = pvc {
        args.push(format!(
            "--param=csi.storage.k8s.io/pvc/namespace={namespace}"
        ));
        args.push(format!("--param=csi.storage.k8s.io/pvc/name={claim}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = setup.vdrive(&args);
    // "created <id> (10 GiB) on node <node>"
    out.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no volume id in {out:?}"))
        .to_string()
}

/// A PersistentVolume for `volume`, bound (pre-bound) to namespace/name.
async fn create_pv(client: &kube::Client, volume: &str, namespace: &str, claim: &str) {
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": { "name": format!("pv-{volume}") },
        "spec": {
            "capacity": { "storage": "10Gi" },
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "claimRef": { "namespace": namespace, "name": claim },
            "csi": { "driver": DRIVER, "volumeHandle": volume },
        },
    }))
    .expect("a PersistentVolume object");
    Api::<PersistentVolume>::all(client.clone())
        .create(&PostParams::default(), &pv)
        .await
        .expect("create the PersistentVolume");
}

#[test]
#[ignore = "needs Kubernetes binaries: run e2e/run"]
fn kubectl_vdrive_reads_the_ledger() {
    runtime().block_on(async {
        let setup = set_up().await;
        let client = setup.cluster.client().await;
        let bound = create_volume(
            &setup,
            "data",
            "k8s-pool-storage",
            "n1",
            Some(("apps", "data")),
        );
        let loose = create_volume(&setup, "scratch", "vm-pool-storage", "n2", None);
        create_pv(&client, &bound, "apps", "data").await;
        let ledger = ledger(&client).await;

        drives_match_the_ledger(&setup, &ledger);
        claims_match_the_ledger(&setup, &ledger, &bound, &loose);
        pools_count_the_servers(&setup);
        orphans_name_the_volume_without_a_pv(&setup, &loose);
        context_and_kubeconfig_are_kubectls(&setup);
        let _ = &setup.controller;
    });
}

fn drives_match_the_ledger(
    setup: &Setup,
    ledger: &BTreeMap<String, (Vec<PhysicalDrive>, Vec<Claim>)>,
) {
    let headers = [
        "NODE",
        "DRIVE",
        "TYPE",
        "SIZE",
        "CLAIMED",
        "FREE",
        "LARGEST-FREE",
        "STATE",
    ];
    let want: Vec<Vec<String>> = ledger
        .iter()
        .flat_map(|(node, (drives, claims))| {
            drives.iter().map(move |d| {
                let claimed: u64 = claims
                    .iter()
                    .filter(|c| c.physical_uuid == d.uuid)
                    .map(|c| c.size_gib)
                    .sum();
                vec![
                    node.clone(),
                    d.uuid.to_string(),
                    d.drive_type.as_str().to_string(),
                    gi(d.capacity_gib),
                    gi(claimed),
                    gi(d.capacity_gib - claimed),
                    gi(largest_gap(d, claims)),
                    "ok".to_string(),
                ]
            })
        })
        .collect();
    assert_eq!(want.len(), 4, "two drives on each of two nodes: {ledger:?}");
    let table = setup.plugin(&["drives"], 0);
    eprintln!("kubectl vdrive drives:\n{}", table.stdout);
    assert_eq!(rows(&table.stdout, &headers), want, "{}", table.stdout);
    assert!(
        want.iter().any(|r| r[4] != "0Gi"),
        "some drive holds a claim"
    );

    let json: Value = serde_json::from_str(&setup.plugin(&["drives", "-o", "json"], 0).stdout)
        .expect("drives -o json is JSON");
    let yaml: Value = serde_norway::from_str(&setup.plugin(&["drives", "-o", "yaml"], 0).stdout)
        .expect("drives -o yaml is YAML");
    assert_eq!(json, yaml);
    let listed: Vec<(String, u64)> = json
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| {
            (
                r["drive"].as_str().unwrap_or_default().to_string(),
                r["claimed_gib"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let expected: Vec<(String, u64)> = want
        .iter()
        .map(|r| {
            (
                r[1].clone(),
                r[4].trim_end_matches("Gi").parse().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(listed, expected);
}

fn claims_match_the_ledger(
    setup: &Setup,
    ledger: &BTreeMap<String, (Vec<PhysicalDrive>, Vec<Claim>)>,
    bound: &str,
    loose: &str,
) {
    let headers = ["VOLUME", "PVC", "POOL", "DRIVE", "OFFSET", "SIZE", "STATE"];
    let row = |c: &Claim| {
        let (pvc, state) = if c.volume_id == bound {
            ("apps/data", "bound")
        } else {
            ("-", "unbound")
        };
        vec![
            c.volume_id.clone(),
            pvc.to_string(),
            c.pool.map_or("-", |p| p.as_str()).to_string(),
            c.physical_uuid.to_string(),
            gi(c.offset_gib),
            gi(c.size_gib),
            state.to_string(),
        ]
    };
    let for_node = |node: &str| {
        let mut claims: Vec<&Claim> = ledger[node].1.iter().collect();
        claims.sort_by(|a, b| (&a.volume_id, a.part).cmp(&(&b.volume_id, b.part)));
        claims.into_iter().map(row).collect::<Vec<_>>()
    };
    let all: Vec<Vec<String>> = ["n1", "n2"].iter().flat_map(|n| for_node(n)).collect();
    assert!(
        all.iter().any(|r| r[0] == bound) && all.iter().any(|r| r[0] == loose),
        "{all:?}"
    );

    let table = setup.plugin(&["claims"], 0);
    eprintln!("kubectl vdrive claims:\n{}", table.stdout);
    assert_eq!(rows(&table.stdout, &headers), all, "{}", table.stdout);
    let table = setup.plugin(&["claims", "n2"], 0);
    assert_eq!(
        rows(&table.stdout, &headers),
        for_node("n2"),
        "{}",
        table.stdout
    );
    let table = setup.plugin(&["claims", "-n", "apps"], 0);
    let in_apps: Vec<Vec<String>> = all.iter().filter(|r| r[0] == bound).cloned().collect();
    assert_eq!(rows(&table.stdout, &headers), in_apps, "{}", table.stdout);
    setup.plugin(&["claims", "nowhere"], 2);

    let json: Value = serde_json::from_str(&setup.plugin(&["claims", "-o", "json"], 0).stdout)
        .expect("claims -o json is JSON");
    let yaml: Value = serde_norway::from_str(&setup.plugin(&["claims", "-o", "yaml"], 0).stdout)
        .expect("claims -o yaml is YAML");
    assert_eq!(json, yaml);
    let pvcs: HashMap<String, Value> = json
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| {
            (
                r["volume"].as_str().unwrap_or_default().to_string(),
                r["pvc"].clone(),
            )
        })
        .collect();
    assert_eq!(pvcs[bound], json!("apps/data"));
    assert_eq!(pvcs[loose], Value::Null);
}

fn pools_count_the_servers(setup: &Setup) {
    let shares = [
        format!("--capacity-per-server-gib={SHARE_GIB}"),
        format!("--system-reserve-per-server-gib={RESERVE_GIB}"),
    ];
    let args = |more: &[&'static str]| {
        let mut args: Vec<&str> = vec!["pools", &shares[0], &shares[1]];
        args.extend(more);
        args
    };
    let kubeconfig = setup.kubeconfig();
    let mut table_args = args(&[]);
    table_args.extend(["--kubeconfig", &kubeconfig]);
    let run = setup.plugin_with_env(&table_args, None);
    let headers = [
        "POOL",
        "SERVERS",
        "CAPACITY",
        "USED",
        "AVAILABLE",
        "USAGE",
        "HEALTH",
    ];
    eprintln!("kubectl vdrive pools:\n{}{}", run.stdout, run.stderr);
    let table = rows(&run.stdout, &headers);
    let summary: Vec<(&str, &str, &str, &str)> = table
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str(), r[2].as_str(), r[3].as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("k8s", "1", "100Gi", "10Gi"),
            ("vm", "1", "100Gi", "10Gi"),
            ("system-reserve", "2", "40Gi", "0Gi"),
        ],
        "{}",
        run.stdout
    );
    let healthy = table[..2].iter().all(|r| r[6] == "healthy");
    assert_eq!(
        run.code,
        if healthy { 0 } else { 1 },
        "{}{}",
        run.stdout,
        run.stderr
    );

    let mut json_args = args(&["-o", "json"]);
    json_args.extend(["--kubeconfig", &kubeconfig]);
    let run = setup.plugin_with_env(&json_args, None);
    let json: Value = serde_json::from_str(&run.stdout).expect("pools -o json is JSON");
    assert_eq!(json["status"]["k8s_pool"]["used_capacity_gb"], 10, "{json}");
    let mut yaml_args = args(&["-o", "yaml"]);
    yaml_args.extend(["--kubeconfig", &kubeconfig]);
    let run = setup.plugin_with_env(&yaml_args, None);
    let yaml: Value = serde_norway::from_str(&run.stdout).expect("pools -o yaml is YAML");
    assert_eq!(yaml["status"], json["status"]);
}

fn orphans_name_the_volume_without_a_pv(setup: &Setup, loose: &str) {
    let headers = ["VOLUME", "KIND", "NODE", "PV", "PVC", "SIZE", "REASON"];
    let run = setup.plugin(&["orphans"], 1);
    eprintln!("kubectl vdrive orphans:\n{}{}", run.stdout, run.stderr);
    let table = rows(&run.stdout, &headers);
    assert_eq!(table.len(), 1, "{}", run.stdout);
    assert_eq!(
        table[0][..6],
        [loose, "orphaned-claim", "n2", "-", "-", "10Gi"],
        "{}",
        run.stdout
    );
    let json: Value = serde_json::from_str(&setup.plugin(&["orphans", "-o", "json"], 1).stdout)
        .expect("orphans -o json is JSON");
    assert_eq!(json["orphaned_claims"][0]["volume_id"], loose, "{json}");
    assert_eq!(json["lost_volumes"], json!([]), "{json}");
    let yaml: Value = serde_norway::from_str(&setup.plugin(&["orphans", "-o", "yaml"], 1).stdout)
        .expect("orphans -o yaml is YAML");
    assert_eq!(yaml, json);
}

/// A kubeconfig whose current context points nowhere, with the fixture's
/// context beside it: only `--context` reaches the cluster.
fn context_and_kubeconfig_are_kubectls(setup: &Setup) {
    let text =
        std::fs::read_to_string(setup.cluster.kubeconfig_path()).expect("read the kubeconfig");
    let mut config: Value = serde_json::from_str(&text).expect("the fixture's kubeconfig is JSON");
    let context = config["current-context"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    config["clusters"]
        .as_array_mut()
        .expect("clusters")
        .push(json!({ "name": "nowhere", "cluster": { "server": "https://127.0.0.1:1" } }));
    config["contexts"]
        .as_array_mut()
        .expect("contexts")
        .push(json!({ "name": "nowhere", "context": { "cluster": "nowhere", "user": "admin" } }));
    config["current-context"] = json!("nowhere");
    let other = setup.cluster.dir().join("kubeconfig-two-contexts");
    std::fs::write(&other, config.to_string()).expect("write the second kubeconfig");
    let other = other.display().to_string();

    let run = setup.plugin_with_env(
        &["drives", "--kubeconfig", &other, "--context", &context],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 5, "{}", run.stdout);
    // KUBECONFIG, as kubectl passes it on, with --context.
    let run = setup.plugin_with_env(&["claims", "n1", "--context", &context], Some(&other));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = setup.plugin_with_env(
        &["drives", "--kubeconfig", &other, "--context", "missing"],
        None,
    );
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert!(run.stderr.contains("missing"), "{}", run.stderr);
    // The same commands as `vdrive kubectl`.
    let out = setup.vdrive(&["kubectl", "drives", "--kubeconfig", &setup.kubeconfig()]);
    assert_eq!(out.lines().count(), 5, "{out}");
}
