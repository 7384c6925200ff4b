//! VM disk images written into a raw block volume the first time it is staged.
//!
//! A volume created with a StorageClass `image` (a file on the node, or an
//! http(s) URL) gets that image on its device when the device is still blank,
//! exactly as a filesystem volume is formatted only when blank: the first MiB
//! reads all zeros and blkid finds nothing. A device that is not blank is left
//! alone, so restaging a disk a VM has written to never imports again.
//!
//! Crash safety rests on the same first MiB: everything after it is written and
//! flushed first, the first MiB last. A stage that stops half-way leaves the
//! first MiB zero, so the next stage imports again; an image whose own first
//! MiB is all zeros could not be told from a blank disk and is refused.
//!
//! qcow2 images are converted to raw with `qemu-img convert` into a temporary
//! file of the node's state directory; downloads land there too. Both are
//! removed when the import ends, whether it succeeded or not.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use tracing::info;

use super::{NodeError, blockdev, cmd, fs};

/// What must read all zeros for a device to be blank, and what is written last.
pub const HEAD_BYTES: u64 = 1 << 20;
/// The unit the copy reads, compares and writes in.
const CHUNK_BYTES: usize = 1 << 20;
/// How a qcow2 file starts.
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// How long a download may wait to connect, for the response headers, and for
/// each read of the body: a server that stops answering fails the stage.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Where an image comes from: a file on the node, or an http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    File(PathBuf),
    Url(String),
}

impl ImageSource {
    /// What an `image` parameter may be: an absolute, clean path (no empty,
    /// `.` or `..` components, no trailing slash) or an `http://` / `https://`
    /// URL with a host and no user info. The error says what is accepted.
    pub fn parse(value: &str) -> Result<Self, String> {
        const ACCEPTED: &str = "an absolute path of a file on the node (like /var/lib/images/disk.qcow2) or an http:// or https:// URL";
        if value.contains(|c: char| c.is_control() || c.is_whitespace()) {
            return Err(format!(
                "it contains whitespace or control characters; give {ACCEPTED}"
            ));
        }
        let lower = value.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return parse_url(value).map(ImageSource::Url);
        }
        if value.contains("://") {
            return Err(format!(
                "only http and https URLs are fetched; give {ACCEPTED}"
            ));
        }
        if !value.starts_with('/') {
            return Err(format!("it is not an absolute path; give {ACCEPTED}"));
        }
        let path = Path::new(value);
        let clean = path
            .components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)));
        let rebuilt: PathBuf = path.components().collect();
        if !clean || rebuilt.as_os_str() != path.as_os_str() || value == "/" {
            return Err(format!(
                "a path must name a file with no empty, `.` or `..` components and no trailing slash; give {ACCEPTED}"
            ));
        }
        Ok(ImageSource::File(path.to_path_buf()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            ImageSource::File(path) => path.to_str().unwrap_or_default(),
            ImageSource::Url(url) => url,
        }
    }
}

fn parse_url(value: &str) -> Result<String, String> {
    let uri: http::Uri = value
        .parse()
        .map_err(|e| format!("it is not a valid URL ({e})"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| "the URL has no host".to_string())?;
    if authority.as_str().contains('@') {
        return Err("the URL carries user info (user:password@): it would be kept in the volume context and in logs; serve the image without credentials in the URL".into());
    }
    if authority.host().is_empty() {
        return Err("the URL has no host".into());
    }
    Ok(value.to_string())
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An image's format: `imageFormat`, or detected from the file's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ImageFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(ImageFormat::Raw),
            "qcow2" => Ok(ImageFormat::Qcow2),
            _ => Err(
                "expected raw or qcow2 (or leave imageFormat out to detect it from the file)"
                    .into(),
            ),
        }
    }
}

/// The image a volume is created with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub source: ImageSource,
    /// None: detected from the file (qcow2 by its magic, raw otherwise).
    pub format: Option<ImageFormat>,
}

/// What staging did with the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The device was blank: the image is on it now.
    Written { format: ImageFormat, bytes: u64 },
    /// The device already holds data (an earlier import, or what the VM wrote).
    LeftAlone,
}

/// Whether `device` is blank: its first MiB (or all of it, if smaller) reads
/// all zeros and blkid finds no signature on it.
pub fn is_blank(device: &Path) -> Result<bool, NodeError> {
    let file = File::open(device).map_err(NodeError::io("open", device))?;
    let size = blockdev::size_bytes(device)?;
    let mut head = vec![0u8; usize::try_from(size.min(HEAD_BYTES)).unwrap_or(CHUNK_BYTES)];
    file.read_exact_at(&mut head, 0)
        .map_err(NodeError::io("read the first MiB of", device))?;
    if !all_zero(&head) {
        return Ok(false);
    }
    Ok(fs::identify(device)?.is_none())
}

/// Writes `image` onto `device` if the device is blank (see [`is_blank`]).
/// `scratch` is a directory of the node's state for downloads and conversions;
/// `tag` names their files (the volume id: one stage per volume at a time).
pub fn write_if_blank(
    device: &Path,
    image: &Image,
    scratch: &Path,
    tag: &str,
) -> Result<Outcome, NodeError> {
    if !is_blank(device)? {
        return Ok(Outcome::LeftAlone);
    }
    let device_bytes = blockdev::size_bytes(device)?;
    std::fs::create_dir_all(scratch).map_err(NodeError::io("create", scratch))?;
    // Files of an earlier stage of this volume that stopped half-way go first.
    let download = Scratch::new(scratch.join(format!("{tag}.download")))?;
    let converted = Scratch::new(scratch.join(format!("{tag}.raw")))?;
    let local = match &image.source {
        ImageSource::File(path) => {
            regular_file(path)?;
            path.clone()
        }
        ImageSource::Url(url) => {
            // A raw image larger than the device is refused while downloading; a
            // qcow2 file may be somewhat larger than its contents (metadata).
            let limit = match image.format {
                Some(ImageFormat::Raw) => device_bytes,
                _ => device_bytes
                    .saturating_add(device_bytes / 8)
                    .saturating_add(64 << 20),
            };
            download_to(url, download.path(), limit, device_bytes)?;
            download.path().to_path_buf()
        }
    };
    let format = match image.format {
        Some(format) => format,
        None => detect_format(&local, &image.source)?,
    };
    let raw = match format {
        ImageFormat::Raw => local,
        ImageFormat::Qcow2 => {
            let virtual_bytes = qcow2_virtual_size(&local, &image.source)?;
            check_fits(&image.source, format, virtual_bytes, device_bytes)?;
            convert_qcow2(&local, converted.path(), &image.source)?;
            converted.path().to_path_buf()
        }
    };
    let source = File::open(&raw).map_err(|e| open_error(&image.source, &raw, e))?;
    let bytes = source
        .metadata()
        .map_err(NodeError::io("stat", raw.as_path()))?
        .len();
    check_fits(&image.source, format, bytes, device_bytes)?;
    let target = Device::open(device)?;
    copy_head_last(&source, bytes, &target, &image.source, device)?;
    info!(device = %device.display(), image = %image.source, %format, bytes, "image written");
    Ok(Outcome::Written { format, bytes })
}

/// A file of the scratch directory, removed when dropped (an import that
/// fails leaves none behind) and when made (one a crash left behind).
struct Scratch(PathBuf);

impl Scratch {
    fn new(path: PathBuf) -> Result<Self, NodeError> {
        remove_if_there(&path)?;
        Ok(Scratch(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(err) = remove_if_there(&self.0) {
            tracing::warn!(%err, "could not remove a temporary image file");
        }
    }
}

fn remove_if_there(path: &Path) -> Result<(), NodeError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(NodeError::io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// An image named by path must be a regular file: never a device or a
/// directory of the node.
fn regular_file(path: &Path) -> Result<(), NodeError> {
    let meta = std::fs::metadata(path).map_err(|e| NodeError::ImageFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !meta.is_file() {
        return Err(NodeError::ImageFile {
            path: path.to_path_buf(),
            reason: "it is not a regular file".into(),
        });
    }
    Ok(())
}

fn open_error(source: &ImageSource, path: &Path, err: io::Error) -> NodeError {
    match source {
        ImageSource::File(_) => NodeError::ImageFile {
            path: path.to_path_buf(),
            reason: err.to_string(),
        },
        // The file is ours (a download or conversion): the node failed.
        ImageSource::Url(_) => NodeError::io("open", path)(err),
    }
}

/// qcow2 when the file starts with its magic, raw otherwise.
fn detect_format(path: &Path, source: &ImageSource) -> Result<ImageFormat, NodeError> {
    let mut file = File::open(path).map_err(|e| open_error(source, path, e))?;
    let mut magic = [0u8; 4];
    let mut read = 0;
    while read < magic.len() {
        match file.read(&mut magic[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(open_error(source, path, e)),
        }
    }
    Ok(if read == magic.len() && magic == QCOW2_MAGIC {
        ImageFormat::Qcow2
    } else {
        ImageFormat::Raw
    })
}

fn check_fits(
    source: &ImageSource,
    format: ImageFormat,
    image_bytes: u64,
    device_bytes: u64,
) -> Result<(), NodeError> {
    if image_bytes > device_bytes {
        return Err(NodeError::ImageTooLarge {
            image: source.to_string(),
            what: match format {
                ImageFormat::Raw => " (raw)",
                ImageFormat::Qcow2 => " (the qcow2 image's virtual size)",
            },
            image_bytes,
            device_bytes,
            need_gib: image_bytes.div_ceil(super::GIB),
        });
    }
    Ok(())
}

/// Downloads `url` into `to`; more than `limit` bytes is refused as too large
/// for a device of `device_bytes`.
fn download_to(url: &str, to: &Path, limit: u64, device_bytes: u64) -> Result<(), NodeError> {
    let failed = |reason: String| NodeError::ImageDownload {
        url: url.to_string(),
        reason,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(RESPONSE_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT))
        .http_status_as_error(false)
        .user_agent(concat!("vdrive/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let response = agent.get(url).call().map_err(|e| failed(e.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(NodeError::ImageHttpStatus {
            url: url.to_string(),
            status: status.to_string(),
        });
    }
    let mut body = response
        .into_body()
        .into_reader()
        .take(limit.saturating_add(1));
    let file = File::create(to).map_err(NodeError::io("create", to))?;
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut total: u64 = 0;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(failed(format!("reading the body failed: {e}"))),
        };
        if total.saturating_add(n as u64) > limit {
            return Err(NodeError::ImageTooLarge {
                image: url.to_string(),
                what: " or more (the download stopped there)",
                image_bytes: total.saturating_add(n as u64),
                device_bytes,
                need_gib: total.saturating_add(n as u64).div_ceil(super::GIB),
            });
        }
        // Zero runs stay holes: a sparse raw image costs only its data.
        if !all_zero(&buf[..n]) {
            file.write_all_at(&buf[..n], total)
                .map_err(NodeError::io("write", to))?;
        }
        total += n as u64;
    }
    file.set_len(total).map_err(NodeError::io("size", to))
}

/// The virtual size of a qcow2 image, from `qemu-img info`. An image that
/// refers to other files (a backing file, an external data file) is refused:
/// converting it would read those files of the node into the volume.
fn qcow2_virtual_size(path: &Path, source: &ImageSource) -> Result<u64, NodeError> {
    let args = [
        "info".as_ref(),
        "--output=json".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "--".as_ref(),
        path.as_os_str(),
    ];
    let out = cmd::output("qemu-img", &args)?;
    let invalid = |reason: String| NodeError::ImageInvalid {
        image: source.to_string(),
        reason,
    };
    if !out.status.success() {
        return Err(invalid(format!(
            "qemu-img cannot read it as qcow2: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let info: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| NodeError::Output {
            command: cmd::display("qemu-img", &args),
            reason: e.to_string(),
        })?;
    if let Some(backing) = info.get("backing-filename").and_then(|v| v.as_str()) {
        return Err(invalid(format!(
            "it is an overlay on backing file {backing:?}; vdrive imports only self-contained images: flatten it first with `qemu-img convert -O qcow2 IMAGE FLAT.qcow2`"
        )));
    }
    if let Some(data_file) = info
        .pointer("/format-specific/data/data-file")
        .and_then(|v| v.as_str())
    {
        return Err(invalid(format!(
            "it keeps its data in the external file {data_file:?}; vdrive imports only self-contained images: convert it first with `qemu-img convert -O qcow2 IMAGE FLAT.qcow2`"
        )));
    }
    info.get("virtual-size")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| NodeError::Output {
            command: cmd::display("qemu-img", &args),
            reason: "no virtual-size".into(),
        })
}

fn convert_qcow2(from: &Path, to: &Path, source: &ImageSource) -> Result<(), NodeError> {
    let args = [
        "convert".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        "--".as_ref(),
        from.as_os_str(),
        to.as_os_str(),
    ];
    let out = cmd::output("qemu-img", &args)?;
    if !out.status.success() {
        return Err(NodeError::ImageInvalid {
            image: source.to_string(),
            reason: format!(
                "`{}` failed: {}",
                cmd::display("qemu-img", &args),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// Where an image is copied to: positioned reads and writes, and a flush that
/// reaches stable storage. A block device (or, in tests, a file).
trait Target {
    fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<()>;
    fn write_at(&self, buf: &[u8], at: u64) -> io::Result<()>;
    fn flush(&self) -> io::Result<()>;
}

impl Target for File {
    fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        self.read_exact_at(buf, at)
    }

    fn write_at(&self, buf: &[u8], at: u64) -> io::Result<()> {
        self.write_all_at(buf, at)
    }

    fn flush(&self) -> io::Result<()> {
        self.sync_data()
    }
}

/// The device an image is written to. Reads that check for zeros go around
/// the page cache (O_DIRECT) when they can: a buffered read of a loop device
/// over a sparse file is many times slower, and fills the cache with zeros.
struct Device {
    file: File,
    direct: Option<File>,
}

/// What O_DIRECT needs buffers, offsets and lengths aligned to (at most).
const DIRECT_ALIGN: usize = 4096;

impl Device {
    fn open(path: &Path) -> Result<Self, NodeError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(NodeError::io("open for writing", path))?;
        // Without O_DIRECT (some filesystems), reads are buffered: slower, same bytes.
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        Ok(Device { file, direct })
    }
}

impl Target for Device {
    fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        let aligned = (buf.as_ptr() as usize) % DIRECT_ALIGN == 0
            && buf.len() % DIRECT_ALIGN == 0
            && at % DIRECT_ALIGN as u64 == 0;
        if let Some(direct) = self.direct.as_ref().filter(|_| aligned) {
            match direct.read_exact_at(buf, at) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                done => return done,
            }
        }
        self.file.read_exact_at(buf, at)
    }

    fn write_at(&self, buf: &[u8], at: u64) -> io::Result<()> {
        self.file.write_all_at(buf, at)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// A buffer of `len` bytes starting at a [`DIRECT_ALIGN`] boundary.
struct Aligned {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let storage = vec![0u8; len + DIRECT_ALIGN];
        let misalign = (storage.as_ptr() as usize) % DIRECT_ALIGN;
        let start = (DIRECT_ALIGN - misalign) % DIRECT_ALIGN;
        Aligned {
            storage,
            start,
            len,
        }
    }

    fn slice(&mut self, len: usize) -> &mut [u8] {
        &mut self.storage[self.start..self.start + len.min(self.len)]
    }
}

/// The byte ranges of `file` that may hold data, from SEEK_DATA/SEEK_HOLE:
/// everything else of its `len` bytes is a hole, which reads as zeros. A
/// filesystem without them answers the whole file as data.
fn data_ranges(file: &File, len: u64) -> Vec<(u64, u64)> {
    use nix::unistd::{Whence, lseek};
    let mut ranges = Vec::new();
    let mut at = 0u64;
    while at < len {
        let Ok(offset) = i64::try_from(at) else {
            break;
        };
        let start = match lseek(file, offset, Whence::SeekData) {
            Ok(start) => start as u64,
            // No data past `at`: the rest is a hole.
            Err(nix::errno::Errno::ENXIO) => return ranges,
            Err(_) => {
                ranges.push((at, len));
                return ranges;
            }
        };
        let end = match lseek(file, start as i64, Whence::SeekHole) {
            Ok(end) => (end as u64).min(len),
            Err(_) => len,
        };
        if end <= start {
            ranges.push((start, len));
            return ranges;
        }
        ranges.push((start, end));
        at = end;
    }
    ranges
}

/// Copies `len` bytes of `source` onto `target`: everything after the first
/// MiB, flush, then the first MiB, flush. The image's first MiB must not be all
/// zeros (checked before anything is written). A chunk of zeros in the image
/// (a hole, or zeros read) is written only where the target does not already
/// read zeros, so a sparse image costs a read, not a write, and the target reads
/// back the image exactly whatever it held.
fn copy_head_last(
    source: &File,
    len: u64,
    target: &impl Target,
    image: &ImageSource,
    device: &Path,
) -> Result<(), NodeError> {
    let read_source = |buf: &mut [u8], at: u64| {
        source
            .read_exact_at(buf, at)
            .map_err(|e| NodeError::ImageInvalid {
                image: image.to_string(),
                reason: format!("reading {} bytes at {at} failed: {e}", buf.len()),
            })
    };
    let chunk_at = |at: u64| usize::try_from((len - at).min(CHUNK_BYTES as u64)).unwrap_or(0);
    let mut head = vec![0u8; chunk_at(0)];
    read_source(&mut head, 0)?;
    if head.is_empty() || all_zero(&head) {
        return Err(NodeError::ImageZeroHead {
            image: image.to_string(),
            bytes: len,
        });
    }
    let data_ranges = data_ranges(source, len);
    let has_data = |at: u64, n: usize| {
        let end = at + n as u64;
        data_ranges.iter().any(|&(s, e)| s < end && at < e)
    };
    let mut data = vec![0u8; CHUNK_BYTES];
    let mut there = Aligned::new(CHUNK_BYTES);
    let mut at = HEAD_BYTES;
    while at < len {
        let n = chunk_at(at);
        let zeros = !has_data(at, n) || {
            read_source(&mut data[..n], at)?;
            all_zero(&data[..n])
        };
        let write = if zeros {
            let there = there.slice(n);
            target
                .read_at(there, at)
                .map_err(NodeError::io("read", device))?;
            if all_zero(there) {
                None
            } else {
                Some(&ZEROS[..n])
            }
        } else {
            Some(&data[..n])
        };
        if let Some(bytes) = write {
            target
                .write_at(bytes, at)
                .map_err(NodeError::io("write the image to", device))?;
        }
        at += n as u64;
    }
    target.flush().map_err(NodeError::io("flush", device))?;
    target
        .write_at(&head, 0)
        .map_err(NodeError::io("write the image's first MiB to", device))?;
    target.flush().map_err(NodeError::io("flush", device))
}

static ZEROS: [u8; CHUNK_BYTES] = [0; CHUNK_BYTES];

/// Whether every byte is zero (compared with memcmp, fast in any build).
fn all_zero(buf: &[u8]) -> bool {
    buf.chunks(CHUNK_BYTES).all(|c| c == &ZEROS[..c.len()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn sources_are_absolute_clean_paths_or_http_urls() {
        assert_eq!(
            ImageSource::parse("/var/lib/images/disk.qcow2").unwrap(),
            ImageSource::File("/var/lib/images/disk.qcow2".into())
        );
        for url in [
            "http://127.0.0.1:8080/disk.img",
            "https://images.example/a/b.qcow2?v=1",
        ] {
            assert_eq!(
                ImageSource::parse(url).unwrap(),
                ImageSource::Url(url.into())
            );
        }
        for bad in [
            "disk.img",
            "./disk.img",
            "/var/../etc/shadow",
            "/var//disk.img",
            "/var/./disk.img",
            "/var/images/",
            "/",
            "",
            "ftp://host/disk.img",
            "file:///var/disk.img",
            "http://",
            "https://user:secret@host/disk.img",
            "http://host/a disk.img",
        ] {
            let err = ImageSource::parse(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad:?}");
        }
        assert!(
            ImageSource::parse("ftp://h/x")
                .unwrap_err()
                .contains("http:// or https:// URL")
        );
    }

    #[test]
    fn formats_are_raw_or_qcow2() {
        assert_eq!("raw".parse::<ImageFormat>(), Ok(ImageFormat::Raw));
        assert_eq!("qcow2".parse::<ImageFormat>(), Ok(ImageFormat::Qcow2));
        assert!(
            "vmdk"
                .parse::<ImageFormat>()
                .unwrap_err()
                .contains("raw or qcow2")
        );
    }

    fn file_of(dir: &Path, name: &str, len: u64, writes: &[(u64, &[u8])]) -> PathBuf {
        let path = dir.join(name);
        let file = File::create(&path).unwrap();
        file.set_len(len).unwrap();
        for (at, bytes) in writes {
            file.write_all_at(bytes, *at).unwrap();
        }
        path
    }

    #[test]
    fn blank_means_a_zero_first_mib_and_no_signature() {
        let dir = tempfile::tempdir().unwrap();
        let blank = file_of(dir.path(), "blank", 8 << 20, &[(5 << 20, b"later data")]);
        assert!(is_blank(&blank).unwrap());
        let written = file_of(dir.path(), "written", 8 << 20, &[(HEAD_BYTES - 1, b"x")]);
        assert!(!is_blank(&written).unwrap());
        // A filesystem whose superblock is found (ext4's first bytes are zero).
        let formatted = file_of(dir.path(), "fs", 64 << 20, &[]);
        fs::format(&formatted, fs::FsType::Ext4, None).unwrap();
        assert!(!is_blank(&formatted).unwrap());
        let small = file_of(dir.path(), "small", 4096, &[]);
        assert!(is_blank(&small).unwrap());
    }

    /// A target that fails its writes into the first MiB: the crash between the
    /// two halves of an import.
    struct FailsAtHead {
        file: File,
        flushes: Cell<u32>,
    }

    impl Target for FailsAtHead {
        fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
            self.file.read_exact_at(buf, at)
        }
        fn write_at(&self, buf: &[u8], at: u64) -> io::Result<()> {
            if at < HEAD_BYTES {
                return Err(io::Error::other("simulated crash"));
            }
            self.file.write_all_at(buf, at)
        }
        fn flush(&self) -> io::Result<()> {
            self.flushes.set(self.flushes.get() + 1);
            self.file.sync_data()
        }
    }

    fn read_all(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    #[test]
    fn the_first_mib_is_written_last_after_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let len = (3 << 20) + 12345;
        let image = file_of(
            dir.path(),
            "image",
            len,
            &[(0, b"boot"), (HEAD_BYTES + 7, b"tail"), (len - 3, b"end")],
        );
        let device = file_of(dir.path(), "device", 8 << 20, &[]);
        let source = File::open(&image).unwrap();
        let src = ImageSource::File(image.clone());
        let failing = FailsAtHead {
            file: OpenOptions::new()
                .read(true)
                .write(true)
                .open(&device)
                .unwrap(),
            flushes: Cell::new(0),
        };
        let err = copy_head_last(&source, len, &failing, &src, &device).unwrap_err();
        assert!(err.to_string().contains("first MiB"), "{err}");
        assert_eq!(
            failing.flushes.get(),
            1,
            "the tail is flushed before the head"
        );
        let after_crash = read_all(&device);
        assert!(all_zero(&after_crash[..HEAD_BYTES as usize]));
        assert!(is_blank(&device).unwrap(), "the next stage imports again");
        assert_eq!(
            after_crash[HEAD_BYTES as usize..len as usize],
            read_all(&image)[HEAD_BYTES as usize..]
        );
        // The retry finishes it: the device reads back the image exactly.
        let target = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&device)
            .unwrap();
        copy_head_last(&source, len, &target, &src, &device).unwrap();
        let done = read_all(&device);
        assert_eq!(done[..len as usize], read_all(&image)[..]);
        assert!(all_zero(&done[len as usize..]));
        assert!(!is_blank(&device).unwrap());
    }

    #[test]
    fn zero_chunks_of_the_image_overwrite_what_the_device_held() {
        let dir = tempfile::tempdir().unwrap();
        let len = 4 << 20;
        let image = file_of(dir.path(), "image", len, &[(10, b"head")]);
        // Not what a blank device holds past its first MiB, but possible (an
        // earlier import of another version of a URL's image).
        let device = file_of(dir.path(), "device", len, &[(2 << 20, b"stale")]);
        // Through the device's own reads (O_DIRECT where the filesystem has it).
        let target = Device::open(&device).unwrap();
        let source = File::open(&image).unwrap();
        copy_head_last(
            &source,
            len,
            &target,
            &ImageSource::File(image.clone()),
            &device,
        )
        .unwrap();
        assert_eq!(read_all(&device), read_all(&image));
    }

    #[test]
    fn holes_of_the_source_are_found_and_data_is_not_missed() {
        let dir = tempfile::tempdir().unwrap();
        let len = 16 << 20;
        let path = file_of(
            dir.path(),
            "sparse",
            len,
            &[(0, b"a"), (9 << 20, b"b"), (len - 1, b"c")],
        );
        let ranges = data_ranges(&File::open(&path).unwrap(), len);
        let covered = |at: u64| ranges.iter().any(|&(s, e)| s <= at && at < e);
        for at in [0, 9 << 20, len - 1] {
            assert!(covered(at), "{at} in {ranges:?}");
        }
        assert!(ranges.iter().all(|&(s, e)| s < e && e <= len), "{ranges:?}");
        let mut buffer = Aligned::new(CHUNK_BYTES);
        assert_eq!(
            buffer.slice(CHUNK_BYTES).as_ptr() as usize % DIRECT_ALIGN,
            0
        );
    }

    #[test]
    fn an_image_with_a_zero_first_mib_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let image = file_of(dir.path(), "image", 4 << 20, &[(HEAD_BYTES, b"data")]);
        let device = file_of(dir.path(), "device", 8 << 20, &[]);
        let target = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&device)
            .unwrap();
        let source = File::open(&image).unwrap();
        let err = copy_head_last(
            &source,
            4 << 20,
            &target,
            &ImageSource::File(image),
            &device,
        )
        .unwrap_err();
        assert!(matches!(err, NodeError::ImageZeroHead { .. }), "{err}");
        assert!(all_zero(&read_all(&device)));
    }

    #[test]
    fn write_if_blank_leaves_a_written_device_alone_and_cleans_its_scratch() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("scratch");
        let image = file_of(
            dir.path(),
            "image",
            2 << 20,
            &[(0, b"boot"), (HEAD_BYTES, b"x")],
        );
        let device = file_of(dir.path(), "device", 4 << 20, &[]);
        let wanted = Image {
            source: ImageSource::File(image.clone()),
            format: None,
        };
        assert_eq!(
            write_if_blank(&device, &wanted, &scratch, "v1").unwrap(),
            Outcome::Written {
                format: ImageFormat::Raw,
                bytes: 2 << 20
            }
        );
        // What the VM writes later stays.
        let file = OpenOptions::new().write(true).open(&device).unwrap();
        file.write_all_at(b"vm data", 100).unwrap();
        assert_eq!(
            write_if_blank(&device, &wanted, &scratch, "v1").unwrap(),
            Outcome::LeftAlone
        );
        assert_eq!(&read_all(&device)[100..107], b"vm data");
        assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
        // Too large for the device: both sizes and what to ask for.
        let big = file_of(dir.path(), "big", 5 << 20, &[(0, b"boot")]);
        let blank = file_of(dir.path(), "blank", 4 << 20, &[]);
        let err = write_if_blank(
            &blank,
            &Image {
                source: ImageSource::File(big),
                format: Some(ImageFormat::Raw),
            },
            &scratch,
            "v2",
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&(5u64 << 20).to_string()), "{message}");
        assert!(message.contains(&(4u64 << 20).to_string()), "{message}");
        let missing = write_if_blank(
            &blank,
            &Image {
                source: ImageSource::File(dir.path().join("nope")),
                format: None,
            },
            &scratch,
            "v3",
        )
        .unwrap_err();
        assert!(matches!(missing, NodeError::ImageFile { .. }), "{missing}");
    }
}
