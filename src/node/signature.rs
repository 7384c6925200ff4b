//! The vdrive signature: the first 1 MiB of a signed drive is vdrive's own; the
//! signature sits at byte 0 and extents start at 1 MiB + k GiB.
//!
//! Layout (little-endian), then zeros to the end of the header:
//!
//! | bytes  | field                               |
//! | ------ | ----------------------------------- |
//! | 0..8   | magic `VDRIVE\0\x01`                |
//! | 8..12  | format version (u32, 1)             |
//! | 12..28 | drive uuid                          |
//! | 28     | drive type (1 = tlc, 2 = qlc)       |
//! | 29..37 | size of the drive in bytes (u64)    |
//! | 37..41 | CRC-32 (IEEE) of bytes 0..37        |

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::{GIB, NodeError, blockdev};
use crate::drive::DriveType;

/// Bytes reserved at the start of a signed drive.
pub const HEADER_BYTES: u64 = 1 << 20;
pub const MAGIC: [u8; 8] = *b"VDRIVE\0\x01";
pub const VERSION: u32 = 1;
/// The smallest drive worth signing: the header plus one whole GiB.
pub const MIN_DRIVE_BYTES: u64 = HEADER_BYTES + GIB;

const CRC_AT: usize = 37;
const ENCODED_LEN: usize = CRC_AT + 4;
/// How much of the header `read` looks at.
const READ_LEN: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signature {
    pub uuid: Uuid,
    pub drive_type: DriveType,
    /// Size of the whole drive when it was signed.
    pub size_bytes: u64,
}

impl Signature {
    /// Whole GiB after the header: what the ledger may hand out.
    pub fn capacity_gib(&self) -> u64 {
        self.size_bytes.saturating_sub(HEADER_BYTES) / GIB
    }

    /// Byte offset on the drive of the extent that starts `extent_offset_gib` GiB
    /// into the data area.
    pub fn data_offset_bytes(extent_offset_gib: u64) -> u64 {
        HEADER_BYTES + extent_offset_gib * GIB
    }

    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut buf = [0u8; ENCODED_LEN];
        buf[0..8].copy_from_slice(&MAGIC);
        buf[8..12].copy_from_slice(&VERSION.to_le_bytes());
        buf[12..28].copy_from_slice(self.uuid.as_bytes());
        buf[28] = match self.drive_type {
            DriveType::Tlc => 1,
            DriveType::Qlc => 2,
        };
        buf[29..37].copy_from_slice(&self.size_bytes.to_le_bytes());
        let crc = crc32(&buf[..CRC_AT]);
        buf[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    /// None when `buf` does not start with the magic; an error string when it does
    /// but the rest cannot be trusted.
    pub fn decode(buf: &[u8]) -> Result<Option<Signature>, String> {
        if buf.len() < MAGIC.len() || buf[..8] != MAGIC {
            return Ok(None);
        }
        if buf.len() < ENCODED_LEN {
            return Err(format!("the header is truncated at {} bytes", buf.len()));
        }
        let field = |range: std::ops::Range<usize>| &buf[range];
        let stored = u32::from_le_bytes(le(field(CRC_AT..ENCODED_LEN)));
        let computed = crc32(&buf[..CRC_AT]);
        if stored != computed {
            return Err(format!(
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ));
        }
        let version = u32::from_le_bytes(le(field(8..12)));
        if version != VERSION {
            return Err(format!(
                "format version {version}, this vdrive reads version {VERSION}: upgrade vdrive"
            ));
        }
        let drive_type = match buf[28] {
            1 => DriveType::Tlc,
            2 => DriveType::Qlc,
            other => return Err(format!("unknown drive type code {other}")),
        };
        Ok(Some(Signature {
            uuid: Uuid::from_bytes(le(field(12..28))),
            drive_type,
            size_bytes: u64::from_le_bytes(le(field(29..37))),
        }))
    }
}

/// Copies a slice of known length into an array (the ranges above are fixed).
fn le<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

/// Reads the signature of a drive (or image file). None when it carries no vdrive
/// magic; an error when it does but is damaged, or when the drive is now smaller
/// than it was when signed (its extents would run off the end).
pub fn read(path: &Path) -> Result<Option<Signature>, NodeError> {
    let file = File::open(path).map_err(NodeError::io("open", path))?;
    let mut buf = vec![0u8; READ_LEN];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(NodeError::io("read the header of", path)(e)),
        }
    }
    let signature =
        Signature::decode(&buf[..filled]).map_err(|reason| NodeError::BadSignature {
            path: path.to_path_buf(),
            reason,
        })?;
    if let Some(sig) = &signature {
        let size_bytes = blockdev::size_bytes(path)?;
        if size_bytes < sig.size_bytes {
            return Err(NodeError::Shrunk {
                path: path.to_path_buf(),
                size_bytes,
                signed_bytes: sig.size_bytes,
            });
        }
    }
    Ok(signature)
}

/// Signs `path` with a new uuid: zeroes the whole header (so no stale partition
/// table, superblock or claim record at its start survives) and writes the
/// signature at byte 0. This is the raw write: the safety checks, and zeroing
/// the data area first, are in [`super::drives::sign`].
pub fn write(path: &Path, drive_type: DriveType) -> Result<Signature, NodeError> {
    let size_bytes = check_size(path)?;
    let signature = Signature {
        uuid: Uuid::new_v4(),
        drive_type,
        size_bytes,
    };
    let mut header = vec![0u8; HEADER_BYTES as usize];
    header[..ENCODED_LEN].copy_from_slice(&signature.encode());
    write_header(path, &header)?;
    Ok(signature)
}

/// Zeroes the header, so the drive carries no signature (nor claim record):
/// done before its data area is zeroed, so a sign cut short leaves a drive no
/// node will use rather than a signed drive with old data on it.
pub fn clear(path: &Path) -> Result<(), NodeError> {
    check_size(path)?;
    write_header(path, &vec![0u8; HEADER_BYTES as usize])
}

fn check_size(path: &Path) -> Result<u64, NodeError> {
    let size_bytes = blockdev::size_bytes(path)?;
    if size_bytes < MIN_DRIVE_BYTES {
        return Err(NodeError::TooSmall {
            path: path.to_path_buf(),
            size_bytes,
            need_bytes: MIN_DRIVE_BYTES,
        });
    }
    Ok(size_bytes)
}

/// How long a drive claimed by someone else is asked again before signing
/// reports it in use. A claim that long is a real user (a mount, dm, md); a
/// shorter one is a descriptor of ours a helper process inherited: a thread
/// that spawns mkfs or losetup copies every open file into the child until it
/// execs, so the handle this process closed a moment ago (the header cleared,
/// then written) can keep its exclusive claim for milliseconds after the close.
const EXCLUSIVE_WAIT: Duration = Duration::from_secs(1);

/// Writes the whole header and flushes it.
fn write_header(path: &Path, header: &[u8]) -> Result<(), NodeError> {
    let mut options = OpenOptions::new();
    options.write(true);
    if blockdev::is_block_device(path)? {
        // O_EXCL on a block device fails with EBUSY while anything (a mount, dm, md)
        // holds it: the kernel's own last word on "is this in use".
        options.custom_flags(libc::O_EXCL);
    }
    let start = Instant::now();
    let file = loop {
        match options.open(path) {
            Ok(file) => break file,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if start.elapsed() >= EXCLUSIVE_WAIT {
                    return Err(NodeError::InUse {
                        device: path.to_path_buf(),
                        user: "the kernel (it is mounted or claimed by another driver)".into(),
                    });
                }
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(NodeError::io("open for writing", path)(e)),
        }
    };
    file.write_all_at(header, 0)
        .map_err(NodeError::io("write the header of", path))?;
    file.sync_all()
        .map_err(NodeError::io("flush the header of", path))
}

/// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), bit by bit: it runs over
/// 37 bytes, so a table would buy nothing.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: u64) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drive.img");
        File::create(&path).unwrap().set_len(len).unwrap();
        (dir, path)
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn capacity_is_whole_gib_after_the_header() {
        let sig = |size_bytes| Signature {
            uuid: Uuid::nil(),
            drive_type: DriveType::Tlc,
            size_bytes,
        };
        assert_eq!(sig(HEADER_BYTES + 3 * GIB).capacity_gib(), 3);
        assert_eq!(sig(HEADER_BYTES + 3 * GIB - 1).capacity_gib(), 2);
        assert_eq!(sig(4 * GIB).capacity_gib(), 3);
        assert_eq!(sig(0).capacity_gib(), 0);
        assert_eq!(Signature::data_offset_bytes(0), HEADER_BYTES);
        assert_eq!(Signature::data_offset_bytes(2), HEADER_BYTES + 2 * GIB);
    }

    #[test]
    fn write_then_read_round_trips() {
        let (_dir, path) = image(HEADER_BYTES + 2 * GIB + 5);
        assert_eq!(read(&path).unwrap(), None);
        let written = write(&path, DriveType::Qlc).unwrap();
        assert_eq!(written.size_bytes, HEADER_BYTES + 2 * GIB + 5);
        assert_eq!(written.capacity_gib(), 2);
        assert_eq!(read(&path).unwrap(), Some(written));
        // Signing again makes a new drive identity.
        let again = write(&path, DriveType::Tlc).unwrap();
        assert_ne!(again.uuid, written.uuid);
        assert_eq!(read(&path).unwrap(), Some(again));
    }

    #[test]
    fn write_clears_the_rest_of_the_header() {
        let (_dir, path) = image(HEADER_BYTES + GIB);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        file.write_all_at(b"stale superblock", 1024).unwrap();
        file.write_all_at(b"extent data", HEADER_BYTES).unwrap();
        write(&path, DriveType::Tlc).unwrap();
        let mut buf = [0u8; 16];
        file.read_at(&mut buf, 1024).unwrap();
        assert_eq!(buf, [0u8; 16]);
        let mut data = [0u8; 11];
        file.read_at(&mut data, HEADER_BYTES).unwrap();
        assert_eq!(&data, b"extent data", "the data area is not touched");
    }

    #[test]
    fn too_small_is_refused_with_the_minimum() {
        let (_dir, path) = image(GIB);
        let err = write(&path, DriveType::Tlc).unwrap_err();
        assert!(
            matches!(err, NodeError::TooSmall { need_bytes, .. } if need_bytes == MIN_DRIVE_BYTES)
        );
        assert!(err.to_string().contains("larger device"), "{err}");
    }

    #[test]
    fn a_damaged_signature_is_an_error_not_a_blank_drive() {
        let (_dir, path) = image(HEADER_BYTES + GIB);
        write(&path, DriveType::Tlc).unwrap();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], 30).unwrap();
        let err = read(&path).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        assert!(err.to_string().contains("--force"), "{err}");
    }

    #[test]
    fn a_newer_version_is_named() {
        let mut buf = Signature {
            uuid: Uuid::new_v4(),
            drive_type: DriveType::Tlc,
            size_bytes: 2 * GIB,
        }
        .encode();
        buf[8] = 2;
        let crc = crc32(&buf[..CRC_AT]);
        buf[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        let err = Signature::decode(&buf).unwrap_err();
        assert!(err.contains("format version 2"), "{err}");
    }

    #[test]
    fn no_magic_is_none_even_for_short_files() {
        assert_eq!(Signature::decode(b"").unwrap(), None);
        assert_eq!(Signature::decode(b"VDRI").unwrap(), None);
        assert_eq!(Signature::decode(&[0u8; 4096]).unwrap(), None);
        assert!(
            Signature::decode(&MAGIC).is_err(),
            "magic alone is truncated"
        );
    }

    #[test]
    fn a_drive_that_shrank_is_refused() {
        let (_dir, path) = image(HEADER_BYTES + 2 * GIB);
        write(&path, DriveType::Tlc).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(HEADER_BYTES + GIB)
            .unwrap();
        assert!(matches!(read(&path), Err(NodeError::Shrunk { .. })));
    }
}
