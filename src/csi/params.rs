//! StorageClass parameters: parsing them into an allocator request, and the two
//! preset classes defined once here and rendered everywhere else.

use std::collections::{BTreeMap, HashMap};

use thiserror::Error;

use crate::allocator::{self, Ratio, Request, Shape};
use crate::ledger::VolumeClass;
use crate::node::image::{Image, ImageFormat, ImageSource};
use crate::pools::Pool;

/// Keys reserved for the CO (external-provisioner's `--extra-create-metadata`,
/// secrets, fstype); all accepted, a few read.
pub const CO_PREFIX: &str = "csi.storage.k8s.io/";
pub const FSTYPE_KEY: &str = "csi.storage.k8s.io/fstype";
pub const PVC_NAME_KEY: &str = "csi.storage.k8s.io/pvc/name";
pub const PVC_NAMESPACE_KEY: &str = "csi.storage.k8s.io/pvc/namespace";

/// The disk image written into a block volume at its first staging, and its
/// format (`raw` or `qcow2`; absent: detected from the file).
pub const IMAGE_KEY: &str = "image";
pub const IMAGE_FORMAT_KEY: &str = "imageFormat";

const KNOWN_KEYS: [&str; 11] = [
    "pool",
    "tlc",
    "qlc",
    "driveCores",
    "numDrives",
    "driveCapacity",
    "minDriveGiB",
    "maxVirtualDrivesPerCore",
    "enforceMinDrivesPerTypePerCore",
    IMAGE_KEY,
    IMAGE_FORMAT_KEY,
];

/// The cluster-wide defaults a class may override (the chart's values).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Defaults {
    pub ratio: Ratio,
    pub max_virtual_drives_per_core: u32,
    pub enforce_min_drives_per_type_per_core: bool,
    pub min_drive_gib: u64,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            ratio: allocator::DEFAULT_RATIO,
            max_virtual_drives_per_core: allocator::DEFAULT_MAX_VIRTUAL_DRIVES_PER_CORE,
            enforce_min_drives_per_type_per_core: true,
            min_drive_gib: allocator::DEFAULT_MIN_DRIVE_GIB,
        }
    }
}

/// What a class asks for, minus the size (which comes with each request).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassParams {
    pub pool: Option<Pool>,
    /// Ratio mode (None in fixed mode).
    pub ratio: Option<Ratio>,
    /// Fixed mode: `numDrives` × `driveCapacity` GiB.
    pub fixed: Option<(u32, u64)>,
    pub drive_cores: u32,
    pub min_drive_gib: u64,
    pub max_virtual_drives_per_core: u32,
    pub enforce_min_drives_per_type_per_core: bool,
    pub fs_type: Option<String>,
    /// `namespace:name` of the PVC, when the CO passed it.
    pub owner: Option<String>,
    /// The disk image written into the (block) volume at its first staging.
    pub image: Option<Image>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParamError {
    #[error("unknown StorageClass parameter {key:?}: vdrive understands {known} (and any key starting with {CO_PREFIX})", known = KNOWN_KEYS.join(", "))]
    UnknownKey { key: String },
    #[error("StorageClass parameter {key}={value:?} is invalid: {reason}")]
    BadValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error("{0}")]
    Conflict(String),
}

impl ClassParams {
    pub fn parse(
        params: &HashMap<String, String>,
        defaults: &Defaults,
    ) -> Result<Self, ParamError> {
        for key in params.keys() {
            if !key.starts_with(CO_PREFIX) && !KNOWN_KEYS.contains(&key.as_str()) {
                return Err(ParamError::UnknownKey { key: key.clone() });
            }
        }
        let number = |key: &str| -> Result<Option<u64>, ParamError> {
            params
                .get(key)
                .map(|value| {
                    value
                        .trim()
                        .parse::<u64>()
                        .map_err(|_| ParamError::BadValue {
                            key: key.to_string(),
                            value: value.clone(),
                            reason: "expected a whole number".into(),
                        })
                })
                .transpose()
        };
        let small = |key: &str| -> Result<Option<u32>, ParamError> {
            number(key)?
                .map(|n| {
                    u32::try_from(n).map_err(|_| ParamError::BadValue {
                        key: key.to_string(),
                        value: n.to_string(),
                        reason: "too large".into(),
                    })
                })
                .transpose()
        };
        let pool = params
            .get("pool")
            .map(|value| {
                value
                    .parse::<Pool>()
                    .map_err(|reason| ParamError::BadValue {
                        key: "pool".into(),
                        value: value.clone(),
                        reason,
                    })
            })
            .transpose()?;
        let enforce = match params
            .get("enforceMinDrivesPerTypePerCore")
            .map(|v| v.trim())
        {
            None => defaults.enforce_min_drives_per_type_per_core,
            Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(ParamError::BadValue {
                    key: "enforceMinDrivesPerTypePerCore".into(),
                    value: other.into(),
                    reason: "expected true or false".into(),
                });
            }
        };
        let (tlc, qlc) = (small("tlc")?, small("qlc")?);
        let fixed = match (small("numDrives")?, number("driveCapacity")?) {
            (Some(n), Some(gib)) => {
                // Checked: the product is a volume size, and sizes are bounded.
                if u64::from(n)
                    .checked_mul(gib)
                    .is_none_or(|total| total > allocator::MAX_CAPACITY_GIB)
                {
                    return Err(ParamError::BadValue {
                        key: "driveCapacity".into(),
                        value: gib.to_string(),
                        reason: format!(
                            "numDrives × driveCapacity ({n} × {gib}) is more than the largest volume, {} GiB",
                            allocator::MAX_CAPACITY_GIB
                        ),
                    });
                }
                Some((n, gib))
            }
            (None, None) => None,
            _ => {
                return Err(ParamError::Conflict(
                    "numDrives and driveCapacity go together (fixed TLC mode): set both, or neither".into(),
                ));
            }
        };
        if fixed.is_some() && (tlc.is_some() || qlc.is_some()) {
            return Err(ParamError::Conflict(
                "numDrives/driveCapacity (fixed mode, TLC only) cannot be combined with tlc/qlc; for QLC or mixed drives use tlc and qlc alone".into(),
            ));
        }
        let ratio = fixed.is_none().then(|| match (tlc, qlc) {
            (None, None) => defaults.ratio,
            (tlc, qlc) => Ratio {
                tlc: tlc.unwrap_or(0),
                qlc: qlc.unwrap_or(0),
            },
        });
        let fs_type = params.get(FSTYPE_KEY).filter(|v| !v.is_empty()).cloned();
        let owner = match (params.get(PVC_NAMESPACE_KEY), params.get(PVC_NAME_KEY)) {
            (Some(namespace), Some(name)) => Some(format!("{namespace}:{name}")),
            _ => None,
        };
        let image = image(params)?;
        let params = ClassParams {
            pool,
            ratio,
            fixed,
            drive_cores: small("driveCores")?.unwrap_or(1),
            min_drive_gib: number("minDriveGiB")?.unwrap_or(defaults.min_drive_gib),
            max_virtual_drives_per_core: small("maxVirtualDrivesPerCore")?
                .unwrap_or(defaults.max_virtual_drives_per_core),
            enforce_min_drives_per_type_per_core: enforce,
            fs_type,
            owner,
            image,
        };
        // Settings no size can satisfy are reported now, naming the parameter.
        params
            .request(params.fixed_gib().unwrap_or(1))
            .validate()
            .map_err(|e| ParamError::Conflict(e.to_string()))?;
        Ok(params)
    }

    /// The size of every volume of a fixed-size class (`numDrives` ×
    /// `driveCapacity`, which [`ClassParams::parse`] bounds).
    pub fn fixed_gib(&self) -> Option<u64> {
        self.fixed.map(|(n, gib)| u64::from(n).saturating_mul(gib))
    }

    /// The class as the ledger's placement sees it.
    pub fn class(&self) -> VolumeClass {
        VolumeClass {
            pool: self.pool,
            layout: self.request(1),
        }
    }

    /// The allocator request for a volume of `capacity_gib` (ignored in fixed mode).
    pub fn request(&self, capacity_gib: u64) -> Request {
        let shape = match (self.fixed, self.ratio) {
            (Some((num_drives, drive_capacity_gib)), _) => Shape::Fixed {
                num_drives,
                drive_capacity_gib,
            },
            (None, ratio) => Shape::Ratio {
                capacity_gib,
                ratio: ratio.unwrap_or_default(),
            },
        };
        Request {
            shape,
            drive_cores: self.drive_cores,
            enforce_min_drives_per_type_per_core: self.enforce_min_drives_per_type_per_core,
            max_virtual_drives_per_core: self.max_virtual_drives_per_core,
            min_drive_gib: self.min_drive_gib,
        }
    }
}

/// `image` and `imageFormat`: the image's source checked for shape (the node
/// reads it), its format one vdrive converts.
fn image(params: &HashMap<String, String>) -> Result<Option<Image>, ParamError> {
    let bad = |key: &str, value: &str, reason: String| ParamError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
        reason,
    };
    let format = params
        .get(IMAGE_FORMAT_KEY)
        .map(|value| {
            value
                .parse::<ImageFormat>()
                .map_err(|reason| bad(IMAGE_FORMAT_KEY, value, reason))
        })
        .transpose()?;
    let Some(value) = params.get(IMAGE_KEY) else {
        return match format {
            Some(_) => Err(ParamError::Conflict(format!(
                "{IMAGE_FORMAT_KEY} names the format of an image, and no {IMAGE_KEY} is given: set {IMAGE_KEY} too, or drop {IMAGE_FORMAT_KEY}"
            ))),
            None => Ok(None),
        };
    };
    let source = ImageSource::parse(value).map_err(|reason| bad(IMAGE_KEY, value, reason))?;
    Ok(Some(Image { source, format }))
}

/// A StorageClass vdrive ships.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    pub default_class: bool,
    pub reclaim_policy: &'static str,
    pub binding_mode: &'static str,
    pub allow_volume_expansion: bool,
    pub parameters: BTreeMap<&'static str, &'static str>,
}

/// `k8s-pool-storage` (the default class: TLC from the k8s pool, deleted with its
/// PVC) and `vm-pool-storage` (QLC from the vm pool, kept when the PVC goes).
pub fn presets() -> Vec<Preset> {
    let preset = |name, default_class, reclaim_policy, pool, tlc, qlc| Preset {
        name,
        default_class,
        reclaim_policy,
        binding_mode: "WaitForFirstConsumer",
        allow_volume_expansion: true,
        parameters: BTreeMap::from([
            ("pool", pool),
            ("tlc", tlc),
            ("qlc", qlc),
            ("driveCores", "1"),
            ("minDriveGiB", "1"),
        ]),
    };
    vec![
        preset("k8s-pool-storage", true, "Delete", "k8s", "1", "0"),
        preset("vm-pool-storage", false, "Retain", "vm", "0", "1"),
    ]
}

pub fn preset(name: &str) -> Option<Preset> {
    presets().into_iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<ClassParams, ParamError> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ClassParams::parse(&map, &Defaults::default())
    }

    #[test]
    fn empty_parameters_take_the_global_defaults() {
        let p = parse(&[]).unwrap();
        assert_eq!(p.ratio, Some(Ratio { tlc: 1, qlc: 10 }));
        assert_eq!(
            (
                p.drive_cores,
                p.min_drive_gib,
                p.max_virtual_drives_per_core
            ),
            (1, 384, 8)
        );
        assert!(p.enforce_min_drives_per_type_per_core);
        assert_eq!(p.pool, None);
    }

    #[test]
    fn presets_parse_to_single_type_pool_volumes() {
        for preset in presets() {
            let map = preset
                .parameters
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let p = ClassParams::parse(&map, &Defaults::default()).unwrap();
            assert_eq!(p.drive_cores, 1);
            assert_eq!(p.min_drive_gib, 1);
            assert!(p.pool.is_some());
        }
        let k8s = preset("k8s-pool-storage").unwrap();
        assert!(k8s.default_class);
        assert_eq!(
            (
                k8s.reclaim_policy,
                k8s.parameters["tlc"],
                k8s.parameters["qlc"]
            ),
            ("Delete", "1", "0")
        );
        let vm = preset("vm-pool-storage").unwrap();
        assert_eq!(
            (
                vm.reclaim_policy,
                vm.parameters["tlc"],
                vm.parameters["qlc"]
            ),
            ("Retain", "0", "1")
        );
    }

    #[test]
    fn the_csi_sanity_parameters_are_the_k8s_preset() {
        let file = include_str!("../../csi-sanity/k8s-pool-storage.yaml");
        let mut from_file: Vec<(String, String)> = file
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && l.contains(':'))
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
            .collect();
        from_file.sort();
        let preset: Vec<(String, String)> = preset("k8s-pool-storage")
            .unwrap()
            .parameters
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(from_file, preset);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse(&[("tlcRatio", "1")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unknown StorageClass parameter \"tlcRatio\""),
            "{err}"
        );
        assert!(parse(&[("csi.storage.k8s.io/pvc/name", "x")]).is_ok());
    }

    #[test]
    fn bad_values_say_which_key() {
        let err = parse(&[("driveCores", "two")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "StorageClass parameter driveCores=\"two\" is invalid: expected a whole number"
        );
        assert!(
            parse(&[("pool", "gpu")])
                .unwrap_err()
                .to_string()
                .contains("pool=\"gpu\"")
        );
        assert!(parse(&[("enforceMinDrivesPerTypePerCore", "yes")]).is_err());
        assert!(
            parse(&[("tlc", "0"), ("qlc", "0")])
                .unwrap_err()
                .to_string()
                .contains("0:0")
        );
        assert!(parse(&[("driveCores", "0")]).is_err());
    }

    #[test]
    fn fixed_mode_needs_both_keys_and_no_ratio() {
        assert_eq!(
            parse(&[("numDrives", "6"), ("driveCapacity", "1000")])
                .unwrap()
                .fixed,
            Some((6, 1000))
        );
        assert!(parse(&[("numDrives", "6")]).is_err());
        assert!(parse(&[("numDrives", "6"), ("driveCapacity", "1000"), ("tlc", "1")]).is_err());
    }

    #[test]
    fn numbers_at_the_edge_of_their_type_are_refused_or_planned_without_overflow() {
        use crate::allocator::FreeDrive;
        use crate::drive::DriveType;
        let edges = [
            "0",
            "1",
            "4294967295",
            "4294967296",
            "9223372036854775807",
            "18446744073709551615",
            "18446744073709551616",
        ];
        let keys = [
            "tlc",
            "qlc",
            "driveCores",
            "numDrives",
            "driveCapacity",
            "minDriveGiB",
            "maxVirtualDrivesPerCore",
        ];
        let drives = [
            FreeDrive::whole(DriveType::Tlc, u64::MAX / 4),
            FreeDrive::whole(DriveType::Qlc, u64::MAX / 4),
        ];
        for key in keys {
            for value in edges {
                let mut pairs = vec![(key, value)];
                if key == "numDrives" {
                    pairs.push(("driveCapacity", "1"));
                }
                if key == "driveCapacity" {
                    pairs.push(("numDrives", "4294967295"));
                }
                // Refused with a message, or a request the allocator plans: never a panic.
                if let Ok(p) = parse(&pairs) {
                    for gib in [1, allocator::MAX_CAPACITY_GIB, u64::MAX] {
                        let _ = allocator::plan(&p.request(gib), Some(&drives));
                    }
                }
            }
        }
        let err = parse(&[
            ("numDrives", "4294967295"),
            ("driveCapacity", "18446744073709551615"),
        ])
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("numDrives × driveCapacity (4294967295 × 18446744073709551615)"),
            "{err}"
        );
    }

    #[test]
    fn an_image_is_a_clean_path_or_an_http_url_with_an_optional_format() {
        assert_eq!(parse(&[]).unwrap().image, None);
        let p = parse(&[("image", "/var/lib/images/disk.img")]).unwrap();
        assert_eq!(
            p.image,
            Some(Image {
                source: ImageSource::File("/var/lib/images/disk.img".into()),
                format: None
            })
        );
        let p = parse(&[
            ("image", "https://images.example/disk.qcow2"),
            ("imageFormat", "qcow2"),
        ])
        .unwrap();
        let image = p.image.unwrap();
        assert_eq!(
            image.source,
            ImageSource::Url("https://images.example/disk.qcow2".into())
        );
        assert_eq!(image.format, Some(ImageFormat::Qcow2));
        for bad in ["disk.img", "/a/../b", "ftp://host/x", "s3://bucket/x"] {
            let err = parse(&[("image", bad)]).unwrap_err();
            assert!(
                matches!(&err, ParamError::BadValue { key, .. } if key == "image"),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("http:// or https:// URL"), "{err}");
        }
        let err = parse(&[("image", "/disk.img"), ("imageFormat", "vmdk")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "StorageClass parameter imageFormat=\"vmdk\" is invalid: expected raw or qcow2 (or leave imageFormat out to detect it from the file)"
        );
        let err = parse(&[("imageFormat", "raw")]).unwrap_err();
        assert!(matches!(err, ParamError::Conflict(_)), "{err}");
        assert!(err.to_string().contains("set image too"), "{err}");
    }

    #[test]
    fn owner_comes_from_extra_create_metadata() {
        let p = parse(&[(PVC_NAMESPACE_KEY, "apps"), (PVC_NAME_KEY, "data")]).unwrap();
        assert_eq!(p.owner.as_deref(), Some("apps:data"));
    }
}
