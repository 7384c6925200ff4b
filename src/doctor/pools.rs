//! The pools' health and the orphan check, from the ledger in the Nodes'
//! annotations: the same answers as `vdrive pools health` and `vdrive orphans`.

use kube::Client;

use super::{Finding, Options};
use crate::cluster::orphans::{self, OrphanReport};
use crate::cluster::{KubeStore, Scope};
use crate::ledger::Ledger;
use crate::pools::{Health, HealthReport, cluster_health};

const POOLS_CHECK: &str = "pools";
const ORPHANS_CHECK: &str = "orphans";

/// Both checks read one ledger, so the Nodes are watched once.
pub async fn pools_and_orphans(client: &Client, options: &Options) -> (Vec<Finding>, Vec<Finding>) {
    let store = KubeStore::start(client.clone(), Scope::AllNodes);
    if let Err(e) = store.wait_ready(options.read_timeout).await {
        let cannot = |check| {
            Finding::fail(
                check,
                format!("cannot read the ledger in the Nodes' annotations: {e}"),
                "let the account vdrive doctor runs as list and watch nodes",
            )
        };
        return (vec![cannot(POOLS_CHECK)], vec![cannot(ORPHANS_CHECK)]);
    }
    let ledger = Ledger::new(store, options.settings);
    let pools = match ledger.survey().await {
        Ok(survey) => pools_verdict(&cluster_health(
            &survey.nodes,
            &survey.quarantined,
            &options.settings,
        )),
        Err(e) => vec![Finding::fail(
            POOLS_CHECK,
            format!("cannot survey the ledger: {e}"),
            "vdrive pools health",
        )],
    };
    let orphans = match orphans::check(&ledger, client).await {
        Ok(report) => orphans_verdict(&report),
        Err(e) => vec![Finding::fail(
            ORPHANS_CHECK,
            format!("cannot compare the ledger with the PersistentVolumes: {e}"),
            "let the account vdrive doctor runs as list persistentvolumes and persistentvolumeclaims",
        )],
    };
    (pools, orphans)
}

/// Errors fail, warnings warn; each message already says what to change.
pub fn pools_verdict(report: &HealthReport) -> Vec<Finding> {
    let details = "vdrive pools health; vdrive pools status";
    let mut findings = Vec::new();
    for error in &report.errors {
        findings.push(Finding::fail(POOLS_CHECK, error.clone(), details));
    }
    for warning in &report.warnings {
        findings.push(Finding::warn(POOLS_CHECK, warning.clone(), details));
    }
    if findings.is_empty() {
        let word = |h: Health| match h {
            Health::Healthy => "healthy",
            Health::Warning => "warning",
            Health::Critical => "critical",
        };
        let summary = format!(
            "k8s pool {}, vm pool {}",
            word(report.pools.k8s_pool),
            word(report.pools.vm_pool)
        );
        // A pool over a threshold always comes with a message; this is the
        // fallback should one not.
        findings.push(match report.status {
            Health::Healthy => Finding::ok(POOLS_CHECK, summary),
            Health::Warning => Finding::warn(POOLS_CHECK, summary, details),
            Health::Critical => Finding::fail(POOLS_CHECK, summary, details),
        });
    }
    findings
}

pub fn orphans_verdict(report: &OrphanReport) -> Vec<Finding> {
    let mut findings = Vec::new();
    for o in &report.orphaned_claims {
        findings.push(
            Finding::fail(
                ORPHANS_CHECK,
                format!(
                    "volume {} on {} ({} GiB, owner {}) is orphaned: {}",
                    o.volume_id, o.node, o.capacity_gib, o.owner, o.reason
                ),
                "vdrive orphans (to review); vdrive orphans --release (frees the space, erasing it)",
            )
            .on(o.node.clone()),
        );
    }
    for l in &report.lost_volumes {
        findings.push(Finding::fail(
            ORPHANS_CHECK,
            format!(
                "PersistentVolume {} (volume {}, bound to {}) has no claims in the ledger: its data is not protected from reuse",
                l.persistent_volume,
                l.volume_id,
                l.bound_to.as_deref().unwrap_or("nothing")
            ),
            format!(
                "vdrive orphans; kubectl describe pv {} (see the README, Data safety)",
                l.persistent_volume
            ),
        ));
    }
    if findings.is_empty() {
        findings.push(Finding::ok(
            ORPHANS_CHECK,
            "no orphaned claims, no PersistentVolumes without claims",
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::orphans::{LostVolume, OrphanedVolume};
    use crate::doctor::Status;
    use crate::pools::PoolHealths;

    fn health(status: Health, warnings: &[&str], errors: &[&str]) -> HealthReport {
        HealthReport {
            status,
            pools: PoolHealths {
                k8s_pool: status,
                vm_pool: Health::Healthy,
            },
            warnings: warnings.iter().map(|w| w.to_string()).collect(),
            errors: errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    fn statuses(findings: &[Finding]) -> Vec<Status> {
        findings.iter().map(|f| f.status).collect()
    }

    #[test]
    fn pool_errors_fail_and_warnings_warn() {
        assert_eq!(
            statuses(&pools_verdict(&health(Health::Healthy, &[], &[]))),
            [Status::Ok]
        );
        let found = pools_verdict(&health(Health::Critical, &["w"], &["e"]));
        assert_eq!(statuses(&found), [Status::Fail, Status::Warn]);
        assert_eq!(found[0].message, "e");
        assert_eq!(
            statuses(&pools_verdict(&health(Health::Warning, &[], &[]))),
            [Status::Warn]
        );
    }

    #[test]
    fn orphans_and_lost_volumes_fail_with_the_release_command() {
        assert_eq!(
            statuses(&orphans_verdict(&OrphanReport::default())),
            [Status::Ok]
        );
        let report = OrphanReport {
            orphaned_claims: vec![OrphanedVolume {
                volume_id: "v1".into(),
                name: "pvc-1".into(),
                node: "n1".into(),
                owner: "ns:claim".into(),
                capacity_gib: 10,
                reason: "no PersistentVolume".into(),
            }],
            lost_volumes: vec![LostVolume {
                persistent_volume: "pv-2".into(),
                volume_id: "v2".into(),
                bound_to: None,
                uid: None,
            }],
        };
        let found = orphans_verdict(&report);
        assert_eq!(statuses(&found), [Status::Fail, Status::Fail]);
        assert_eq!(found[0].subject.as_deref(), Some("n1"));
        assert!(
            found[0]
                .fix
                .as_deref()
                .is_some_and(|f| f.contains("vdrive orphans --release"))
        );
        assert!(found[1].message.contains("pv-2"));
    }
}
