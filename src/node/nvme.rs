//! What an NVMe namespace promises about deallocated blocks, asked of the drive
//! itself (Identify Namespace through the kernel's NVMe admin passthrough).
//!
//! Erasing an extent must leave zeros. A discard (NVMe Deallocate) is the
//! cheapest way to get there — one command per 2 GiB instead of one Write Zeroes
//! per 4 MiB or less — but the kernel no longer says whether a device's discards
//! read back as zeros. An NVMe namespace does: bits 2:0 of its DLFEAT byte are
//! 001b when deallocated blocks read as zeros. Only then does vdrive erase by
//! discarding, and it still reads back the edges of the range before trusting it.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::NodeError;

/// `struct nvme_passthru_cmd` of linux/nvme_ioctl.h (72 bytes).
#[repr(C)]
#[derive(Default)]
struct PassthruCmd {
    opcode: u8,
    flags: u8,
    rsvd1: u16,
    nsid: u32,
    cdw2: u32,
    cdw3: u32,
    metadata: u64,
    addr: u64,
    metadata_len: u32,
    data_len: u32,
    cdw10: u32,
    cdw11: u32,
    cdw12: u32,
    cdw13: u32,
    cdw14: u32,
    cdw15: u32,
    timeout_ms: u32,
    result: u32,
}

// NVME_IOCTL_ID = _IO('N', 0x40): the namespace id of an open namespace device.
nix::ioctl_none!(nvme_ioctl_id, b'N', 0x40);
// NVME_IOCTL_ADMIN_CMD = _IOWR('N', 0x41, struct nvme_admin_cmd).
nix::ioctl_readwrite!(nvme_admin_cmd, b'N', 0x41, PassthruCmd);

const IDENTIFY: u8 = 0x06;
const IDENTIFY_LEN: usize = 4096;
/// Byte offset of DLFEAT (Deallocate Logical Block Features) in Identify Namespace.
const DLFEAT: usize = 33;
/// DLFEAT bits 2:0 = 001b: a deallocated logical block reads as all zeros.
const READS_ZEROES: u8 = 0b001;

/// Whether `device` is an NVMe namespace whose deallocated blocks read as
/// zeros. False for anything else (not NVMe, no answer, another promise).
pub fn deallocate_reads_zeroes(device: &File, path: &Path) -> bool {
    match dlfeat(device, path) {
        Ok(Some(features)) => features & 0b111 == READS_ZEROES,
        Ok(None) => false,
        Err(err) => {
            tracing::debug!(device = %path.display(), %err, "cannot ask the NVMe drive what a deallocated block reads as");
            false
        }
    }
}

/// The namespace's DLFEAT byte; None when `device` is not an NVMe namespace.
fn dlfeat(device: &File, path: &Path) -> Result<Option<u8>, NodeError> {
    let is_nvme = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("nvme"))
        || std::fs::canonicalize(path)
            .ok()
            .and_then(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy().starts_with("nvme"))
            })
            .unwrap_or(false);
    if !is_nvme {
        return Ok(None);
    }
    let ioctl_error = |op: &'static str| {
        move |source| NodeError::Ioctl {
            op,
            device: path.to_path_buf(),
            source,
        }
    };
    // SAFETY: the fd is open; NVME_IOCTL_ID takes no argument.
    let nsid =
        unsafe { nvme_ioctl_id(device.as_raw_fd()) }.map_err(ioctl_error("NVME_IOCTL_ID"))?;
    let nsid = u32::try_from(nsid).map_err(|_| NodeError::Output {
        command: "NVME_IOCTL_ID".into(),
        reason: format!("namespace id {nsid} is not a valid NVMe namespace id"),
    })?;
    let mut data = vec![0u8; IDENTIFY_LEN];
    let mut cmd = PassthruCmd {
        opcode: IDENTIFY,
        nsid,
        addr: data.as_mut_ptr() as u64,
        data_len: IDENTIFY_LEN as u32,
        // CNS 0: Identify Namespace.
        cdw10: 0,
        ..PassthruCmd::default()
    };
    // SAFETY: `cmd` is a properly laid out nvme_passthru_cmd; `addr` points at
    // `data`, which is IDENTIFY_LEN bytes long and outlives the call, and the
    // kernel writes at most `data_len` bytes there.
    unsafe { nvme_admin_cmd(device.as_raw_fd(), &mut cmd) }
        .map_err(ioctl_error("NVME_IOCTL_ADMIN_CMD (Identify Namespace)"))?;
    Ok(data.get(DLFEAT).copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_passthrough_command_has_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<PassthruCmd>(), 72);
        assert_eq!(std::mem::offset_of!(PassthruCmd, addr), 24);
        assert_eq!(std::mem::offset_of!(PassthruCmd, data_len), 36);
        assert_eq!(std::mem::offset_of!(PassthruCmd, cdw10), 40);
        assert_eq!(std::mem::offset_of!(PassthruCmd, result), 68);
    }

    #[test]
    fn a_file_is_not_an_nvme_namespace() {
        let file = tempfile::NamedTempFile::new().unwrap();
        assert!(!deallocate_reads_zeroes(file.as_file(), file.path()));
    }
}
