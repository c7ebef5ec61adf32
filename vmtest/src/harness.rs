//! One run of the harness: checks the host, makes the run's work directory, builds the rig,
//! runs the power cuts or a bootloader's scenarios, and keeps the work directory of a run
//! that failed.

use std::path::Path;

use anyhow::{bail, Result};

use crate::arch::GUEST;
use crate::bootloader::{self, Loader};
use crate::host::{cache_dir, kernel, which};
use crate::powercut::{self, Plan};
use crate::rig::Rig;

/// What a run does.
#[derive(Debug)]
pub enum Mode {
    /// Power cuts in the middle of updates.
    PowerCuts(Plan),
    /// A bootloader's rollbacks of bad releases.
    Bootloader(Loader),
}

/// Runs the harness with release trees of `tree_mib` MiB; whether every check passed.
pub fn run(mode: &Mode, tree_mib: u64) -> Result<bool> {
    which(GUEST.qemu)?;
    if matches!(mode, Mode::Bootloader(Loader::Uboot)) && !Path::new(GUEST.uboot_rom).is_file() {
        bail!("{} is missing: install u-boot-qemu (scripts/vmtest installs what the harness needs)", GUEST.uboot_rom);
    }
    let (vmlinuz, modules) = kernel()?;
    let ferryd = ferry_publisher::image::find_ferryd()?;
    let work = cache_dir().join(format!("run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let result = campaign(mode, tree_mib, &vmlinuz, &modules, &ferryd, &work);
    if result.as_ref().is_ok_and(|ok| *ok) {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("the run's files are kept in {}", work.display());
    }
    result
}

fn campaign(mode: &Mode, tree_mib: u64, vmlinuz: &Path, modules: &Path, ferryd: &Path, work: &Path) -> Result<bool> {
    let loader = match mode {
        Mode::PowerCuts(_) => None,
        Mode::Bootloader(l) => Some(*l),
    };
    let rig = Rig::build(loader, tree_mib, vmlinuz, modules, ferryd, work)?;
    match mode {
        Mode::Bootloader(l) => {
            let ok = bootloader::scenarios(*l, &rig);
            rig.shutdown();
            ok
        }
        Mode::PowerCuts(plan) => {
            let ok = powercut::run(&rig, plan)?;
            rig.shutdown();
            Ok(ok)
        }
    }
}
