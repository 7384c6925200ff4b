//! A Kubernetes control plane made of the real programs, run as local processes on
//! loopback for the end-to-end tests: etcd, kube-apiserver, kube-controller-manager
//! and kube-scheduler, plus the CSI sidecars on demand. `e2e/build-tools` builds
//! them; `e2e/run` builds them and runs the tests with `VDRIVE_K8S_BIN` pointing at
//! them.
//!
//! No kubelet runs. Tests create Node objects themselves ([`Cluster::add_node`]),
//! which the scheduler treats like any Ready node; the pods it binds to them never
//! start and never terminate on their own, so tests delete them with
//! [`Cluster::force_delete_pod`]. What the kubelet would otherwise do for a CSI
//! driver (the CSINode object, the Node's topology labels) the test does with
//! [`Cluster::create_csinode`] and the labels it gives `add_node`.
//!
//! Everything lives in one temp dir: certificates, kubeconfig, etcd's data and one
//! log per process (`<name>.log`). Dropping the [`Cluster`] stops every process it
//! started, also when the test panics (and then prints the end of every log), and
//! removes the dir unless `VDRIVE_E2E_KEEP=1`.

// Each test crate that says `mod support;` uses a different part of this.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount, Taint};
use k8s_openapi::api::storage::v1::CSINode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// The environment variable naming the directory of the Kubernetes binaries.
pub const BIN_ENV: &str = "VDRIVE_K8S_BIN";
/// Set to `1` to keep the cluster's temp dir (logs, certificates, etcd data).
pub const KEEP_ENV: &str = "VDRIVE_E2E_KEEP";
/// Where the CSI sidecars "run": the namespace of their CSIStorageCapacity objects.
pub const SIDECAR_NAMESPACE: &str = "kube-system";
/// The taint every new Node gets at admission until its kubelet reports Ready.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";

const SERVICE_CIDR: &str = "10.0.0.0/24";
/// How long a process gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Generous: a first start on a small, busy machine takes a while.
const START_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(200);
const LOG_TAIL_LINES: usize = 40;

/// The binaries `Cluster::start` cannot do without.
const REQUIRED_BINARIES: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
];

/// The controllers that make sense without kubelets. Left out on purpose:
/// node-lifecycle (it would mark every kubelet-less node unreachable and taint it,
/// and then evict its pods), attach-detach (it only acts on nodes whose kubelet
/// opted in, and there is no kubelet to finish an attach) and the networking,
/// certificate and quota controllers, which nothing here needs.
const CONTROLLERS: [&str; 15] = [
    "persistentvolume-binder-controller",
    "persistentvolume-expander-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
    "ephemeral-volume-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "pod-garbage-collector-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
];

/// The one openssl configuration all certificates come from. A file of our own so
/// that the distribution's default configuration adds nothing. Every leaf carries
/// a subjectAltName: rustls, unlike Go, accepts no certificate without one.
const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = IP:127.0.0.1, DNS:localhost, IP:10.0.0.1, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// The bin dir from `VDRIVE_K8S_BIN`, or a panic that says how to get one.
pub fn bin_dir_from_env() -> PathBuf {
    match std::env::var_os(BIN_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => panic!(
            "{BIN_ENV} is not set: it names the directory holding kube-apiserver, etcd and \
             the other Kubernetes binaries. Run the end-to-end tests with e2e/run, which \
             builds them (e2e/build-tools) and sets it."
        ),
    }
}

/// csi-provisioner's `--worker-threads`, `--kube-api-qps` and
/// `--kube-api-burst` as the chart passes them: `controller.provisioner` in
/// charts/vdrive/values.yaml, read from there so that the tests provision at
/// the pace of an installed driver.
pub fn chart_provisioner_pace() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/vdrive/values.yaml");
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let values: Value = serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    let pace = &values["controller"]["provisioner"];
    [
        ("workerThreads", "worker-threads"),
        ("kubeApiQps", "kube-api-qps"),
        ("kubeApiBurst", "kube-api-burst"),
    ]
    .into_iter()
    .map(|(key, flag)| match &pace[key] {
        Value::Number(value) => format!("--{flag}={value}"),
        other => panic!(
            "{}: controller.provisioner.{key} is {other}, not a number",
            path.display()
        ),
    })
    .collect()
}

/// Polls `check` until it returns `Ok`, for at most `timeout`; the panic on timeout
/// names `what` and carries the last `Err`, so say in it what was seen instead.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// One long-running process, its output (stdout and stderr) appended to a log
/// file. Stopped when dropped; `restart` starts it again with the same command.
pub struct Daemon {
    name: String,
    command: Command,
    log_path: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Starts `command` with its output in `log_path`.
    pub fn start(name: &str, mut command: Command, log_path: PathBuf) -> Daemon {
        // If the test process dies without unwinding (SIGKILL, abort), the kernel
        // kills the child too, so no control plane outlives its test. The signal is
        // tied to the thread that spawns: start daemons from the test's own thread
        // or a runtime worker, not from a short-lived thread such as
        // spawn_blocking's.
        // SAFETY: the closure runs between fork and exec and only calls prctl,
        // which is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        let mut daemon = Daemon {
            name: name.to_string(),
            command,
            log_path,
            child: None,
        };
        daemon.spawn();
        daemon
    }

    fn spawn(&mut self) {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log_path.display()));
        // A header per start, so that the log of a restarted process reads in order.
        writeln!(log, "==== start: {:?}", self.command)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.log_path.display()));
        let stderr = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot dup the log of {}: {e}", self.name));
        let child = self
            .command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({:?}): {e}", self.name, self.command));
        self.child = Some(child);
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log, over every start.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// Waits until this CSI driver answers Probe at `endpoint` (60 s at most)
    /// and returns its channel; panics with its log if it exits first or never
    /// answers.
    pub async fn serving(&mut self, endpoint: &str) -> tonic::transport::Channel {
        let log_path = self.log_path.clone();
        super::driver::wait_until_serving(&mut self.child, endpoint, &self.name, || {
            read_log(&log_path)
        })
        .await
    }

    /// How it ended, if it was started and has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exit_status().is_none()
    }

    /// Panics, with the end of its log, if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exit_status() {
            panic!(
                "{} exited ({status}); the end of {}:\n{}",
                self.name,
                self.log_path.display(),
                tail(&self.log(), LOG_TAIL_LINES)
            );
        }
    }

    /// SIGTERM, then SIGKILL if it is still there after a grace period; waits for
    /// it either way. Never panics: it runs from Drop, also during unwinding.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // The pid stays ours until we have waited for it, so the signal cannot reach
        // some other process that reused the number.
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(None) => thread::sleep(Duration::from_millis(50)),
                    _ => return,
                }
            }
            eprintln!(
                "{} did not exit within {STOP_GRACE:?} of SIGTERM; killing it",
                self.name
            );
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops it and starts it again with the same command; the log continues.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------

/// A running control plane; see the module documentation.
pub struct Cluster {
    bin_dir: PathBuf,
    /// The temp dir's path (kept here because `temp` is given up on drop).
    dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    kubeconfig: PathBuf,
    server: String,
    /// The control plane, in start order; stopped in reverse.
    daemons: Vec<Daemon>,
}

impl Cluster {
    /// Starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler
    /// from `bin_dir` and returns once the API server is ready, the scheduler and
    /// the controller-manager hold their leases, and the `default` namespace has
    /// its service account (so pods can be created there). Panics, saying why, if
    /// anything fails; whatever was started by then is stopped again.
    pub fn start(bin_dir: &Path) -> Cluster {
        Cluster::start_with(bin_dir, &[])
    }

    /// [`Cluster::start`], with more kube-controller-manager flags (a bench
    /// raising its API rate, as an operator of a busy cluster would).
    pub fn start_with(bin_dir: &Path, controller_manager_args: &[&str]) -> Cluster {
        let started = Instant::now();
        let bin_dir = bin_dir.canonicalize().unwrap_or_else(|e| {
            panic!(
                "no Kubernetes bin dir at {} ({e}); e2e/build-tools builds one",
                bin_dir.display()
            )
        });
        let missing: Vec<&str> = REQUIRED_BINARIES
            .into_iter()
            .filter(|name| !bin_dir.join(name).is_file())
            .collect();
        assert!(
            missing.is_empty(),
            "{} lacks {}; e2e/build-tools builds them",
            bin_dir.display(),
            missing.join(", ")
        );
        let temp = tempfile::Builder::new()
            .prefix("vdrive-e2e-")
            .tempdir()
            .expect("create the cluster's temp dir");
        let dir = temp.path().to_path_buf();
        let [
            etcd_port,
            etcd_peer_port,
            api_port,
            kcm_port,
            scheduler_port,
        ] = free_ports();
        let mut cluster = Cluster {
            bin_dir,
            kubeconfig: dir.join("admin.kubeconfig"),
            dir,
            temp: Some(temp),
            server: format!("https://127.0.0.1:{api_port}"),
            daemons: Vec::new(),
        };
        // From here on a panic drops `cluster`, which stops what was started.
        cluster.write_pki();
        cluster.write_kubeconfig();
        cluster.start_etcd(etcd_port, etcd_peer_port);
        cluster.start_apiserver(api_port, etcd_port);
        cluster.start_controller_manager(kcm_port, controller_manager_args);
        cluster.start_scheduler(scheduler_port);
        cluster.wait_ready("the controller-manager and the scheduler", |c| {
            c.lease_holder("kube-controller-manager")?;
            c.lease_holder("kube-scheduler")?;
            // Created by the serviceaccount controller; pod admission needs it.
            c.try_kubectl(["get", "serviceaccount", "default", "--namespace", "default"])
                .map(drop)
        });
        eprintln!(
            "cluster up at {} in {:.1}s; files in {}",
            cluster.server,
            started.elapsed().as_secs_f64(),
            cluster.dir.display()
        );
        cluster
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// A binary from the bin dir (`csi-provisioner`, `kubectl`, ...).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// The temp dir: logs, certificates, kubeconfig. A good place for sockets and
    /// state of the processes a test starts: it goes away with the cluster.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A kubeconfig of a cluster admin (group system:masters), with file paths to
    /// the CA, certificate and key; kubectl, kube-rs and the sidecars all take it.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The log of a process this cluster started (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`, `kube-scheduler`, `csi-provisioner`, or the
    /// name given to [`Cluster::spawn`]); empty if there is none.
    pub fn log(&self, name: &str) -> String {
        read_log(&self.dir.join(format!("{name}.log")))
    }

    /// Starts `command` with its output in `<dir>/<name>.log`; the returned
    /// handle stops it on drop. Keep the handle in a variable declared after the
    /// cluster, so that it is dropped (stopped) first.
    pub fn spawn(&self, name: &str, command: Command) -> Daemon {
        Daemon::start(name, command, self.dir.join(format!("{name}.log")))
    }

    /// A client as the cluster admin.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", self.kubeconfig.display()));
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap_or_else(|e| panic!("kube-rs refuses {}: {e}", self.kubeconfig.display()));
        kube::Client::try_from(config).expect("build a Kubernetes client")
    }

    /// A client that presents `token` (a service-account token, say) instead of
    /// the admin's certificate.
    pub async fn client_with_token(&self, token: &str) -> kube::Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", self.kubeconfig.display()));
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap_or_else(|e| panic!("kube-rs refuses {}: {e}", self.kubeconfig.display()));
        config.auth_info = serde_json::from_value(json!({ "token": token }))
            .expect("an AuthInfo with a bearer token");
        kube::Client::try_from(config).expect("build a Kubernetes client")
    }

    /// Runs kubectl as the cluster admin; its stdout, or why it failed.
    pub fn try_kubectl<I, S>(&self, args: I) -> Result<String, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl_with_input(args, None)
    }

    /// Runs kubectl as the cluster admin and returns its stdout; panics if it fails.
    pub fn kubectl<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.try_kubectl(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `kubectl apply --server-side -f -` of `manifests` (YAML or JSON, several
    /// documents allowed); panics if it fails.
    pub fn apply(&self, manifests: &str) -> String {
        self.kubectl_with_input(
            ["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(manifests),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn kubectl_with_input<I, S>(&self, args: I, input: Option<&str>) -> Result<String, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let shown = args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = Command::new(self.bin("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            // Never hang a test on an API server that accepts but does not answer.
            .arg("--request-timeout=30s")
            .args(&args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run kubectl {shown}: {e}"))?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(text.as_bytes())
                .map_err(|e| format!("cannot feed kubectl {shown}: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("kubectl {shown}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {shown} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    // -- Nodes, CSINodes, namespaces, pods ----------------------------------

    /// Creates a Node the scheduler will place pods on: the given labels plus
    /// `kubernetes.io/hostname` and `kubernetes.io/os` (as a kubelet would set
    /// them), no taints, and a Ready status with `cpu` and `memory` (quantities
    /// such as "4" and "16Gi") and 110 pods of capacity, all allocatable.
    ///
    /// No kubelet heartbeats this node and nothing needs it to: without the
    /// node-lifecycle controller nobody marks a silent node NotReady, so it stays
    /// Ready until [`Cluster::set_node_ready`] says otherwise.
    pub async fn add_node(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        cpu: &str,
        memory: &str,
    ) -> Node {
        let nodes: Api<Node> = Api::all(self.client().await);
        let mut all_labels = BTreeMap::from([
            ("kubernetes.io/hostname", name),
            ("kubernetes.io/os", "linux"),
        ]);
        all_labels.extend(labels.iter().copied());
        let node: Node =
            serde_json::from_value(json!({ "metadata": { "name": name, "labels": all_labels } }))
                .expect("a Node object");
        let created = nodes
            .create(&PostParams::default(), &node)
            .await
            .unwrap_or_else(|e| panic!("cannot create Node {name}: {e}"));
        // Admission (TaintNodesByCondition) taints every new Node not-ready; the
        // node-lifecycle controller would lift the taint once the kubelet reports
        // Ready. That controller does not run here, so lift it ourselves.
        let taints: Vec<Taint> = created
            .spec
            .and_then(|spec| spec.taints)
            .unwrap_or_default()
            .into_iter()
            .filter(|taint| taint.key != NOT_READY_TAINT)
            .collect();
        nodes
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "taints": taints } })),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot untaint Node {name}: {e}"));
        let resources = json!({
            "cpu": cpu,
            "memory": memory,
            "pods": "110",
            "ephemeral-storage": "100Gi",
        });
        let status = json!({
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": node_conditions(true),
                "addresses": [
                    { "type": "InternalIP", "address": "127.0.0.1" },
                    { "type": "Hostname", "address": name },
                ],
                "nodeInfo": {
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "kubeletVersion": "v1.36.3",
                },
            }
        });
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_or_else(|e| panic!("cannot set the status of Node {name}: {e}"))
    }

    /// Sets the Node's Ready condition, as a kubelet would (or a dead one would
    /// stop doing). The scheduler does not look at it, only at taints: add
    /// `node.kubernetes.io/not-ready` too when a test needs that effect.
    pub async fn set_node_ready(&self, name: &str, ready: bool) -> Node {
        let nodes: Api<Node> = Api::all(self.client().await);
        let status = json!({ "status": { "conditions": node_conditions(ready) } });
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_or_else(|e| panic!("cannot set the Ready condition of Node {name}: {e}"))
    }

    /// Creates the CSINode object the kubelet creates when a CSI driver registers
    /// on `node`: owned by the Node (so it goes with it), listing `driver` with
    /// node id = node name and `topology_keys`. The Node must already carry a
    /// label for each topology key (give them to `add_node`): the kubelet sets
    /// them from NodeGetInfo, and the provisioner and scheduler read them there.
    pub async fn create_csinode(
        &self,
        node: &str,
        driver: &str,
        topology_keys: &[&str],
    ) -> CSINode {
        let client = self.client().await;
        let the_node = Api::<Node>::all(client.clone())
            .get(node)
            .await
            .unwrap_or_else(|e| panic!("cannot read Node {node}: {e}"));
        let labels = the_node.metadata.labels.clone().unwrap_or_default();
        if let Some(key) = topology_keys.iter().find(|key| !labels.contains_key(**key)) {
            panic!(
                "Node {node} has no label {key}: give it to add_node, as the kubelet would set it"
            );
        }
        let csinode: CSINode = serde_json::from_value(json!({
            "metadata": {
                "name": node,
                "ownerReferences": [{
                    "apiVersion": "v1",
                    "kind": "Node",
                    "name": node,
                    "uid": the_node.metadata.uid,
                }],
            },
            "spec": {
                "drivers": [{ "name": driver, "nodeID": node, "topologyKeys": topology_keys }],
            },
        }))
        .expect("a CSINode object");
        Api::<CSINode>::all(client)
            .create(&PostParams::default(), &csinode)
            .await
            .unwrap_or_else(|e| panic!("cannot create CSINode {node}: {e}"))
    }

    /// Creates a namespace and waits for its `default` service account, without
    /// which the API server refuses pods there.
    pub async fn create_namespace(&self, name: &str) {
        let client = self.client().await;
        let namespace: Namespace = serde_json::from_value(json!({ "metadata": { "name": name } }))
            .expect("a Namespace object");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));
        let accounts: Api<ServiceAccount> = Api::namespaced(client, name);
        let accounts = &accounts;
        eventually(
            &format!("the default service account of namespace {name}"),
            Duration::from_secs(60),
            || async move {
                match accounts.get_opt("default").await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("not there yet".to_string()),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await;
    }

    /// Waits until the scheduler has bound the pod and returns its node. On
    /// timeout the panic carries the pod's PodScheduled condition, which says why
    /// no node fits.
    pub async fn wait_for_pod_node(&self, namespace: &str, pod: &str, timeout: Duration) -> String {
        let pods: Api<Pod> = Api::namespaced(self.client().await, namespace);
        let pods = &pods;
        eventually(
            &format!("pod {namespace}/{pod} to be scheduled"),
            timeout,
            || async move {
                let found = pods.get(pod).await.map_err(|e| e.to_string())?;
                if let Some(node) = found.spec.as_ref().and_then(|s| s.node_name.clone()) {
                    return Ok(node);
                }
                let scheduled = found
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.type_ == "PodScheduled");
                Err(match scheduled {
                    Some(c) => format!(
                        "PodScheduled={} {}: {}",
                        c.status,
                        c.reason.unwrap_or_default(),
                        c.message.unwrap_or_default()
                    ),
                    None => "not scheduled yet".to_string(),
                })
            },
        )
        .await
    }

    /// Deletes a pod at once (grace period 0). Without a kubelet an ordinary
    /// delete only marks the pod terminating, forever. Gone already is fine.
    pub async fn force_delete_pod(&self, namespace: &str, pod: &str) {
        let pods: Api<Pod> = Api::namespaced(self.client().await, namespace);
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        match pods.delete(pod, &now).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(e) => panic!("cannot delete pod {namespace}/{pod}: {e}"),
        }
    }

    // -- CSI sidecars --------------------------------------------------------

    /// Starts csi-provisioner for the CSI controller serving on `csi_socket`, as
    /// the cluster admin, with what vdrive's controller needs: PVC/PV names in
    /// CreateVolume's parameters (`--extra-create-metadata`), CSIStorageCapacity
    /// objects in [`SIDECAR_NAMESPACE`] without an owner, refreshed every 2 s
    /// (`--enable-capacity`, so the CSIDriver object should say
    /// `storageCapacity: true` for the scheduler to use them), and verbose CSI call
    /// logging, at the pace the chart sets ([`chart_provisioner_pace`]).
    /// `extra_args` come last and so win over these. Topology needs no
    /// flag: it is always on. The log is `csi-provisioner.log`.
    pub fn start_provisioner(&self, csi_socket: &Path, extra_args: &[&str]) -> Daemon {
        let mut command = Command::new(self.bin("csi-provisioner"));
        command
            .arg(format!("--csi-address={}", csi_socket.display()))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(chart_provisioner_pace())
            .args([
                "--extra-create-metadata",
                "--enable-capacity",
                "--capacity-ownerref-level=-1",
                "--capacity-poll-interval=2s",
                // Its default of 1 write a second (burst 5) would take 6 s to
                // publish a new class on three nodes.
                "--kube-api-capacity-qps=20",
                "--kube-api-capacity-burst=20",
                // 5 logs every CSI request and response.
                "--v=5",
            ])
            .args(extra_args)
            // The namespace of its CSIStorageCapacity objects; the pod name it
            // would use for their owner (unused at ownerref level -1).
            .env("NAMESPACE", SIDECAR_NAMESPACE)
            .env("POD_NAME", "csi-provisioner");
        self.spawn("csi-provisioner", command)
    }

    /// Starts csi-resizer for the CSI controller serving on `csi_socket`, as the
    /// cluster admin. `extra_args` come last and so win. The log is
    /// `csi-resizer.log`.
    pub fn start_resizer(&self, csi_socket: &Path, extra_args: &[&str]) -> Daemon {
        let mut command = Command::new(self.bin("csi-resizer"));
        command
            .arg(format!("--csi-address={}", csi_socket.display()))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--v=5")
            .args(extra_args);
        self.spawn("csi-resizer", command)
    }

    // -- Start-up ------------------------------------------------------------

    fn pki(&self, file: &str) -> String {
        self.dir.join("pki").join(file).display().to_string()
    }

    /// A CA; the API server's serving certificate (127.0.0.1, localhost and the
    /// in-cluster names); an admin client certificate (group system:masters); the
    /// service-account signing key pair. EC P-256 throughout: quick to generate,
    /// and Go, rustls and openssl all take it.
    fn write_pki(&self) {
        let pki = self.dir.join("pki");
        fs::create_dir(&pki).expect("create the pki dir");
        fs::write(pki.join("openssl.cnf"), OPENSSL_CNF).expect("write openssl.cnf");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec![
            "req",
            "-x509",
            "-new",
            "-config",
            "openssl.cnf",
            "-extensions",
            "ca",
        ];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "7",
            "-subj",
            "/CN=vdrive-e2e-ca",
        ]);
        openssl(&pki, &ca);
        let leaves = [
            ("apiserver", "/CN=kube-apiserver", "server"),
            ("admin", "/O=system:masters/CN=vdrive-e2e-admin", "client"),
        ];
        for (serial, (name, subject, extensions)) in (1001..).zip(leaves) {
            let (key, csr, crt) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
            );
            let mut request = vec!["req", "-new", "-config", "openssl.cnf"];
            request.extend(ec);
            request.extend(["-keyout", &key, "-out", &csr, "-subj", subject]);
            openssl(&pki, &request);
            let serial = serial.to_string();
            openssl(
                &pki,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-set_serial",
                    &serial,
                    "-days",
                    "7",
                    "-extfile",
                    "openssl.cnf",
                    "-extensions",
                    extensions,
                    "-out",
                    &crt,
                ],
            );
        }
        openssl(
            &pki,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "sa.key",
            ],
        );
        openssl(
            &pki,
            &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"],
        );
    }

    /// JSON, which is YAML too: no quoting questions about the paths.
    fn write_kubeconfig(&self) {
        let kubeconfig = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": "vdrive-e2e",
                "cluster": { "server": self.server, "certificate-authority": self.pki("ca.crt") },
            }],
            "users": [{
                "name": "admin",
                "user": {
                    "client-certificate": self.pki("admin.crt"),
                    "client-key": self.pki("admin.key"),
                },
            }],
            "contexts": [{ "name": "vdrive-e2e", "context": { "cluster": "vdrive-e2e", "user": "admin" } }],
            "current-context": "vdrive-e2e",
        });
        let text = serde_json::to_string_pretty(&kubeconfig).expect("serialise the kubeconfig");
        fs::write(&self.kubeconfig, text).expect("write the kubeconfig");
    }

    fn start_control_plane(&mut self, name: &str, args: Vec<String>) {
        let mut command = Command::new(self.bin(name));
        command.args(args);
        let daemon = self.spawn(name, command);
        self.daemons.push(daemon);
    }

    /// Polls `check` until it is `Ok`, while making sure no process has died.
    fn wait_ready(&mut self, what: &str, mut check: impl FnMut(&Cluster) -> Result<(), String>) {
        let started = Instant::now();
        loop {
            for daemon in &mut self.daemons {
                daemon.assert_running();
            }
            match check(self) {
                Ok(()) => return,
                Err(last) if started.elapsed() > START_TIMEOUT => panic!(
                    "timed out after {START_TIMEOUT:?} waiting for {what}; last seen: {last}\n\
                     (the logs are in {})",
                    self.dir.display()
                ),
                Err(_) => thread::sleep(POLL),
            }
        }
    }

    fn start_etcd(&mut self, port: u16, peer_port: u16) {
        let client_url = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let args = vec![
            "--name=vdrive-e2e".to_string(),
            format!("--data-dir={}", self.dir.join("etcd").display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=vdrive-e2e={peer_url}"),
            // Test data need not survive a power cut, and an fsync per write
            // slows the API server down on a slow disk.
            "--unsafe-no-fsync".to_string(),
        ];
        self.start_control_plane("etcd", args);
        self.wait_ready("etcd to report healthy", |_| etcd_health(port));
    }

    fn start_apiserver(&mut self, port: u16, etcd_port: u16) {
        let args = vec![
            "--bind-address=127.0.0.1".to_string(),
            "--advertise-address=127.0.0.1".to_string(),
            format!("--secure-port={port}"),
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            format!("--cert-dir={}", self.dir.join("kube-apiserver").display()),
            format!("--tls-cert-file={}", self.pki("apiserver.crt")),
            format!("--tls-private-key-file={}", self.pki("apiserver.key")),
            format!("--client-ca-file={}", self.pki("ca.crt")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_string(),
            format!("--service-account-key-file={}", self.pki("sa.pub")),
            format!("--service-account-signing-key-file={}", self.pki("sa.key")),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--authorization-mode=Node,RBAC".to_string(),
            // The node plugin's DaemonSet is privileged.
            "--allow-privileged=true".to_string(),
        ];
        self.start_control_plane("kube-apiserver", args);
        self.wait_ready("the API server's /readyz", |c| {
            let answer = c.try_kubectl(["get", "--raw", "/readyz"])?;
            if answer.trim() == "ok" {
                Ok(())
            } else {
                Err(answer)
            }
        });
    }

    /// The common flags of the controller-manager and the scheduler: the admin
    /// kubeconfig, secure serving on loopback only. No authentication or
    /// authorization kubeconfig: nothing calls their ports, and with one they
    /// keep logging errors about the front-proxy CA this cluster does not have.
    fn component_args(&self, name: &str, port: u16) -> Vec<String> {
        vec![
            format!("--kubeconfig={}", self.kubeconfig.display()),
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={port}"),
            // Leader election stays on: the lease is how we know it is up.
            "--leader-elect=true".to_string(),
            format!("--cert-dir={}", self.dir.join(name).display()),
        ]
    }

    fn start_controller_manager(&mut self, port: u16, more_args: &[&str]) {
        let mut args = self.component_args("kube-controller-manager", port);
        args.extend([
            format!("--controllers={}", CONTROLLERS.join(",")),
            // Each controller acts as its own service account, with the RBAC
            // roles of a real cluster, so missing permissions show up here too.
            "--use-service-account-credentials=true".to_string(),
            format!("--service-account-private-key-file={}", self.pki("sa.key")),
            format!("--root-ca-file={}", self.pki("ca.crt")),
            // Retry binding/provisioning sooner than the 15 s default.
            "--pvclaimbinder-sync-period=5s".to_string(),
        ]);
        args.extend(more_args.iter().map(|a| a.to_string()));
        self.start_control_plane("kube-controller-manager", args);
    }

    fn start_scheduler(&mut self, port: u16) {
        let args = self.component_args("kube-scheduler", port);
        self.start_control_plane("kube-scheduler", args);
    }

    /// Who holds the kube-system lease `name`, if anyone does.
    fn lease_holder(&self, name: &str) -> Result<String, String> {
        let holder = self.try_kubectl([
            "get",
            "lease",
            name,
            "--namespace=kube-system",
            "--output=jsonpath={.spec.holderIdentity}",
        ])?;
        if holder.is_empty() {
            Err(format!("lease {name} has no holder"))
        } else {
            Ok(holder)
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The scheduler and controller-manager first, then the API server, then
        // etcd: each stops while what it talks to is still there.
        while let Some(mut daemon) = self.daemons.pop() {
            daemon.stop();
        }
        if thread::panicking() {
            print_log_tails(&self.dir);
        }
        let Some(temp) = self.temp.take() else {
            return;
        };
        if std::env::var_os(KEEP_ENV).is_some_and(|v| v == "1") {
            eprintln!(
                "kept the cluster's files ({KEEP_ENV}=1): {}",
                temp.keep().display()
            );
        } else if let Err(e) = temp.close() {
            eprintln!("could not remove {}: {e}", self.dir.display());
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The Ready condition as given, and the kubelet's pressure conditions all clear.
fn node_conditions(ready: bool) -> Value {
    let now = serde_json::to_value(Time(Timestamp::now())).expect("serialise a timestamp");
    let condition = |type_: &str, status: bool, reason: &str| {
        json!({
            "type": type_,
            "status": if status { "True" } else { "False" },
            "reason": reason,
            "message": "set by the end-to-end tests",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        })
    };
    json!([
        condition(
            "Ready",
            ready,
            if ready {
                "KubeletReady"
            } else {
                "KubeletNotReady"
            }
        ),
        condition("MemoryPressure", false, "KubeletHasSufficientMemory"),
        condition("DiskPressure", false, "KubeletHasNoDiskPressure"),
        condition("PIDPressure", false, "KubeletHasSufficientPID"),
    ])
}

/// `N` distinct free loopback ports. All are bound at once (so they differ) and
/// released for the components to bind; another process could take one in
/// between, which start-up would report as a component failing to listen.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port"))
        .collect();
    std::array::from_fn(|i| {
        listeners[i]
            .local_addr()
            .expect("the address of a bound port")
            .port()
    })
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (the end-to-end tests need the openssl command)");
    assert!(
        out.status.success(),
        "openssl {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// etcd's /health over plain HTTP/1.0 on loopback: enough to know it serves.
fn etcd_health(port: u16) -> Result<(), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    if answer.contains(r#""health":"true""#) {
        Ok(())
    } else {
        Err(answer)
    }
}

fn read_log(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// For a failed test: the end of every log, so the failure explains itself.
fn print_log_tails(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut logs: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    logs.sort();
    for log in logs {
        eprintln!(
            "---- the end of {} ----\n{}",
            log.display(),
            tail(&read_log(&log), LOG_TAIL_LINES)
        );
    }
    eprintln!("(set {KEEP_ENV}=1 to keep the whole logs)");
}
