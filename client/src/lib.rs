//! ferry-client: the device agent, `ferryd`.
//!
//! What it is for: everything a device does about updates, as its own service beside the
//! application: configuration, checking in, downloading missing chunks, assembling
//! deployments, switching, health checks and rollback: [`config`], the device's own store
//! ([`local`]), the HTTP client ([`http`]), one update ([`update`]), an offline bundle ([`bundle`]), the device's fsck
//! ([`fsck`]) and its status ([`status`]). What it is not for: serving HTTP to others (no
//! axum here) or writing repositories.

pub mod app;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod crash;
pub mod daemon;
pub mod devboard;
pub mod error;
pub mod fleet;
pub mod fsck;
pub mod http;
pub mod layout;
pub mod local;
pub mod local_ui;
pub mod notify;
pub mod process;
pub mod progress;
pub mod provision;
pub mod state;
pub mod status;
pub mod tls;
pub mod trial;
pub mod trust;
pub mod update;

pub use config::Config;

/// The runtime a command runs on: one thread, as a device's agent needs no more.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Hands memory freed by the allocator back to the system (glibc keeps freed small blocks in
/// its arenas): called after planning, whose many small allocations are gone by then, so
/// they do not add to the peak of what follows.
#[allow(unsafe_code)]
pub fn release_free_memory() {
    // SAFETY: malloc_trim only returns free memory to the system; it touches no live
    // allocation and may be called at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
