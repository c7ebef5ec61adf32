//! Power cuts: `ferryd update` killed at every durable step and at random instants.
//!
//! A SIGKILL (or `abort`, for the named steps) leaves the kernel's page cache intact, so
//! these runs prove the ordering of steps and the recovery at start, not the fsyncs; the
//! virtual-machine test (issue 10) cuts real power. After every kill the device must run a
//! complete deployment that passes `ferryd fsck`, and the next update must finish without
//! downloading any chunk that was already staged.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_client::crash::STEPS;
use ferry_store::Id;

use crate::harness::{ferryd, update, Env};

struct Bench {
    /// Keeps the repository and its server alive.
    _env: Env,
    config: PathBuf,
    device: PathBuf,
    snapshot: PathBuf,
    v1: Id,
    v2: Id,
    /// Chunks v2 needs that v1 lacks.
    needed: HashSet<Id>,
}

fn copy_tree(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let ok = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

impl Bench {
    fn new() -> Bench {
        let env = Env::new();
        let v1 = env.commit(1, "1");
        let config = env.device("");
        update(&config);
        let v2 = env.commit(2, "2");
        let device = env.path().join("device");
        let snapshot = env.path().join("device-v1");
        copy_tree(&device, &snapshot);
        let (a, b) = (env.repo.read_commit(&v1).unwrap(), env.repo.read_commit(&v2).unwrap());
        let (mut ta, mut ca, mut tb, mut cb) = (HashSet::new(), HashSet::new(), HashSet::new(), HashSet::new());
        ferry_delta::plan::collect_chunks(&env.repo, &a.root, &mut ta, &mut ca).unwrap();
        ferry_delta::plan::collect_chunks(&env.repo, &b.root, &mut tb, &mut cb).unwrap();
        let needed = cb.difference(&ca).copied().collect();
        Bench { _env: env, config, device, snapshot, v1, v2, needed }
    }

    fn reset(&self) {
        copy_tree(&self.snapshot, &self.device);
    }

    /// The chunks staged as files.
    fn staged_files(&self) -> HashSet<Id> {
        std::fs::read_dir(self.device.join("state/staging"))
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().to_str().and_then(|n| n.parse().ok()))
            .collect()
    }

    /// The chunks the device holds for v2: staged as files, in an object the update built
    /// already, or written in place into an object being built (`objects/<id>.part`), each
    /// region read and checked here.
    fn staged(&self) -> HashSet<Id> {
        let mut out = self.staged_files();
        let repo = &self._env.repo;
        let root = repo.read_commit(&self.v2).unwrap().root;
        ferry_store::read::walk(repo, &root, |_, w| {
            if let ferry_store::read::Walked::File { meta, chunks, .. } = w {
                let object = ferry_client::local::file_object_id(&meta, &chunks);
                // An object the update finished holds every chunk of the file.
                if self.device.join(format!("state/objects/{object}")).exists() {
                    out.extend(chunks.iter().map(|c| c.id));
                    return Ok(());
                }
                let part = self.device.join(format!("state/objects/{object}.part"));
                if let Ok(bytes) = std::fs::read(&part) {
                    let mut at = 0usize;
                    for c in &chunks {
                        let end = at + c.len as usize;
                        if bytes.get(at..end).is_some_and(|b| Id::of(b) == c.id) {
                            out.insert(c.id);
                        }
                        at = end;
                    }
                }
            }
            Ok(())
        })
        .unwrap();
        out
    }

    /// The invariants after a crash, then the update that must finish the job. Returns where
    /// the crash left the device: 0 nothing staged, 1 partly staged, 2 switched already.
    fn check_after_crash(&self, what: &str) -> usize {
        let target =
            std::fs::read_link(self.device.join("current")).unwrap_or_else(|e| panic!("{what}: no current link: {e}"));
        let name = target.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name == self.v1.to_hex() || name == self.v2.to_hex(), "{what}: current -> {}", target.display());
        assert!(target.is_dir(), "{what}: current points to a missing deployment");
        let (ok, out, err) = ferryd(&self.config, &["fsck"]);
        assert!(ok, "{what}: fsck failed after the crash: {out} {err}");
        let (_, st, _) = ferryd(&self.config, &["status", "--json"]);
        let st: serde_json::Value = serde_json::from_str(&st).unwrap();
        assert_eq!(
            st["staged_chunks"].as_u64().unwrap() as usize,
            self.staged_files().len(),
            "{what}: status shows pending work"
        );
        let staged: HashSet<Id> = self.staged().intersection(&self.needed).copied().collect();
        let phase = if name == self.v2.to_hex() { 2 } else { usize::from(!staged.is_empty()) };
        let s = update(&self.config);
        assert_eq!(s["to"], self.v2.to_hex(), "{what}");
        if name == self.v2.to_hex() {
            assert_eq!(s["up_to_date"], true, "{what}: {s}");
        } else {
            let downloaded = s["chunks_downloaded"].as_u64().unwrap();
            assert_eq!(
                downloaded,
                (self.needed.len() - staged.len()) as u64,
                "{what}: staged chunks were downloaded again: {s}"
            );
        }
        let (ok, out, err) = ferryd(&self.config, &["fsck"]);
        assert!(ok, "{what}: fsck failed after recovery: {out} {err}");
        phase
    }
}

#[test]
fn a_crash_at_every_durable_step_is_recovered() {
    let b = Bench::new();
    for step in STEPS {
        for n in [1, 3] {
            b.reset();
            let out = crate::harness::crashed_update(&b.config, &format!("{step}:{n}"));
            let stderr = String::from_utf8_lossy(&out.stderr);
            if n == 1 {
                assert!(
                    !out.status.success() && stderr.contains("crash point"),
                    "{step}:{n} was never reached: {stderr}"
                );
            }
            b.check_after_crash(&format!("crash at {step}:{n}"));
        }
    }
}

#[test]
fn sigkill_at_random_instants_is_recovered() {
    let runs: u64 = std::env::var("FERRY_POWERCUT_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    let b = Bench::new();
    // How long an undisturbed update takes, to spread the kills over it.
    b.reset();
    let started = Instant::now();
    update(&b.config);
    let span = started.elapsed().as_micros() as u64;
    let mut rng = ferry_fixtures::rng::Rng::new(0xc0ffee);
    let mut phases = [0u64; 3];
    for run in 0..runs {
        b.reset();
        let delay = Duration::from_micros(rng.below(span + span / 5));
        let mut child = Command::new(crate::harness::ferryd_bin())
            .arg("--config")
            .arg(&b.config)
            .arg("update")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        phases[b.check_after_crash(&format!("run {run}: SIGKILL after {delay:?} of {span} us"))] += 1;
    }
    eprintln!(
        "{runs} kills: {} before any chunk was staged, {} mid-update, {} after the switch",
        phases[0], phases[1], phases[2]
    );
    // The kills must land across the update, not only before or after it.
    assert!(phases[1] > 0 && phases[0] + phases[2] > 0, "{phases:?}");
}

/// One boot of the simulated bootloader (GRUB's rules, through the real grub-editenv).
fn bootloader_boots(grubenv: &Path) {
    use ferry_boot::bootenv::{model_boot, BootEnv, GrubEnv};
    let env = GrubEnv { file: grubenv.to_path_buf() };
    let before = env.read().unwrap();
    if before.is_empty() {
        return;
    }
    let mut after = before.clone();
    model_boot(&mut after);
    let changed: Vec<(&str, Option<&str>)> =
        after.iter().filter(|(k, v)| before.get(*k) != Some(v)).map(|(k, v)| (k.as_str(), Some(v.as_str()))).collect();
    if !changed.is_empty() {
        env.write(&changed).unwrap();
    }
}

#[test]
fn a_crash_at_every_step_of_a_trial_ends_on_a_good_deployment() {
    use ferry_boot::bootenv::{BootEnv, GrubEnv};
    use ferry_client::crash::TRIAL_STEPS;
    // Release 3 passes its health check, release 2 fails it.
    for (version, healthy) in [(3u32, true), (2, false)] {
        let env = Env::new();
        let v1 = env.commit(1, "1");
        let device = env.path().join("device");
        let grubenv = device.join("grubenv");
        let config = env.device(&format!(
            "[health]\ncommands = [\"! grep -qx 2 etc/version\"]\ndeadline = 2\ninterval = 1\nbootlimit = 2\n[bootloader]\nkind = \"grub\"\ngrubenv = \"{}\"\n",
            grubenv.display()
        ));
        update(&config);
        let snapshot = env.path().join("device-v1");
        copy_tree(&device, &snapshot);
        let target = env.commit(version, &version.to_string());
        for step in TRIAL_STEPS {
            copy_tree(&snapshot, &device);
            let what = format!("release {version}, crash at {step}");
            let _ = crate::harness::crashed_update(&config, &format!("{step}:1"));
            // The device reboots: the bootloader runs, then boot-check, then the daemon.
            bootloader_boots(&grubenv);
            let (ok, out, err) = ferryd(&config, &["boot-check"]);
            assert!(ok, "{what}: boot-check: {out} {err}");
            for _ in 0..2 {
                let (ok, _, err) = ferryd(&config, &["update"]);
                assert!(ok || err.contains("rolled back"), "{what}: {err}");
            }
            let running = std::fs::read_link(device.join("current")).unwrap();
            assert!(running.is_dir(), "{what}: current points to a missing deployment");
            let name = running.file_name().unwrap().to_str().unwrap().to_string();
            let expected = if healthy { target } else { v1 };
            assert_eq!(name, expected.to_hex(), "{what}");
            let (ok, out, err) = ferryd(&config, &["fsck"]);
            assert!(ok, "{what}: fsck: {out} {err}");
            let (_, st, _) = ferryd(&config, &["status", "--json"]);
            let st: serde_json::Value = serde_json::from_str(&st).unwrap();
            assert_eq!(st["trial"], serde_json::Value::Null, "{what}: {st}");
            if !healthy {
                assert_eq!(st["bad_commits"], serde_json::json!([target.to_hex()]), "{what}");
            }
            let boot = GrubEnv { file: grubenv.clone() }.read().unwrap();
            assert_eq!(boot.get("ferry_deploy"), Some(&expected.to_hex()), "{what}: the bootloader boots {boot:?}");
            assert_ne!(boot.get("upgrade_available").map(String::as_str), Some("1"), "{what}: {boot:?}");
        }
    }
}
