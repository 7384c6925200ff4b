//! Is the CSIDriver object there, and does it say what the scheduler needs?

use k8s_openapi::api::storage::v1::CSIDriver;
use kube::Api;
use kube::Client;

use super::{Finding, unreadable};
use crate::csi::identity::DRIVER_NAME;

const CHECK: &str = "csi-driver";

pub async fn csi_driver(client: &Client) -> Vec<Finding> {
    match Api::<CSIDriver>::all(client.clone())
        .get_opt(DRIVER_NAME)
        .await
    {
        Ok(driver) => vec![verdict(driver.as_ref())],
        Err(e) => vec![unreadable(CHECK, "csidrivers.storage.k8s.io", e)],
    }
}

pub fn verdict(driver: Option<&CSIDriver>) -> Finding {
    let reinstall = "kubectl apply -k deploy/ (or helm upgrade --install vdrive charts/vdrive)";
    let Some(driver) = driver else {
        return Finding::fail(
            CHECK,
            format!("no CSIDriver {DRIVER_NAME}: kubelet and the scheduler do not know vdrive"),
            reinstall,
        );
    };
    // Without capacity tracking the scheduler ignores the CSIStorageCapacity
    // objects and places pods on nodes whose drives are full.
    if driver.spec.storage_capacity != Some(true) {
        return Finding::fail(
            CHECK,
            format!(
                "CSIDriver {DRIVER_NAME} has storageCapacity off: the scheduler ignores free space"
            ),
            reinstall,
        );
    }
    Finding::ok(
        CHECK,
        format!("CSIDriver {DRIVER_NAME} is installed, with storage capacity tracking"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn driver(storage_capacity: bool) -> CSIDriver {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": DRIVER_NAME },
            "spec": { "storageCapacity": storage_capacity },
        }))
        .unwrap_or_default()
    }

    #[test]
    fn a_missing_driver_or_one_without_capacity_fails() {
        assert_eq!(verdict(None).status, Status::Fail);
        assert!(verdict(None).fix.is_some());
        assert_eq!(verdict(Some(&driver(false))).status, Status::Fail);
        assert_eq!(verdict(Some(&driver(true))).status, Status::Ok);
    }
}
