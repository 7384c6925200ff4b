//! Why a layout could not be planned. The texts of the capacity errors are the
//! drive-sharing specification's, word for word, so operators can search for them.

use std::fmt;

use thiserror::Error;

use crate::drive::DriveType;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AllocError {
    /// The request itself is malformed (zero cores, a 0:0 ratio, fixed mode with a ratio...).
    #[error("{0}")]
    InvalidArgument(String),

    /// Per-type constraint: one active type got less than `cores × min` GiB.
    #[error(
        "insufficient {label} capacity: with {cores} drive cores and enforceMinDrivesPerTypePerCore=true, need at least {need_gib} GiB {label} (minimum {cores} drives × {min_drive_gib} GiB each), but only {have_gib} GiB configured. Increase containerCapacity or adjust driveTypesRatio, or set enforceMinDrivesPerTypePerCore=false",
        label = .drive_type.label()
    )]
    InsufficientTypeCapacity {
        drive_type: DriveType,
        cores: u32,
        min_drive_gib: u64,
        need_gib: u64,
        have_gib: u64,
    },

    /// Combined constraint (or a single active type): the whole request is below `cores × min`.
    #[error(
        "insufficient total capacity: with {cores} drive cores, need at least {need_gib} GiB total (minimum {cores} drives × {min_drive_gib} GiB each), but only {have_gib} GiB available. Increase containerCapacity"
    )]
    InsufficientTotalCapacity {
        cores: u32,
        min_drive_gib: u64,
        need_gib: u64,
        have_gib: u64,
    },

    /// All physical drives together have less free space than requested.
    #[error("Insufficient drive capacity: need {need_gib} GiB, available {available_gib} GiB")]
    InsufficientDriveCapacity { need_gib: u64, available_gib: u64 },

    /// The drives of one type have less free space than that type's share.
    #[error(
        "Insufficient {label} drives: need {need_gib} GiB, available {available_gib} GiB",
        label = .drive_type.label()
    )]
    InsufficientDrives {
        drive_type: DriveType,
        need_gib: u64,
        available_gib: u64,
    },

    /// Enough space in total, but no strategy's virtual drives fit the free extents.
    #[error("{0}")]
    NoLayoutFits(NoLayout),
}

impl AllocError {
    /// Stable machine-readable name, used in `vdrive plan --json` and in metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            AllocError::InvalidArgument(_) => "invalid_argument",
            AllocError::InsufficientTypeCapacity { .. } => "insufficient_type_capacity",
            AllocError::InsufficientTotalCapacity { .. } => "insufficient_total_capacity",
            AllocError::InsufficientDriveCapacity { .. } => "insufficient_drive_capacity",
            AllocError::InsufficientDrives { .. } => "insufficient_drives",
            AllocError::NoLayoutFits(_) => "no_layout_fits",
        }
    }
}

/// The search for one drive type that found no strategy which places.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoLayout {
    pub drive_type: DriveType,
    pub capacity_gib: u64,
    pub min_drives: u32,
    pub max_drives: u32,
    pub min_drive_gib: u64,
    /// The largest free extent of each drive of this type, largest first; `None`
    /// when the plan was made without physical drives.
    pub largest_free_gib: Option<Vec<u64>>,
}

/// How many of the largest free extents a message lists; a node has few drives,
/// but a message must stay one readable line.
const LISTED_EXTENTS: usize = 8;

impl fmt::Display for NoLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = self.drive_type.label();
        let capacity = self.capacity_gib;
        if self.min_drives > self.max_drives {
            return write!(
                f,
                "no layout fits: {capacity} GiB of {label} needs at least {} virtual drives, but only {} remain under driveCores × maxVirtualDrivesPerCore. Increase driveCores or maxVirtualDrivesPerCore, or adjust driveTypesRatio",
                self.min_drives, self.max_drives
            );
        }
        let counts = match (self.min_drives, self.max_drives) {
            (1, 1) => "1 virtual drive".to_string(),
            (lo, hi) if lo == hi => format!("{lo} virtual drives"),
            (lo, hi) => format!("{lo} to {hi} virtual drives"),
        };
        match &self.largest_free_gib {
            None => write!(
                f,
                "no layout fits: {capacity} GiB of {label} cannot be split into {counts} of at least {} GiB each. Increase containerCapacity or adjust driveTypesRatio",
                self.min_drive_gib
            ),
            Some(free) if free.is_empty() => write!(
                f,
                "no layout fits: cannot place {capacity} GiB of {label}: this node has no {label} drive with free space. Add or sign {label} drives, or adjust driveTypesRatio"
            ),
            Some(free) => {
                let mut listed: Vec<String> = free
                    .iter()
                    .take(LISTED_EXTENTS)
                    .map(u64::to_string)
                    .collect();
                if free.len() > LISTED_EXTENTS {
                    listed.push(format!("and {} more", free.len() - LISTED_EXTENTS));
                }
                write!(
                    f,
                    "no layout fits: cannot place {capacity} GiB of {label} as {counts} of at least {} GiB each on this node's {label} drives (largest free extents: {} GiB). Request less capacity, free or add {label} drives, or allow more virtual drives per core",
                    self.min_drive_gib,
                    listed.join(", ")
                )
            }
        }
    }
}
