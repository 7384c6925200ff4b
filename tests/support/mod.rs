//! Fixtures shared by the integration tests that opt in with `mod support;`.

pub mod chaos;
pub mod cluster;
pub mod devices;
pub mod driver;
pub mod e2e;
pub mod http;
