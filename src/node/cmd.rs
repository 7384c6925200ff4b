//! Running the util-linux, e2fsprogs, xfsprogs and qemu-utils tools: stderr goes into the error.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use super::NodeError;

/// The package that ships `program`, for the "install it" hint.
fn package(program: &str) -> &'static str {
    match program {
        "mkfs.ext4" | "resize2fs" | "e2fsck" => "e2fsprogs",
        "mkfs.xfs" | "xfs_growfs" => "xfsprogs",
        "qemu-img" => "qemu-utils",
        _ => "util-linux",
    }
}

/// The command line as a person would type it, for messages.
pub(crate) fn display<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let mut line = program.to_string();
    for arg in args {
        line.push(' ');
        line.push_str(&arg.as_ref().to_string_lossy());
    }
    line
}

/// Runs `program` and returns its output whatever the exit status.
///
/// The tool dies with vdrive: a tool that outlived a killed vdrive (an mkfs, a
/// mount) would race the retry of its call after the restart, two mkfs on one
/// device. What a tool killed midway leaves is for the caller's intent record
/// to clean up, as after a power cut.
pub(crate) fn output<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<Output, NodeError> {
    let mut command = Command::new(program);
    command.args(args);
    let parent = std::process::id();
    // SAFETY: between fork and exec the closure makes two system calls and
    // allocates nothing, as pre_exec requires.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // vdrive died before the prctl took effect: do not run orphaned.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    command.output().map_err(|source| NodeError::ToolMissing {
        program: program.to_string(),
        package: package(program),
        source,
    })
}

/// The error for a command that exited unsuccessfully.
pub(crate) fn failed<S: AsRef<OsStr>>(program: &str, args: &[S], out: &Output) -> NodeError {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    NodeError::Command {
        command: display(program, args),
        status: out.status.to_string(),
        // Some tools (mkfs.xfs) explain themselves on stdout.
        stderr: if stderr.is_empty() { stdout } else { stderr },
    }
}

/// Runs `program`, requires success, and returns its stdout.
pub(crate) fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String, NodeError> {
    let out = output(program, args)?;
    if !out.status.success() {
        return Err(failed(program, args, &out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use super::*;

    /// Set in the child test process that [`a_tool_dies_with_vdrive`] starts.
    const CHILD_ENV: &str = "VDRIVE_CMD_TEST_CHILD";

    /// Runs in a process of its own (see below): starts a long tool and waits.
    #[test]
    fn long_tool_of_a_child_process() {
        let Ok(marker) = std::env::var(CHILD_ENV) else {
            return; // only as the child of the test below
        };
        let _ = output("sleep", &[marker.as_str()]);
    }

    /// The processes whose command line is exactly `sleep MARKER`.
    fn sleepers(marker: &str) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline"))
                    .is_ok_and(|c| c == format!("sleep\0{marker}\0").as_bytes())
            })
            .collect()
    }

    #[test]
    fn a_tool_dies_with_vdrive() {
        // A sleep no other test runs: seconds with a unique fraction.
        let marker = format!("600.{}", std::process::id());
        let exe = std::env::current_exe().expect("the test binary");
        let mut child = Command::new(exe)
            .args(["--exact", "node::cmd::tests::long_tool_of_a_child_process"])
            .env(CHILD_ENV, &marker)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the child test");
        let deadline = Instant::now() + Duration::from_secs(30);
        while sleepers(&marker).is_empty() {
            assert!(
                Instant::now() < deadline,
                "the child never started its tool"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The driver is killed mid-call: its tool must not outlive it.
        child.kill().expect("SIGKILL the child");
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sleepers(&marker).is_empty() {
            assert!(
                Instant::now() < deadline,
                "the tool outlived its killed parent: {:?}",
                sleepers(&marker)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
