//! Which controller replica does the cluster-wide chores (orphan checks and
//! their releases, pool change Events). The replicas already elect a leader:
//! csi-provisioner, beside each one, holds a Lease named after the driver in
//! the release namespace, with the pod's name as holder. vdrive follows that
//! election rather than running a second one: the replica whose provisioner
//! leads is the one that does the chores, so each Event is raised once and no
//! two replicas release the same claim.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::Api;

use crate::csi::identity::DRIVER_NAME;

/// The Lease csi-provisioner takes for this driver: the driver name with every
/// character that is not a letter, a digit or `-` made a `-`.
pub fn provisioner_lease_name() -> String {
    let name: String = DRIVER_NAME
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.ends_with('-') {
        format!("{name}X")
    } else {
        name
    }
}

/// Who leads.
#[derive(Clone)]
pub enum Leadership {
    /// Outside a pod (all-in-one, tests, a controller run by hand): this
    /// process is the only controller.
    Alone,
    /// In a pod: this replica leads while the provisioner's Lease in
    /// `namespace` names `identity` (the pod's name) and is not expired.
    Lease(Box<LeaseHolder>),
}

/// The Lease a replica follows, and the holder that is this replica.
#[derive(Clone)]
pub struct LeaseHolder {
    leases: Api<Lease>,
    name: String,
    identity: String,
}

impl Leadership {
    pub fn follow_lease(client: Client, namespace: &str, identity: &str) -> Leadership {
        Leadership::Lease(Box::new(LeaseHolder {
            leases: Api::namespaced(client, namespace),
            name: provisioner_lease_name(),
            identity: identity.to_string(),
        }))
    }

    /// Whether this replica should do the chores now. A Lease that cannot be
    /// read means no: another replica may hold it, and the chores wait.
    pub async fn leading(&self) -> bool {
        self.state().await == Lead::Leading
    }

    /// Who leads now, as far as this replica can tell.
    pub async fn state(&self) -> Lead {
        match self {
            Leadership::Alone => Lead::Leading,
            Leadership::Lease(holder) => match holder.leases.get_opt(&holder.name).await {
                Ok(Some(lease)) => {
                    let now = Timestamp::now();
                    if held_by(&lease, &holder.identity, now) {
                        Lead::Leading
                    } else if held_by_anyone(&lease, now) {
                        Lead::Other
                    } else {
                        Lead::Unknown
                    }
                }
                Ok(None) => Lead::Unknown,
                Err(err) => {
                    tracing::warn!(%err, lease = %holder.name, "cannot read the leader Lease");
                    Lead::Unknown
                }
            },
        }
    }
}

/// Who leads, as one replica sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lead {
    /// This replica.
    Leading,
    /// Another replica, which is alive (its Lease is fresh): it does the chores.
    Other,
    /// Nobody for now (no Lease yet, an expired one during a handover) or the
    /// Lease cannot be read: what happens now may be reported by nobody.
    Unknown,
}

/// Whether `lease` is held by anyone and was renewed within its duration.
fn held_by_anyone(lease: &Lease, now: Timestamp) -> bool {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .is_some_and(|holder| !holder.is_empty() && held_by(lease, holder, now))
}

/// Whether `lease` is held by `identity` and was renewed within its duration.
pub fn held_by(lease: &Lease, identity: &str, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else {
        return false;
    };
    if spec.holder_identity.as_deref() != Some(identity) {
        return false;
    }
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref());
    let duration = spec.lease_duration_seconds.unwrap_or(15).max(1) as u64;
    match renewed {
        Some(at) => {
            let age = now.duration_since(at.0);
            age.is_negative() || age.unsigned_abs() <= Duration::from_secs(duration)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    use super::*;

    fn lease(holder: &str, renewed: Timestamp, seconds: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(seconds),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn the_lease_is_named_as_the_provisioner_names_it() {
        assert_eq!(provisioner_lease_name(), "csi-vdrive-io");
    }

    #[test]
    fn a_fresh_lease_held_by_this_pod_leads() {
        let now = Timestamp::now();
        assert!(held_by(
            &lease("vdrive-controller-a", now, 15),
            "vdrive-controller-a",
            now
        ));
        assert!(!held_by(
            &lease("vdrive-controller-b", now, 15),
            "vdrive-controller-a",
            now
        ));
    }

    #[test]
    fn an_expired_lease_does_not_lead() {
        let now = Timestamp::now();
        let old = now - jiff_seconds(60);
        assert!(!held_by(
            &lease("vdrive-controller-a", old, 15),
            "vdrive-controller-a",
            now
        ));
        assert!(!held_by(&Lease::default(), "vdrive-controller-a", now));
    }

    fn jiff_seconds(n: i64) -> k8s_openapi::jiff::SignedDuration {
        k8s_openapi::jiff::SignedDuration::from_secs(n)
    }
}
