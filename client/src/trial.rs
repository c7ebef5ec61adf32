//! After a switch: the trial, health checks, mark-good and rollback.
//!
//! ```text
//!  update ──▶ save trial ──▶ switch ──▶ restart ──▶ checks pass (and mark-good, if required)
//!                                                     │ within the deadline ──▶ clear trial: good
//!                                                     └ otherwise / bootlimit boots ──▶ rollback
//!  rollback: switch to previous ──▶ restart ──▶ record the commit as bad ──▶ clear trial
//! ```
//!
//! Every step is durable before the next, so a crash anywhere resumes from `trial.json` at
//! the next start: `boot-check` counts the boot and rolls back at the limit, and `update`
//! and `run` finish a pending trial before anything else. A bad commit is never installed
//! again; a newer commit on the branch is.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ferry_boot::Trial;

use crate::config::{Bootloader, Config, Health};
use crate::state::{self, now, Outcome as Recorded, Rollback};

/// How a trial ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Good,
    RolledBack(String),
}

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    PreSwitch,
    PostSwitch,
}

/// Runs a configured hook in the new deployment's directory (so a migration script shipped in
/// the release is found by a relative path), with FERRY_COMMIT, FERRY_VERSION,
/// FERRY_NEW_DEPLOYMENT and FERRY_OLD_DEPLOYMENT set.
pub fn hook(config: &Config, which: Hook, commit: &str, version: &str, old: Option<&str>) -> Result<()> {
    let Some(h) = &config.hooks else { return Ok(()) };
    let (name, command) = match which {
        Hook::PreSwitch => ("pre_switch", &h.pre_switch),
        Hook::PostSwitch => ("post_switch", &h.post_switch),
    };
    let Some(command) = command else { return Ok(()) };
    let layout = config.layout();
    let new = layout.deployment(commit);
    let env = [
        ("FERRY_COMMIT", commit.to_string()),
        ("FERRY_VERSION", version.to_string()),
        ("FERRY_NEW_DEPLOYMENT", new.display().to_string()),
        ("FERRY_OLD_DEPLOYMENT", old.map(|o| layout.deployment(o).display().to_string()).unwrap_or_default()),
    ];
    crate::process::run(command, Duration::from_secs(h.timeout), Some(&new), &env)
        .map(drop)
        .with_context(|| format!("{name} hook"))
}

/// Runs the reboot command (for releases whose metadata says `reboot=required`). The trial
/// then continues after the reboot: `boot-check` counts the boot and the daemon's next
/// update finishes it.
pub fn reboot(config: &Config) -> Result<()> {
    crate::process::run(&config.reboot_command, Duration::from_secs(120), None, &[])
        .map(drop)
        .context("rebooting after the switch")
}

/// Restarts the application on the deployment that is current now: through `[app]`
/// (stopping what runs, starting the current deployment's), or the restart command, if any.
pub fn restart(config: &Config) -> Result<()> {
    if let Some(app) = crate::app::Control::of(config) {
        return match crate::app::current_deployment(config)? {
            Some(d) => app.restart(&d).map(drop),
            None => Ok(()),
        };
    }
    match &config.restart_command {
        Some(c) => {
            crate::process::run(c, Duration::from_secs(120), None, &[]).map(drop).context("restarting after the switch")
        }
        None => Ok(()),
    }
}

/// Why the trial fails at once, if the application restarted since the trial began to be
/// watched (`restarts_command`'s count changed); the first count read is kept in `seen`. A
/// count that cannot be read is no verdict: the health checks still decide.
fn restarted(h: &Health, seen: &mut Option<String>) -> Option<String> {
    let command = h.restarts_command.as_ref()?;
    let now = match crate::process::first_line(command, Duration::from_secs(h.check_timeout)) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "reading the application's restarts");
            return None;
        }
    };
    match seen {
        None => {
            *seen = Some(now);
            None
        }
        Some(before) if *before == now => None,
        Some(before) => {
            Some(format!("the application restarted during its trial (`{command}` went from {before} to {now})"))
        }
    }
}

/// One round of health checks: Ok if every check passes, else the first failure.
async fn check_round(h: &Health, deployment: &Path) -> Result<()> {
    let timeout = Duration::from_secs(h.check_timeout);
    for c in &h.commands {
        crate::process::run(c, timeout, Some(deployment), &[]).context("health check")?;
    }
    for u in &h.units {
        crate::process::run(&format!("systemctl is-active --quiet {u}"), timeout, None, &[])
            .with_context(|| format!("health check: unit {u} is not active"))?;
    }
    if !h.urls.is_empty() {
        let client = reqwest::Client::builder().timeout(timeout).build()?;
        for u in &h.urls {
            let r = client.get(u).send().await.with_context(|| format!("health check: {u}"))?;
            if !r.status().is_success() {
                bail!("health check: {u} answered {}", r.status());
            }
        }
    }
    Ok(())
}

/// Starts a trial of `commit` (to be written before the switch): the agent's record, then
/// the bootloader's handshake, so the bootloader falls back by itself if the new deployment
/// never comes up far enough for the agent to run.
pub fn begin(config: &Config, commit: &str, previous: Option<String>) -> Result<()> {
    let Some(h) = &config.health else { return Ok(()) };
    let started = now();
    let trial = Trial {
        commit: commit.to_string(),
        previous: previous.clone(),
        started,
        deadline: started + h.deadline as i64,
        boots: 0,
        marked_good: false,
        switched: false,
    };
    trial.save(&config.state_dir)?;
    crate::crash::point(crate::crash::Step::TrialSaved);
    if let Some(b) = &config.bootloader {
        ferry_boot::bootenv::start_trial(b.env().as_ref(), commit, previous.as_deref(), h.bootlimit)
            .context("telling the bootloader about the trial")?;
        crate::crash::point(crate::crash::Step::BootloaderTrial);
    }
    Ok(())
}

/// Records that the switch to the trial's deployment happened.
pub fn mark_switched(config: &Config) -> Result<()> {
    if let Some(mut trial) = Trial::load(&config.state_dir)? {
        trial.switched = true;
        trial.save(&config.state_dir)?;
    }
    Ok(())
}

fn running_commit(config: &Config) -> Result<Option<String>> {
    Ok(ferry_boot::current_target(&config.current_link)?
        .and_then(|t| t.file_name().and_then(|n| n.to_str()).map(str::to_string)))
}

/// A trial whose deployment is not the one running: either its update died before the
/// switch (abandon it: undo the bootloader handshake, forget the trial, the release is not
/// bad) or its rollback died after switching back (finish the rollback). Returns true if the
/// trial was settled this way.
fn settle_unrunning(config: &Config, trial: &Trial) -> Result<bool> {
    if running_commit(config)?.as_deref() == Some(trial.commit.as_str()) {
        return Ok(false);
    }
    if trial.switched {
        rollback(config, "rolled back (finishing a rollback interrupted by a restart)")?;
        return Ok(true);
    }
    if let Some(b) = &config.bootloader {
        let env = b.env();
        let vars = env.read().context("reading the bootloader environment")?;
        if vars.get("ferry_deploy").map(String::as_str) == Some(trial.commit.as_str()) {
            if let Some(running) = running_commit(config)? {
                ferry_boot::bootenv::rollback(env.as_ref(), &running)
                    .context("undoing an unfinished bootloader handshake")?;
            }
        }
    }
    Trial::clear(&config.state_dir)?;
    tracing::info!(commit = %trial.commit, "abandoned an update interrupted before its switch");
    Ok(true)
}

/// Runs the pending trial, if any, to its end.
pub async fn run(config: &Config) -> Result<Option<Outcome>> {
    let Some(mut trial) = Trial::load(&config.state_dir)? else { return Ok(None) };
    if settle_unrunning(config, &trial)? {
        return Ok(None);
    }
    let Some(h) = config.health.clone() else {
        // Health checks were removed from the configuration: nothing left to prove.
        Trial::clear(&config.state_dir)?;
        return Ok(Some(Outcome::Good));
    };
    let deployment = config.layout().deployment(&trial.commit);
    crate::notify::status(&format!("trial of {}", trial.commit));
    // The application's restarts when this agent began watching the trial.
    let mut restarts: Option<String> = None;
    let mut healthy_since: Option<i64> = None;
    loop {
        // `ferryd mark-good` may have ended or updated the trial meanwhile.
        match Trial::load(&config.state_dir)? {
            None => return Ok(Some(Outcome::Good)),
            Some(t) => trial = t,
        }
        if let Some(reason) = restarted(&h, &mut restarts) {
            rollback(config, &reason)?;
            return Ok(Some(Outcome::RolledBack(reason)));
        }
        let round = check_round(&h, &deployment).await;
        // Healthy without a break since when (a failing round starts the count again).
        healthy_since = match &round {
            Ok(()) => Some(healthy_since.unwrap_or_else(now)),
            Err(_) => None,
        };
        let quiet = healthy_since.map_or(0, |t| now().saturating_sub(t));
        let left = trial.deadline.saturating_sub(now()).max(0);
        crate::progress::phase(match &round {
            Ok(()) => format!("trial: healthy for {quiet} s ({left} s left to prove it)"),
            Err(_) => format!("trial: not healthy yet ({left} s left)"),
        });
        let last_failure = match round {
            Ok(()) if quiet < h.quiet_for as i64 => {
                format!("healthy, but not yet for quiet_for ({quiet} of {} s)", h.quiet_for)
            }
            Ok(()) if !h.require_mark_good || trial.marked_good => {
                commit_good(config)?;
                return Ok(Some(Outcome::Good));
            }
            Ok(()) => "the application has not called `ferryd mark-good`".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if now() >= trial.deadline {
            let reason = format!("not healthy within {} s: {last_failure}", h.deadline);
            rollback(config, &reason)?;
            return Ok(Some(Outcome::RolledBack(reason)));
        }
        crate::notify::sleep_async(Duration::from_secs(h.interval.max(1))).await;
    }
}

/// Ends the trial as good: the bootloader first (so it stops counting), then the record.
fn commit_good(config: &Config) -> Result<()> {
    if let Some(b) = &config.bootloader {
        ferry_boot::bootenv::mark_good(b.env().as_ref()).context("telling the bootloader the trial passed")?;
        crate::crash::point(crate::crash::Step::BootloaderGood);
    }
    Trial::clear(&config.state_dir)?;
    tracing::info!("trial passed: deployment marked good");
    Ok(())
}

/// `ferryd mark-good`: the application vouches for the deployment on trial.
pub fn mark_good(config: &Config) -> Result<String> {
    let Some(mut trial) = Trial::load(&config.state_dir)? else {
        return Ok("no deployment is on trial; nothing to do".into());
    };
    // Until the updater has recorded the switch it may still write trial.json; marking good
    // before then could be lost. An application only runs the new release after the switch.
    if !trial.switched {
        bail!("the deployment on trial ({}) is not running yet; mark it good once it runs", trial.commit);
    }
    let running = ferry_boot::current_target(&config.current_link)?;
    if running.as_deref().and_then(|t| t.file_name()).and_then(|n| n.to_str()) != Some(trial.commit.as_str()) {
        bail!("the deployment on trial ({}) is not the one running; refusing to mark it good", trial.commit);
    }
    if config.health.as_ref().is_some_and(|h| h.commands.is_empty() && h.units.is_empty() && h.urls.is_empty()) {
        // mark-good is the only check: it ends the trial.
        commit_good(config)?;
    } else {
        trial.marked_good = true;
        trial.save(&config.state_dir)?;
    }
    Ok(format!("marked {} good", trial.commit))
}

/// Switches back to the previous deployment and records why. Used by a failed trial, by
/// `boot-check` at the boot limit, and by `ferryd rollback`.
pub fn rollback(config: &Config, reason: &str) -> Result<String> {
    let trial = Trial::load(&config.state_dir)?;
    let state = state::read(config)?;
    let running = ferry_boot::current_target(&config.current_link)?
        .and_then(|t| t.file_name().and_then(|n| n.to_str()).map(str::to_string));
    let (bad, previous) = match &trial {
        Some(t) => (t.commit.clone(), t.previous.clone()),
        None => (running.clone().ok_or_else(|| anyhow!("no deployment is running"))?, state.previous.clone()),
    };
    let previous = match (previous, &trial) {
        (Some(p), _) => p,
        (None, Some(_)) => return fail_in_place(config, &bad, reason),
        (None, None) => bail!("there is no previous deployment to roll back to"),
    };
    let target = config.layout().deployment(&previous);
    if !target.is_dir() {
        if trial.is_some() {
            // A trial must end: with nothing left to go back to, the release stays, bad.
            return fail_in_place(config, &bad, reason);
        }
        bail!("the previous deployment {} is gone; cannot roll back", target.display());
    }
    if let Some(b) = &config.bootloader {
        ferry_boot::bootenv::rollback(b.env().as_ref(), &previous)
            .context("telling the bootloader to boot the previous deployment")?;
        crate::crash::point(crate::crash::Step::BootloaderRollback);
    }
    if running.as_deref() != Some(previous.as_str()) {
        ferry_boot::switch_symlink(&config.current_link, &target)?;
        crate::crash::point(crate::crash::Step::RolledBack);
    }
    if let Err(e) = restart(config) {
        tracing::warn!(error = %format!("{e:#}"), "restart after rollback failed");
    }
    state::change(config, |s| {
        s.mark_bad(&bad);
        s.previous = None;
        s.last_rollback =
            Some(Rollback { commit: bad.clone(), to: previous.clone(), reason: reason.to_string(), at: now() });
        s.record(Recorded::RolledBack, Some(format!("{bad} rolled back: {reason}")));
    })?;
    crate::crash::point(crate::crash::Step::RollbackRecorded);
    Trial::clear(&config.state_dir)?;
    // Said once, by the caller: printed (`ferryd rollback`, `boot-check`) or in the error
    // the update ends with.
    Ok(format!("rolled back from {bad} to {previous}: {reason}"))
}

/// A trial failed with nothing to go back to: the device's first release (a fresh device,
/// or one whose earlier deployment is gone). Running a bad release beats running nothing:
/// it stays, the trial ends (the bootloader stops counting, since it has nothing to fall
/// back to either), and the commit is recorded as bad, so the device reports the failure,
/// never installs it again, and takes the next newer release as usual.
fn fail_in_place(config: &Config, bad: &str, reason: &str) -> Result<String> {
    if let Some(b) = &config.bootloader {
        ferry_boot::bootenv::mark_good(b.env().as_ref())
            .context("telling the bootloader to stop counting (there is nothing to fall back to)")?;
        crate::crash::point(crate::crash::Step::BootloaderGood);
    }
    state::change(config, |s| {
        s.mark_bad(bad);
        s.previous = None;
        s.record(
            Recorded::Failed,
            Some(format!(
                "{bad} failed its trial and there is no earlier deployment to roll back to; it stays until a newer release: {reason}"
            )),
        );
    })?;
    crate::crash::point(crate::crash::Step::RollbackRecorded);
    Trial::clear(&config.state_dir)?;
    Ok(format!("{bad} failed its trial and stays (nothing to roll back to): {reason}"))
}

/// `ferryd doctor`: what must work for updates to work, checked on the device itself.
/// Returns one line per check and whether all passed.
pub fn doctor(config: &Config) -> (Vec<String>, bool) {
    let mut lines: Vec<String> = crate::status::warnings(config).iter().map(|w| format!("warn  {w}")).collect();
    let mut ok = true;
    let mut check = |what: &str, r: Result<String>| match r {
        Ok(detail) => lines.push(format!("ok    {what}: {detail}")),
        Err(e) => {
            ok = false;
            lines.push(format!("FAIL  {what}: {e:#}"));
        }
    };
    if config.server.starts_with("https://") {
        check(
            "server certificate roots",
            crate::tls::Roots::load(config.ca_file.as_deref())
                .map(|r| format!("{} ({} certificates)", r.source, r.count)),
        );
    }
    if config.channel.is_some() {
        check("root keys", config.roots().map(|k| format!("{} loaded", k.len())));
        check("hardware revision", config.hardware_revision().map(|h| h.unwrap_or_default()));
    } else {
        check("trusted keys", config.keys().map(|k| format!("{} loaded", k.len())));
    }
    check(
        "server",
        (|| {
            // With the device's token once it holds one: the answer then says whether the
            // fleet lets this device in.
            let token = std::fs::read_to_string(config.layout().device_token()).ok();
            let mut server = crate::http::Server::for_device(config)?;
            if let Some(t) = token.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
                server = server.with_token(t);
            }
            let status = crate::runtime()?.block_on(server.reach())?;
            match (status, token.is_some()) {
                (200..=299 | 304, _) => Ok(format!("{} answers", config.server)),
                (401, false) => Ok(format!("{} answers (401: its repository is for enrolled devices)", config.server)),
                (401, true) => bail!(
                    "{} does not know this device's token (401): it enrolls again at its next check-in",
                    config.server
                ),
                (403, _) => bail!(
                    "{} does not let this device in (403): pending an operator's acceptance, or revoked",
                    config.server
                ),
                _ => bail!("{} answers {status} to a request for its key documents", config.server),
            }
        })(),
    );
    if let Some(fleet) = &config.fleet {
        check("serial number", fleet.serial());
        check(
            "enrollment",
            (|| {
                if config.layout().device_token().exists() {
                    return Ok("enrolled (the device token is held)".to_string());
                }
                let token = fleet.enrollment_token()?;
                if token.is_empty() {
                    bail!("{} is empty", fleet.enrollment_token_file.display());
                }
                Ok(format!("not yet; the enrollment token is in {}", fleet.enrollment_token_file.display()))
            })(),
        );
    }
    check(
        "state directory",
        (|| {
            std::fs::create_dir_all(&config.state_dir)?;
            let probe = config.layout().doctor_probe();
            ferry_durable::replace(&probe, b"ok")?;
            std::fs::remove_file(&probe)?;
            Ok(format!("{} is writable", config.state_dir.display()))
        })(),
    );
    check(
        "free space",
        (|| {
            let free = crate::layout::free_bytes(&config.state_dir)?;
            if free < config.min_free_bytes {
                bail!("{} MiB free, less than min_free_bytes ({} MiB)", free >> 20, config.min_free_bytes >> 20);
            }
            Ok(format!("{} MiB free", free >> 20))
        })(),
    );
    check(
        "current link",
        (|| {
            Ok(match ferry_boot::current_target(&config.current_link)? {
                Some(t) => format!("{} -> {}", config.current_link.display(), t.display()),
                None => format!("{} does not exist yet (no deployment)", config.current_link.display()),
            })
        })(),
    );
    if let Some(b) = &config.bootloader {
        check(
            "bootloader environment",
            (|| {
                let env = b.env();
                let stamp = now().to_string();
                ferry_boot::bootenv::write_verified(env.as_ref(), "doctor", &[("ferry_doctor", Some(&stamp))])?;
                ferry_boot::bootenv::write_verified(env.as_ref(), "doctor", &[("ferry_doctor", None)])?;
                Ok(format!("the {} environment is writable and keeps what is written", env.name()))
            })(),
        );
        // A single copy of U-Boot's environment is rewritten in place: a power cut in the
        // middle leaves neither the old nor the new one, and U-Boot boots its defaults.
        if let Bootloader::Uboot { fw_config, .. } = b {
            let copies = std::fs::read_to_string(fw_config).map_or(0, |text| {
                text.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).count()
            });
            if copies == 1 {
                lines.push(format!(
                    "warn  bootloader environment copies: {} names one copy; a power cut while it is written can lose it whole. Configure a redundant environment (CONFIG_SYS_REDUNDAND_ENVIRONMENT in U-Boot, a second line here)",
                    fw_config.display()
                ));
            }
        }
    }
    (lines, ok)
}

/// Whether the hardware watchdog's boot status (a number, Linux's `bootstatus`) says the
/// watchdog reset the board: `WDIOF_CARDRESET` (0x20). An unreadable file says nothing.
fn watchdog_reset(path: &Path) -> bool {
    const WDIOF_CARDRESET: u64 = 0x20;
    match crate::app::read_head(path) {
        Ok(text) => {
            let t = text.trim();
            let flags = match t.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => t.parse::<u64>().ok(),
            };
            flags.is_some_and(|f| f & WDIOF_CARDRESET != 0)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "reading the watchdog's boot status");
            false
        }
    }
}

/// `ferryd boot-check`, early at every boot: counts the boot of a deployment on trial and
/// rolls back once it has booted more than `bootlimit` times without becoming good, or at
/// once when the hardware watchdog reset the board during the trial.
pub fn boot_check(config: &Config) -> Result<String> {
    // Opening the store removes what an interrupted update left half-done.
    drop(crate::local::Local::open(&config.state_dir)?);
    let Some(mut trial) = Trial::load(&config.state_dir)? else {
        return Ok("no deployment on trial".into());
    };
    if settle_unrunning(config, &trial)? {
        return Ok(format!("settled an interrupted update of {}", trial.commit));
    }
    let limit = config.health.as_ref().map_or(1, |h| h.bootlimit);
    // The bootloader may already have fallen back on its own (it counts boots itself).
    if let Some(b) = &config.bootloader {
        let env = b.env().read().context("reading the bootloader environment")?;
        let booting = env.get("ferry_deploy").map(String::as_str);
        if booting != Some(trial.commit.as_str()) && env.get("upgrade_available").map(String::as_str) != Some("1") {
            let reason = format!("the bootloader fell back to {} after bootlimit boots", booting.unwrap_or("?"));
            return rollback(config, &reason);
        }
    }
    if let Some(path) = config.health.as_ref().and_then(|h| h.watchdog_bootstatus.as_ref()) {
        if watchdog_reset(path) {
            let reason = format!("the hardware watchdog reset the device during the trial ({})", path.display());
            return rollback(config, &reason);
        }
    }
    trial.boots += 1;
    if trial.boots > limit {
        let reason = format!("booted {} times without being marked good (bootlimit {limit})", trial.boots - 1);
        return rollback(config, &reason);
    }
    trial.save(&config.state_dir)?;
    Ok(format!("{} on trial: boot {} of {limit}", trial.commit, trial.boots))
}
