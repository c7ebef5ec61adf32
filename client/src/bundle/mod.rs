//! `ferryd apply`: installs a release from an offline bundle (`ferry bundle`; format in
//! `ferry_delta::bundle`) read from a file, a pipe or an upload, with no network.
//!
//! The bundle passes the same checks as a network update, in the same order: key documents
//! from the roots in the image, the channel document (serial, expiry, hardware, downgrade),
//! the commit's signature before it is decoded, its hardware list, every tree against its
//! id. Then, before anything is written, the chunks the device lacks are compared with the
//! bundle's manifest: a bundle made for devices on another release is refused, naming the
//! files it cannot build. Chunks are then verified and staged one at a time as they are
//! read, the end of the bundle is checked (a cut or damaged file is refused and nothing is
//! switched), and the deployment is built, switched to and tried exactly as after a
//! download ([`crate::update::install`]).
//!
//! A channel bundle moves the device like a fleet update would (a pinned device refuses
//! it); a commit bundle is a technician's or developer's choice, like `ferryd deploy`: any
//! signed commit for this hardware, and the device is pinned to it afterwards.

mod decide;
mod source;

use std::io::Read;
use std::time::Instant;

use anyhow::Result;
use ferry_delta::bundle::BundleReader;

use crate::config::Config;
use crate::error::Failure::Refused;
use crate::local::Local;
use crate::state::{self, Outcome};

use decide::{decide, Header};
use source::Bundle;

/// What one `ferryd apply` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ApplySummary {
    pub from: Option<String>,
    pub to: String,
    pub version: String,
    /// The device already ran the bundle's release; nothing was changed.
    pub up_to_date: bool,
    /// The channel whose document the bundle carried, and that document's serial.
    pub channel: Option<String>,
    pub serial: Option<u64>,
    /// Bytes of the bundle read.
    pub bundle_bytes: u64,
    /// Chunks taken from the bundle; chunks in it the device already held or does not need.
    pub chunks_used: u64,
    pub chunks_skipped: u64,
    /// Distinct chunks of the new commit the device already held.
    pub chunks_reused: u64,
    pub files: u64,
    pub files_reused: u64,
    pub seconds: f64,
    /// A commit bundle pins the device, like `ferryd deploy`.
    pub pinned: bool,
    pub rebooting: bool,
}

fn refused(msg: impl std::fmt::Display) -> anyhow::Error {
    Refused(format!("bundle refused: {msg}")).into()
}

/// How `ferryd apply` may go beyond what a fleet update does.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Pin the device afterwards (a developer's board), as `ferryd deploy` does.
    pub pin: bool,
    /// For a commit bundle: allow one on a device that follows a channel, a commit that names
    /// no hardware revision, a version older than the running one, or a release that failed
    /// its trial here before. A channel bundle's rules never bend (its rollback mark is how an
    /// operator allows a downgrade). Only `ferryd apply --force` on the device sets it: the
    /// local page and the USB script never do.
    pub force: bool,
}

/// Applies the bundle read from `input`. A refusal is a [`Refused`] error; a release that
/// fails its trial is a [`crate::error::Failure::TrialFailed`] error, after the rollback.
pub async fn apply(config: &Config, input: impl Read, opts: ApplyOptions) -> Result<ApplySummary> {
    let started = Instant::now();
    let local = Local::open(&config.state_dir)?;
    if let Some(outcome) = crate::trial::run(config).await? {
        tracing::info!(?outcome, "finished a pending trial");
    }
    let result = apply_inner(config, &local, input, started, None, opts).await;
    if let Err(e) = &result {
        if !crate::error::is_failed_trial(e) {
            state::record_attempt(config, Outcome::Error, Some(format!("{e:#}")))?;
        }
    }
    result
}

/// Installs the bundle read from `input` into an image tree rooted at `root` (for `ferry
/// image`): `config` is the device's configuration [`Config::rooted`] at `root`. The same
/// checks as [`apply`], with the image's own keys; no trial, hook or bootloader (the
/// build machine's are not the device's), and `current_link` names the deployment by
/// the path the device will see. The tree must not hold a deployment yet.
pub async fn seed(config: &Config, root: &std::path::Path, input: impl Read) -> Result<ApplySummary> {
    if !nix::unistd::geteuid().is_root() {
        // Without root every file would belong to the builder, on every device, for good
        // (the object ids record the intended owners, so updates keep the wrong ones).
        anyhow::bail!("seeding an image sets each file's owner, which needs root: run ferry image as root");
    }
    if config.current_link.symlink_metadata().is_ok() {
        anyhow::bail!("{} exists already: build an image into an empty directory", config.current_link.display());
    }
    if let Some(parent) = config.current_link.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let local = Local::open(&config.state_dir)?;
    apply_inner(config, &local, input, Instant::now(), Some(root), ApplyOptions::default()).await
}

async fn apply_inner(
    config: &Config,
    local: &Local,
    input: impl Read,
    started: Instant,
    seed_root: Option<&std::path::Path>,
    opts: ApplyOptions,
) -> Result<ApplySummary> {
    let hardware = config.hardware_revision()?;
    let current = crate::devboard::current_commit(config, local)?;
    let mut s = ApplySummary { from: current.map(|c| c.to_hex()), ..Default::default() };
    let mut reader = BundleReader::new(input).map_err(refused)?;

    // 1. The header, and what it installs here, checked like an update's target.
    // An image is built by whoever holds the repository: its seed may be any signed commit.
    let header = Header::read(&mut reader)?;
    let force = opts.force || seed_root.is_some();
    let target = decide(config, local, &header, current, hardware.as_deref(), force)?;
    let head = target.commit_id;
    let commit = &target.commit;
    s.to = head.to_hex();
    s.version = commit.version.to_string();
    s.channel = target.channel.clone();
    s.serial = target.serial;

    // 2. Whether this device may take it: pins, downgrades, releases that failed here.
    let state = state::read(config)?;
    if target.channel.is_some() && state.pinned && seed_root.is_none() {
        return Err(refused(format!(
            "this device is pinned, and the bundle carries channel {}'s release {}: run `ferryd unpin` first, or apply a commit bundle",
            target.channel.as_deref().unwrap_or_default(),
            commit.version
        )));
    }
    if target.channel.is_none() && !opts.force && seed_root.is_none() && Some(head) != current {
        let running = match current {
            Some(c) => local.commit(&c)?,
            None => None,
        };
        if let Some(r) = running {
            if commit.version.compare(&r.version) != Some(std::cmp::Ordering::Greater) {
                return Err(refused(format!(
                    "it carries release {}, not newer than the running {}: a downgrade from a commit bundle needs `ferryd apply --force`",
                    commit.version, r.version
                )));
            }
        }
    }
    if (target.channel.is_some() || !opts.force) && Some(head) != current && state.bad_commits.contains(&head.to_hex())
    {
        return Err(refused(format!(
            "release {} ({head}) failed its trial on this device before; it is not installed again",
            commit.version
        )));
    }

    // 3. Trees, plan, the chunks the device lacks against the manifest, space: all before
    //    anything is written; then the commit and trees, and each chunk as it is read.
    let up_to_date = Some(head) == current;
    let mut bundle = Bundle::new(reader, header.from, current, (target.bytes.clone(), commit));
    let p = crate::update::stage(config, local, &mut bundle, &head, commit, up_to_date).await?;
    s.chunks_used = bundle.chunks_used;
    s.chunks_skipped = bundle.chunks_skipped;
    s.bundle_bytes = bundle.reader.bytes_read();
    s.chunks_reused = crate::update::distinct_chunks(&p).saturating_sub(s.chunks_used);
    if let Some(accepted) = &target.accepted {
        state::save_trust(config, accepted)?;
    }

    // 4. Build, switch and try, as after a download.
    if let Some(root) = seed_root {
        let (files, reused) = crate::update::assemble(local, &head, &p)?;
        s.files = files;
        s.files_reused = reused;
        let built = local.deploy_dir().join(head.to_hex());
        let on_device = std::path::Path::new("/").join(built.strip_prefix(root)?);
        // The device's path need not exist here, so no switch_symlink (which checks it).
        ferry_durable::replace_symlink(&config.current_link, &on_device)?;
        // The staged chunks are in the objects now: the image does not carry them twice.
        crate::update::collect_garbage(local, &[head])?;
        state::change(config, |s| {
            s.last_result = Some(Outcome::Ok);
            s.last_attempt = Some(state::now());
        })?;
        local.sync()?;
        s.seconds = started.elapsed().as_secs_f64();
        return Ok(s);
    }
    if state.dev.is_some() {
        crate::devboard::off(config)?;
    }
    let pin = opts.pin;
    if up_to_date {
        s.up_to_date = true;
    } else {
        let (files, reused) = crate::update::assemble(local, &head, &p)?;
        s.files = files;
        s.files_reused = reused;
        s.rebooting =
            crate::update::install(config, local, head, commit, current, crate::app::Before::default()).await?.0;
    }
    state::change(config, |st| {
        st.record_attempt(if up_to_date { Outcome::UpToDate } else { Outcome::Ok }, None);
        st.pinned |= pin;
    })?;
    s.pinned |= pin;
    s.seconds = started.elapsed().as_secs_f64();
    Ok(s)
}
