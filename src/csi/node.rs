//! CSI Node service: validate the request → call the node's volume lifecycle
//! (`node::volume`) → map the answer. Nothing here touches a device.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::{info, instrument, warn};

use super::capability;
use super::context;
use super::controller::TOPOLOGY_KEY;
use super::input;
use super::proto::node_server::Node;
use super::proto::*;
use crate::ledger::LedgerStore;
use crate::node::inflight::InFlight;
use crate::node::volume::{PublishRequest, StageRequest, Usage};
use crate::node::{NodeError, NodeVolumes, fs};

pub struct NodeService<S> {
    volumes: Arc<NodeVolumes<S>>,
    max_volumes: i64,
    in_flight: InFlight,
    /// Staging and target paths must lie inside it, when set (`--kubelet-dir`).
    kubelet_dir: Option<PathBuf>,
}

impl<S: LedgerStore> NodeService<S> {
    /// `in_flight` is shared with the controller when both run in one process,
    /// so that a volume is never deleted while it is being staged.
    pub fn new(volumes: Arc<NodeVolumes<S>>, max_volumes: i64, in_flight: InFlight) -> Self {
        NodeService {
            volumes,
            max_volumes,
            in_flight,
            kubelet_dir: None,
        }
    }

    /// Keeps every staging and target path inside `dir` (None: anywhere).
    pub fn with_kubelet_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.kubelet_dir = dir;
        self
    }

    /// A staging or target path of a request: present, absolute, clean, and
    /// inside the kubelet directory when one is set.
    fn path(&self, value: &str, field: &'static str) -> Result<PathBuf, Status> {
        require(value, field)?;
        Ok(input::node_path(field, value, self.kubelet_dir.as_deref())?)
    }

    /// The path NodeGetVolumeStats or NodeExpandVolume names the volume by.
    /// Stage and publish only take absolute clean paths (inside the kubelet
    /// directory), so any other is none of the volume's: NotFound, as the CSI
    /// spec has it for a volume that is not at the path (csi-sanity asks with
    /// "some/path").
    fn volume_path(
        &self,
        volume_id: &str,
        value: &str,
        field: &'static str,
    ) -> Result<PathBuf, Status> {
        require(value, field)?;
        input::node_path(field, value, self.kubelet_dir.as_deref()).map_err(|_| {
            Status::from(NodeError::UnknownPath {
                volume: volume_id.to_string(),
                path: PathBuf::from(value),
            })
        })
    }
}

fn require(value: &str, what: &str) -> Result<(), Status> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!(
            "{what} must not be empty"
        )))
    } else {
        Ok(())
    }
}

fn capability_of(cap: Option<&VolumeCapability>) -> Result<&VolumeCapability, Status> {
    let cap = cap.ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
    capability::validate(cap)?;
    Ok(cap)
}

/// A failed call is logged once, here, with its volume: otherwise only the
/// caller would see it.
fn failed<'a>(call: &'static str, volume: &'a str) -> impl FnOnce(NodeError) -> Status + 'a {
    move |err| {
        let status = Status::from(err);
        warn!(call, volume, code = ?status.code(), message = status.message(), "node call failed");
        status
    }
}

#[tonic::async_trait]
impl<S: LedgerStore> Node for NodeService<S> {
    #[instrument(skip_all, fields(volume = %request.get_ref().volume_id))]
    async fn node_stage_volume(
        &self,
        request: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        require(&req.volume_id, "volume_id")?;
        let staging_path = self.path(&req.staging_target_path, "staging_target_path")?;
        let cap = capability_of(req.volume_capability.as_ref())?;
        let ctx = context::decode(&req.volume_context)?;
        let block = capability::is_block(cap);
        if ctx.image.is_some() && !block {
            return Err(Status::invalid_argument(format!(
                "volume {} carries an image ({}), which is written only into block volumes: stage it with a block capability",
                req.volume_id,
                context::IMAGE_KEY
            )));
        }
        let fs_type = match capability::fs_type(cap).or(ctx.fs_type.as_deref()) {
            Some(name) if !block => Some(name.parse::<fs::FsType>().map_err(Status::from)?),
            _ => None,
        };
        input::mount_flags(
            capability::mount_flags(cap),
            fs_type.map(fs::FsType::as_str),
        )?;
        let _flight = self.in_flight.begin(&req.volume_id)?;
        let stage = StageRequest {
            volume_id: req.volume_id.clone(),
            context_node: ctx.node,
            context_extents: ctx.extents,
            staging_path,
            block,
            fs_type,
            mount_flags: capability::mount_flags(cap).to_vec(),
            read_only: capability::is_read_only_mode(cap),
            image: ctx.image,
        };
        self.volumes
            .stage(stage)
            .await
            .map_err(failed("NodeStageVolume", &req.volume_id))?;
        info!(block, backend = %self.volumes.backend(), "volume staged");
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume = %request.get_ref().volume_id))]
    async fn node_unstage_volume(
        &self,
        request: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        require(&req.volume_id, "volume_id")?;
        let staging_path = self.path(&req.staging_target_path, "staging_target_path")?;
        let _flight = self.in_flight.begin(&req.volume_id)?;
        self.volumes
            .unstage(&req.volume_id, &staging_path)
            .await
            .map_err(failed("NodeUnstageVolume", &req.volume_id))?;
        info!("volume unstaged");
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume = %request.get_ref().volume_id))]
    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        require(&req.volume_id, "volume_id")?;
        let target_path = self.path(&req.target_path, "target_path")?;
        let cap = capability_of(req.volume_capability.as_ref())?;
        let staging_path = self.path(&req.staging_target_path, "staging_target_path")?;
        let publish = PublishRequest {
            volume_id: req.volume_id.clone(),
            staging_path,
            target_path,
            block: capability::is_block(cap),
            read_only: req.readonly || capability::is_read_only_mode(cap),
            single_writer: capability::is_single_writer(cap),
        };
        let _flight = self.in_flight.begin(&req.volume_id)?;
        self.volumes
            .publish(publish)
            .await
            .map_err(failed("NodePublishVolume", &req.volume_id))?;
        info!("volume published");
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume = %request.get_ref().volume_id))]
    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        require(&req.volume_id, "volume_id")?;
        let target_path = self.path(&req.target_path, "target_path")?;
        let _flight = self.in_flight.begin(&req.volume_id)?;
        self.volumes
            .unpublish(&req.volume_id, &target_path)
            .await
            .map_err(failed("NodeUnpublishVolume", &req.volume_id))?;
        info!("volume unpublished");
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        require(&req.volume_id, "volume_id")?;
        let volume_path = self.volume_path(&req.volume_id, &req.volume_path, "volume_path")?;
        let usage = self.volumes.stats(&req.volume_id, &volume_path).await?;
        let signed = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
        let usage = match usage {
            Usage::Block { total_bytes } => vec![VolumeUsage {
                total: signed(total_bytes),
                unit: volume_usage::Unit::Bytes as i32,
                ..Default::default()
            }],
            Usage::Filesystem(stats) => vec![
                VolumeUsage {
                    available: signed(stats.available_bytes),
                    total: signed(stats.total_bytes),
                    used: signed(stats.used_bytes),
                    unit: volume_usage::Unit::Bytes as i32,
                },
                VolumeUsage {
                    available: signed(stats.available_inodes),
                    total: signed(stats.total_inodes),
                    used: signed(stats.used_inodes),
                    unit: volume_usage::Unit::Inodes as i32,
                },
            ],
        };
        Ok(Response::new(NodeGetVolumeStatsResponse {
            usage,
            volume_condition: None,
        }))
    }

    #[instrument(skip_all, fields(volume = %request.get_ref().volume_id))]
    async fn node_expand_volume(
        &self,
        request: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        require(&req.volume_id, "volume_id")?;
        self.volume_path(&req.volume_id, &req.volume_path, "volume_path")?;
        if !req.staging_target_path.is_empty() {
            self.volume_path(
                &req.volume_id,
                &req.staging_target_path,
                "staging_target_path",
            )?;
        }
        let required = req.capacity_range.as_ref().map_or(0, |r| r.required_bytes);
        let required = u64::try_from(required).map_err(|_| {
            Status::invalid_argument("capacity_range required_bytes must not be negative")
        })?;
        let _flight = self.in_flight.begin(&req.volume_id)?;
        let bytes = self
            .volumes
            .expand(&req.volume_id, required)
            .await
            .map_err(failed("NodeExpandVolume", &req.volume_id))?;
        info!(bytes, "volume expanded on the node");
        Ok(Response::new(NodeExpandVolumeResponse {
            capacity_bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
        }))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::rpc::Type;
        let capabilities = [
            Type::StageUnstageVolume,
            Type::GetVolumeStats,
            Type::ExpandVolume,
            Type::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(|t| NodeServiceCapability {
            r#type: Some(node_service_capability::Type::Rpc(
                node_service_capability::Rpc { r#type: t as i32 },
            )),
        })
        .collect();
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        let node_id = self.volumes.node_id().to_string();
        Ok(Response::new(NodeGetInfoResponse {
            node_id: node_id.clone(),
            max_volumes_per_node: self.max_volumes,
            accessible_topology: Some(Topology {
                segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node_id)]),
            }),
        }))
    }
}
