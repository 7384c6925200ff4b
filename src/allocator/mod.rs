//! The virtual-drive allocator: pure functions, no I/O, whole GiB.
//!
//! Given a request (capacity and TLC:QLC ratio, or a fixed number of fixed-size TLC
//! drives) and, optionally, the free space of a node's physical drives, [`plan`]
//! decides how many virtual drives of which sizes each type gets and where each one
//! goes. The rules are those of the drive-sharing specification: validation of the
//! per-type or combined minimums, even distribution first, fit-to-physical as the
//! fallback, TLC before QLC.

mod error;
mod placement;
mod strategy;

use serde::{Deserialize, Serialize};

pub use error::{AllocError, NoLayout};
pub use placement::{FreeDrive, Placement, place_extension};
pub use strategy::{even_distribution, fit_to_physical};

use crate::drive::DriveType;
#[cfg(test)]
use crate::drive::Extent;
use placement::Space;

/// Smallest virtual drive the specification allows, in GiB.
pub const DEFAULT_MIN_DRIVE_GIB: u64 = 384;
/// Default multiplier: at most `driveCores × 8` virtual drives per request.
pub const DEFAULT_MAX_VIRTUAL_DRIVES_PER_CORE: u32 = 8;
/// The global default ratio when none is given: 1 part TLC, 10 parts QLC.
pub const DEFAULT_RATIO: Ratio = Ratio { tlc: 1, qlc: 10 };

/// Upper bounds that keep a request's search small and its arithmetic far from overflow.
pub const MAX_DRIVE_CORES: u32 = 1024;
pub const MAX_VIRTUAL_DRIVES_PER_CORE: u32 = 64;
pub const MAX_CAPACITY_GIB: u64 = 1 << 40;

/// Relative TLC and QLC parts of a request's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ratio {
    pub tlc: u32,
    pub qlc: u32,
}

impl Ratio {
    pub fn part(&self, drive_type: DriveType) -> u32 {
        match drive_type {
            DriveType::Tlc => self.tlc,
            DriveType::Qlc => self.qlc,
        }
    }

    /// A type is active when its ratio part is above zero.
    pub fn is_active(&self, drive_type: DriveType) -> bool {
        self.part(drive_type) > 0
    }
}

impl Default for Ratio {
    fn default() -> Self {
        DEFAULT_RATIO
    }
}

/// What is asked for: the specification's two allocation modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `containerCapacity` split by `driveTypesRatio` (Mode 2).
    Ratio { capacity_gib: u64, ratio: Ratio },
    /// `numDrives` × `driveCapacity`, TLC only (Mode 1).
    Fixed {
        num_drives: u32,
        drive_capacity_gib: u64,
    },
}

/// One allocation request with every knob the specification defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub shape: Shape,
    pub drive_cores: u32,
    pub enforce_min_drives_per_type_per_core: bool,
    pub max_virtual_drives_per_core: u32,
    pub min_drive_gib: u64,
}

impl Request {
    /// A Mode 2 request with the global defaults for everything not given.
    pub fn with_ratio(capacity_gib: u64, ratio: Ratio, drive_cores: u32) -> Self {
        Request {
            shape: Shape::Ratio {
                capacity_gib,
                ratio,
            },
            drive_cores,
            enforce_min_drives_per_type_per_core: true,
            max_virtual_drives_per_core: DEFAULT_MAX_VIRTUAL_DRIVES_PER_CORE,
            min_drive_gib: DEFAULT_MIN_DRIVE_GIB,
        }
    }

    /// A Mode 1 request: `num_drives` TLC drives of `drive_capacity_gib` each.
    pub fn fixed(num_drives: u32, drive_capacity_gib: u64, drive_cores: u32) -> Self {
        Request {
            shape: Shape::Fixed {
                num_drives,
                drive_capacity_gib,
            },
            ..Request::with_ratio(0, DEFAULT_RATIO, drive_cores)
        }
    }

    pub fn enforce_per_type(mut self, enforce: bool) -> Self {
        self.enforce_min_drives_per_type_per_core = enforce;
        self
    }

    /// The same request for `capacity_gib`; a fixed-mode request keeps its size,
    /// which `numDrives` × `driveCapacity` decide.
    pub fn resized(self, capacity_gib: u64) -> Request {
        match self.shape {
            Shape::Ratio { ratio, .. } => Request {
                shape: Shape::Ratio {
                    capacity_gib,
                    ratio,
                },
                ..self
            },
            Shape::Fixed { .. } => self,
        }
    }

    /// The size of a fixed-mode request (`numDrives` × `driveCapacity`).
    pub fn fixed_gib(&self) -> Option<u64> {
        matches!(self.shape, Shape::Fixed { .. }).then(|| self.capacity_gib())
    }

    /// Total GiB asked for.
    pub fn capacity_gib(&self) -> u64 {
        match self.shape {
            Shape::Ratio { capacity_gib, .. } => capacity_gib,
            Shape::Fixed {
                num_drives,
                drive_capacity_gib,
            } => u64::from(num_drives).saturating_mul(drive_capacity_gib),
        }
    }

    /// GiB for each type: `tlc = floor(C·t/(t+q))`, `qlc = C − tlc`; fixed mode is all TLC.
    pub fn split(&self) -> Split {
        match self.shape {
            Shape::Ratio {
                capacity_gib,
                ratio,
            } => {
                let parts = u128::from(ratio.tlc) + u128::from(ratio.qlc);
                // The product fits u128 and the quotient is at most C; a 0:0 ratio
                // (rejected by validate) splits as all QLC rather than dividing by zero.
                let tlc = (u128::from(capacity_gib) * u128::from(ratio.tlc))
                    .checked_div(parts)
                    .map_or(0, |tlc| tlc as u64);
                Split {
                    tlc_gib: tlc,
                    qlc_gib: capacity_gib - tlc,
                }
            }
            Shape::Fixed { .. } => Split {
                tlc_gib: self.capacity_gib(),
                qlc_gib: 0,
            },
        }
    }

    /// Whether the request places virtual drives of `drive_type`.
    pub fn uses(&self, drive_type: DriveType) -> bool {
        match self.shape {
            Shape::Ratio { ratio, .. } => ratio.is_active(drive_type),
            Shape::Fixed { .. } => drive_type == DriveType::Tlc,
        }
    }

    /// Most virtual drives one request may have: `driveCores × maxVirtualDrivesPerCore`.
    pub fn max_drives(&self) -> u32 {
        self.drive_cores
            .saturating_mul(self.max_virtual_drives_per_core)
    }

    /// Rejects requests that no capacity could satisfy because they make no sense.
    pub fn validate(&self) -> Result<(), AllocError> {
        let invalid = |msg: String| Err(AllocError::InvalidArgument(msg));
        if self.drive_cores == 0 || self.drive_cores > MAX_DRIVE_CORES {
            return invalid(format!(
                "driveCores must be between 1 and {MAX_DRIVE_CORES}, got {}",
                self.drive_cores
            ));
        }
        if self.max_virtual_drives_per_core == 0
            || self.max_virtual_drives_per_core > MAX_VIRTUAL_DRIVES_PER_CORE
        {
            return invalid(format!(
                "maxVirtualDrivesPerCore must be between 1 and {MAX_VIRTUAL_DRIVES_PER_CORE}, got {}",
                self.max_virtual_drives_per_core
            ));
        }
        if self.min_drive_gib == 0 || self.min_drive_gib > MAX_CAPACITY_GIB {
            return invalid(format!(
                "the minimum virtual drive size must be between 1 and {MAX_CAPACITY_GIB} GiB, got {}",
                self.min_drive_gib
            ));
        }
        match self.shape {
            Shape::Ratio {
                capacity_gib,
                ratio,
            } => {
                if ratio.tlc == 0 && ratio.qlc == 0 {
                    return invalid(
                        "driveTypesRatio tlc:qlc is 0:0: give at least one type a part above 0 (for example tlc: 1, qlc: 0 for TLC only)".into(),
                    );
                }
                if capacity_gib == 0 || capacity_gib > MAX_CAPACITY_GIB {
                    return invalid(format!(
                        "containerCapacity must be between 1 and {MAX_CAPACITY_GIB} GiB, got {capacity_gib}"
                    ));
                }
            }
            Shape::Fixed {
                num_drives,
                drive_capacity_gib,
            } => {
                if num_drives < self.drive_cores {
                    return invalid(format!(
                        "numDrives ({num_drives}) must be at least driveCores ({}): every drive core needs a virtual drive. Increase numDrives or decrease driveCores",
                        self.drive_cores
                    ));
                }
                if num_drives > self.max_drives() {
                    return invalid(format!(
                        "numDrives ({num_drives}) exceeds driveCores × maxVirtualDrivesPerCore ({} × {} = {}). Decrease numDrives or increase driveCores",
                        self.drive_cores,
                        self.max_virtual_drives_per_core,
                        self.max_drives()
                    ));
                }
                if drive_capacity_gib < self.min_drive_gib {
                    return invalid(format!(
                        "driveCapacity ({drive_capacity_gib} GiB) is below the minimum virtual drive size of {} GiB. Increase driveCapacity",
                        self.min_drive_gib
                    ));
                }
                if self.capacity_gib() > MAX_CAPACITY_GIB {
                    return invalid(format!(
                        "numDrives × driveCapacity must be at most {MAX_CAPACITY_GIB} GiB"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A request's capacity per type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub tlc_gib: u64,
    pub qlc_gib: u64,
}

impl Split {
    pub fn of(&self, drive_type: DriveType) -> u64 {
        match drive_type {
            DriveType::Tlc => self.tlc_gib,
            DriveType::Qlc => self.qlc_gib,
        }
    }
}

/// Which candidate produced a type's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Strategy {
    #[serde(rename = "even")]
    Even,
    #[serde(rename = "fit-to-physical")]
    FitToPhysical,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Even => "even",
            Strategy::FitToPhysical => "fit-to-physical",
        }
    }
}

/// The virtual drives of one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeLayout {
    /// Sizes in GiB, descending.
    pub sizes_gib: Vec<u64>,
    pub strategy: Strategy,
}

/// The allocator's answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub tlc: Option<TypeLayout>,
    pub qlc: Option<TypeLayout>,
    /// Where each virtual drive goes, TLC first, each type largest first; empty when
    /// the plan was made without physical drives.
    pub placements: Vec<Placement>,
}

impl Plan {
    pub fn layout(&self, drive_type: DriveType) -> Option<&TypeLayout> {
        match drive_type {
            DriveType::Tlc => self.tlc.as_ref(),
            DriveType::Qlc => self.qlc.as_ref(),
        }
    }

    /// Sizes of one type, descending (empty when the type is not used).
    pub fn sizes(&self, drive_type: DriveType) -> &[u64] {
        self.layout(drive_type)
            .map_or(&[], |layout| layout.sizes_gib.as_slice())
    }

    pub fn drive_count(&self) -> usize {
        self.sizes(DriveType::Tlc).len() + self.sizes(DriveType::Qlc).len()
    }

    pub fn total_gib(&self) -> u64 {
        DriveType::ALL.iter().flat_map(|&t| self.sizes(t)).sum()
    }

    fn set(&mut self, drive_type: DriveType, found: Found) {
        let layout = Some(found.layout);
        match drive_type {
            DriveType::Tlc => self.tlc = layout,
            DriveType::Qlc => self.qlc = layout,
        }
        self.placements.extend(found.placements);
    }
}

/// Plans `request` on `drives` (their free space), or on unlimited space when `None`.
pub fn plan(request: &Request, drives: Option<&[FreeDrive]>) -> Result<Plan, AllocError> {
    request.validate()?;
    check_minimums(request)?;
    let mut space = drives.map(Space::new);
    if let Some(space) = &space {
        check_free_space(request, space)?;
    }

    let cores = request.drive_cores;
    let max_drives = request.max_drives();
    let split = request.split();
    let both_active = request.uses(DriveType::Tlc) && request.uses(DriveType::Qlc);
    let mut search = Search {
        min_drive_gib: request.min_drive_gib,
        space: space.as_mut(),
    };

    if let Shape::Fixed {
        num_drives,
        drive_capacity_gib,
    } = request.shape
    {
        let sizes = vec![drive_capacity_gib; num_drives as usize];
        let found = search
            .place(DriveType::Tlc, sizes, Strategy::Even)
            .ok_or_else(|| {
                search.no_layout(DriveType::Tlc, split.tlc_gib, num_drives, num_drives)
            })?;
        let mut plan = Plan::default();
        plan.set(DriveType::Tlc, found);
        return Ok(plan);
    }

    if both_active && !request.enforce_min_drives_per_type_per_core {
        return plan_combined(&mut search, split, cores, max_drives);
    }

    // Per-type constraint, or a single active type: each active type gets at least
    // `driveCores` drives; QLC may use what TLC left of the drive-count budget.
    let mut plan = Plan::default();
    let mut used = 0u32;
    for drive_type in DriveType::ALL {
        if !request.uses(drive_type) {
            continue;
        }
        let capacity = split.of(drive_type);
        let hi = max_drives - used;
        let found = search
            .one_type(drive_type, capacity, cores, hi)
            .ok_or_else(|| search.no_layout(drive_type, capacity, cores, hi))?;
        used += found.count();
        plan.set(drive_type, found);
    }
    Ok(plan)
}

/// Combined constraint: TLC starts with one drive; QLC must bring the total to
/// `driveCores`; when QLC cannot, TLC's minimum is raised and both are tried again.
fn plan_combined(
    search: &mut Search<'_>,
    split: Split,
    cores: u32,
    max_drives: u32,
) -> Result<Plan, AllocError> {
    let mut qlc_failure = None;
    for tlc_min in 1..=cores {
        let Some(tlc) = search.one_type(DriveType::Tlc, split.tlc_gib, tlc_min, max_drives) else {
            // TLC is the obstacle only if it never placed; once it has, raising its
            // minimum only narrowed its choices and QLC is what did not fit.
            return Err(qlc_failure.unwrap_or_else(|| {
                search.no_layout(DriveType::Tlc, split.tlc_gib, tlc_min, max_drives)
            }));
        };
        let tlc_drives = tlc.count();
        let qlc_min = cores.saturating_sub(tlc_drives).max(1);
        let qlc_max = max_drives - tlc_drives;
        match search.one_type(DriveType::Qlc, split.qlc_gib, qlc_min, qlc_max) {
            Some(qlc) => {
                let mut plan = Plan::default();
                plan.set(DriveType::Tlc, tlc);
                plan.set(DriveType::Qlc, qlc);
                return Ok(plan);
            }
            None => {
                qlc_failure =
                    Some(search.no_layout(DriveType::Qlc, split.qlc_gib, qlc_min, qlc_max))
            }
        }
    }
    // cores ≥ 1, so the loop ran; without a recorded failure it returned above.
    Err(qlc_failure
        .unwrap_or_else(|| search.no_layout(DriveType::Qlc, split.qlc_gib, 1, max_drives)))
}

/// The specification's minimum-capacity validation, before any placement.
fn check_minimums(request: &Request) -> Result<(), AllocError> {
    let Shape::Ratio { capacity_gib, .. } = request.shape else {
        return Ok(()); // fixed mode: numDrives ≥ driveCores and driveCapacity ≥ min were validated
    };
    let cores = request.drive_cores;
    let min = request.min_drive_gib;
    let need = u64::from(cores) * min;
    let both_active = request.uses(DriveType::Tlc) && request.uses(DriveType::Qlc);
    if both_active && request.enforce_min_drives_per_type_per_core {
        let split = request.split();
        for drive_type in DriveType::ALL {
            let have = split.of(drive_type);
            if have < need {
                return Err(AllocError::InsufficientTypeCapacity {
                    drive_type,
                    cores,
                    min_drive_gib: min,
                    need_gib: need,
                    have_gib: have,
                });
            }
        }
    } else if capacity_gib < need {
        return Err(AllocError::InsufficientTotalCapacity {
            cores,
            min_drive_gib: min,
            need_gib: need,
            have_gib: capacity_gib,
        });
    }
    Ok(())
}

/// The node must have the space at all: in total, then per active type.
fn check_free_space(request: &Request, space: &Space) -> Result<(), AllocError> {
    let need = request.capacity_gib();
    let available = space.total_free_gib();
    if available < need {
        return Err(AllocError::InsufficientDriveCapacity {
            need_gib: need,
            available_gib: available,
        });
    }
    let split = request.split();
    for drive_type in DriveType::ALL {
        let need = split.of(drive_type);
        let available = space.type_free_gib(drive_type);
        if request.uses(drive_type) && available < need {
            return Err(AllocError::InsufficientDrives {
                drive_type,
                need_gib: need,
                available_gib: available,
            });
        }
    }
    Ok(())
}

/// A type's layout that placed (or needed no placing).
struct Found {
    layout: TypeLayout,
    placements: Vec<Placement>,
}

impl Found {
    fn count(&self) -> u32 {
        // At most driveCores × maxVirtualDrivesPerCore ≤ 1024 × 64, so it fits u32.
        self.layout.sizes_gib.len() as u32
    }
}

/// Tries candidate layouts for one type against the node's free space, if any.
struct Search<'a> {
    min_drive_gib: u64,
    space: Option<&'a mut Space>,
}

impl Search<'_> {
    /// Even distribution for n = lo…hi, then fit-to-physical; the first that places.
    fn one_type(
        &mut self,
        drive_type: DriveType,
        capacity: u64,
        lo: u32,
        hi: u32,
    ) -> Option<Found> {
        let min = self.min_drive_gib;
        let biggest_extent = self.space.as_ref().map(|s| s.max_extent_gib(drive_type));
        for n in strategy::even_counts(capacity, lo, hi, min) {
            let largest_piece = capacity.div_ceil(u64::from(n));
            if biggest_extent.is_some_and(|biggest| largest_piece > biggest) {
                continue; // cannot place; skip building the sizes
            }
            let sizes = strategy::even_distribution(capacity, n);
            if let Some(found) = self.place(drive_type, sizes, Strategy::Even) {
                return Some(found);
            }
        }
        let space = self.space.as_ref()?;
        let sizes =
            strategy::fit_to_physical(capacity, lo, hi, min, space.largest_by_drive(drive_type))?;
        self.place(drive_type, sizes, Strategy::FitToPhysical)
    }

    /// Places `sizes` (descending); without physical drives every layout places.
    fn place(
        &mut self,
        drive_type: DriveType,
        sizes: Vec<u64>,
        strategy: Strategy,
    ) -> Option<Found> {
        let mut placements = Vec::new();
        if let Some(space) = self.space.as_mut()
            && !space.try_place(drive_type, &sizes, &mut placements)
        {
            return None;
        }
        Some(Found {
            layout: TypeLayout {
                sizes_gib: sizes,
                strategy,
            },
            placements,
        })
    }

    fn no_layout(&self, drive_type: DriveType, capacity: u64, lo: u32, hi: u32) -> AllocError {
        let largest_free_gib = self.space.as_ref().map(|space| {
            let mut free: Vec<u64> = space
                .largest_by_drive(drive_type)
                .filter(|&f| f > 0)
                .collect();
            free.sort_by(|a, b| b.cmp(a));
            free
        });
        AllocError::NoLayoutFits(NoLayout {
            drive_type,
            capacity_gib: capacity,
            min_drives: lo,
            max_drives: hi,
            min_drive_gib: self.min_drive_gib,
            largest_free_gib,
        })
    }
}

#[cfg(test)]
mod tests;
