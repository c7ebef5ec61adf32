//! ferryd with a bootloader: the trial handshake goes through the real `fw_setenv` and
//! `grub-editenv`, and a bootloader's own fallback is finished by `boot-check`.

use ferry_boot::bootenv::{model_boot, BootEnv, GrubEnv, UBootEnv};

use crate::harness::{ferryd, update, Env};

/// A device whose [health] fails for release 2, with a U-Boot or GRUB environment in its
/// temporary directory.
fn device(env: &Env, kind: &str, extra: &str) -> (std::path::PathBuf, Box<dyn BootEnv>) {
    let dir = env.path().join("boot");
    std::fs::create_dir_all(&dir).unwrap();
    let (table, boot): (String, Box<dyn BootEnv>) = if kind == "uboot" {
        std::fs::write(dir.join("env.bin"), vec![0u8; 16 * 1024]).unwrap();
        std::fs::write(dir.join("fw_env.config"), format!("{} 0x0 0x4000\n", dir.join("env.bin").display())).unwrap();
        std::fs::write(dir.join("defenv"), "bootdelay=2\n").unwrap();
        (
            format!(
                "[bootloader]\nkind = \"uboot\"\nfw_config = \"{}\"\ndefenv = \"{}\"\n",
                dir.join("fw_env.config").display(),
                dir.join("defenv").display()
            ),
            Box::new(UBootEnv { config: dir.join("fw_env.config"), defenv: Some(dir.join("defenv")) }),
        )
    } else {
        (
            format!("[bootloader]\nkind = \"grub\"\ngrubenv = \"{}\"\n", dir.join("grubenv").display()),
            Box::new(GrubEnv { file: dir.join("grubenv") }),
        )
    };
    let text = format!("[health]\ncommands = [\"! grep -qx 2 etc/version\"]\ndeadline = 2\ninterval = 1\nbootlimit = 2\n{extra}{table}");
    (env.device(&text), boot)
}

fn var(boot: &dyn BootEnv, k: &str) -> Option<String> {
    boot.read().unwrap().get(k).cloned()
}

#[test]
fn good_and_bad_releases_reach_the_bootloader() {
    for kind in ["uboot", "grub"] {
        let env = Env::new();
        let v1 = env.commit(1, "1");
        let (config, boot) = device(&env, kind, "");
        update(&config);
        assert_eq!(var(boot.as_ref(), "ferry_deploy"), Some(v1.to_hex()), "{kind}");
        assert_eq!(var(boot.as_ref(), "upgrade_available").as_deref(), Some("0"), "{kind}: marked good");
        // Release 2 fails its health check: the bootloader is pointed back at v1.
        env.commit(2, "2");
        let (ok, _, err) = ferryd(&config, &["update"]);
        assert!(!ok && err.contains("rolled back"), "{kind}: {err}");
        assert_eq!(var(boot.as_ref(), "ferry_deploy"), Some(v1.to_hex()), "{kind}");
        assert_eq!(var(boot.as_ref(), "upgrade_available").as_deref(), Some("0"), "{kind}");
        let (ok, out, err) = ferryd(&config, &["doctor"]);
        assert!(ok && out.contains("keeps what is written"), "{kind}: {out} {err}");
        // One copy of U-Boot's environment is a warning (it does not fail the doctor).
        assert_eq!(out.contains("warn  bootloader environment copies"), kind == "uboot", "{kind}: {out}");
    }
}

#[test]
fn doctor_is_content_with_a_redundant_uboot_environment() {
    let env = Env::new();
    let (config, boot) = device(&env, "uboot", "");
    let dir = env.path().join("boot");
    std::fs::write(dir.join("env2.bin"), vec![0u8; 16 * 1024]).unwrap();
    let two = format!(
        "# two copies, written in turn\n{} 0x0 0x4000\n{} 0x0 0x4000\n",
        dir.join("env.bin").display(),
        dir.join("env2.bin").display()
    );
    std::fs::write(dir.join("fw_env.config"), two).unwrap();
    let (ok, out, err) = ferryd(&config, &["doctor"]);
    assert!(ok && out.contains("keeps what is written") && !out.contains("warn  bootloader"), "{out} {err}");
    // fw_setenv wrote the environment into both copies' rotation: it reads back.
    boot.write(&[("ferry_probe", Some("1"))]).unwrap();
    assert_eq!(var(boot.as_ref(), "ferry_probe").as_deref(), Some("1"));
}

#[test]
fn a_bootloader_fallback_is_finished_by_boot_check() {
    for kind in ["uboot", "grub"] {
        let env = Env::new();
        let v1 = env.commit(1, "1");
        let (config, boot) = device(&env, kind, "");
        update(&config);
        // v3 is switched to, then the device dies before the trial ends and keeps failing to
        // come up: the bootloader counts the boots and falls back by itself.
        let v3 = env.commit(3, "3");
        let out = crate::harness::crashed_update(&config, "state-saved:1");
        assert!(!out.status.success());
        assert_eq!(var(boot.as_ref(), "ferry_deploy"), Some(v3.to_hex()), "{kind}");
        for _ in 0..3 {
            let mut vars = boot.read().unwrap();
            let before = vars.clone();
            model_boot(&mut vars);
            let changed: Vec<(&str, Option<&str>)> = vars
                .iter()
                .filter(|(k, v)| before.get(*k) != Some(v))
                .map(|(k, v)| (k.as_str(), Some(v.as_str())))
                .collect();
            boot.write(&changed).unwrap();
        }
        assert_eq!(var(boot.as_ref(), "ferry_deploy"), Some(v1.to_hex()), "{kind}: the bootloader fell back");
        let (ok, out, err) = ferryd(&config, &["boot-check"]);
        assert!(ok && out.contains("bootloader fell back"), "{kind}: {out} {err}");
        let target = std::fs::read_link(env.current()).unwrap();
        assert!(target.ends_with(v1.to_hex()), "{kind}: the current link follows the bootloader");
        let (_, out, _) = ferryd(&config, &["status", "--json"]);
        let st: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(st["bad_commits"], serde_json::json!([v3.to_hex()]), "{kind}");
    }
}

#[test]
fn doctor_names_an_environment_that_cannot_be_written() {
    let env = Env::new();
    let (config, _) = device(&env, "uboot", "");
    std::fs::write(env.path().join("boot/fw_env.config"), "/nonexistent/env.bin 0x0 0x4000\n").unwrap();
    let (ok, out, _) = ferryd(&config, &["doctor"]);
    assert!(!ok && out.contains("FAIL  bootloader environment"), "{out}");
    assert!(out.contains("ok    trusted keys"), "{out}");
}
