//! Factory provisioning: `ferry image` builds an SD-card image tree (and an ext4 file) with
//! a release installed; the tree is "flashed" (copied, hardlinks kept) to where the device
//! config's paths point; `ferryd provision` then enrolls, configures, initialises and
//! updates, resuming after power cuts without enrolling twice.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_publisher::image::{build, ImageRequest};
use serde_json::Value;

use crate::channels::{promote, set_up_keys};
use crate::fleet::call;
use crate::harness::{spawn_daemon, Env};

/// Writes the overlay and device configuration for devices whose files live under
/// `flashed` (the device's "/"-relative paths are those absolute paths); returns the
/// config file.
fn factory_files(env: &Env, flashed: &Path) -> PathBuf {
    let rel = flashed.strip_prefix("/").unwrap();
    let overlay = env.path().join("overlay").join(rel);
    std::fs::create_dir_all(overlay.join("etc/ferry")).unwrap();
    std::fs::copy(env.path().join("root.key.pub"), overlay.join("etc/ferry/root.pub")).unwrap();
    std::fs::copy(env.path().join("enrollment-token"), overlay.join("etc/ferry/enrollment-token")).unwrap();
    std::fs::write(overlay.join("etc/hw-rev"), "rev-a\n").unwrap();
    let f = flashed.display();
    let config = env.path().join("device.toml");
    std::fs::write(
        &config,
        format!(
            r#"insecure_http = true
server = "http://{addr}"
channel = "stable"
state_dir = "{f}/var/lib/ferry"
current_link = "{f}/var/lib/ferry/current"
root_keys = ["{f}/etc/ferry/root.pub"]
hardware_command = "cat {f}/etc/hw-rev"
retries = 1

[fleet]
enrollment_token_file = "{f}/etc/ferry/enrollment-token"
serial_env = "TEST_SERIAL"
# This fleet's key document names no configuration keys: the device takes it unsigned.
unsigned_config = true

[provision]
init_command = "echo \"$FERRY_SERIAL $FERRY_HARDWARE $(cat $FERRY_CONFIG_ENV)\" >> {f}/init.log"

[local_ui]
password = "correct horse battery"
tls = true
"#,
            addr = env.addr
        ),
    )
    .unwrap();
    config
}

/// `ferryd provision --json` as the device's boot runs it (its config inside the flashed
/// tree), made to abort at `crash` if given.
fn provision(flashed: &Path, serial: &str, crash: Option<&str>) -> (bool, Value, String) {
    let mut cmd = Command::new(crate::harness::ferryd_bin());
    cmd.arg("--config").arg(flashed.join("etc/ferry/ferryd.toml")).args(["provision", "--json"]);
    cmd.env("TEST_SERIAL", serial);
    if let Some(c) = crash {
        cmd.env("FERRYD_CRASH_AT", c);
    }
    let out = cmd.output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), v, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Copies the image's tree onto the device's paths, as writing the SD card does.
fn flash(image: &Path, flashed: &Path) {
    let _ = std::fs::remove_dir_all(flashed);
    let from = image.join(flashed.strip_prefix("/").unwrap());
    let ok = Command::new("cp").arg("-a").arg(&from).arg(flashed).status().unwrap().success();
    assert!(ok, "copying {} to {}", from.display(), flashed.display());
}

fn events(env: &Env, serial: &str) -> Vec<String> {
    let (status, one) = call(env, "GET", &format!("admin/devices/{serial}"), &env.admin_token, None);
    assert_eq!(status, 200, "{one}");
    one["events"].as_array().unwrap().iter().map(|e| e["what"].as_str().unwrap().to_string()).collect()
}

#[test]
fn an_image_boots_provisions_and_updates_resuming_after_power_cuts() {
    let env = Env::with_fleet(false);
    set_up_keys(&env);
    let v1 = env.commit(1, "1.0.0");
    promote(&env, Some(v1), None, "stable", false).unwrap();
    let (status, v) = call(
        &env,
        "POST",
        "admin/config/fleet",
        &env.admin_token,
        Some(serde_json::json!({ "set": { "REGION": "eu" } })),
    );
    assert_eq!(status, 200, "{v}");
    let flashed = env.path().join("flashed");
    let config = factory_files(&env, &flashed);
    let image = env.path().join("image");
    let raw = env.path().join("sd.img");
    let req = ImageRequest {
        commit: v1,
        hardware: "rev-a".into(),
        out: image.clone(),
        device_config: config.clone(),
        config_path: flashed.join("etc/ferry/ferryd.toml"),
        overlays: vec![env.path().join("overlay")],
        raw: Some((raw.clone(), 64 << 20)),
        ferryd: crate::harness::ferryd_bin(),
    };
    let s = build(&env.repo, &req).unwrap();
    assert_eq!((s.version.as_str(), s.files > 0), ("1.0.0", true), "{s:?}");
    // Every file the configuration names is in the overlay.
    assert!(s.missing.is_empty(), "{:?}", s.missing);
    // A configuration naming a file no overlay holds: built, and said.
    let other = env.path().join("device-other.toml");
    let text =
        std::fs::read_to_string(&config).unwrap().replace("etc/ferry/enrollment-token", "etc/ferry/missing-token");
    std::fs::write(&other, text).unwrap();
    let again = ImageRequest { out: env.path().join("image2"), device_config: other, raw: None, ..req.clone() };
    let s2 = build(&env.repo, &again).unwrap();
    assert_eq!(
        s2.missing,
        [format!("{}/etc/ferry/missing-token ([fleet] enrollment_token_file)", flashed.display())],
        "{s2:?}"
    );
    // The ext4 file system is clean and holds the deployment and the link to it.
    let fsck = Command::new("e2fsck").args(["-fn"]).arg(&raw).output().unwrap();
    assert!(fsck.status.success(), "e2fsck: {}", String::from_utf8_lossy(&fsck.stdout));
    let state_in_image = format!("/{}/var/lib/ferry", flashed.strip_prefix("/").unwrap().display());
    let ls =
        Command::new("debugfs").arg("-R").arg(format!("ls -l {state_in_image}/deploy")).arg(&raw).output().unwrap();
    assert!(String::from_utf8_lossy(&ls.stdout).contains(&v1.to_hex()), "{}", String::from_utf8_lossy(&ls.stdout));
    let link =
        Command::new("debugfs").arg("-R").arg(format!("stat {state_in_image}/current")).arg(&raw).output().unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains("Type: symlink"), "{link}");
    // The tree's link names the deployment by the device's path.
    let target = std::fs::read_link(image.join(state_in_image.trim_start_matches('/')).join("current")).unwrap();
    assert_eq!(target, flashed.join("var/lib/ferry/deploy").join(v1.to_hex()));
    // Deployment files are hardlinks to the store's objects, in the ext4 image too.
    let deployed = image.join(state_in_image.trim_start_matches('/')).join("deploy").join(v1.to_hex());
    let file = first_file(&deployed).expect("a file in the deployment");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&file).unwrap().nlink(), 2, "{}", file.display());
    let in_raw = format!("{state_in_image}/deploy/{}/{}", v1.to_hex(), file.strip_prefix(&deployed).unwrap().display());
    let stat = Command::new("debugfs").arg("-R").arg(format!("stat {in_raw}")).arg(&raw).output().unwrap();
    let stat = String::from_utf8_lossy(&stat.stdout);
    assert!(stat.contains("Links: 2"), "{in_raw} in the ext4 image: {stat}");
    // The staged chunks went into the objects: the image does not carry them twice.
    let staging = image.join(state_in_image.trim_start_matches('/')).join("staging");
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0, "{}", staging.display());
    // The local page's certificate is not in the image: each device makes its own key.
    let state_tree = image.join(state_in_image.trim_start_matches('/'));
    assert!(!state_tree.join("local-ui-tls.pem").exists());
    // Building into a directory that is not empty is refused.
    let again = build(&env.repo, &ImageRequest { raw: None, ..req.clone() });
    assert!(format!("{:#}", again.unwrap_err()).contains("not empty"));

    // Device SN-1, first boot with stable still at the image's release: power cuts right
    // after enrolling and right after the init command; then it completes, downloading
    // no chunk (the image holds the release).
    flash(&image, &flashed);
    let (ok, _, err) = provision(&flashed, "SN-1", Some("provision-enrolled:1"));
    assert!(!ok && err.contains("crash point"), "{err}");
    assert!(flashed.join("var/lib/ferry/device-token").exists());
    // Made at the first boot, before enrolling, and never again.
    let cert = std::fs::read(flashed.join("var/lib/ferry/local-ui-tls.pem")).unwrap();
    let (ok, _, err) = provision(&flashed, "SN-1", Some("provision-initialized:1"));
    assert!(!ok && err.contains("crash point"), "{err}");
    let (ok, s, err) = provision(&flashed, "SN-1", None);
    assert!(ok, "{err}");
    assert_eq!(s["ran"], serde_json::json!(["updated"]), "{s}");
    assert_eq!(s["update"]["up_to_date"], true, "{s}");
    assert_eq!(s["update"]["chunks_downloaded"], 0, "{s}");
    let init = std::fs::read_to_string(flashed.join("init.log")).unwrap();
    assert_eq!(init, "SN-1 rev-a REGION=\"eu\"\n", "the init command ran once, after the configuration arrived");
    let sn1_cert = s["local_ui_certificate"].clone();
    assert_eq!(sn1_cert.as_str().map(str::len), Some(95), "{s}");
    let (ok, s, _) = provision(&flashed, "SN-1", None);
    assert!(ok && s["already_provisioned"] == true, "{s}");
    assert_eq!(s["local_ui_certificate"], sn1_cert);
    assert_eq!(std::fs::read(flashed.join("var/lib/ferry/local-ui-tls.pem")).unwrap(), cert);
    let enrolled = events(&env, "SN-1").iter().filter(|e| e.starts_with("enrolled")).count();
    assert_eq!(enrolled, 1, "enrolled once: {:?}", events(&env, "SN-1"));
    let (ok, out, err) = crate::harness::ferryd(&flashed.join("etc/ferry/ferryd.toml"), &["fsck"]);
    assert!(ok, "{out}{err}");

    // Device SN-2, flashed from the same image after stable moved on: a power cut in the
    // middle of its first update; the next boot finishes it from what was staged.
    let v2 = env.commit(2, "1.1.0");
    promote(&env, Some(v2), None, "stable", false).unwrap();
    flash(&image, &flashed);
    let (ok, _, err) = provision(&flashed, "SN-2", Some("chunk-staged:3"));
    assert!(!ok && err.contains("crash point"), "{err}");
    let (ok, s, err) = provision(&flashed, "SN-2", None);
    assert!(ok, "{err}");
    assert_eq!(s["ran"], serde_json::json!(["updated"]), "{s}");
    assert_eq!(s["update"]["to"], v2.to_hex());
    assert!(s["local_ui_certificate"].is_string() && s["local_ui_certificate"] != sn1_cert, "{s}");
    assert!(s["update"]["chunks_reused"].as_u64().unwrap() > 0, "{s}");
    let full = crate::harness::patch_cost(&env, v1, v2);
    assert!(
        s["update"]["chunk_bytes_downloaded"].as_u64().unwrap() <= full.transfer_bytes,
        "the first update downloads at most what 1.0.0 -> 1.1.0 costs ({} bytes): {s}",
        full.transfer_bytes
    );
    assert_eq!(
        std::fs::read_link(flashed.join("var/lib/ferry/current")).unwrap().file_name().unwrap().to_string_lossy(),
        v2.to_hex()
    );
    assert_eq!(events(&env, "SN-2").iter().filter(|e| e.starts_with("enrolled")).count(), 1);
    let (ok, out, err) = crate::harness::ferryd(&flashed.join("etc/ferry/ferryd.toml"), &["fsck"]);
    assert!(ok, "{out}{err}");
}

fn first_file(dir: &Path) -> Option<PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(dir).ok()?.map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        let m = std::fs::symlink_metadata(&p).ok()?;
        if m.is_file() {
            return Some(p);
        }
        if m.is_dir() {
            if let Some(f) = first_file(&p) {
                return Some(f);
            }
        }
    }
    None
}

#[test]
fn the_daemon_provisions_before_anything_else() {
    let env = Env::with_fleet(false);
    let c1 = env.commit(1, "1");
    let log = env.path().join("init.log");
    let dev = env.device_named(
        "device",
        env.addr,
        &format!(
            "\n[fleet]\nenrollment_token_file = \"{}\"\nserial = \"SN-RUN\"\n[provision]\ninit_command = \"test ! -e {cur} && echo init >> {log}\"\n",
            env.path().join("enrollment-token").display(),
            cur = env.path().join("device/current").display(),
            log = log.display()
        ),
    );
    // `run --json`'s first line is provisioning's first update.
    let (daemon, rx) = spawn_daemon(&dev);
    let first = rx.recv_timeout(std::time::Duration::from_secs(30));
    drop(daemon);
    let steps = env.path().join("device/state/provision.json");
    let done: Value = std::fs::read(&steps).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    assert_eq!(done["updated"], true, "ferryd run did not finish provisioning: {done}");
    let first = first.expect("ferryd run --json printed no line within 30 s");
    assert_eq!(first["to"], c1.to_hex(), "{first}");
    assert_eq!(first["up_to_date"], false, "{first}");
    // The init command ran before the first deployment (it checks that none exists).
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "init\n");
    let target = std::fs::read_link(env.path().join("device/current")).unwrap();
    assert_eq!(target.file_name().unwrap().to_string_lossy(), c1.to_hex());
}

/// Issue 18, item 7, from a factory image: the device's first update after provisioning
/// fails its trial. The image's release is the deployment to go back to (the seed is not a
/// trial, so it counts as proven): the device returns to it, records the failed release as
/// bad, finishes provisioning, and takes the next release.
#[test]
fn a_provisioned_device_whose_first_update_fails_goes_back_to_its_image_and_takes_the_next() {
    let env = Env::with_fleet(false);
    set_up_keys(&env);
    let v1 = env.commit(1, "1.0.0");
    promote(&env, Some(v1), None, "stable", false).unwrap();
    let flashed = env.path().join("flashed");
    let config = factory_files(&env, &flashed);
    // A release proves itself unless its etc/version says 2.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[health]\ncommands = [\"! grep -qx 2 etc/version\"]\ndeadline = 3\ninterval = 1\n");
    std::fs::write(&config, text).unwrap();
    let image = env.path().join("image");
    let req = ImageRequest {
        commit: v1,
        hardware: "rev-a".into(),
        out: image.clone(),
        device_config: config,
        config_path: flashed.join("etc/ferry/ferryd.toml"),
        overlays: vec![env.path().join("overlay")],
        raw: None,
        ferryd: crate::harness::ferryd_bin(),
    };
    build(&env.repo, &req).unwrap();
    let v2 = env.commit(2, "1.1.0");
    promote(&env, Some(v2), None, "stable", false).unwrap();
    flash(&image, &flashed);
    let running = || {
        std::fs::read_link(flashed.join("var/lib/ferry/current"))
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    // Provisioning is done (a rolled-back release is the update's outcome, not a failure
    // to provision), on the image's release.
    let (ok, _, err) = provision(&flashed, "SN-9", None);
    assert!(ok && err.contains("failed its trial and was rolled back"), "{err}");
    assert_eq!(running(), v1.to_hex(), "back on the image's release");
    let (ok, out, err) = crate::harness::ferryd(&flashed.join("etc/ferry/ferryd.toml"), &["status", "--json"]);
    assert!(ok, "{err}");
    let st: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((st["bad_commits"].clone(), st["trial"].clone()), (serde_json::json!([v2.to_hex()]), Value::Null));
    // Not tried again; the next release is taken.
    let (ok, out, err) = crate::harness::ferryd(&flashed.join("etc/ferry/ferryd.toml"), &["update", "--json"]);
    assert!(ok, "{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["skipped_bad_commit"], v2.to_hex(), "{s}");
    let v3 = env.commit(3, "1.2.0");
    promote(&env, Some(v3), None, "stable", false).unwrap();
    // Check-ins see a promotion within the server's freshness bound (250 ms).
    std::thread::sleep(std::time::Duration::from_millis(400));
    let (ok, out, err) = crate::harness::ferryd(&flashed.join("etc/ferry/ferryd.toml"), &["update", "--json"]);
    assert!(ok, "{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["to"], v3.to_hex());
    assert_eq!(running(), v3.to_hex());
}
