//! What each node can still take of each volume class, remembered while the
//! node's ledger stays the same.
//!
//! GetCapacity for a whole pool asks every node for its room and the largest
//! volume it could take now; the latter is a search over allocator plans, a
//! few microseconds per node, which a thousand nodes turn into milliseconds
//! on every call. Between two calls almost no node changes, and a store hands
//! out the same shared ledger until it does (a new write is a new `Arc`), so
//! an answer is reused exactly while the ledger it was computed from is the
//! one loaded now. Nothing here can be stale: a changed node is a different
//! `Arc` and is computed again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use super::model::NodeLedger;
use super::placement::{NodeRoom, VolumeClass, node_room};
use super::pool_share::PoolSettings;

/// Classes remembered per node; a cluster has a few StorageClasses, so more
/// means something asks with many distinct parameters, and the oldest go.
const CLASSES_PER_NODE: usize = 8;

#[derive(Default)]
pub(super) struct RoomCache {
    nodes: Mutex<HashMap<String, Remembered>>,
}

struct Remembered {
    /// The ledger the answers are about.
    ledger: Arc<NodeLedger>,
    /// Newest last.
    classes: Vec<(VolumeClass, NodeRoom)>,
}

impl RoomCache {
    /// `node`'s room for `class`, computed only if this ledger was not asked
    /// about `class` before.
    pub fn room(
        &self,
        node: &Arc<NodeLedger>,
        class: &VolumeClass,
        pools: &PoolSettings,
    ) -> NodeRoom {
        if let Some(known) = self.known(node, class) {
            return known;
        }
        // Computed without the lock: concurrent calls about other nodes go on.
        let room = node_room(node, class, pools);
        let mut nodes = self.nodes();
        let entry = nodes
            .entry(node.node.clone())
            .or_insert_with(|| Remembered {
                ledger: node.clone(),
                classes: Vec::new(),
            });
        if !Arc::ptr_eq(&entry.ledger, node) {
            *entry = Remembered {
                ledger: node.clone(),
                classes: Vec::new(),
            };
        }
        if !entry.classes.iter().any(|(c, _)| c == class) {
            if entry.classes.len() >= CLASSES_PER_NODE {
                entry.classes.remove(0);
            }
            entry.classes.push((*class, room));
        }
        room
    }

    fn known(&self, node: &Arc<NodeLedger>, class: &VolumeClass) -> Option<NodeRoom> {
        let nodes = self.nodes();
        let entry = nodes.get(&node.node)?;
        if !Arc::ptr_eq(&entry.ledger, node) {
            return None;
        }
        entry
            .classes
            .iter()
            .find(|(c, _)| c == class)
            .map(|(_, room)| *room)
    }

    /// Forgets the nodes not in `nodes` (every node there is now), so a
    /// deleted node's ledger is not kept alive here.
    pub fn keep_only(&self, nodes: &[Arc<NodeLedger>]) {
        let mut remembered = self.nodes();
        if remembered.len() <= nodes.len() {
            return;
        }
        let names: HashSet<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
        remembered.retain(|name, _| names.contains(name.as_str()));
    }

    fn nodes(&self) -> MutexGuard<'_, HashMap<String, Remembered>> {
        // Entries are replaced whole; a poisoned map is still valid.
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    pub fn remembered(&self) -> usize {
        self.nodes().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::{Ratio, Request};
    use crate::drive::{Backend, DriveType};
    use crate::ledger::PhysicalDrive;

    fn node(name: &str, gib: u64) -> Arc<NodeLedger> {
        let mut ledger = NodeLedger::new(name);
        ledger.drives.push(PhysicalDrive {
            uuid: uuid::Uuid::new_v4(),
            serial: format!("SN-{name}"),
            drive_type: DriveType::Tlc,
            capacity_gib: gib,
            backend: Backend::Dm,
            missing: false,
            quarantined: None,
        });
        Arc::new(ledger)
    }

    fn class() -> VolumeClass {
        let mut layout = Request::with_ratio(1, Ratio { tlc: 1, qlc: 0 }, 1);
        layout.min_drive_gib = 1;
        VolumeClass { pool: None, layout }
    }

    #[test]
    fn a_new_ledger_of_a_node_is_computed_again_and_gone_nodes_are_forgotten() {
        let cache = RoomCache::default();
        let pools = PoolSettings::default();
        let (a, b, c) = (node("a", 100), node("b", 200), node("c", 300));
        for n in [&a, &b, &c] {
            assert_eq!(
                cache.room(n, &class(), &pools),
                node_room(n, &class(), &pools)
            );
        }
        assert_eq!(cache.room(&b, &class(), &pools).room_gib, 200);
        // The same name, another ledger: never the old answer.
        let b_grown = node("b", 250);
        assert_eq!(cache.room(&b_grown, &class(), &pools).room_gib, 250);
        assert_eq!(cache.remembered(), 3);
        cache.keep_only(&[a, b_grown]);
        assert_eq!(cache.remembered(), 2);
    }

    #[test]
    fn each_node_remembers_a_bounded_number_of_classes() {
        let cache = RoomCache::default();
        let pools = PoolSettings::default();
        let a = node("a", 1000);
        for min in 1..=(CLASSES_PER_NODE as u64 + 4) {
            let mut class = class();
            class.layout.min_drive_gib = min;
            cache.room(&a, &class, &pools);
        }
        let nodes = cache.nodes();
        assert_eq!(nodes["a"].classes.len(), CLASSES_PER_NODE);
    }
}
