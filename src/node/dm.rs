//! STUB until the ioctl module lands (not committed).
use super::NodeError;
use std::path::PathBuf;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linear {
    pub major: u64,
    pub minor: u64,
    pub start_sector: u64,
    pub sectors: u64,
}
pub struct DmDevice {
    pub name: String,
    pub uuid: String,
    pub major: u64,
    pub minor: u64,
    pub open_count: i32,
    pub suspended: bool,
    pub live_table: bool,
}
pub fn available() -> bool {
    false
}
pub fn list() -> Result<Vec<(String, u64, u64)>, NodeError> {
    Ok(vec![])
}
pub fn info(_name: &str) -> Result<Option<DmDevice>, NodeError> {
    Ok(None)
}
pub fn table(_name: &str) -> Result<Option<Vec<Linear>>, NodeError> {
    Ok(None)
}
pub fn create_linear(_name: &str, _uuid: &str, _table: &[Linear]) -> Result<PathBuf, NodeError> {
    Err(NodeError::NoDeviceMapper)
}
pub fn reload_linear(_name: &str, _table: &[Linear]) -> Result<(), NodeError> {
    Err(NodeError::NoDeviceMapper)
}
pub fn remove(_name: &str) -> Result<bool, NodeError> {
    Ok(false)
}
pub fn device_path(_major: u64, _minor: u64, name: &str) -> Result<PathBuf, NodeError> {
    Ok(PathBuf::from("/dev/mapper").join(name))
}
