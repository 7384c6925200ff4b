//! The plain manifests in deploy/ (rendered from charts/vdrive by
//! scripts/render-manifests) checked against the code: the StorageClasses are the
//! presets of `vdrive::csi::params`, the CSIDriver and the node plugin's socket
//! carry the driver name vdrive reports, and the controller starts with the
//! code's own cluster defaults. No cluster needed.
//!
//! The manifests are read by a small reader for the block-style YAML the chart
//! renders (mappings, sequences, plain/quoted scalars, one-line flow lists, and
//! literal `|` or folded `>` block scalars without blank or `#` lines in them);
//! every scalar comes back as a string.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Value};

use vdrive::cluster::annotations::{CAPACITY_RESOURCE, CLAIMS_ANNOTATION, DRIVES_ANNOTATION};
use vdrive::csi::identity::DRIVER_NAME;
use vdrive::csi::params::{Defaults, FSTYPE_KEY, presets};
use vdrive::metrics::names;
use vdrive::pools::PoolSettings;
use vdrive::vms::Catalog;

const HEADER: &str = "# generated from charts/vdrive by scripts/render-manifests; do not edit";
const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
const KUBELET_DIR: &str = "/var/lib/kubelet";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

// ---- the YAML reader ---------------------------------------------------------

struct Line {
    number: usize,
    indent: usize,
    text: String,
}

struct Reader {
    file: String,
    lines: Vec<Line>,
    pos: usize,
}

/// Every document of one file under deploy/.
fn documents(name: &str) -> Vec<Value> {
    let path = deploy_dir().join(name);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (scripts/render-manifests writes deploy/)",
            path.display()
        )
    });
    documents_in(name, &text)
}

/// Every document of `text`, read from the file `name` (for messages).
fn documents_in(name: &str, text: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw == "---" {
            docs.extend(read_document(name, std::mem::take(&mut lines)));
            continue;
        }
        let text = raw.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        lines.push(Line {
            number: i + 1,
            indent: raw.len() - raw.trim_start().len(),
            text: text.to_string(),
        });
    }
    docs.extend(read_document(name, lines));
    docs
}

fn read_document(file: &str, lines: Vec<Line>) -> Option<Value> {
    let indent = lines.first()?.indent;
    let mut reader = Reader {
        file: file.to_string(),
        lines,
        pos: 0,
    };
    let value = reader.node(indent);
    if let Some(line) = reader.lines.get(reader.pos) {
        reader.fail(line.number, "unexpected indentation");
    }
    Some(value)
}

/// A block scalar's header: `|` keeps line breaks, `>` folds them into spaces;
/// `-` drops the final line break.
#[derive(Clone, Copy)]
struct BlockStyle {
    folded: bool,
    keep_newline: bool,
}

impl BlockStyle {
    fn of(text: &str) -> Option<BlockStyle> {
        let (folded, chomp) = match text.split_at_checked(1)? {
            ("|", chomp) => (false, chomp),
            (">", chomp) => (true, chomp),
            _ => return None,
        };
        match chomp {
            "" => Some(BlockStyle {
                folded,
                keep_newline: true,
            }),
            "-" => Some(BlockStyle {
                folded,
                keep_newline: false,
            }),
            _ => None,
        }
    }
}

fn is_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// `key: value` or `key:` → (key, value); None for a plain scalar.
fn split_key(text: &str) -> Option<(&str, &str)> {
    if text.starts_with(['"', '\'', '[', '{']) {
        return None;
    }
    if let Some((key, value)) = text.split_once(": ") {
        return Some((key, value.trim()));
    }
    text.strip_suffix(':').map(|key| (key, ""))
}

impl Reader {
    fn fail(&self, line: usize, what: &str) -> ! {
        panic!(
            "deploy/{} line {line}: {what} (this reader takes the block-style YAML the chart renders)",
            self.file
        )
    }

    fn node(&mut self, indent: usize) -> Value {
        if is_item(&self.lines[self.pos].text) {
            self.sequence(indent)
        } else {
            self.mapping(indent)
        }
    }

    /// The value of a `key:` with nothing after the colon: what is indented
    /// deeper, or a sequence at the key's own indentation.
    fn nested(&mut self, indent: usize) -> Value {
        match self.lines.get(self.pos) {
            Some(next) if next.indent > indent => {
                let deeper = next.indent;
                self.node(deeper)
            }
            Some(next) if next.indent == indent && is_item(&next.text) => self.sequence(indent),
            _ => Value::Null,
        }
    }

    fn mapping(&mut self, indent: usize) -> Value {
        let mut map = Map::new();
        while let Some(line) = self.lines.get(self.pos) {
            if line.indent < indent || is_item(&line.text) {
                break;
            }
            let number = line.number;
            if line.indent > indent {
                self.fail(number, "unexpected indentation");
            }
            let Some((key, rest)) = split_key(&line.text) else {
                self.fail(number, "expected `key: value`");
            };
            let (key, rest) = (key.to_string(), rest.to_string());
            self.pos += 1;
            let value = if rest.is_empty() {
                self.nested(indent)
            } else if let Some(style) = BlockStyle::of(&rest) {
                self.block(indent, style)
            } else {
                self.scalar(number, &rest)
            };
            if map.insert(key.clone(), value).is_some() {
                self.fail(number, &format!("duplicate key {key}"));
            }
        }
        Value::Object(map)
    }

    fn sequence(&mut self, indent: usize) -> Value {
        let mut items = Vec::new();
        while let Some(line) = self.lines.get(self.pos) {
            if line.indent != indent || !is_item(&line.text) {
                if line.indent > indent {
                    self.fail(line.number, "unexpected indentation");
                }
                break;
            }
            let number = line.number;
            let rest = line.text[1..].trim_start().to_string();
            if rest.is_empty() {
                self.pos += 1;
                items.push(self.nested(indent));
            } else if split_key(&rest).is_some() {
                // A mapping whose first entry sits on the dash line: read that
                // line again as the entry, at the indentation of what follows "- ".
                let inner = indent + (line.text.len() - rest.len());
                self.lines[self.pos] = Line {
                    number,
                    indent: inner,
                    text: rest,
                };
                items.push(self.mapping(inner));
            } else {
                self.pos += 1;
                items.push(self.scalar(number, &rest));
            }
        }
        Value::Array(items)
    }

    /// The lines of a block scalar: those indented deeper than its key, with
    /// their indentation beyond the first line's kept.
    fn block(&mut self, indent: usize, style: BlockStyle) -> Value {
        let mut lines = Vec::new();
        let mut base = None;
        while let Some(line) = self.lines.get(self.pos) {
            if line.indent <= indent {
                break;
            }
            let base = *base.get_or_insert(line.indent);
            if line.indent < base {
                self.fail(
                    line.number,
                    "a block scalar line indented less than its first",
                );
            }
            lines.push(format!("{}{}", " ".repeat(line.indent - base), line.text));
            self.pos += 1;
        }
        let mut text = lines.join(if style.folded { " " } else { "\n" });
        if style.keep_newline && !text.is_empty() {
            text.push('\n');
        }
        Value::String(text)
    }

    fn scalar(&self, line: usize, text: &str) -> Value {
        if text == "{}" {
            return Value::Object(Map::new());
        }
        if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            if inner.trim().is_empty() {
                return Value::Array(Vec::new());
            }
            return Value::Array(
                inner
                    .split(',')
                    .map(|item| Value::String(self.unquote(line, item.trim())))
                    .collect(),
            );
        }
        if text.starts_with(['|', '>', '&', '*', '!', '{', '[']) || text.contains(" #") {
            self.fail(line, &format!("unsupported value {text}"));
        }
        Value::String(self.unquote(line, text))
    }

    fn unquote(&self, line: usize, text: &str) -> String {
        if let Some(inner) = text.strip_prefix('"') {
            let Some(inner) = inner.strip_suffix('"') else {
                self.fail(line, "unterminated string");
            };
            return inner.replace("\\\"", "\"").replace("\\\\", "\\");
        }
        if let Some(inner) = text.strip_prefix('\'') {
            let Some(inner) = inner.strip_suffix('\'') else {
                self.fail(line, "unterminated string");
            };
            return inner.replace("''", "'");
        }
        text.to_string()
    }
}

// ---- access helpers ----------------------------------------------------------

/// The value at `path` (object keys; array indexes as numbers), or Null.
fn at<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(value, |v, key| match v {
        Value::Array(items) => key
            .parse::<usize>()
            .ok()
            .and_then(|i| items.get(i))
            .unwrap_or(&Value::Null),
        _ => v.get(key).unwrap_or(&Value::Null),
    })
}

fn text<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    at(value, path).as_str().unwrap_or_else(|| {
        panic!(
            "{} is not a string in {}",
            path.join("."),
            at(value, &["metadata", "name"])
        )
    })
}

fn list<'a>(value: &'a Value, path: &[&str]) -> &'a [Value] {
    at(value, path)
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The resources kustomization.yaml lists.
fn resources() -> Vec<String> {
    let kustomization = documents("kustomization.yaml");
    assert_eq!(kustomization.len(), 1, "one document in kustomization.yaml");
    assert_eq!(text(&kustomization[0], &["kind"]), "Kustomization");
    list(&kustomization[0], &["resources"])
        .iter()
        .map(|r| r.as_str().expect("resource names are strings").to_string())
        .collect()
}

/// Every object `kubectl apply -k deploy/` applies.
fn objects() -> Vec<Value> {
    resources().iter().flat_map(|r| documents(r)).collect()
}

fn objects_of(kind: &str) -> Vec<Value> {
    objects()
        .into_iter()
        .filter(|o| text(o, &["kind"]) == kind)
        .collect()
}

fn one_of(kind: &str) -> Value {
    let mut found = objects_of(kind);
    assert_eq!(found.len(), 1, "deploy/ has one {kind}");
    found.remove(0)
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    list(workload, &["spec", "template", "spec", "containers"])
        .iter()
        .find(|c| text(c, &["name"]) == name)
        .unwrap_or_else(|| {
            panic!(
                "no container {name} in {}",
                text(workload, &["metadata", "name"])
            )
        })
}

fn args(container: &Value) -> Vec<&str> {
    list(container, &["args"])
        .iter()
        .map(|a| a.as_str().expect("args are strings"))
        .collect()
}

/// `--name=value` arguments as a map (flags without a value map to "").
fn flags(container: &Value) -> BTreeMap<&str, &str> {
    args(container)
        .into_iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split_once('=').unwrap_or((a, "")))
        .collect()
}

// ---- the checks ---------------------------------------------------------------

#[test]
fn the_reader_reads_block_yaml() {
    let lines = "a: 1\nb:\n  c: \"x: y\"\n  d:\n  - e: f\n    g: ['h', \"i\"]\n  - j\nk: {}\nl: |-\n  m(\n    n)\no: >-\n  p\n  q\nr: |\n  s\nt: u\n";
    let mut reader = Reader {
        file: "sample".into(),
        lines: lines
            .lines()
            .enumerate()
            .map(|(i, raw)| Line {
                number: i + 1,
                indent: raw.len() - raw.trim_start().len(),
                text: raw.trim().to_string(),
            })
            .collect(),
        pos: 0,
    };
    let value = reader.node(0);
    assert_eq!(
        value,
        serde_json::json!({
            "a": "1",
            "b": {"c": "x: y", "d": [{"e": "f", "g": ["h", "i"]}, "j"]},
            "k": {},
            "l": "m(\n  n)",
            "o": "p q",
            "r": "s\n",
            "t": "u",
        })
    );
}

#[test]
fn kustomization_lists_every_generated_file() {
    let listed: BTreeSet<String> = resources().into_iter().collect();
    let mut present = BTreeSet::new();
    for entry in fs::read_dir(deploy_dir()).expect("deploy/ exists") {
        let name = entry
            .expect("deploy/ is readable")
            .file_name()
            .to_string_lossy()
            .into_owned();
        let content = fs::read_to_string(deploy_dir().join(&name)).expect("readable file");
        assert_eq!(
            content.lines().next(),
            Some(HEADER),
            "deploy/{name} starts with the generated-file header"
        );
        if name != "kustomization.yaml" {
            present.insert(name);
        }
    }
    assert_eq!(
        listed, present,
        "deploy/kustomization.yaml lists exactly the files in deploy/"
    );
}

#[test]
fn storage_classes_are_the_presets() {
    let classes = objects_of("StorageClass");
    let names: BTreeSet<&str> = classes
        .iter()
        .map(|c| text(c, &["metadata", "name"]))
        .collect();
    let presets = presets();
    let preset_names: BTreeSet<&str> = presets.iter().map(|p| p.name).collect();
    assert_eq!(names, preset_names, "deploy/ ships exactly the presets");

    for preset in &presets {
        let class = classes
            .iter()
            .find(|c| text(c, &["metadata", "name"]) == preset.name)
            .expect("every preset is rendered");
        let name = preset.name;
        assert_eq!(text(class, &["provisioner"]), DRIVER_NAME, "{name}");
        assert_eq!(
            text(class, &["reclaimPolicy"]),
            preset.reclaim_policy,
            "{name}"
        );
        assert_eq!(
            text(class, &["volumeBindingMode"]),
            preset.binding_mode,
            "{name}"
        );
        assert_eq!(
            text(class, &["allowVolumeExpansion"]),
            preset.allow_volume_expansion.to_string(),
            "{name}"
        );
        let default_class = at(
            class,
            &["metadata", "annotations", DEFAULT_CLASS_ANNOTATION],
        );
        assert_eq!(
            default_class.as_str() == Some("true"),
            preset.default_class,
            "{name}: {DEFAULT_CLASS_ANNOTATION} is {default_class}"
        );

        let rendered: BTreeMap<&str, &str> = at(class, &["parameters"])
            .as_object()
            .expect("parameters")
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    v.as_str().expect("parameter values are strings"),
                )
            })
            .collect();
        let mut expected = preset.parameters.clone();
        expected.insert(FSTYPE_KEY, "ext4");
        assert_eq!(rendered, expected, "{name}: parameters");
    }
}

#[test]
fn csi_driver_object() {
    let driver = one_of("CSIDriver");
    assert_eq!(text(&driver, &["apiVersion"]), "storage.k8s.io/v1");
    assert_eq!(text(&driver, &["metadata", "name"]), DRIVER_NAME);
    let spec = |field| text(&driver, &["spec", field]);
    assert_eq!(spec("attachRequired"), "false");
    assert_eq!(spec("podInfoOnMount"), "true");
    assert_eq!(spec("storageCapacity"), "true");
    assert_eq!(spec("fsGroupPolicy"), "File");
    assert_eq!(
        list(&driver, &["spec", "volumeLifecycleModes"]),
        [Value::from("Persistent")]
    );
}

#[test]
fn node_plugin_serves_the_driver_socket_kubelet_expects() {
    let node = one_of("DaemonSet");
    let plugin_dir = format!("{KUBELET_DIR}/plugins/{DRIVER_NAME}");
    let registrar = container(&node, "node-driver-registrar");
    assert_eq!(
        flags(registrar).get("kubelet-registration-path").copied(),
        Some(format!("{plugin_dir}/csi.sock").as_str())
    );
    let volumes = list(&node, &["spec", "template", "spec", "volumes"]);
    let host_path = |name: &str| {
        volumes
            .iter()
            .find(|v| text(v, &["name"]) == name)
            .map(|v| text(v, &["hostPath", "path"]))
    };
    assert_eq!(host_path("plugin-dir"), Some(plugin_dir.as_str()));
    assert_eq!(
        host_path("registration-dir"),
        Some(format!("{KUBELET_DIR}/plugins_registry").as_str())
    );

    let vdrive = container(&node, "vdrive");
    assert_eq!(args(vdrive).first(), Some(&"node"));
    assert_eq!(text(vdrive, &["securityContext", "privileged"]), "true");
    // device-mapper: the host's /dev (its control node and the dm-N devices the
    // kernel's devtmpfs creates), no udev; the backend chosen by the kernel.
    assert_eq!(host_path("dev"), Some("/dev"));
    assert!(
        list(vdrive, &["volumeMounts"])
            .iter()
            .any(|m| text(m, &["name"]) == "dev" && text(m, &["mountPath"]) == "/dev"),
        "the node plugin mounts the host's /dev"
    );
    assert_eq!(flags(vdrive).get("device-backend").copied(), Some("auto"));
    // Staging and target paths are kept inside the directory kubelet uses.
    assert_eq!(flags(vdrive).get("kubelet-dir").copied(), Some(KUBELET_DIR));
    let kubelet_mount = list(vdrive, &["volumeMounts"])
        .iter()
        .find(|m| text(m, &["mountPath"]) == KUBELET_DIR)
        .expect("the node plugin mounts kubelet's directory");
    assert_eq!(text(kubelet_mount, &["mountPropagation"]), "Bidirectional");
}

#[test]
fn controller_starts_with_the_code_defaults() {
    let controller = one_of("Deployment");
    let vdrive = container(&controller, "vdrive");
    assert_eq!(args(vdrive).first(), Some(&"controller"));
    let vdrive_flags = flags(vdrive);
    let flag = |name: &str| {
        *vdrive_flags
            .get(name)
            .unwrap_or_else(|| panic!("vdrive controller has no --{name}"))
    };
    // The chart's values.yaml defaults are the code's defaults.
    let defaults = Defaults::default();
    let pools = PoolSettings::default();
    let expected = [
        ("default-tlc", defaults.ratio.tlc.to_string()),
        ("default-qlc", defaults.ratio.qlc.to_string()),
        (
            "max-virtual-drives-per-core",
            defaults.max_virtual_drives_per_core.to_string(),
        ),
        (
            "enforce-min-drives-per-type-per-core",
            defaults.enforce_min_drives_per_type_per_core.to_string(),
        ),
        ("min-virtual-drive-gib", defaults.min_drive_gib.to_string()),
        (
            "capacity-per-server-gib",
            pools.capacity_per_server_gib.to_string(),
        ),
        (
            "system-reserve-per-server-gib",
            pools.system_reserve_per_server_gib.to_string(),
        ),
    ];
    for (name, value) in expected {
        assert_eq!(flag(name), value, "vdrive controller --{name}");
    }
    for (name, value) in [
        ("warning-threshold-percent", pools.warning_percent),
        ("critical-threshold-percent", pools.critical_percent),
    ] {
        let rendered: f64 = flag(name)
            .parse()
            .unwrap_or_else(|e| panic!("vdrive controller --{name}: {e}"));
        assert_eq!(rendered, value, "vdrive controller --{name}");
    }

    // The provisioner passes the PVC's name to CreateVolume (the claim's
    // owner), publishes capacity (the CSIDriver's storageCapacity), and asks
    // for the one node the pod was scheduled to.
    let provisioner = flags(container(&controller, "csi-provisioner"));
    for needed in [
        "extra-create-metadata",
        "enable-capacity",
        "strict-topology",
        "leader-election",
        // Its pace (controller.provisioner), which the end-to-end fixture
        // reads from values.yaml too.
        "worker-threads",
        "kube-api-qps",
        "kube-api-burst",
    ] {
        assert!(
            provisioner.contains_key(needed),
            "csi-provisioner runs with --{needed}"
        );
    }
    assert_eq!(provisioner.get("immediate-topology"), Some(&"false"));
}

/// The user name a pod of `workload` (a DaemonSet or Deployment) acts as.
fn service_account_user(workload: &Value) -> String {
    format!(
        "system:serviceaccount:{}:{}",
        text(workload, &["metadata", "namespace"]),
        text(
            workload,
            &["spec", "template", "spec", "serviceAccountName"]
        )
    )
}

/// Verbs the ClusterRoles bound to the service account `namespace`/`account`
/// grant on the core `resource`.
fn cluster_verbs(namespace: &str, account: &str, resource: &str) -> BTreeSet<String> {
    group_verbs(namespace, account, "", resource)
}

/// Verbs the ClusterRoles bound to `namespace`/`account` grant on `resource`
/// of API group `group`.
fn group_verbs(namespace: &str, account: &str, group: &str, resource: &str) -> BTreeSet<String> {
    let roles: BTreeSet<String> = objects_of("ClusterRoleBinding")
        .iter()
        .filter(|b| {
            list(b, &["subjects"]).iter().any(|s| {
                text(s, &["kind"]) == "ServiceAccount"
                    && text(s, &["name"]) == account
                    && text(s, &["namespace"]) == namespace
            })
        })
        .map(|b| text(b, &["roleRef", "name"]).to_string())
        .collect();
    objects_of("ClusterRole")
        .iter()
        .filter(|r| roles.contains(text(r, &["metadata", "name"])))
        .flat_map(|r| list(r, &["rules"]).to_vec())
        .filter(|rule| {
            list(rule, &["apiGroups"]).contains(&Value::from(group))
                && list(rule, &["resources"]).contains(&Value::from(resource))
        })
        .flat_map(|rule| list(&rule, &["verbs"]).to_vec())
        .map(|verb| verb.as_str().expect("verbs are strings").to_string())
        .collect()
}

#[test]
fn node_plugin_may_write_only_its_own_node() {
    let node = one_of("DaemonSet");
    let namespace = text(&node, &["metadata", "namespace"]);
    let account = text(&node, &["spec", "template", "spec", "serviceAccountName"]);
    // RBAC: reads and patches of Nodes, nothing that creates or removes one.
    let strings = |verbs: &[&str]| verbs.iter().map(|v| v.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        cluster_verbs(namespace, account, "nodes"),
        strings(&["get", "list", "watch", "patch"])
    );
    assert_eq!(
        cluster_verbs(namespace, account, "nodes/status"),
        strings(&["patch"])
    );

    // The policy narrows those patches; its binding denies.
    let policy = one_of("ValidatingAdmissionPolicy");
    let binding = one_of("ValidatingAdmissionPolicyBinding");
    let name = text(&policy, &["metadata", "name"]);
    assert_eq!(
        text(&policy, &["apiVersion"]),
        "admissionregistration.k8s.io/v1"
    );
    assert_eq!(text(&binding, &["spec", "policyName"]), name);
    assert_eq!(
        list(&binding, &["spec", "validationActions"]),
        [Value::from("Deny")]
    );
    assert!(
        at(&binding, &["spec", "paramRef"]).is_null()
            && at(&binding, &["spec", "matchResources"]).is_null(),
        "{name} applies to every Node"
    );
    assert_eq!(
        text(&policy, &["spec", "failurePolicy"]),
        "Fail",
        "an expression that cannot be evaluated refuses the write"
    );
    let rules = list(&policy, &["spec", "matchConstraints", "resourceRules"]);
    assert_eq!(rules.len(), 1, "{name}: one resource rule");
    assert_eq!(list(&rules[0], &["apiGroups"]), [Value::from("")]);
    let names = |path: &[&str]| -> BTreeSet<String> {
        list(&rules[0], path)
            .iter()
            .map(|v| v.as_str().expect("strings").to_string())
            .collect()
    };
    assert_eq!(names(&["resources"]), strings(&["nodes", "nodes/status"]));
    assert_eq!(
        names(&["operations"]),
        strings(&["CREATE", "UPDATE", "DELETE"])
    );

    // Only the node plugin's requests, not the controller's.
    let conditions = list(&policy, &["spec", "matchConditions"]);
    assert_eq!(conditions.len(), 1, "{name}: one match condition");
    let condition = text(&conditions[0], &["expression"]);
    let node_user = service_account_user(&node);
    assert_eq!(
        condition,
        format!("request.userInfo.username == '{node_user}'")
    );
    let controller_user = service_account_user(&one_of("Deployment"));
    assert!(!condition.contains(&controller_user));

    // The token's node, and vdrive's own keys: every key the code writes on a
    // Node is one the policy lets through.
    let policy_text: String = [
        list(&policy, &["spec", "variables"]),
        list(&policy, &["spec", "validations"]),
    ]
    .concat()
    .iter()
    .map(|e| text(e, &["expression"]).to_string())
    .collect::<Vec<_>>()
    .join("\n");
    assert!(
        policy_text.contains("request.userInfo.?extra[?'authentication.kubernetes.io/node-name']")
    );
    assert!(policy_text.contains("request.name == variables.boundNode"));
    let prefix = "vdrive.io/";
    assert!(policy_text.contains(&format!("k.startsWith('{prefix}')")));
    for key in [CLAIMS_ANNOTATION, DRIVES_ANNOTATION, CAPACITY_RESOURCE] {
        assert!(key.starts_with(prefix), "{key} is not under {prefix}");
    }
}

#[test]
fn metrics_listen_on_the_pod_ip_only() {
    for kind in ["Deployment", "DaemonSet"] {
        let workload = one_of(kind);
        let vdrive = container(&workload, "vdrive");
        assert_eq!(
            flags(vdrive).get("metrics-address").copied(),
            Some("$(POD_IP):9810"),
            "{kind}"
        );
        let pod_ip = list(vdrive, &["env"])
            .iter()
            .find(|e| text(e, &["name"]) == "POD_IP")
            .unwrap_or_else(|| panic!("{kind}: vdrive has no POD_IP env"));
        assert_eq!(
            text(pod_ip, &["valueFrom", "fieldRef", "fieldPath"]),
            "status.podIP",
            "{kind}"
        );
    }
}

/// The pool API: every controller replica serves it on the pod's network at
/// 8080, behind the Service `vm-pool-api` (the seed's host name in namespace
/// dynamic-storage-pools), with the image catalog from a ConfigMap.
#[test]
fn the_pool_api_is_the_vm_pool_api_service_of_the_controllers() {
    let controller = one_of("Deployment");
    let vdrive = container(&controller, "vdrive");
    let vdrive_flags = flags(vdrive);
    assert_eq!(
        vdrive_flags.get("api-address").copied(),
        Some("0.0.0.0:8080")
    );
    let port = list(vdrive, &["ports"])
        .iter()
        .find(|p| text(p, &["name"]) == "api")
        .expect("the vdrive container names its api port");
    assert_eq!(text(port, &["containerPort"]), "8080");

    let services = objects_of("Service");
    let service = services
        .iter()
        .find(|s| text(s, &["metadata", "name"]) == "vm-pool-api")
        .expect("a Service vm-pool-api");
    assert_eq!(
        text(service, &["metadata", "namespace"]),
        text(&controller, &["metadata", "namespace"])
    );
    let ports = list(service, &["spec", "ports"]);
    assert_eq!(ports.len(), 1);
    assert_eq!(text(&ports[0], &["port"]), "8080");
    assert_eq!(text(&ports[0], &["targetPort"]), "api");
    // It selects the controller pods (every replica), and only them.
    let selector = at(service, &["spec", "selector"]);
    assert_eq!(
        selector,
        at(&controller, &["spec", "selector", "matchLabels"]),
        "the Service selects what the Deployment selects"
    );
    let pod_labels = at(&controller, &["spec", "template", "metadata", "labels"]);
    for (key, value) in selector.as_object().expect("a selector") {
        assert_eq!(pod_labels.get(key), Some(value), "pod label {key}");
    }
}

#[test]
fn the_vm_image_catalog_is_the_built_in_one_mounted_from_a_config_map() {
    let controller = one_of("Deployment");
    let vdrive = container(&controller, "vdrive");
    let path = *flags(vdrive)
        .get("vm-images")
        .expect("vdrive controller --vm-images");
    let (dir, file) = path.rsplit_once('/').expect("an absolute path");
    let mount = list(vdrive, &["volumeMounts"])
        .iter()
        .find(|m| text(m, &["mountPath"]) == dir)
        .unwrap_or_else(|| panic!("nothing mounted at {dir}"));
    let volume = list(&controller, &["spec", "template", "spec", "volumes"])
        .iter()
        .find(|v| text(v, &["name"]) == text(mount, &["name"]))
        .expect("the mounted volume");
    let config_map_name = text(volume, &["configMap", "name"]);
    let config_map = objects_of("ConfigMap")
        .into_iter()
        .find(|c| text(c, &["metadata", "name"]) == config_map_name)
        .unwrap_or_else(|| panic!("no ConfigMap {config_map_name}"));
    let json = text(&config_map, &["data", file]);
    let catalog = Catalog::parse(json.as_bytes()).expect("the rendered catalog parses");
    assert_eq!(
        catalog,
        Catalog::default(),
        "values.yaml holds the built-in catalog"
    );
}

#[test]
fn the_controller_may_do_what_the_pool_api_does() {
    let controller = one_of("Deployment");
    let user = service_account_user(&controller);
    let (_, account) = user.rsplit_once(':').expect("an account");
    let namespace = text(&controller, &["metadata", "namespace"]);
    let verbs = |group: &str, resource: &str| group_verbs(namespace, account, group, resource);
    let has = |group: &str, resource: &str, wanted: &[&str]| {
        let granted = verbs(group, resource);
        for verb in wanted {
            assert!(
                granted.contains(*verb),
                "the controller may not {verb} {resource}.{group}: {granted:?}"
            );
        }
    };
    has("authentication.k8s.io", "tokenreviews", &["create"]);
    has("authorization.k8s.io", "subjectaccessreviews", &["create"]);
    has(
        "",
        "persistentvolumeclaims",
        &[
            "get", "list", "watch", "create", "update", "patch", "delete",
        ],
    );
    has("", "persistentvolumes", &["get", "patch"]);
    has("", "pods", &["list"]);
    has("", "events", &["list"]);
    has(
        "kubevirt.io",
        "virtualmachines",
        &["get", "create", "delete", "patch"],
    );
}

#[test]
fn only_the_leading_controller_checks_orphans_and_none_releases_them_unasked() {
    let controller = one_of("Deployment");
    let vdrive = container(&controller, "vdrive");
    let vdrive_flags = flags(vdrive);
    assert_eq!(
        vdrive_flags.get("orphan-check-interval"),
        Some(&"300"),
        "orphans are checked every 5 minutes"
    );
    assert!(
        !vdrive_flags.contains_key("orphan-auto-release-after"),
        "orphaned claims are released only when orphans.autoRelease is enabled"
    );
    // The chores follow csi-provisioner's Lease, which is in the pod's
    // namespace and names the pod.
    let env: BTreeMap<&str, &str> = list(vdrive, &["env"])
        .iter()
        .filter_map(|e| {
            let path = e
                .get("valueFrom")?
                .get("fieldRef")?
                .get("fieldPath")?
                .as_str()?;
            Some((text(e, &["name"]), path))
        })
        .collect();
    assert_eq!(env.get("POD_NAMESPACE"), Some(&"metadata.namespace"));
    assert_eq!(env.get("POD_NAME"), Some(&"metadata.name"));
}

#[test]
fn drives_are_signed_by_node_label_not_by_jobs() {
    assert!(
        objects_of("Job").is_empty(),
        "no one-shot signing Jobs: the node plugin signs on vdrive.io/sign-drives"
    );
    // The node plugin watches its own Node (the label) and raises Events.
    let node = one_of("DaemonSet");
    let namespace = text(&node, &["metadata", "namespace"]);
    let account = text(&node, &["spec", "template", "spec", "serviceAccountName"]);
    let verbs = cluster_verbs(namespace, account, "nodes");
    for verb in ["get", "list", "watch"] {
        assert!(verbs.contains(verb), "the node plugin may {verb} Nodes");
    }
    let events = group_verbs(namespace, account, "events.k8s.io", "events");
    assert!(
        events.contains("create"),
        "the node plugin may create Events"
    );
}

// ---- monitoring: metrics Services, ServiceMonitor, alerts, dashboard -----------

/// The values switches that turn on every monitoring object of the chart.
const MONITORING_SWITCHES: &str = "monitoring.serviceMonitor.enabled=true,monitoring.prometheusRule.enabled=true,monitoring.dashboard.enabled=true";

/// The Helm that scripts/render-manifests builds and caches (HELM_VERSION is
/// read from the script, so it is named once), or `helm` on the PATH.
fn helm() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = fs::read_to_string(root.join("scripts/render-manifests"))
        .expect("scripts/render-manifests is readable");
    let version = script
        .lines()
        .find_map(|l| l.strip_prefix("HELM_VERSION="))
        .expect("scripts/render-manifests sets HELM_VERSION");
    let tools = std::env::var_os("VDRIVE_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
            Some(cache.join("vdrive/tools"))
        });
    if let Some(cached) = tools.map(|t| t.join(format!("helm-{version}/helm")))
        && cached.is_file()
    {
        return cached;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("helm"))
        .find(|h| h.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "no helm: run scripts/render-manifests once (it builds helm {version} and caches it)"
        )
    })
}

/// The chart rendered as scripts/render-manifests renders it, with every
/// monitoring switch on.
fn monitoring_objects() -> Vec<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(helm())
        .args(["template", "vdrive"])
        .arg(root.join("charts/vdrive"))
        .args(["--namespace", "vdrive", "--kube-version", "1.34.0"])
        .args(["--set", MONITORING_SWITCHES])
        .output()
        .expect("helm runs");
    assert!(
        output.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rendered = String::from_utf8(output.stdout).expect("helm prints UTF-8");
    documents_in("(helm template with monitoring on)", &rendered)
}

fn rendered_of(objects: &[Value], kind: &str) -> Vec<Value> {
    objects
        .iter()
        .filter(|o| text(o, &["kind"]) == kind)
        .cloned()
        .collect()
}

/// Every series name `expr` reads, after checking that it parses as PromQL.
fn series_in(expr: &str, what: &str) -> BTreeSet<String> {
    use promql_parser::parser::{self, Expr};

    fn walk(expr: &Expr, found: &mut BTreeSet<String>) {
        match expr {
            Expr::Aggregate(a) => {
                walk(&a.expr, found);
                if let Some(param) = &a.param {
                    walk(param, found);
                }
            }
            Expr::Unary(u) => walk(&u.expr, found),
            Expr::Binary(b) => {
                walk(&b.lhs, found);
                walk(&b.rhs, found);
            }
            Expr::Paren(p) => walk(&p.expr, found),
            Expr::Subquery(s) => walk(&s.expr, found),
            Expr::VectorSelector(v) => selector(v, found),
            Expr::MatrixSelector(m) => selector(&m.vs, found),
            Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, found)),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }
    fn selector(v: &promql_parser::parser::VectorSelector, found: &mut BTreeSet<String>) {
        let by_matcher = v.matchers.matchers.iter().filter(|m| m.name == "__name__");
        let names: Vec<String> = v
            .name
            .iter()
            .cloned()
            .chain(by_matcher.map(|m| m.value.clone()))
            .collect();
        assert!(!names.is_empty(), "a selector without a metric name: {v}");
        found.extend(names);
    }

    let parsed =
        parser::parse(expr).unwrap_or_else(|e| panic!("{what}: {expr:?} is not PromQL: {e}"));
    let mut found = BTreeSet::new();
    walk(&parsed, &mut found);
    found
}

/// Panics unless every series in `used` is one vdrive exports.
fn assert_exported(used: &BTreeSet<String>, what: &str) {
    for series in used {
        assert!(
            names::metric_of(series).is_some(),
            "{what} uses {series}, which vdrive does not export (src/metrics/names.rs)"
        );
    }
}

#[test]
fn the_metrics_services_select_each_component_on_its_metrics_port() {
    let services: Vec<Value> = documents("metrics-services.yaml");
    let mut components = BTreeSet::new();
    for service in &services {
        assert_eq!(text(service, &["kind"]), "Service");
        assert_eq!(text(service, &["spec", "clusterIP"]), "None", "headless");
        assert_eq!(
            text(service, &["metadata", "labels", "vdrive.io/metrics"]),
            "true"
        );
        let port = &list(service, &["spec", "ports"])[0];
        assert_eq!(text(port, &["name"]), "metrics");
        assert_eq!(text(port, &["targetPort"]), "metrics");
        assert_eq!(text(port, &["port"]), "9810");
        components.insert(
            text(
                service,
                &["spec", "selector", "app.kubernetes.io/component"],
            )
            .to_string(),
        );
    }
    assert_eq!(
        components,
        BTreeSet::from(["controller".to_string(), "node".to_string()])
    );
    // Each selected workload has a container port named metrics.
    for kind in ["Deployment", "DaemonSet"] {
        let workload = one_of(kind);
        let vdrive = container(&workload, "vdrive");
        assert!(
            list(vdrive, &["ports"])
                .iter()
                .any(|p| text(p, &["name"]) == "metrics"),
            "{kind} has a metrics port"
        );
    }
    // Off by default: the ServiceMonitor and PrometheusRule need the
    // Prometheus Operator's CRDs.
    for kind in ["ServiceMonitor", "PrometheusRule"] {
        assert!(objects_of(kind).is_empty(), "deploy/ has no {kind}");
    }
}

#[test]
fn the_service_monitor_scrapes_the_metrics_services() {
    let objects = monitoring_objects();
    let monitors = rendered_of(&objects, "ServiceMonitor");
    assert_eq!(monitors.len(), 1);
    let monitor = &monitors[0];
    let selector = at(monitor, &["spec", "selector", "matchLabels"]);
    for service in documents("metrics-services.yaml") {
        for (key, value) in selector.as_object().expect("matchLabels") {
            assert_eq!(
                at(&service, &["metadata", "labels", key]),
                value,
                "{} carries {key}",
                text(&service, &["metadata", "name"])
            );
        }
    }
    let endpoint = &list(monitor, &["spec", "endpoints"])[0];
    assert_eq!(text(endpoint, &["port"]), "metrics");
    assert_eq!(text(endpoint, &["path"]), "/metrics");
}

#[test]
fn every_alert_parses_and_reads_only_metrics_vdrive_exports() {
    let objects = monitoring_objects();
    let rules = rendered_of(&objects, "PrometheusRule");
    assert_eq!(rules.len(), 1);
    let mut alerts = BTreeMap::new();
    for group in list(&rules[0], &["spec", "groups"]) {
        for rule in list(group, &["rules"]) {
            let name = text(rule, &["alert"]).to_string();
            let expr = text(rule, &["expr"]).to_string();
            let used = series_in(&expr, &format!("alert {name}"));
            assert_exported(&used, &format!("alert {name}"));
            let severity = text(rule, &["labels", "severity"]).to_string();
            assert!(
                ["warning", "critical"].contains(&severity.as_str()),
                "{name}: {severity}"
            );
            alerts.insert(name, (expr, severity, used));
        }
    }
    let expect = |alert: &str, metric: &names::Metric, severity: &str, threshold: &str| {
        let (expr, sev, used) = alerts
            .get(alert)
            .unwrap_or_else(|| panic!("no alert {alert}"));
        assert!(
            metric.series().iter().any(|s| used.contains(s)),
            "{alert} reads {}",
            metric.name
        );
        assert_eq!(sev, severity, "{alert}");
        assert!(expr.ends_with(&format!("> {threshold}")), "{alert}: {expr}");
    };
    expect("VdrivePoolUsageHigh", &names::POOL_USED, "warning", "75");
    expect(
        "VdrivePoolUsageCritical",
        &names::POOL_USED,
        "critical",
        "90",
    );
    expect(
        "VdriveOrphanedClaims",
        &names::ORPHANED_CLAIMS,
        "warning",
        "0",
    );
    expect(
        "VdriveDriveMissingWithClaims",
        &names::NODE_MISSING_DRIVES_WITH_CLAIMS,
        "critical",
        "0",
    );
    expect(
        "VdriveEraseBacklog",
        &names::NODE_ERASE_BACKLOG_AGE,
        "warning",
        "600",
    );
    expect("VdriveCsiErrors", &names::CSI_CALLS, "warning", "0.05");
    let (expr, severity, used) = &alerts["VdrivePoolWithoutServers"];
    assert_eq!(severity, "critical");
    assert!(
        used.contains(names::POOL_HEALTH.name) && expr.ends_with("== 0"),
        "{expr}"
    );
    assert_eq!(alerts.len(), 7, "{:?}", alerts.keys());
}

#[test]
fn the_dashboard_is_json_for_the_grafana_sidecar_and_its_panels_read_exported_metrics() {
    let objects = monitoring_objects();
    let maps: Vec<Value> = rendered_of(&objects, "ConfigMap")
        .into_iter()
        .filter(|m| !at(m, &["metadata", "labels", "grafana_dashboard"]).is_null())
        .collect();
    assert_eq!(maps.len(), 1, "one dashboard ConfigMap");
    assert_eq!(
        text(&maps[0], &["metadata", "labels", "grafana_dashboard"]),
        "1"
    );
    let json = text(&maps[0], &["data", "vdrive.json"]);
    let dashboard: Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("the dashboard is not JSON: {e}"));
    let mut used = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for panel in list(&dashboard, &["panels"]) {
        let title = text(panel, &["title"]);
        titles.insert(title.to_string());
        let targets = list(panel, &["targets"]);
        assert!(!targets.is_empty(), "panel {title} has queries");
        for target in targets {
            let series = series_in(text(target, &["expr"]), &format!("panel {title}"));
            assert_exported(&series, &format!("panel {title}"));
            used.extend(series);
        }
    }
    for shown in [
        "Pool capacity over time",
        "Drive usage per node",
        "CSI latency",
    ] {
        assert!(titles.contains(shown), "no panel {shown}: {titles:?}");
    }
    for metric in [
        names::POOL_CAPACITY,
        names::DRIVE_CLAIMED,
        names::CSI_CALL_DURATION,
    ] {
        assert!(
            metric.series().iter().any(|s| used.contains(s)),
            "the dashboard shows {}",
            metric.name
        );
    }
}
