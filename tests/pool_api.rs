//! The pool API against the real `vdrive all-in-one` over loopback: every
//! endpoint and every error status, VM images (a qcow2 made here with
//! qemu-img, served from a local file and from an HTTP server on 127.0.0.1, and
//! a raw image) checked byte for byte on the staged block device, resize, and
//! delete erasing the disk before its claim is freed.
//!
//! Needs root, /dev/loop-control and qemu-img; without root every test is
//! skipped (with a message).

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;

use support::driver::{Driver, GIB, raw_block};
use support::http::{Answer, get, post_json, request, serve_files};
use vdrive::csi::proto::Volume;
use vdrive::node::signature::HEADER_BYTES;

/// Two 16 GiB drives of each type: the vm pool takes QLC.
const DRIVES: &str = "tlc:16x1,qlc:16x2";
const IMAGE_BYTES: usize = 24 << 20;

/// An all-in-one in the vm pool with its API on a free loopback port, and the
/// images of its catalog.
struct Api {
    driver: Driver,
    address: String,
    /// The raw bytes every catalog image holds once converted.
    image: Vec<u8>,
}

/// Makes the test images in `dir`: `disk.raw` with marks in its first MiB,
/// past it and at its end, `disk.qcow2` from it, one whose first MiB is zeros,
/// and serves `dir` over HTTP. Returns the catalog JSON and the raw bytes.
fn make_images(dir: &Path) -> (Value, Vec<u8>) {
    let mut image = vec![0u8; IMAGE_BYTES];
    for (at, mark) in [
        (0usize, &b"\xebVDRIVE-BOOT-SECTOR"[..]),
        (510, &b"\x55\xaa"[..]),
        ((1 << 20) + 7, &b"past the first MiB"[..]),
        (9 << 20, &b"middle of the image"[..]),
        (IMAGE_BYTES - 16, &b"the last 16 byte"[..]),
    ] {
        image[at..at + mark.len()].copy_from_slice(mark);
    }
    let raw = dir.join("disk.raw");
    fs::write(&raw, &image).expect("write the raw image");
    let qcow2 = dir.join("disk.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        path(&raw),
        path(&qcow2),
    ]);
    let mut headless = image.clone();
    headless[..1 << 20].fill(0);
    let headless_path = dir.join("headless.raw");
    fs::write(&headless_path, &headless).expect("write the headless image");
    let base = serve_files(dir.to_path_buf());
    let catalog = json!({
        "images": {
            "local-qcow2": { "source": path(&qcow2), "format": "qcow2" },
            "http-qcow2": { "source": format!("{base}/disk.qcow2") },
            "local-raw": { "source": path(&raw), "format": "raw" },
            "headless": { "source": path(&headless_path) },
            "gone": { "source": path(&dir.join("no-such.img")) },
            "http-404": { "source": format!("{base}/no-such.qcow2") },
        },
        "server_types": { "small": { "cpu": 1, "memory": 2 }, "cx21": { "cpu": 2, "memory": 4 } }
    });
    (catalog, image)
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img (Debian: qemu-utils; scripts/install-deps installs it)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

impl Api {
    async fn start(name: &str) -> Option<Api> {
        Api::start_in(name, "vm").await
    }

    /// An all-in-one serving `pool`.
    async fn start_in(name: &str, pool: &str) -> Option<Api> {
        let mut driver = Driver::unstarted(name, DRIVES, &[])?;
        let images = driver.state_dir().with_file_name("images");
        fs::create_dir_all(&images).expect("make the image dir");
        let (catalog, image) = make_images(&images);
        let catalog_path = images.join("catalog.json");
        fs::write(&catalog_path, catalog.to_string()).expect("write the catalog");
        driver.extra_args = [
            "--unsafe-loop-block-volumes",
            "--pool",
            pool,
            // Any free port, read back from the log: no race for a port
            // between the tests that run side by side.
            "--api-address",
            "127.0.0.1:0",
            "--vm-images",
            path(&catalog_path),
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        driver.spawn().await;
        let address = api_address(&driver);
        Some(Api {
            driver,
            address,
            image,
        })
    }

    /// Restarts all-in-one; its API gets a new port.
    async fn restart(&mut self) {
        self.driver.restart().await;
        self.address = api_address(&self.driver);
    }

    async fn get(&self, path: &str) -> Answer {
        get(&self.address, path).await
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        post_json(&self.address, path, &body).await
    }

    async fn delete(&self, path: &str) -> Answer {
        request(&self.address, "DELETE", path, None, None).await
    }

    async fn create_vm(&self, name: &str, image: &str, storage: u64) -> Value {
        let answer = self
            .post(
                "/api/v1/vms",
                json!({"name": name, "image": image, "server_type": "small", "storage": storage}),
            )
            .await;
        assert_eq!(answer.status, 201, "{}", answer.json());
        answer.json()
    }

    /// Polls the VM until it is no longer Provisioning.
    async fn settled(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let answer = self.get(&format!("/api/v1/vms/{id}")).await;
            assert_eq!(answer.status, 200, "{}", answer.json());
            let vm = answer.json();
            if vm["status"] != "Provisioning" {
                return vm;
            }
            assert!(
                Instant::now() < deadline,
                "VM {id} still Provisioning after 180 s: {vm}\n{}",
                self.driver.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn volume(&self, volume_id: &str) -> Option<Volume> {
        self.driver
            .list()
            .await
            .into_iter()
            .find(|v| v.volume_id == volume_id)
    }

    /// Stages and publishes the disk, reads it, and takes it down again.
    async fn read_disk(&self, volume_id: &str, len: usize) -> Vec<u8> {
        let volume = self.volume(volume_id).await.expect("the disk is a volume");
        let cap = raw_block();
        let staging = self
            .driver
            .stage(&volume, &cap)
            .await
            .expect("stage the disk");
        let target = self
            .driver
            .publish(&volume, &cap)
            .await
            .expect("publish the disk");
        let mut bytes = vec![0u8; len];
        File::open(&target)
            .and_then(|f| f.read_exact_at(&mut bytes, 0))
            .expect("read the published disk");
        self.driver
            .unpublish(volume_id, &target)
            .await
            .expect("unpublish");
        self.driver
            .unstage(volume_id, &staging)
            .await
            .expect("unstage");
        bytes
    }
}

/// Where the driver's latest start serves its API (it says so in its log).
fn api_address(driver: &Driver) -> String {
    let log = driver.log();
    log.lines()
        .rev()
        .filter_map(|line| line.strip_prefix("vdrive all-in-one: pool API on http://"))
        .find_map(|rest| rest.strip_suffix("/api/v1/"))
        .unwrap_or_else(|| panic!("all-in-one did not say where its API is:\n{log}"))
        .to_string()
}

/// The simulated drive whose signature carries `uuid`.
fn drive_image(driver: &Driver, uuid: &str) -> PathBuf {
    support::chaos::images(&driver.state_dir().join("simulated-drives"))
        .into_iter()
        .find(|(_, id)| id == uuid)
        .map(|(path, _)| path)
        .unwrap_or_else(|| panic!("no simulated drive {uuid}"))
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

// ---------------------------------------------------------------------------
// Pools
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn pools_answer_in_the_seeds_shapes_over_http_and_the_cli() {
    let Some(api) = Api::start("pools").await else {
        return;
    };
    let status = api.get("/api/v1/pools/status").await;
    assert_eq!(status.status, 200);
    let status = status.json();
    assert_eq!(keys(&status), ["k8s_pool", "system_reserve", "vm_pool"]);
    let pool_keys = [
        "available_capacity_gb",
        "servers",
        "total_capacity_gb",
        "usage_percentage",
        "used_capacity_gb",
    ];
    assert_eq!(keys(&status["k8s_pool"]), pool_keys);
    assert_eq!(keys(&status["vm_pool"]), pool_keys);
    assert_eq!(
        keys(&status["system_reserve"]),
        [
            "available_capacity_gb",
            "total_capacity_gb",
            "total_servers",
            "usage_percentage",
            "used_capacity_gb"
        ]
    );
    assert_eq!(status["vm_pool"]["servers"], 1);
    assert_eq!(status["vm_pool"]["total_capacity_gb"], 1500);
    assert_eq!(status["k8s_pool"]["servers"], 0);

    let health = api.get("/api/v1/pools/health").await;
    assert_eq!(health.status, 200);
    let health = health.json();
    assert_eq!(keys(&health), ["errors", "pools", "status", "warnings"]);
    assert_eq!(keys(&health["pools"]), ["k8s_pool", "vm_pool"]);
    // 48 GiB of drives is less than a pool server needs: a warning.
    assert_eq!(health["status"], "warning", "{health}");

    // The CLI asks the same API: JSON on stdout in every case, health by exit code.
    let cli = |what: &str| {
        Command::new(env!("CARGO_BIN_EXE_vdrive"))
            .args(["pools", what, "--api", &format!("http://{}", api.address)])
            .output()
            .expect("run vdrive pools")
    };
    let out = cli("status");
    assert!(out.status.success(), "{out:?}");
    let printed: Value = serde_json::from_slice(&out.stdout).expect("status JSON on stdout");
    assert_eq!(printed, status);
    let out = cli("health");
    assert_eq!(out.status.code(), Some(1), "not healthy: exit 1");
    let printed: Value = serde_json::from_slice(&out.stdout).expect("health JSON on stdout");
    assert_eq!(printed, health);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A VM's disk counts in the vm pool at once.
    let vm = api.create_vm("counted", "local-raw", 3).await;
    let vm = api.settled(vm["id"].as_str().expect("an id")).await;
    assert_eq!(vm["status"], "Ready", "{vm}");
    let status = api.get("/api/v1/pools/status").await.json();
    assert_eq!(status["vm_pool"]["used_capacity_gb"], 3);
    assert_eq!(status["vm_pool"]["available_capacity_gb"], 1497);
    assert_eq!(status["vm_pool"]["usage_percentage"], 0.2);

    let out = Command::new(env!("CARGO_BIN_EXE_vdrive"))
        .args(["pools", "status", "--api", "http://127.0.0.1:1"])
        .output()
        .expect("run vdrive pools");
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unreachable API is an operational error"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the pool API at http://127.0.0.1:1"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// VMs
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn vm_images_land_byte_for_byte_on_their_disks() {
    let Some(api) = Api::start("vm-images").await else {
        return;
    };
    let seed = api
        .post(
            "/api/v1/vms",
            json!({"name": "test-vm", "image": "local-qcow2", "server_type": "cx21",
                   "cpu": 2, "memory": 4, "storage": 2, "namespace": "default"}),
        )
        .await;
    assert_eq!(seed.status, 201, "{}", seed.json());
    let seed = seed.json();
    assert_eq!(seed["id"], "default.test-vm");
    assert_eq!(seed["status"], "Provisioning");
    assert_eq!(
        (seed["cpu"].clone(), seed["memory"].clone()),
        (json!(2), json!(4))
    );
    let from_http = api.create_vm("web", "http-qcow2", 1).await;
    let from_raw = api.create_vm("raw", "local-raw", 1).await;

    for vm in [&seed, &from_http, &from_raw] {
        let id = vm["id"].as_str().expect("an id");
        let vm = api.settled(id).await;
        assert_eq!(vm["status"], "Ready", "{vm}");
        assert_eq!(vm["reason"], Value::Null);
        let volume_id = vm["disk"]["volume_id"].as_str().expect("a disk");
        assert_eq!(vm["disk"]["node"], json!(api.driver.node_id));
        let read = api.read_disk(volume_id, IMAGE_BYTES + (1 << 20)).await;
        assert!(
            read[..IMAGE_BYTES] == api.image[..],
            "VM {id}: the disk does not hold the image"
        );
        assert!(
            read[IMAGE_BYTES..].iter().all(|b| *b == 0),
            "VM {id}: the disk holds more than the image"
        );
    }

    // The list has them all; the records survive a restart.
    let list = api.get("/api/v1/vms").await.json();
    let mut ids: Vec<&str> = list["vms"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|v| v["id"].as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["default.raw", "default.test-vm", "default.web"]);
    let mut api = api;
    api.restart().await;
    let after = api.get("/api/v1/vms/default.test-vm").await.json();
    assert_eq!(after["status"], "Ready", "{after}");
}

#[tokio::test(flavor = "multi_thread")]
async fn images_that_cannot_be_written_fail_the_vm_with_the_reason() {
    let Some(api) = Api::start("vm-bad-images").await else {
        return;
    };
    for (name, image, says) in [
        ("gone", "gone", "no-such.img"),
        ("http-404", "http-404", "no-such.qcow2"),
        ("headless", "headless", "first MiB"),
    ] {
        let vm = api.create_vm(name, image, 1).await;
        let vm = api.settled(vm["id"].as_str().expect("an id")).await;
        assert_eq!(vm["status"], "Failed", "{vm}");
        let reason = vm["reason"].as_str().expect("a reason");
        assert!(reason.contains(says), "{name}: {reason}");
        // A failed VM can be deleted, which frees its disk.
        let volume_id = vm["disk"]["volume_id"]
            .as_str()
            .expect("a disk")
            .to_string();
        let deleted = api.delete(&format!("/api/v1/vms/default.{name}")).await;
        assert_eq!(deleted.status, 200, "{}", deleted.json());
        assert!(api.volume(&volume_id).await.is_none());
    }
    // Catalog names the request gets wrong are the API's 400s, listing the known.
    let unknown = api
        .post(
            "/api/v1/vms",
            json!({"name": "x", "image": "windows", "server_type": "small", "storage": 1}),
        )
        .await;
    assert_eq!(unknown.status, 400);
    let (kind, message) = unknown.error();
    assert_eq!(kind, "unknown_image");
    assert!(
        message.contains("gone, headless, http-404, http-qcow2, local-qcow2, local-raw"),
        "{message}"
    );
    let unknown = api
        .post(
            "/api/v1/vms",
            json!({"name": "x", "image": "local-raw", "server_type": "huge", "storage": 1}),
        )
        .await;
    assert_eq!(unknown.status, 400);
    let (kind, message) = unknown.error();
    assert_eq!(kind, "unknown_server_type");
    assert!(message.contains("cx21, small"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn resize_grows_and_delete_erases_before_it_frees() {
    let Some(api) = Api::start("vm-resize").await else {
        return;
    };
    let vm = api.create_vm("grow", "local-raw", 1).await;
    let vm = api.settled(vm["id"].as_str().expect("an id")).await;
    assert_eq!(vm["status"], "Ready", "{vm}");
    let volume_id = vm["disk"]["volume_id"]
        .as_str()
        .expect("a disk")
        .to_string();

    let grown = api
        .post("/api/v1/vms/default.grow/resize", json!({"new_size_gb": 3}))
        .await;
    assert_eq!(grown.status, 200, "{}", grown.json());
    let grown = grown.json();
    assert_eq!(
        (grown["storage"].clone(), grown["disk"]["size_gb"].clone()),
        (json!(3), json!(3))
    );
    let volume = api.volume(&volume_id).await.expect("the disk");
    assert_eq!(volume.capacity_bytes, 3 * GIB);
    // The grown disk still holds its image.
    let read = api.read_disk(&volume_id, IMAGE_BYTES).await;
    assert!(read == api.image, "the image is gone after the resize");

    let same = api
        .post("/api/v1/vms/default.grow/resize", json!({"new_size_gb": 3}))
        .await;
    assert_eq!(same.status, 200);
    let shrink = api
        .post("/api/v1/vms/default.grow/resize", json!({"new_size_gb": 2}))
        .await;
    assert_eq!(shrink.status, 400);
    let (kind, message) = shrink.error();
    assert_eq!(kind, "invalid_request");
    assert!(message.contains("disks only grow"), "{message}");
    let huge = api
        .post(
            "/api/v1/vms/default.grow/resize",
            json!({"new_size_gb": 500}),
        )
        .await;
    assert_eq!(huge.status, 507, "{}", huge.json());
    let (kind, message) = huge.error();
    assert_eq!(kind, "insufficient_storage");
    assert!(message.contains("no room for the disk"), "{message}");
    let wrong = api
        .post(
            "/api/v1/vms/default.grow/resize",
            json!({"new_size_gb": "4"}),
        )
        .await;
    assert_eq!(wrong.status, 400);
    assert!(
        wrong.error().1.starts_with("new_size_gb: invalid type"),
        "{:?}",
        wrong.error()
    );
    let missing = api
        .post("/api/v1/vms/default.nope/resize", json!({"new_size_gb": 4}))
        .await;
    assert_eq!(missing.status, 404);

    // Delete erases the disk's extents before the claim goes.
    let volume = api.volume(&volume_id).await.expect("the disk");
    let extents = support::driver::extents(&volume);
    let deleted = api.delete("/api/v1/vms/default.grow").await;
    assert_eq!(deleted.status, 200, "{}", deleted.json());
    assert_eq!(
        deleted.json(),
        json!({"id": "default.grow", "disk": "deleted", "volume_id": null})
    );
    assert!(api.volume(&volume_id).await.is_none(), "the claim is freed");
    for extent in extents {
        let image = drive_image(&api.driver, &extent.drive);
        let from = HEADER_BYTES + extent.offset_gib * GIB as u64;
        let to = from + extent.size_gib * GIB as u64;
        assert_eq!(
            support::chaos::first_nonzero(&image, from, to),
            None,
            "the deleted disk was not erased"
        );
    }
    assert_eq!(api.get("/api/v1/vms/default.grow").await.status, 404);
    assert_eq!(api.delete("/api/v1/vms/default.grow").await.status, 404);

    // keep_disk keeps the volume.
    let kept = api.create_vm("kept", "local-raw", 1).await;
    let kept = api.settled(kept["id"].as_str().expect("an id")).await;
    let kept_volume = kept["disk"]["volume_id"]
        .as_str()
        .expect("a disk")
        .to_string();
    let answer = api.delete("/api/v1/vms/default.kept?keep_disk=true").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json(),
        json!({"id": "default.kept", "disk": "kept", "volume_id": kept_volume})
    );
    assert!(api.volume(&kept_volume).await.is_some(), "the disk is kept");
    // A VM made again under that name gets a disk of its own, and deleting it
    // never touches the kept one.
    let again = api.create_vm("kept", "local-raw", 1).await;
    let again = api.settled(again["id"].as_str().expect("an id")).await;
    assert_eq!(again["status"], "Ready", "{again}");
    let new_volume = again["disk"]["volume_id"]
        .as_str()
        .expect("a disk")
        .to_string();
    assert_ne!(
        new_volume, kept_volume,
        "the kept disk was handed out again"
    );
    assert_eq!(api.delete("/api/v1/vms/default.kept").await.status, 200);
    assert!(api.volume(&new_volume).await.is_none());
    assert!(
        api.volume(&kept_volume).await.is_some(),
        "the kept disk is still kept"
    );
    let bad = api
        .delete("/api/v1/vms/default.other?keep_disk=maybe")
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_the_right_status_and_a_json_error() {
    let Some(api) = Api::start("vm-errors").await else {
        return;
    };
    let vm = |fields: Value| {
        let mut body =
            json!({"name": "a", "image": "local-raw", "server_type": "small", "storage": 1});
        for (k, v) in fields.as_object().expect("fields").clone() {
            body[k] = v;
        }
        body
    };
    for (body, status, kind, says) in [
        (
            vm(json!({"name": "Bad_Name"})),
            400,
            "invalid_request",
            "name: \"Bad_Name\" is not a DNS label",
        ),
        (
            vm(json!({"namespace": "a.b"})),
            400,
            "invalid_request",
            "namespace: ",
        ),
        (
            vm(json!({"cpu": "2"})),
            400,
            "invalid_request",
            "cpu: invalid type",
        ),
        (
            vm(json!({"storage": -1})),
            400,
            "invalid_request",
            "storage: invalid value",
        ),
        (
            vm(json!({"storage": 0})),
            400,
            "invalid_request",
            "storage: 0 GB",
        ),
        (
            vm(json!({"disk_size": 5})),
            400,
            "invalid_request",
            "unknown field `disk_size`",
        ),
        (
            vm(json!({"server_type": null})),
            400,
            "invalid_request",
            "give a server_type",
        ),
        (
            vm(json!({"storage": 5000})),
            507,
            "insufficient_storage",
            "no room for the disk",
        ),
    ] {
        let answer = api.post("/api/v1/vms", body.clone()).await;
        assert_eq!(answer.status, status, "{body}: {}", answer.json());
        let (got_kind, message) = answer.error();
        assert_eq!(got_kind, kind, "{body}: {message}");
        assert!(message.contains(says), "{body}: {message}");
    }
    // Nothing was left by the refusals: no VM, no volume.
    assert_eq!(api.get("/api/v1/vms").await.json(), json!({"vms": []}));
    assert!(api.driver.list().await.is_empty());

    let first = api.create_vm("twice", "local-raw", 1).await;
    let again = api
        .post(
            "/api/v1/vms",
            json!({"name": "twice", "image": "local-raw", "server_type": "small", "storage": 1}),
        )
        .await;
    assert_eq!(again.status, 409);
    assert_eq!(again.error().0, "already_exists");
    // The same name in another namespace is another VM.
    let other = api
        .post("/api/v1/vms", json!({"name": "twice", "namespace": "team-b", "image": "local-raw", "server_type": "small", "storage": 1}))
        .await;
    assert_eq!(other.status, 201, "{}", other.json());
    assert_eq!(other.json()["id"], "team-b.twice");
    api.settled(first["id"].as_str().expect("an id")).await;
    api.settled("team-b.twice").await;

    // Unauthenticated on loopback: a request for another host name (a page
    // that rebound its name to 127.0.0.1) is refused.
    let rebound = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&api.address).expect("connect");
        stream
            .write_all(
                b"GET /api/v1/vms HTTP/1.1\r\nHost: evil.example:8080\r\nConnection: close\r\n\r\n",
            )
            .expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        answer
    };
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    assert!(rebound.contains(r#""kind":"forbidden""#), "{rebound}");

    let not_json = request(
        &api.address,
        "POST",
        "/api/v1/vms",
        Some(b"{}"),
        Some("text/plain"),
    )
    .await;
    assert_eq!(not_json.status, 415);
    assert_eq!(not_json.error().0, "unsupported_media_type");
    let big = vec![b' '; 100 << 10];
    let too_big = request(
        &api.address,
        "POST",
        "/api/v1/vms",
        Some(&big),
        Some("application/json"),
    )
    .await;
    assert_eq!(too_big.status, 413);
    assert_eq!(too_big.error().0, "payload_too_large");
    let broken = request(
        &api.address,
        "POST",
        "/api/v1/vms",
        Some(b"{\"name\":"),
        Some("application/json"),
    )
    .await;
    assert_eq!(broken.status, 400);
    for (method, path, status) in [
        ("GET", "/api/v1/vms/default.nope", 404),
        ("GET", "/api/v1/vms/no-dot", 404),
        ("GET", "/api/v1/nothing", 404),
        ("PUT", "/api/v1/vms", 405),
        ("DELETE", "/api/v1/pools/status", 405),
    ] {
        let answer = request(&api.address, method, path, None, None).await;
        assert_eq!(answer.status, status, "{method} {path}");
        answer.error();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_describes_the_api_from_its_types() {
    let Some(api) = Api::start("openapi").await else {
        return;
    };
    let doc = api.get("/api/v1/openapi.json").await;
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{doc}"
    );
    assert_eq!(
        keys(&doc["paths"]),
        [
            "/api/v1/pools/health",
            "/api/v1/pools/status",
            "/api/v1/vms",
            "/api/v1/vms/{vm_id}",
            "/api/v1/vms/{vm_id}/resize"
        ]
    );
    let create = &doc["components"]["schemas"]["CreateVm"];
    assert_eq!(
        keys(&create["properties"]),
        [
            "cpu",
            "image",
            "memory",
            "name",
            "namespace",
            "server_type",
            "storage"
        ]
    );
    assert_eq!(create["required"], json!(["name", "image", "storage"]));
    assert_eq!(
        keys(&doc["components"]["schemas"]["PoolStatus"]["properties"]),
        [
            "available_capacity_gb",
            "servers",
            "total_capacity_gb",
            "usage_percentage",
            "used_capacity_gb"
        ]
    );
    let responses = keys(&doc["paths"]["/api/v1/vms"]["post"]["responses"]);
    for status in ["201", "400", "409", "413", "415", "507"] {
        assert!(responses.contains(&status), "{status}: {responses:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_all_in_one_outside_the_vm_pool_says_how_to_serve_vms() {
    let Some(api) = Api::start_in("vm-k8s-pool", "k8s").await else {
        return;
    };
    let answer = api
        .post(
            "/api/v1/vms",
            json!({"name": "a", "image": "local-raw", "server_type": "small", "storage": 1}),
        )
        .await;
    assert_eq!(answer.status, 409);
    let (kind, message) = answer.error();
    assert_eq!(kind, "failed_precondition");
    assert!(
        message.contains("this all-in-one serves the k8s pool: start it with --pool vm"),
        "{message}"
    );
    assert_eq!(api.get("/api/v1/vms").await.json(), json!({"vms": []}));
    assert!(api.driver.list().await.is_empty());
}
