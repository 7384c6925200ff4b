//! Physical drive types and the extents virtual drives are carved from.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The flash type of a physical drive. TLC is the fast tier, QLC the dense one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriveType {
    Tlc,
    Qlc,
}

impl DriveType {
    /// Allocation order: TLC first, then QLC (as the drive-sharing spec requires).
    pub const ALL: [DriveType; 2] = [DriveType::Tlc, DriveType::Qlc];

    /// Lower-case name used on the wire, in flags and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            DriveType::Tlc => "tlc",
            DriveType::Qlc => "qlc",
        }
    }

    /// Upper-case name used in messages for people ("insufficient TLC capacity").
    pub fn label(self) -> &'static str {
        match self {
            DriveType::Tlc => "TLC",
            DriveType::Qlc => "QLC",
        }
    }
}

impl fmt::Display for DriveType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DriveType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tlc" => Ok(DriveType::Tlc),
            "qlc" => Ok(DriveType::Qlc),
            other => Err(format!("unknown drive type {other:?}: use tlc or qlc")),
        }
    }
}

/// A contiguous run of whole GiB on one physical drive, counted from the start of
/// the drive's data area (after the signature header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Extent {
    pub offset_gib: u64,
    pub size_gib: u64,
}

impl Extent {
    pub fn new(offset_gib: u64, size_gib: u64) -> Self {
        Extent {
            offset_gib,
            size_gib,
        }
    }

    /// One past the last GiB of the extent (saturating: an extent read from
    /// outside that ends past u64 is out of every drive's bounds, never a wrap).
    pub fn end_gib(&self) -> u64 {
        self.offset_gib.saturating_add(self.size_gib)
    }

    pub fn overlaps(&self, other: &Extent) -> bool {
        self.offset_gib < other.end_gib() && other.offset_gib < self.end_gib()
    }

    /// Whether every GiB of `other` is in this extent.
    pub fn contains(&self, other: &Extent) -> bool {
        self.offset_gib <= other.offset_gib && other.end_gib() <= self.end_gib()
    }
}

/// How a node builds a volume's block device from its extents. It decides how
/// many virtual drives one volume may have on that node: a loop device maps one
/// extent, a device-mapper linear table joins any number, in part order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A loop device over one extent (any Linux with loop support; plain CI hosts).
    /// The default, because ledgers written before backends were recorded were loop.
    #[default]
    Loop,
    /// A device-mapper linear device over all of a volume's extents.
    Dm,
}

impl Backend {
    /// Lower-case name used on the wire, in flags and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Loop => "loop",
            Backend::Dm => "dm",
        }
    }

    /// Most virtual drives this backend joins into one volume (None: any number).
    pub fn max_parts(self) -> Option<usize> {
        match self {
            Backend::Loop => Some(1),
            Backend::Dm => None,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "loop" => Ok(Backend::Loop),
            "dm" => Ok(Backend::Dm),
            other => Err(format!("unknown backend {other:?}: use loop or dm")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_read_and_write_their_names() {
        for backend in [Backend::Loop, Backend::Dm] {
            assert_eq!(backend.as_str().parse::<Backend>(), Ok(backend));
            assert_eq!(
                serde_json::to_string(&backend).unwrap(),
                format!("\"{backend}\"")
            );
        }
        assert_eq!("DM".parse::<Backend>(), Ok(Backend::Dm));
        assert!("spdk".parse::<Backend>().is_err());
        assert_eq!(Backend::default(), Backend::Loop);
    }
}
