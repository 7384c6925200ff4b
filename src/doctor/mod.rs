//! `vdrive doctor`: checks a live cluster's vdrive installation. Each check is a
//! small async function over a [`kube::Client`] that reads what it needs and
//! hands the objects to a plain verdict function (unit-tested on constructed
//! objects), which turns them into [`Finding`]s: what is wrong and the command
//! that fixes it.

mod controller;
mod driver;
mod finding;
mod nodes;
mod pods;
mod pools;
mod probe;

use std::time::Duration;

use kube::Client;

pub use finding::{Finding, Report, Status};
pub use probe::ProbeOptions;

use crate::pools::PoolSettings;

/// Where and under which names the chart installed vdrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    /// The namespace the controller and node plugin run in.
    pub namespace: String,
    /// The Helm release name; the chart names its objects after it.
    pub release: String,
}

/// The chart's chart name, part of its object names.
const CHART: &str = "vdrive";

impl Installation {
    /// The chart's `vdrive.fullname`: the release name when it contains the
    /// chart's name, else `<release>-vdrive`.
    fn fullname(&self) -> String {
        if self.release.contains(CHART) {
            self.release.clone()
        } else {
            format!("{}-{CHART}", self.release)
        }
    }

    /// The controller's Deployment.
    pub fn controller(&self) -> String {
        format!("{}-controller", self.fullname())
    }

    /// The node plugin's DaemonSet.
    pub fn node_plugin(&self) -> String {
        format!("{}-node", self.fullname())
    }

    /// The label selector of one component's pods (the chart's selectorLabels).
    pub fn selector(&self, component: &str) -> String {
        format!(
            "app.kubernetes.io/name={CHART},app.kubernetes.io/instance={},app.kubernetes.io/component={component}",
            self.release
        )
    }

    /// `kubectl -n <namespace>`, the start of most fixes.
    fn kubectl(&self) -> String {
        format!("kubectl -n {}", self.namespace)
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub installation: Installation,
    /// The pool settings the controller runs with (the chart's values).
    pub settings: PoolSettings,
    /// How long to wait for the cluster's nodes to be read.
    pub read_timeout: Duration,
    /// Create and delete a volume through the provisioner too.
    pub probe: Option<ProbeOptions>,
}

/// Runs every check. Err only when the API server cannot be asked at all;
/// a check that cannot read what it needs reports that as its failure.
pub async fn run(client: &Client, options: &Options) -> Result<Report, String> {
    client
        .apiserver_version()
        .await
        .map_err(|e| format!("cannot reach the Kubernetes API server: {e}"))?;
    let inst = &options.installation;
    let mut report = Report::default();
    report.add(driver::csi_driver(client).await);
    report.add(controller::controller(client, inst).await);
    report.add(nodes::node_plugins(client, inst).await);
    report.add(nodes::drives(client, &options.settings).await);
    report.add(nodes::storage_capacity(client, inst).await);
    let (pools, orphans) = pools::pools_and_orphans(client, options).await;
    report.add(pools);
    report.add(orphans);
    if let Some(probe) = &options.probe {
        report.add(probe::probe(client, inst, probe).await);
    }
    Ok(report)
}

/// The finding of a check that could not read what it needs: most often the
/// account lacks a permission.
fn unreadable(check: &'static str, what: &str, err: impl std::fmt::Display) -> Finding {
    Finding::fail(
        check,
        format!("cannot read {what}: {err}"),
        format!(
            "let the account vdrive doctor runs as get and list {what} (the chart's {CHART}-doctor ClusterRole)"
        ),
    )
}

/// One ok finding naming the subjects that passed, after the failures: a
/// healthy cluster reads as a few lines, a broken one names each bad subject.
fn passed_and_failed(
    check: &'static str,
    passed: &[String],
    what_passed: &str,
    mut problems: Vec<Finding>,
) -> Vec<Finding> {
    if !passed.is_empty() {
        problems.insert(
            0,
            Finding::ok(check, format!("{what_passed}: {}", passed.join(", "))),
        );
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::Installation;

    #[test]
    fn names_follow_the_chart() {
        let default = Installation {
            namespace: "vdrive".into(),
            release: "vdrive".into(),
        };
        assert_eq!(default.controller(), "vdrive-controller");
        assert_eq!(default.node_plugin(), "vdrive-node");
        let other = Installation {
            namespace: "storage".into(),
            release: "disks".into(),
        };
        assert_eq!(other.controller(), "disks-vdrive-controller");
        assert_eq!(
            other.selector("node"),
            "app.kubernetes.io/name=vdrive,app.kubernetes.io/instance=disks,app.kubernetes.io/component=node"
        );
    }
}
