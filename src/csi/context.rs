//! The volume context: everything a node needs to build a volume's device without
//! asking the controller (node, extents, filesystem, the image to write into a
//! block volume). CreateVolume writes it; the CO hands it back to NodeStageVolume.

use std::collections::HashMap;

use tonic::Status;
use uuid::Uuid;

use crate::drive::DriveType;
use crate::ledger::{Volume, VolumeExtent};
use crate::node::image::{Image, ImageFormat, ImageSource};

pub const NODE_KEY: &str = "vdrive.io/node";
pub const FS_TYPE_KEY: &str = "vdrive.io/fs-type";
/// JSON list of `{"virtual","drive","type","offset_gib","size_gib"}`, device order.
pub const EXTENTS_KEY: &str = "vdrive.io/extents";
/// The image written into the block volume at its first staging: an absolute
/// path on the node or an http(s) URL (StorageClass `image`).
pub const IMAGE_KEY: &str = "vdrive.io/image";
/// `raw` or `qcow2`; absent: detected from the image file (StorageClass `imageFormat`).
pub const IMAGE_FORMAT_KEY: &str = "vdrive.io/image-format";

/// The most GiB an extent may reach: what a drive's bytes (u64) can address.
const MAX_GIB: u64 = u64::MAX >> 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeContext {
    pub node: String,
    /// The filesystem chosen at creation, when the context says.
    pub fs_type: Option<String>,
    pub extents: Vec<VolumeExtent>,
    /// The image to write into the volume when it is staged blank.
    pub image: Option<Image>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ExtentEntry {
    #[serde(rename = "virtual")]
    virtual_uuid: Uuid,
    drive: Uuid,
    #[serde(rename = "type")]
    drive_type: Option<DriveType>,
    offset_gib: u64,
    size_gib: u64,
}

pub fn encode(volume: &Volume, fs_type: &str) -> HashMap<String, String> {
    let entries: Vec<ExtentEntry> = volume
        .extents
        .iter()
        .map(|e| ExtentEntry {
            virtual_uuid: e.virtual_uuid,
            drive: e.physical_uuid,
            drive_type: e.drive_type,
            offset_gib: e.offset_gib,
            size_gib: e.size_gib,
        })
        .collect();
    let mut context = HashMap::from([
        (NODE_KEY.to_string(), volume.node.clone()),
        (
            EXTENTS_KEY.to_string(),
            serde_json::to_string(&entries).unwrap_or_else(|_| "[]".into()),
        ),
    ]);
    if !fs_type.is_empty() {
        context.insert(FS_TYPE_KEY.to_string(), fs_type.to_string());
    }
    // The image is what the volume was created with, as its spec keeps it.
    if let Some(spec) = &volume.spec {
        if let Some(image) = &spec.image {
            context.insert(IMAGE_KEY.to_string(), image.clone());
        }
        if let Some(format) = &spec.image_format {
            context.insert(IMAGE_FORMAT_KEY.to_string(), format.clone());
        }
    }
    context
}

/// The image the context names, checked as CreateVolume checks the class's.
fn image(context: &HashMap<String, String>) -> Result<Option<Image>, Status> {
    let invalid = |key: &str, value: &str, reason: String| {
        Status::invalid_argument(format!(
            "volume context {key}={value:?} is invalid: {reason}"
        ))
    };
    let format = context
        .get(IMAGE_FORMAT_KEY)
        .map(|value| {
            value
                .parse::<ImageFormat>()
                .map_err(|reason| invalid(IMAGE_FORMAT_KEY, value, reason))
        })
        .transpose()?;
    match context.get(IMAGE_KEY) {
        None if format.is_some() => Err(Status::invalid_argument(format!(
            "volume context has {IMAGE_FORMAT_KEY} without {IMAGE_KEY}: stage the volume with the context CreateVolume returned"
        ))),
        None => Ok(None),
        Some(value) => {
            let source =
                ImageSource::parse(value).map_err(|reason| invalid(IMAGE_KEY, value, reason))?;
            Ok(Some(Image { source, format }))
        }
    }
}

pub fn decode(context: &HashMap<String, String>) -> Result<VolumeContext, Status> {
    let missing = |key: &str| {
        Status::invalid_argument(format!(
            "volume context lacks {key}: stage volumes created by vdrive's CreateVolume, whose context carries it"
        ))
    };
    let node = context
        .get(NODE_KEY)
        .ok_or_else(|| missing(NODE_KEY))?
        .clone();
    let extents_json = context
        .get(EXTENTS_KEY)
        .ok_or_else(|| missing(EXTENTS_KEY))?;
    let entries: Vec<ExtentEntry> = serde_json::from_str(extents_json).map_err(|e| {
        Status::invalid_argument(format!("volume context {EXTENTS_KEY} is not valid: {e}"))
    })?;
    if entries.is_empty() {
        return Err(Status::invalid_argument(format!(
            "volume context {EXTENTS_KEY} lists no extents"
        )));
    }
    // Offsets and sizes become byte positions on a drive: checked, not wrapped.
    if let Some(bad) = entries.iter().find(|e| {
        e.size_gib == 0
            || e.offset_gib
                .checked_add(e.size_gib)
                .is_none_or(|end| end > MAX_GIB)
    }) {
        return Err(Status::invalid_argument(format!(
            "volume context {EXTENTS_KEY}: virtual drive {} of {} GiB at offset {} GiB is empty or ends past the largest drive vdrive can address ({MAX_GIB} GiB); stage the volume with the context CreateVolume returned",
            bad.virtual_uuid, bad.size_gib, bad.offset_gib
        )));
    }
    let image = image(context)?;
    Ok(VolumeContext {
        node,
        fs_type: context.get(FS_TYPE_KEY).cloned(),
        image,
        extents: entries
            .into_iter()
            .map(|e| VolumeExtent {
                virtual_uuid: e.virtual_uuid,
                physical_uuid: e.drive,
                drive_type: e.drive_type,
                offset_gib: e.offset_gib,
                size_gib: e.size_gib,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(offset_gib: u64, size_gib: u64) -> HashMap<String, String> {
        HashMap::from([
            (NODE_KEY.to_string(), "n1".to_string()),
            (
                EXTENTS_KEY.to_string(),
                format!(
                    r#"[{{"virtual":"00000000-0000-0000-0000-000000000002","drive":"00000000-0000-0000-0000-000000000001","type":"tlc","offset_gib":{offset_gib},"size_gib":{size_gib}}}]"#
                ),
            ),
        ])
    }

    #[test]
    fn extents_that_overflow_or_are_empty_are_invalid_arguments() {
        assert_eq!(decode(&context(3, 2)).unwrap().extents[0].offset_gib, 3);
        for (offset, size) in [(u64::MAX, 1), (1, u64::MAX), (MAX_GIB, 1), (5, 0)] {
            let err = decode(&context(offset, size)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
            assert!(err.message().contains(EXTENTS_KEY), "{err:?}");
        }
    }

    #[test]
    fn the_image_and_its_format_are_checked_like_the_class_parameters() {
        assert_eq!(decode(&context(0, 1)).unwrap().image, None);
        let mut with = context(0, 1);
        with.insert(IMAGE_KEY.into(), "http://10.0.0.1/disk.qcow2".into());
        with.insert(IMAGE_FORMAT_KEY.into(), "qcow2".into());
        assert_eq!(
            decode(&with).unwrap().image,
            Some(Image {
                source: ImageSource::Url("http://10.0.0.1/disk.qcow2".into()),
                format: Some(ImageFormat::Qcow2)
            })
        );
        for (key, value) in [(IMAGE_KEY, "relative.img"), (IMAGE_FORMAT_KEY, "vhd")] {
            let mut bad = with.clone();
            bad.insert(key.into(), value.into());
            let err = decode(&bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
            assert!(err.message().contains(key), "{err:?}");
        }
        let mut format_only = context(0, 1);
        format_only.insert(IMAGE_FORMAT_KEY.into(), "raw".into());
        assert_eq!(
            decode(&format_only).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
