//! `vdrive csi …`: a small CSI client for operators and demos, talking to a
//! vdrive socket the way a CO would.

use std::collections::HashMap;

use clap::{Args, Subcommand};
use tonic::transport::Channel;

use super::outcome::{Answer, Failure};
use super::output::OutputArgs;
use crate::csi::capability;
use crate::csi::context;
use crate::csi::params;
use crate::csi::proto::controller_client::ControllerClient;
use crate::csi::proto::node_client::NodeClient;
use crate::csi::proto::volume_capability::access_mode::Mode;
use crate::csi::proto::*;
use crate::csi::server;

#[derive(Debug, Clone, Args)]
pub struct CsiArgs {
    /// The vdrive socket.
    #[arg(long, global = true, default_value = "unix:///run/vdrive/csi.sock")]
    pub endpoint: String,
    #[command(subcommand)]
    pub command: CsiCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CsiCommand {
    /// Create a volume (CreateVolume).
    CreateVolume {
        name: String,
        /// Size, e.g. 100Gi, 1Ti, or bytes.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// A preset StorageClass: k8s-pool-storage or vm-pool-storage.
        #[arg(long)]
        class: Option<String>,
        /// A StorageClass parameter, key=value (repeatable; overrides the class).
        #[arg(long = "param", value_parser = parse_pair)]
        params: Vec<(String, String)>,
        /// A raw block volume instead of a filesystem.
        #[arg(long)]
        block: bool,
        #[arg(long, default_value = "ext4")]
        fs_type: String,
        /// Place it on this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// Delete a volume (DeleteVolume).
    DeleteVolume { volume_id: String },
    /// Grow a volume (ControllerExpandVolume).
    ExpandVolume {
        volume_id: String,
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
    /// List volumes (ListVolumes).
    ListVolumes {
        /// `-o json|yaml`: one array, each volume's id, size, node and extents
        /// in device order (drive uuid, type, offset and size in GiB).
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Capacity for a class, per node or in total (GetCapacity).
    Capacity {
        #[arg(long)]
        class: Option<String>,
        #[arg(long = "param", value_parser = parse_pair)]
        params: Vec<(String, String)>,
        #[arg(long)]
        node: Option<String>,
    },
    /// Build the volume's device and mount it at a staging path (NodeStageVolume).
    Stage {
        volume_id: String,
        #[arg(long)]
        staging_path: String,
        #[arg(long)]
        block: bool,
        /// Filesystem for a blank volume (default: what the volume was created with, else ext4).
        #[arg(long, default_value = "")]
        fs_type: String,
        /// The volume context as KEY=VALUE (repeatable), as a CO keeps it from
        /// CreateVolume (a PV's volumeAttributes). Default: asked of the endpoint's
        /// controller with ListVolumes, which a cluster's node plugin does not serve.
        #[arg(long = "context", value_parser = parse_pair)]
        context: Vec<(String, String)>,
    },
    /// Unmount and tear down the staged device (NodeUnstageVolume).
    Unstage {
        volume_id: String,
        #[arg(long)]
        staging_path: String,
    },
    /// Bind the staged volume to a target path (NodePublishVolume).
    Publish {
        volume_id: String,
        #[arg(long)]
        staging_path: String,
        #[arg(long)]
        target_path: String,
        #[arg(long)]
        block: bool,
        #[arg(long)]
        readonly: bool,
    },
    /// Unbind a target path (NodeUnpublishVolume).
    Unpublish {
        volume_id: String,
        #[arg(long)]
        target_path: String,
    },
    /// Grow a staged volume's device and filesystem to what the controller
    /// expanded it to (NodeExpandVolume).
    NodeExpand {
        volume_id: String,
        /// Where the volume is published (or staged).
        #[arg(long)]
        volume_path: String,
        #[arg(long, default_value = "")]
        staging_path: String,
        /// The size the volume was expanded to, e.g. 8Gi.
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
    /// Usage of a staged or published volume (NodeGetVolumeStats).
    Stats {
        volume_id: String,
        #[arg(long)]
        path: String,
    },
}

/// `100Gi`, `1Ti`, `512Mi`, `10G` (decimal), or plain bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 100Gi"))?;
    let factor: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?}: use Ki, Mi, Gi, Ti (or K, M, G, T)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text} is too large"))
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not key=value"))
}

fn class_params(
    class: Option<&str>,
    extra: &[(String, String)],
) -> Result<HashMap<String, String>, String> {
    let mut map = HashMap::new();
    if let Some(name) = class {
        let preset = params::preset(name).ok_or_else(|| {
            let names: Vec<&str> = params::presets().iter().map(|p| p.name).collect();
            format!("unknown class {name:?}: use one of {}", names.join(", "))
        })?;
        map.extend(
            preset
                .parameters
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
    }
    map.extend(extra.iter().cloned());
    Ok(map)
}

fn mode_capability(block: bool, fs_type: &str) -> VolumeCapability {
    if block {
        capability::block(Mode::SingleNodeWriter)
    } else {
        capability::mount(fs_type, Mode::SingleNodeWriter)
    }
}

fn topology(node: Option<&String>) -> Option<Topology> {
    node.map(|n| Topology {
        segments: HashMap::from([(crate::csi::controller::TOPOLOGY_KEY.to_string(), n.clone())]),
    })
}

fn gib(bytes: i64) -> String {
    format!("{} GiB", bytes / (1 << 30))
}

fn status_text(status: tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

pub async fn run(args: CsiArgs) -> Result<Answer, Failure> {
    let channel: Channel = server::connect(&args.endpoint).await.map_err(|e| {
        format!(
            "cannot reach {}: {e}. Is `vdrive all-in-one` running?",
            args.endpoint
        )
    })?;
    let mut controller = ControllerClient::new(channel.clone());
    let mut node = NodeClient::new(channel);
    let out = match args.command {
        CsiCommand::CreateVolume {
            name,
            size,
            class,
            params,
            block,
            fs_type,
            node: on,
        } => {
            let parameters = class_params(class.as_deref(), &params)?;
            let response = controller
                .create_volume(CreateVolumeRequest {
                    name,
                    capacity_range: at_least(size),
                    volume_capabilities: vec![mode_capability(block, &fs_type)],
                    parameters,
                    accessibility_requirements: topology(on.as_ref()).map(|t| {
                        TopologyRequirement {
                            requisite: vec![t.clone()],
                            preferred: vec![t],
                        }
                    }),
                    ..Default::default()
                })
                .await
                .map_err(status_text)?
                .into_inner();
            let volume = response.volume.unwrap_or_default();
            let node = volume
                .accessible_topology
                .first()
                .and_then(|t| t.segments.values().next().cloned())
                .unwrap_or_default();
            format!(
                "created {} ({}) on node {node}",
                volume.volume_id,
                gib(volume.capacity_bytes)
            )
        }
        CsiCommand::DeleteVolume { volume_id } => {
            controller
                .delete_volume(DeleteVolumeRequest {
                    volume_id: volume_id.clone(),
                    ..Default::default()
                })
                .await
                .map_err(status_text)?;
            format!("deleted {volume_id}")
        }
        CsiCommand::ExpandVolume { volume_id, size } => {
            let response = controller
                .controller_expand_volume(ControllerExpandVolumeRequest {
                    volume_id: volume_id.clone(),
                    capacity_range: at_least(size),
                    ..Default::default()
                })
                .await
                .map_err(status_text)?
                .into_inner();
            format!(
                "expanded {volume_id} to {} (stage it again or run NodeExpandVolume to grow the filesystem)",
                gib(response.capacity_bytes)
            )
        }
        CsiCommand::ListVolumes { output: _ } => {
            let volumes = all_volumes(&mut controller).await?;
            let entries: Vec<serde_json::Value> = volumes.iter().map(volume_json).collect();
            let lines: Vec<String> = volumes
                .iter()
                .map(|v| {
                    let node = v
                        .volume_context
                        .get(context::NODE_KEY)
                        .map_or("", String::as_str);
                    let parts = context::decode(&v.volume_context).map_or(0, |c| c.extents.len());
                    format!(
                        "{}  {:>8}  {node}  {parts} virtual drive{}",
                        v.volume_id,
                        gib(v.capacity_bytes),
                        if parts == 1 { "" } else { "s" }
                    )
                })
                .collect();
            let text = if lines.is_empty() {
                "no volumes".into()
            } else {
                lines.join("\n")
            };
            return Ok(Answer::yes(text).with_data(serde_json::Value::Array(entries)));
        }
        CsiCommand::Capacity {
            class,
            params,
            node: on,
        } => {
            let response = controller
                .get_capacity(GetCapacityRequest {
                    parameters: class_params(class.as_deref(), &params)?,
                    accessible_topology: topology(on.as_ref()),
                    ..Default::default()
                })
                .await
                .map_err(status_text)?
                .into_inner();
            format!(
                "available {}, largest volume {}",
                gib(response.available_capacity),
                gib(response.maximum_volume_size.unwrap_or(0))
            )
        }
        CsiCommand::Stage {
            volume_id,
            staging_path,
            block,
            fs_type,
            context,
        } => {
            let context = if context.is_empty() {
                volume_context(&mut controller, &volume_id).await?
            } else {
                context.into_iter().collect()
            };
            node.node_stage_volume(NodeStageVolumeRequest {
                volume_id: volume_id.clone(),
                staging_target_path: staging_path.clone(),
                volume_capability: Some(mode_capability(block, &fs_type)),
                volume_context: context,
                ..Default::default()
            })
            .await
            .map_err(status_text)?;
            format!("staged {volume_id} at {staging_path}")
        }
        CsiCommand::Unstage {
            volume_id,
            staging_path,
        } => {
            node.node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: volume_id.clone(),
                staging_target_path: staging_path,
            })
            .await
            .map_err(status_text)?;
            format!("unstaged {volume_id}")
        }
        CsiCommand::Publish {
            volume_id,
            staging_path,
            target_path,
            block,
            readonly,
        } => {
            node.node_publish_volume(NodePublishVolumeRequest {
                volume_id: volume_id.clone(),
                staging_target_path: staging_path,
                target_path: target_path.clone(),
                volume_capability: Some(mode_capability(block, "")),
                readonly,
                ..Default::default()
            })
            .await
            .map_err(status_text)?;
            format!("published {volume_id} at {target_path}")
        }
        CsiCommand::Unpublish {
            volume_id,
            target_path,
        } => {
            node.node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: volume_id.clone(),
                target_path,
            })
            .await
            .map_err(status_text)?;
            format!("unpublished {volume_id}")
        }
        CsiCommand::NodeExpand {
            volume_id,
            volume_path,
            staging_path,
            size,
        } => {
            let response = node
                .node_expand_volume(NodeExpandVolumeRequest {
                    volume_id: volume_id.clone(),
                    volume_path,
                    staging_target_path: staging_path,
                    capacity_range: at_least(size),
                    ..Default::default()
                })
                .await
                .map_err(status_text)?
                .into_inner();
            format!("{volume_id} now holds {}", gib(response.capacity_bytes))
        }
        CsiCommand::Stats { volume_id, path } => {
            let stats = node
                .node_get_volume_stats(NodeGetVolumeStatsRequest {
                    volume_id,
                    volume_path: path,
                    staging_target_path: String::new(),
                })
                .await
                .map_err(status_text)?
                .into_inner();
            stats
                .usage
                .iter()
                .map(|u| {
                    let unit = if u.unit == volume_usage::Unit::Inodes as i32 {
                        "inodes"
                    } else {
                        "bytes"
                    };
                    format!(
                        "{unit}: total {} used {} available {}",
                        u.total, u.used, u.available
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    Ok(Answer::yes(out))
}

/// A capacity range asking for at least `bytes`, with no limit.
fn at_least(bytes: u64) -> Option<CapacityRange> {
    Some(CapacityRange {
        required_bytes: bytes as i64,
        limit_bytes: 0,
    })
}

/// A volume's context, as a CO would have kept it from CreateVolume.
async fn volume_context(
    controller: &mut ControllerClient<Channel>,
    volume_id: &str,
) -> Result<HashMap<String, String>, String> {
    all_volumes(controller)
        .await?
        .into_iter()
        .find(|v| v.volume_id == volume_id)
        .map(|v| v.volume_context)
        .ok_or_else(|| format!("volume {volume_id} does not exist"))
}

/// A listed volume as JSON, with the extents its context carries.
fn volume_json(volume: &Volume) -> serde_json::Value {
    let extents: Vec<serde_json::Value> = context::decode(&volume.volume_context)
        .map(|c| c.extents)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            serde_json::json!({
                "virtual": e.virtual_uuid,
                "drive": e.physical_uuid,
                "type": e.drive_type,
                "offsetGiB": e.offset_gib,
                "sizeGiB": e.size_gib,
            })
        })
        .collect();
    serde_json::json!({
        "id": volume.volume_id,
        "capacityBytes": volume.capacity_bytes,
        "node": volume.volume_context.get(context::NODE_KEY),
        "extents": extents,
    })
}

/// Every volume, following ListVolumes' pages.
async fn all_volumes(controller: &mut ControllerClient<Channel>) -> Result<Vec<Volume>, String> {
    let mut volumes = Vec::new();
    let mut token = String::new();
    loop {
        let page = controller
            .list_volumes(ListVolumesRequest {
                max_entries: 100,
                starting_token: token,
            })
            .await
            .map_err(status_text)?
            .into_inner();
        volumes.extend(page.entries.into_iter().filter_map(|e| e.volume));
        if page.next_token.is_empty() {
            return Ok(volumes);
        }
        token = page.next_token;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("100Gi"), Ok(100 << 30));
        assert_eq!(parse_size("1Ti"), Ok(1 << 40));
        assert_eq!(parse_size("10G"), Ok(10_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("10GB").is_err());
        assert!(parse_size("Gi").is_err());
    }
}
