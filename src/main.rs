//! The `vdrive` command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use vdrive::cli::all_in_one::{self, AllInOneArgs};
use vdrive::cli::controller::{self, ControllerArgs};
use vdrive::cli::csi::{self, CsiArgs};
use vdrive::cli::doctor::{self, DoctorArgs};
use vdrive::cli::drives::{self, DrivesArgs};
use vdrive::cli::node::{self, NodeArgs};
use vdrive::cli::orphans::{self, OrphansArgs};
use vdrive::cli::plan::{self, PlanArgs};
use vdrive::cli::pools::{self, PoolsArgs};
use vdrive::cli::sign::{self, SignArgs};

#[derive(Debug, Parser)]
#[command(
    name = "vdrive",
    version,
    about = "Shared NVMe drives carved into accounted virtual drives"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Controller, node and the embedded ledger in one process: vdrive on one machine.
    AllInOne(AllInOneArgs),
    /// The CSI controller in a cluster: the ledger on the Nodes, pools from labels.
    Controller(ControllerArgs),
    /// The CSI node plugin in a cluster: drives, devices, mounts on this server.
    Node(NodeArgs),
    /// Find claims no PersistentVolume accounts for, and volumes whose claims are gone.
    Orphans(OrphansArgs),
    /// The k8s and vm pools of a cluster (or of a running all-in-one, --api): status and health.
    Pools(PoolsArgs),
    /// Sign drives for shared use, or list the signed ones (`vdrive sign show`).
    Sign(SignArgs),
    /// Reconcile the ledger with the drives' own headers (adopt, forget).
    Drives(DrivesArgs),
    /// Talk CSI to a vdrive socket (create, stage, publish… volumes).
    Csi(CsiArgs),
    /// Plan the virtual drives for a request (the allocator, no side effects).
    Plan(PlanArgs),
    /// Check a live cluster's vdrive: each finding with the command that fixes it.
    Doctor(DoctorArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    match cli.command {
        Command::Plan(args) => {
            let (output, ok) = plan::run(&args);
            if ok {
                println!("{output}");
                ExitCode::SUCCESS
            } else {
                if args.json {
                    println!("{output}");
                } else {
                    eprintln!("{output}");
                }
                ExitCode::FAILURE
            }
        }
        Command::Sign(args) => finish(sign::run(args)),
        Command::AllInOne(args) => {
            init_logging();
            finish(run_async(all_in_one::run(args)).map(|()| String::new()))
        }
        Command::Controller(args) => {
            init_logging();
            finish(run_async(controller::run(args)).map(|()| String::new()))
        }
        Command::Node(args) => {
            init_logging();
            finish(run_async(node::run(args)).map(|()| String::new()))
        }
        Command::Orphans(args) => match run_async(orphans::run(args)) {
            Ok((report, clean)) => {
                println!("{report}");
                if clean {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(err) => finish(Err(err)),
        },
        // The JSON goes to stdout whatever it says; the exit code says unhealthy.
        Command::Pools(args) => match run_async(pools::run(args)) {
            Ok((json, good)) => {
                println!("{json}");
                if good {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(err) => finish(Err(err)),
        },
        Command::Csi(args) => finish(run_async(csi::run(args))),
        Command::Drives(args) => finish(run_async(drives::run(args))),
        Command::Doctor(args) => doctor::run(args),
    }
}

fn run_async<T>(work: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?
        .block_on(work)
}

fn finish(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("vdrive: {err}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

/// With `--json`, bad flags are reported as JSON too, so scripts parse one format.
fn usage_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let wants_json = std::env::args().any(|a| a == "--json");
    let is_help = matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    );
    if wants_json && !is_help {
        let rendered = err.to_string();
        let message = rendered
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ");
        let out =
            serde_json::json!({ "error": { "kind": "invalid_argument", "message": message } });
        println!("{out}");
        return ExitCode::FAILURE;
    }
    let _ = err.print();
    if is_help {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}
