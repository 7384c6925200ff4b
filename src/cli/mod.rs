//! Command-line front ends over the core modules.

pub mod all_in_one;
pub mod csi;
pub mod plan;
pub mod settings;
pub mod sign;
