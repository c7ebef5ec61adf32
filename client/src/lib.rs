//! ferry-client: the device agent, `ferryd`.
//!
//! What it is for: everything a device does about updates, as its own service beside the
//! application: configuration, checking in, downloading missing chunks, assembling
//! deployments, switching, health checks and rollback. So far it holds the configuration
//! ([`config`]) and reports the device's state ([`status`]); the update path arrives with the
//! server. What it is not for: serving HTTP to others (no axum here) or writing repositories.

pub mod config;
pub mod status;

pub use config::Config;
