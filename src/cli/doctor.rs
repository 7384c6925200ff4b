//! `vdrive doctor`: checks a live cluster's vdrive and prints the findings,
//! each with what is wrong and the command that fixes it. The answer goes to
//! stdout, diagnostics to stderr; the exit code is 0 when every check passed,
//! 1 when one failed, 2 when the checks could not run (bad flags, no API).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::settings::SettingsArgs;
use crate::cluster;
use crate::doctor::{self, Installation, Options, ProbeOptions, Report};

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// A kubeconfig (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current one).
    #[arg(long)]
    pub context: Option<String>,
    /// The namespace vdrive runs in.
    #[arg(short = 'n', long, default_value = "vdrive")]
    pub namespace: String,
    /// The Helm release vdrive was installed as (its objects are named after it).
    #[arg(long, default_value = "vdrive")]
    pub release: String,
    /// Also create and delete a small volume through the provisioner.
    #[arg(long)]
    pub probe: bool,
    /// How long the probe waits for its volume to be bound, and to be gone.
    #[arg(long, default_value = "120s", value_parser = parse_duration, value_name = "DURATION")]
    pub probe_timeout: Duration,
    /// The StorageClass the probe's volume is of (one that deletes its volumes).
    #[arg(long, default_value = "k8s-pool-storage")]
    pub storage_class: String,
    /// text: one line per finding; json: the findings as one JSON object.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// The pool settings the controller runs with (the chart's values).
    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// How long the Nodes may take to be read.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(args: DoctorArgs) -> ExitCode {
    match report(&args) {
        Ok(report) => {
            let out = match args.output {
                Output::Text => report.render_text(),
                Output::Json => report.to_json().to_string(),
            };
            println!("{out}");
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(err) => {
            eprintln!("vdrive doctor: {err}");
            ExitCode::from(2)
        }
    }
}

fn report(args: &DoctorArgs) -> Result<Report, String> {
    let options = Options {
        installation: Installation {
            namespace: args.namespace.clone(),
            release: args.release.clone(),
        },
        settings: args.settings.pools()?,
        read_timeout: READ_TIMEOUT,
        probe: args.probe.then(|| ProbeOptions {
            storage_class: args.storage_class.clone(),
            timeout: args.probe_timeout,
        }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let client =
            cluster::client_in_context(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
        doctor::run(&client, &options).await
    })
}

/// `90s`, `2m` or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.strip_suffix('m') {
        Some(minutes) => (minutes, 60),
        None => (text.strip_suffix('s').unwrap_or(text), 1),
    };
    number
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .map(|n| Duration::from_secs(n * unit))
        .ok_or_else(|| format!("{text:?}: give a duration such as 90s or 2m"))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse_in_seconds_or_minutes() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
