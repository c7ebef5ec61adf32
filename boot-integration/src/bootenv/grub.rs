//! The GRUB backend: `grub-editenv` on a grubenv block (Debian: grub-common).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use super::{check, parse, run, BootEnv, EnvError};

/// GRUB's environment block through `grub-editenv`.
#[derive(Debug, Clone)]
pub struct GrubEnv {
    pub file: PathBuf,
}

impl BootEnv for GrubEnv {
    fn name(&self) -> &'static str {
        "grub"
    }

    fn read(&self) -> Result<BTreeMap<String, String>, EnvError> {
        if !self.file.exists() {
            return Ok(BTreeMap::new());
        }
        Ok(parse(&run("grub-editenv", Command::new("grub-editenv").arg(&self.file).arg("list"))?))
    }

    fn write(&self, vars: &[(&str, Option<&str>)]) -> Result<(), EnvError> {
        check(vars)?;
        if !self.file.exists() {
            run("grub-editenv", Command::new("grub-editenv").arg(&self.file).arg("create"))?;
        }
        let set: Vec<String> = vars.iter().filter_map(|(k, v)| v.map(|v| format!("{k}={v}"))).collect();
        if !set.is_empty() {
            run("grub-editenv", Command::new("grub-editenv").arg(&self.file).arg("set").args(&set))?;
        }
        let unset: Vec<&str> = vars.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| *k).collect();
        if !unset.is_empty() {
            run("grub-editenv", Command::new("grub-editenv").arg(&self.file).arg("unset").args(&unset))?;
        }
        Ok(())
    }
}
