//! `vdrive plan`: the allocator on the command line, for sizing a request before
//! making it and for checking what a node's free space allows.

use std::fmt::Write as _;

use clap::Args;
use serde_json::{Value, json};

use super::outcome::{Answer, Failure};
use super::output::OutputArgs;
use crate::allocator::{
    self, AllocError, DEFAULT_MAX_VIRTUAL_DRIVES_PER_CORE, DEFAULT_MIN_DRIVE_GIB, DEFAULT_RATIO,
    FreeDrive, Plan, Ratio, Request, Shape,
};
use crate::drive::DriveType;

#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// Capacity to allocate, GiB (containerCapacity). Not needed in fixed mode.
    #[arg(long, value_name = "GIB")]
    pub capacity: Option<u64>,
    /// Drive cores (driveCores): the minimum number of virtual drives.
    #[arg(long, value_name = "K")]
    pub cores: u32,
    /// TLC part of the ratio (driveTypesRatio.tlc), with --qlc; default ratio 1:10.
    #[arg(long, value_name = "T", requires = "qlc")]
    pub tlc: Option<u32>,
    /// QLC part of the ratio (driveTypesRatio.qlc), with --tlc.
    #[arg(long, value_name = "Q", requires = "tlc")]
    pub qlc: Option<u32>,
    /// Fixed TLC mode: this many virtual drives (numDrives)...
    #[arg(long, value_name = "N", requires = "drive_capacity")]
    pub num_drives: Option<u32>,
    /// ...of this many GiB each (driveCapacity).
    #[arg(long, value_name = "GIB", requires = "num_drives")]
    pub drive_capacity: Option<u64>,
    /// Per-type minimum drive count (true) or combined (false).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub enforce_per_type: bool,
    /// At most cores × M virtual drives.
    #[arg(long, value_name = "M", default_value_t = DEFAULT_MAX_VIRTUAL_DRIVES_PER_CORE)]
    pub max_drives_per_core: u32,
    /// Smallest virtual drive, GiB.
    #[arg(long, value_name = "GIB", default_value_t = DEFAULT_MIN_DRIVE_GIB)]
    pub min_drive_gib: u64,
    /// A physical drive and its free space, e.g. tlc:3840 (repeat for each drive).
    /// Without any, the plan assumes unlimited space.
    #[arg(long, value_name = "TYPE:FREE_GIB", value_parser = parse_physical)]
    pub physical: Vec<FreeDrive>,
    #[command(flatten)]
    pub output: OutputArgs,
}

fn parse_physical(spec: &str) -> Result<FreeDrive, String> {
    let (kind, free) = spec
        .split_once(':')
        .ok_or_else(|| format!("{spec:?} is not TYPE:FREE_GIB (for example tlc:3840)"))?;
    let drive_type: DriveType = kind.parse()?;
    let free: u64 = free
        .parse()
        .ok()
        .filter(|&gib| gib <= allocator::MAX_CAPACITY_GIB)
        .ok_or_else(|| {
            format!(
                "{free:?} in {spec:?} is not a whole number of GiB up to {}",
                allocator::MAX_CAPACITY_GIB
            )
        })?;
    Ok(FreeDrive::whole(drive_type, free))
}

impl PlanArgs {
    /// The allocator request these flags describe.
    pub fn request(&self) -> Result<Request, AllocError> {
        let invalid = |msg: &str| Err(AllocError::InvalidArgument(msg.to_string()));
        let shape = match (self.num_drives, self.drive_capacity) {
            (Some(num_drives), Some(drive_capacity_gib)) => {
                if self.tlc.is_some() || self.qlc.is_some() {
                    return invalid(
                        "--num-drives/--drive-capacity (fixed mode, TLC only) cannot be combined with --tlc/--qlc; for QLC or mixed drives use --capacity with --tlc/--qlc",
                    );
                }
                let total = u64::from(num_drives).saturating_mul(drive_capacity_gib);
                if self.capacity.is_some_and(|c| c != total) {
                    return invalid(&format!(
                        "--capacity must equal --num-drives × --drive-capacity ({total} GiB) in fixed mode, or be left out"
                    ));
                }
                Shape::Fixed {
                    num_drives,
                    drive_capacity_gib,
                }
            }
            _ => {
                let Some(capacity_gib) = self.capacity else {
                    return invalid(
                        "--capacity is required unless --num-drives and --drive-capacity are given",
                    );
                };
                let ratio = match (self.tlc, self.qlc) {
                    (None, None) => DEFAULT_RATIO,
                    (tlc, qlc) => Ratio {
                        tlc: tlc.unwrap_or(0),
                        qlc: qlc.unwrap_or(0),
                    },
                };
                Shape::Ratio {
                    capacity_gib,
                    ratio,
                }
            }
        };
        Ok(Request {
            shape,
            drive_cores: self.cores,
            enforce_min_drives_per_type_per_core: self.enforce_per_type,
            max_virtual_drives_per_core: self.max_drives_per_core,
            min_drive_gib: self.min_drive_gib,
        })
    }

    fn physical(&self) -> Option<&[FreeDrive]> {
        (!self.physical.is_empty()).then_some(self.physical.as_slice())
    }
}

/// Runs the plan: yes with the plan, a definite no when no layout fits (why,
/// on stderr), a usage failure when the flags contradict each other.
pub fn run(args: &PlanArgs) -> Result<Answer, Failure> {
    let request = args
        .request()
        .map_err(|err| Failure::usage(err.to_string()))?;
    match allocator::plan(&request, args.physical()) {
        Ok(plan) => Ok(Answer::yes(plan_table(&request, &plan, args.physical()))
            .with_data(plan_json(&plan, args.physical().is_some()))),
        Err(AllocError::InvalidArgument(message)) => Err(Failure::usage(message)),
        Err(err) => Ok(Answer::no("")
            .with_data(error_json(&err))
            .with_note(format!("error: {err}"))),
    }
}

/// `{"tlc":[…],"qlc":[…],"strategy":{"tlc":…,"qlc":…}[,"placements":[…]]}`
pub fn plan_json(plan: &Plan, with_placements: bool) -> Value {
    let strategy = |t: DriveType| plan.layout(t).map(|l| l.strategy.as_str());
    let mut out = json!({
        "tlc": plan.sizes(DriveType::Tlc),
        "qlc": plan.sizes(DriveType::Qlc),
        "strategy": { "tlc": strategy(DriveType::Tlc), "qlc": strategy(DriveType::Qlc) },
    });
    if with_placements {
        out["placements"] = json!(plan.placements);
    }
    out
}

/// `{"error":{"kind":…,"message":…}}`
pub fn error_json(err: &AllocError) -> Value {
    json!({ "error": { "kind": err.kind(), "message": err.to_string() } })
}

/// The plan as the drive-sharing specification shows its examples.
fn plan_table(request: &Request, plan: &Plan, physical: Option<&[FreeDrive]>) -> String {
    let mut out = String::new();
    let split = request.split();
    let constraint = if request.enforce_min_drives_per_type_per_core {
        "per-type constraint (enforceMinDrivesPerTypePerCore=true)"
    } else {
        "combined constraint (enforceMinDrivesPerTypePerCore=false)"
    };
    let mode = match request.shape {
        Shape::Ratio { ratio, .. } => format!("ratio tlc:{} qlc:{}", ratio.tlc, ratio.qlc),
        Shape::Fixed {
            num_drives,
            drive_capacity_gib,
        } => format!("fixed {num_drives} × {drive_capacity_gib} GiB TLC"),
    };
    let _ = writeln!(
        out,
        "Request: {} GiB, {} drive cores, {mode}, {constraint}",
        request.capacity_gib(),
        request.drive_cores
    );
    let _ = writeln!(
        out,
        "Capacity split: TLC = {} GiB, QLC = {} GiB\n",
        split.tlc_gib, split.qlc_gib
    );
    let _ = writeln!(out, "| Type | Drives | Strategy        | Sizes (GiB)");
    let _ = writeln!(out, "|------|--------|-----------------|------------");
    for drive_type in DriveType::ALL {
        match plan.layout(drive_type) {
            Some(layout) => {
                let sizes: Vec<String> = layout.sizes_gib.iter().map(u64::to_string).collect();
                let _ = writeln!(
                    out,
                    "| {:<4} | {:<6} | {:<15} | {}",
                    drive_type.label(),
                    layout.sizes_gib.len(),
                    layout.strategy.as_str(),
                    sizes.join(", ")
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "| {:<4} | {:<6} | {:<15} | (not used)",
                    drive_type.label(),
                    0,
                    "-"
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "\nTotal: {} virtual drives, {} GiB",
        plan.drive_count(),
        plan.total_gib()
    );
    if let Some(physical) = physical {
        let _ = writeln!(
            out,
            "\n| Virtual drive | Type | Size (GiB) | Physical drive | Offset (GiB)"
        );
        let _ = writeln!(
            out,
            "|---------------|------|------------|----------------|-------------"
        );
        for (n, placement) in plan.placements.iter().enumerate() {
            let free = physical
                .get(placement.physical_index)
                .map_or(0, FreeDrive::free_gib);
            let _ = writeln!(
                out,
                "| {:<13} | {:<4} | {:<10} | #{} ({} GiB free) | {}",
                n + 1,
                placement.drive_type.label(),
                placement.size_gib,
                placement.physical_index,
                free,
                placement.offset_gib
            );
        }
    }
    out.trim_end().to_string()
}
