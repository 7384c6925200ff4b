//! The command-line convention, held by the real binary for every command that
//! can answer without a cluster: the answer on stdout (a document under
//! `-o json|yaml`), diagnostics on stderr, and exit 0 for yes, 1 for a definite
//! no, 2 for a usage or operational error.

use std::process::{Command, Output};

use serde_json::Value;

/// What one run of `vdrive` printed and how it exited.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn vdrive(args: &[&str]) -> Run {
    // No ambient kubeconfig or in-cluster account: "no cluster" is the same
    // answer on every machine.
    let home = tempfile::tempdir().expect("a temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_vdrive"))
        .args(args)
        .env("HOME", home.path())
        .env("KUBECONFIG", home.path().join("no-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .expect("run vdrive");
    Run::from(output)
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    fn exits(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    fn yaml(&self) -> Value {
        serde_norway::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not YAML ({e}):\n{}", self.stdout))
    }

    /// An operational or usage failure: 2, said on stderr, nothing on stdout.
    fn fails_in_text(self) -> Self {
        let run = self.exits(2);
        assert!(run.stdout.is_empty(), "stdout: {}", run.stdout);
        assert!(!run.stderr.is_empty(), "a failure says why on stderr");
        run
    }

    /// A failure under `-o json`: still 2, and an error object on stdout.
    fn fails_in_json(self, kind: &str) -> Self {
        let run = self.exits(2);
        let error = run.json();
        assert_eq!(error["error"]["kind"], kind, "{error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert!(!run.stderr.is_empty(), "the message is on stderr too");
        run
    }
}

const PLAN_FITS: &[&str] = &[
    "plan",
    "--capacity",
    "1500",
    "--cores",
    "3",
    "--tlc",
    "1",
    "--qlc",
    "2",
    "--enforce-per-type",
    "false",
];
const PLAN_TOO_SMALL: &[&str] = &["plan", "--capacity", "100", "--cores", "1"];
const UNREACHABLE_API: &str = "http://127.0.0.1:1";

fn with<'a>(base: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(more).copied().collect()
}

#[test]
fn help_states_the_convention_and_exits_0() {
    let run = vdrive(&["--help"]).exits(0);
    for line in [
        "0  yes",
        "1  a definite no",
        "2  a usage or operational error",
    ] {
        assert!(run.stdout.contains(line), "{}", run.stdout);
    }
    vdrive(&["--version"]).exits(0);
}

#[test]
fn bad_command_lines_exit_2() {
    vdrive(&[]).exits(2);
    vdrive(&["frobnicate"]).fails_in_text();
    vdrive(&["plan", "--cores", "many"]).fails_in_text();
    vdrive(&["plan", "--cores", "1", "-o", "xml"]).fails_in_text();
    vdrive(&["plan", "--cores", "many", "-o", "json"]).fails_in_json("invalid_argument");
    vdrive(&["plan", "--cores", "many", "--json"]).fails_in_json("invalid_argument");
    let run = vdrive(&["plan", "--cores", "many", "-o", "yaml"]).exits(2);
    assert_eq!(run.yaml()["error"]["kind"], "invalid_argument");
    // Flags the parser accepts but that contradict each other are usage errors too.
    vdrive(&["plan", "--cores", "1"]).fails_in_text();
}

#[test]
fn plan_answers_yes_or_no() {
    let run = vdrive(PLAN_FITS).exits(0);
    assert!(
        run.stdout.contains("Total: 3 virtual drives, 1500 GiB"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.is_empty(), "{}", run.stderr);

    let run = vdrive(&with(PLAN_FITS, &["-o", "json"])).exits(0);
    assert_eq!(run.json()["qlc"], serde_json::json!([500, 500]));
    let run = vdrive(&with(PLAN_FITS, &["-o", "yaml"])).exits(0);
    assert_eq!(run.yaml()["tlc"], serde_json::json!([500]));
    let run = vdrive(&with(PLAN_FITS, &["--json"])).exits(0);
    assert_eq!(run.json()["tlc"], serde_json::json!([500]));

    let run = vdrive(PLAN_TOO_SMALL).exits(1);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr.contains("insufficient TLC capacity"),
        "{}",
        run.stderr
    );
    let run = vdrive(&with(PLAN_TOO_SMALL, &["-o", "json"])).exits(1);
    assert_eq!(run.json()["error"]["kind"], "insufficient_type_capacity");
}

#[test]
fn pools_at_an_unreachable_api_exit_2() {
    for what in ["status", "health"] {
        vdrive(&["pools", what, "--api", UNREACHABLE_API]).fails_in_text();
        vdrive(&["pools", what, "--api", UNREACHABLE_API, "-o", "json"])
            .fails_in_json("operational_error");
    }
    vdrive(&["pools", "status", "--api", "not-a-url"]).fails_in_text();
}

#[test]
fn cluster_commands_without_a_cluster_exit_2() {
    vdrive(&["orphans"]).fails_in_text();
    vdrive(&["orphans", "-o", "json"]).fails_in_json("operational_error");
    vdrive(&["orphans", "--kubeconfig", "/nonexistent/kubeconfig"]).fails_in_text();
    vdrive(&["pools", "status", "--kubeconfig", "/nonexistent/kubeconfig"]).fails_in_text();
}

#[test]
fn csi_at_a_missing_socket_exits_2() {
    let endpoint = "--endpoint=unix:///nonexistent/vdrive.sock";
    vdrive(&["csi", endpoint, "list-volumes"]).fails_in_text();
    vdrive(&["csi", endpoint, "list-volumes", "-o", "json"]).fails_in_json("operational_error");
    vdrive(&["csi", endpoint, "delete-volume", "v-1"]).fails_in_text();
}

#[test]
fn drives_refuses_an_unconfirmed_forget_with_2() {
    vdrive(&[
        "drives",
        "forget",
        "--drive",
        "00000000-0000-0000-0000-000000000001",
    ])
    .fails_in_text();
}

#[test]
fn sign_show_answers_in_every_format() {
    // Whatever drives this machine has (often none): a list, and a yes.
    let run = vdrive(&["sign", "show", "-o", "json"]).exits(0);
    assert!(run.json().is_array(), "{}", run.stdout);
    let run = vdrive(&["sign", "show", "-o", "yaml"]).exits(0);
    assert!(run.yaml().is_array(), "{}", run.stdout);
    vdrive(&["sign", "show"]).exits(0);
    vdrive(&["sign"]).fails_in_text();
}

#[test]
fn a_drive_sign_refuses_is_a_no_with_the_report_on_stdout() {
    // Not a block device: refused. The report says so on stdout (what was and
    // was not signed), the note on stderr, and the exit code is a no.
    let run = vdrive(&["sign", "--device", "/dev/null", "--type", "tlc"]).exits(1);
    assert!(
        run.stdout.starts_with("not signed /dev/null:"),
        "stdout: {}",
        run.stdout
    );
    assert!(run.stderr.contains("not signed"), "stderr: {}", run.stderr);
}

#[test]
fn daemons_exit_2_when_they_cannot_start() {
    let missing = "--kubeconfig=/nonexistent/kubeconfig";
    vdrive(&["controller", missing]).fails_in_text();
    let dir = tempfile::tempdir().expect("a temp dir");
    let endpoint = format!("--endpoint=unix://{}/n.sock", dir.path().display());
    let state = format!("--state-dir={}/state", dir.path().display());
    vdrive(&["node", &endpoint, &state, "--node-id=n1", missing]).exits(2);
}

/// The binary under the plugin's name, in a temp dir, as kubectl would find
/// it on the PATH.
fn plugin() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let link = dir.path().join("kubectl-vdrive");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vdrive"), &link).expect("symlink the plugin");
    (dir, link)
}

fn run_plugin(link: &std::path::Path, args: &[&str]) -> Run {
    let home = tempfile::tempdir().expect("a temp dir");
    let output = Command::new(link)
        .args(args)
        .env("HOME", home.path())
        .env("KUBECONFIG", home.path().join("no-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .expect("run kubectl-vdrive");
    Run::from(output)
}

#[test]
fn the_plugin_follows_the_convention_without_a_cluster() {
    let (_dir, link) = plugin();
    let run = run_plugin(&link, &["--help"]).exits(0);
    assert!(
        run.stdout.contains("Usage: kubectl vdrive"),
        "{}",
        run.stdout
    );
    run_plugin(&link, &["frobnicate"]).fails_in_text();
    run_plugin(&link, &["drives", "-o", "xml"]).fails_in_text();
    for command in ["drives", "claims", "pools", "orphans"] {
        run_plugin(&link, &[command]).fails_in_text();
        run_plugin(&link, &[command, "-o", "json"]).fails_in_json("operational_error");
        let run = run_plugin(&link, &[command, "--context", "elsewhere", "-o", "yaml"]).exits(2);
        assert_eq!(run.yaml()["error"]["kind"], "operational_error");
        run_plugin(&link, &[command, "--kubeconfig", "/nonexistent/kubeconfig"]).fails_in_text();
    }
    // The same commands without the symlink.
    vdrive(&["kubectl", "drives"]).fails_in_text();
    vdrive(&["kubectl", "claims", "-n", "default", "-o", "json"])
        .fails_in_json("operational_error");
}
