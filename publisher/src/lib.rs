//! ferry-publisher: what the `ferry` command does, as a library.
//!
//! What it is for: committing directory trees into a repository ([`import`]), checking
//! commits out ([`checkout`]), verifying a repository ([`fsck`]) and presenting objects to
//! people and scripts ([`show`]), and serving the repository over HTTP ([`serve`]). What it is not for:
//! device file systems, deployments or bootloaders (that is the device agent's job).

pub mod bundle;
pub mod ca;
pub mod channels;
pub mod checkout;
pub mod cli;
pub mod connections;
pub mod export;
pub mod fleet;
pub mod fleet_api;
pub mod fsck;
pub mod image;
pub mod import;
pub mod patches;
pub mod serve;
pub mod show;
pub mod tls;
