//! `vdrive doctor` (and `kubectl vdrive doctor`): checks a live cluster's
//! vdrive and answers with the findings, each with what is wrong and the
//! command that fixes it: exit 0 when every check passed, 1 when one failed,
//! 2 when the checks could not run (bad flags, no API).

use std::time::Duration;

use clap::Args;

use super::kubectl::PluginAnswer;
use super::kubectl::connect::{Cluster, KubeArgs};
use super::outcome::{Answer, Failure};
use super::output::OutputArgs;
use super::settings::SettingsArgs;
use crate::doctor::{self, Installation, Options, ProbeOptions, Report};

/// The namespace vdrive runs in when `-n` does not say (the chart's default).
const DEFAULT_NAMESPACE: &str = "vdrive";

/// `vdrive doctor`: the checks, where to find the cluster, and the output.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(flatten)]
    pub checks: DoctorChecks,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// What to check; `kubectl vdrive doctor` takes these, with kubectl's flags
/// (there `-n` names the namespace vdrive runs in, default `vdrive`).
#[derive(Debug, Clone, Args)]
pub struct DoctorChecks {
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
    /// The pool settings the controller runs with (the chart's values).
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// How long the Nodes may take to be read.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The findings; yes when every check passed, no when one failed.
pub async fn run(args: DoctorArgs) -> Result<Answer, Failure> {
    let cluster = args.kube.connect().await?;
    args.checks.answer(&cluster).await
}

impl PluginAnswer for DoctorChecks {
    async fn answer(self, cluster: &Cluster) -> Result<Answer, Failure> {
        let namespace = cluster
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        let report = self.report(cluster, namespace).await?;
        Ok(Answer::verdict(report.passed(), report.render_text()).with_data(report.to_json()))
    }
}

impl DoctorChecks {
    async fn report(&self, cluster: &Cluster, namespace: String) -> Result<Report, String> {
        let options = Options {
            installation: Installation {
                namespace,
                release: self.release.clone(),
            },
            settings: self.settings.pools()?,
            read_timeout: READ_TIMEOUT,
            probe: self.probe.then(|| ProbeOptions {
                storage_class: self.storage_class.clone(),
                timeout: self.probe_timeout,
            }),
        };
        doctor::run(&cluster.client, &options).await
    }
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
