//! Devices and mounts the tests leave behind, found and released by path: every
//! mount under a test's directory, and the loop devices of the simulated drives
//! kept there (and the volume devices built on them).

// Each test crate that says `mod support;` uses a different part of this.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;
use tempfile::TempDir;
use vdrive::node::drives::{self, SignedDrive};
use vdrive::node::loopdev;

/// Unmounts everything under `dir` (deepest first), then detaches the loop devices
/// of the simulated drives in `dir`: first those built on those drives (volume
/// devices), then the drives' own. True when nothing is mounted under `dir` any more.
pub fn release_everything_under(dir: &Path) -> bool {
    for attempt in 0..6 {
        let mut targets: Vec<PathBuf> = mounts_under(dir).into_iter().map(|m| m.target).collect();
        if targets.is_empty() {
            break;
        }
        targets.sort_by_key(|t| std::cmp::Reverse(t.components().count()));
        for target in targets {
            let mut umount = Command::new("umount");
            if attempt >= 4 {
                umount.arg("--lazy");
            }
            let _ = umount.arg(&target).stderr(Stdio::null()).status();
        }
    }
    detach_loops_under(dir);
    mounts_under(dir).is_empty()
}

/// [`release_everything_under`], then removes `dir` if nothing is mounted
/// there any more; says on stderr what could not be done.
pub fn release_and_remove(dir: &Path) {
    if release_everything_under(dir) {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            eprintln!("cleanup: cannot remove {}: {e}", dir.display());
        }
    } else {
        eprintln!(
            "cleanup: something is still mounted under {}; leaving it in place",
            dir.display()
        );
    }
}

/// Detaches the loop devices of the simulated drives in `dir`: first those built
/// on those drives (volume devices), then the drives' own.
pub fn detach_loops_under(dir: &Path) {
    for attempt in 0..10 {
        // Cleanup goes on as far as it can: an unreadable sysfs lists nothing.
        let loops = loopdev::list().unwrap_or_default();
        let drives: Vec<&PathBuf> = loops
            .iter()
            .filter(|l| l.backing.starts_with(dir))
            .map(|l| &l.device)
            .collect();
        let volumes: Vec<&PathBuf> = loops
            .iter()
            .filter(|l| drives.contains(&&l.backing))
            .map(|l| &l.device)
            .collect();
        if drives.is_empty() && volumes.is_empty() {
            break;
        }
        if attempt == 9 {
            eprintln!("cleanup: loop devices still bound: {volumes:?} {drives:?}");
            break;
        }
        for device in volumes.into_iter().chain(drives) {
            let _ = Command::new("losetup")
                .arg("--detach")
                .arg(device)
                .stderr(Stdio::null())
                .status();
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]

pub struct MountPoint {
    pub target: PathBuf,
    pub fs_type: String,
    pub source: String,
}

/// Every mount at or below `dir`, in mount order.
pub fn mounts_under(dir: &Path) -> Vec<MountPoint> {
    vdrive::node::mounts::mountinfo()
        .expect("read /proc/self/mountinfo")
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .map(|m| MountPoint {
            target: m.mount_point,
            fs_type: m.fs_type,
            source: m.source,
        })
        .collect()
}

/// Loop devices of volumes on the simulated drives under `dir`.
pub fn volume_devices(dir: &Path) -> Vec<PathBuf> {
    let all = loopdev::list().expect("list the loop devices");
    let drives: Vec<&PathBuf> = all
        .iter()
        .filter(|l| l.backing.starts_with(dir))
        .map(|l| &l.device)
        .collect();
    all.iter()
        .filter(|l| drives.contains(&&l.backing))
        .map(|l| l.device.clone())
        .collect()
}

/// A directory of simulated drives; drop detaches their loop devices (and any
/// extent devices left on them), then removes the images.
pub struct Sim {
    dir: TempDir,
}

impl Sim {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Err(e) = drives::detach_simulated(self.dir.path()) {
            eprintln!("cleanup: cannot detach simulated drives: {e}");
        }
    }
}

/// Whether this test can attach loop devices (root and /dev/loop-control);
/// says so on stderr when not.
pub fn root() -> bool {
    let ok = nix::unistd::geteuid().is_root() && Path::new("/dev/loop-control").exists();
    if !ok {
        eprintln!("skipped: needs root and /dev/loop-control");
    }
    ok
}

/// Simulated drives of `spec` (e.g. `tlc:1x1`) in a directory of their own;
/// the guard exists before the first loop device does.
pub fn simulate(spec: &str) -> (Sim, Vec<SignedDrive>) {
    let sim = Sim {
        dir: tempfile::tempdir().unwrap(),
    };
    let drives = drives::simulate(sim.path(), spec).unwrap();
    (sim, drives)
}
