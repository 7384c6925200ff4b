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
