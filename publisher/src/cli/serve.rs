//! `ferry serve`: its arguments, the scratch directory, the tokio runtime and the shutdown
//! signals. The server itself is [`crate::serve`].

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::RepoArg;
use crate::fleet::db::Location;
use crate::fleet::{Settings, ENROLLMENTS_PER_MINUTE};
use crate::serve::{DeviceCa, FleetConfig, PatchConfig, ServeConfig};
use crate::tls::TlsFiles;

/// `--patch-first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PatchFirst {
    Fast,
    Best,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory for the server's own files: RocksDB follower logs and, unless
    /// --patch-cache says otherwise, the patch cache (default: a temporary directory,
    /// removed at exit).
    #[arg(long, value_name = "DIR")]
    scratch: Option<PathBuf>,
    /// zstd level of chunk patches (1-22); higher is smaller and slower to compute once.
    #[arg(long, default_value_t = ferry_delta::patch::DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
    patch_level: i32,
    /// Directory caching computed patches across restarts (default: DIR/patch-cache of --scratch).
    #[arg(long, value_name = "DIR")]
    patch_cache: Option<PathBuf>,
    /// Bound of the patch cache in MiB; the least recently used patches go first.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    patch_cache_mib: u64,
    /// A patch not computed yet at --patch-level: `fast` answers at once at a fast level
    /// and computes the best one in the background for the next device; `best` computes it
    /// while the device waits.
    #[arg(long, value_enum, default_value_t = PatchFirst::Fast, value_name = "fast|best")]
    patch_first: PatchFirst,
    /// A second level of the patch cache that several servers share: a directory, or
    /// s3://BUCKET/PREFIX with the AWS_* variables of `ferry export`. Each patch is then
    /// computed once for all of them.
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    patch_store: Option<String>,
    /// Do not prepare each new release's patches (channel documents, branch heads) in the
    /// background ahead of its devices.
    #[arg(long)]
    no_prepare: bool,
    /// Patches computed at once (default: the number of cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    patch_workers: Option<u16>,
    /// Directory of the fleet's state (devices, tokens, audit log): enables the device
    /// and admin APIs. It must hold a fleet store already (made by `ferry admin token
    /// create --fleet DIR --create-fleet`, the first admin token), unless --create-fleet.
    #[arg(long, value_name = "DIR", group = "fleet_store")]
    fleet: Option<PathBuf>,
    /// Make a new, empty fleet store in --fleet's directory if it holds none (without it,
    /// a mistyped directory is an error, not a second fleet).
    #[arg(long, requires = "fleet")]
    create_fleet: bool,
    /// The fleet's state in PostgreSQL instead of --fleet's directory, so several
    /// `ferry serve` replicas behind a load balancer share it:
    /// postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE (the schema is created at the first
    /// start). Better given in the environment, where `ps` does not show a password.
    #[arg(long, env = "FERRY_FLEET_DB", value_name = "URL", group = "fleet_store", value_parser = postgres_url, hide_env_values = true)]
    fleet_db: Option<String>,
    /// Newly enrolled devices wait for `ferry device accept SERIAL`.
    #[arg(long, requires = "fleet_store")]
    require_approval: bool,
    /// Enrollments one enrollment token may make at once and then per minute (all tokens
    /// together: 6 times as many); more are answered 429 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = ENROLLMENTS_PER_MINUTE, requires = "fleet_store")]
    enrollments_per_minute: u32,
    /// An online channel key (secret key file): lets the admin API and the web UI promote
    /// and roll back. Without it, channels are changed only with `ferry promote`.
    #[arg(long, value_name = "FILE", requires = "fleet_store")]
    channel_key: Option<PathBuf>,
    /// An online configuration key (secret key file, a configuration key of the key
    /// document): every check-in answer carries the device's configuration signed with it.
    /// Without it, devices whose key document names configuration keys apply none.
    #[arg(long, value_name = "FILE", requires = "fleet_store")]
    config_key: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM, leaf first; HTTP/2 and HTTP/1.1).
    /// Reloaded when it changes on disk or on SIGHUP, without dropping connections, so
    /// certbot-style renewal needs no restart. Without it the server speaks plain HTTP,
    /// which is right only behind a TLS-terminating load balancer.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: the CA (PEM) whose client certificates devices present. Every device
    /// request after enrollment must then come with the certificate issued to that device
    /// (enrollment itself needs only the enrollment token).
    /// Behind a TLS-terminating balancer (--client-cert-header) the balancer checks them,
    /// and this CA still issues them.
    #[arg(long, value_name = "FILE", requires = "fleet_store")]
    client_ca: Option<PathBuf>,
    /// The key of --client-ca: the server issues each enrolling device a certificate for
    /// its serial (the device's key never leaves it; it sends a certificate request).
    #[arg(long, value_name = "FILE", requires = "client_ca")]
    client_ca_key: Option<PathBuf>,
    /// Behind a TLS-terminating load balancer: the header it fills with the client
    /// certificate's SHA-256 (hex). Believed only from --trusted-proxy addresses.
    #[arg(long, value_name = "NAME", requires_all = ["fleet_store", "trusted_proxy"])]
    client_cert_header: Option<String>,
    /// A load balancer's address whose --client-cert-header is believed; repeat for several.
    #[arg(long, value_name = "IP", requires = "client_cert_header")]
    trusted_proxy: Vec<std::net::IpAddr>,
}

/// Serves until SIGTERM or SIGINT, printing `listening on http://ADDR` (or https://) on
/// stdout once bound.
pub fn serve(a: ServeArgs) -> Result<()> {
    let ServeArgs {
        repo,
        listen,
        scratch,
        patch_level,
        patch_cache,
        patch_cache_mib,
        patch_workers,
        patch_first,
        no_prepare,
        patch_store,
        fleet,
        create_fleet,
        fleet_db,
        require_approval,
        enrollments_per_minute,
        channel_key,
        config_key,
        tls_cert,
        tls_key,
        client_ca,
        client_ca_key,
        client_cert_header,
        trusted_proxy,
    } = a;
    if let Some(dir) = &fleet {
        crate::fleet::db::check_embedded(dir, create_fleet)?;
    }
    let tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => None,
    };
    let device_ca = client_ca.map(|cert| DeviceCa { cert, key: client_ca_key });
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (scratch, temporary) = match scratch {
        Some(dir) => (dir, false),
        None => (std::env::temp_dir().join(format!("ferry-serve-{}", std::process::id())), true),
    };
    let mut patches = PatchConfig {
        level: patch_level,
        cache_dir: patch_cache,
        cache_bytes: patch_cache_mib.saturating_mul(1 << 20),
        first: match patch_first {
            PatchFirst::Fast => crate::patches::FirstAnswer::Fast,
            PatchFirst::Best => crate::patches::FirstAnswer::Best,
        },
        prepare: !no_prepare,
        store: patch_store,
        ..Default::default()
    };
    if let Some(n) = patch_workers {
        patches.workers = usize::from(n);
    }
    let config = ServeConfig {
        patches,
        fleet: fleet.map(Location::Dir).or(fleet_db.map(Location::Postgres)).map(|store| FleetConfig {
            store,
            settings: Settings { require_approval, enrollments_per_minute },
            channel_key,
            config_key,
        }),
        tls,
        device_ca,
        client_cert_header: client_cert_header.map(|h| (h, trusted_proxy)),
        ..Default::default()
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(crate::serve::serve_with(
        repo.repo.clone(),
        scratch.clone(),
        listen,
        &config,
        |addr| {
            println!("listening on {scheme}://{addr}");
            let _ = std::io::stdout().flush();
        },
        shutdown_signal(),
    ));
    if temporary {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    result
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    // The target the binary logged this under before the command moved into the library.
    tracing::info!(target: "ferry", "shutting down");
}

/// `--fleet-db`: a PostgreSQL URL (a directory is --fleet's).
pub fn postgres_url(s: &str) -> Result<String, String> {
    match Location::parse(s) {
        Location::Postgres(url) => Ok(url),
        // Not echoed: it may hold a password in a form this does not recognise.
        Location::Dir(_) => Err(
            "not a PostgreSQL URL (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE); a directory is given with --fleet"
                .into(),
        ),
    }
}
