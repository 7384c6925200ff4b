//! Kubernetes Events for what an operator must see: a drive that vanished while
//! holding volumes, orphaned claims, PersistentVolumes whose claims are gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::csi::identity::DRIVER_NAME;

/// Publishes Events as `csi.vdrive.io` from one instance (a pod or node name).
/// Repeats of the same Event are folded into a series by the recorder.
///
/// The recorder folds by object, reason, action and type, not by note: a
/// second, different note with the same reason about the same object (server
/// n2 joined pool vm after it joined pool k8s; a second orphaned volume on a
/// node) would only count up the first Event's series, its news lost. So each
/// (object, reason, action, type, note) has a recorder of its own: the same
/// note again counts up its own Event, a new note starts another.
#[derive(Clone)]
pub struct Notifier {
    client: Client,
    reporter: Reporter,
    series: Arc<Mutex<HashMap<SeriesKey, Recorder>>>,
}

/// What an Event series is: type, reason, action, the object (kind,
/// namespace, name) and the note.
type SeriesKey = [String; 7];

/// More series than this are forgotten at once (objects come and go over the
/// years); the next Event of each simply starts a new one.
const MAX_SERIES: usize = 10_000;

impl Notifier {
    pub fn new(client: Client, instance: &str) -> Notifier {
        let reporter = Reporter {
            controller: DRIVER_NAME.to_string(),
            instance: Some(instance.to_string()),
        };
        Notifier {
            client,
            reporter,
            series: Arc::default(),
        }
    }

    /// The recorder of this series: the one that published it before (which
    /// folds the repeat into its Event), or a new one.
    fn recorder_for(&self, key: SeriesKey) -> Recorder {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(recorder) = series.get(&key) {
            return recorder.clone();
        }
        if series.len() >= MAX_SERIES {
            series.clear();
        }
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        series.insert(key, recorder.clone());
        recorder
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
        let note = truncate(note);
        let key = [
            format!("{type_:?}"),
            reason.to_string(),
            action.to_string(),
            regarding.kind.clone().unwrap_or_default(),
            regarding.namespace.clone().unwrap_or_default(),
            regarding.name.clone().unwrap_or_default(),
            note.clone(),
        ];
        let recorder = self.recorder_for(key);
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(err) = recorder.publish(&event, regarding).await {
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
