//! Pod state as the checks read it.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

/// Running, and its Ready condition True.
pub fn is_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// `name (phase)` for messages.
pub fn describe(pod: &Pod) -> String {
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("no phase");
    let ready = if is_ready(pod) {
        ", ready"
    } else {
        ", not ready"
    };
    format!("{} ({phase}{ready})", pod.name_any())
}

/// The node a pod was scheduled to.
pub fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

#[cfg(test)]
pub mod fixtures {
    use k8s_openapi::api::core::v1::Pod;

    /// A pod named `name` on `node`, Running and Ready or Pending.
    pub fn pod(name: &str, node: &str, ready: bool) -> Pod {
        let status = if ready {
            serde_json::json!({ "phase": "Running", "conditions": [{ "type": "Ready", "status": "True" }] })
        } else {
            serde_json::json!({ "phase": "Pending" })
        };
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name },
            "spec": { "nodeName": node, "containers": [] },
            "status": status,
        }))
        .unwrap_or_default()
    }
}
