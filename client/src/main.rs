//! `ferryd`: the device agent. Sets up the allocator and logging, parses the arguments and
//! runs the command ([`ferry_client::cli`]), and prints its error.

use std::process::ExitCode;

use clap::Parser;
use ferry_client::cli::{run, Cli};

/// Keeps the agent's memory what it uses: glibc otherwise raises its mmap threshold after
/// the first large buffer (a patch window) is freed, and later buffers of that size stay in
/// per-thread arenas instead of returning to the system; a device has little RAM to lend.
#[allow(unsafe_code)]
fn bound_allocator() {
    // SAFETY: mallopt only sets allocator parameters; it is called once, before any thread
    // is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    bound_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(ferry_client::error::exit_code(&e))
        }
    }
}
