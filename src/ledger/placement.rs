//! Where a new volume may go and what a node can still take: pure functions over
//! node ledgers, no I/O. The CSI layer turns topology requirements into a
//! [`Wanted`] and a StorageClass into a [`VolumeClass`]; [`super::Ledger::create`]
//! tries the [`candidate_nodes`] in order, and [`super::Ledger::capacity`] answers
//! GetCapacity with [`capacity`].

use std::cmp::Reverse;
use std::fmt;
use std::sync::Arc;

use super::error::{LedgerError, PoolLabel};
use super::model::NodeLedger;
use super::pool_share::{Pool, PoolSettings, node_allowance_gib};
use crate::allocator::{self, Request};

/// What a class of volumes asks of a node, whatever the size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeClass {
    /// The pool whose nodes and shares the volumes use, if any.
    pub pool: Option<Pool>,
    /// The allocator request; in ratio mode its capacity is replaced by each size
    /// asked about (see [`VolumeClass::request`]).
    pub layout: Request,
}

impl VolumeClass {
    /// The allocator request for a volume of `gib` (fixed mode: its own size).
    pub fn request(&self, gib: u64) -> Request {
        self.layout.resized(gib)
    }

    /// The smallest volume the class makes: its fixed size, or one minimum-size
    /// virtual drive per drive core.
    pub fn min_gib(&self) -> u64 {
        self.layout.fixed_gib().unwrap_or_else(|| {
            u64::from(self.layout.drive_cores) * self.layout.min_drive_gib.max(1)
        })
    }
}

/// Which nodes the CO lets a volume go to, by name, as its topology says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// No requirement: any node of the class's pool, most room first.
    Anywhere,
    /// These first, in this order; then any other node, most room first.
    Preferred(Vec<String>),
    /// Only these, in this order (preferred ones first).
    Only(Vec<String>),
}

/// Why a node the CO asked for cannot take a volume of the class at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfit {
    /// The ledger has never heard of the node.
    Unknown { node: String },
    /// The node has no signed drives (or all of them are missing).
    NoDrives { node: String },
    /// The node is not in the class's pool.
    OutsidePool {
        node: String,
        pool: Pool,
        label: PoolLabel,
    },
}

impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unfit::Unknown { node } => write!(f, "{node} has no signed drives and no pool label"),
            Unfit::NoDrives { node } => write!(f, "{node} has no signed drives"),
            Unfit::OutsidePool { node, pool, label } => {
                write!(f, "{node} is not in the {pool} pool (label pool={label})")
            }
        }
    }
}

/// Nodes to try for a new volume of `class`, in order: the wanted ones first
/// (preferred, then requisite; with WaitForFirstConsumer the pod's node), then,
/// when the CO allows any node, the others with the most room first. Only nodes
/// with present drives and of the class's pool are candidates.
pub fn candidate_nodes(
    nodes: &[Arc<NodeLedger>],
    class: &VolumeClass,
    wanted: &Wanted,
    pools: &PoolSettings,
) -> Result<Vec<Arc<NodeLedger>>, LedgerError> {
    let usable = |n: &NodeLedger| unfit(n, class).is_none();
    let most_room_first = |mut rest: Vec<Arc<NodeLedger>>| {
        rest.sort_by_cached_key(|n| Reverse(room_gib(n, class, pools)));
        rest
    };
    let (names, others_too) = match wanted {
        Wanted::Anywhere => {
            let all = most_room_first(nodes.iter().filter(|n| usable(n)).cloned().collect());
            if all.is_empty() {
                return Err(LedgerError::NoNodeWithDrives { pool: class.pool });
            }
            return Ok(all);
        }
        Wanted::Preferred(names) => (names, true),
        Wanted::Only(names) => (names, false),
    };
    let mut chosen: Vec<Arc<NodeLedger>> = names
        .iter()
        .filter_map(|name| nodes.iter().find(|n| &n.node == name))
        .filter(|n| usable(n))
        .cloned()
        .collect();
    if others_too {
        let rest = nodes
            .iter()
            .filter(|n| usable(n) && !names.contains(&n.node))
            .cloned()
            .collect();
        chosen.extend(most_room_first(rest));
    }
    if chosen.is_empty() {
        // Say per node why it cannot take the volume.
        let reasons = names
            .iter()
            .map(|name| match nodes.iter().find(|n| &n.node == name) {
                None => Unfit::Unknown { node: name.clone() },
                Some(node) => unfit(node, class).unwrap_or(Unfit::NoDrives { node: name.clone() }),
            })
            .collect();
        return Err(LedgerError::NoRequestedNode {
            pool: class.pool,
            reasons,
        });
    }
    Ok(chosen)
}

/// Why `node` can never take a volume of `class` as it is now, if it cannot.
fn unfit(node: &NodeLedger, class: &VolumeClass) -> Option<Unfit> {
    if node.present_drives().next().is_none() {
        return Some(Unfit::NoDrives {
            node: node.node.clone(),
        });
    }
    match class.pool {
        Some(pool) if node.pool != Some(pool) => Some(Unfit::OutsidePool {
            node: node.node.clone(),
            pool,
            label: PoolLabel(node.pool),
        }),
        _ => None,
    }
}

/// Free GiB `node` offers `class`: the free space of the class's drive types,
/// bounded by the node's pool allowance for a pool class.
pub fn room_gib(node: &NodeLedger, class: &VolumeClass, pools: &PoolSettings) -> u64 {
    let free: u64 = node
        .free_drives()
        .iter()
        .filter(|d| class.layout.uses(d.drive_type))
        .map(|d| d.free_gib())
        .sum();
    match class.pool {
        Some(pool) => free.min(node_allowance_gib(node, pool, pools)),
        None => free,
    }
}

/// The largest volume of `class` the allocator could place on `node` now, at
/// most `room_gib`, with no more virtual drives than the node's backend joins
/// ([`NodeLedger::max_parts`]). Feasibility grows with size only above the class
/// minimum and shrinks as pieces stop fitting, so search the largest feasible size.
pub fn largest_volume_gib(node: &NodeLedger, class: &VolumeClass, room_gib: u64) -> u64 {
    let free = node.free_drives();
    let max_parts = node.max_parts();
    let fits = |gib: u64| {
        allocator::plan(&class.request(gib), Some(&free))
            .is_ok_and(|plan| max_parts.is_none_or(|max| plan.placements.len() <= max as usize))
    };
    if let Some(size) = class.layout.fixed_gib() {
        return if size <= room_gib && fits(size) {
            size
        } else {
            0
        };
    }
    let floor = class.min_gib();
    if room_gib < floor || !fits(floor) {
        return 0;
    }
    if fits(room_gib) {
        return room_gib;
    }
    let (mut ok, mut bad) = (floor, room_gib);
    while bad - ok > 1 {
        let mid = ok + (bad - ok) / 2;
        if fits(mid) { ok = mid } else { bad = mid }
    }
    ok
}

/// What GetCapacity reports for a class, in GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Room for the class on the nodes asked about, added up.
    pub available_gib: u64,
    /// The largest single volume of the class one of those nodes could take now.
    pub largest_gib: u64,
    /// The smallest volume the class makes.
    pub minimum_gib: u64,
}

/// The capacity `class` has on `nodes` (only the one named `only`, if given)
/// that are in the class's pool.
pub fn capacity(
    nodes: &[Arc<NodeLedger>],
    class: &VolumeClass,
    only: Option<&str>,
    pools: &PoolSettings,
) -> Capacity {
    capacity_with(nodes, class, only, |node| node_room(node, class, pools))
}

/// [`capacity`], with each node's room from `room` (which may remember it).
pub(super) fn capacity_with(
    nodes: &[Arc<NodeLedger>],
    class: &VolumeClass,
    only: Option<&str>,
    room: impl Fn(&Arc<NodeLedger>) -> NodeRoom,
) -> Capacity {
    let mut answer = Capacity {
        available_gib: 0,
        largest_gib: 0,
        minimum_gib: class.min_gib(),
    };
    let asked = nodes
        .iter()
        .filter(|n| only.is_none_or(|name| name == n.node))
        .filter(|n| class.pool.is_none_or(|pool| n.pool == Some(pool)));
    for node in asked {
        let NodeRoom {
            room_gib,
            largest_gib,
        } = room(node);
        answer.available_gib += room_gib;
        answer.largest_gib = answer.largest_gib.max(largest_gib);
    }
    answer
}

/// What one node offers a class: its room and the largest volume it could take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NodeRoom {
    pub room_gib: u64,
    pub largest_gib: u64,
}

/// [`room_gib`] and [`largest_volume_gib`] of `node` for `class`.
pub(super) fn node_room(node: &NodeLedger, class: &VolumeClass, pools: &PoolSettings) -> NodeRoom {
    let room = room_gib(node, class, pools);
    NodeRoom {
        room_gib: room,
        largest_gib: largest_volume_gib(node, class, room),
    }
}

#[cfg(test)]
mod tests;
