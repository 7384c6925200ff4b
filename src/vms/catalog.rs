//! The image and server-type catalogs: what a VM request's `image` and
//! `server_type` name. Built in, or read from a JSON file (`--vm-images`; in a
//! cluster the chart renders its values into one):
//!
//! ```json
//! {
//!   "images": {
//!     "ubuntu22": { "source": "https://example.org/jammy.img", "format": "qcow2" },
//!     "local":    { "source": "/srv/images/base.raw" }
//!   },
//!   "server_types": { "cx21": { "cpu": 2, "memory": 4 } }
//! }
//! ```
//!
//! `images` replaces the built-in images; `server_types`, when given, replaces
//! the built-in sizes.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::VmError;

/// Where an image comes from and how it is encoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// An absolute path on the node, or an http(s) URL.
    pub source: String,
    /// `raw` or `qcow2`; absent: told by the image's first bytes.
    #[serde(default)]
    pub format: Option<String>,
}

/// The CPU and memory (GB) a server type gives a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerType {
    pub cpu: u32,
    pub memory: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    images: BTreeMap<String, ImageEntry>,
    server_types: BTreeMap<String, ServerType>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    images: BTreeMap<String, ImageEntry>,
    #[serde(default)]
    server_types: Option<BTreeMap<String, ServerType>>,
}

/// Cloud images of two common distributions, for hosts that reach them.
const BUILT_IN_IMAGES: [(&str, &str); 2] = [
    (
        "ubuntu22",
        "https://cloud-images.ubuntu.com/jammy/current/jammy-server-cloudimg-amd64.img",
    ),
    (
        "debian12",
        "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
    ),
];

/// Sizes named like a common cloud's shared-CPU servers.
const BUILT_IN_SERVER_TYPES: [(&str, u32, u32); 5] = [
    ("cx11", 1, 2),
    ("cx21", 2, 4),
    ("cx31", 2, 8),
    ("cx41", 4, 16),
    ("cx51", 8, 32),
];

impl Default for Catalog {
    fn default() -> Self {
        Catalog {
            images: BUILT_IN_IMAGES
                .iter()
                .map(|(name, source)| {
                    let entry = ImageEntry {
                        source: source.to_string(),
                        format: Some("qcow2".into()),
                    };
                    (name.to_string(), entry)
                })
                .collect(),
            server_types: BUILT_IN_SERVER_TYPES
                .iter()
                .map(|(name, cpu, memory)| {
                    let size = ServerType {
                        cpu: *cpu,
                        memory: *memory,
                    };
                    (name.to_string(), size)
                })
                .collect(),
        }
    }
}

impl Catalog {
    /// The catalog in `path` (see the module's docs), checked.
    pub fn load(path: &Path) -> Result<Catalog, String> {
        let text = std::fs::read(path)
            .map_err(|e| format!("cannot read the VM image catalog {}: {e}", path.display()))?;
        Catalog::parse(&text).map_err(|e| format!("the VM image catalog {}: {e}", path.display()))
    }

    pub fn parse(json: &[u8]) -> Result<Catalog, String> {
        let file: CatalogFile = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        for (name, image) in &file.images {
            check_image(name, image)?;
        }
        let server_types = match file.server_types {
            Some(types) => {
                for (name, size) in &types {
                    if size.cpu == 0 || size.memory == 0 {
                        return Err(format!(
                            "server type {name:?}: cpu and memory must be at least 1"
                        ));
                    }
                }
                types
            }
            None => Catalog::default().server_types,
        };
        Ok(Catalog {
            images: file.images,
            server_types,
        })
    }

    pub fn image(&self, name: &str) -> Result<&ImageEntry, VmError> {
        self.images.get(name).ok_or_else(|| VmError::UnknownImage {
            name: name.to_string(),
            known: self.image_names(),
        })
    }

    pub fn server_type(&self, name: &str) -> Result<ServerType, VmError> {
        self.server_types
            .get(name)
            .copied()
            .ok_or_else(|| VmError::UnknownServerType {
                name: name.to_string(),
                known: self.server_type_names(),
            })
    }

    pub fn image_names(&self) -> String {
        names(self.images.keys())
    }

    pub fn server_type_names(&self) -> String {
        names(self.server_types.keys())
    }
}

fn names<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<&str> = keys.map(String::as_str).collect();
    if list.is_empty() {
        "none".to_string()
    } else {
        list.join(", ")
    }
}

fn check_image(name: &str, image: &ImageEntry) -> Result<(), String> {
    let source = image.source.as_str();
    let url = source.starts_with("http://") || source.starts_with("https://");
    if !url && !source.starts_with('/') {
        return Err(format!(
            "image {name:?}: source {source:?} is neither an absolute path nor an http(s) URL"
        ));
    }
    match image.format.as_deref() {
        None | Some("raw") | Some("qcow2") => Ok(()),
        Some(other) => Err(format!(
            "image {name:?}: format {other:?} is not raw or qcow2 (or leave it out to detect it)"
        )),
    }
}
