//! Signing as a policy: the node plugin signs its server's unused drives when
//! its Node is labelled `vdrive.io/sign-drives=tlc|qlc`, at start and whenever
//! the label appears or changes, with exactly the rules of `vdrive sign
//! --all-not-root` (never the root disk, a partitioned, mounted or busy disk,
//! a disk holding data, or a drive already signed). What it signed and what it
//! left alone, and why, goes into an Event on the Node and the log.
//!
//! The label is a standing policy, read at every start of the plugin and on
//! every change; the same value seen again while the plugin runs signs
//! nothing more. A drive added later is signed at the next start, or when the
//! label is set again.

use std::future::Future;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use super::events::{Notifier, node_reference};
use crate::drive::DriveType;
use crate::node::sweep_report::SweepReport;

/// The Node label that asks for the node's drives to be signed, and as what.
pub const SIGN_DRIVES_LABEL: &str = "vdrive.io/sign-drives";

/// Event reasons, spelled once.
pub const SIGNED: &str = "DrivesSigned";
pub const SIGN_FAILED: &str = "DriveSigningFailed";
pub const BAD_LABEL: &str = "InvalidSignDrivesLabel";

/// What the label asks for, as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    None,
    Sign(DriveType),
    Invalid(String),
}

impl Request {
    pub fn of(label: Option<&str>) -> Request {
        match label {
            None => Request::None,
            Some(value) => match value.parse::<DriveType>() {
                Ok(drive_type) => Request::Sign(drive_type),
                Err(_) => Request::Invalid(value.to_string()),
            },
        }
    }
}

/// Decides when to act: on the first look, and whenever the label's value
/// changes; never again for the same value.
#[derive(Debug, Default)]
pub struct LabelPolicy {
    last: Option<Request>,
}

impl LabelPolicy {
    /// The request to act on now, if the label says something new.
    pub fn act_on(&mut self, now: Request) -> Option<Request> {
        if self.last.as_ref() == Some(&now) {
            return None;
        }
        self.last = Some(now.clone());
        match now {
            Request::None => None,
            other => Some(other),
        }
    }
}

/// Watches this node's Node and signs when asked. `sign` runs the sweep (and
/// records the new drives); it is called at most once at a time.
pub async fn watch<F, Fut>(client: Client, node: String, notifier: Notifier, mut sign: F)
where
    F: FnMut(DriveType) -> Fut,
    Fut: Future<Output = Result<SweepReport, String>>,
{
    let api: Api<Node> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let mut nodes = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
    let mut policy = LabelPolicy::default();
    while let Some(seen) = nodes.next().await {
        let seen = match seen {
            Ok(seen) => seen,
            Err(err) => {
                tracing::warn!(%err, "the watch of this Node failed; retrying");
                continue;
            }
        };
        let label = seen.labels().get(SIGN_DRIVES_LABEL).cloned();
        let reference = node_reference(&node, seen.uid());
        match policy.act_on(Request::of(label.as_deref())) {
            None => {}
            Some(Request::Invalid(value)) => {
                let note = format!(
                    "the label {SIGN_DRIVES_LABEL}={value:?} names no drive type: set it to tlc or qlc (`kubectl label node {node} {SIGN_DRIVES_LABEL}=qlc --overwrite`)"
                );
                tracing::warn!("{note}");
                notifier
                    .warn(&reference, BAD_LABEL, "SignDrives", note)
                    .await;
            }
            Some(Request::Sign(drive_type)) => {
                tracing::info!(drive_type = %drive_type, "{SIGN_DRIVES_LABEL}: signing this node's unused drives");
                match sign(drive_type).await {
                    Ok(report) => announce(&notifier, &reference, drive_type, &report).await,
                    Err(err) => {
                        let note = format!(
                            "could not sign this node's drives as {}: {err}",
                            drive_type.label()
                        );
                        tracing::error!("{note}");
                        notifier
                            .warn(&reference, SIGN_FAILED, "SignDrives", note)
                            .await;
                    }
                }
            }
            Some(Request::None) => {}
        }
    }
}

async fn announce(
    notifier: &Notifier,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    drive_type: DriveType,
    report: &SweepReport,
) {
    let note = format!(
        "{SIGN_DRIVES_LABEL}={}: {}",
        drive_type.as_str(),
        report.summary()
    );
    for line in report.lines() {
        tracing::info!("{SIGN_DRIVES_LABEL}: {line}");
    }
    if report.is_failure() {
        notifier
            .warn(reference, SIGN_FAILED, "SignDrives", note)
            .await;
    } else {
        notifier.normal(reference, SIGNED, "SignDrives", note).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_reads_as_a_drive_type_or_is_invalid() {
        assert_eq!(Request::of(None), Request::None);
        assert_eq!(Request::of(Some("qlc")), Request::Sign(DriveType::Qlc));
        assert_eq!(Request::of(Some("tlc")), Request::Sign(DriveType::Tlc));
        assert_eq!(
            Request::of(Some("slc")),
            Request::Invalid("slc".to_string())
        );
    }

    #[test]
    fn signs_at_start_and_on_each_change_but_not_again_for_the_same_value() {
        let mut policy = LabelPolicy::default();
        let qlc = Request::Sign(DriveType::Qlc);
        assert_eq!(policy.act_on(qlc.clone()), Some(qlc.clone()), "at start");
        assert_eq!(policy.act_on(qlc.clone()), None, "the same label again");
        let tlc = Request::Sign(DriveType::Tlc);
        assert_eq!(policy.act_on(tlc.clone()), Some(tlc.clone()), "changed");
        assert_eq!(policy.act_on(Request::None), None, "removed: nothing to do");
        assert_eq!(
            policy.act_on(tlc.clone()),
            Some(tlc),
            "set again after it was removed"
        );
    }

    #[test]
    fn an_invalid_label_is_reported_once() {
        let mut policy = LabelPolicy::default();
        let bad = Request::of(Some("fast"));
        assert_eq!(policy.act_on(bad.clone()), Some(bad.clone()));
        assert_eq!(policy.act_on(bad), None);
    }

    #[test]
    fn no_label_at_start_does_nothing() {
        let mut policy = LabelPolicy::default();
        assert_eq!(policy.act_on(Request::None), None);
        assert_eq!(policy.act_on(Request::None), None);
    }
}
