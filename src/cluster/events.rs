//! Kubernetes Events for what an operator must see: a drive that vanished while
//! holding volumes, orphaned claims, PersistentVolumes whose claims are gone.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::csi::identity::DRIVER_NAME;

/// Publishes Events as `csi.vdrive.io` from one instance (a pod or node name).
/// Repeats of the same Event are folded into a series by the recorder.
#[derive(Clone)]
pub struct Notifier {
    recorder: Recorder,
}

impl Notifier {
    pub fn new(client: Client, instance: &str) -> Notifier {
        let reporter = Reporter {
            controller: DRIVER_NAME.to_string(),
            instance: Some(instance.to_string()),
        };
        Notifier {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// A Warning about `regarding`. Failing to publish is logged, never fatal:
    /// the condition is also in the logs and the metrics.
    pub async fn warn(
        &self,
        regarding: &ObjectReference,
        reason: &str,
        action: &str,
        note: String,
    ) {
        self.publish(EventType::Warning, regarding, reason, action, note)
            .await
    }

    /// A Normal Event: something an operator may want to see happened as asked
    /// (a server joined a pool, drives were signed).
    pub async fn normal(
        &self,
        regarding: &ObjectReference,
        reason: &str,
        action: &str,
        note: String,
    ) {
        self.publish(EventType::Normal, regarding, reason, action, note)
            .await
    }

    async fn publish(
        &self,
        type_: EventType,
        regarding: &ObjectReference,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(truncate(note)),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, regarding).await {
            tracing::warn!(%err, reason, "could not publish an Event");
        }
    }
}

/// A reference to a cluster-scoped Node.
pub fn node_reference(name: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(name.to_string()),
        uid,
        ..ObjectReference::default()
    }
}

/// A reference to a cluster-scoped StorageClass (a pool's Events are shown on
/// the classes that draw from it: `kubectl describe storageclass`).
pub fn storage_class_reference(name: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("storage.k8s.io/v1".into()),
        kind: Some("StorageClass".into()),
        name: Some(name.to_string()),
        uid,
        ..ObjectReference::default()
    }
}

/// A reference to a cluster-scoped PersistentVolume.
pub fn pv_reference(name: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolume".into()),
        name: Some(name.to_string()),
        uid,
        ..ObjectReference::default()
    }
}

/// Event notes are limited to 1 kB.
fn truncate(mut note: String) -> String {
    const MAX: usize = 1024;
    if note.len() > MAX {
        let mut cut = MAX - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}
