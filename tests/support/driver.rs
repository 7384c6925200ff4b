//! The `vdrive all-in-one` fixture of the integration tests that talk CSI to the
//! real binary: [`Driver`] starts it on simulated drives (sparse files on loop
//! devices) in its own temp dir, with its own node id, and talks CSI to it over
//! its unix socket with the crate's client.
//!
//! Needs root and /dev/loop-control; without them [`Driver::start`] answers None
//! (with a message) and the test is skipped. The fixture owns the process and
//! everything it makes: its Drop stops the driver, unmounts whatever is still
//! mounted under the temp dir, detaches the loop devices of the simulated drives
//! (volume devices first), and removes the temp dir, also when a test fails halfway.

// Each test crate that says `mod support;` uses a different part of this.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde::Deserialize;
use tonic::Code;
use tonic::transport::Channel;

use super::devices::{MountPoint, mounts_under, release_and_remove};
use vdrive::csi::capability::{block, mount};
use vdrive::csi::proto::controller_client::ControllerClient;
use vdrive::csi::proto::identity_client::IdentityClient;
use vdrive::csi::proto::node_client::NodeClient;
use vdrive::csi::proto::volume_capability::access_mode::Mode;
use vdrive::csi::proto::{
    CapacityRange, ControllerExpandVolumeRequest, CreateVolumeRequest, DeleteVolumeRequest,
    GetCapacityRequest, GetCapacityResponse, ListVolumesRequest, NodeExpandVolumeRequest,
    NodePublishVolumeRequest, NodeStageVolumeRequest, NodeUnpublishVolumeRequest,
    NodeUnstageVolumeRequest, ProbeRequest, Volume, VolumeCapability,
};

pub const GIB: i64 = 1 << 30;
/// Two 64 GiB TLC drives and one 64 GiB QLC drive (sparse: only written blocks use disk).
pub const SMALL_DRIVES: &str = "tlc:64x2,qlc:64x1";
pub const EXTENTS_KEY: &str = "vdrive.io/extents";
pub const TOPOLOGY_KEY: &str = "topology.vdrive.io/node";

// ---------------------------------------------------------------------------
// The fixture
// ---------------------------------------------------------------------------

/// A running `vdrive all-in-one` in its own temp dir.
pub struct Driver {
    /// The temp dir (canonical): socket, state dir, mount points, driver log.
    pub dir: PathBuf,
    pub node_id: String,
    pub spec: String,
    pub endpoint: String,
    pub child: Option<Child>,
    pub channel: Option<Channel>,
    /// More `all-in-one` arguments.
    pub extra_args: Vec<String>,
}

impl Driver {
    /// Starts the driver on simulated drives `spec`; `name` makes the node id and
    /// the temp dir unique to the test. None (and a message) without root.
    pub async fn start(name: &str, spec: &str) -> Option<Driver> {
        // This machine's kernel has no device-mapper: block volumes are loop
        // devices here only because the tests allow it.
        Driver::start_with(name, spec, &["--unsafe-loop-block-volumes"]).await
    }

    /// Starts the driver with exactly these extra `all-in-one` arguments.
    pub async fn start_with(name: &str, spec: &str, extra_args: &[&str]) -> Option<Driver> {
        let mut driver = Driver::unstarted(name, spec, extra_args)?;
        driver.spawn().await;
        Some(driver)
    }

    /// The fixture, its temp dir made but the driver not started yet (see
    /// [`Driver::spawn`]). None (and a message) without root.
    pub fn unstarted(name: &str, spec: &str, extra_args: &[&str]) -> Option<Driver> {
        if !nix::unistd::geteuid().is_root() || !Path::new("/dev/loop-control").exists() {
            eprintln!("skipped: needs root and /dev/loop-control");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("vdrive-it-{name}-"))
            .tempdir()
            .expect("create a temp dir")
            .keep();
        let dir = fs::canonicalize(&dir).expect("resolve the temp dir");
        // The fixture exists before the process does, so a failed start is cleaned up.
        Some(Driver {
            endpoint: format!("unix://{}", dir.join("csi.sock").display()),
            dir,
            node_id: format!("it-{name}-{}", std::process::id()),
            spec: spec.to_string(),
            child: None,
            channel: None,
            extra_args: extra_args.iter().map(ToString::to_string).collect(),
        })
    }

    /// `flag value`, unless the test's own arguments set `flag`.
    fn default_arg(&self, flag: &str, value: &str) -> Vec<String> {
        if self.extra_args.iter().any(|a| a == flag) {
            Vec::new()
        } else {
            vec![flag.to_string(), value.to_string()]
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("driver.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub async fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the driver log");
        let state_dir = self.state_dir();
        let child = Command::new(env!("CARGO_BIN_EXE_vdrive"))
            .arg("all-in-one")
            .args(["--endpoint", &self.endpoint])
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--simulate-drives", &self.spec])
            .args(["--node-id", &self.node_id])
            .args(self.default_arg("--pool", "k8s"))
            // Tests run side by side: no API on a fixed port unless asked for.
            .args(self.default_arg("--api-address", "off"))
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("start vdrive all-in-one");
        self.child = Some(child);
        let log_path = self.log_path();
        let channel =
            wait_until_serving(&mut self.child, &self.endpoint, "vdrive all-in-one", || {
                fs::read_to_string(&log_path).unwrap_or_default()
            })
            .await;
        self.channel = Some(channel);
    }

    /// SIGKILL, then wait: a crash at whatever point the driver was. Its mounts,
    /// devices and files stay as they were. None if it was not running.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.channel = None;
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// SIGTERM, then wait (SIGKILL after 30 s). None if it was not running.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.channel = None;
        let mut child = self.child.take()?;
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    eprintln!("vdrive all-in-one ignored SIGTERM for 30 s: killing it");
                    let _ = child.kill();
                    return child.wait().ok();
                }
            }
        }
    }

    /// Stops the driver (it must exit cleanly) and starts it again on the same
    /// state dir and simulated drives.
    pub async fn restart(&mut self) {
        let status = self.stop().expect("the driver was running");
        assert!(
            status.success(),
            "vdrive all-in-one exited with {status} on SIGTERM; its log:\n{}",
            self.log()
        );
        self.spawn().await;
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone().expect("the driver is running")
    }

    pub fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel())
    }

    pub fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel())
    }

    pub fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel())
    }

    /// Where kubelet would stage `volume_id`.
    pub fn staging_path(&self, volume_id: &str) -> PathBuf {
        self.dir.join("staging").join(volume_id)
    }

    /// Where kubelet would publish `volume_id` for a pod.
    pub fn target_path(&self, volume_id: &str) -> PathBuf {
        self.dir.join("pods").join(volume_id).join("volume")
    }

    pub async fn create(
        &self,
        name: &str,
        gib: i64,
        capability: VolumeCapability,
    ) -> Result<Volume, tonic::Status> {
        self.create_with(name, gib, capability, k8s_params()).await
    }

    pub async fn create_with(
        &self,
        name: &str,
        gib: i64,
        capability: VolumeCapability,
        parameters: HashMap<String, String>,
    ) -> Result<Volume, tonic::Status> {
        create_volume(self.controller(), name, gib, capability, parameters).await
    }

    pub async fn stage(
        &self,
        volume: &Volume,
        capability: &VolumeCapability,
    ) -> Result<PathBuf, tonic::Status> {
        let staging = self.staging_path(&volume.volume_id);
        self.node()
            .node_stage_volume(self.stage_request(volume, capability))
            .await?;
        Ok(staging)
    }

    /// NodeStageVolume whose caller gives up after `deadline`.
    pub async fn stage_within(
        &self,
        volume: &Volume,
        capability: &VolumeCapability,
        deadline: Duration,
    ) -> Result<(), tonic::Status> {
        let mut request = tonic::Request::new(self.stage_request(volume, capability));
        request.set_timeout(deadline);
        let mut node = self.node();
        let call = node.node_stage_volume(request);
        // The client enforces the deadline too, whatever the server does.
        match tokio::time::timeout(deadline + Duration::from_secs(1), call).await {
            Ok(answer) => answer.map(drop),
            Err(_) => Err(tonic::Status::deadline_exceeded("the client gave up")),
        }
    }

    pub fn stage_request(
        &self,
        volume: &Volume,
        capability: &VolumeCapability,
    ) -> NodeStageVolumeRequest {
        NodeStageVolumeRequest {
            volume_id: volume.volume_id.clone(),
            staging_target_path: path_str(&self.staging_path(&volume.volume_id)),
            volume_capability: Some(capability.clone()),
            volume_context: volume.volume_context.clone(),
            ..Default::default()
        }
    }

    pub async fn publish(
        &self,
        volume: &Volume,
        capability: &VolumeCapability,
    ) -> Result<PathBuf, tonic::Status> {
        let target = self.target_path(&volume.volume_id);
        self.node()
            .node_publish_volume(NodePublishVolumeRequest {
                volume_id: volume.volume_id.clone(),
                staging_target_path: path_str(&self.staging_path(&volume.volume_id)),
                target_path: path_str(&target),
                volume_capability: Some(capability.clone()),
                volume_context: volume.volume_context.clone(),
                ..Default::default()
            })
            .await?;
        Ok(target)
    }

    /// ControllerExpandVolume to `bytes`.
    pub async fn expand(
        &self,
        volume_id: &str,
        bytes: i64,
        capability: &VolumeCapability,
    ) -> Result<vdrive::csi::proto::ControllerExpandVolumeResponse, tonic::Status> {
        let request = ControllerExpandVolumeRequest {
            volume_id: volume_id.to_string(),
            capacity_range: Some(CapacityRange {
                required_bytes: bytes,
                limit_bytes: 0,
            }),
            volume_capability: Some(capability.clone()),
            ..Default::default()
        };
        Ok(self
            .controller()
            .controller_expand_volume(request)
            .await?
            .into_inner())
    }

    /// NodeExpandVolume of the volume at `path` to `bytes`.
    pub async fn node_expand(
        &self,
        volume_id: &str,
        path: &Path,
        staging: &Path,
        bytes: i64,
        capability: &VolumeCapability,
    ) -> Result<vdrive::csi::proto::NodeExpandVolumeResponse, tonic::Status> {
        let request = NodeExpandVolumeRequest {
            volume_id: volume_id.to_string(),
            volume_path: path_str(path),
            staging_target_path: path_str(staging),
            capacity_range: Some(CapacityRange {
                required_bytes: bytes,
                limit_bytes: 0,
            }),
            volume_capability: Some(capability.clone()),
            ..Default::default()
        };
        Ok(self.node().node_expand_volume(request).await?.into_inner())
    }

    pub async fn unpublish(&self, volume_id: &str, target: &Path) -> Result<(), tonic::Status> {
        self.node()
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: volume_id.to_string(),
                target_path: path_str(target),
            })
            .await?;
        Ok(())
    }

    pub async fn unstage(&self, volume_id: &str, staging: &Path) -> Result<(), tonic::Status> {
        self.node()
            .node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: volume_id.to_string(),
                staging_target_path: path_str(staging),
            })
            .await?;
        Ok(())
    }

    pub async fn delete(&self, volume_id: &str) -> Result<(), tonic::Status> {
        self.controller()
            .delete_volume(DeleteVolumeRequest {
                volume_id: volume_id.to_string(),
                secrets: HashMap::new(),
            })
            .await?;
        Ok(())
    }

    /// Every volume in the ledger, following next_token.
    pub async fn list(&self) -> Vec<Volume> {
        let mut volumes = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .controller()
                .list_volumes(ListVolumesRequest {
                    max_entries: 50,
                    starting_token: token,
                })
                .await
                .expect("ListVolumes")
                .into_inner();
            volumes.extend(page.entries.into_iter().filter_map(|e| e.volume));
            if page.next_token.is_empty() {
                return volumes;
            }
            token = page.next_token;
        }
    }

    /// GetCapacity for the k8s-pool-storage class.
    pub async fn capacity(&self) -> GetCapacityResponse {
        self.capacity_with(k8s_params()).await
    }

    pub async fn capacity_with(&self, parameters: HashMap<String, String>) -> GetCapacityResponse {
        self.controller()
            .get_capacity(GetCapacityRequest {
                parameters,
                ..Default::default()
            })
            .await
            .expect("GetCapacity")
            .into_inner()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let status = self.stop();
        if thread::panicking() {
            eprintln!(
                "--- vdrive all-in-one log ({}, exit {status:?}) ---\n{}--- end of log ---",
                self.node_id,
                self.log()
            );
        }
        release_and_remove(&self.dir);
    }
}

/// The mounts exactly at `path`.
pub fn mounts_at(path: &Path) -> Vec<MountPoint> {
    mounts_under(path)
        .into_iter()
        .filter(|m| m.target == path)
        .collect()
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Waits until the CSI driver started as `child` answers Probe at `endpoint`
/// (60 s at most) and returns its channel. Panics with `log()` if the driver
/// exits first or never answers; `child` is None afterwards if it exited.
pub async fn wait_until_serving(
    child: &mut Option<Child>,
    endpoint: &str,
    what: &str,
    log: impl Fn() -> String,
) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(running) = child.as_mut()
            && let Ok(Some(status)) = running.try_wait()
        {
            *child = None;
            panic!(
                "{what} exited ({status}) before serving; its log:\n{}",
                log()
            );
        }
        if let Ok(channel) = vdrive::csi::server::connect(endpoint).await
            && IdentityClient::new(channel.clone())
                .probe(ProbeRequest {})
                .await
                .is_ok()
        {
            return channel;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not serve {endpoint} within 60 s; its log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn path_str(path: &Path) -> String {
    path.to_str().expect("test paths are UTF-8").to_string()
}

/// The `k8s-pool-storage` class's parameters.
pub fn k8s_params() -> HashMap<String, String> {
    vdrive::csi::params::preset("k8s-pool-storage")
        .expect("the k8s-pool-storage preset")
        .parameters
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub async fn create_volume(
    mut controller: ControllerClient<Channel>,
    name: &str,
    gib: i64,
    capability: VolumeCapability,
    parameters: HashMap<String, String>,
) -> Result<Volume, tonic::Status> {
    let response = controller
        .create_volume(CreateVolumeRequest {
            name: name.to_string(),
            capacity_range: Some(CapacityRange {
                required_bytes: gib * GIB,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![capability],
            parameters,
            ..Default::default()
        })
        .await?;
    Ok(response
        .into_inner()
        .volume
        .expect("CreateVolume answers a volume"))
}

pub fn ext4() -> VolumeCapability {
    mount("ext4", Mode::SingleNodeWriter)
}

pub fn xfs() -> VolumeCapability {
    mount("xfs", Mode::SingleNodeWriter)
}

pub fn raw_block() -> VolumeCapability {
    block(Mode::SingleNodeWriter)
}

/// One entry of the `vdrive.io/extents` volume context.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Extent {
    #[serde(rename = "virtual")]
    pub virtual_uuid: String,
    pub drive: String,
    #[serde(rename = "type")]
    pub drive_type: Option<String>,
    pub offset_gib: u64,
    pub size_gib: u64,
}

pub fn extents(volume: &Volume) -> Vec<Extent> {
    let json = volume
        .volume_context
        .get(EXTENTS_KEY)
        .unwrap_or_else(|| panic!("volume {} has no {EXTENTS_KEY}", volume.volume_id));
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{EXTENTS_KEY} {json:?}: {e}"))
}

/// Total bytes of the filesystem mounted at `path`.
pub fn fs_size_bytes(path: &Path) -> u64 {
    let stat = nix::sys::statvfs::statvfs(path).expect("statvfs");
    stat.blocks() * stat.fragment_size()
}

pub fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn block_size_bytes(device: &Path) -> i64 {
    let out = run("blockdev", &["--getsize64", &path_str(device)]);
    String::from_utf8_lossy(&out)
        .trim()
        .parse()
        .expect("blockdev prints a number")
}

pub fn assert_code<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: Code,
) -> tonic::Status {
    match result {
        Ok(value) => panic!("expected {code:?}, got success: {value:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            status
        }
    }
}
