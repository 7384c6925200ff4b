//! `vdrive plan` as a user runs it: the real binary, its JSON, its exit codes.

use std::process::Command;

use serde_json::{Value, json};

fn vdrive_plan(args: &[&str]) -> (Value, i32) {
    let output = Command::new(env!("CARGO_BIN_EXE_vdrive"))
        .arg("plan")
        .args(args)
        .arg("--json")
        .output()
        .expect("run vdrive");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    (value, output.status.code().unwrap_or(-1))
}

fn ok(args: &[&str]) -> Value {
    let (value, code) = vdrive_plan(args);
    assert_eq!(code, 0, "{value}");
    value
}

/// A plan that fails: bad flags exit 2 (a usage error), a request no layout
/// fits exits 1 (a definite no); either way the error object is on stdout.
fn failure(args: &[&str]) -> (String, String) {
    let (value, code) = vdrive_plan(args);
    let kind = value["error"]["kind"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let want = if kind == "invalid_argument" { 2 } else { 1 };
    assert_eq!(code, want, "{value}");
    let message = value["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (kind, message)
}

#[test]
fn combined_example_7000_at_1_to_4() {
    let plan = ok(&[
        "--capacity",
        "7000",
        "--cores",
        "3",
        "--tlc",
        "1",
        "--qlc",
        "4",
        "--enforce-per-type",
        "false",
    ]);
    assert_eq!(
        plan,
        json!({"tlc": [1400], "qlc": [2800, 2800], "strategy": {"tlc": "even", "qlc": "even"}})
    );
}

#[test]
fn every_combined_example_of_the_seed() {
    let cases: &[(&str, &str, &str, &str, Value, Value)] = &[
        ("1500", "3", "1", "2", json!([500]), json!([500, 500])),
        ("1500", "3", "2", "1", json!([500, 500]), json!([500])),
        ("1152", "3", "1", "2", json!([384]), json!([384, 384])),
        ("2100", "4", "1", "2", json!([700]), json!([467, 467, 466])),
    ];
    for (capacity, cores, tlc, qlc, want_tlc, want_qlc) in cases {
        let plan = ok(&[
            "--capacity",
            capacity,
            "--cores",
            cores,
            "--tlc",
            tlc,
            "--qlc",
            qlc,
            "--enforce-per-type",
            "false",
        ]);
        assert_eq!(
            (&plan["tlc"], &plan["qlc"]),
            (want_tlc, want_qlc),
            "{capacity} GiB {tlc}:{qlc}"
        );
    }
}

#[test]
fn per_type_examples_of_the_seed() {
    let plan = ok(&[
        "--capacity",
        "12000",
        "--cores",
        "6",
        "--tlc",
        "4",
        "--qlc",
        "1",
    ]);
    assert_eq!(
        (&plan["tlc"], &plan["qlc"]),
        (&json!(vec![1600; 6]), &json!(vec![400; 6]))
    );
    let plan = ok(&[
        "--capacity",
        "3000",
        "--cores",
        "3",
        "--tlc",
        "1",
        "--qlc",
        "0",
    ]);
    assert_eq!(
        plan,
        json!({"tlc": [1000, 1000, 1000], "qlc": [], "strategy": {"tlc": "even", "qlc": null}})
    );
    let plan = ok(&[
        "--capacity",
        "7001",
        "--cores",
        "3",
        "--tlc",
        "1",
        "--qlc",
        "0",
    ]);
    assert_eq!(plan["tlc"], json!([2334, 2334, 2333]));
}

#[test]
fn fit_to_physical_examples_with_placements() {
    let drives = [
        "--physical",
        "tlc:20000",
        "--physical",
        "tlc:500",
        "--physical",
        "tlc:500",
    ];
    let mut args = vec![
        "--capacity",
        "21000",
        "--cores",
        "3",
        "--tlc",
        "1",
        "--qlc",
        "0",
    ];
    args.extend(drives);
    assert_eq!(
        ok(&args),
        json!({
            "tlc": [20000, 500, 500],
            "qlc": [],
            "strategy": {"tlc": "fit-to-physical", "qlc": null},
            "placements": [
                {"type": "tlc", "size_gib": 20000, "physical_index": 0},
                {"type": "tlc", "size_gib": 500, "physical_index": 1},
                {"type": "tlc", "size_gib": 500, "physical_index": 2}
            ]
        })
    );
    args[3] = "4";
    assert_eq!(ok(&args)["tlc"], json!([10000, 10000, 500, 500]));
}

#[test]
fn physical_index_counts_all_drives_of_both_types() {
    let plan = ok(&[
        "--capacity",
        "2000",
        "--cores",
        "1",
        "--tlc",
        "1",
        "--qlc",
        "1",
        "--enforce-per-type",
        "false",
        "--physical",
        "qlc:5000",
        "--physical",
        "tlc:5000",
    ]);
    assert_eq!(
        plan["placements"],
        json!([
            {"type": "tlc", "size_gib": 1000, "physical_index": 1},
            {"type": "qlc", "size_gib": 1000, "physical_index": 0}
        ])
    );
}

#[test]
fn fixed_mode() {
    let plan = ok(&[
        "--cores",
        "3",
        "--num-drives",
        "6",
        "--drive-capacity",
        "1000",
    ]);
    assert_eq!(plan["tlc"], json!(vec![1000; 6]));
    let (kind, message) = failure(&[
        "--cores",
        "3",
        "--num-drives",
        "6",
        "--drive-capacity",
        "1000",
        "--tlc",
        "1",
        "--qlc",
        "0",
    ]);
    assert_eq!(kind, "invalid_argument");
    assert!(
        message.contains("cannot be combined with --tlc/--qlc"),
        "{message}"
    );
}

#[test]
fn default_ratio_is_1_to_10() {
    let plan = ok(&["--capacity", "11000", "--cores", "2"]);
    assert_eq!(
        (&plan["tlc"], &plan["qlc"]),
        (&json!([500, 500]), &json!([5000, 5000]))
    );
}

#[test]
fn seed_error_messages() {
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &[
                "--capacity",
                "5000",
                "--cores",
                "5",
                "--tlc",
                "4",
                "--qlc",
                "1",
            ],
            "insufficient_type_capacity",
            "insufficient QLC capacity: with 5 drive cores and enforceMinDrivesPerTypePerCore=true, need at least 1920 GiB QLC (minimum 5 drives × 384 GiB each), but only 1000 GiB configured. Increase containerCapacity or adjust driveTypesRatio, or set enforceMinDrivesPerTypePerCore=false",
        ),
        (
            &[
                "--capacity",
                "1500",
                "--cores",
                "5",
                "--tlc",
                "1",
                "--qlc",
                "2",
                "--enforce-per-type",
                "false",
            ],
            "insufficient_total_capacity",
            "insufficient total capacity: with 5 drive cores, need at least 1920 GiB total (minimum 5 drives × 384 GiB each), but only 1500 GiB available. Increase containerCapacity",
        ),
        (
            &[
                "--capacity",
                "8000",
                "--cores",
                "1",
                "--tlc",
                "1",
                "--qlc",
                "0",
                "--physical",
                "tlc:1000",
                "--physical",
                "tlc:3360",
            ],
            "insufficient_drive_capacity",
            "Insufficient drive capacity: need 8000 GiB, available 4360 GiB",
        ),
        (
            &[
                "--capacity",
                "6000",
                "--cores",
                "3",
                "--tlc",
                "1",
                "--qlc",
                "0",
                "--physical",
                "tlc:3000",
                "--physical",
                "qlc:30000",
            ],
            "insufficient_drives",
            "Insufficient TLC drives: need 6000 GiB, available 3000 GiB",
        ),
    ];
    for (args, want_kind, want_message) in cases {
        let (kind, message) = failure(args);
        assert_eq!(
            (kind.as_str(), message.as_str()),
            (*want_kind, *want_message)
        );
    }
}

#[test]
fn no_layout_fits_names_the_largest_free_spaces() {
    let (kind, message) = failure(&[
        "--capacity",
        "1200",
        "--cores",
        "1",
        "--tlc",
        "1",
        "--qlc",
        "0",
        "--max-drives-per-core",
        "1",
        "--physical",
        "tlc:700",
        "--physical",
        "tlc:600",
    ]);
    assert_eq!(kind, "no_layout_fits");
    assert!(
        message.contains("1200 GiB of TLC") && message.contains("700, 600 GiB"),
        "{message}"
    );
}

#[test]
fn bad_flags_are_invalid_arguments_in_json() {
    for args in [
        &["--capacity", "lots", "--cores", "1"][..],
        &["--capacity", "100", "--cores", "1", "--physical", "slc:100"][..],
        &["--capacity", "100", "--cores", "0"][..],
        &[
            "--capacity",
            "100",
            "--cores",
            "1",
            "--tlc",
            "0",
            "--qlc",
            "0",
        ][..],
        &["--cores", "1"][..],
    ] {
        let (kind, message) = failure(args);
        assert_eq!(kind, "invalid_argument", "{args:?}: {message}");
        assert!(!message.is_empty());
    }
}

#[test]
fn the_table_is_readable_and_errors_go_to_stderr() {
    let output = Command::new(env!("CARGO_BIN_EXE_vdrive"))
        .args([
            "plan",
            "--capacity",
            "2100",
            "--cores",
            "4",
            "--tlc",
            "1",
            "--qlc",
            "2",
            "--enforce-per-type",
            "false",
        ])
        .output()
        .expect("run vdrive");
    assert!(output.status.success());
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("| QLC  | 3      | even            | 467, 467, 466"),
        "{table}"
    );
    assert!(
        table.contains("Total: 4 virtual drives, 2100 GiB"),
        "{table}"
    );

    let output = Command::new(env!("CARGO_BIN_EXE_vdrive"))
        .args(["plan", "--capacity", "100", "--cores", "1"])
        .output()
        .expect("run vdrive");
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&output.stderr).starts_with("error: insufficient TLC capacity")
    );
}
