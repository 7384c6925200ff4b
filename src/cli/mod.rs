//! Command-line front ends over the core modules.

pub mod all_in_one;
pub mod app;
pub mod controller;
pub mod csi;
pub mod doctor;
pub mod drives;
pub mod kubectl;
pub mod node;
pub mod orphans;
pub mod outcome;
pub mod output;
pub mod plan;
pub mod pools;
pub mod settings;
pub mod sign;
pub mod table;
