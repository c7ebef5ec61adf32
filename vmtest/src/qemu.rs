//! Booting the device in QEMU: how a boot starts (the kernel directly, or the firmware and a
//! bootloader from the disk), the serial console read line by line into a `Boot` (the
//! guest's `FERRY-VM` markers and ferryd's `FERRY-STEP` lines), and the cut: SIGKILL to
//! QEMU at a time after the update starts or a delay after a durable step.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::arch::GUEST;

/// What one boot printed.
#[derive(Default, Debug)]
pub struct Boot {
    /// The guest's `FERRY-VM <key> <value>` lines, by key (the last of each).
    pub markers: BTreeMap<String, String>,
    /// The durable steps ferryd reported (`FERRY-STEP <name>`), in order.
    pub steps: Vec<String>,
    /// Whether the harness cut it.
    pub killed: bool,
    /// Seconds from `update-start` to the cut.
    pub cut_after: Option<f64>,
    /// Seconds from `update-start` to the update's answer, when it finished.
    pub update_seconds: Option<f64>,
    /// The whole console.
    pub log: String,
}

impl Boot {
    /// Takes one line of the console.
    fn take(&mut self, line: &str, started: Option<Instant>) {
        self.log.push_str(line);
        self.log.push('\n');
        // The console's escape sequences and kernel messages may share a line with a marker.
        if let Some(step) = line.find("FERRY-STEP ").map(|i| line[i + 11..].trim()) {
            // A line the cut broke off may hold no name.
            if !step.is_empty() {
                self.steps.push(step.to_string());
            }
        }
        if let Some(rest) = line.find("FERRY-VM ").map(|i| line[i + 9..].trim_end()) {
            let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
            if key == "update" || key == "update-failed" {
                self.update_seconds = started.map(|s| s.elapsed().as_secs_f64());
            }
            self.markers.insert(key.to_string(), value.to_string());
        }
    }

    /// The JSON a marker carries.
    pub fn json(&self, key: &str) -> Result<Value> {
        let v =
            self.markers.get(key).ok_or_else(|| anyhow!("the boot printed no {key}; its console:\n{}", self.log))?;
        serde_json::from_str(v).with_context(|| format!("{key}: {v}"))
    }
}

/// When a cut falls: a time after the update starts (uniform over the update, so most cuts
/// land in its long phases), or a short delay after the agent reports its `n`th durable step
/// (uniform over the steps: aimed at the moments between one write and the next flush).
#[derive(Clone, Copy)]
pub enum CutAt {
    Time(Duration),
    Step { n: usize, delay: Duration },
}

/// How a boot starts: QEMU loads the kernel and initramfs itself, or the firmware boots the
/// disk (SeaBIOS and GRUB in the MBR, or U-Boot).
#[derive(Clone, Copy)]
pub enum Start<'a> {
    Direct {
        kernel: &'a Path,
        initrd: &'a Path,
    },
    /// The firmware boots the disk: SeaBIOS (QEMU's own) or the ROM named.
    Firmware(Option<&'a Path>),
}

/// Boots `disk` (a file); with `cut`, kills QEMU when the cut falls.
pub fn boot(start: Start<'_>, disk: &Path, cut: Option<CutAt>) -> Result<Boot> {
    boot_drive(start, &format!("file={},format=raw,if=virtio,cache=none", disk.display()), cut)
}

/// Boots from the drive QEMU's `-drive` option names.
pub fn boot_drive(start: Start<'_>, drive: &str, cut: Option<CutAt>) -> Result<Boot> {
    let mut cmd = Command::new(GUEST.qemu);
    cmd.args(GUEST.machine).args(["-accel", &std::env::var("FERRY_VM_ACCEL").unwrap_or_else(|_| "tcg".into())]).args([
        "-m",
        "768",
        "-smp",
        "1",
        "-nographic",
        "-no-reboot",
    ]);
    match start {
        Start::Direct { kernel, initrd } => {
            cmd.arg("-kernel")
                .arg(kernel)
                .arg("-initrd")
                .arg(initrd)
                .arg("-append")
                .arg(format!("console={} quiet panic=-1", GUEST.console));
        }
        Start::Firmware(Some(rom)) => {
            cmd.arg("-bios").arg(rom);
        }
        Start::Firmware(None) => {}
    }
    let mut child = cmd
        .arg("-drive")
        .arg(drive)
        .args(["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", GUEST.qemu))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no qemu output"))?;
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut b = Boot::default();
    let mut started: Option<Instant> = None;
    let mut kill_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if let Some(k) = kill_at {
            if now >= k {
                child.kill()?;
                child.wait()?;
                b.killed = true;
                b.cut_after = started.map(|s| s.elapsed().as_secs_f64());
                // What the console had printed by then.
                while let Ok(line) = rx.try_recv() {
                    b.take(&line, started);
                }
                return Ok(b);
            }
        }
        if now > deadline {
            let _ = child.kill();
            bail!("the VM did not finish within 10 minutes; its console:\n{}", b.log);
        }
        let wait = kill_at
            .map_or(Duration::from_millis(200), |k| k.saturating_duration_since(now).min(Duration::from_millis(200)));
        match rx.recv_timeout(wait) {
            Ok(line) => {
                if line.starts_with("FERRY-VM update-start") {
                    started = Some(Instant::now());
                    if let Some(CutAt::Time(d)) = cut {
                        kill_at = Some(Instant::now() + d);
                    }
                }
                let steps = b.steps.len();
                b.take(&line, started);
                if let Some(CutAt::Step { n, delay }) = cut {
                    if kill_at.is_none() && steps < n && b.steps.len() >= n {
                        kill_at = Some(Instant::now() + delay);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait()?;
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        bail!("qemu failed ({status}): {err}");
    }
    Ok(b)
}
