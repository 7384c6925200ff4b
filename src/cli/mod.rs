//! Command-line front ends over the core modules.

pub mod plan;
