//! The `vdrive` command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use vdrive::cli::plan::{self, PlanArgs};

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
    /// Plan the virtual drives for a request (the allocator, no side effects).
    Plan(PlanArgs),
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
    }
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
