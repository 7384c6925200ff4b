//! `/metrics` of `vdrive controller` and `vdrive node` in a real Kubernetes
//! control plane (see `support::cluster`): both serve metrics on a port the
//! kernel picks (`--metrics-address=127.0.0.1:0`, the port read from their
//! logs); the test does CSI work over their sockets (a volume created and
//! deleted, calls that fail), asks the pool API once, then scrapes both and
//! reads the exposition with a strict parser: every metric vdrive documents
//! is there with the labels it should have, and histograms are well-formed.
//! Run with `e2e/run`, or:
//! `VDRIVE_K8S_BIN=... cargo test --locked --test e2e_metrics -- --ignored --test-threads=1`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use support::cluster::{Cluster, Daemon, bin_dir_from_env, eventually};
use support::e2e::{ReleaseUnder, runtime};
use support::http::{free_port, get};
use tonic::Code;
use vdrive::csi::capability::mount;
use vdrive::csi::proto::controller_client::ControllerClient;
use vdrive::csi::proto::node_client::NodeClient;
use vdrive::csi::proto::volume_capability::access_mode::Mode;
use vdrive::csi::proto::{
    CapacityRange, CreateVolumeRequest, DeleteVolumeRequest, NodeGetInfoRequest,
    NodeUnstageVolumeRequest,
};
use vdrive::csi::server::connect;
use vdrive::metrics::names::{self, Kind, Metric};

const NODE: &str = "m1";
const DRIVES: &str = "tlc:160x1,qlc:160x1";
const WAIT: Duration = Duration::from_secs(90);
const GIB: i64 = 1 << 30;

/// Field order is drop order: vdrive stops before the control plane.
struct Setup {
    controller: Daemon,
    node: Daemon,
    /// After the vdrive processes, before the cluster: whatever a failed
    /// scenario left staged, and the nodes' simulated drives.
    _release: ReleaseUnder,
    cluster: Cluster,
}

#[test]
#[ignore = "needs Kubernetes binaries: run e2e/run"]
fn controller_and_node_export_every_metric() {
    let bin = bin_dir_from_env();
    runtime().block_on(async move {
        let mut setup = set_up(&bin).await;
        let controller_metrics = metrics_address(&mut setup.controller, "controller").await;
        let node_metrics = metrics_address(&mut setup.node, "node").await;
        let api = format!("127.0.0.1:{}", setup.api_port());
        do_csi_work(&setup).await;
        // No token: refused, and counted under the route it matched.
        let refused = get(&api, "/api/v1/pools/status").await;
        assert_eq!(
            refused.status,
            401,
            "{:?}",
            String::from_utf8_lossy(&refused.body)
        );

        // The node first: once it has erased the deleted volume, the
        // controller's ledger frees its space and counts no orphan.
        let node = eventually("the node's metrics", WAIT, || {
            let address = node_metrics.clone();
            async move { scrape(&address).await.and_then(node_complete) }
        })
        .await;
        let controller = eventually("the controller's metrics", WAIT, || {
            let address = controller_metrics.clone();
            async move { scrape(&address).await.and_then(controller_complete) }
        })
        .await;
        controller_metrics_are_sane(&controller);
        node_metrics_are_sane(&node);
    });
}

impl Setup {
    fn api_port(&self) -> u16 {
        let log = self.controller.log();
        let line = log
            .lines()
            .find(|l| l.contains("pool API on http://"))
            .unwrap_or_else(|| panic!("the controller names its API address:\n{log}"));
        line.rsplit(':')
            .next()
            .and_then(|rest| rest.trim_end_matches("/api/v1/").parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"))
    }
}

async fn set_up(bin: &Path) -> Setup {
    let cluster = Cluster::start(bin);
    let node = cluster
        .add_vdrive_node(
            NODE,
            Some("k8s"),
            DRIVES,
            &["--rescan-interval=1", "--metrics-address=127.0.0.1:0"],
        )
        .await;

    let controller = cluster
        .start_vdrive_controller(
            "controller",
            &[
                // Soon, so the orphan gauges are set within the test.
                "--orphan-check-interval=1",
                "--metrics-address=127.0.0.1:0",
                &format!("--api-address=127.0.0.1:{}", free_port()),
                "--capacity-per-server-gib=100",
                "--system-reserve-per-server-gib=20",
            ],
        )
        .await;
    Setup {
        _release: ReleaseUnder::cluster(&cluster),
        controller,
        node,
        cluster,
    }
}

/// The address `vdrive <program>` says it serves metrics on.
async fn metrics_address(daemon: &mut Daemon, program: &str) -> String {
    let prefix = format!("vdrive {program}: metrics on http://");
    let found = eventually("the metrics address in the log", WAIT, || {
        let log = daemon.log();
        let found = log.lines().find_map(|l| {
            l.strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix("/metrics"))
                .map(str::to_string)
        });
        async move { found.ok_or(log) }
    })
    .await;
    assert!(!found.ends_with(":0"), "a real port, not 0: {found}");
    found
}

/// Creates and deletes a volume through the controller, makes two calls
/// fail (a class that can never fit, an unstage without a volume), and asks
/// the node for its info.
async fn do_csi_work(setup: &Setup) {
    let dir = setup.cluster.dir();
    let socket = |name: &str| format!("unix://{}/{name}.sock", dir.display());
    let channel = connect(&socket("controller"))
        .await
        .expect("the controller socket");
    let mut controller = ControllerClient::new(channel);
    let parameters: std::collections::HashMap<String, String> =
        vdrive::csi::params::preset("k8s-pool-storage")
            .expect("the k8s-pool-storage preset")
            .parameters
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let request = |name: &str, parameters| CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: Some(CapacityRange {
            required_bytes: 10 * GIB,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount("ext4", Mode::SingleNodeWriter)],
        parameters,
        ..Default::default()
    };
    // The controller sees the node's drives once its watch has the annotation.
    let created = eventually("a volume on the node", WAIT, || {
        let mut controller = controller.clone();
        let request = request("pvc-metrics", parameters.clone());
        async move {
            controller
                .create_volume(request)
                .await
                .map_err(|status| status.to_string())
        }
    })
    .await
    .into_inner()
    .volume
    .expect("CreateVolume answers a volume");
    let mut invalid = parameters.clone();
    invalid.insert("tlc".into(), "not-a-number".into());
    let refused = controller
        .create_volume(request("pvc-invalid", invalid))
        .await
        .expect_err("a class with a bad ratio is refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
    controller
        .delete_volume(DeleteVolumeRequest {
            volume_id: created.volume_id.clone(),
            ..Default::default()
        })
        .await
        .expect("DeleteVolume");

    let channel = connect(&socket(NODE)).await.expect("the node socket");
    let mut node = NodeClient::new(channel);
    node.node_get_info(NodeGetInfoRequest {})
        .await
        .expect("NodeGetInfo");
    let refused = node
        .node_unstage_volume(NodeUnstageVolumeRequest::default())
        .await
        .expect_err("an unstage of no volume is refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
}

async fn scrape(address: &str) -> Result<Exposition, String> {
    let answer = get(address, "/metrics").await;
    let body = String::from_utf8(answer.body).map_err(|e| format!("not UTF-8: {e}"))?;
    if answer.status != 200 {
        return Err(format!("HTTP {}: {body}", answer.status));
    }
    // A malformed exposition is a failure, not something to wait out.
    Ok(Exposition::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}")))
}

/// The controller's scrape once the work above shows in it.
fn controller_complete(scrape: Exposition) -> Result<Exposition, String> {
    let wanted = [
        ("vdrive_allocations_total", vec![("outcome", "placed")]),
        ("vdrive_allocations_total", vec![("outcome", "invalid")]),
        (
            "vdrive_drive_capacity_gib",
            vec![("node", NODE), ("type", "tlc")],
        ),
        ("vdrive_orphaned_claims", vec![]),
    ];
    for (name, labels) in wanted {
        if scrape.find(name, &labels).is_empty() {
            return Err(format!("no {name} {labels:?} yet"));
        }
    }
    let claimed: f64 = scrape
        .samples_of("vdrive_drive_claimed_gib")
        .iter()
        .map(|s| s.value)
        .sum();
    if claimed != 0.0 || scrape.value("vdrive_orphaned_claims", &[]) != Some(0.0) {
        return Err(format!("the deleted volume still claims {claimed} GiB"));
    }
    Ok(scrape)
}

/// The node's scrape once the deleted volume is erased and a rescan ran.
fn node_complete(scrape: Exposition) -> Result<Exposition, String> {
    if scrape.value("vdrive_node_volumes_awaiting_erase", &[]) != Some(0.0) {
        return Err("the deleted volume is not erased yet".into());
    }
    if scrape
        .find("vdrive_node_stray_loop_devices", &[])
        .is_empty()
    {
        return Err("no rescan yet".into());
    }
    Ok(scrape)
}

fn controller_metrics_are_sane(scrape: &Exposition) {
    let controller_metrics = [
        names::CSI_CALLS,
        names::CSI_CALL_DURATION,
        names::ALLOCATIONS,
        names::LEDGER_CAS_CONFLICTS,
        names::LEDGER_CAS_RETRIES,
        names::API_REQUESTS,
        names::POOL_SERVERS,
        names::POOL_CAPACITY,
        names::POOL_USED,
        names::POOL_HEALTH,
        names::DRIVE_CAPACITY,
        names::DRIVE_CLAIMED,
        names::DRIVE_LARGEST_FREE_EXTENT,
        names::ORPHANED_CLAIMS,
        names::VOLUMES_MISSING_CLAIMS,
        names::QUARANTINED_NODES,
    ];
    for metric in &controller_metrics {
        scrape.assert_family(metric);
    }
    let calls = |method: &str, code: &str| {
        scrape.value(
            "vdrive_csi_calls_total",
            &[("method", method), ("code", code)],
        )
    };
    assert_eq!(calls("CreateVolume", "InvalidArgument"), Some(1.0));
    assert!(calls("CreateVolume", "OK") >= Some(1.0));
    assert_eq!(calls("DeleteVolume", "OK"), Some(1.0));
    scrape.assert_labels("vdrive_csi_calls_total", &["method", "code"]);
    scrape.assert_labels("vdrive_csi_call_duration_seconds_bucket", &["method", "le"]);
    scrape.assert_labels("vdrive_allocations_total", &["outcome"]);
    for sample in scrape.samples_of("vdrive_allocations_total") {
        let outcome = &sample.labels["outcome"];
        assert!(
            ["placed", "no_capacity", "invalid", "failed"].contains(&outcome.as_str()),
            "{outcome}"
        );
    }
    assert_eq!(
        scrape.value("vdrive_allocations_total", &[("outcome", "invalid")]),
        Some(1.0)
    );
    assert_eq!(
        scrape.value(
            "vdrive_api_requests_total",
            &[
                ("route", "/api/v1/pools/status"),
                ("method", "GET"),
                ("status", "401")
            ]
        ),
        Some(1.0)
    );
    scrape.assert_labels("vdrive_api_requests_total", &["route", "method", "status"]);
    // Counters that may be zero are there all the same.
    assert!(scrape.value("vdrive_ledger_cas_conflicts_total", &[]) >= Some(0.0));
    assert!(scrape.value("vdrive_ledger_cas_retries_total", &[]) >= Some(0.0));
    // Both pools, one server in k8s with its 100 GiB share, none in vm.
    assert_eq!(
        scrape.value("vdrive_pool_servers", &[("pool", "k8s")]),
        Some(1.0)
    );
    assert_eq!(
        scrape.value("vdrive_pool_capacity_gib", &[("pool", "k8s")]),
        Some(100.0)
    );
    assert_eq!(
        scrape.value("vdrive_pool_servers", &[("pool", "vm")]),
        Some(0.0)
    );
    // Each of the node's two drives, by node, drive and type, nothing claimed
    // once the deleted volume is erased.
    for metric in [
        "vdrive_drive_capacity_gib",
        "vdrive_drive_claimed_gib",
        "vdrive_drive_largest_free_extent_gib",
    ] {
        scrape.assert_labels(metric, &["node", "drive", "type"]);
        let samples = scrape.samples_of(metric);
        let types: BTreeSet<&str> = samples.iter().map(|s| s.labels["type"].as_str()).collect();
        assert_eq!(types, BTreeSet::from(["qlc", "tlc"]), "{metric}");
        for sample in samples {
            assert_eq!(sample.labels["node"], NODE);
            assert!(uuid::Uuid::parse_str(&sample.labels["drive"]).is_ok());
            assert!(
                (0.0..=160.0).contains(&sample.value),
                "{metric} {}",
                sample.value
            );
        }
    }
    let qlc = scrape.find(
        "vdrive_drive_capacity_gib",
        &[("node", NODE), ("type", "qlc")],
    );
    assert_eq!(qlc.len(), 1, "{qlc:?}");
    assert_eq!(qlc[0].value, 160.0);
    assert_eq!(scrape.value("vdrive_orphaned_claims", &[]), Some(0.0));
    assert_eq!(scrape.value("vdrive_quarantined_nodes", &[]), Some(0.0));
}

fn node_metrics_are_sane(scrape: &Exposition) {
    for metric in [
        names::CSI_CALLS,
        names::CSI_CALL_DURATION,
        names::LEDGER_CAS_CONFLICTS,
        names::LEDGER_CAS_RETRIES,
        names::NODE_CAPACITY,
        names::NODE_MISSING_DRIVES_WITH_CLAIMS,
        names::NODE_QUARANTINED_DRIVES,
        names::NODE_STRAY_LOOP_DEVICES,
        names::NODE_VOLUMES_AWAITING_ERASE,
        names::NODE_ERASE_BACKLOG_AGE,
    ] {
        scrape.assert_family(&metric);
    }
    let calls = |method: &str, code: &str| {
        scrape.value(
            "vdrive_csi_calls_total",
            &[("method", method), ("code", code)],
        )
    };
    assert_eq!(calls("NodeGetInfo", "OK"), Some(1.0));
    assert_eq!(calls("NodeUnstageVolume", "InvalidArgument"), Some(1.0));
    assert_eq!(scrape.value("vdrive_node_capacity_gib", &[]), Some(320.0));
    assert_eq!(
        scrape.value("vdrive_node_missing_drives_with_claims", &[]),
        Some(0.0)
    );
    assert_eq!(
        scrape.value("vdrive_node_quarantined_drives", &[]),
        Some(0.0)
    );
    assert_eq!(
        scrape.value("vdrive_node_stray_loop_devices", &[]),
        Some(0.0)
    );
    assert_eq!(
        scrape.value("vdrive_node_erase_backlog_age_seconds", &[]),
        Some(0.0)
    );
    // The controller's own metrics are not the node's.
    assert!(scrape.samples_of("vdrive_pool_capacity_gib").is_empty());
}

// ---- a strict reader of the Prometheus text format (version 0.0.4) ------------

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug)]
struct Family {
    kind: String,
    help: bool,
}

#[derive(Debug)]
struct Exposition {
    families: BTreeMap<String, Family>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// Reads a whole exposition; every sample belongs to the family whose
    /// `# TYPE` line came last before it, each family is one block, every
    /// series appears once, and histograms are well-formed.
    fn parse(text: &str) -> Result<Exposition, String> {
        let mut families: BTreeMap<String, Family> = BTreeMap::new();
        let mut samples = Vec::new();
        let mut current: Option<String> = None;
        let mut series = BTreeSet::new();
        for (number, line) in text.lines().enumerate() {
            let at = |what: String| format!("line {}: {what}: {line:?}", number + 1);
            if line.is_empty() {
                return Err(at("an empty line".into()));
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest
                    .split_once(' ')
                    .ok_or_else(|| at("HELP without text".into()))?;
                if help.is_empty() {
                    return Err(at("an empty HELP".into()));
                }
                check_name(name).map_err(at)?;
                let family = families.entry(name.to_string()).or_insert(Family {
                    kind: String::new(),
                    help: false,
                });
                if family.help {
                    return Err(at("a second HELP".into()));
                }
                family.help = true;
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| at("TYPE without a type".into()))?;
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(at(format!("unknown type {kind}")));
                }
                let family = families.entry(name.to_string()).or_insert(Family {
                    kind: String::new(),
                    help: false,
                });
                if !family.kind.is_empty() {
                    return Err(at("a second TYPE (the family is split)".into()));
                }
                family.kind = kind.to_string();
                current = Some(name.to_string());
                continue;
            }
            if line.starts_with('#') {
                return Err(at("a comment vdrive does not write".into()));
            }
            let sample = parse_sample(line).map_err(at)?;
            let family = current
                .as_deref()
                .ok_or_else(|| at("a sample before any TYPE".into()))?;
            let kind = families[family].kind.as_str();
            let belongs = match kind {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| sample.name == format!("{family}{suffix}")),
                _ => sample.name == family,
            };
            if !belongs {
                return Err(at(format!("not a sample of the {kind} {family}")));
            }
            if kind == "counter" && !sample.name.ends_with("_total") {
                return Err(at("a counter without _total".into()));
            }
            if sample.name.ends_with("_bucket") != sample.labels.contains_key("le") {
                return Err(at(
                    "le on a sample that is not a bucket, or a bucket without le".into(),
                ));
            }
            if !series.insert((sample.name.clone(), sample.labels.clone())) {
                return Err(at("the same series twice".into()));
            }
            samples.push(sample);
        }
        for (name, family) in &families {
            if family.kind.is_empty() || !family.help {
                return Err(format!("{name} lacks its HELP or TYPE"));
            }
        }
        let exposition = Exposition { families, samples };
        exposition.check_histograms()?;
        Ok(exposition)
    }

    /// Buckets cumulative (non-decreasing with le), a +Inf bucket equal to
    /// _count, and a _sum, for every series of every histogram.
    fn check_histograms(&self) -> Result<(), String> {
        for (name, family) in &self.families {
            if family.kind != "histogram" {
                continue;
            }
            let mut buckets: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
            for sample in self.samples_of(&format!("{name}_bucket")) {
                let mut labels = sample.labels.clone();
                let le = labels.remove("le").unwrap_or_default();
                let bound = parse_value(&le).map_err(|e| format!("{name}: le {le:?}: {e}"))?;
                buckets
                    .entry(labels)
                    .or_default()
                    .push((bound, sample.value));
            }
            if buckets.is_empty() {
                return Err(format!("{name}: a histogram without buckets"));
            }
            for (labels, mut series) in buckets {
                series.sort_by(|a, b| a.0.total_cmp(&b.0));
                if series.windows(2).any(|w| w[1].1 < w[0].1) {
                    return Err(format!("{name} {labels:?}: buckets decrease: {series:?}"));
                }
                let Some(&(last, infinite)) = series.last() else {
                    continue;
                };
                if last != f64::INFINITY {
                    return Err(format!("{name} {labels:?}: no +Inf bucket"));
                }
                let pairs: Vec<(&str, &str)> = labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let count = self.value(&format!("{name}_count"), &pairs);
                if count != Some(infinite) {
                    return Err(format!(
                        "{name} {labels:?}: +Inf bucket {infinite}, _count {count:?}"
                    ));
                }
                let sum = self.value(&format!("{name}_sum"), &pairs);
                if !sum.is_some_and(|s| s >= 0.0) {
                    return Err(format!("{name} {labels:?}: _sum {sum:?}"));
                }
            }
        }
        Ok(())
    }

    fn samples_of(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// The samples of `name` that carry at least `labels`.
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples_of(name)
            .into_iter()
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The value of the one series of `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let exact: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples_of(name)
            .into_iter()
            .find(|s| s.labels == exact)
            .map(|s| s.value)
    }

    /// The metric's family is declared with its type and has samples.
    fn assert_family(&self, metric: &Metric) {
        let (family, kind) = match metric.kind {
            Kind::Counter => (format!("{}_total", metric.name), "counter"),
            Kind::Gauge => (metric.name.to_string(), "gauge"),
            Kind::Histogram => (metric.name.to_string(), "histogram"),
        };
        let declared = self
            .families
            .get(&family)
            .unwrap_or_else(|| panic!("no family {family}"));
        assert_eq!(declared.kind, kind, "{family}");
        for series in metric.series() {
            assert!(
                !self.samples_of(&series).is_empty(),
                "no samples of {series}"
            );
        }
    }

    /// Every sample of `name` has exactly the label names `expected`.
    fn assert_labels(&self, name: &str, expected: &[&str]) {
        let expected: BTreeSet<&str> = expected.iter().copied().collect();
        let samples = self.samples_of(name);
        assert!(!samples.is_empty(), "no samples of {name}");
        for sample in samples {
            let got: BTreeSet<&str> = sample.labels.keys().map(String::as_str).collect();
            assert_eq!(got, expected, "labels of {name}");
            assert!(sample.labels.values().all(|v| !v.is_empty()), "{sample:?}");
        }
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':');
    if first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
        Ok(())
    } else {
        Err(format!("{name:?} is not a metric name"))
    }
}

/// `name{a="x",b="y"} value` or `name value`; no timestamps.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return Err("a sample without a value".into()),
    };
    check_name(name)?;
    let mut labels = BTreeMap::new();
    let value = if let Some(mut rest) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"").ok_or("a label without =\"")?;
            if key.is_empty()
                || key.contains(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                || key.starts_with(|c: char| c.is_ascii_digit())
            {
                return Err(format!("{key:?} is not a label name"));
            }
            let (value, after) = unescape_label_value(after)?;
            if labels.insert(key.to_string(), value).is_some() {
                return Err(format!("label {key} twice"));
            }
            rest = match after.strip_prefix(',') {
                Some(next) => next,
                None if after.starts_with('}') => after,
                None => return Err("labels not separated by commas".into()),
            };
        }
        rest
    } else {
        rest
    };
    let value = value.strip_prefix(' ').ok_or("no space before the value")?;
    if value.contains(' ') {
        return Err("a timestamp or trailing text".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value: parse_value(value)?,
    })
}

/// A quoted label value's text up to its closing quote, unescaped, and what follows.
fn unescape_label_value(text: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                other => return Err(format!("a bad escape {other:?}")),
            },
            '\n' => return Err("a line break in a label value".into()),
            c => value.push(c),
        }
    }
    Err("an unterminated label value".into())
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text
            .parse::<f64>()
            .map_err(|e| format!("{text:?} is not a number: {e}")),
    }
}

#[test]
fn the_reader_is_strict() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{m=\"x\\\"y\"} 1\n\
                # HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3.5\nh_count 2\n";
    let read = Exposition::parse(good).expect("a good exposition");
    assert_eq!(read.value("a_total", &[("m", "x\"y")]), Some(1.0));
    for bad in [
        // Not cumulative.
        good.replace("h_bucket{le=\"+Inf\"} 2", "h_bucket{le=\"+Inf\"} 0")
            .replace("h_count 2", "h_count 0"),
        // +Inf is not the count.
        good.replace("h_count 2", "h_count 3"),
        // No sum.
        good.replace("h_sum 3.5\n", ""),
        // A sample outside its family.
        good.replace("h_count 2", "a_total 2"),
        // A sample without TYPE.
        "b 1\n".to_string(),
        // A timestamp.
        good.replace(
            "a_total{m=\"x\\\"y\"} 1",
            "a_total{m=\"x\\\"y\"} 1 1700000000",
        ),
        // The same series twice.
        good.replace("h_sum 3.5\n", "h_sum 3.5\nh_sum 3.5\n"),
    ] {
        assert!(Exposition::parse(&bad).is_err(), "accepted:\n{bad}");
    }
}
