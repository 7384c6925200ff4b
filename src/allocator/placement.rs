//! Placing a strategy's virtual drives onto the free extents of physical drives.
//!
//! Rule: sizes are placed largest first, each onto the drive of its type whose
//! largest free extent is biggest (ties: the drive listed first). Inside that drive
//! the piece goes into the smallest extent that holds it (best fit, ties: lowest
//! offset), carved from the extent's start, which keeps big extents whole for big
//! requests and limits fragmentation.

use serde::Serialize;

use crate::drive::{DriveType, Extent};

/// The free space of one physical drive, as the allocator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeDrive {
    pub drive_type: DriveType,
    /// Free extents, in any order; they must not overlap.
    pub extents: Vec<Extent>,
}

impl FreeDrive {
    /// A drive with one free extent of `free_gib` starting at offset 0.
    pub fn whole(drive_type: DriveType, free_gib: u64) -> Self {
        let extents = if free_gib == 0 {
            Vec::new()
        } else {
            vec![Extent::new(0, free_gib)]
        };
        FreeDrive {
            drive_type,
            extents,
        }
    }

    pub fn free_gib(&self) -> u64 {
        self.extents
            .iter()
            .fold(0u64, |sum, e| sum.saturating_add(e.size_gib))
    }

    /// What placement counts as this drive's free space: a virtual drive is one
    /// contiguous extent, so only the largest free extent matters.
    pub fn largest_extent_gib(&self) -> u64 {
        self.extents.iter().map(|e| e.size_gib).max().unwrap_or(0)
    }
}

/// One virtual drive placed on a physical drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Placement {
    #[serde(rename = "type")]
    pub drive_type: DriveType,
    pub size_gib: u64,
    /// Position of the physical drive in the list the plan was given.
    pub physical_index: usize,
    #[serde(skip)]
    pub offset_gib: u64,
}

/// Where `need_gib` more of `drive_type` goes when a volume grows by new virtual
/// drives: one piece when a single free extent holds it all; otherwise the largest
/// free extents in turn, largest first, the last one taking only what remains.
/// Each piece is placed by the rule at the top of this module, so a single piece
/// lands best-fit on the drive with the largest free extent. None when the drives
/// of that type have less than `need_gib` free in all.
pub fn place_extension(
    drives: &[FreeDrive],
    drive_type: DriveType,
    need_gib: u64,
) -> Option<Vec<Placement>> {
    let mut free: Vec<u64> = drives
        .iter()
        .filter(|d| d.drive_type == drive_type)
        .flat_map(|d| d.extents.iter().map(|e| e.size_gib))
        .filter(|&gib| gib > 0)
        .collect();
    free.sort_unstable_by(|a, b| b.cmp(a));
    let mut sizes = Vec::new();
    let mut left = need_gib;
    for gib in free {
        if left == 0 {
            break;
        }
        let piece = gib.min(left);
        sizes.push(piece);
        left -= piece;
    }
    if left > 0 || sizes.is_empty() {
        return None;
    }
    // Descending already: every piece but the last is a whole extent taken largest
    // first, and the last is no bigger than the extent it was cut from.
    let mut placements = Vec::with_capacity(sizes.len());
    Space::new(drives)
        .try_place(drive_type, &sizes, &mut placements)
        .then_some(placements)
}

/// Free space of all drives, flattened so that trying strategy after strategy
/// re-uses the same buffers instead of cloning every drive's extent list.
#[derive(Debug)]
pub(crate) struct Space {
    types: Vec<DriveType>,
    /// `extents[ranges[i].0..ranges[i].1]` are drive i's free extents.
    ranges: Vec<(usize, usize)>,
    extents: Vec<Extent>,
    largest: Vec<u64>,
    work_extents: Vec<Extent>,
    work_largest: Vec<u64>,
}

impl Space {
    pub(crate) fn new(drives: &[FreeDrive]) -> Self {
        let total: usize = drives.iter().map(|d| d.extents.len()).sum();
        let mut extents = Vec::with_capacity(total);
        let mut ranges = Vec::with_capacity(drives.len());
        for drive in drives {
            let start = extents.len();
            extents.extend(drive.extents.iter().copied().filter(|e| e.size_gib > 0));
            ranges.push((start, extents.len()));
        }
        Space {
            types: drives.iter().map(|d| d.drive_type).collect(),
            largest: drives.iter().map(FreeDrive::largest_extent_gib).collect(),
            ranges,
            extents,
            work_extents: Vec::with_capacity(total),
            work_largest: Vec::with_capacity(drives.len()),
        }
    }

    pub(crate) fn total_free_gib(&self) -> u64 {
        // Saturating: free space is reported, not trusted to be small.
        self.extents
            .iter()
            .fold(0u64, |sum, e| sum.saturating_add(e.size_gib))
    }

    pub(crate) fn type_free_gib(&self, drive_type: DriveType) -> u64 {
        self.drives_of(drive_type)
            .map(|i| {
                let (start, end) = self.ranges[i];
                self.extents[start..end]
                    .iter()
                    .fold(0u64, |sum, e| sum.saturating_add(e.size_gib))
            })
            .fold(0u64, u64::saturating_add)
    }

    /// The largest free extent of each drive of `drive_type`, in listed order.
    pub(crate) fn largest_by_drive(&self, drive_type: DriveType) -> impl Iterator<Item = u64> + '_ {
        self.drives_of(drive_type).map(|i| self.largest[i])
    }

    /// The biggest single free extent among drives of `drive_type`.
    pub(crate) fn max_extent_gib(&self, drive_type: DriveType) -> u64 {
        self.largest_by_drive(drive_type).max().unwrap_or(0)
    }

    fn drives_of(&self, drive_type: DriveType) -> impl Iterator<Item = usize> + '_ {
        (0..self.types.len()).filter(move |&i| self.types[i] == drive_type)
    }

    /// Tries to place `sizes` (descending) onto drives of `drive_type`, starting from
    /// the free space the plan was given. Appends to `out` and returns true when every
    /// size found a home; on false `out` holds a partial result the caller discards.
    pub(crate) fn try_place(
        &mut self,
        drive_type: DriveType,
        sizes: &[u64],
        out: &mut Vec<Placement>,
    ) -> bool {
        self.work_extents.clone_from(&self.extents);
        self.work_largest.clone_from(&self.largest);
        for &size in sizes {
            let mut best: Option<usize> = None;
            for i in 0..self.types.len() {
                if self.types[i] == drive_type
                    && best.is_none_or(|b| self.work_largest[i] > self.work_largest[b])
                {
                    best = Some(i);
                }
            }
            let Some(drive) = best else { return false };
            if self.work_largest[drive] < size {
                return false;
            }
            let (start, end) = self.ranges[drive];
            let slot = &mut self.work_extents[start..end];
            let Some(extent) = slot
                .iter_mut()
                .filter(|e| e.size_gib >= size)
                .min_by_key(|e| (e.size_gib, e.offset_gib))
            else {
                return false;
            };
            out.push(Placement {
                drive_type,
                size_gib: size,
                physical_index: drive,
                offset_gib: extent.offset_gib,
            });
            extent.offset_gib += size;
            extent.size_gib -= size;
            self.work_largest[drive] = slot.iter().map(|e| e.size_gib).max().unwrap_or(0);
        }
        true
    }
}
