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

/// Logs on stderr (`FERRY_LOG` filters them, default `info`): at a terminal in colour, with
/// times; otherwise (a file, a pipe, the journal) without escapes; and under systemd, whose
/// journal stamps every line, without a time of its own.
fn init_logging() {
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let journal = stderr_is_the_journal();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    if journal {
        logs.without_time().init();
    } else {
        logs.init();
    }
}

/// Whether stderr is the journal's stream: `JOURNAL_STREAM` names its device and inode
/// (systemd sets it; a child whose stderr went elsewhere inherits it all the same).
fn stderr_is_the_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var("JOURNAL_STREAM").ok() else { return false };
    let Some((dev, ino)) = stream.split_once(':') else { return false };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else { return false };
    let Ok(meta) = std::fs::File::from(fd).metadata() else { return false };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

fn main() -> ExitCode {
    bound_allocator();
    init_logging();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", ferry_client::error::describe(&e));
            ExitCode::from(ferry_client::error::exit_code(&e))
        }
    }
}
