//! Device-mapper linear devices: the `dm` backend's building block. A volume made of
//! several extents becomes one block device whose table maps its sectors, in order,
//! onto ranges of the drives.
//!
//! This talks to the kernel directly through the device-mapper ioctl interface
//! (version 4, `include/uapi/linux/dm-ioctl.h`) on `/dev/mapper/control`: no
//! libdevmapper, no dmsetup, and no udev assumed. Device nodes come from devtmpfs
//! (`/dev/dm-N`), or are made here with mknod when devtmpfs is not mounted.
//!
//! Every request is a `struct dm_ioctl` header, optionally followed by a payload,
//! in one buffer whose header says how long it is; replies come back in the same
//! buffer. Headers and payloads are encoded and decoded here byte by byte at the
//! header's documented offsets (native endianness, as the kernel reads them), so
//! the only unsafe code is the ioctl call itself, and every offset a reply carries
//! is checked against the buffer before it is followed.
//!
//! Calls about one device must not run concurrently (the CSI layer serializes
//! operations per volume); the kernel keeps calls about different devices apart.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::stat::{self, Mode, SFlag};

use super::{NodeError, blockdev};

/// One linear segment: `sectors` 512-byte sectors of block device `major:minor`
/// starting at its sector `start_sector`. A table is a list of segments laid end to
/// end: a segment's first logical sector is the sum of the lengths before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linear {
    pub major: u64,
    pub minor: u64,
    pub start_sector: u64,
    pub sectors: u64,
}

/// A device-mapper device as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmDevice {
    pub name: String,
    /// Empty when the device was created without one.
    pub uuid: String,
    pub major: u64,
    pub minor: u64,
    /// How many times the device is open (mounts, file descriptors, stacked devices).
    pub open_count: i32,
    pub suspended: bool,
    /// Whether a table is live: a device without one has no sectors.
    pub live_table: bool,
}

const CONTROL: &str = "/dev/mapper/control";
const MAPPER_DIR: &str = "/dev/mapper";

/// The interface version this module speaks: the kernel accepts any request of its
/// own major version whose minor is not newer than its own.
const INTERFACE: (u32, u32, u32) = (4, 0, 0);

// `struct dm_ioctl`: its size and the byte offsets of its fields.
const HEADER_SIZE: usize = 312;
const OFF_VERSION: usize = 0;
const OFF_DATA_SIZE: usize = 12;
const OFF_DATA_START: usize = 16;
const OFF_TARGET_COUNT: usize = 20;
const OFF_OPEN_COUNT: usize = 24;
const OFF_FLAGS: usize = 28;
const OFF_DEV: usize = 40;
const OFF_NAME: usize = 48;
const NAME_LEN: usize = 128;
const OFF_UUID: usize = OFF_NAME + NAME_LEN;
const UUID_LEN: usize = 129;
/// `offsetof(struct dm_ioctl, data)`: the smallest data_size the kernel accepts
/// and what it reports for replies without a payload.
const HEADER_USED: usize = OFF_UUID + UUID_LEN;

// `struct dm_target_spec`: sector_start u64, length u64, status i32, next u32,
// target_type[16]; the target's NUL-terminated parameters follow it.
const SPEC_SIZE: usize = 40;
const SPEC_OFF_LENGTH: usize = 8;
const SPEC_OFF_STATUS: usize = 16;
const SPEC_OFF_NEXT: usize = 20;
const SPEC_OFF_TYPE: usize = 24;
const TYPE_NAME_LEN: usize = 16;

// `struct dm_name_list`: dev u64, next u32 (from the start of this record), then
// the NUL-terminated name.
const NAME_LIST_OFF_NEXT: usize = 8;
const NAME_LIST_OFF_NAME: usize = 12;

// Flags (dm_ioctl.flags).
const DM_SUSPEND_FLAG: u32 = 1 << 1;
const DM_STATUS_TABLE_FLAG: u32 = 1 << 4;
const DM_ACTIVE_PRESENT_FLAG: u32 = 1 << 5;
const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;

const LINEAR: &str = "linear";

/// Room for a reply's payload at first; doubled while the kernel says it was too
/// small, up to the cap (a table of thousands of segments fits in far less).
const FIRST_ROOM: usize = 16 << 10;
const MAX_ROOM: usize = 16 << 20;

/// How long a remove keeps retrying a device that is open: udev's probe or a
/// just-finished unmount hold it for a moment.
const REMOVE_WAIT: Duration = Duration::from_secs(1);
const REMOVE_STEP: Duration = Duration::from_millis(50);

/// The kernel's dev_t limits (MKDEV): a table naming a device outside them is
/// refused by the kernel, so it is refused here first with a clearer message.
const MAX_MAJOR: u64 = (1 << 12) - 1;
const MAX_MINOR: u64 = (1 << 20) - 1;

/// The ioctl request numbers, `_IOWR(0xfd, cmd, struct dm_ioctl)`. They live in a
/// private module so the functions the macros generate stay private.
mod sys {
    /// A type of the size of `struct dm_ioctl`, which the request numbers encode.
    pub type DmIoctl = [u64; super::HEADER_SIZE / 8];
    const DM_IOCTL: u8 = 0xfd;
    nix::ioctl_readwrite!(dm_version, DM_IOCTL, 0, DmIoctl);
    nix::ioctl_readwrite!(dm_list_devices, DM_IOCTL, 2, DmIoctl);
    nix::ioctl_readwrite!(dm_dev_create, DM_IOCTL, 3, DmIoctl);
    nix::ioctl_readwrite!(dm_dev_remove, DM_IOCTL, 4, DmIoctl);
    nix::ioctl_readwrite!(dm_dev_suspend, DM_IOCTL, 6, DmIoctl);
    nix::ioctl_readwrite!(dm_dev_status, DM_IOCTL, 7, DmIoctl);
    nix::ioctl_readwrite!(dm_table_load, DM_IOCTL, 9, DmIoctl);
    nix::ioctl_readwrite!(dm_table_clear, DM_IOCTL, 10, DmIoctl);
    nix::ioctl_readwrite!(dm_table_status, DM_IOCTL, 12, DmIoctl);
}

type RawIoctl = unsafe fn(libc::c_int, *mut sys::DmIoctl) -> nix::Result<libc::c_int>;

/// The commands used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Version,
    ListDevices,
    DevCreate,
    DevRemove,
    DevSuspend,
    DevStatus,
    TableLoad,
    TableClear,
    TableStatus,
}

impl Cmd {
    fn op(self) -> &'static str {
        match self {
            Cmd::Version => "DM_VERSION",
            Cmd::ListDevices => "DM_LIST_DEVICES",
            Cmd::DevCreate => "DM_DEV_CREATE",
            Cmd::DevRemove => "DM_DEV_REMOVE",
            Cmd::DevSuspend => "DM_DEV_SUSPEND",
            Cmd::DevStatus => "DM_DEV_STATUS",
            Cmd::TableLoad => "DM_TABLE_LOAD",
            Cmd::TableClear => "DM_TABLE_CLEAR",
            Cmd::TableStatus => "DM_TABLE_STATUS",
        }
    }

    fn raw(self) -> RawIoctl {
        match self {
            Cmd::Version => sys::dm_version,
            Cmd::ListDevices => sys::dm_list_devices,
            Cmd::DevCreate => sys::dm_dev_create,
            Cmd::DevRemove => sys::dm_dev_remove,
            Cmd::DevSuspend => sys::dm_dev_suspend,
            Cmd::DevStatus => sys::dm_dev_status,
            Cmd::TableLoad => sys::dm_table_load,
            Cmd::TableClear => sys::dm_table_clear,
            Cmd::TableStatus => sys::dm_table_status,
        }
    }
}

/// An open `/dev/mapper/control`.
struct Control {
    file: File,
}

impl Control {
    fn open() -> Result<Self, NodeError> {
        // Opening the node also loads dm-mod if it is a module not yet loaded.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL)
            .map_err(NodeError::io("open", CONTROL))?;
        Ok(Control { file })
    }

    /// Sends `buf` (a header, then any payload or room for the reply) and leaves
    /// the kernel's reply in it. The buffer is padded to whole u64 words and its
    /// header's data_size set to its length, which is all the kernel may touch.
    fn ioctl(&self, cmd: Cmd, buf: &mut Vec<u8>) -> nix::Result<()> {
        let len = buf.len().max(HEADER_SIZE).next_multiple_of(8);
        buf.resize(len, 0);
        let size = u32::try_from(len).map_err(|_| Errno::EOVERFLOW)?;
        put_u32(buf, OFF_DATA_SIZE, size);
        // The request's type is [u64; 39], which is 8-aligned and the byte buffer
        // need not be: hand the kernel a copy in whole words.
        let mut words: Vec<u64> = buf
            .chunks_exact(8)
            .map(|chunk| {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                u64::from_ne_bytes(word)
            })
            .collect();
        // SAFETY: `words` is a live, u64-aligned allocation of `len` bytes, at least
        // the 312 bytes of struct dm_ioctl the request number encodes, and its
        // header's data_size is `len`: the kernel copies in and writes back at most
        // data_size bytes. The fd stays open for the duration of the call.
        unsafe { (cmd.raw())(self.file.as_raw_fd(), words.as_mut_ptr().cast()) }?;
        for (chunk, word) in buf.chunks_exact_mut(8).zip(&words) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        Ok(())
    }
}

/// A reply's header, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    version: (u32, u32, u32),
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    dev: u64,
    name: String,
    uuid: String,
}

fn put_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_ne_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, value: u64) {
    buf[at..at + 8].copy_from_slice(&value.to_ne_bytes());
}

fn get_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

fn get_u64(buf: &[u8], at: usize) -> Option<u64> {
    let bytes = buf.get(at..at.checked_add(8)?)?;
    Some(u64::from_ne_bytes(bytes.try_into().ok()?))
}

/// The NUL-terminated string at the start of `bytes`; None without a NUL.
fn c_str(bytes: &[u8]) -> Option<&[u8]> {
    let end = bytes.iter().position(|&b| b == 0)?;
    Some(&bytes[..end])
}

/// A fixed-size string field: up to its first NUL, or all of it.
fn field_str(bytes: &[u8]) -> String {
    String::from_utf8_lossy(c_str(bytes).unwrap_or(bytes)).into_owned()
}

/// A request header for device `name` (empty for commands about no device) and
/// `uuid` (empty for none), with `flags`; data starts right after it.
fn request(name: &str, uuid: &str, flags: u32) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_SIZE];
    put_u32(&mut buf, OFF_VERSION, INTERFACE.0);
    put_u32(&mut buf, OFF_VERSION + 4, INTERFACE.1);
    put_u32(&mut buf, OFF_VERSION + 8, INTERFACE.2);
    put_u32(&mut buf, OFF_DATA_SIZE, HEADER_SIZE as u32);
    put_u32(&mut buf, OFF_DATA_START, HEADER_SIZE as u32);
    put_u32(&mut buf, OFF_FLAGS, flags);
    // Callers validated the lengths; the fields stay NUL-terminated regardless.
    let name = &name.as_bytes()[..name.len().min(NAME_LEN - 1)];
    buf[OFF_NAME..OFF_NAME + name.len()].copy_from_slice(name);
    let uuid = &uuid.as_bytes()[..uuid.len().min(UUID_LEN - 1)];
    buf[OFF_UUID..OFF_UUID + uuid.len()].copy_from_slice(uuid);
    buf
}

fn parse_header(buf: &[u8]) -> Result<Header, String> {
    if buf.len() < HEADER_SIZE {
        return Err(format!(
            "reply is {} bytes, shorter than its {HEADER_SIZE}-byte header",
            buf.len()
        ));
    }
    let u32_at = |at| get_u32(buf, at).ok_or_else(|| format!("no field at offset {at}"));
    let header = Header {
        version: (
            u32_at(OFF_VERSION)?,
            u32_at(OFF_VERSION + 4)?,
            u32_at(OFF_VERSION + 8)?,
        ),
        data_size: u32_at(OFF_DATA_SIZE)?,
        data_start: u32_at(OFF_DATA_START)?,
        target_count: u32_at(OFF_TARGET_COUNT)?,
        open_count: u32_at(OFF_OPEN_COUNT)? as i32,
        flags: u32_at(OFF_FLAGS)?,
        dev: get_u64(buf, OFF_DEV).ok_or("no dev field")?,
        name: field_str(&buf[OFF_NAME..OFF_NAME + NAME_LEN]),
        uuid: field_str(&buf[OFF_UUID..OFF_UUID + UUID_LEN]),
    };
    Ok(header)
}

/// The part of `buf` the reply's data may occupy, as (start, end) offsets from the
/// start of the buffer, after checking the kernel's data_start and data_size.
fn data_bounds(buf: &[u8], header: &Header) -> Result<(usize, usize), String> {
    let start = header.data_start as usize;
    let end = header.data_size as usize;
    if start < HEADER_USED || start > end || end > buf.len() {
        return Err(format!(
            "data at {start}..{end} does not fit a {}-byte reply after its header",
            buf.len()
        ));
    }
    Ok((start, end))
}

/// The devices a LIST_DEVICES reply names, with their dev_t (huge-encoded).
fn parse_name_list(buf: &[u8]) -> Result<Vec<(String, u64)>, String> {
    let header = parse_header(buf)?;
    let (start, end) = data_bounds(buf, &header)?;
    let mut devices = Vec::new();
    // No device at all: the kernel sends no record.
    if start == end {
        return Ok(devices);
    }
    let mut at = start;
    loop {
        let record = &buf[at..end];
        let dev = get_u64(record, 0).ok_or_else(|| format!("record at {at} is truncated"))?;
        let next = get_u32(record, NAME_LIST_OFF_NEXT)
            .ok_or_else(|| format!("record at {at} is truncated"))?;
        // A first record with dev_t 0 (which no device has) also means none.
        if dev == 0 && at == start {
            return Ok(devices);
        }
        let name = record
            .get(NAME_LIST_OFF_NAME..)
            .and_then(c_str)
            .ok_or_else(|| format!("the name in record at {at} is not NUL-terminated"))?;
        devices.push((String::from_utf8_lossy(name).into_owned(), dev));
        if next == 0 {
            return Ok(devices);
        }
        let next = next as usize;
        if next < NAME_LIST_OFF_NAME + name.len() + 1 {
            return Err(format!(
                "record at {at} says the next one starts {next} bytes on, inside itself"
            ));
        }
        at = match at.checked_add(next) {
            Some(next_at) if next_at < end => next_at,
            _ => {
                return Err(format!(
                    "record at {at} points past the reply's end ({end})"
                ));
            }
        };
    }
}

/// One target of a TABLE_STATUS reply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    sector_start: u64,
    length: u64,
    target_type: String,
    params: String,
}

/// The targets of a TABLE_STATUS reply. The kernel's `next` is the offset of the
/// next spec from the first one (the start of the data), unlike a load's.
fn parse_targets(buf: &[u8]) -> Result<Vec<Target>, String> {
    let header = parse_header(buf)?;
    if header.target_count == 0 {
        return Ok(Vec::new());
    }
    let (start, end) = data_bounds(buf, &header)?;
    let mut targets = Vec::new();
    let mut at = start;
    for i in 0..header.target_count {
        let spec = buf
            .get(at..end)
            .filter(|spec| spec.len() >= SPEC_SIZE)
            .ok_or_else(|| format!("target {i} at offset {at} is past the reply's end ({end})"))?;
        let truncated = || format!("target {i} is truncated");
        let sector_start = get_u64(spec, 0).ok_or_else(truncated)?;
        let length = get_u64(spec, SPEC_OFF_LENGTH).ok_or_else(truncated)?;
        let next = get_u32(spec, SPEC_OFF_NEXT).ok_or_else(truncated)?;
        let target_type = field_str(&spec[SPEC_OFF_TYPE..SPEC_OFF_TYPE + TYPE_NAME_LEN]);
        let params = c_str(&spec[SPEC_SIZE..])
            .ok_or_else(|| format!("the parameters of target {i} are not NUL-terminated"))?;
        let spec_end = at + SPEC_SIZE + params.len() + 1;
        targets.push(Target {
            sector_start,
            length,
            target_type,
            params: String::from_utf8_lossy(params).into_owned(),
        });
        if i + 1 < header.target_count {
            at = match start.checked_add(next as usize) {
                Some(next_at) if next_at >= spec_end => next_at,
                _ => {
                    return Err(format!(
                        "target {i} says the next one is at offset {next}, inside itself"
                    ));
                }
            };
        }
    }
    Ok(targets)
}

/// Reads the targets as a linear table: each a `linear` target whose parameters
/// are `major:minor start`, laid end to end from sector 0.
fn linear_table(targets: &[Target]) -> Result<Vec<Linear>, String> {
    let mut table = Vec::with_capacity(targets.len());
    let mut logical = 0u64;
    for (i, target) in targets.iter().enumerate() {
        if target.target_type != LINEAR {
            return Err(format!(
                "target {i} is {:?}, not linear: this is not a device vdrive made",
                target.target_type
            ));
        }
        if target.sector_start != logical || target.length == 0 {
            return Err(format!(
                "target {i} covers {} sectors from sector {}, \
                 not a non-empty segment from sector {logical}",
                target.length, target.sector_start
            ));
        }
        let bad = || {
            format!(
                "target {i} has parameters {:?}, not `major:minor start`",
                target.params
            )
        };
        let mut fields = target.params.split_whitespace();
        let (device, start) = (
            fields.next().ok_or_else(bad)?,
            fields.next().ok_or_else(bad)?,
        );
        if fields.next().is_some() {
            return Err(bad());
        }
        let (major, minor) = device.split_once(':').ok_or_else(bad)?;
        table.push(Linear {
            major: major.parse().map_err(|_| bad())?,
            minor: minor.parse().map_err(|_| bad())?,
            start_sector: start.parse().map_err(|_| bad())?,
            sectors: target.length,
        });
        logical = logical.checked_add(target.length).ok_or_else(bad)?;
    }
    Ok(table)
}

/// A TABLE_LOAD request for `name`: one `linear` spec per segment, each followed by
/// its parameters, NUL-terminated and padded to 8 bytes; `next` is the distance
/// from a spec to the one after it (the last one's points past the end).
fn table_load_request(name: &str, table: &[Linear]) -> Vec<u8> {
    let mut buf = request(name, "", 0);
    put_u32(&mut buf, OFF_TARGET_COUNT, table.len() as u32);
    let mut logical = 0u64;
    for segment in table {
        let params = format!(
            "{}:{} {}",
            segment.major, segment.minor, segment.start_sector
        );
        let params_room = (params.len() + 1).next_multiple_of(8);
        let mut spec = vec![0u8; SPEC_SIZE + params_room];
        put_u64(&mut spec, 0, logical);
        put_u64(&mut spec, SPEC_OFF_LENGTH, segment.sectors);
        put_u32(&mut spec, SPEC_OFF_STATUS, 0);
        let next = spec.len() as u32;
        put_u32(&mut spec, SPEC_OFF_NEXT, next);
        spec[SPEC_OFF_TYPE..SPEC_OFF_TYPE + LINEAR.len()].copy_from_slice(LINEAR.as_bytes());
        spec[SPEC_SIZE..SPEC_SIZE + params.len()].copy_from_slice(params.as_bytes());
        buf.extend_from_slice(&spec);
        logical += segment.sectors;
    }
    buf
}

/// The name devices are known by in messages.
fn mapper_path(name: &str) -> PathBuf {
    Path::new(MAPPER_DIR).join(name)
}

fn ioctl_error(cmd: Cmd, name: &str) -> impl FnOnce(Errno) -> NodeError {
    let device = if name.is_empty() {
        PathBuf::from(CONTROL)
    } else {
        mapper_path(name)
    };
    move |source| NodeError::Ioctl {
        op: cmd.op(),
        device,
        source,
    }
}

fn reply_error(cmd: Cmd, name: &str) -> impl FnOnce(String) -> NodeError {
    let command = format!("{} {name}", cmd.op()).trim_end().to_string();
    move |reason| NodeError::Output { command, reason }
}

/// Checks a device name: what the kernel takes (non-empty, at most 127 bytes, no
/// '/'), no NUL, and nothing that cannot be a file in /dev/mapper.
fn check_name(name: &str) -> Result<(), NodeError> {
    let invalid = |reason: &str| NodeError::DmInvalid {
        what: "device name",
        given: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(invalid("it is empty; name the device"));
    }
    if name.len() > NAME_LEN - 1 {
        return Err(invalid(&format!(
            "it is {} bytes; the kernel takes at most {}",
            name.len(),
            NAME_LEN - 1
        )));
    }
    if name.contains('/') || name.contains('\0') {
        return Err(invalid(
            "it contains '/' or NUL; use letters, digits, '-' and '_'",
        ));
    }
    if name == "." || name == ".." || name == "control" {
        return Err(invalid(&format!(
            "it would be {MAPPER_DIR}/{name}, which is not a device's node; choose another"
        )));
    }
    Ok(())
}

/// Checks a device uuid: at most 128 bytes, no NUL (empty: none).
fn check_uuid(uuid: &str) -> Result<(), NodeError> {
    let invalid = |reason: String| NodeError::DmInvalid {
        what: "device uuid",
        given: uuid.to_string(),
        reason,
    };
    if uuid.len() > UUID_LEN - 1 {
        return Err(invalid(format!(
            "it is {} bytes; the kernel takes at most {}",
            uuid.len(),
            UUID_LEN - 1
        )));
    }
    if uuid.contains('\0') {
        return Err(invalid("it contains NUL".into()));
    }
    Ok(())
}

/// Checks a linear table: at least one segment, none empty, every device number
/// one the kernel can name, and no sector count that overflows.
fn check_table(name: &str, table: &[Linear]) -> Result<(), NodeError> {
    let invalid = |reason: String| NodeError::DmInvalid {
        what: "table for",
        given: name.to_string(),
        reason,
    };
    if table.is_empty() {
        return Err(invalid(
            "it has no segments; a device needs at least one".into(),
        ));
    }
    if table.len() > u32::MAX as usize / (SPEC_SIZE + 64) {
        return Err(invalid(format!(
            "it has {} segments, too many",
            table.len()
        )));
    }
    let mut total = 0u64;
    for (i, s) in table.iter().enumerate() {
        if s.sectors == 0 {
            return Err(invalid(format!("segment {i} is empty (0 sectors)")));
        }
        if s.major > MAX_MAJOR || s.minor > MAX_MINOR {
            return Err(invalid(format!(
                "segment {i} names device {}:{}, beyond the kernel's {MAX_MAJOR}:{MAX_MINOR}",
                s.major, s.minor
            )));
        }
        if s.start_sector.checked_add(s.sectors).is_none() {
            return Err(invalid(format!(
                "segment {i} ends past the last possible sector"
            )));
        }
        total = total
            .checked_add(s.sectors)
            .ok_or_else(|| invalid(format!("the table's length overflows at segment {i}")))?;
    }
    Ok(())
}

/// Whether device-mapper can be used here: `/dev/mapper/control` opens and the
/// kernel speaks interface version 4.
pub fn available() -> bool {
    matches!(version(), Ok((4, _, _)))
}

/// The kernel's device-mapper interface version.
pub fn version() -> Result<(u32, u32, u32), NodeError> {
    let control = Control::open()?;
    let mut buf = request("", "", 0);
    control
        .ioctl(Cmd::Version, &mut buf)
        .map_err(ioctl_error(Cmd::Version, ""))?;
    let header = parse_header(&buf).map_err(reply_error(Cmd::Version, ""))?;
    Ok(header.version)
}

/// Runs a command whose reply carries data, growing the buffer while the kernel
/// says it was too small. None when the device does not exist.
fn query(
    control: &Control,
    cmd: Cmd,
    name: &str,
    flags: u32,
) -> Result<Option<Vec<u8>>, NodeError> {
    let mut room = FIRST_ROOM;
    loop {
        let mut buf = request(name, "", flags);
        buf.resize(HEADER_SIZE + room, 0);
        match control.ioctl(cmd, &mut buf) {
            Ok(()) => {}
            Err(Errno::ENXIO) if !name.is_empty() => return Ok(None),
            Err(e) => return Err(ioctl_error(cmd, name)(e)),
        }
        let header = parse_header(&buf).map_err(reply_error(cmd, name))?;
        if header.flags & DM_BUFFER_FULL_FLAG == 0 {
            return Ok(Some(buf));
        }
        if room >= MAX_ROOM {
            return Err(reply_error(cmd, name)(format!(
                "the reply does not fit in {MAX_ROOM} bytes"
            )));
        }
        room *= 2;
    }
}

/// Every device-mapper device: name, major, minor.
pub fn list() -> Result<Vec<(String, u64, u64)>, NodeError> {
    let control = Control::open()?;
    let buf = query(&control, Cmd::ListDevices, "", 0)?.unwrap_or_default();
    let devices = parse_name_list(&buf).map_err(reply_error(Cmd::ListDevices, ""))?;
    Ok(devices
        .into_iter()
        .map(|(name, dev)| (name, stat::major(dev), stat::minor(dev)))
        .collect())
}

fn status(control: &Control, name: &str) -> Result<Option<DmDevice>, NodeError> {
    let mut buf = request(name, "", 0);
    match control.ioctl(Cmd::DevStatus, &mut buf) {
        Ok(()) => {}
        Err(Errno::ENXIO) => return Ok(None),
        Err(e) => return Err(ioctl_error(Cmd::DevStatus, name)(e)),
    }
    let header = parse_header(&buf).map_err(reply_error(Cmd::DevStatus, name))?;
    Ok(Some(DmDevice {
        name: header.name,
        uuid: header.uuid,
        major: stat::major(header.dev),
        minor: stat::minor(header.dev),
        open_count: header.open_count,
        suspended: header.flags & DM_SUSPEND_FLAG != 0,
        live_table: header.flags & DM_ACTIVE_PRESENT_FLAG != 0,
    }))
}

/// Device `name` as the kernel sees it; None when there is no such device.
pub fn info(name: &str) -> Result<Option<DmDevice>, NodeError> {
    check_name(name)?;
    status(&Control::open()?, name)
}

fn live_table(control: &Control, name: &str) -> Result<Option<Vec<Linear>>, NodeError> {
    let Some(buf) = query(control, Cmd::TableStatus, name, DM_STATUS_TABLE_FLAG)? else {
        return Ok(None);
    };
    let targets = parse_targets(&buf).map_err(reply_error(Cmd::TableStatus, name))?;
    let table = linear_table(&targets).map_err(reply_error(Cmd::TableStatus, name))?;
    Ok(Some(table))
}

/// The live table of device `name` as linear segments (empty when no table is
/// live); None when there is no such device. A target that is not linear is an
/// error: the device is not one of ours.
pub fn table(name: &str) -> Result<Option<Vec<Linear>>, NodeError> {
    check_name(name)?;
    live_table(&Control::open()?, name)
}

/// Runs a command whose reply carries no data (the header aside).
fn simple(control: &Control, cmd: Cmd, mut buf: Vec<u8>, name: &str) -> Result<Vec<u8>, NodeError> {
    control
        .ioctl(cmd, &mut buf)
        .map_err(ioctl_error(cmd, name))?;
    Ok(buf)
}

fn resume(control: &Control, name: &str) -> Result<(), NodeError> {
    simple(control, Cmd::DevSuspend, request(name, "", 0), name).map(drop)
}

/// Creates device `name` with `uuid` (empty: none) mapping `table`, live and
/// resumed, and returns its device node. Any failure after the device exists
/// removes it again: there is never a half-made device. A name or uuid already in
/// use fails with EBUSY from DM_DEV_CREATE and leaves that device alone.
pub fn create_linear(name: &str, uuid: &str, table: &[Linear]) -> Result<PathBuf, NodeError> {
    check_name(name)?;
    check_uuid(uuid)?;
    check_table(name, table)?;
    let load = table_load_request(name, table);
    let control = Control::open()?;
    let created = simple(&control, Cmd::DevCreate, request(name, uuid, 0), name)?;
    let made = (|| {
        let header = parse_header(&created).map_err(reply_error(Cmd::DevCreate, name))?;
        simple(&control, Cmd::TableLoad, load, name)?;
        // Resuming a device with a loaded (inactive) table makes it live.
        resume(&control, name)?;
        device_path(stat::major(header.dev), stat::minor(header.dev), name)
    })();
    match made {
        Ok(path) => {
            let segments = table.len();
            tracing::debug!(name, device = %path.display(), segments, "created dm device");
            Ok(path)
        }
        Err(err) => {
            if let Err(undo) = remove(name) {
                tracing::warn!(name, error = %undo, "cannot remove a half-made dm device");
            }
            Err(err)
        }
    }
}

/// Whether `new` maps every logical sector `old` maps to the same place: a table
/// that only grows the device (a longer last segment, or more segments).
fn extends(old: &[Linear], new: &[Linear]) -> bool {
    let (old, new) = (runs(old), runs(new));
    old.iter().all(|&(old_at, o)| {
        let old_end = old_at.saturating_add(o.sectors);
        let mut covered = old_at;
        for &(new_at, n) in &new {
            let new_end = new_at.saturating_add(n.sectors);
            if new_end <= covered || new_at >= old_end {
                continue;
            }
            // The overlap must map to the same device at the same offset.
            if new_at > covered
                || (n.major, n.minor) != (o.major, o.minor)
                || n.start_sector.wrapping_sub(new_at) != o.start_sector.wrapping_sub(old_at)
            {
                return false;
            }
            covered = new_end.min(old_end);
            if covered == old_end {
                break;
            }
        }
        covered == old_end
    })
}

/// Each segment with its first logical sector.
fn runs(table: &[Linear]) -> Vec<(u64, &Linear)> {
    let mut logical = 0u64;
    table
        .iter()
        .map(|s| {
            let run = (logical, s);
            logical = logical.saturating_add(s.sectors);
            run
        })
        .collect()
}

/// Clears an inactive table and resumes the device, so it runs its live table
/// again after a reload that did not go through. Failures are logged: the caller
/// is already reporting the error that brought it here. (Should the clear fail,
/// the resume swaps in the new table, which was checked to only extend the old.)
fn restore(control: &Control, name: &str) {
    if let Err(e) = simple(control, Cmd::TableClear, request(name, "", 0), name) {
        tracing::warn!(name, error = %e, "cannot clear the inactive table of a dm device");
    }
    if let Err(e) = resume(control, name) {
        tracing::warn!(name, error = %e, "cannot resume a dm device");
    }
}

/// Swaps the live table of device `name` for `table`, online: loads it as the
/// inactive table, suspends the device (flushing I/O and freezing a filesystem on
/// it) and resumes it with the new table. For growing a volume: the new table must
/// map every sector the live one maps exactly as it does (a longer last segment,
/// or segments appended), else it is refused. If anything fails the inactive table
/// is cleared and the device runs its old table, resumed. The same table again is
/// a no-op, and a device left suspended by an interrupted reload is finished.
pub fn reload_linear(name: &str, table: &[Linear]) -> Result<(), NodeError> {
    check_name(name)?;
    check_table(name, table)?;
    let control = Control::open()?;
    let missing = || ioctl_error(Cmd::DevStatus, name)(Errno::ENXIO);
    let device = status(&control, name)?.ok_or_else(missing)?;
    let live = live_table(&control, name)?.ok_or_else(missing)?;
    if !extends(&live, table) {
        let (live_sectors, new_sectors) = (
            live.iter().map(|s| s.sectors).sum::<u64>(),
            table.iter().map(|s| s.sectors).sum::<u64>(),
        );
        if new_sectors < live_sectors {
            return Err(NodeError::WouldShrink {
                device: mapper_path(name),
                current_bytes: live_sectors.saturating_mul(512),
                wanted_bytes: new_sectors.saturating_mul(512),
            });
        }
        return Err(NodeError::DmInvalid {
            what: "table for",
            given: name.to_string(),
            reason: "it maps sectors the live table already maps elsewhere; a reload only \
                     grows a device (keep its segments, lengthen the last or append)"
                .into(),
        });
    }
    if live == table && !device.suspended {
        return Ok(());
    }
    let load = table_load_request(name, table);
    if let Err(err) = simple(&control, Cmd::TableLoad, load, name) {
        // A failed load leaves the live table in place; clear whatever half got in.
        if let Err(e) = simple(&control, Cmd::TableClear, request(name, "", 0), name) {
            tracing::warn!(name, error = %e, "cannot clear the inactive table of a dm device");
        }
        return Err(err);
    }
    if !device.suspended
        && let Err(err) = simple(
            &control,
            Cmd::DevSuspend,
            request(name, "", DM_SUSPEND_FLAG),
            name,
        )
    {
        restore(&control, name);
        return Err(err);
    }
    if let Err(err) = resume(&control, name) {
        // The kernel destroys a table it could not swap in and keeps the device
        // suspended on the old one: resume that.
        restore(&control, name);
        return Err(err);
    }
    let now = live_table(&control, name)?.ok_or_else(missing)?;
    if now != table {
        return Err(reply_error(Cmd::TableStatus, name)(format!(
            "the live table after the reload is {now:?}, not the one loaded"
        )));
    }
    tracing::debug!(name, segments = table.len(), "reloaded dm device");
    Ok(())
}

/// Removes `/dev/mapper/<name>` if it is a device node (not a symlink, which udev
/// owns): with the device gone, it points at nothing or at a reused minor.
fn remove_node(name: &str) -> Result<(), NodeError> {
    let path = mapper_path(name);
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_block_device() => match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(NodeError::io("remove", path)(e))
            }
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// The node to name device `major:minor` by in messages.
fn node_for_messages(major: u64, minor: u64, name: &str) -> PathBuf {
    blockdev::kernel_name(major, minor)
        .map(|k| Path::new("/dev").join(k))
        .unwrap_or_else(|| mapper_path(name))
}

/// Removes device `name`; false when there was no such device. An open device
/// (mounted, held by a process or by a device stacked on it) is retried for a
/// moment, then refused with [`NodeError::DmBusy`]. Remove never suspends a
/// device; one found suspended and busy (an interrupted reload) is resumed on its
/// live table, so its holders are not left hanging. A `/dev/mapper/<name>` node
/// made by [`device_path`] goes with the device.
pub fn remove(name: &str) -> Result<bool, NodeError> {
    check_name(name)?;
    let control = Control::open()?;
    if status(&control, name)?.is_none() {
        remove_node(name)?;
        return Ok(false);
    }
    let start = Instant::now();
    loop {
        match control.ioctl(Cmd::DevRemove, &mut request(name, "", 0)) {
            Ok(()) => break,
            // Someone else removed it in the meantime.
            Err(Errno::ENXIO) => {
                remove_node(name)?;
                return Ok(false);
            }
            Err(Errno::EBUSY) if start.elapsed() < REMOVE_WAIT => thread::sleep(REMOVE_STEP),
            Err(Errno::EBUSY) => {
                let Some(device) = status(&control, name)? else {
                    continue;
                };
                if device.suspended {
                    restore(&control, name);
                }
                return Err(NodeError::DmBusy {
                    name: name.to_string(),
                    device: node_for_messages(device.major, device.minor, name),
                    open_count: device.open_count,
                    waited_ms: start.elapsed().as_millis() as u64,
                });
            }
            Err(e) => return Err(ioctl_error(Cmd::DevRemove, name)(e)),
        }
    }
    remove_node(name)?;
    tracing::debug!(name, "removed dm device");
    Ok(true)
}

/// Whether `path` (followed if a symlink) is the block device `dev`.
fn is_node_of(path: &Path, dev: libc::dev_t) -> Result<bool, NodeError> {
    match fs::metadata(path) {
        Ok(meta) => Ok(meta.file_type().is_block_device() && meta.rdev() == dev),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(NodeError::io("stat", path)(e)),
    }
}

/// The device node of dm device `name` (`major:minor`), without relying on udev:
/// the kernel's own node (`/dev/dm-N`, made by devtmpfs) when it is there and is
/// that device, else `/dev/mapper/<name>`, made here (mode 0600) if missing or
/// stale. Either way it is checked to be that block device.
pub fn device_path(major: u64, minor: u64, name: &str) -> Result<PathBuf, NodeError> {
    check_name(name)?;
    let dev = stat::makedev(major, minor);
    let kernel = blockdev::kernel_name(major, minor).unwrap_or_else(|| format!("dm-{minor}"));
    let kernel_node = Path::new("/dev").join(kernel);
    if is_node_of(&kernel_node, dev)? {
        return Ok(kernel_node);
    }
    let node = mapper_path(name);
    if is_node_of(&node, dev)? {
        return Ok(node);
    }
    match fs::symlink_metadata(&node) {
        Ok(meta) => {
            let kind = meta.file_type();
            if !(kind.is_block_device() || kind.is_symlink()) {
                return Err(NodeError::io("create the device node", &node)(
                    std::io::Error::other(format!(
                        "something else is there, not a node of device {major}:{minor}; remove it"
                    )),
                ));
            }
            // A node or symlink left from an earlier device of that name.
            fs::remove_file(&node).map_err(NodeError::io("remove the stale node", &node))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(NodeError::io("stat", &node)(e)),
    }
    fs::create_dir_all(MAPPER_DIR).map_err(NodeError::io("create", MAPPER_DIR))?;
    stat::mknod(&node, SFlag::S_IFBLK, Mode::from_bits_truncate(0o600), dev)
        .map_err(|e| NodeError::io("create the device node", &node)(e.into()))?;
    if !is_node_of(&node, dev)? {
        return Err(NodeError::io("create the device node", &node)(
            std::io::Error::other(format!("it is not device {major}:{minor} after mknod")),
        ));
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(major: u64, minor: u64, start_sector: u64, sectors: u64) -> Linear {
        Linear {
            major,
            minor,
            start_sector,
            sectors,
        }
    }

    /// A reply as the kernel lays it out: `request(name)`, then `data` at 312.
    fn reply(flags: u32, target_count: u32, data: &[u8]) -> Vec<u8> {
        let mut buf = request("vol", "", flags);
        put_u32(&mut buf, OFF_TARGET_COUNT, target_count);
        buf.extend_from_slice(data);
        let size = buf.len() as u32;
        put_u32(&mut buf, OFF_DATA_SIZE, size);
        buf
    }

    /// A TABLE_STATUS target: spec, parameters, NUL, padding; `next` from the
    /// start of the data.
    fn status_target(data: &mut Vec<u8>, start: u64, len: u64, kind: &str, params: &str) {
        let at = data.len();
        let mut spec = vec![0u8; SPEC_SIZE];
        put_u64(&mut spec, 0, start);
        put_u64(&mut spec, SPEC_OFF_LENGTH, len);
        spec[SPEC_OFF_TYPE..SPEC_OFF_TYPE + kind.len()].copy_from_slice(kind.as_bytes());
        data.extend_from_slice(&spec);
        data.extend_from_slice(params.as_bytes());
        data.push(0);
        data.resize(data.len().next_multiple_of(8), 0);
        let next = data.len() as u32;
        put_u32(&mut data[at..], SPEC_OFF_NEXT, next);
    }

    fn name_record(data: &mut Vec<u8>, dev: u64, name: &str, last: bool) {
        let at = data.len();
        data.extend_from_slice(&dev.to_ne_bytes());
        data.extend_from_slice(&[0; 4]);
        data.extend_from_slice(name.as_bytes());
        data.push(0);
        // event_nr and flags, as the kernel appends them after the aligned name.
        data.resize(data.len().next_multiple_of(8) + 8, 0);
        if !last {
            let next = (data.len() - at) as u32;
            put_u32(&mut data[at..], NAME_LIST_OFF_NEXT, next);
        }
    }

    #[test]
    fn request_numbers_encode_the_312_byte_struct() {
        assert_eq!(std::mem::size_of::<sys::DmIoctl>(), 312);
        assert_eq!(HEADER_USED, 305);
        assert_eq!(
            nix::request_code_readwrite!(0xfd, 0, std::mem::size_of::<sys::DmIoctl>()) as u64,
            0xc138_fd00
        );
    }

    #[test]
    fn a_two_segment_table_load_is_encoded_byte_for_byte() {
        let buf = table_load_request("vol-1", &[seg(259, 1, 2048, 4096), seg(7, 3, 0, 1024)]);
        // Header, then 40 + 16 ("259:1 2048\0" padded), then 40 + 8 ("7:3 0\0" padded).
        assert_eq!(buf.len(), 312 + 56 + 48);
        let u32_at = |at| get_u32(&buf, at).unwrap();
        let u64_at = |at| get_u64(&buf, at).unwrap();
        assert_eq!((u32_at(0), u32_at(4), u32_at(8)), (4, 0, 0));
        assert_eq!(u32_at(OFF_DATA_START), 312);
        assert_eq!(u32_at(OFF_TARGET_COUNT), 2);
        assert_eq!(u32_at(OFF_FLAGS), 0);
        assert_eq!(&buf[OFF_NAME..OFF_NAME + 6], b"vol-1\0");
        assert!(buf[OFF_UUID..HEADER_SIZE].iter().all(|&b| b == 0));

        let first = 312;
        assert_eq!(u64_at(first), 0, "logical start");
        assert_eq!(u64_at(first + 8), 4096, "length");
        assert_eq!(u32_at(first + 16), 0, "status");
        assert_eq!(u32_at(first + 20), 56, "next, from this spec");
        assert_eq!(&buf[first + 24..first + 40], b"linear\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(&buf[first + 40..first + 56], b"259:1 2048\0\0\0\0\0\0");

        let second = first + 56;
        assert_eq!(u64_at(second), 4096, "logical start follows the first");
        assert_eq!(u64_at(second + 8), 1024);
        assert_eq!(u32_at(second + 20), 48);
        assert_eq!(&buf[second + 24..second + 31], b"linear\0");
        assert_eq!(&buf[second + 40..second + 48], b"7:3 0\0\0\0");
    }

    #[test]
    fn a_table_status_reply_decodes_to_linear_segments() {
        let mut data = Vec::new();
        status_target(&mut data, 0, 4096, "linear", "259:1 2048");
        status_target(&mut data, 4096, 1024, "linear", "7:3 0");
        let buf = reply(DM_STATUS_TABLE_FLAG, 2, &data);
        let targets = parse_targets(&buf).unwrap();
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[1].params, "7:3 0");
        assert_eq!(
            linear_table(&targets).unwrap(),
            vec![seg(259, 1, 2048, 4096), seg(7, 3, 0, 1024)]
        );
        // The same table, loaded, reads back the same.
        let table = [seg(259, 1, 2048, 4096), seg(7, 3, 0, 1024)];
        assert_eq!(linear_table(&parse_targets(&buf).unwrap()).unwrap(), table);
    }

    #[test]
    fn no_live_table_is_an_empty_table() {
        // The kernel leaves data_size at the header when there is no target.
        let mut buf = request("vol", "", 0);
        put_u32(&mut buf, OFF_DATA_SIZE, HEADER_USED as u32);
        assert_eq!(parse_targets(&buf).unwrap(), vec![]);
    }

    #[test]
    fn malformed_table_status_replies_are_errors() {
        let mut data = Vec::new();
        status_target(&mut data, 0, 4096, "linear", "259:1 2048");
        status_target(&mut data, 4096, 1024, "linear", "7:3 0");
        let good = reply(0, 2, &data);

        // Truncated anywhere: never a panic; an error unless only the last
        // target's padding is cut (its parameters end at 312 + 56 + 40 + 6).
        for cut in 0..good.len() {
            let mut buf = good[..cut].to_vec();
            if cut >= HEADER_SIZE {
                put_u32(&mut buf, OFF_DATA_SIZE, cut as u32);
            }
            assert_eq!(parse_targets(&buf).is_ok(), cut >= 414, "cut at {cut}");
        }
        // data_size beyond the buffer, data_start before the header's end.
        let mut buf = good.clone();
        put_u32(&mut buf, OFF_DATA_SIZE, good.len() as u32 + 8);
        assert!(parse_targets(&buf).is_err());
        let mut buf = good.clone();
        put_u32(&mut buf, OFF_DATA_START, 8);
        assert!(parse_targets(&buf).is_err());
        // More targets than the data holds.
        let mut buf = good.clone();
        put_u32(&mut buf, OFF_TARGET_COUNT, 3);
        assert!(parse_targets(&buf).is_err());
        // A `next` pointing back into the target, or far past the end.
        for next in [0u32, 8, u32::MAX] {
            let mut buf = good.clone();
            put_u32(&mut buf, 312 + SPEC_OFF_NEXT, next);
            assert!(parse_targets(&buf).is_err(), "next {next}");
        }
        // Parameters without their NUL.
        let mut buf = reply(0, 1, &[0u8; SPEC_SIZE]);
        buf.extend_from_slice(b"259:1 0");
        let size = buf.len() as u32;
        put_u32(&mut buf, OFF_DATA_SIZE, size);
        assert!(parse_targets(&buf).is_err());
    }

    #[test]
    fn tables_that_are_not_ours_are_refused() {
        let parse = |kind: &str, start: u64, params: &str| {
            let mut data = Vec::new();
            status_target(&mut data, start, 8, kind, params);
            linear_table(&parse_targets(&reply(0, 1, &data)).unwrap())
        };
        assert!(
            parse("crypt", 0, "aes 00 0 259:1 0")
                .unwrap_err()
                .contains("crypt")
        );
        assert!(parse("linear", 8, "259:1 0").is_err(), "gap before it");
        for params in ["259:1", "259 0", "259:1 0 9", "a:1 0", "259:1 -1", ""] {
            assert!(parse("linear", 0, params).is_err(), "{params:?}");
        }
        let mut data = Vec::new();
        status_target(&mut data, 0, 0, "linear", "259:1 0");
        assert!(linear_table(&parse_targets(&reply(0, 1, &data)).unwrap()).is_err());
    }

    #[test]
    fn a_list_devices_reply_decodes_names_and_numbers() {
        let mut data = Vec::new();
        let dev = |major, minor| stat::makedev(major, minor);
        name_record(&mut data, dev(253, 0), "vol-a", false);
        name_record(&mut data, dev(253, 300), "a-longer-name-than-eight", true);
        let devices = parse_name_list(&reply(0, 0, &data)).unwrap();
        assert_eq!(
            devices,
            vec![
                ("vol-a".to_string(), dev(253, 0)),
                ("a-longer-name-than-eight".to_string(), dev(253, 300))
            ]
        );
        assert_eq!(
            (stat::major(devices[1].1), stat::minor(devices[1].1)),
            (253, 300)
        );

        // No devices: the kernel sends no record (data_size == data_start), or a
        // zeroed one.
        assert_eq!(parse_name_list(&reply(0, 0, &[])).unwrap(), vec![]);
        assert_eq!(parse_name_list(&reply(0, 0, &[0u8; 16])).unwrap(), vec![]);
    }

    #[test]
    fn malformed_list_devices_replies_are_errors() {
        let mut data = Vec::new();
        name_record(&mut data, stat::makedev(253, 0), "vol-a", false);
        name_record(&mut data, stat::makedev(253, 1), "vol-b", true);
        let good = reply(0, 0, &data);
        for cut in 0..good.len() {
            let mut buf = good[..cut].to_vec();
            if cut >= HEADER_SIZE {
                put_u32(&mut buf, OFF_DATA_SIZE, cut as u32);
            }
            // Records of 32 bytes; the second name's NUL is at 344 + 12 + 5. Cut at
            // 312, the reply says "no devices".
            let whole = cut == HEADER_SIZE || cut >= 362;
            assert_eq!(parse_name_list(&buf).is_ok(), whole, "cut at {cut}");
        }
        for next in [4u32, 12, 4096, u32::MAX] {
            let mut buf = good.clone();
            put_u32(&mut buf, 312 + NAME_LIST_OFF_NEXT, next);
            assert!(parse_name_list(&buf).is_err(), "next {next}");
        }
        // A name without its NUL up to the end.
        let mut buf = reply(0, 0, &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        buf.extend_from_slice(b"vol");
        let size = buf.len() as u32;
        put_u32(&mut buf, OFF_DATA_SIZE, size);
        assert!(parse_name_list(&buf).is_err());
    }

    #[test]
    fn a_status_header_decodes() {
        let mut buf = request(
            "vol-1",
            "VDRIVE-abc",
            DM_SUSPEND_FLAG | DM_ACTIVE_PRESENT_FLAG,
        );
        put_u32(&mut buf, OFF_OPEN_COUNT, 2);
        put_u64(&mut buf, OFF_DEV, stat::makedev(253, 4));
        let header = parse_header(&buf).unwrap();
        assert_eq!(header.name, "vol-1");
        assert_eq!(header.uuid, "VDRIVE-abc");
        assert_eq!(header.open_count, 2);
        assert_eq!((stat::major(header.dev), stat::minor(header.dev)), (253, 4));
        assert!(parse_header(&buf[..HEADER_SIZE - 1]).is_err());
    }

    #[test]
    fn names_and_uuids_are_checked() {
        for good in ["vdrive-3f0c", "a", &"n".repeat(127)] {
            check_name(good).unwrap();
        }
        for bad in ["", "a/b", "a\0b", ".", "..", "control", &"n".repeat(128)] {
            let err = check_name(bad).unwrap_err();
            assert!(matches!(err, NodeError::DmInvalid { .. }), "{bad:?}: {err}");
        }
        check_uuid("").unwrap();
        check_uuid(&"u".repeat(128)).unwrap();
        assert!(check_uuid(&"u".repeat(129)).is_err());
        assert!(check_uuid("a\0").is_err());
        // Invalid input fails before the kernel is asked (which this host lacks).
        assert!(matches!(
            create_linear("a/b", "", &[seg(7, 0, 0, 8)]),
            Err(NodeError::DmInvalid { .. })
        ));
        assert!(matches!(remove(""), Err(NodeError::DmInvalid { .. })));
    }

    #[test]
    fn tables_are_checked() {
        check_table("v", &[seg(259, 1, 2048, 4096), seg(7, 3, 0, 1)]).unwrap();
        for bad in [
            vec![],
            vec![seg(259, 1, 0, 0)],
            vec![seg(4096, 0, 0, 8)],
            vec![seg(7, 1 << 20, 0, 8)],
            vec![seg(7, 0, u64::MAX, 8)],
            vec![seg(7, 0, 0, u64::MAX), seg(7, 1, 0, 1)],
        ] {
            let err = check_table("v", &bad).unwrap_err();
            assert!(matches!(err, NodeError::DmInvalid { .. }), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_reload_may_only_grow_the_mapping() {
        let a = seg(259, 1, 2048, 100);
        let old = [a];
        assert!(extends(&old, &old));
        assert!(
            extends(&old, &[seg(259, 1, 2048, 200)]),
            "longer last segment"
        );
        assert!(extends(&old, &[a, seg(259, 2, 0, 50)]), "appended segment");
        assert!(
            extends(&old, &[seg(259, 1, 2048, 60), seg(259, 1, 2108, 90)]),
            "split, same mapping"
        );
        assert!(!extends(&old, &[seg(259, 1, 2048, 99)]), "shrunk");
        assert!(!extends(&old, &[seg(259, 1, 4096, 100)]), "moved");
        assert!(!extends(&old, &[seg(259, 2, 2048, 100)]), "other device");
        assert!(!extends(&[a, seg(7, 0, 0, 8)], &[a, seg(7, 0, 8, 8)]));
        assert!(!extends(&[a, seg(7, 0, 0, 8)], &[a]));
    }

    #[test]
    fn without_device_mapper_nothing_panics() {
        // This host's kernel has no device-mapper; elsewhere it may.
        let present = available();
        if !Path::new(CONTROL).exists() {
            assert!(!present);
            assert!(version().is_err());
            assert!(list().is_err());
            assert!(info("vdrive-none").is_err());
        }
    }
}
