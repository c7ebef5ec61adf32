//! `ferryd provision`: the first boot of a device flashed from an image (`ferry image`).
//!
//! Steps, each recorded durably in `state_dir/provision.json` once done, so a power cut at
//! any point resumes at the step it interrupted and never enrolls twice (the device token
//! is saved before enrollment counts as done, and a saved token is never replaced here):
//!
//! 1. `enrolled`: read the serial number and hardware revision from their configured
//!    sources and enroll with the fleet server using the image's enrollment token;
//! 2. `configured`: check in, which writes the fleet's configuration for this device
//!    (`config.env`, `config.json`) and runs its reload command;
//! 3. `initialized`: run `[provision] init_command`;
//! 4. `updated`: update to the channel's head like any device; the image's release is
//!    already deployed, so only what changed since the image was built is downloaded.
//!
//! Once all four are done, `ferryd provision` does nothing (the unit can run at every boot).
//!
//! Before the steps, with `[local_ui] tls = true`, the local page's certificate is made if
//! there is none (`local_ui::certificate`): on the device, so its key never leaves it. It is
//! not a step: making it is its own record, and it is checked at every run. A damaged one
//! is logged and provisioning goes on (updates do not need the page); `ferryd local-ui`
//! then refuses to start, naming the command that replaces it.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::http::{Server, Traffic};
use crate::update::UpdateSummary;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Steps {
    enrolled: bool,
    configured: bool,
    initialized: bool,
    updated: bool,
}

/// What one `ferryd provision` did.
#[derive(Debug, Default, Serialize)]
pub struct ProvisionSummary {
    pub serial: Option<String>,
    pub hardware: String,
    /// Steps run now, in order (those done at an earlier boot are not repeated).
    pub ran: Vec<&'static str>,
    /// Everything was done at an earlier boot.
    pub already_provisioned: bool,
    pub update: Option<UpdateSummary>,
    /// With `[local_ui] tls = true`: the local page's certificate fingerprint (SHA-256).
    pub local_ui_certificate: Option<String>,
}

fn path(config: &Config) -> std::path::PathBuf {
    config.layout().provision()
}

fn load(config: &Config) -> Result<Steps> {
    match std::fs::read(path(config)) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("reading {}", path(config).display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Steps::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path(config).display())),
    }
}

fn save(config: &Config, steps: &Steps, step: crate::crash::Step) -> Result<()> {
    std::fs::create_dir_all(&config.state_dir)?;
    ferry_durable::replace(&path(config), &serde_json::to_vec_pretty(steps)?)
        .with_context(|| format!("writing {}", path(config).display()))?;
    crate::crash::point(step);
    Ok(())
}

/// Runs the steps not done yet. An error leaves the done ones recorded; run it again (the
/// next boot does) to go on.
pub async fn provision(config: &Config) -> Result<ProvisionSummary> {
    let mut steps = load(config)?;
    let hardware = config.hardware_revision()?.ok_or_else(|| {
        anyhow!("no hardware revision: set hardware, hardware_file, hardware_env or hardware_command")
    })?;
    let serial = config.fleet.as_ref().map(|f| f.serial()).transpose()?;
    let mut s = ProvisionSummary { serial: serial.clone(), hardware: hardware.clone(), ..Default::default() };
    if config.local_ui.as_ref().is_some_and(|l| l.tls) {
        match crate::local_ui::certificate::ensure(config, None) {
            Ok((c, _)) => s.local_ui_certificate = Some(c.fingerprint()),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "the local page's certificate"),
        }
    }
    if steps.enrolled && steps.configured && steps.initialized && steps.updated {
        s.already_provisioned = true;
        return Ok(s);
    }
    let mut server = Server::for_device(config)?;
    let mut t = Traffic::default();
    if !steps.enrolled {
        crate::fleet::ensure_enrolled(config, &server, &mut t).await.context("enrolling")?;
        // The connections that follow present the certificate the enrollment brought.
        server = Server::for_device(config)?;
        steps.enrolled = true;
        save(config, &steps, crate::crash::Step::ProvisionEnrolled)?;
        s.ran.push("enrolled");
    }
    if !steps.configured {
        crate::fleet::check_in(config, &server, &mut t).await.context("fetching this device's configuration")?;
        if let Ok(e) = std::fs::read_to_string(config.layout().config_error()) {
            anyhow::bail!("the fleet's configuration was not applied: {e}");
        }
        steps.configured = true;
        save(config, &steps, crate::crash::Step::ProvisionConfigured)?;
        s.ran.push("configured");
    }
    if !steps.initialized {
        if let Some(cmd) = config.provision.as_ref().and_then(|p| p.init_command.as_deref()) {
            let timeout = Duration::from_secs(config.provision.as_ref().map_or(600, |p| p.init_timeout));
            let env = [
                ("FERRY_SERIAL", serial.clone().unwrap_or_default()),
                ("FERRY_HARDWARE", hardware.clone()),
                ("FERRY_STATE_DIR", config.state_dir.display().to_string()),
                ("FERRY_CONFIG_ENV", config.layout().config_env().display().to_string()),
                ("FERRY_CONFIG_JSON", config.layout().config_json().display().to_string()),
            ];
            crate::process::run(cmd, timeout, None, &env).context("the per-device init command")?;
            tracing::info!(command = cmd, "ran the per-device init command");
        }
        steps.initialized = true;
        save(config, &steps, crate::crash::Step::ProvisionInitialized)?;
        s.ran.push("initialized");
    }
    if !steps.updated {
        let u = match crate::update::update(config).await {
            Ok(u) => Some(u),
            // A release that failed its trial was rolled back: the device runs the image's
            // release, healthy, and provisioning is over (the failure is in `ferryd status`).
            Err(e) if crate::error::is_failed_trial(&e) => {
                tracing::warn!(error = %format!("{e:#}"), "the first update was rolled back");
                None
            }
            Err(e) => return Err(e.context("the first update")),
        };
        s.update = u;
        steps.updated = true;
        save(config, &steps, crate::crash::Step::ProvisionUpdated)?;
        s.ran.push("updated");
    }
    Ok(s)
}
