//! Every worked example and error message of drive-sharing.md, plus the rules the
//! allocator pins down where the specification is loose.

use super::*;
use crate::drive::DriveType::{Qlc, Tlc};

fn ratio(tlc: u32, qlc: u32) -> Ratio {
    Ratio { tlc, qlc }
}

fn combined(capacity: u64, r: Ratio, cores: u32) -> Request {
    Request::with_ratio(capacity, r, cores).enforce_per_type(false)
}

fn per_type(capacity: u64, r: Ratio, cores: u32) -> Request {
    Request::with_ratio(capacity, r, cores)
}

fn drives(spec: &[(DriveType, u64)]) -> Vec<FreeDrive> {
    spec.iter()
        .map(|&(t, free)| FreeDrive::whole(t, free))
        .collect()
}

fn sizes(plan: &Plan, t: DriveType) -> Vec<u64> {
    plan.sizes(t).to_vec()
}

// ---- Mode 2 worked examples -------------------------------------------------

#[test]
fn mixed_12000_at_4_to_1_with_6_cores_gets_6_drives_of_each_type() {
    // "TLC capacity: 12000 × 4/(4+1) = 9600 … QLC 2400 … Minimum 6 TLC drives AND 6 QLC drives"
    let request = per_type(12000, ratio(4, 1), 6);
    assert_eq!(
        request.split(),
        Split {
            tlc_gib: 9600,
            qlc_gib: 2400
        }
    );
    let plan = plan(&request, None).unwrap();
    assert_eq!(sizes(&plan, Tlc), vec![1600; 6]);
    assert_eq!(sizes(&plan, Qlc), vec![400; 6]);
    assert_eq!(plan.total_gib(), 12000);
}

#[test]
fn per_type_rejects_5_cores_at_5000_with_the_seed_message() {
    let err = plan(&per_type(5000, ratio(4, 1), 5), None).unwrap_err();
    assert_eq!(err.kind(), "insufficient_type_capacity");
    assert_eq!(
        err.to_string(),
        "insufficient QLC capacity: with 5 drive cores and enforceMinDrivesPerTypePerCore=true, need at least 1920 GiB QLC (minimum 5 drives × 384 GiB each), but only 1000 GiB configured. Increase containerCapacity or adjust driveTypesRatio, or set enforceMinDrivesPerTypePerCore=false"
    );
}

#[test]
fn per_type_checks_tlc_before_qlc() {
    // 1:10 of 3000 → TLC 272 < 1152 and QLC 2728 ≥ 1152
    let err = plan(&per_type(3000, ratio(1, 10), 3), None).unwrap_err();
    assert!(err.to_string().starts_with(
        "insufficient TLC capacity: with 3 drive cores and enforceMinDrivesPerTypePerCore=true, need at least 1152 GiB TLC (minimum 3 drives × 384 GiB each), but only 272 GiB configured."
    ), "{err}");
}

#[test]
fn combined_accepts_5_cores_at_5000_asymmetrically() {
    // The seed: "Valid configuration - allocation succeeds with asymmetric distribution".
    // TLC min 1: QLC needs 4 drives of 250 (< 384); TLC min 2: QLC 3 × 333; TLC min 3: QLC 2 × 500.
    let plan = plan(&combined(5000, ratio(4, 1), 5), None).unwrap();
    assert_eq!(sizes(&plan, Tlc), vec![1334, 1333, 1333]);
    assert_eq!(sizes(&plan, Qlc), vec![500, 500]);
    assert_eq!(plan.drive_count(), 5);
    assert_eq!(plan.total_gib(), 5000);
}

#[test]
fn combined_total_below_minimum_gives_the_seed_message() {
    let err = plan(&combined(1500, ratio(1, 2), 5), None).unwrap_err();
    assert_eq!(err.kind(), "insufficient_total_capacity");
    assert_eq!(
        err.to_string(),
        "insufficient total capacity: with 5 drive cores, need at least 1920 GiB total (minimum 5 drives × 384 GiB each), but only 1500 GiB available. Increase containerCapacity"
    );
}

#[test]
fn single_type_uses_the_total_message_even_when_enforcing_per_type() {
    let err = plan(&per_type(1500, ratio(1, 0), 5), None).unwrap_err();
    assert_eq!(err.kind(), "insufficient_total_capacity");
}

#[test]
fn example_7000_at_1_to_4_with_3_cores_is_1_tlc_and_2_qlc() {
    // The first example under maxVirtualDrivesPerCore is the combined constraint.
    let request = combined(7000, ratio(1, 4), 3);
    assert_eq!(
        request.split(),
        Split {
            tlc_gib: 1400,
            qlc_gib: 5600
        }
    );
    let plan = plan(&request, None).unwrap();
    assert_eq!(sizes(&plan, Tlc), vec![1400]);
    assert_eq!(sizes(&plan, Qlc), vec![2800, 2800]);
    assert_eq!(plan.tlc.as_ref().map(|l| l.strategy), Some(Strategy::Even));
    assert_eq!(plan.total_gib(), 7000);
}

#[test]
fn asymmetric_capacity_1500_at_1_to_2() {
    let plan = plan(&combined(1500, ratio(1, 2), 3), None).unwrap();
    assert_eq!(sizes(&plan, Tlc), vec![500]);
    assert_eq!(sizes(&plan, Qlc), vec![500, 500]);
}

#[test]
fn iteration_required_1500_at_2_to_1_raises_tlc_minimum() {
    let plan = plan(&combined(1500, ratio(2, 1), 3), None).unwrap();
    assert_eq!(sizes(&plan, Tlc), vec![500, 500]);
    assert_eq!(sizes(&plan, Qlc), vec![500]);
}

#[test]
fn minimum_viable_1152_at_1_to_2_is_three_drives_of_384() {
    let plan = plan(&combined(1152, ratio(1, 2), 3), None).unwrap();
    assert_eq!(sizes(&plan, Tlc), vec![384]);
    assert_eq!(sizes(&plan, Qlc), vec![384, 384]);
    // one GiB less is below the minimum for 3 cores
    assert_eq!(
        plan_kind(&combined(1151, ratio(1, 2), 3)),
        "insufficient_total_capacity"
    );
}

#[test]
fn uneven_2100_at_1_to_2_with_4_cores() {
    let plan = plan(&combined(2100, ratio(1, 2), 4), None).unwrap();
    assert_eq!(sizes(&plan, Tlc), vec![700]);
    assert_eq!(sizes(&plan, Qlc), vec![467, 467, 466]);
    assert_eq!(plan.total_gib(), 2100);
}

#[test]
fn tlc_only_3000_with_3_cores() {
    for enforce in [true, false] {
        let request = Request::with_ratio(3000, ratio(1, 0), 3).enforce_per_type(enforce);
        let plan = plan(&request, None).unwrap();
        assert_eq!(sizes(&plan, Tlc), vec![1000, 1000, 1000]);
        assert!(plan.qlc.is_none(), "QLC is skipped, not planned empty");
    }
}

#[test]
fn qlc_only_uses_drive_cores_as_its_minimum() {
    let plan = plan(&combined(3000, ratio(0, 1), 3), None).unwrap();
    assert!(plan.tlc.is_none());
    assert_eq!(sizes(&plan, Qlc), vec![1000, 1000, 1000]);
}

#[test]
fn default_ratio_is_1_to_10() {
    assert_eq!(Ratio::default(), ratio(1, 10));
    let request = Request::with_ratio(11000, Ratio::default(), 2);
    assert_eq!(
        request.split(),
        Split {
            tlc_gib: 1000,
            qlc_gib: 10000
        }
    );
}

#[test]
fn multi_cluster_example_needs_an_explicit_ratio_under_the_default_1_to_10() {
    // The seed's prod-cluster (6000 GiB, 3 cores) names no ratio, so 1:10 applies:
    // TLC gets 545 GiB, below 3 × 384. vdrive says so rather than guess a ratio.
    let err = plan(&per_type(6000, Ratio::default(), 3), None).unwrap_err();
    assert!(err.to_string().starts_with("insufficient TLC capacity: with 3 drive cores and enforceMinDrivesPerTypePerCore=true, need at least 1152 GiB TLC (minimum 3 drives × 384 GiB each), but only 545 GiB configured."), "{err}");
    // With the combined constraint the same request plans: one TLC drive, QLC carries the rest.
    let plan = plan(&combined(6000, Ratio::default(), 3), None).unwrap();
    assert_eq!(sizes(&plan, Tlc), vec![545]);
    assert_eq!(sizes(&plan, Qlc), vec![2728, 2727]);
}

// ---- fit-to-physical --------------------------------------------------------

#[test]
fn heterogeneous_drives_fall_back_to_fit_to_physical() {
    let physical = drives(&[(Tlc, 20000), (Tlc, 500), (Tlc, 500)]);
    let plan = plan(&per_type(21000, ratio(1, 0), 3), Some(&physical)).unwrap();
    let tlc = plan.tlc.as_ref().unwrap();
    assert_eq!(tlc.strategy, Strategy::FitToPhysical);
    assert_eq!(tlc.sizes_gib, vec![20000, 500, 500]);
    let on: Vec<(u64, usize)> = plan
        .placements
        .iter()
        .map(|p| (p.size_gib, p.physical_index))
        .collect();
    assert_eq!(on, vec![(20000, 0), (500, 1), (500, 2)]);
}

#[test]
fn fit_to_physical_splits_the_largest_drive_for_4_cores() {
    let physical = drives(&[(Tlc, 20000), (Tlc, 500), (Tlc, 500)]);
    let plan = plan(&per_type(21000, ratio(1, 0), 4), Some(&physical)).unwrap();
    assert_eq!(sizes(&plan, Tlc), vec![10000, 10000, 500, 500]);
    let on: Vec<(u64, usize, u64)> = plan
        .placements
        .iter()
        .map(|p| (p.size_gib, p.physical_index, p.offset_gib))
        .collect();
    assert_eq!(
        on,
        vec![(10000, 0, 0), (10000, 0, 10000), (500, 1, 0), (500, 2, 0)]
    );
}

// ---- Mode 1 -------------------------------------------------------------------

#[test]
fn fixed_mode_gives_num_drives_tlc_drives_of_drive_capacity() {
    // "Each drive container requests 6 TLC virtual drives × 1000 GiB = 6000 GiB"
    let plan = plan(&Request::fixed(6, 1000, 3), None).unwrap();
    assert_eq!(sizes(&plan, Tlc), vec![1000; 6]);
    assert!(plan.qlc.is_none());
    assert_eq!(plan.total_gib(), 6000);
}

#[test]
fn fixed_mode_bounds() {
    assert_eq!(plan_kind(&Request::fixed(2, 1000, 3)), "invalid_argument");
    assert_eq!(plan_kind(&Request::fixed(25, 1000, 3)), "invalid_argument");
    assert_eq!(plan_kind(&Request::fixed(24, 1000, 3)), "ok");
    let err = plan(&Request::fixed(6, 100, 3), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "driveCapacity (100 GiB) is below the minimum virtual drive size of 384 GiB. Increase driveCapacity"
    );
}

#[test]
fn fixed_mode_places_on_tlc_drives_only() {
    let physical = drives(&[(Qlc, 100000), (Tlc, 3000), (Tlc, 3000)]);
    let plan = plan(&Request::fixed(6, 1000, 3), Some(&physical)).unwrap();
    let on: Vec<usize> = plan.placements.iter().map(|p| p.physical_index).collect();
    assert_eq!(on, vec![1, 2, 1, 2, 1, 2]);
    let err = plan_err(&Request::fixed(7, 1000, 3), &physical);
    assert_eq!(
        err.to_string(),
        "Insufficient TLC drives: need 7000 GiB, available 6000 GiB"
    );
}

// ---- capacity errors with physical drives ------------------------------------------

#[test]
fn insufficient_drive_capacity_message() {
    // "4 physical drives × 3840 GiB … Cluster A 6000, Cluster B 5000, Available: 4360"
    let physical = drives(&[(Tlc, 0), (Tlc, 0), (Tlc, 1000), (Tlc, 3360)]);
    let err = plan_err(&per_type(8000, ratio(1, 0), 1), &physical);
    assert_eq!(err.kind(), "insufficient_drive_capacity");
    assert_eq!(
        err.to_string(),
        "Insufficient drive capacity: need 8000 GiB, available 4360 GiB"
    );
}

#[test]
fn insufficient_drives_of_one_type_message() {
    let physical = drives(&[(Tlc, 3000), (Qlc, 30000)]);
    let err = plan_err(&per_type(6000, ratio(1, 0), 3), &physical);
    assert_eq!(err.kind(), "insufficient_drives");
    assert_eq!(
        err.to_string(),
        "Insufficient TLC drives: need 6000 GiB, available 3000 GiB"
    );
}

#[test]
fn total_capacity_is_checked_before_per_type_capacity() {
    let physical = drives(&[(Tlc, 100), (Qlc, 100)]);
    assert_eq!(
        plan_err(&per_type(6000, ratio(1, 0), 1), &physical).kind(),
        "insufficient_drive_capacity"
    );
}

#[test]
fn validation_comes_before_any_look_at_physical_drives() {
    assert_eq!(
        plan_err(&per_type(5000, ratio(4, 1), 5), &[]).kind(),
        "insufficient_type_capacity"
    );
}

#[test]
fn no_layout_fits_names_type_capacity_and_largest_free_extents() {
    // 2000 GiB free in total, but in pieces of 300: no virtual drive of ≥ 384 fits.
    let physical: Vec<FreeDrive> = (0..4)
        .map(|i| FreeDrive {
            drive_type: Tlc,
            extents: vec![Extent::new(0, 300), Extent::new(400 + i, 200)],
        })
        .collect();
    let err = plan_err(&per_type(1000, ratio(1, 0), 1), &physical);
    assert_eq!(err.kind(), "no_layout_fits");
    assert_eq!(
        err.to_string(),
        "no layout fits: cannot place 1000 GiB of TLC as 1 to 8 virtual drives of at least 384 GiB each on this node's TLC drives (largest free extents: 300, 300, 300, 300 GiB). Request less capacity, free or add TLC drives, or allow more virtual drives per core"
    );
}

#[test]
fn no_layout_without_physical_drives_explains_the_split() {
    // combined, 1:10 of 1200 → TLC 109 GiB can never be a 384 GiB drive
    let err = plan(&combined(1200, ratio(1, 10), 3), None).unwrap_err();
    assert_eq!(err.kind(), "no_layout_fits");
    assert!(
        err.to_string()
            .starts_with("no layout fits: 109 GiB of TLC cannot be split into"),
        "{err}"
    );
}

// ---- placement rules --------------------------------------------------------

#[test]
fn placement_puts_each_drive_on_the_drive_with_most_free_space() {
    let physical = drives(&[(Tlc, 1000), (Tlc, 3000), (Tlc, 3000)]);
    let plan = plan(&per_type(3000, ratio(1, 0), 3), Some(&physical)).unwrap();
    let on: Vec<usize> = plan.placements.iter().map(|p| p.physical_index).collect();
    // 3000 and 3000 tie: listed order; then drive 1 has 2000, drive 2 has 2000 → drive 1.
    assert_eq!(on, vec![1, 2, 1]);
}

#[test]
fn placement_chooses_the_best_fitting_extent_inside_a_drive() {
    let physical = vec![FreeDrive {
        drive_type: Tlc,
        extents: vec![Extent::new(0, 2000), Extent::new(3000, 500)],
    }];
    let plan = plan(&per_type(450, ratio(1, 0), 1).with_min(1), Some(&physical)).unwrap();
    assert_eq!(
        plan.placements[0].offset_gib, 3000,
        "the 500 GiB hole, not the 2000 GiB one"
    );
}

#[test]
fn even_distribution_is_tried_with_more_drives_before_fit_to_physical() {
    // 3 drives of 700 cannot hold 2 × 1050, but 3 × 700 fit one per drive.
    let physical = drives(&[(Tlc, 700), (Tlc, 700), (Tlc, 700)]);
    let plan = plan(&per_type(2100, ratio(1, 0), 2), Some(&physical)).unwrap();
    let tlc = plan.tlc.as_ref().unwrap();
    assert_eq!(
        (tlc.strategy, tlc.sizes_gib.clone()),
        (Strategy::Even, vec![700, 700, 700])
    );
}

#[test]
fn qlc_drive_budget_is_what_tlc_left() {
    // 1 core, max 2 drives: TLC takes 1, QLC may take only 1 more. QLC's 2000 GiB on
    // drives of 1000 needs 2 → no layout, and the message says how many remained.
    let mut request = per_type(2400, ratio(1, 5), 1);
    request.max_virtual_drives_per_core = 2;
    let physical = drives(&[(Tlc, 1000), (Qlc, 1000), (Qlc, 1000)]);
    let err = plan_err(&request, &physical);
    assert_eq!(err.kind(), "no_layout_fits");
    assert!(
        err.to_string()
            .contains("2000 GiB of QLC as 1 virtual drive of at least"),
        "{err}"
    );
}

#[test]
fn invalid_requests_are_invalid_arguments() {
    assert_eq!(
        plan_kind(&per_type(1000, ratio(0, 0), 1)),
        "invalid_argument"
    );
    assert_eq!(
        plan_kind(&per_type(1000, ratio(1, 0), 0)),
        "invalid_argument"
    );
    assert_eq!(plan_kind(&per_type(0, ratio(1, 0), 1)), "invalid_argument");
    assert_eq!(
        plan_kind(&per_type(1000, ratio(1, 0), 1).with_min(0)),
        "invalid_argument"
    );
}

// ---- helpers --------------------------------------------------------------------

impl Request {
    fn with_min(mut self, min: u64) -> Self {
        self.min_drive_gib = min;
        self
    }
}

fn plan_kind(request: &Request) -> &'static str {
    match plan(request, None) {
        Ok(_) => "ok",
        Err(e) => e.kind(),
    }
}

fn plan_err(request: &Request, physical: &[FreeDrive]) -> AllocError {
    match plan(request, Some(physical)) {
        Ok(plan) => panic!("expected an error, got {plan:?}"),
        Err(e) => e,
    }
}

#[test]
fn combined_failures_name_the_type_that_did_not_fit() {
    // TLC places at every minimum; the QLC drives are too small: the error is QLC's.
    let physical = drives(&[(Tlc, 2000), (Qlc, 300), (Qlc, 300)]);
    let err = plan_err(&combined(1500, ratio(2, 1), 3), &physical);
    assert!(err.to_string().contains("500 GiB of QLC"), "{err}");
    // TLC cannot place even one drive: the error is TLC's, at its first minimum.
    let err = plan(&combined(3000, ratio(1, 10), 3), None).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("no layout fits: 272 GiB of TLC cannot be split into 1 to 24"),
        "{err}"
    );
}

#[test]
fn huge_inputs_are_refused_or_saturate_instead_of_overflowing() {
    assert_eq!(
        plan_kind(&per_type(7000, ratio(1, 0), 2).with_min(u64::MAX)),
        "invalid_argument"
    );
    let physical = drives(&[(Tlc, u64::MAX), (Tlc, u64::MAX)]);
    assert!(plan(&per_type(1000, ratio(1, 0), 1), Some(&physical)).is_ok());
}

// ---- growing a volume by new virtual drives -------------------------------------

fn pieces(placements: &[Placement]) -> Vec<(usize, u64, u64)> {
    placements
        .iter()
        .map(|p| (p.physical_index, p.offset_gib, p.size_gib))
        .collect()
}

#[test]
fn an_extension_that_fits_one_extent_goes_best_fit_on_the_roomiest_drive() {
    let drives = vec![
        FreeDrive {
            drive_type: Tlc,
            extents: vec![Extent::new(0, 50), Extent::new(100, 300)],
        },
        FreeDrive {
            drive_type: Tlc,
            extents: vec![Extent::new(10, 500), Extent::new(600, 120)],
        },
        FreeDrive::whole(Qlc, 5000),
    ];
    // drive 1 has the largest extent; inside it the 120 GiB one fits best
    let placed = place_extension(&drives, Tlc, 100).unwrap();
    assert_eq!(pieces(&placed), [(1, 600, 100)]);
    assert!(placed.iter().all(|p| p.drive_type == Tlc));
}

#[test]
fn an_extension_too_big_for_any_extent_is_split_largest_first() {
    let drives = vec![
        FreeDrive {
            drive_type: Tlc,
            extents: vec![Extent::new(0, 50), Extent::new(100, 300)],
        },
        FreeDrive::whole(Qlc, 5000),
        FreeDrive {
            drive_type: Tlc,
            extents: vec![Extent::new(10, 200)],
        },
    ];
    let placed = place_extension(&drives, Tlc, 520).unwrap();
    assert_eq!(pieces(&placed), [(0, 100, 300), (2, 10, 200), (0, 0, 20)]);
    assert_eq!(place_extension(&drives, Tlc, 550).map(|p| p.len()), Some(3));
    assert_eq!(
        place_extension(&drives, Tlc, 551),
        None,
        "only 550 GiB of TLC"
    );
    assert_eq!(
        place_extension(&drives, Qlc, 5000).map(|p| p.len()),
        Some(1)
    );
    assert_eq!(place_extension(&[], Tlc, 1), None);
}
