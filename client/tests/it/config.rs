//! ferryd's configuration and status, through the real binary.

use std::path::Path;
use std::process::Command;

fn ferryd(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(crate::harness::ferryd_bin()).arg("--config").arg(config).args(args).output().unwrap()
}

fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let key = dir.join("ci.key");
    if !key.exists() {
        ferry_store::SecretKey::from_seed(&[4; 32]).save(&key).unwrap();
    }
    let text = format!(
        "insecure_http = true\nserver = \"http://127.0.0.1:8080\"\nbranch = \"stable\"\ncurrent_link = \"{}\"\ntrusted_keys = [\"{}.pub\"]\n{extra}",
        dir.join("current").display(),
        key.display()
    );
    let path = dir.join("ferryd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_valid_config_is_accepted_with_its_defaults() {
    let t = tempfile::tempdir().unwrap();
    let config = write_config(t.path(), "hardware = \"rev-b\"\n");
    let out = ferryd(&config, &["check-config", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state_dir"], "/var/lib/ferry");
    assert_eq!(v["poll_interval"], 3600);
    assert_eq!(v["hardware"], "rev-b");
}

#[test]
fn bad_configs_are_refused_naming_the_problem() {
    let t = tempfile::tempdir().unwrap();
    for (extra, expected) in [
        ("pol_interval = 5\n", "pol_interval"),
        ("poll_interval = 0\n", "poll_interval"),
        ("state_dir = \"relative/dir\"\n", "absolute"),
        (
            "[health]\ncommands = [\"true\"]\nbootlimit = 6\n[bootloader]\nkind = \"grub\"\ngrubenv = \"/boot/grub/grubenv\"\n",
            "bootlimit 6 is more than the shipped boot scripts count",
        ),
        ("content_url = \"ftp://cdn.example.com\"\n", "content_url \"ftp://cdn.example.com\" must be"),
        ("content_url = \"http://cdn\"\ncontent_ca_file = \"/x.pem\"\n", "content_ca_file is set but content_url"),
        ("content_ca_file = \"/x.pem\"\n", "content_ca_file is set without a content_url"),
    ] {
        let config = write_config(t.path(), extra);
        let out = ferryd(&config, &["check-config"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected) && stderr.contains("ferryd.toml"),
            "{extra}: {stderr}"
        );
    }
    // A weak trusted key is refused when the keys are loaded.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    std::fs::write(t.path().join("ci.key.pub"), format!("ferry-public-key-v1 {}\n", hex_of(&identity))).unwrap();
    let config = write_config(t.path(), "");
    let out = ferryd(&config, &["check-config"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("weak"));
    let out = ferryd(&t.path().join("missing.toml"), &["status"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn status_follows_the_current_link() {
    let t = tempfile::tempdir().unwrap();
    let config = write_config(t.path(), "");
    let out = ferryd(&config, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["target"], serde_json::Value::Null);
    let deploy = t.path().join("deploy-a");
    std::fs::create_dir(&deploy).unwrap();
    ferry_boot::switch_symlink(&t.path().join("current"), &deploy).unwrap();
    let out = ferryd(&config, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["target"], deploy.to_str().unwrap());
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A channel configuration: root keys instead of trusted keys, and a hardware revision from
/// the configured source.
fn channel_config(dir: &Path, hardware: &str) -> std::path::PathBuf {
    let key = dir.join("root.key");
    if !key.exists() {
        ferry_store::SecretKey::from_seed(&[5; 32]).save(&key).unwrap();
    }
    let text = format!(
        "insecure_http = true\nserver = \"http://127.0.0.1:8080\"\nchannel = \"stable\"\nstate_dir = \"{}\"\ncurrent_link = \"{}\"\nroot_keys = [\"{}.pub\"]\n{hardware}",
        dir.join("state").display(),
        dir.join("current").display(),
        key.display()
    );
    let path = dir.join("ferryd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_channel_device_learns_its_hardware_revision_from_its_image() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("hw"), "rev-c\nsecond line ignored\n").unwrap();
    let from_file = channel_config(t.path(), &format!("hardware_file = \"{}\"\n", t.path().join("hw").display()));
    let out = ferryd(&from_file, &["status", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["hardware"].as_str(), v["channel"].as_str()), (Some("rev-c"), Some("stable")));
    assert_eq!(v["keys_serial"], 0);

    let from_env = channel_config(t.path(), "hardware_env = \"BOARD_REV\"\n");
    let out = Command::new(crate::harness::ferryd_bin())
        .arg("--config")
        .arg(&from_env)
        .args(["status", "--json"])
        .env("BOARD_REV", "rev-d")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["hardware"], "rev-d");
    let out = ferryd(&from_env, &["check-config"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("$BOARD_REV"));

    for (extra, expected) in [
        ("", "must know its hardware revision"),
        ("hardware = \"a\"\nhardware_env = \"X\"\n", "at most one of hardware"),
        ("hardware = \"a\"\nbranch = \"main\"\n", "either branch or channel"),
        ("hardware = \"a\"\ntrusted_keys = [\"/k.pub\"]\n", "trusted_keys is for branches"),
    ] {
        let out = ferryd(&channel_config(t.path(), extra), &["check-config"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{extra:?}: {stderr}");
    }
}
