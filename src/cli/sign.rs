//! `vdrive sign`: sign drives for shared use, and `vdrive sign show`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use crate::drive::DriveType;
use crate::node::NodeError;
use crate::node::drives;

#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SignArgs {
    #[command(subcommand)]
    pub command: Option<SignCommand>,
    /// A whole drive to sign (repeatable).
    #[arg(long, value_name = "PATH")]
    pub device: Vec<PathBuf>,
    /// Sign every drive that is not the root disk and is unused.
    #[arg(long, conflicts_with = "device")]
    pub all_not_root: bool,
    /// The drives' flash type.
    #[arg(long = "type", value_name = "tlc|qlc")]
    pub drive_type: Option<DriveType>,
    /// Also sign drives that hold a partition table, a filesystem or an older
    /// signature (their data is lost). Never signs the root disk or a mounted one.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SignCommand {
    /// List the signed drives of this machine.
    Show {
        #[arg(long)]
        json: bool,
    },
}

/// Runs the command; Err carries what to print on failure.
pub fn run(args: SignArgs) -> Result<String, String> {
    if let Some(SignCommand::Show { json }) = args.command {
        return Ok(show(json));
    }
    let drive_type = args
        .drive_type
        .ok_or("--type tlc|qlc is required: vdrive allocates each type separately")?;
    let results = if args.all_not_root {
        drives::sign_all_not_root(drive_type, args.force)
    } else if args.device.is_empty() {
        return Err(
            "name the drives with --device PATH (repeatable), or use --all-not-root".into(),
        );
    } else {
        args.device
            .iter()
            .map(|path| (path.clone(), drives::sign(path, drive_type, args.force)))
            .collect()
    };
    let mut out = Vec::new();
    let mut failed = false;
    for (path, result) in results {
        match result {
            Ok(drive) => out.push(format!(
                "signed {} as {} ({} GiB, uuid {})",
                path.display(),
                drive.signature.drive_type.label(),
                drive.signature.capacity_gib(),
                drive.signature.uuid
            )),
            // Sweeping a machine (the chart's sign-drives Job, run again on every
            // install) meets drives that must be left alone: those are skipped,
            // and only a drive that could not be signed for another reason fails.
            Err(err) if args.all_not_root && is_left_alone(&err) => {
                out.push(format!("skipped {}: {err}", path.display()));
            }
            Err(err) => {
                failed = true;
                out.push(format!("not signed {}: {err}", path.display()));
            }
        }
    }
    if out.is_empty() {
        out.push(
            "no drive to sign: every drive is the root disk, in use, or already signed".into(),
        );
    }
    let text = out.join("\n");
    if failed { Err(text) } else { Ok(text) }
}

/// Drives a sweep must not touch: the root disk, partitions, drives in use or
/// mounted, drives holding data (without --force), drives already signed.
fn is_left_alone(err: &NodeError) -> bool {
    matches!(
        err,
        NodeError::RootDisk { .. }
            | NodeError::NotWholeDisk { .. }
            | NodeError::Mounted { .. }
            | NodeError::InUse { .. }
            | NodeError::HasData { .. }
            | NodeError::AlreadySigned { .. }
    )
}

fn show(as_json: bool) -> String {
    let found = drives::discover(&drives::candidates());
    if as_json {
        let list: Vec<_> = found
            .iter()
            .map(|d| {
                json!({
                    "uuid": d.signature.uuid,
                    "path": d.path,
                    "serial": d.serial,
                    "type": d.signature.drive_type,
                    "size_bytes": d.signature.size_bytes,
                    "capacity_gib": d.signature.capacity_gib(),
                })
            })
            .collect();
        return serde_json::Value::Array(list).to_string();
    }
    if found.is_empty() {
        return "no signed drives".into();
    }
    found
        .iter()
        .map(|d| {
            format!(
                "{}  {}  {:>6} GiB  {}  serial {}",
                d.path.display(),
                d.signature.drive_type.label(),
                d.signature.capacity_gib(),
                d.signature.uuid,
                d.serial
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn a_sweep_skips_drives_it_must_not_touch_and_fails_on_the_rest() {
        let device = PathBuf::from("/dev/sdz");
        assert!(is_left_alone(&NodeError::RootDisk {
            device: device.clone()
        }));
        assert!(is_left_alone(&NodeError::AlreadySigned {
            device: device.clone(),
            uuid: uuid::Uuid::nil(),
        }));
        assert!(!is_left_alone(&NodeError::NotBlockDevice { path: device }));
    }
}
