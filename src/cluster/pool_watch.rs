//! Pool scaling, made visible: the controller logs and raises an Event when a
//! server joins or leaves a pool (its `pool` label changed, or the Node came or
//! went), with the pool's new size, and when a pool's health changes level.
//!
//! What changed is computed by [`changes`] from two [`PoolView`]s, plain data
//! derived from the ledger the controller already watches; [`watch`] only
//! reads, compares and reports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::events::{Notifier, node_reference, storage_class_reference};
use super::leader::{Lead, Leadership};
use super::store::KubeStore;
use crate::csi::identity::DRIVER_NAME;
use crate::ledger::{Ledger, NodeLedger};
use crate::pools::{Health, Pool, PoolSettings, PoolStatus, pools_health, pools_status};

/// Event reasons, spelled once.
pub const JOINED: &str = "PoolServerJoined";
pub const LEFT: &str = "PoolServerLeft";
pub const HEALTH_CHANGED: &str = "PoolHealthChanged";

/// What the watcher compares: which server is in which pool, each pool's
/// size and usage, and each pool's health level.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolView {
    members: BTreeMap<String, Pool>,
    status: BTreeMap<Pool, PoolStatus>,
    health: BTreeMap<Pool, Health>,
}

impl PoolView {
    pub fn of(nodes: &[Arc<NodeLedger>], settings: &PoolSettings) -> PoolView {
        let status = pools_status(nodes, settings);
        let health = pools_health(nodes, settings);
        PoolView {
            members: nodes
                .iter()
                .filter_map(|n| n.pool.map(|p| (n.node.clone(), p)))
                .collect(),
            status: Pool::ALL
                .into_iter()
                .map(|p| (p, status.pool(p).clone()))
                .collect(),
            health: [
                (Pool::K8s, health.pools.k8s_pool),
                (Pool::Vm, health.pools.vm_pool),
            ]
            .into_iter()
            .collect(),
        }
    }

    /// The view before anything was seen: no servers, every pool healthy, so
    /// the first look reports a pool that is already in trouble.
    pub fn empty() -> PoolView {
        PoolView {
            members: BTreeMap::new(),
            status: BTreeMap::new(),
            health: Pool::ALL
                .into_iter()
                .map(|p| (p, Health::Healthy))
                .collect(),
        }
    }

    fn size(&self, pool: Pool) -> PoolSize {
        self.status
            .get(&pool)
            .map(|s| PoolSize {
                servers: s.servers,
                capacity_gib: s.total_capacity_gb,
                used_gib: s.used_capacity_gb,
                usage_percent: s.usage_percentage,
            })
            .unwrap_or_default()
    }
}

/// A pool's size after a change, for the log line and the Event.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PoolSize {
    pub servers: u64,
    pub capacity_gib: u64,
    pub used_gib: u64,
    pub usage_percent: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PoolChange {
    Joined {
        node: String,
        pool: Pool,
        now: PoolSize,
    },
    Left {
        node: String,
        pool: Pool,
        now: PoolSize,
    },
    Health {
        pool: Pool,
        from: Health,
        to: Health,
        now: PoolSize,
    },
}

impl PoolChange {
    /// The sentence logged and put in the Event.
    pub fn describe(&self) -> String {
        let size = |pool: Pool, s: &PoolSize| {
            format!(
                "pool {pool} now has {} server{} and {} GiB ({} GiB used, {:.2}%)",
                s.servers,
                if s.servers == 1 { "" } else { "s" },
                s.capacity_gib,
                s.used_gib,
                s.usage_percent
            )
        };
        match self {
            PoolChange::Joined { node, pool, now } => {
                format!("server {node} joined pool {pool}: {}", size(*pool, now))
            }
            PoolChange::Left { node, pool, now } => {
                format!("server {node} left pool {pool}: {}", size(*pool, now))
            }
            PoolChange::Health {
                pool,
                from,
                to,
                now,
            } => {
                let fix = if to > from {
                    format!(
                        ". Add servers with `kubectl label node <node> pool={pool}` or delete volumes"
                    )
                } else {
                    String::new()
                };
                format!(
                    "pool {pool} health changed from {} to {}: {}{fix}",
                    level(*from),
                    level(*to),
                    size(*pool, now)
                )
            }
        }
    }
}

fn level(health: Health) -> &'static str {
    match health {
        Health::Healthy => "healthy",
        Health::Warning => "warning",
        Health::Critical => "critical",
    }
}

/// What changed from `before` to `after`: servers that left a pool first (a
/// relabelled server leaves one pool, then joins the other), then those that
/// joined, then health levels.
pub fn changes(before: &PoolView, after: &PoolView) -> Vec<PoolChange> {
    let mut out = Vec::new();
    for (node, pool) in &before.members {
        if after.members.get(node) != Some(pool) {
            out.push(PoolChange::Left {
                node: node.clone(),
                pool: *pool,
                now: after.size(*pool),
            });
        }
    }
    for (node, pool) in &after.members {
        if before.members.get(node) != Some(pool) {
            out.push(PoolChange::Joined {
                node: node.clone(),
                pool: *pool,
                now: after.size(*pool),
            });
        }
    }
    for pool in Pool::ALL {
        let from = before.health.get(&pool).copied().unwrap_or(Health::Healthy);
        let to = after.health.get(&pool).copied().unwrap_or(Health::Healthy);
        if from != to {
            out.push(PoolChange::Health {
                pool,
                from,
                to,
                now: after.size(pool),
            });
        }
    }
    out
}

/// At most one look per this long: Node heartbeats change the watched Nodes
/// all the time, and a look computes every pool.
const SETTLE: Duration = Duration::from_secs(1);

/// Runs until the process stops: looks again whenever a watched Node changes
/// (at most once per [`SETTLE`]). The servers in the pools at start are logged,
/// not announced: they did not just join. Only the leading replica reports.
/// A replica that knows another one leads moves on with it, so one that takes
/// over reports what changes from then on; while nobody is known to lead (a
/// handover, an unreadable Lease) changes are kept until someone can report
/// them, so none is lost.
pub async fn watch(
    ledger: Arc<Ledger<Arc<KubeStore>>>,
    client: Client,
    notifier: Notifier,
    leadership: Leadership,
) {
    let mut changes_seen = ledger.store().subscribe();
    // What was last reported (by this replica or the leading one).
    let mut reported: Option<PoolView> = None;
    loop {
        match ledger.survey().await {
            Ok(survey) => {
                let mut now = PoolView::of(&survey.nodes, ledger.pool_settings());
                let before = reported.get_or_insert_with(|| {
                    log_start(&now);
                    // Only health is news at start: a pool already in trouble
                    // when the controller (re)starts is reported.
                    PoolView {
                        members: now.members.clone(),
                        ..PoolView::empty()
                    }
                });
                // A node whose ledger cannot be read is left out of the survey,
                // but its pool label did not change: it stays where it was.
                for bad in &survey.quarantined {
                    if let Some(pool) = before.members.get(&bad.node) {
                        now.members.insert(bad.node.clone(), *pool);
                    }
                }
                let found = changes(before, &now);
                let moved_on = found.is_empty()
                    || match leadership.state().await {
                        Lead::Leading => {
                            report(&found, &client, &notifier).await;
                            true
                        }
                        Lead::Other => true,
                        Lead::Unknown => false,
                    };
                if moved_on {
                    reported = Some(now);
                }
            }
            Err(err) => tracing::warn!(%err, "could not read the pools"),
        }
        tokio::time::sleep(SETTLE).await;
        if changes_seen.changed().await.is_err() {
            return;
        }
    }
}

fn log_start(view: &PoolView) {
    for pool in Pool::ALL {
        let size = view.size(pool);
        let servers: Vec<&str> = view
            .members
            .iter()
            .filter(|(_, p)| **p == pool)
            .map(|(n, _)| n.as_str())
            .collect();
        tracing::info!(
            pool = %pool,
            servers = size.servers,
            capacity_gib = size.capacity_gib,
            used_gib = size.used_gib,
            members = %servers.join(","),
            "pool scaling: pool {pool} starts with {} servers and {} GiB",
            size.servers,
            size.capacity_gib
        );
    }
}

async fn report(changes: &[PoolChange], client: &Client, notifier: &Notifier) {
    for change in changes {
        let text = change.describe();
        match change {
            PoolChange::Joined { node, pool, now } | PoolChange::Left { node, pool, now } => {
                let (reason, action) = match change {
                    PoolChange::Joined { .. } => (JOINED, "JoinPool"),
                    _ => (LEFT, "LeavePool"),
                };
                tracing::info!(%node, pool = %pool, servers = now.servers, capacity_gib = now.capacity_gib, "pool scaling: {text}");
                notifier
                    .normal(&node_reference(node, None), reason, action, text)
                    .await;
            }
            PoolChange::Health { pool, to, .. } => {
                if *to == Health::Healthy {
                    tracing::info!(pool = %pool, health = level(*to), "pool health: {text}");
                } else {
                    tracing::warn!(pool = %pool, health = level(*to), "pool health: {text}");
                }
                for class in classes_of(client, *pool).await {
                    let reference = storage_class_reference(&class.name_any(), class.uid());
                    if *to == Health::Healthy {
                        notifier
                            .normal(&reference, HEALTH_CHANGED, "CheckPoolHealth", text.clone())
                            .await;
                    } else {
                        notifier
                            .warn(&reference, HEALTH_CHANGED, "CheckPoolHealth", text.clone())
                            .await;
                    }
                }
            }
        }
    }
}

/// vdrive's StorageClasses that draw from `pool`: where `kubectl describe
/// storageclass` shows the pool's health Events. None found (or no right to
/// list them) leaves the log line.
async fn classes_of(client: &Client, pool: Pool) -> Vec<StorageClass> {
    let api: Api<StorageClass> = Api::all(client.clone());
    match api.list(&ListParams::default()).await {
        Ok(list) => list
            .items
            .into_iter()
            .filter(|c| {
                c.provisioner == DRIVER_NAME
                    && c.parameters
                        .as_ref()
                        .and_then(|p| p.get("pool"))
                        .map(String::as_str)
                        == Some(pool.as_str())
            })
            .collect(),
        Err(err) => {
            tracing::warn!(%err, "could not list StorageClasses for a pool health Event");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(members: &[(&str, Pool)], health: [Health; 2], servers: [u64; 2]) -> PoolView {
        let status = |servers: u64| PoolStatus {
            servers,
            total_capacity_gb: servers * 1500,
            used_capacity_gb: 0,
            available_capacity_gb: servers * 1500,
            usage_percentage: 0.0,
        };
        PoolView {
            members: members.iter().map(|(n, p)| (n.to_string(), *p)).collect(),
            status: [
                (Pool::K8s, status(servers[0])),
                (Pool::Vm, status(servers[1])),
            ]
            .into_iter()
            .collect(),
            health: [(Pool::K8s, health[0]), (Pool::Vm, health[1])]
                .into_iter()
                .collect(),
        }
    }

    const OK: [Health; 2] = [Health::Healthy, Health::Healthy];

    #[test]
    fn nothing_changed_is_nothing_to_say() {
        let a = view(&[("n1", Pool::K8s)], OK, [1, 0]);
        assert!(changes(&a, &a.clone()).is_empty());
    }

    #[test]
    fn a_labelled_server_joins_with_the_pools_new_size() {
        let before = view(&[("n1", Pool::K8s)], OK, [1, 0]);
        let after = view(&[("n1", Pool::K8s), ("n2", Pool::K8s)], OK, [2, 0]);
        let found = changes(&before, &after);
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].describe(),
            "server n2 joined pool k8s: pool k8s now has 2 servers and 3000 GiB (0 GiB used, 0.00%)"
        );
    }

    #[test]
    fn a_relabelled_server_leaves_one_pool_then_joins_the_other() {
        let before = view(&[("n1", Pool::K8s), ("n2", Pool::K8s)], OK, [2, 0]);
        let after = view(&[("n1", Pool::K8s), ("n2", Pool::Vm)], OK, [1, 1]);
        let found = changes(&before, &after);
        assert!(
            matches!(&found[0], PoolChange::Left { node, pool: Pool::K8s, now } if node == "n2" && now.servers == 1)
        );
        assert!(
            matches!(&found[1], PoolChange::Joined { node, pool: Pool::Vm, now } if node == "n2" && now.servers == 1)
        );
        assert_eq!(found.len(), 2);
        assert_eq!(
            found[1].describe(),
            "server n2 joined pool vm: pool vm now has 1 server and 1500 GiB (0 GiB used, 0.00%)"
        );
    }

    #[test]
    fn a_deleted_or_unlabelled_server_leaves() {
        let before = view(&[("n1", Pool::K8s), ("n2", Pool::Vm)], OK, [1, 1]);
        let after = view(&[("n1", Pool::K8s)], OK, [1, 0]);
        let found = changes(&before, &after);
        assert_eq!(found.len(), 1);
        assert!(
            found[0]
                .describe()
                .starts_with("server n2 left pool vm: pool vm now has 0 servers")
        );
    }

    #[test]
    fn a_health_level_change_is_reported_both_ways_with_the_fix_when_worse() {
        let healthy = view(&[("n1", Pool::K8s)], OK, [1, 0]);
        let warning = view(
            &[("n1", Pool::K8s)],
            [Health::Warning, Health::Healthy],
            [1, 0],
        );
        let worse = changes(&healthy, &warning);
        assert_eq!(worse.len(), 1);
        let text = worse[0].describe();
        assert!(
            text.starts_with("pool k8s health changed from healthy to warning"),
            "{text}"
        );
        assert!(
            text.contains("kubectl label node <node> pool=k8s"),
            "{text}"
        );
        let better = changes(&warning, &healthy);
        let text = better[0].describe();
        assert!(
            text.starts_with("pool k8s health changed from warning to healthy"),
            "{text}"
        );
        assert!(!text.contains("kubectl label"), "{text}");
    }

    #[test]
    fn the_first_look_reports_health_but_not_the_servers_already_there() {
        let now = view(
            &[("n1", Pool::K8s)],
            [Health::Critical, Health::Healthy],
            [1, 0],
        );
        let start = PoolView {
            members: now.members.clone(),
            ..PoolView::empty()
        };
        let found = changes(&start, &now);
        assert_eq!(found.len(), 1);
        assert!(matches!(
            found[0],
            PoolChange::Health {
                pool: Pool::K8s,
                to: Health::Critical,
                ..
            }
        ));
    }
}
