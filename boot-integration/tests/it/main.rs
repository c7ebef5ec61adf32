//! ferry-boot's integration tests: the trial handshake through the real `fw_setenv` /
//! `fw_printenv` (on a file-backed U-Boot environment) and `grub-editenv`, and simulated
//! boots following the shipped scripts' rules.

use std::collections::BTreeMap;

use ferry_boot::bootenv::{self, model_boot, BootEnv, EnvError, GrubEnv, UBootEnv};

fn uboot(dir: &std::path::Path) -> UBootEnv {
    std::fs::write(dir.join("env.bin"), vec![0u8; 16 * 1024]).unwrap();
    std::fs::write(dir.join("fw_env.config"), format!("{} 0x0 0x4000\n", dir.join("env.bin").display())).unwrap();
    // The factory default: a fresh device's environment has never been saved.
    std::fs::write(dir.join("defenv"), "bootdelay=2\n").unwrap();
    UBootEnv { config: dir.join("fw_env.config"), defenv: Some(dir.join("defenv")) }
}

fn grub(dir: &std::path::Path) -> GrubEnv {
    GrubEnv { file: dir.join("grubenv") }
}

/// Both real backends, each in a directory of its own.
fn backends() -> Vec<(tempfile::TempDir, Box<dyn BootEnv>)> {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let u: Box<dyn BootEnv> = Box::new(uboot(a.path()));
    let g: Box<dyn BootEnv> = Box::new(grub(b.path()));
    vec![(a, u), (b, g)]
}

/// One boot of a simulated device: the bootloader reads its environment, applies the
/// script's rules and saves what changed, through the real tool.
fn boot(env: &dyn BootEnv) -> String {
    let before = env.read().unwrap();
    let mut after = before.clone();
    let booted = model_boot(&mut after).expect("a deployment to boot");
    let changed: Vec<(&str, Option<&str>)> =
        after.iter().filter(|(k, v)| before.get(*k) != Some(v)).map(|(k, v)| (k.as_str(), Some(v.as_str()))).collect();
    if !changed.is_empty() {
        env.write(&changed).unwrap();
    }
    booted
}

#[test]
fn the_handshake_round_trips_through_the_real_tools() {
    for (_dir, env) in backends() {
        bootenv::start_trial(env.as_ref(), "new", Some("old"), 3).unwrap();
        let v = env.read().unwrap();
        assert_eq!(v.get("ferry_deploy").map(String::as_str), Some("new"), "{}", env.name());
        assert_eq!(v.get("ferry_prev").map(String::as_str), Some("old"));
        assert_eq!(v.get("upgrade_available").map(String::as_str), Some("1"));
        bootenv::mark_good(env.as_ref()).unwrap();
        assert_eq!(env.read().unwrap().get("upgrade_available").map(String::as_str), Some("0"));
        bootenv::rollback(env.as_ref(), "old").unwrap();
        assert_eq!(env.read().unwrap().get("ferry_deploy").map(String::as_str), Some("old"));
        assert!(matches!(env.write(&[("bad name", Some("x"))]), Err(EnvError::BadVariable(_))));
        assert!(matches!(env.write(&[("a", Some("two\nlines"))]), Err(EnvError::BadVariable(_))));
    }
}

#[test]
fn a_release_never_marked_good_is_abandoned_after_bootlimit_boots() {
    for (_dir, env) in backends() {
        bootenv::start_trial(env.as_ref(), "new", Some("old"), 2).unwrap();
        assert_eq!(boot(env.as_ref()), "new", "{}", env.name());
        assert_eq!(boot(env.as_ref()), "new");
        assert_eq!(boot(env.as_ref()), "old", "{}: the third boot falls back", env.name());
        assert_eq!(env.read().unwrap().get("upgrade_available").map(String::as_str), Some("0"));
        assert_eq!(boot(env.as_ref()), "old", "and stays there");
    }
}

#[test]
fn a_release_marked_good_keeps_booting() {
    for (_dir, env) in backends() {
        bootenv::start_trial(env.as_ref(), "new", Some("old"), 1).unwrap();
        assert_eq!(boot(env.as_ref()), "new");
        bootenv::mark_good(env.as_ref()).unwrap();
        for _ in 0..5 {
            assert_eq!(boot(env.as_ref()), "new", "{}", env.name());
        }
    }
}

#[test]
fn a_power_cut_between_any_two_writes_boots_a_known_deployment() {
    // Each environment write is atomic (both tools write the whole block at once), so a power
    // cut leaves the environment as after some prefix of the writes. From every such prefix
    // the device boots one of the two complete deployments, and booting on from there (the
    // agent marking good once it runs "new") ends on a good one with the trial closed.
    type Step = Box<dyn Fn(&dyn BootEnv)>;
    let steps: Vec<Step> = vec![
        Box::new(|e| bootenv::start_trial(e, "new", Some("old"), 2).unwrap()),
        Box::new(|e| {
            boot(e);
        }),
        Box::new(|e| bootenv::mark_good(e).unwrap()),
    ];
    for cut in 0..=steps.len() {
        for (_dir, env) in backends() {
            env.write(&[("ferry_deploy", Some("old"))]).unwrap();
            for s in &steps[..cut] {
                s(env.as_ref());
            }
            let mut seen = Vec::new();
            for _ in 0..4 {
                let b = boot(env.as_ref());
                assert!(b == "old" || b == "new", "{} cut {cut}: booted {b}", env.name());
                if b == "new" && env.read().unwrap().get("upgrade_available").map(String::as_str) == Some("1") {
                    bootenv::mark_good(env.as_ref()).unwrap();
                }
                seen.push(b);
            }
            let end = env.read().unwrap();
            assert_ne!(
                end.get("upgrade_available").map(String::as_str),
                Some("1"),
                "{} cut {cut}: {seen:?}",
                env.name()
            );
        }
    }
}

/// An environment that accepts writes and forgets them, like one never saved at the factory
/// whose tool writes to the wrong place.
#[derive(Debug)]
struct Forgetful;

impl BootEnv for Forgetful {
    fn name(&self) -> &'static str {
        "forgetful"
    }
    fn read(&self) -> Result<BTreeMap<String, String>, EnvError> {
        Ok(BTreeMap::new())
    }
    fn write(&self, _: &[(&str, Option<&str>)]) -> Result<(), EnvError> {
        Ok(())
    }
}

#[test]
fn an_environment_that_does_not_keep_writes_is_caught() {
    let err = bootenv::start_trial(&Forgetful, "new", Some("old"), 3).unwrap_err();
    assert!(matches!(err, EnvError::NotPersisted { .. }), "{err}");
    // And a U-Boot environment whose storage is not writable fails loudly.
    let t = tempfile::tempdir().unwrap();
    let env = uboot(t.path());
    std::fs::write(t.path().join("fw_env.config"), "/nonexistent/dir/env.bin 0x0 0x4000\n").unwrap();
    assert!(matches!(bootenv::start_trial(&env, "new", None, 3), Err(EnvError::Tool { .. })));
}

/// The model and the shipped scripts side by side: every variable of the handshake appears
/// in both scripts, and each script names the model as its twin (a change to one must show
/// in the other).
#[test]
fn the_shipped_scripts_follow_the_model() {
    // The runner's CARGO_MANIFEST_DIR, not the compile-time one: the shared build cache may
    // hold a binary built from another checkout of the same sources.
    let root = &std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo or nextest"));
    for script in ["uboot/boot.cmd", "grub/ferry.cfg"] {
        let text = std::fs::read_to_string(root.join(script)).unwrap();
        for var in ["ferry_deploy", "ferry_prev", "upgrade_available", "bootcount", "bootlimit"] {
            assert!(text.contains(var), "{script} does not use {var}");
        }
        assert!(text.contains("model_boot"), "{script} does not point at its model");
        // The unrolled count reaches one past the largest bootlimit, and no further.
        let set = |n: u32| {
            if script.starts_with("uboot") {
                format!("setenv bootcount {n}")
            } else {
                format!("set bootcount={n}")
            }
        };
        for n in 1..=bootenv::MAX_BOOTLIMIT + 1 {
            assert!(text.contains(&set(n)), "{script} does not count to {n}");
        }
        assert!(!text.contains(&set(bootenv::MAX_BOOTLIMIT + 2)), "{script} counts past the model");
    }
    let model = std::fs::read_to_string(root.join("src/bootenv/mod.rs")).unwrap();
    assert!(model.contains("uboot/boot.cmd") && model.contains("grub/ferry.cfg"));
}

/// The scripts' unrolled count, as the model has it, for values ferryd never writes: an
/// unset count starts at 0, a count the chain does not know ends the trial, a limit above
/// the chain still ends it, and a limit that is not a number reads as 0.
#[test]
fn the_model_follows_the_unrolled_count_for_odd_values() {
    let trial = |count: Option<&str>, limit: Option<&str>| {
        let mut env: BTreeMap<String, String> =
            [("ferry_deploy", "new"), ("ferry_prev", "old"), ("upgrade_available", "1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        if let Some(c) = count {
            env.insert("bootcount".into(), c.into());
        }
        if let Some(l) = limit {
            env.insert("bootlimit".into(), l.into());
        }
        env
    };
    // Unset or empty count: this boot is the first.
    for count in [None, Some("")] {
        let mut env = trial(count, Some("2"));
        assert_eq!(model_boot(&mut env).as_deref(), Some("new"));
        assert_eq!(env["bootcount"], "1");
    }
    // A count the chain does not know ("7", "x", "01") ends the trial at once.
    for count in ["7", "x", "01"] {
        let mut env = trial(Some(count), Some("5"));
        assert_eq!(model_boot(&mut env).as_deref(), Some("old"), "bootcount {count}");
        assert_eq!((env["upgrade_available"].as_str(), env["bootcount"].as_str()), ("0", "0"));
    }
    // A limit above the chain's end: the sixth boot falls back all the same.
    let mut env = trial(Some("0"), Some("9"));
    let booted: Vec<String> = (0..6).filter_map(|_| model_boot(&mut env)).collect();
    assert_eq!(booted, ["new", "new", "new", "new", "new", "old"]);
    // An unset limit is 3; one that is not a number is 0.
    let mut env = trial(Some("2"), None);
    assert_eq!(model_boot(&mut env).as_deref(), Some("new"));
    assert_eq!(model_boot(&mut env).as_deref(), Some("old"));
    let mut env = trial(Some("0"), Some("x"));
    assert_eq!(model_boot(&mut env).as_deref(), Some("old"));
}

/// The state directory's default is the same in the early-boot step and both boot scripts
/// (ferryd's own default is `/var/lib/ferry` too: `client/src/config.rs`), and each boot
/// script passes it, and the deployment, to the kernel for ferry-prepare-root.
#[test]
fn the_boot_scripts_and_prepare_root_agree_on_the_state_directory() {
    let root = &std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo or nextest"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let prepare = read("prepare-root/ferry-prepare-root");
    assert!(prepare.contains("state=/var/lib/ferry"), "ferry-prepare-root's default state directory moved");
    for (script, default) in
        [("uboot/boot.cmd", "setenv ferry_state /var/lib/ferry"), ("grub/ferry.cfg", "set ferry_state=/var/lib/ferry")]
    {
        let text = read(script);
        assert!(text.contains(default), "{script} does not default ferry_state to /var/lib/ferry");
        assert!(text.contains("ferry.deploy=${ferry_deploy}"), "{script} does not pass ferry.deploy=");
        assert!(text.contains("ferry.state=${ferry_state}"), "{script} does not pass ferry.state=");
        assert!(text.contains("${ferry_state}/deploy/${ferry_deploy}/boot"), "{script} loads the kernel elsewhere");
    }
}

/// ferry-prepare-root itself, run by `prepare-root/test.sh` in a mount namespace under
/// busybox sh and dash: the deployment as a read-only `/`, `/var` and `/etc` from the
/// partition, the fallbacks and the failures. It needs root (mount namespaces), busybox and
/// dash; without root it says so and checks nothing.
#[test]
fn prepare_root_mounts_the_deployment_as_root() {
    let root = &std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo or nextest"));
    let uid = std::process::Command::new("id").arg("-u").output().expect("id");
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("not root: prepare-root/test.sh needs mount namespaces; skipped");
        return;
    }
    let out = std::process::Command::new(root.join("prepare-root/test.sh")).output().expect("running test.sh");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.contains("all checks passed"), "{said}");
}
