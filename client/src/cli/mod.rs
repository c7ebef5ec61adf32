//! `ferryd`'s command line: the arguments (clap) and what each command does and prints.
//! `main.rs` only sets up the process and calls [`run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::Config;

#[derive(Debug, Parser)]
#[command(name = "ferryd", version, about = "Ferry's device agent: fetches, deploys and switches releases")]
pub struct Cli {
    /// Configuration file (TOML); every key and its default is documented in
    /// client/src/config.rs and the README.
    #[arg(long, env = "FERRYD_CONFIG", default_value = "/etc/ferry/ferryd.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Checks the channel (or branch) once and, if it moved, updates to its head and switches.
    Update {
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
        /// On a pinned device: download what the head lacks into staging, deploy nothing.
        #[arg(long)]
        prefetch: bool,
    },
    /// Installs a release from an offline bundle (`ferry bundle`), FILE or - for stdin, with
    /// the same checks, trial and rollback as a network update and no network.
    ///
    /// A bundle that lacks chunks this device needs is refused before anything is written,
    /// naming the files; a cut or damaged one is refused and nothing is switched. A channel
    /// bundle moves the device like a fleet update (a pinned device refuses it). A commit
    /// bundle (one build, `ferry bundle --to COMMIT`) is refused on a device that follows a
    /// channel, and must name this device's hardware revision and be newer than the running
    /// release, unless --force.
    Apply {
        /// The bundle (`ferry bundle`), or - to read it from stdin.
        #[arg(value_name = "FILE|-")]
        file: PathBuf,
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
        /// Pin the device afterwards (a developer's board), as `ferryd deploy` does.
        #[arg(long)]
        pin: bool,
        /// For a commit bundle: allow it on a channel device, without a hardware revision,
        /// older than the running release, or one that failed its trial here. The local page
        /// and the USB script never pass it.
        #[arg(long)]
        force: bool,
    },
    /// Serves the device's local page (for its access point): what it runs, and an upload
    /// form that installs a bundle, protected by [local_ui] password or password_file.
    ///
    /// Prints `listening on http://ADDR` once bound; runs until stopped.
    LocalUi {
        /// Address to listen on, e.g. 192.168.4.1:80 (the access point's side only).
        #[arg(long, value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// Serve as this user, not root (overrides `[local_ui] user`); needs --apply-socket.
        #[arg(long, value_name = "NAME", requires = "apply_socket")]
        user: Option<String>,
        /// Hand uploads to `ferryd apply-server` on this socket (overrides `[local_ui]
        /// apply_socket`).
        #[arg(long, value_name = "PATH")]
        apply_socket: Option<PathBuf>,
    },
    /// Installs the local page's uploads as root, so the page itself need not be: listens on
    /// `[local_ui] apply_socket` (0660, the group of `[local_ui] user`), takes a bundle from
    /// each connection of root or that user, one at a time, and answers how it went. Prints
    /// `listening on PATH` once ready; runs until stopped (ferryd-apply.service).
    ApplyServer {
        /// The socket to listen on (overrides `[local_ui] apply_socket`).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// The local page's user: the socket's group, and the one user besides root that may
        /// connect (overrides `[local_ui] user`).
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
    },
    /// The local page's certificate (`[local_ui] tls = true`): prints its SHA-256
    /// fingerprint, the one browsers show, making it first if there is none (on the device:
    /// its key never leaves it). A damaged one is an error until --new replaces it.
    LocalUiCert {
        /// Make a new key and certificate, replacing the present ones (damaged or not);
        /// restart `ferryd local-ui` to serve it. Browsers then show a new fingerprint.
        #[arg(long)]
        new: bool,
        /// With --new: an address the page is opened at (e.g. 192.168.4.1), named in the
        /// certificate besides localhost, the host name, the serial and [local_ui] hosts.
        #[arg(long, value_name = "IP", requires = "new")]
        address: Option<std::net::IpAddr>,
        /// Print the certificate (PEM, without the key), e.g. to import into a browser.
        #[arg(long, conflicts_with = "json")]
        pem: bool,
        /// Print {"path", "fingerprint", "made"} as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// First boot of a device flashed from an image: enrolls (serial and hardware from their
    /// configured sources), fetches its configuration, runs [provision] init_command, then
    /// updates. Each step is recorded once done: after a power cut it resumes, never
    /// enrolling twice; once all are done it does nothing.
    Provision {
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Installs a bundle into an SD-card image tree rooted at DIR, as this configuration's
    /// device will hold it (the factory step `ferry image` runs); no trial or bootloader.
    SeedImage {
        /// The image tree; the configuration's paths are taken under it.
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
        /// The hardware revision the image is for.
        #[arg(long, value_name = "REV")]
        hardware: String,
        /// A full bundle (`ferry bundle` without --from), or - to read it from stdin.
        #[arg(value_name = "FILE|-")]
        file: PathBuf,
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// The daemon: updates every poll_interval (with jitter), backing off on errors.
    Run {
        /// Print one JSON line on stdout per check, for a supervisor: the update's result
        /// (what `ferryd update --json` prints) or {"error": ..., "retry_in_seconds": ...}.
        #[arg(long)]
        json: bool,
    },
    /// Deploys any commit of the repository (REV: a commit id, a version, or a branch),
    /// fetching what is missing, and pins the device to it (a dev board's command).
    Deploy {
        /// A commit id, a version (e.g. 1.4.0), or a branch name.
        rev: String,
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Points current_link at a developer's working copy (pinned), or back (--off).
    Dev {
        /// The working copy (an absolute path to a directory).
        #[arg(long, value_name = "DIR", required_unless_present = "off")]
        link: Option<std::path::PathBuf>,
        /// Back to the deployment that ran before.
        #[arg(long, conflicts_with = "link")]
        off: bool,
    },
    /// Links a writable copy of the current deployment as current (files are copied, never
    /// hardlinked to the object store); the next deployment drops it unless --keep.
    Unlock {
        /// Keep the copy when the next release is deployed (else it is dropped then).
        #[arg(long)]
        keep: bool,
    },
    /// Pins the device: fleet updates are not downloaded until `ferryd unpin`.
    Pin,
    /// Lets fleet updates in again.
    Unpin,
    /// Shows the current and previous deployments and the last update's result.
    Status {
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Verifies every deployment on the device against its commit; exits 1 on problems.
    Fsck {
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Marks the deployment on trial good (for the application, after its own self-test).
    MarkGood,
    /// Switches back to the previous deployment now, and never reinstalls the current commit.
    Rollback {
        /// Why, recorded for `status`.
        #[arg(long, default_value = "manual rollback")]
        reason: String,
    },
    /// Early at every boot, before the application: counts a trial's boots, rolls back at
    /// the boot limit, and cleans what an interrupted update left.
    BootCheck,
    /// Checks that updates can work here: keys, state directory, free space, current link,
    /// and that the bootloader environment keeps what is written. Exits 1 on a failure.
    Doctor,
    /// Checks the configuration and the trusted keys; prints the effective configuration.
    CheckConfig {
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
}

fn human(bytes: u64) -> String {
    if bytes < 1024 * 1024 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / 1024.0 / 1024.0)
    }
}

/// A bundle to read: FILE, or stdin for `-`.
fn open_input(file: &std::path::Path) -> anyhow::Result<Box<dyn std::io::Read>> {
    if file.as_os_str() == "-" {
        return Ok(Box::new(std::io::stdin().lock()));
    }
    let f = std::fs::File::open(file).map_err(|e| anyhow::anyhow!("opening {}: {e}", file.display()))?;
    Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, f)))
}

/// Runs one `ferryd` command; the exit code is 0, or 1 when `fsck` or `doctor` found problems.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if matches!(cli.config.try_exists(), Ok(false)) {
        return Err(crate::error::Failure::NoConfiguration(format!(
            "no configuration at {}: write one (see `ferryd check-config --help` and the README's device section), or give --config",
            cli.config.display()
        ))
        .into());
    }
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::Deploy { rev, json } => {
            let progress = crate::progress::Display::start();
            let s = crate::runtime()?.block_on(crate::update::deploy(&config, &rev))?;
            drop(progress);
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                eprintln!("deployed {} ({}); pinned until `ferryd unpin`", s.version, &s.to[..12.min(s.to.len())]);
            }
        }
        Command::Apply { file, json, pin, force } => {
            let progress = crate::progress::Display::start();
            let opts = crate::bundle::ApplyOptions { pin, force };
            let s = crate::runtime()?.block_on(crate::bundle::apply(&config, open_input(&file)?, opts))?;
            drop(progress);
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else if s.up_to_date {
                println!("already at {} ({}); nothing changed", s.version, &s.to[..12]);
            } else {
                println!(
                    "applied {} -> {} ({}){}: {} chunks from the bundle ({} read), {} reused; {} of {} files reused{}",
                    s.from.as_deref().map_or("nothing", |f| &f[..12]),
                    &s.to[..12],
                    s.version,
                    s.channel
                        .as_ref()
                        .map(|c| format!(", channel {c} serial {}", s.serial.unwrap_or(0)))
                        .unwrap_or_default(),
                    s.chunks_used,
                    human(s.bundle_bytes),
                    s.chunks_reused,
                    s.files_reused,
                    s.files,
                    if s.pinned { "; pinned until `ferryd unpin`" } else { "" }
                );
            }
        }
        Command::LocalUi { listen, user, apply_socket } => {
            let config = with_local_ui(config, user, apply_socket)?;
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(crate::local_ui::serve(cli.config.clone(), config, listen, |url| {
                println!("listening on {url}");
                use std::io::Write;
                let _ = std::io::stdout().flush();
            }))?;
        }
        Command::ApplyServer { socket, user } => {
            let config = with_local_ui(config, user, socket)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(crate::local_ui::apply_server(cli.config.clone(), config, |path| {
                println!("listening on {}", path.display());
                use std::io::Write;
                let _ = std::io::stdout().flush();
            }))?;
        }
        Command::LocalUiCert { new, address, pem, json } => {
            let (c, made) = if new {
                (crate::local_ui::certificate::renew(&config, address)?, true)
            } else {
                crate::local_ui::certificate::ensure(&config, None)?
            };
            if pem {
                print!("{}", c.certificate_pem());
            } else if json {
                let v = serde_json::json!({ "path": c.path, "fingerprint": c.fingerprint(), "made": made });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("SHA-256 fingerprint: {}", c.fingerprint());
                eprintln!(
                    "{} {}{}",
                    if made { "made" } else { "in" },
                    c.path.display(),
                    if new { "; restart `ferryd local-ui` to serve it" } else { "" }
                );
            }
        }
        Command::Provision { json } => {
            let s = crate::runtime()?.block_on(crate::provision::provision(&config))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else if s.already_provisioned {
                println!("already provisioned");
            } else {
                let update = match &s.update {
                    Some(u) if u.up_to_date => format!("; up to date at {}", u.version),
                    Some(u) => format!("; updated to {} ({} downloaded)", u.version, human(u.bytes_downloaded)),
                    None => String::new(),
                };
                println!(
                    "provisioned {} ({}): {}{update}",
                    s.serial.as_deref().unwrap_or("this device"),
                    s.hardware,
                    s.ran.join(", ")
                );
            }
            if let (false, Some(f)) = (json, &s.local_ui_certificate) {
                println!("local page certificate SHA-256: {f}");
            }
        }
        Command::SeedImage { root, hardware, file, json } => {
            let mut c = config.rooted(&root);
            c.hardware = Some(hardware);
            (c.hardware_file, c.hardware_env, c.hardware_command) = (None, None, None);
            let s = crate::runtime()?.block_on(crate::bundle::seed(&c, &root, open_input(&file)?))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("seeded {} with {} ({}): {} files", root.display(), s.version, &s.to[..12], s.files);
            }
        }
        Command::Dev { link, off } => {
            if off {
                let back = crate::devboard::off(&config)?;
                eprintln!("back to deployment {}", &back[..12.min(back.len())]);
            } else if let Some(dir) = link {
                crate::devboard::link(&config, &dir)?;
                eprintln!(
                    "{} -> {} (pinned; `ferryd dev --off` to go back)",
                    config.current_link.display(),
                    dir.display()
                );
            }
        }
        Command::Unlock { keep } => {
            let dir = crate::devboard::unlock(&config, keep)?;
            eprintln!("{} -> {} (a writable copy)", config.current_link.display(), dir.display());
        }
        Command::Pin | Command::Unpin => {
            let pin = matches!(cli.command, Command::Pin);
            crate::state::change(&config, |s| s.pinned = pin)?;
            eprintln!(
                "{}",
                if pin { "pinned: fleet updates are not downloaded" } else { "unpinned: fleet updates are back" }
            );
        }
        Command::Update { json, prefetch } => {
            let progress = crate::progress::Display::start();
            let s = if prefetch {
                crate::runtime()?.block_on(crate::update::prefetch(&config))?
            } else {
                crate::runtime()?.block_on(crate::update::update(&config))?
            };
            drop(progress);
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else if let Some(bad) = &s.skipped_bad_commit {
                println!(
                    "staying at {} ({}): the branch points at {}, which failed its trial here before",
                    s.version,
                    &s.to[..12],
                    &bad[..12]
                );
            } else if s.up_to_date && s.pinned {
                // Nothing was looked for: not "up to date", which would say the fleet has
                // nothing newer.
                match crate::state::read(&config)?.dev {
                    Some(d) => println!(
                        "running the {} {} instead of a release: no update looked for (`ferryd dev --off` goes back to {} ({}))",
                        if d.unlocked { "unlocked copy" } else { "working copy" },
                        d.link.display(),
                        s.version,
                        &s.to[..12]
                    ),
                    None => println!(
                        "pinned at {} ({}): no update looked for (`ferryd unpin` follows the fleet again)",
                        s.version,
                        &s.to[..12]
                    ),
                }
            } else if s.up_to_date {
                println!("up to date at {} ({})", s.version, &s.to[..12]);
            } else {
                println!(
                    "updated {} -> {} ({}): downloaded {} in {} requests ({} chunks new, {} reused; {} of {} files reused) in {:.1} s",
                    s.from.as_deref().map_or("nothing", |f| &f[..12]),
                    &s.to[..12],
                    s.version,
                    human(s.bytes_downloaded),
                    s.requests,
                    s.chunks_downloaded,
                    s.chunks_reused,
                    s.files_reused,
                    s.files,
                    s.seconds
                );
            }
        }
        Command::Run { json } => match crate::daemon::run(&config, json)? {},
        Command::Status { json } => {
            let s = crate::status::status(&config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                let show = |d: &Option<crate::status::Deployment>| {
                    d.as_ref().map_or("none".to_string(), |d| {
                        format!("{} ({})", d.version.as_deref().unwrap_or("?"), &d.commit[..12.min(d.commit.len())])
                    })
                };
                println!("current:  {}", show(&s.current));
                println!("previous: {}", show(&s.previous));
                match (&s.channel, &s.branch) {
                    (Some(c), _) => println!(
                        "channel:  {c} on {} (document serial {}, key document {})",
                        s.server,
                        s.channel_serial.map_or("none yet".into(), |n| n.to_string()),
                        s.keys_serial.unwrap_or(0)
                    ),
                    (None, Some(b)) => println!("branch:   {b} on {}", s.server),
                    (None, None) => {}
                }
                if let Some(h) = &s.hardware {
                    println!("hardware: {h}");
                }
                if let Some(d) = &s.dev {
                    let what = if d.unlocked { "unlocked copy" } else { "working copy" };
                    println!("dev:      {what} {} (`ferryd dev --off` to go back)", d.link.display());
                }
                if s.pinned {
                    println!("pinned:   fleet updates are held back until `ferryd unpin`");
                }
                if let Some(t) = &s.trial {
                    println!(
                        "trial:    {} ({} boots, deadline {}, marked good: {})",
                        &t.commit[..12.min(t.commit.len())],
                        t.boots,
                        ferry_store::time::format_utc(t.deadline),
                        t.marked_good
                    );
                }
                if let Some(r) = &s.last_rollback {
                    println!(
                        "rollback: {} -> {}: {}",
                        &r.commit[..12.min(r.commit.len())],
                        &r.to[..12.min(r.to.len())],
                        r.reason
                    );
                }
                if let Some(a) = &s.last_app {
                    let mut line = format!("app:      {}, {}", a.strategy.as_str(), app_outcome(a.outcome));
                    if let Some(ms) = a.downtime_ms {
                        line.push_str(&format!(", down {ms} ms"));
                    }
                    if a.killed {
                        line.push_str(", the old version was killed after its stop timeout");
                    }
                    if a.vetoed_seconds > 0 {
                        let overruled = if a.veto_overruled { " (then overruled)" } else { "" };
                        line.push_str(&format!(", held back {} s by its veto{overruled}", a.vetoed_seconds));
                    }
                    if let Some(why) = &a.strategy_source {
                        line.push_str(&format!(" ({why})"));
                    }
                    println!("{line}");
                }
                if s.staged_chunks > 0 {
                    println!("pending:  {} chunks downloaded for an unfinished update", s.staged_chunks);
                }
                if let Some(t) = &s.device_token {
                    println!("token:    {t} (what the fleet shows for this device's enrollment)");
                }
                match &s.local_ui_certificate {
                    Some(f) => println!("local page certificate SHA-256: {f}"),
                    None if config.local_ui.as_ref().is_some_and(|l| l.tls) => println!(
                        "local page certificate: none yet (made by `ferryd provision`, `ferryd local-ui` or `ferryd local-ui-cert`)"
                    ),
                    None => {}
                }
                for w in &s.warnings {
                    println!("warning:  {w}");
                }
                if let Some(r) = &s.last_result {
                    println!("last:     {r}{}", s.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default());
                }
            }
        }
        Command::Fsck { json } => {
            let local = crate::local::Local::open(&config.state_dir)?;
            let r = crate::fsck::fsck(&local)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for p in &r.problems {
                    println!("{p}");
                }
                eprintln!(
                    "checked {} deployments, {} files: {}",
                    r.deployments,
                    r.files,
                    if r.problems.is_empty() { "ok".to_string() } else { format!("{} problems", r.problems.len()) }
                );
            }
            if !r.problems.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        Command::MarkGood => println!("{}", crate::trial::mark_good(&config)?),
        Command::Rollback { reason } => println!("{}", crate::trial::rollback(&config, &reason)?),
        Command::BootCheck => println!("{}", crate::trial::boot_check(&config)?),
        Command::Doctor => {
            let (lines, ok) = crate::trial::doctor(&config);
            for l in lines {
                println!("{l}");
            }
            if !ok {
                return Ok(ExitCode::from(1));
            }
        }
        Command::CheckConfig { json } => {
            let keys = if config.channel.is_some() { config.roots()? } else { config.keys()? };
            config.hardware_revision()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&config)?);
            } else {
                println!("{}", toml::to_string(&config)?);
                eprintln!(
                    "configuration ok; following {}; {} {} key(s)",
                    config.follows(),
                    keys.len(),
                    if config.channel.is_some() { "root" } else { "trusted" }
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How an update ended for the application, in words.
fn app_outcome(o: crate::app::AppOutcome) -> &'static str {
    match o {
        crate::app::AppOutcome::Switched => "switched to the new version",
        crate::app::AppOutcome::NotReady => "the new version was not ready; the old one kept the device",
        crate::app::AppOutcome::Restored => "the update failed; the old version was started again",
        crate::app::AppOutcome::StartFailed => "switched, but the new version could not be started",
    }
}

/// `config` with the local page's user and installer socket given on the command line (the
/// units name them) in place of the file's, checked by the file's rules.
fn with_local_ui(mut config: Config, user: Option<String>, socket: Option<PathBuf>) -> anyhow::Result<Config> {
    if user.is_none() && socket.is_none() {
        return Ok(config);
    }
    let l = config.local_ui.as_mut().ok_or_else(|| {
        anyhow::anyhow!("the configuration has no [local_ui] section with a password or password_file")
    })?;
    if user.is_some() {
        l.user = user;
    }
    if socket.is_some() {
        l.apply_socket = socket;
    }
    crate::config::check_local_ui(l)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    /// Every command and every argument of `ferryd` says what it is for in `--help`.
    #[test]
    fn every_command_and_flag_is_explained() {
        use clap::CommandFactory;
        let missing = ferry_fixtures::cli_help::unexplained(&super::Cli::command());
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}
