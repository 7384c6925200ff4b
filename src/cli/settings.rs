//! Flags for the cluster-wide defaults and pool settings (the chart's values).

use clap::Args;

use crate::allocator::{DEFAULT_MAX_VIRTUAL_DRIVES_PER_CORE, DEFAULT_MIN_DRIVE_GIB, Ratio};
use crate::csi::params::Defaults;
use crate::pools::PoolSettings;

#[derive(Debug, Clone, Args)]
pub struct SettingsArgs {
    /// Default TLC part of driveTypesRatio for classes that set none.
    #[arg(long, default_value_t = 1, value_name = "T")]
    pub default_tlc: u32,
    /// Default QLC part of driveTypesRatio.
    #[arg(long, default_value_t = 10, value_name = "Q")]
    pub default_qlc: u32,
    #[arg(long, default_value_t = DEFAULT_MAX_VIRTUAL_DRIVES_PER_CORE, value_name = "M")]
    pub max_virtual_drives_per_core: u32,
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub enforce_min_drives_per_type_per_core: bool,
    #[arg(long, default_value_t = DEFAULT_MIN_DRIVE_GIB, value_name = "GIB")]
    pub min_virtual_drive_gib: u64,
    /// What each server contributes to its pool.
    #[arg(long, default_value_t = 1500, value_name = "GIB")]
    pub capacity_per_server_gib: u64,
    /// What each pool server keeps back.
    #[arg(long, default_value_t = 300, value_name = "GIB")]
    pub system_reserve_per_server_gib: u64,
    /// Pool usage above this percentage is a warning.
    #[arg(long, default_value_t = 75.0, value_name = "PERCENT")]
    pub warning_threshold_percent: f64,
    /// Pool usage above this percentage is critical.
    #[arg(long, default_value_t = 90.0, value_name = "PERCENT")]
    pub critical_threshold_percent: f64,
}

impl SettingsArgs {
    pub fn defaults(&self) -> Defaults {
        Defaults {
            ratio: Ratio {
                tlc: self.default_tlc,
                qlc: self.default_qlc,
            },
            max_virtual_drives_per_core: self.max_virtual_drives_per_core,
            enforce_min_drives_per_type_per_core: self.enforce_min_drives_per_type_per_core,
            min_drive_gib: self.min_virtual_drive_gib,
        }
    }

    pub fn pools(&self) -> Result<PoolSettings, String> {
        let (warning, critical) = (
            self.warning_threshold_percent,
            self.critical_threshold_percent,
        );
        if !(0.0 < warning && warning < critical && critical <= 100.0) {
            return Err(format!(
                "--warning-threshold-percent {warning} and --critical-threshold-percent {critical}: need 0 < warning < critical <= 100"
            ));
        }
        Ok(PoolSettings {
            capacity_per_server_gib: self.capacity_per_server_gib,
            system_reserve_per_server_gib: self.system_reserve_per_server_gib,
            warning_percent: self.warning_threshold_percent,
            critical_percent: self.critical_threshold_percent,
        })
    }
}
