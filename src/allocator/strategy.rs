//! The candidate layouts for one drive type, in the order the specification tries them:
//! even distribution for n = lo, lo+1, … hi drives, then fit-to-physical.

/// `capacity` over `n` drives as evenly as possible: each drive `floor(capacity / n)`,
/// the first `capacity mod n` drives one GiB more (so the result is descending).
pub fn even_distribution(capacity_gib: u64, n: u32) -> Vec<u64> {
    let n = u64::from(n.max(1));
    let base = capacity_gib / n;
    let remainder = capacity_gib % n;
    (0..n).map(|i| base + u64::from(i < remainder)).collect()
}

/// The even-distribution drive counts worth trying: from `lo` up to `hi`, stopping
/// at the first count whose base size falls below `min_drive_gib` (more drives would
/// only be smaller).
pub fn even_counts(
    capacity_gib: u64,
    lo: u32,
    hi: u32,
    min_drive_gib: u64,
) -> impl Iterator<Item = u32> {
    (lo.max(1)..=hi).take_while(move |&n| capacity_gib / u64::from(n) >= min_drive_gib)
}

/// Virtual drives that follow the physical layout, for nodes whose drive sizes are
/// too uneven for an even split. `free_by_drive` is each drive's usable free space.
///
/// Drives with at least `min_drive_gib` free are taken most-free first; each gives
/// `min(free, remaining)` while that piece is at least `min_drive_gib`. If the pieces
/// cannot cover `capacity_gib` there is no such layout. While there are fewer than
/// `lo` pieces the largest piece of at least `2 × min_drive_gib` is halved. The result
/// (descending) is valid only with `lo..=hi` pieces.
pub fn fit_to_physical(
    capacity_gib: u64,
    lo: u32,
    hi: u32,
    min_drive_gib: u64,
    free_by_drive: impl Iterator<Item = u64>,
) -> Option<Vec<u64>> {
    let mut frees: Vec<u64> = free_by_drive.filter(|&f| f >= min_drive_gib).collect();
    // Stable sort: equal drives keep their listed order.
    frees.sort_by(|a, b| b.cmp(a));

    let mut pieces = Vec::new();
    let mut remaining = capacity_gib;
    for free in frees {
        let piece = free.min(remaining);
        if piece < min_drive_gib {
            break;
        }
        pieces.push(piece);
        remaining -= piece;
    }
    if remaining > 0 {
        return None;
    }

    let lo = lo as usize;
    while pieces.len() < lo {
        let (index, &largest) = pieces
            .iter()
            .enumerate()
            .max_by_key(|&(i, &p)| (p, std::cmp::Reverse(i)))?;
        if largest < 2 * min_drive_gib {
            break;
        }
        pieces[index] = largest / 2;
        pieces.push(largest - largest / 2);
    }
    if pieces.len() < lo || pieces.len() > hi as usize {
        return None;
    }
    pieces.sort_by(|a, b| b.cmp(a));
    Some(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_distribution_spreads_the_remainder_one_gib_at_a_time() {
        // drive-sharing.md: "7001 GiB with 3 drives → [2334, 2334, 2333] GiB"
        assert_eq!(even_distribution(7001, 3), vec![2334, 2334, 2333]);
        // drive-sharing.md, uneven example: 1400 over 3 → 467, 467, 466
        assert_eq!(even_distribution(1400, 3), vec![467, 467, 466]);
        assert_eq!(even_distribution(3000, 3), vec![1000, 1000, 1000]);
    }

    #[test]
    fn even_counts_stop_when_drives_get_smaller_than_the_minimum() {
        // 1000 GiB: 1000, 500 are ≥ 384; 333 is not, so 3 drives and beyond are never tried.
        assert_eq!(
            even_counts(1000, 1, 24, 384).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(even_counts(500, 2, 24, 384).count(), 0);
        assert_eq!(
            even_counts(21000, 3, 24, 384).collect::<Vec<_>>(),
            (3..=24).collect::<Vec<_>>()
        );
        assert_eq!(
            even_counts(5000, 5, 4, 384).count(),
            0,
            "lo above hi tries nothing"
        );
    }

    #[test]
    fn fit_to_physical_matches_the_physical_layout() {
        // drive-sharing.md: [20000, 500, 500], 21000 GiB, 3 cores → [20000, 500, 500]
        let free = [20000, 500, 500];
        assert_eq!(
            fit_to_physical(21000, 3, 24, 384, free.into_iter()),
            Some(vec![20000, 500, 500])
        );
    }

    #[test]
    fn fit_to_physical_splits_the_largest_piece_until_there_are_enough() {
        // drive-sharing.md: 4 cores → [10000, 10000, 500, 500]
        let free = [20000, 500, 500];
        assert_eq!(
            fit_to_physical(21000, 4, 32, 384, free.into_iter()),
            Some(vec![10000, 10000, 500, 500])
        );
    }

    #[test]
    fn fit_to_physical_takes_only_what_is_needed() {
        assert_eq!(
            fit_to_physical(1500, 1, 8, 384, [1000, 1000].into_iter()),
            Some(vec![1000, 500])
        );
    }

    #[test]
    fn fit_to_physical_has_no_layout_when_a_piece_would_be_too_small() {
        // 1000 + a 100 GiB tail: the tail piece is below 384, so the pieces cannot cover.
        assert_eq!(
            fit_to_physical(1100, 1, 8, 384, [1000, 1000].into_iter()),
            None
        );
        // drives below the minimum never count
        assert_eq!(
            fit_to_physical(600, 1, 8, 384, [300, 300].into_iter()),
            None
        );
    }

    #[test]
    fn fit_to_physical_respects_the_drive_count_bounds() {
        // too many pieces for hi
        assert_eq!(
            fit_to_physical(1600, 1, 3, 400, [400, 400, 400, 400].into_iter()),
            None
        );
        // cannot split below 2 × min to reach lo
        assert_eq!(fit_to_physical(700, 2, 8, 384, [700].into_iter()), None);
    }
}
