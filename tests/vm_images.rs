//! VM disk images written into raw block volumes at their first staging, end to
//! end: the real `vdrive all-in-one` on simulated drives with
//! `--unsafe-loop-block-volumes`, images made here with qemu-img, served from a
//! file or by a small HTTP server on 127.0.0.1, and read back byte for byte
//! from the block device the volume is published as.
//!
//! Needs root, /dev/loop-control and qemu-img; without them every test is
//! skipped (with a message). The `Driver` fixture removes everything it made,
//! the image files with its temp dir; the server's thread stops with its value.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tonic::Code;

mod support;

use support::devices::volume_devices;
use support::driver::*;

const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_raw_image_from_a_file_is_written_once_and_never_again() {
    let Some(driver) = start("raw").await else {
        return;
    };
    // Not a whole number of MiB: the last chunk is a partial one.
    let len = 40 * MIB + 1234;
    let raw = make_raw(&driver.dir.join("disk.img"), len);
    let params = image_params(&raw, None);
    let cap = raw_block();
    let volume = driver
        .create_with("vm-raw", 1, cap.clone(), params.clone())
        .await
        .unwrap();
    assert_eq!(
        volume.volume_context.get("vdrive.io/image"),
        Some(&path_str(&raw))
    );
    assert_eq!(volume.volume_context.get("vdrive.io/image-format"), None);
    let id = volume.volume_id.clone();

    let staging = driver.stage(&volume, &cap).await.unwrap();
    let target = driver.publish(&volume, &cap).await.unwrap();
    assert_device_holds(&target, &raw);

    // The VM writes into its disk, in the first MiB and past it.
    let device = fs::OpenOptions::new().write(true).open(&target).unwrap();
    device.write_all_at(b"written by the vm", 100).unwrap();
    device.write_all_at(b"more vm data", 3 * MIB).unwrap();
    device.sync_all().unwrap();
    drop(device);
    // Staged again while staged, and after unstaging: never imported again.
    driver.stage(&volume, &cap).await.unwrap();
    driver.unpublish(&id, &target).await.unwrap();
    driver.unstage(&id, &staging).await.unwrap();
    let staging = driver.stage(&volume, &cap).await.unwrap();
    let target = driver.publish(&volume, &cap).await.unwrap();
    assert_eq!(read_at(&target, 100, 17), b"written by the vm");
    assert_eq!(read_at(&target, 3 * MIB, 12), b"more vm data");
    let image = fs::read(&raw).unwrap();
    assert_eq!(
        read_at(&target, 5 * MIB, 4096),
        image[5 * MIB as usize..5 * MIB as usize + 4096],
        "the rest of the image is still there"
    );

    // CreateVolume again: the same image is the same volume, another is not.
    let again = driver
        .create_with("vm-raw", 1, cap.clone(), params)
        .await
        .unwrap();
    assert_eq!(again.volume_id, id);
    let other = make_raw(&driver.dir.join("other.img"), 2 * MIB);
    let status = assert_code(
        driver
            .create_with("vm-raw", 1, cap.clone(), image_params(&other, None))
            .await,
        Code::AlreadyExists,
    );
    assert!(status.message().contains("other.img"), "{status:?}");
    let status = assert_code(
        driver
            .create_with("vm-raw", 1, cap.clone(), image_params(&raw, Some("raw")))
            .await,
        Code::AlreadyExists,
    );
    assert!(status.message().contains("(raw)"), "{status:?}");

    driver.unpublish(&id, &target).await.unwrap();
    driver.unstage(&id, &staging).await.unwrap();
    driver.delete(&id).await.unwrap();
    assert_scratch_is_empty(&driver);
}

#[tokio::test(flavor = "multi_thread")]
async fn qcow2_images_from_a_file_and_over_http_are_converted_and_written() {
    let Some(driver) = start("qcow2").await else {
        return;
    };
    // A sparse 1 GiB disk: its virtual size is exactly the volume's.
    let raw = make_raw(&driver.dir.join("source.img"), 1 << 30);
    let qcow2 = driver.dir.join("disk.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "--",
            &path_str(&raw),
            &path_str(&qcow2),
        ],
    );
    let server = ImageServer::serve(&qcow2);
    let cap = raw_block();
    let sources = [
        ("vm-qcow2-file", image_params(&qcow2, Some("qcow2"))),
        // The format detected from the download.
        ("vm-qcow2-http", url_params(&server.url("disk.qcow2"), None)),
    ];
    for (name, params) in sources {
        let volume = driver
            .create_with(name, 1, cap.clone(), params)
            .await
            .unwrap();
        let started = Instant::now();
        let staging = driver.stage(&volume, &cap).await.unwrap();
        eprintln!(
            "{name}: staged a 1 GiB sparse qcow2 in {:?}",
            started.elapsed()
        );
        let target = driver.publish(&volume, &cap).await.unwrap();
        assert_device_holds(&target, &raw);
        driver.unpublish(&volume.volume_id, &target).await.unwrap();
        driver.unstage(&volume.volume_id, &staging).await.unwrap();
        driver.delete(&volume.volume_id).await.unwrap();
    }
    assert!(server.requests() >= 1, "the image was downloaded");
    assert_scratch_is_empty(&driver);
}

#[tokio::test(flavor = "multi_thread")]
async fn images_that_cannot_be_written_fail_the_stage_and_leave_nothing_behind() {
    let Some(driver) = start("bad-images").await else {
        return;
    };
    let dir = &driver.dir;
    let too_large = make_raw(&dir.join("large.img"), (1 << 30) + MIB);
    let too_large_qcow2 = dir.join("large.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "--",
            &path_str(&too_large_qcow2),
            "3G",
        ],
    );
    let zero_head = dir.join("zero-head.img");
    let file = File::create(&zero_head).unwrap();
    file.set_len(8 * MIB).unwrap();
    file.write_all_at(b"data past the first MiB", 2 * MIB)
        .unwrap();
    let server = ImageServer::serve(&too_large);
    let missing_url = server.url("missing.qcow2");
    let cases: Vec<BadImage> = vec![
        (
            "raw-too-large",
            image_params(&too_large, None),
            Code::FailedPrecondition,
            vec![
                ((1u64 << 30) + MIB).to_string(),
                (1u64 << 30).to_string(),
                "at least 2 GiB".into(),
            ],
        ),
        (
            "qcow2-too-large",
            image_params(&too_large_qcow2, None),
            Code::FailedPrecondition,
            vec![
                (3u64 << 30).to_string(),
                "virtual size".into(),
                "at least 3 GiB".into(),
            ],
        ),
        (
            "raw-too-large-over-http",
            url_params(&server.url("large.img"), Some("raw")),
            Code::FailedPrecondition,
            vec!["download stopped".into(), "at least 2 GiB".into()],
        ),
        (
            "not-found",
            url_params(&missing_url, Some("qcow2")),
            Code::FailedPrecondition,
            vec![missing_url.clone(), "404".into()],
        ),
        (
            "zero-head",
            image_params(&zero_head, None),
            Code::InvalidArgument,
            vec!["first MiB".into(), "blank disk".into()],
        ),
        (
            "missing-file",
            image_params(&dir.join("nowhere.img"), None),
            Code::FailedPrecondition,
            vec!["nowhere.img".into()],
        ),
    ];
    let cap = raw_block();
    for (name, params, code, says) in cases {
        let volume = driver
            .create_with(&format!("vm-{name}"), 1, cap.clone(), params)
            .await
            .unwrap();
        let before = volume_devices(dir);
        let status = assert_code(driver.stage(&volume, &cap).await, code);
        for words in says {
            assert!(
                status.message().contains(&words),
                "{name}: {words:?} not in {status:?}"
            );
        }
        assert_eq!(
            volume_devices(dir),
            before,
            "{name}: the device built by the failed stage was taken down"
        );
        assert_scratch_is_empty(&driver);
        // Nothing staged: unstage finds nothing, and the volume can go.
        let staging = driver.staging_path(&volume.volume_id);
        driver.unstage(&volume.volume_id, &staging).await.unwrap();
        driver.delete(&volume.volume_id).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn create_volume_refuses_images_it_could_not_write() {
    let Some(driver) = start("image-params").await else {
        return;
    };
    let image = make_raw(&driver.dir.join("disk.img"), 2 * MIB);
    let status = assert_code(
        driver
            .create_with("vm-mount", 1, ext4(), image_params(&image, None))
            .await,
        Code::InvalidArgument,
    );
    assert!(
        status
            .message()
            .contains("an image is written only into block volumes"),
        "{status:?}"
    );
    // A volume with an image staged as a filesystem: refused before anything is built.
    let volume = driver
        .create_with("vm-block", 1, raw_block(), image_params(&image, None))
        .await
        .unwrap();
    let status = assert_code(driver.stage(&volume, &ext4()).await, Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("stage it with a block capability"),
        "{status:?}"
    );
    assert!(volume_devices(&driver.dir).is_empty());
    driver.delete(&volume.volume_id).await.unwrap();
    let status = assert_code(
        driver
            .create_with(
                "vm-vmdk",
                1,
                raw_block(),
                image_params(&image, Some("vmdk")),
            )
            .await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("raw or qcow2"), "{status:?}");
    let mut format_only = support::driver::k8s_params();
    format_only.insert("imageFormat".into(), "raw".into());
    assert_code(
        driver
            .create_with("vm-format-only", 1, raw_block(), format_only)
            .await,
        Code::InvalidArgument,
    );
    for bad in ["disk.img", "/var/../disk.img", "ftp://127.0.0.1/disk.img"] {
        let mut params = support::driver::k8s_params();
        params.insert("image".into(), bad.into());
        let status = assert_code(
            driver.create_with("vm-bad", 1, raw_block(), params).await,
            Code::InvalidArgument,
        );
        assert!(status.message().contains("image="), "{bad}: {status:?}");
    }
    assert!(driver.list().await.is_empty(), "nothing was created");
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A volume name, its class parameters, and the code and words its stage fails with.
type BadImage = (&'static str, HashMap<String, String>, Code, Vec<String>);

async fn start(name: &str) -> Option<Driver> {
    if std::process::Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: needs qemu-img (qemu-utils)");
        return None;
    }
    Driver::start(name, SMALL_DRIVES).await
}

fn image_params(image: &Path, format: Option<&str>) -> HashMap<String, String> {
    url_params(&path_str(image), format)
}

fn url_params(image: &str, format: Option<&str>) -> HashMap<String, String> {
    let mut params = k8s_params();
    params.insert("image".into(), image.into());
    if let Some(format) = format {
        params.insert("imageFormat".into(), format.into());
    }
    params
}

/// A sparse raw image of `len` bytes with recognisable data in its first MiB
/// (a boot sector, and more further in), just past it, in the middle and at
/// its very end.
fn make_raw(path: &Path, len: u64) -> PathBuf {
    let file = File::create(path).unwrap();
    file.set_len(len).unwrap();
    let mut offsets = vec![0, 300 << 10, MIB, MIB + 4096, len / 2, len - 4096];
    offsets.retain(|&at| at + 4096 <= len);
    for at in offsets {
        let block: Vec<u8> = (0..4096u64)
            .map(|i| ((at / 4096 + i) % 251 + 1) as u8)
            .collect();
        file.write_all_at(&block, at).unwrap();
    }
    file.sync_all().unwrap();
    path.to_path_buf()
}

fn read_at(device: &Path, at: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    File::open(device)
        .unwrap()
        .read_exact_at(&mut buf, at)
        .unwrap();
    buf
}

/// The device reads back the whole image exactly, then zeros for a while.
fn assert_device_holds(device: &Path, image: &Path) {
    let mut expected = File::open(image).unwrap();
    let mut actual = File::open(device).unwrap();
    let len = expected.metadata().unwrap().len();
    let mut want = vec![0u8; MIB as usize];
    let mut got = vec![0u8; MIB as usize];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(MIB) as usize;
        expected.read_exact(&mut want[..n]).unwrap();
        actual.read_exact(&mut got[..n]).unwrap();
        assert!(
            want[..n] == got[..n],
            "{} differs from {} in the MiB at {at}",
            device.display(),
            image.display()
        );
        at += n as u64;
    }
    let device_len = block_size_bytes(device) as u64;
    let after = (device_len - len).min(MIB) as usize;
    actual.read_exact(&mut got[..after]).unwrap();
    assert!(
        got[..after].iter().all(|&b| b == 0),
        "zeros follow the image"
    );
}

/// Images being downloaded or converted live there only while a stage runs.
fn assert_scratch_is_empty(driver: &Driver) {
    let scratch = driver.state_dir().join("node").join("images");
    let left: Vec<_> = fs::read_dir(&scratch)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "temporary image files left: {left:?}");
}

/// An HTTP server on 127.0.0.1 that serves one file at `/<its name>` and 404
/// for anything else, one connection at a time, until it is dropped.
struct ImageServer {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    served: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl ImageServer {
    fn serve(file: &Path) -> ImageServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let name = format!("/{}", file.file_name().unwrap().to_string_lossy());
        let file = file.to_path_buf();
        let thread = {
            let (stop, served) = (stop.clone(), served.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            served.fetch_add(1, Ordering::Relaxed);
                            // A client that went away is its own business.
                            let _ = answer(stream, &name, &file);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        ImageServer {
            addr,
            stop,
            served,
            thread: Some(thread),
        }
    }

    fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }

    fn requests(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer(stream: TcpStream, name: &str, file: &Path) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // The headers, up to the empty line.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let mut stream = stream;
    if path != name {
        let body = b"not found\n";
        write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        return stream.write_all(body);
    }
    let mut source = File::open(file)?;
    let len = source.metadata()?.len();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )?;
    std::io::copy(&mut source, &mut stream)?;
    stream.flush()
}
