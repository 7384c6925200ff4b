//! `vdrive drives`: reconcile the ledger with what the drives themselves say.
//! - `adopt` puts the claims a drive's header lists back into this node's ledger
//!   (after a lost ledger, a renamed node, a moved drive), which lifts its
//!   quarantine;
//! - `forget` drops a missing drive and its claims from the ledger for good,
//!   without erasing them (the drive is gone): loudly named, because it is the one
//!   way claims leave the ledger unerased.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use uuid::Uuid;

use super::all_in_one::node_name;
use crate::cluster::{self, KubeStore, Scope};
use crate::drive::Backend;
use crate::ledger::{DriveHeader, EmbeddedStore, Ledger, LedgerStore, NodeLedger};
use crate::node::drives;
use crate::node::{NodeError, claim_record, ownership};
use crate::pools::PoolSettings;

#[derive(Debug, Clone, Args)]
pub struct DrivesArgs {
    #[command(subcommand)]
    pub command: DrivesCommand,
    /// This node's name in the ledger (default: the hostname, as all-in-one and
    /// the node plugin use).
    #[arg(long, env = "NODE_NAME", global = true)]
    pub node_id: Option<String>,
    /// The all-in-one state directory whose embedded ledger to change (stop
    /// all-in-one first). Without it, the cluster's ledger (the Nodes) is used.
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// A kubeconfig (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, global = true, conflicts_with = "state_dir")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DrivesCommand {
    /// Bring the claims this machine's drives list in their headers back into
    /// this node's ledger, and make the node their owner.
    Adopt {
        /// Only this drive (repeatable), also one another node owns by its
        /// header; default: every signed drive here whose header names this node
        /// and lists claims the ledger lacks.
        #[arg(long, value_name = "UUID")]
        drive: Vec<Uuid>,
        /// Also look at this device or image (repeatable), e.g. a simulated drive.
        #[arg(long, value_name = "PATH")]
        device: Vec<PathBuf>,
    },
    /// Drop a missing drive and its claims from the ledger WITHOUT ERASING them:
    /// only for a drive that is never coming back.
    Forget {
        #[arg(long, value_name = "UUID")]
        drive: Uuid,
        /// Say that you know the drive's extents were not erased.
        #[arg(long)]
        i_know_its_data_is_not_erased: bool,
    },
}

pub async fn run(args: DrivesArgs) -> Result<String, String> {
    let node = node_name(args.node_id.clone())?;
    if let DrivesCommand::Forget {
        drive,
        i_know_its_data_is_not_erased,
    } = &args.command
    {
        // Refused before any ledger is opened.
        confirm_forget(*drive, *i_know_its_data_is_not_erased)?;
    }
    match &args.state_dir {
        Some(dir) => {
            let path = dir.join("ledger.redb");
            if !path.exists() {
                return Err(format!(
                    "there is no ledger at {}: pass the --state-dir vdrive all-in-one runs with (default /var/lib/vdrive)",
                    path.display()
                ));
            }
            let store = EmbeddedStore::open(&path).map_err(|e| {
                format!("cannot open the ledger at {}: {e} (stop vdrive all-in-one first: it holds the ledger while it runs)", path.display())
            })?;
            run_on(
                &Ledger::new(store, PoolSettings::default()),
                &node,
                args.command,
            )
            .await
        }
        None => {
            let client = cluster::client(args.kubeconfig.as_deref()).await?;
            let store = KubeStore::start(client, Scope::AllNodes);
            store
                .wait_ready(Duration::from_secs(30))
                .await
                .map_err(|e| e.to_string())?;
            run_on(
                &Ledger::new(store, PoolSettings::default()),
                &node,
                args.command,
            )
            .await
        }
    }
}

async fn run_on<S: LedgerStore>(
    ledger: &Ledger<S>,
    node: &str,
    command: DrivesCommand,
) -> Result<String, String> {
    match command {
        DrivesCommand::Adopt { drive, device } => adopt(ledger, node, &drive, device).await,
        DrivesCommand::Forget {
            drive,
            i_know_its_data_is_not_erased,
        } => {
            confirm_forget(drive, i_know_its_data_is_not_erased)?;
            let known = ledger.node(node).await.map_err(|e| e.to_string())?;
            if known.drive(&drive).is_none() {
                return Err(format!(
                    "node {node}'s ledger has no drive {drive} (its drives: {}); check --node-id",
                    known
                        .drives
                        .iter()
                        .map(|d| d.uuid.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            let gone = ledger
                .forget_drive(node, drive)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "forgot drive {drive} on node {node}: {} claim(s) dropped unerased ({}); the rest of their volumes are releasing and erased by their node",
                gone.len(),
                gone.iter()
                    .map(|c| c.volume_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }
}

/// Forgetting a drive drops claims unerased: only when the operator says so.
fn confirm_forget(drive: Uuid, confirmed: bool) -> Result<(), String> {
    if confirmed {
        return Ok(());
    }
    Err(format!(
        "forgetting drive {drive} drops its claims without erasing them; if the drive is never coming back, \
         run again with --i-know-its-data-is-not-erased (if it does come back, it is quarantined until adopted)"
    ))
}

/// Writes adopted drive `uuid`'s header at `path` from `ledger`, after
/// `previous` (the record adopt read). A node running beside this command may
/// rewrite the header meanwhile (the adoption lets it trust the drive again):
/// then the record is read again and written from that, a few times at most.
fn write_adopted_header(
    path: &Path,
    uuid: Uuid,
    ledger: &NodeLedger,
    mut previous: Option<claim_record::Stored>,
) -> Result<(), NodeError> {
    const TRIES: usize = 3;
    for _ in 1..TRIES {
        match write_header_from(path, uuid, ledger, previous.as_ref()) {
            Err(NodeError::ClaimRecordChanged { .. }) => previous = claim_record::read(path)?,
            done => return done,
        }
    }
    write_header_from(path, uuid, ledger, previous.as_ref())
}

fn write_header_from(
    path: &Path,
    uuid: Uuid,
    ledger: &NodeLedger,
    previous: Option<&claim_record::Stored>,
) -> Result<(), NodeError> {
    // This process erased nothing: every claim the ledger has is live here.
    let record = ownership::record_for(
        ledger,
        uuid,
        previous.map(|s| &s.record),
        &ownership::ErasedUnreleased::default(),
    );
    claim_record::write(path, previous, &record).map(|_| ())
}

async fn adopt<S: LedgerStore>(
    ledger: &Ledger<S>,
    node: &str,
    only: &[Uuid],
    extra: Vec<PathBuf>,
) -> Result<String, String> {
    let found = tokio::task::spawn_blocking(move || {
        let mut paths = drives::candidates();
        paths.extend(extra);
        ownership::read_records(drives::discover(&paths))
    })
    .await
    .map_err(|e| e.to_string())?;
    for uuid in only {
        if !found.iter().any(|f| f.drive.signature.uuid == *uuid) {
            return Err(format!(
                "drive {uuid} is not attached to this machine (or not signed): adopt runs on the server that has the drive"
            ));
        }
    }
    let current = ledger.node(node).await.map_err(|e| e.to_string())?;
    let mut lines = Vec::new();
    for f in &found {
        let uuid = f.drive.signature.uuid;
        let header = ownership::header_of(&f.record);
        // Unasked, only drives whose header names this node (a lost ledger) are
        // adopted: another node's drive (moved, renamed, or seen by two servers)
        // is taken only when named with --drive.
        let ours = matches!(&header, DriveHeader::Owned { owner, .. } if owner == node);
        let wanted = if only.is_empty() {
            ours && header.disagreement(node, uuid, &current.claims).is_some()
        } else {
            only.contains(&uuid)
        };
        if !wanted {
            continue;
        }
        let stored = f
            .record
            .as_ref()
            .map_err(|e| format!("cannot adopt drive {uuid}: {e}"))?;
        let claims: Vec<_> = stored
            .as_ref()
            .map(|s| s.record.live_claims().cloned().collect())
            .unwrap_or_default();
        let backend = current.drive(&uuid).map_or(Backend::Loop, |d| d.backend);
        let added = ledger
            .adopt(node, f.drive.to_physical(backend), claims)
            .await
            .map_err(|e| format!("cannot adopt drive {uuid}: {e}"))?;
        let previous_owner = stored.as_ref().map(|s| s.record.owner.clone());
        if let Some(old) = previous_owner.as_deref().filter(|o| *o != node) {
            forget_moved(ledger, old, uuid, &mut lines).await;
        }
        let now = ledger.node(node).await.map_err(|e| e.to_string())?;
        let path = f.drive.path.clone();
        let previous = stored.clone();
        tokio::task::spawn_blocking(move || write_adopted_header(&path, uuid, &now, previous))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| {
                format!("adopted drive {uuid}'s claims, but could not write its header: {e}")
            })?;
        lines.push(format!(
            "adopted drive {uuid} ({}) on node {node}: {} claim(s) brought back{}",
            f.drive.path.display(),
            added.len(),
            previous_owner
                .filter(|o| o != node)
                .map_or(String::new(), |o| format!(", owner was {o:?}"))
        ));
    }
    if lines.is_empty() {
        lines.push(format!(
            "nothing to adopt: every signed drive here agrees with node {node}'s ledger"
        ));
    } else {
        lines
            .push("the node lifts the quarantine at its next drive scan (within 30 s)".to_string());
    }
    Ok(lines.join("\n"))
}

/// A drive that moved here from node `old`: if `old`'s ledger still lists it
/// as missing, its claims now live here, so they leave `old`'s ledger.
async fn forget_moved<S: LedgerStore>(
    ledger: &Ledger<S>,
    old: &str,
    uuid: Uuid,
    lines: &mut Vec<String>,
) {
    let Ok(old_ledger) = ledger.node(old).await else {
        return;
    };
    match old_ledger.drive(&uuid) {
        Some(d) if d.missing => match ledger.forget_drive(old, uuid).await {
            Ok(gone) => lines.push(format!(
                "node {old} listed drive {uuid} as missing: its {} claim(s) moved here",
                gone.len()
            )),
            Err(e) => lines.push(format!("could not remove drive {uuid} from node {old}'s ledger: {e}")),
        },
        Some(_) => lines.push(format!(
            "warning: node {old} still reports drive {uuid} present: a drive seen by two servers cannot be shared; detach it from one"
        )),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::claim_record::tests::{claim, image};
    use crate::node::claim_record::{ClaimRecord, read, write};

    #[test]
    fn adopt_writes_the_header_again_over_a_node_that_rewrote_it_meanwhile() {
        let (_dir, path) = image();
        let drive = Uuid::from_u128(7);
        let adopted = claim("a", 0, 2);
        let old = ClaimRecord {
            owner: "old".into(),
            claims: vec![adopted.clone()],
            erased: vec![],
        };
        let read_by_adopt = write(&path, None, &old).unwrap();
        // The node rewrites the header after adopt read it.
        let by_node = ClaimRecord {
            owner: "n".into(),
            ..old.clone()
        };
        write(&path, Some(&read_by_adopt), &by_node).unwrap();
        let ledger = NodeLedger {
            node: "n".into(),
            pool: None,
            drives: Vec::new(),
            claims: vec![adopted.clone(), claim("b", 4, 1)],
        };
        write_adopted_header(&path, drive, &ledger, Some(read_by_adopt)).unwrap();
        let now = read(&path).unwrap().unwrap();
        assert_eq!(now.generation, 3, "written after the node's copy");
        assert_eq!(now.record.owner, "n");
        let listed: Vec<&str> = now
            .record
            .claims
            .iter()
            .map(|c| c.volume_id.as_str())
            .collect();
        assert_eq!(listed, ["a", "b"]);
    }

    #[test]
    fn forget_needs_its_loud_flag() {
        let err = confirm_forget(Uuid::from_u128(1), false).unwrap_err();
        assert!(err.contains("--i-know-its-data-is-not-erased"), "{err}");
        confirm_forget(Uuid::from_u128(1), true).unwrap();
    }

    #[test]
    fn forget_names_a_drive_the_node_does_not_have() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ledger = Ledger::new(
            EmbeddedStore::open(dir.path().join("ledger.redb")).unwrap(),
            PoolSettings::default(),
        );
        let err = rt
            .block_on(run_on(
                &ledger,
                "n",
                DrivesCommand::Forget {
                    drive: Uuid::from_u128(1),
                    i_know_its_data_is_not_erased: true,
                },
            ))
            .unwrap_err();
        assert!(err.contains("has no drive"), "{err}");
    }
}
