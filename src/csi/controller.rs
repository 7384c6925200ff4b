//! CSI Controller service: validate → call the ledger → map the answer.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tonic::{Code, Request, Response, Status};
use tracing::{info, instrument};

use super::capability;
use super::context;
use super::input;
use super::params::{self, ClassParams, Defaults};
use super::proto::controller_server::Controller;
use super::proto::*;
use crate::ledger::{ClaimRequest, Ledger, LedgerStore, SizeRange, Volume, Wanted};
use crate::metrics::{self, Outcome};
use crate::node::inflight::InFlight;
use crate::node::{Erasure, ExtentEraser, GIB};

pub const TOPOLOGY_KEY: &str = "topology.vdrive.io/node";
/// Size of a volume whose request names none.
const DEFAULT_VOLUME_GIB: u64 = 1;

pub struct ControllerService<S> {
    ledger: Arc<Ledger<S>>,
    defaults: Defaults,
    eraser: Option<Arc<dyn ExtentEraser>>,
    in_flight: InFlight,
    images: Option<Arc<dyn VolumeImages>>,
}

/// The image a PVC asks to be written into its volume: the pool API records a
/// VM's image on its PVC (`vdrive.io/vm-image-source`, `-format`), and the
/// controller of a cluster looks it up by the PVC the provisioner names
/// (`csi.storage.k8s.io/pvc/namespace` and `/name`).
pub trait VolumeImages: Send + Sync {
    /// `(source, format)` of the image of PVC `namespace/name`; None when it
    /// names none.
    fn image_for<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<VolumeImage>, String>>;
}

/// An image's source (a path on the node or an http(s) URL) and its format
/// (`raw`, `qcow2`, or None: detected).
pub type VolumeImage = (String, Option<String>);

/// The CreateVolume parameters naming the image the node writes into a volume.
pub use params::{IMAGE_FORMAT_KEY as IMAGE_FORMAT_PARAM, IMAGE_KEY as IMAGE_PARAM};

impl<S: LedgerStore> ControllerService<S> {
    /// `in_flight` is shared with the node service when both run in one process,
    /// so that a volume is never deleted while it is being staged.
    pub fn new(
        ledger: Arc<Ledger<S>>,
        defaults: Defaults,
        eraser: Option<Arc<dyn ExtentEraser>>,
        in_flight: InFlight,
    ) -> Self {
        ControllerService {
            ledger,
            defaults,
            eraser,
            in_flight,
            images: None,
        }
    }

    /// Volumes of PVCs that name an image get it (see [`VolumeImages`]).
    pub fn with_images(mut self, images: Arc<dyn VolumeImages>) -> Self {
        self.images = Some(images);
        self
    }

    /// `parameters` with the image of the PVC they name, if it names one. A
    /// class's own `image` stays as it is.
    async fn add_image(&self, parameters: &mut HashMap<String, String>) -> Result<(), Status> {
        let Some(images) = &self.images else {
            return Ok(());
        };
        if parameters.contains_key(IMAGE_PARAM) {
            return Ok(());
        }
        let (Some(namespace), Some(name)) = (
            parameters.get(params::PVC_NAMESPACE_KEY),
            parameters.get(params::PVC_NAME_KEY),
        ) else {
            return Ok(());
        };
        let found = images.image_for(namespace, name).await.map_err(|e| {
            Status::unavailable(format!(
                "cannot read the image of PVC {namespace}/{name}: {e}"
            ))
        })?;
        if let Some((source, format)) = found {
            parameters.insert(IMAGE_PARAM.to_string(), source);
            if let Some(format) = format {
                parameters.insert(IMAGE_FORMAT_PARAM.to_string(), format);
            }
        }
        Ok(())
    }

    /// CreateVolume: validate the request and its class, then claim the
    /// volume's capacity on a node that can take it.
    async fn create(&self, mut req: CreateVolumeRequest) -> Result<CreateVolumeResponse, Status> {
        if req.name.is_empty() {
            return Err(Status::invalid_argument("name must not be empty"));
        }
        capability::validate_all(&req.volume_capabilities)?;
        self.add_image(&mut req.parameters).await?;
        if req.volume_content_source.is_some() {
            return Err(Status::invalid_argument(
                "volume content sources (snapshots, clones) are not supported by vdrive",
            ));
        }
        let params = ClassParams::parse(&req.parameters, &self.defaults)?;
        let fs_type = req
            .volume_capabilities
            .iter()
            .find_map(capability::fs_type)
            .or(params.fs_type.as_deref())
            .unwrap_or(capability::DEFAULT_FS_TYPE)
            .to_string();
        if !capability::FS_TYPES.contains(&fs_type.as_str()) {
            return Err(Status::invalid_argument(format!(
                "filesystem {fs_type:?} is not supported: use one of {}",
                capability::FS_TYPES.join(", ")
            )));
        }
        // An image is written into a raw block device; a filesystem volume is
        // formatted instead, which would bury it.
        if params.image.is_some() && !req.volume_capabilities.iter().all(capability::is_block) {
            return Err(Status::invalid_argument(
                "an image is written only into block volumes: request the volume with volumeMode: Block (a block capability), or drop the class's image parameter",
            ));
        }
        // A class whose mount options can never mount fails here, not at staging.
        for cap in &req.volume_capabilities {
            input::mount_flags(capability::mount_flags(cap), Some(&fs_type))?;
        }
        let gib = size_gib(req.capacity_range.as_ref(), params.fixed_gib())?;
        let wanted = wanted_nodes(req.accessibility_requirements.as_ref())?;
        let claim = ClaimRequest {
            volume_name: req.name.clone(),
            owner: params.owner.clone().unwrap_or_default(),
            pool: params.pool,
            layout: params.request(gib),
            accepts: accepted_sizes(req.capacity_range.as_ref()),
            access: Some(
                if req.volume_capabilities.iter().all(capability::is_block) {
                    "block".to_string()
                } else {
                    fs_type.clone()
                },
            ),
            image: params.image.as_ref().map(|i| i.source.to_string()),
            image_format: params
                .image
                .as_ref()
                .and_then(|i| i.format)
                .map(|f| f.as_str().to_string()),
        };
        let _flight = self.in_flight.begin(&req.name)?;
        let volume = self.ledger.create(&claim, &wanted).await?;
        info!(volume = %volume.id, node = %volume.node, gib = volume.capacity_gib, "volume ready");
        Ok(self.volume_response(&volume, &fs_type))
    }

    fn volume_response(&self, volume: &Volume, fs_type: &str) -> CreateVolumeResponse {
        CreateVolumeResponse {
            volume: Some(csi_volume(volume, fs_type)),
        }
    }
}

fn csi_volume(volume: &Volume, fs_type: &str) -> super::proto::Volume {
    super::proto::Volume {
        capacity_bytes: bytes(volume.capacity_gib),
        volume_id: volume.id.clone(),
        volume_context: context::encode(volume, fs_type),
        content_source: None,
        accessible_topology: vec![Topology {
            segments: HashMap::from([(TOPOLOGY_KEY.to_string(), volume.node.clone())]),
        }],
    }
}

/// GiB as CSI's signed bytes; a node never holds 2^33 GiB.
fn bytes(gib: u64) -> i64 {
    i64::try_from(gib.saturating_mul(GIB)).unwrap_or(i64::MAX)
}

/// The nodes the CO lets a volume go to, from its accessibility requirements:
/// preferred first, then requisite; with only preferences, any node after them.
fn wanted_nodes(requirements: Option<&TopologyRequirement>) -> Result<Wanted, Status> {
    let Some(requirements) =
        requirements.filter(|r| !r.requisite.is_empty() || !r.preferred.is_empty())
    else {
        return Ok(Wanted::Anywhere);
    };
    let mut names: Vec<String> = Vec::new();
    for topology in requirements.preferred.iter().chain(&requirements.requisite) {
        let name = topology.segments.get(TOPOLOGY_KEY).ok_or_else(|| {
            Status::invalid_argument(format!(
                "accessibility requirement {:?} has no {TOPOLOGY_KEY} segment",
                topology.segments
            ))
        })?;
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    Ok(if requirements.requisite.is_empty() {
        Wanted::Preferred(names)
    } else {
        Wanted::Only(names)
    })
}

/// The sizes an existing volume may have to answer a request with this range:
/// at least `required_bytes`, at most `limit_bytes` (0: no limit), in whole GiB.
/// Call after [`size_gib`] has refused negative bytes.
fn accepted_sizes(range: Option<&CapacityRange>) -> SizeRange {
    let (required, limit) = range.map_or((0, 0), |r| (r.required_bytes, r.limit_bytes));
    let (required, limit) = (required.max(0) as u64, limit.max(0) as u64);
    SizeRange {
        min_gib: required.div_ceil(GIB),
        max_gib: (limit > 0).then_some(limit / GIB),
    }
}

/// The volume size a capacity range asks for, in whole GiB: `required_bytes`
/// rounded up, never past `limit_bytes`.
pub fn size_gib(range: Option<&CapacityRange>, fixed_gib: Option<u64>) -> Result<u64, Status> {
    let (required, limit) = range.map_or((0, 0), |r| (r.required_bytes, r.limit_bytes));
    if required < 0 || limit < 0 {
        return Err(Status::invalid_argument(
            "capacity_range bytes must not be negative",
        ));
    }
    let (required, limit) = (required as u64, limit as u64);
    if limit > 0 && required > limit {
        return Err(Status::invalid_argument(format!(
            "capacity_range required_bytes ({required}) exceeds limit_bytes ({limit})"
        )));
    }
    let gib = match fixed_gib {
        Some(fixed) => fixed,
        None if required == 0 => DEFAULT_VOLUME_GIB,
        None => required.div_ceil(GIB),
    };
    if limit > 0 && gib.saturating_mul(GIB) > limit {
        return Err(Status::out_of_range(format!(
            "vdrive allocates whole GiB: {gib} GiB is more than limit_bytes ({limit}); raise the limit to at least {} bytes",
            gib.saturating_mul(GIB)
        )));
    }
    if gib.saturating_mul(GIB) < required {
        return Err(Status::out_of_range(format!(
            "this class makes volumes of exactly {gib} GiB (numDrives × driveCapacity), less than required_bytes ({required})"
        )));
    }
    Ok(gib)
}

#[tonic::async_trait]
impl<S: LedgerStore> Controller for ControllerService<S> {
    #[instrument(skip_all, fields(name = %request.get_ref().name))]
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let created = self.create(request.into_inner()).await;
        let code = created.as_ref().map_or_else(Status::code, |_| Code::Ok);
        metrics::global().record_allocation(Outcome::of(code));
        created.map(Response::new)
    }

    #[instrument(skip_all, fields(volume = %request.get_ref().volume_id))]
    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id must not be empty"));
        }
        let _flight = self.in_flight.begin(&req.volume_id)?;
        let Some(volume) = self.ledger.volume_everywhere(&req.volume_id).await? else {
            return Ok(Response::new(DeleteVolumeResponse {}));
        };
        // Erase before releasing: once released, the space may be claimed again.
        let Some(eraser) = self.eraser.clone() else {
            // The drives are on another machine: mark the claims releasing; the
            // volume's node erases the extents and then releases them.
            self.ledger.retire_on(&volume.node, &volume.id).await?;
            info!(node = %volume.node, gib = volume.capacity_gib, "volume deleted; its node erases the extents");
            return Ok(Response::new(DeleteVolumeResponse {}));
        };
        let doomed = volume.clone();
        // Zeroing an extent is disk work: keep it off the async executor's threads.
        let erasure = tokio::task::spawn_blocking(move || eraser.erase(&doomed))
            .await
            .map_err(|e| Status::internal(format!("erasing the volume failed: {e}")))?;
        match erasure {
            Erasure::Erased => {}
            // Not erased: the claims stay as they are and the CO retries.
            Erasure::NotYet(err) => return Err(err.into()),
            Erasure::NotOurs => {
                // Another node's volume (a ledger shared with, or left by, another
                // node id): never released unerased; its own node erases it.
                self.ledger.retire_on(&volume.node, &volume.id).await?;
                info!(node = %volume.node, "volume of another node deleted; that node erases the extents");
                return Ok(Response::new(DeleteVolumeResponse {}));
            }
        }
        self.ledger.release_on(&volume.node, &volume).await?;
        info!(node = %volume.node, gib = volume.capacity_gib, "volume deleted");
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        _: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "vdrive volumes need no attach step (attachRequired: false)",
        ))
    }

    async fn controller_unpublish_volume(
        &self,
        _: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "vdrive volumes need no detach step (attachRequired: false)",
        ))
    }

    #[instrument(skip_all, fields(volume = %request.get_ref().volume_id))]
    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id must not be empty"));
        }
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument(
                "volume_capabilities must not be empty",
            ));
        }
        // A capability without an access mode or type is a malformed request, refused
        // before any lookup; an unsupported one is merely not confirmed below.
        if let Some(bad) = req
            .volume_capabilities
            .iter()
            .find(|c| c.access_mode.is_none() || c.access_type.is_none())
        {
            return Err(Status::invalid_argument(format!(
                "volume capability {bad:?} needs both an access_mode and an access_type"
            )));
        }
        if self
            .ledger
            .volume(&req.volume_id)
            .await?
            .is_none_or(|v| v.releasing)
        {
            return Err(Status::not_found(format!(
                "volume {} does not exist",
                req.volume_id
            )));
        }
        let response = match capability::validate_all(&req.volume_capabilities) {
            Ok(()) => ValidateVolumeCapabilitiesResponse {
                confirmed: Some(validate_volume_capabilities_response::Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    ..Default::default()
                }),
                message: String::new(),
            },
            Err(unsupported) => ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: unsupported.message().to_string(),
            },
        };
        Ok(Response::new(response))
    }

    async fn list_volumes(
        &self,
        request: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        let req = request.into_inner();
        if req.max_entries < 0 {
            return Err(Status::invalid_argument("max_entries must not be negative"));
        }
        let not_ours = || {
            Status::aborted(format!(
                "starting_token {:?} is not a token this driver issued (or the list shrank): list again from the start",
                req.starting_token
            ))
        };
        let start = if req.starting_token.is_empty() {
            0
        } else {
            req.starting_token
                .parse::<usize>()
                .map_err(|_| not_ours())?
        };
        let take = if req.max_entries == 0 {
            usize::MAX
        } else {
            req.max_entries as usize
        };
        let (entries, total) = self
            .ledger
            .volumes_page(start, take, |v| list_volumes_response::Entry {
                volume: Some(csi_volume(&v, "")),
                status: None,
            })
            .await?;
        if start > total {
            return Err(not_ours());
        }
        let end = start.saturating_add(take).min(total);
        let next_token = if end < total {
            end.to_string()
        } else {
            String::new()
        };
        Ok(Response::new(ListVolumesResponse {
            entries,
            next_token,
        }))
    }

    async fn get_capacity(
        &self,
        request: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        let req = request.into_inner();
        let params = ClassParams::parse(&req.parameters, &self.defaults)?;
        if !req.volume_capabilities.is_empty()
            && capability::validate_all(&req.volume_capabilities).is_err()
        {
            return Ok(Response::new(GetCapacityResponse::default()));
        }
        let node_filter = match &req.accessible_topology {
            Some(topology) => Some(topology.segments.get(TOPOLOGY_KEY).cloned().ok_or_else(
                || {
                    Status::invalid_argument(format!(
                        "accessible_topology has no {TOPOLOGY_KEY} segment"
                    ))
                },
            )?),
            None => None,
        };
        let capacity = self
            .ledger
            .capacity(&params.class(), node_filter.as_deref())
            .await?;
        Ok(Response::new(GetCapacityResponse {
            available_capacity: bytes(capacity.available_gib),
            maximum_volume_size: Some(bytes(capacity.largest_gib)),
            minimum_volume_size: Some(bytes(capacity.minimum_gib)),
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        use controller_service_capability::rpc::Type;
        let capabilities = [
            Type::CreateDeleteVolume,
            Type::ListVolumes,
            Type::GetCapacity,
            Type::ExpandVolume,
            Type::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(|t| ControllerServiceCapability {
            r#type: Some(controller_service_capability::Type::Rpc(
                controller_service_capability::Rpc { r#type: t as i32 },
            )),
        })
        .collect();
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn create_snapshot(
        &self,
        _: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        Err(Status::unimplemented("snapshots are not supported"))
    }

    async fn delete_snapshot(
        &self,
        _: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        Err(Status::unimplemented("snapshots are not supported"))
    }

    async fn list_snapshots(
        &self,
        _: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        Err(Status::unimplemented("snapshots are not supported"))
    }

    /// Grows the volume's claims by the ledger's growth rules. A volume of a
    /// fixed-size class answers FailedPrecondition: the request is well formed
    /// (so not InvalidArgument), but the volume is what it is, and no retry of the
    /// same call will change that until the volume is replaced.
    #[instrument(skip_all, fields(volume = %request.get_ref().volume_id))]
    async fn controller_expand_volume(
        &self,
        request: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id must not be empty"));
        }
        let range = req.capacity_range.ok_or_else(|| {
            Status::invalid_argument("capacity_range is required to expand a volume")
        })?;
        let gib = size_gib(Some(&range), None)?;
        let _flight = self.in_flight.begin(&req.volume_id)?;
        let volume = self.ledger.grow(&req.volume_id, gib).await?;
        info!(gib = volume.capacity_gib, "volume expanded");
        Ok(Response::new(ControllerExpandVolumeResponse {
            capacity_bytes: bytes(volume.capacity_gib),
            // The node must grow its device (and the filesystem) to match.
            node_expansion_required: true,
        }))
    }

    async fn controller_get_volume(
        &self,
        _: Request<ControllerGetVolumeRequest>,
    ) -> Result<Response<ControllerGetVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "ControllerGetVolume is not supported",
        ))
    }

    async fn controller_modify_volume(
        &self,
        _: Request<ControllerModifyVolumeRequest>,
    ) -> Result<Response<ControllerModifyVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "ControllerModifyVolume is not supported",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(required: i64, limit: i64) -> CapacityRange {
        CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        }
    }

    #[test]
    fn sizes_round_up_to_whole_gib_within_the_limit() {
        let g = GIB as i64;
        assert_eq!(size_gib(None, None).unwrap(), 1);
        assert_eq!(size_gib(Some(&range(1, 0)), None).unwrap(), 1);
        assert_eq!(size_gib(Some(&range(g + 1, 0)), None).unwrap(), 2);
        assert_eq!(size_gib(Some(&range(10 * g, 10 * g)), None).unwrap(), 10);
        assert_eq!(
            size_gib(Some(&range(g + 1, g + 2)), None)
                .unwrap_err()
                .code(),
            tonic::Code::OutOfRange
        );
        assert_eq!(
            size_gib(Some(&range(2 * g, g)), None).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            size_gib(Some(&range(-1, 0)), None).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            size_gib(Some(&range(0, g / 2)), None).unwrap_err().code(),
            tonic::Code::OutOfRange
        );
        assert_eq!(
            size_gib(Some(&range(3 * g, 0)), Some(2))
                .unwrap_err()
                .code(),
            tonic::Code::OutOfRange
        );
        assert_eq!(size_gib(Some(&range(g, 0)), Some(2)).unwrap(), 2);
    }

    #[test]
    fn accepted_sizes_are_the_whole_gib_within_the_range() {
        let g = GIB as i64;
        let sizes = accepted_sizes(Some(&range(g + 1, 5 * g - 1)));
        assert_eq!(
            sizes,
            SizeRange {
                min_gib: 2,
                max_gib: Some(4)
            }
        );
        assert_eq!(
            accepted_sizes(None),
            SizeRange {
                min_gib: 0,
                max_gib: None
            }
        );
    }

    #[test]
    fn topology_names_the_wanted_nodes_preferred_first() {
        let on = |node: &str| Topology {
            segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node.to_string())]),
        };
        assert_eq!(wanted_nodes(None).unwrap(), Wanted::Anywhere);
        let preferred = TopologyRequirement {
            requisite: vec![],
            preferred: vec![on("b"), on("a")],
        };
        assert_eq!(
            wanted_nodes(Some(&preferred)).unwrap(),
            Wanted::Preferred(vec!["b".into(), "a".into()])
        );
        let both = TopologyRequirement {
            requisite: vec![on("a"), on("b"), on("c")],
            preferred: vec![on("b")],
        };
        assert_eq!(
            wanted_nodes(Some(&both)).unwrap(),
            Wanted::Only(vec!["b".into(), "a".into(), "c".into()])
        );
        let unkeyed = TopologyRequirement {
            requisite: vec![Topology::default()],
            preferred: vec![],
        };
        assert_eq!(
            wanted_nodes(Some(&unkeyed)).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
