//! `kubectl vdrive pools`: the k8s and vm pools and the system reserve, with
//! each pool's health (what `vdrive pools status` and `health` answer).

use clap::Args;
use serde::Serialize;
use serde_json::json;

use super::connect::Cluster;
use crate::cli::outcome::{Answer, Failure};
use crate::cli::settings::SettingsArgs;
use crate::cli::table::{self, Row};
use crate::pools::{Health, HealthReport, Pool, PoolsStatus, cluster_health, pools_status};

#[derive(Debug, Clone, Args)]
pub struct PoolsTable {
    /// The pool settings the controller runs with (the chart's values).
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// One pool, or the system reserve.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolRow {
    pub pool: &'static str,
    pub servers: u64,
    pub capacity_gib: u64,
    pub used_gib: u64,
    pub available_gib: u64,
    pub usage_percentage: f64,
    /// healthy / warning / critical; none for the reserve.
    pub health: Option<Health>,
}

impl Row for PoolRow {
    const HEADERS: &'static [&'static str] = &[
        "POOL",
        "SERVERS",
        "CAPACITY",
        "USED",
        "AVAILABLE",
        "USAGE",
        "HEALTH",
    ];

    fn cells(&self) -> Vec<String> {
        let health = self
            .health
            .and_then(|h| serde_json::to_value(h).ok())
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| table::NONE.into());
        vec![
            self.pool.to_string(),
            self.servers.to_string(),
            table::gib(self.capacity_gib),
            table::gib(self.used_gib),
            table::gib(self.available_gib),
            format!("{:.1}%", self.usage_percentage),
            health,
        ]
    }
}

/// A row per pool, then the reserve.
pub fn pool_rows(status: &PoolsStatus, health: &HealthReport) -> Vec<PoolRow> {
    let mut rows: Vec<PoolRow> = Pool::ALL
        .into_iter()
        .map(|pool| {
            let s = status.pool(pool);
            PoolRow {
                pool: pool.as_str(),
                servers: s.servers,
                capacity_gib: s.total_capacity_gb,
                used_gib: s.used_capacity_gb,
                available_gib: s.available_capacity_gb,
                usage_percentage: s.usage_percentage,
                health: Some(match pool {
                    Pool::K8s => health.pools.k8s_pool,
                    Pool::Vm => health.pools.vm_pool,
                }),
            }
        })
        .collect();
    let reserve = &status.system_reserve;
    rows.push(PoolRow {
        pool: "system-reserve",
        servers: reserve.total_servers,
        capacity_gib: reserve.total_capacity_gb,
        used_gib: reserve.used_capacity_gb,
        available_gib: reserve.available_capacity_gb,
        usage_percentage: reserve.usage_percentage,
        health: None,
    });
    rows
}

impl super::PluginAnswer for PoolsTable {
    /// A yes when the cluster is healthy; its warnings and errors on stderr.
    async fn answer(self, cluster: &Cluster) -> Result<Answer, Failure> {
        let settings = self.settings.pools().map_err(Failure::usage)?;
        let survey = cluster
            .ledger(settings)
            .await?
            .survey()
            .await
            .map_err(|e| e.to_string())?;
        let status = pools_status(&survey.nodes, &settings);
        let health = cluster_health(&survey.nodes, &survey.quarantined, &settings);
        let rows = pool_rows(&status, &health);
        let notes: Vec<String> = (health.errors.iter().map(|e| format!("error: {e}")))
            .chain(health.warnings.iter().map(|w| format!("warning: {w}")))
            .collect();
        let data = json!({ "status": status, "health": health });
        let answer =
            Answer::verdict(health.status == Health::Healthy, table::render(&rows)).with_data(data);
        Ok(if notes.is_empty() {
            answer
        } else {
            answer.with_note(notes.join("\n"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::kubectl::drives::tests::ledgers;
    use crate::pools::PoolSettings;

    #[test]
    fn a_row_per_pool_and_the_reserve() {
        let nodes = ledgers();
        let settings = PoolSettings::default();
        let status = pools_status(&nodes, &settings);
        let health = cluster_health(&nodes, &[], &settings);
        let rows = pool_rows(&status, &health);
        let names: Vec<&str> = rows.iter().map(|r| r.pool).collect();
        assert_eq!(names, ["k8s", "vm", "system-reserve"]);
        assert_eq!((rows[0].servers, rows[0].used_gib), (1, 400));
        let text = table::render(&rows);
        assert!(
            text.starts_with("POOL             SERVERS   CAPACITY"),
            "{text}"
        );
        assert!(
            text.lines().nth(3).is_some_and(|l| l.ends_with('-')),
            "{text}"
        );
    }
}
