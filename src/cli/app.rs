//! The `vdrive` command line: its commands, and the one path every command
//! takes from arguments to exit code (see [`super::outcome`]).

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use super::all_in_one::{self, AllInOneArgs};
use super::controller::{self, ControllerArgs};
use super::csi::{self, CsiArgs, CsiCommand};
use super::doctor::{self, DoctorArgs};
use super::drives::{self, DrivesArgs};
use super::kubectl::{self, KubectlArgs, PluginCli};
use super::node::{self, NodeArgs};
use super::orphans::{self, OrphansArgs};
use super::outcome::{Answer, EXIT_ERROR, Failure};
use super::output::{self, Format};
use super::plan::{self, PlanArgs};
use super::pools::{self, PoolsArgs};
use super::sign::{self, SignArgs, SignCommand};

/// Said in `vdrive --help`, and kept true by tests/cli_exit.rs.
pub const CONVENTIONS: &str = "\
Output and exit codes (every command):
  The answer goes to stdout (-o json or -o yaml where a command has one),
  diagnostics to stderr. Under -o json|yaml an error is also printed on stdout
  as {\"error\": {\"kind\": ..., \"message\": ...}}. An older --json flag
  is the same as -o json.
  0  yes: done, healthy, nothing found; a daemon shut down cleanly
  1  a definite no: not healthy, orphans found, no plan fits
  2  a usage or operational error: bad flags, no cluster, an unreachable API";

#[derive(Debug, Parser)]
#[command(
    name = "vdrive",
    version,
    about = "Shared NVMe drives carved into accounted virtual drives",
    after_help = CONVENTIONS
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
    /// The `kubectl vdrive` plugin's commands (drives, claims, pools, orphans),
    /// for when the binary is not installed as kubectl-vdrive.
    Kubectl(KubectlArgs),
}

impl Command {
    /// The format the command's answer (or failure) is printed in.
    fn format(&self) -> Format {
        match self {
            Command::Plan(args) => args.output.format(),
            Command::Orphans(args) => args.output.format(),
            Command::Pools(args) => args.options().output.format(),
            Command::Sign(SignArgs {
                command: Some(SignCommand::Show { output, .. }),
                ..
            }) => output.format(),
            Command::Csi(CsiArgs {
                command: CsiCommand::ListVolumes { output },
                ..
            }) => output.format(),
            Command::Kubectl(args) => args.output,
            Command::Doctor(args) => args.output.format(),
            _ => Format::Text,
        }
    }

    fn is_daemon(&self) -> bool {
        matches!(
            self,
            Command::AllInOne(_) | Command::Controller(_) | Command::Node(_)
        )
    }
}

/// `vdrive`'s main: parse, run on one runtime, print, exit. Started as
/// `kubectl-vdrive`, the command line is the plugin's.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let as_plugin = args.first().is_some_and(|a| kubectl::invoked_as_plugin(a));
    let parsed = if as_plugin {
        PluginCli::try_parse_from(&args).map(|plugin| Command::Kubectl(plugin.args))
    } else {
        Cli::try_parse_from(&args).map(|cli| cli.command)
    };
    let command = match parsed {
        Ok(command) => command,
        Err(err) => return usage_error(&err, &args),
    };
    let format = command.format();
    if command.is_daemon() {
        init_logging();
    }
    let result = runtime().and_then(|rt| rt.block_on(dispatch(command)));
    output::emit(result, format)
}

async fn dispatch(command: Command) -> Result<Answer, Failure> {
    let finished = |()| Answer::yes("");
    match command {
        Command::Plan(args) => plan::run(&args),
        Command::Sign(args) => sign::run(args),
        Command::AllInOne(args) => Ok(all_in_one::run(args).await.map(finished)?),
        Command::Controller(args) => Ok(controller::run(args).await.map(finished)?),
        Command::Node(args) => Ok(node::run(args).await.map(finished)?),
        Command::Orphans(args) => orphans::run(args).await,
        Command::Pools(args) => pools::run(args).await,
        Command::Csi(args) => csi::run(args).await,
        Command::Drives(args) => Ok(drives::run(args).await.map(Answer::yes)?),
        Command::Kubectl(args) => kubectl::run(args).await,
        Command::Doctor(args) => doctor::run(args).await,
    }
}

/// The one runtime of the process, built once whatever the command.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::operational(format!("cannot start the runtime: {e}")))
}

/// Daemons log to stderr: stdout is for answers, which a daemon has none of.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
}

/// Help and version exit 0; a command line clap refused exits 2, reported
/// in the format it asked for.
pub fn usage_error(err: &clap::Error, args: &[OsString]) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    let words: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let format = output::sniff(&words);
    if format == Format::Text {
        let _ = err.print();
        return ExitCode::from(EXIT_ERROR);
    }
    let rendered = err.to_string();
    let message = rendered
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ");
    output::emit(Err(Failure::usage(message)), format)
}
