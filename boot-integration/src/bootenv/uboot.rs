//! The U-Boot backend: libubootenv's `fw_printenv` / `fw_setenv` (Debian: libubootenv-tool).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{check, parse, run, BootEnv, EnvError};

/// U-Boot's environment through libubootenv's `fw_printenv` / `fw_setenv`.
#[derive(Debug, Clone)]
pub struct UBootEnv {
    /// `fw_env.config` (device or file, offset, size, ...).
    pub config: PathBuf,
    /// Default environment used when the stored one is missing or corrupt.
    pub defenv: Option<PathBuf>,
}

impl UBootEnv {
    fn args(&self, cmd: &mut Command) {
        cmd.arg("-c").arg(&self.config);
        if let Some(d) = &self.defenv {
            cmd.arg("-f").arg(d);
        }
    }
}

impl BootEnv for UBootEnv {
    fn name(&self) -> &'static str {
        "uboot"
    }

    fn read(&self) -> Result<BTreeMap<String, String>, EnvError> {
        let mut cmd = Command::new("fw_printenv");
        self.args(&mut cmd);
        Ok(parse(&run("fw_printenv", &mut cmd)?))
    }

    fn write(&self, vars: &[(&str, Option<&str>)]) -> Result<(), EnvError> {
        check(vars)?;
        // A script sets every variable in one write of the environment. libubootenv's
        // script lines are `name=value`; an empty value removes the variable.
        let mut script = String::new();
        for (k, v) in vars {
            script.push_str(k);
            script.push('=');
            script.push_str(v.unwrap_or(""));
            script.push('\n');
        }
        let dir = self.config.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".ferry-fw-script-{}", std::process::id()));
        std::fs::write(&tmp, script).map_err(|source| EnvError::Spawn { tool: "fw_setenv".into(), source })?;
        let mut cmd = Command::new("fw_setenv");
        self.args(&mut cmd);
        cmd.arg("-s").arg(&tmp);
        let r = run("fw_setenv", &mut cmd);
        let _ = std::fs::remove_file(&tmp);
        r.map(|_| ())
    }
}
