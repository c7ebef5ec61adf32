//! Bootloader environments, through the real tools: U-Boot's (`fw_printenv`/`fw_setenv` from
//! libubootenv) and GRUB's (`grub-editenv`).
//!
//! Both carry the same handshake, shared with the boot scripts shipped in
//! `boot-integration/uboot/boot.cmd` and `boot-integration/grub/ferry.cfg`:
//!
//! | variable | meaning |
//! |---|---|
//! | `ferry_deploy` | the deployment to boot (a commit id) |
//! | `ferry_prev` | the deployment to fall back to |
//! | `upgrade_available` | `1` while `ferry_deploy` is on trial |
//! | `bootcount` | boots of the deployment on trial (the bootloader increments it) |
//! | `bootlimit` | boots allowed on trial before the bootloader falls back |
//!
//! Every change is one write of the environment: GRUB's grubenv is a single 1 KiB block, and
//! U-Boot's is written whole under a CRC. With two copies of U-Boot's (a redundant
//! environment) a power cut leaves the old or the new variables; with one it can lose them
//! all, which `ferryd doctor` warns of.
//! [`model_boot`] applies the scripts' rules in Rust, so tests can boot a simulated device.

use std::collections::BTreeMap;
use std::process::Command;

mod grub;
mod uboot;

pub use grub::GrubEnv;
pub use uboot::UBootEnv;

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("running {tool}: {source}")]
    Spawn { tool: String, source: std::io::Error },
    #[error("{tool} failed ({status}): {stderr}")]
    Tool { tool: String, status: String, stderr: String },
    #[error("{what}: the bootloader environment did not keep what was written (expected {key}={expected:?}, read {actual:?})")]
    NotPersisted { what: String, key: String, expected: String, actual: Option<String> },
    #[error("invalid variable {0:?}: names are [A-Za-z0-9_] and values have no newline")]
    BadVariable(String),
}

/// A bootloader environment: variables read and written through the bootloader's own tool.
pub trait BootEnv: std::fmt::Debug + Send + Sync {
    fn name(&self) -> &'static str;
    fn read(&self) -> Result<BTreeMap<String, String>, EnvError>;
    /// Sets (`Some`) and removes (`None`) variables in one write.
    fn write(&self, vars: &[(&str, Option<&str>)]) -> Result<(), EnvError>;
}

pub(crate) fn run(tool: &str, cmd: &mut Command) -> Result<String, EnvError> {
    let out = cmd.output().map_err(|source| EnvError::Spawn { tool: tool.to_string(), source })?;
    if !out.status.success() {
        return Err(EnvError::Tool {
            tool: tool.to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn check(vars: &[(&str, Option<&str>)]) -> Result<(), EnvError> {
    for (k, v) in vars {
        let bad_key = k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if bad_key || v.is_some_and(|v| v.contains('\n') || v.contains('\0')) {
            return Err(EnvError::BadVariable(k.to_string()));
        }
    }
    Ok(())
}

pub(crate) fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Writes `vars` and reads them back: an environment that does not keep what is written
/// (never saved at the factory, wrong offset in fw_env.config) is caught here, not in the field.
pub fn write_verified(env: &dyn BootEnv, what: &str, vars: &[(&str, Option<&str>)]) -> Result<(), EnvError> {
    env.write(vars)?;
    let now = env.read()?;
    for (k, v) in vars {
        let actual = now.get(*k).cloned();
        if actual.as_deref() != *v {
            return Err(EnvError::NotPersisted {
                what: what.to_string(),
                key: k.to_string(),
                expected: v.unwrap_or("<unset>").to_string(),
                actual,
            });
        }
    }
    Ok(())
}

/// Starts the trial of `new`, with `prev` to fall back to.
pub fn start_trial(env: &dyn BootEnv, new: &str, prev: Option<&str>, bootlimit: u32) -> Result<(), EnvError> {
    let limit = bootlimit.to_string();
    write_verified(
        env,
        "starting a trial",
        &[
            ("ferry_deploy", Some(new)),
            ("ferry_prev", prev),
            ("upgrade_available", Some("1")),
            ("bootcount", Some("0")),
            ("bootlimit", Some(&limit)),
        ],
    )
}

/// Ends the trial as good.
pub fn mark_good(env: &dyn BootEnv) -> Result<(), EnvError> {
    write_verified(env, "marking good", &[("upgrade_available", Some("0")), ("bootcount", Some("0"))])
}

/// Boots `prev` from now on.
pub fn rollback(env: &dyn BootEnv, prev: &str) -> Result<(), EnvError> {
    write_verified(
        env,
        "rolling back",
        &[("ferry_deploy", Some(prev)), ("upgrade_available", Some("0")), ("bootcount", Some("0"))],
    )
}

/// The largest `bootlimit` the shipped boot scripts honour. Neither GRUB's nor U-Boot's
/// script language can add, so both count by an unrolled chain that stops at one past this,
/// and always fall back there.
pub const MAX_BOOTLIMIT: u32 = 5;

/// What the shipped boot scripts do at one boot, applied to `env` (the model the tests boot
/// a simulated device with). Returns the deployment booted. Keep in step with
/// `uboot/boot.cmd` and `grub/ferry.cfg`.
pub fn model_boot(env: &mut BTreeMap<String, String>) -> Option<String> {
    if env.get("upgrade_available").map(String::as_str) == Some("1") {
        // The unrolled chain: "0" to "4" step up by one, an unset count is 0, and anything
        // else jumps to the chain's end.
        let count = match env.get("bootcount").map(String::as_str) {
            None | Some("") => 1,
            Some(c @ ("0" | "1" | "2" | "3" | "4")) => c.parse::<u32>().unwrap_or(0) + 1,
            Some(_) => MAX_BOOTLIMIT + 1,
        };
        env.insert("bootcount".into(), count.to_string());
        // An unset limit is 3; otherwise the scripts' `-gt` reads its leading digits (none: 0).
        let limit = match env.get("bootlimit").map(String::as_str) {
            None | Some("") => 3,
            Some(l) => {
                let digits: String = l.chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<u32>().unwrap_or(if digits.is_empty() { 0 } else { u32::MAX })
            }
        };
        if count > limit || count > MAX_BOOTLIMIT {
            // Fall back to the previous deployment and end the trial.
            if let Some(prev) = env.get("ferry_prev").cloned() {
                env.insert("ferry_deploy".into(), prev);
            }
            env.insert("upgrade_available".into(), "0".into());
            env.insert("bootcount".into(), "0".into());
        }
    }
    env.get("ferry_deploy").cloned()
}
