//! `vdrive sign`: sign drives for shared use, and `vdrive sign show`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::outcome::{Answer, Failure};
use super::output::OutputArgs;
use crate::drive::DriveType;
use crate::node::discovery::{DriveFacts, Machine, TypeGuess, human_bytes};
use crate::node::drives::{self, DiskReport, DiskState};
use crate::node::sweep_report::SweepReport;

#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SignArgs {
    #[command(subcommand)]
    pub command: Option<SignCommand>,
    /// A whole drive to sign (repeatable).
    #[arg(long, value_name = "PATH")]
    pub device: Vec<PathBuf>,
    /// Sign every drive that nothing uses: never the root disk, a partitioned or
    /// mounted disk, a disk with devices on it, or a drive already signed.
    #[arg(long, conflicts_with = "device")]
    pub all_not_root: bool,
    /// The drives' flash type.
    #[arg(long = "type", value_name = "tlc|qlc")]
    pub drive_type: Option<DriveType>,
    /// Also sign drives that hold a filesystem or a damaged signature, and, named
    /// with --device, a partition table or an older vdrive signature (their data
    /// is lost). Never signs the root disk or a drive in use.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SignCommand {
    /// List the signed drives of this machine with their hardware facts.
    Show {
        #[command(flatten)]
        output: OutputArgs,
        /// Also list the disks that are not signed, and why each is left alone.
        #[arg(long)]
        all: bool,
    },
}

/// Runs the command: `show` answers with the drives, signing with what it did.
/// A drive that could not be signed (refused: in use, holding data, already
/// signed; or failed) is a definite no, exit 1, with the whole report on
/// stdout: the drives that were signed are still signed.
pub fn run(args: SignArgs) -> Result<Answer, Failure> {
    if let Some(SignCommand::Show { all, .. }) = args.command {
        return Ok(show(all)?);
    }
    let drive_type = args.drive_type.ok_or_else(|| {
        Failure::usage("--type tlc|qlc is required: vdrive allocates each type separately")
    })?;
    let (text, all_signed) = if args.all_not_root {
        let results = drives::sign_all_not_root(drive_type, args.force)
            .map_err(|e| format!("cannot tell which drives are in use: {e}"))?;
        // Sweeping a machine meets drives that must be left alone: those are
        // skipped, and only a drive that could not be signed for another
        // reason fails.
        let report = SweepReport::of(results);
        (report.lines().join("\n"), !report.is_failure())
    } else if args.device.is_empty() {
        return Err(Failure::usage(
            "name the drives with --device PATH (repeatable), or use --all-not-root",
        ));
    } else {
        sign_named(&args.device, drive_type, args.force)
    };
    Ok(if all_signed {
        Answer::yes(text)
    } else {
        Answer::no(text).with_note("vdrive: some drives were not signed (see each line)")
    })
}

/// Signs the drives named with `--device`: each one is asked for, so any
/// refusal (already signed, holding data without --force) is a failure.
/// The report, and whether every drive was signed.
fn sign_named(devices: &[PathBuf], drive_type: DriveType, force: bool) -> (String, bool) {
    let mut out = Vec::new();
    let mut all_signed = true;
    for path in devices {
        match drives::sign(path, drive_type, force) {
            Ok(drive) => out.push(format!(
                "signed {} as {} ({} GiB, uuid {})",
                path.display(),
                drive.signature.drive_type.label(),
                drive.signature.capacity_gib(),
                drive.signature.uuid
            )),
            Err(err) => {
                all_signed = false;
                out.push(format!("not signed {}: {err}", path.display()));
            }
        }
    }
    (out.join("\n"), all_signed)
}

fn show(all: bool) -> Result<Answer, String> {
    let machine =
        Machine::read().map_err(|e| format!("cannot tell which disks are drives: {e}"))?;
    let reports: Vec<DiskReport> = drives::survey(&machine)
        .into_iter()
        .filter(|r| all || matches!(r.state, DiskState::Signed(_)))
        .collect();
    Ok(Answer::yes(report_table(&reports, all))
        .with_data(Value::Array(reports.iter().map(report_json).collect())))
}

/// The signed drive of a report, if it is one.
fn signed(report: &DiskReport) -> Option<&drives::SignedDrive> {
    match &report.state {
        DiskState::Signed(drive) => Some(drive),
        _ => None,
    }
}

fn status(state: &DiskState) -> &'static str {
    match state {
        DiskState::Signed(_) => "signed",
        DiskState::Unsigned { .. } => "unsigned",
        DiskState::Skipped(_) => "skipped",
        DiskState::Unreadable(_) => "unreadable",
        DiskState::Duplicate { .. } => "duplicate",
    }
}

/// Why a disk is not (or, unsigned, could not become) a drive, one line each.
fn reasons(state: &DiskState) -> Vec<String> {
    match state {
        DiskState::Signed(_) => Vec::new(),
        DiskState::Unsigned { in_use: reasons } | DiskState::Skipped(reasons) => {
            reasons.iter().map(|r| r.to_string()).collect()
        }
        DiskState::Unreadable(err) => vec![err.to_string()],
        DiskState::Duplicate { uuid, first } => vec![format!(
            "the same drive (vdrive {uuid}) as {}",
            first.display()
        )],
    }
}

fn serial_of(report: &DiskReport) -> String {
    match signed(report) {
        Some(drive) => drive.serial.clone(),
        None => report
            .facts
            .serial
            .clone()
            .unwrap_or_else(|| report.facts.name.clone()),
    }
}

fn guess_json(guess: Option<TypeGuess>) -> Value {
    match guess {
        Some(g) => json!({
            "value": g.value,
            "basis": g.basis,
            "confidence": g.confidence.as_str(),
        }),
        None => Value::Null,
    }
}

fn hardware_json(f: &DriveFacts) -> Value {
    json!({
        "kind": f.kind.as_str(),
        "rotational": f.rotational,
        "logical_block_bytes": f.logical_block_bytes,
        "physical_block_bytes": f.physical_block_bytes,
        "optimal_io_bytes": f.optimal_io_bytes,
        "discard": f.discard,
        "write_zeroes": f.write_zeroes,
    })
}

/// One drive in `vdrive sign show --json`. The first six fields are the ones
/// this command always printed (null for a disk that is not signed); the rest
/// were added after them.
fn report_json(report: &DiskReport) -> Value {
    let f = &report.facts;
    let drive = signed(report);
    json!({
        "uuid": drive.map(|d| d.signature.uuid),
        "path": f.path,
        "serial": serial_of(report),
        "type": drive.map(|d| d.signature.drive_type),
        "size_bytes": drive.map(|d| d.signature.size_bytes),
        "capacity_gib": drive.map(|d| d.signature.capacity_gib()),
        "model": f.model,
        "device_size_bytes": f.size_bytes,
        "type_guess": guess_json(f.type_guess()),
        "status": status(&report.state),
        "reasons": reasons(&report.state),
        "hardware": hardware_json(f),
    })
}

fn report_table(reports: &[DiskReport], all: bool) -> String {
    if reports.is_empty() {
        return if all {
            "no disk on this machine may be a drive".into()
        } else {
            "no signed drives".into()
        };
    }
    let mut header = vec![
        "PATH", "TYPE", "CAPACITY", "UUID", "SERIAL", "MODEL", "SIZE", "HW-GUESS",
    ];
    if all {
        header.push("STATUS");
    }
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    let mut notes = Vec::new();
    for report in reports {
        let f = &report.facts;
        let drive = signed(report);
        let guess = f.type_guess();
        let dash = || "-".to_string();
        let mut row = vec![
            f.path.display().to_string(),
            drive.map_or_else(dash, |d| d.signature.drive_type.label().to_string()),
            drive.map_or_else(dash, |d| format!("{} GiB", d.signature.capacity_gib())),
            drive.map_or_else(dash, |d| d.signature.uuid.to_string()),
            serial_of(report),
            f.model.clone().unwrap_or_else(dash),
            human_bytes(f.size_bytes),
            guess
                .as_ref()
                .map_or_else(dash, |g| format!("{} ({})", g.value, g.confidence.as_str())),
        ];
        if all {
            let why = reasons(&report.state);
            row.push(if why.is_empty() {
                status(&report.state).to_string()
            } else {
                format!("{}: {}", status(&report.state), why.join("; "))
            });
        }
        rows.push(row);
        if let Some(g) = guess {
            let differs = drive
                .filter(|d| d.signature.drive_type.as_str() != g.value)
                .map(|d| {
                    format!(
                        "; differs from the signed type {}",
                        d.signature.drive_type.label()
                    )
                })
                .unwrap_or_default();
            notes.push(format!(
                "  {}: {}, {} evidence: {}{differs}",
                f.path.display(),
                g.value,
                g.confidence.as_str(),
                g.basis
            ));
        }
    }
    let mut out = align(&rows);
    if !notes.is_empty() {
        out.push_str(
            "\nHW-GUESS is only a guess from hardware facts; vdrive allocates by TYPE, \
             chosen at signing:\n",
        );
        out.push_str(&notes.join("\n"));
    }
    out
}

/// Rows as columns two spaces apart; the last column is not padded.
fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
                }
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {

    use super::*;

    fn fake_reports(all: bool) -> (crate::node::discovery::fake::FakeMachine, Vec<DiskReport>) {
        let fake = crate::node::discovery::fake::signed_server();
        let reports = drives::survey(&fake.machine())
            .into_iter()
            .filter(|r| all || matches!(r.state, DiskState::Signed(_)))
            .collect();
        (fake, reports)
    }

    #[test]
    fn show_keeps_its_json_fields_and_adds_the_hardware() {
        let (_fake, reports) = fake_reports(false);
        let list: Vec<Value> = reports.iter().map(report_json).collect();
        assert_eq!(list.len(), 2, "{list:?}");
        let tlc = list
            .iter()
            .find(|d| d["path"].as_str().unwrap().ends_with("/nvme0n1"))
            .unwrap();
        let keys: Vec<&str> = tlc
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            keys[..6],
            [
                "uuid",
                "path",
                "serial",
                "type",
                "size_bytes",
                "capacity_gib"
            ],
            "the fields `sign show --json` always had come first, unchanged"
        );
        assert_eq!(tlc["type"], "tlc");
        assert_eq!(tlc["capacity_gib"], 2);
        assert_eq!(tlc["serial"], "BTNH0001");
        assert_eq!(tlc["model"], "INTEL SSDPEKNW020T8");
        assert_eq!(tlc["device_size_bytes"], 3907029168u64 * 512);
        assert_eq!(tlc["status"], "signed");
        assert_eq!(tlc["type_guess"]["value"], "qlc");
        assert_eq!(tlc["type_guess"]["confidence"], "weak");
        assert!(
            tlc["type_guess"]["basis"]
                .as_str()
                .unwrap()
                .contains("model name")
        );
        assert_eq!(tlc["hardware"]["kind"], "nvme");
        assert_eq!(tlc["hardware"]["rotational"], false);
        assert_eq!(tlc["hardware"]["physical_block_bytes"], 4096);
        assert_eq!(tlc["hardware"]["discard"], true);

        let sim = list.iter().find(|d| d["type"] == "qlc").unwrap();
        assert_eq!(
            sim["type_guess"],
            Value::Null,
            "a loop device gives no basis"
        );
        assert_eq!(sim["model"], Value::Null);
    }

    #[test]
    fn show_all_lists_unsigned_disks_with_their_reasons() {
        let (_fake, reports) = fake_reports(true);
        let list: Vec<Value> = reports.iter().map(report_json).collect();
        let by_name = |name: &str| {
            list.iter()
                .find(|d| d["path"].as_str().unwrap().ends_with(&format!("/{name}")))
                .unwrap_or_else(|| panic!("{name}"))
        };
        let root = by_name("sda");
        assert_eq!(root["status"], "skipped");
        assert_eq!(root["uuid"], Value::Null);
        assert_eq!(root["type"], Value::Null);
        assert_eq!(root["reasons"][0], "it holds the root filesystem");
        assert_eq!(by_name("nvme1n1")["status"], "unsigned");
        assert_eq!(by_name("nvme1n1")["reasons"], json!([]));
        assert_eq!(by_name("sde")["type_guess"]["value"], "hdd");
        assert_eq!(by_name("vda")["status"], "duplicate");
        assert_eq!(by_name("sdg")["status"], "unsigned");
        assert_eq!(
            by_name("sdg")["reasons"][1],
            "dm-1 is stacked on sdg",
            "unsigned and in use: a sweep leaves it alone"
        );
    }

    #[test]
    fn the_table_labels_the_guess_as_a_guess() {
        let (_fake, reports) = fake_reports(false);
        let table = report_table(&reports, false);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("PATH")
                && lines[0].contains("SERIAL")
                && lines[0].contains("MODEL")
                && lines[0].contains("SIZE")
                && lines[0].ends_with("HW-GUESS"),
            "{table}"
        );
        let nvme = lines.iter().find(|l| l.contains("/nvme0n1")).unwrap();
        assert!(
            nvme.contains("TLC") && nvme.contains("2 GiB") && nvme.contains("qlc (weak)"),
            "{nvme}"
        );
        assert!(table.contains("only a guess"), "{table}");
        assert!(
            table.contains("differs from the signed type TLC"),
            "{table}"
        );
        let all = report_table(&fake_reports(true).1, true);
        assert!(all.lines().next().unwrap().ends_with("STATUS"), "{all}");
        let empty = all.lines().find(|l| l.contains("/sdf")).unwrap();
        assert!(
            empty.ends_with("skipped: it reports size 0 (no medium)"),
            "{empty}"
        );
        assert_eq!(report_table(&[], false), "no signed drives");
    }

    #[test]
    fn columns_line_up() {
        let rows = vec![
            vec!["A".to_string(), "BB".into(), "C".into()],
            vec!["AAA".to_string(), "B".into(), "CCCC".into()],
        ];
        assert_eq!(align(&rows), "A    BB  C\nAAA  B   CCCC");
    }
}
