//! Running the util-linux, e2fsprogs, xfsprogs and qemu-utils tools: stderr goes into the error.

use std::ffi::OsStr;
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
pub(crate) fn output<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<Output, NodeError> {
    Command::new(program)
        .args(args)
        .output()
        .map_err(|source| NodeError::ToolMissing {
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
