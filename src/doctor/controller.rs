//! Is a controller replica leading, and is it up?
//!
//! The controller's replicas run csi-provisioner with `--leader-election`: the
//! replica holding its Lease provisions every volume, the others wait. The Lease
//! says who leads and when it last renewed; the controller pods, when vdrive
//! runs in the cluster, say whether that replica is Running and Ready. (A
//! controller run as a process outside the cluster still holds the Lease, so
//! the pods are looked at only when there are any.)

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::{Finding, Installation, pods, unreadable};
use crate::cluster::leader::provisioner_lease_name;

const CHECK: &str = "controller";

/// Slack on top of the lease duration before a Lease counts as abandoned: the
/// holder renews well inside its duration, so only a gone or stuck leader
/// (or clocks far apart) gets past it.
const RENEW_GRACE_SECONDS: i64 = 10;

pub async fn controller(client: &Client, inst: &Installation) -> Vec<Finding> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &inst.namespace);
    let lease = match leases.get_opt(&provisioner_lease_name()).await {
        Ok(lease) => lease,
        Err(e) => return vec![unreadable(CHECK, "leases.coordination.k8s.io", e)],
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &inst.namespace);
    let selector = ListParams::default().labels(&inst.selector("controller"));
    let pods = match pods.list(&selector).await {
        Ok(list) => list.items,
        Err(e) => return vec![unreadable(CHECK, "pods", e)],
    };
    verdict(lease.as_ref(), &pods, Timestamp::now(), inst)
}

pub fn verdict(
    lease: Option<&Lease>,
    pods: &[Pod],
    now: Timestamp,
    inst: &Installation,
) -> Vec<Finding> {
    let kubectl = inst.kubectl();
    let deployment = inst.controller();
    let look = format!(
        "{kubectl} rollout status deploy/{deployment}; {kubectl} logs deploy/{deployment} -c csi-provisioner"
    );
    match lease_verdict(lease, now, inst) {
        Ok((holder, leads)) => {
            let mut findings = vec![Finding::ok(CHECK, leads)];
            findings.extend(pods_verdict(holder, pods, inst, &look));
            findings
        }
        Err(problem) => vec![Finding::fail(CHECK, problem, look)],
    }
}

/// Who leads and since when it renewed, or why nobody does.
fn lease_verdict<'a>(
    lease: Option<&'a Lease>,
    now: Timestamp,
    inst: &Installation,
) -> Result<(&'a str, String), String> {
    let name = format!("{}/{}", inst.namespace, provisioner_lease_name());
    let lease = lease.ok_or_else(|| {
        format!("no Lease {name}: no controller replica has ever led, so no volume is provisioned")
    })?;
    let spec = lease.spec.as_ref();
    let holder = spec
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("Lease {name} is held by nobody: no controller replica leads"))?;
    let duration = i64::from(spec.and_then(|s| s.lease_duration_seconds).unwrap_or(15));
    let age = spec
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| now.as_second() - t.0.as_second());
    match age {
        Some(age) if age <= duration + RENEW_GRACE_SECONDS => Ok((
            holder,
            format!("{holder} leads (Lease {name} renewed {}s ago)", age.max(0)),
        )),
        _ => {
            let when = age.map_or("never renewed".to_string(), |a| {
                format!("last renewed {a}s ago")
            });
            Err(format!(
                "Lease {name} is held by {holder} but {when} (it lasts {duration}s): the leader is gone or stuck and no replica provisions"
            ))
        }
    }
}

/// The leader must be a Running, Ready controller pod; the others should be.
fn pods_verdict(holder: &str, pods: &[Pod], inst: &Installation, look: &str) -> Vec<Finding> {
    if pods.is_empty() {
        return vec![Finding::warn(
            CHECK,
            format!(
                "no controller pods in namespace {} (the leader runs outside the cluster?): their readiness is not checked",
                inst.namespace
            ),
            format!("{} get deploy/{}", inst.kubectl(), inst.controller()),
        )];
    }
    // csi-provisioner's identity is its host name, which in a pod is the pod's name.
    let is_holder = |p: &&Pod| {
        let name = p.name_any();
        holder == name || holder.starts_with(&format!("{name}_"))
    };
    let Some(leader) = pods.iter().find(is_holder) else {
        let names: Vec<String> = pods.iter().map(pods::describe).collect();
        return vec![Finding::fail(
            CHECK,
            format!(
                "the leader {holder} is none of the controller pods ({}): another installation holds the Lease, or it is stale",
                names.join(", ")
            ),
            look,
        )];
    };
    let mut findings = Vec::new();
    if !pods::is_ready(leader) {
        findings.push(Finding::fail(
            CHECK,
            format!(
                "the leading controller pod {} is not ready",
                pods::describe(leader)
            ),
            format!(
                "{} describe pod {}; {look}",
                inst.kubectl(),
                leader.name_any()
            ),
        ));
    }
    let ready = pods.iter().filter(|p| pods::is_ready(p)).count();
    if ready < pods.len() {
        let unready: Vec<String> = pods
            .iter()
            .filter(|p| !pods::is_ready(p))
            .map(pods::describe)
            .collect();
        findings.push(Finding::warn(
            CHECK,
            format!(
                "{ready} of {} controller pods ready; not ready: {}",
                pods.len(),
                unready.join(", ")
            ),
            format!(
                "{} rollout status deploy/{}",
                inst.kubectl(),
                inst.controller()
            ),
        ));
    } else {
        findings.push(Finding::ok(
            CHECK,
            format!("all {ready} controller pods are ready, the leader among them"),
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;
    use crate::doctor::pods::fixtures::pod;

    fn inst() -> Installation {
        Installation {
            namespace: "vdrive".into(),
            release: "vdrive".into(),
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap_or_default()
    }

    fn lease(holder: Option<&str>, renewed_seconds_ago: i64) -> Lease {
        let renewed =
            Timestamp::from_second(now().as_second() - renewed_seconds_ago).unwrap_or_default();
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "csi-vdrive-io", "namespace": "vdrive" },
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": 15,
                "renewTime": renewed.to_string(),
            },
        }))
        .unwrap_or_default()
    }

    fn statuses(findings: &[Finding]) -> Vec<Status> {
        findings.iter().map(|f| f.status).collect()
    }

    #[test]
    fn no_lease_nobody_holding_or_a_stale_lease_fails() {
        let none = verdict(None, &[], now(), &inst());
        assert_eq!(statuses(&none), [Status::Fail]);
        assert!(
            none[0]
                .fix
                .as_deref()
                .is_some_and(|f| f.contains("deploy/vdrive-controller"))
        );
        let released = verdict(Some(&lease(None, 1)), &[], now(), &inst());
        assert_eq!(statuses(&released), [Status::Fail]);
        let stale = verdict(Some(&lease(Some("a"), 60)), &[], now(), &inst());
        assert_eq!(statuses(&stale), [Status::Fail]);
        assert!(
            stale[0].message.contains("last renewed 60s ago"),
            "{}",
            stale[0].message
        );
    }

    #[test]
    fn a_held_lease_without_pods_is_a_warning_only() {
        let found = verdict(Some(&lease(Some("host-1"), 3)), &[], now(), &inst());
        assert_eq!(statuses(&found), [Status::Ok, Status::Warn]);
    }

    #[test]
    fn the_leader_must_be_a_ready_controller_pod() {
        let held = lease(Some("vdrive-controller-a"), 3);
        let ready = [
            pod("vdrive-controller-a", "n1", true),
            pod("vdrive-controller-b", "n2", true),
        ];
        assert_eq!(
            statuses(&verdict(Some(&held), &ready, now(), &inst())),
            [Status::Ok, Status::Ok]
        );
        let leader_down = [
            pod("vdrive-controller-a", "n1", false),
            pod("vdrive-controller-b", "n2", true),
        ];
        assert_eq!(
            statuses(&verdict(Some(&held), &leader_down, now(), &inst())),
            [Status::Ok, Status::Fail, Status::Warn]
        );
        let stranger = [pod("vdrive-controller-c", "n1", true)];
        let found = verdict(Some(&held), &stranger, now(), &inst());
        assert_eq!(statuses(&found), [Status::Ok, Status::Fail]);
        assert!(found[1].message.contains("vdrive-controller-a"));
    }
}
