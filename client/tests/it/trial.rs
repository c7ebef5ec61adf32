//! Trials after a switch: health checks, mark-good, automatic and manual rollback, boot
//! counting, and bad commits never retried.

use std::time::{Duration, Instant};

use crate::harness::{ferryd, update, Env};

/// `[health]` that fails for release 2 of the fixture series (its etc/version is "2").
fn health(env: &Env, extra: &str) -> String {
    format!(
        "restart_command = \"echo restarted >> {}\"\n[health]\ncommands = [\"! grep -qx 2 etc/version\"]\ndeadline = 3\ninterval = 1\n{extra}",
        env.path().join("restarts").display()
    )
}

fn status(config: &std::path::Path) -> serde_json::Value {
    let (ok, out, err) = ferryd(config, &["status", "--json"]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn running(env: &Env) -> String {
    std::fs::read_link(env.current()).unwrap().file_name().unwrap().to_str().unwrap().to_string()
}

fn restarts(env: &Env) -> usize {
    std::fs::read_to_string(env.path().join("restarts")).map(|s| s.lines().count()).unwrap_or(0)
}

#[test]
fn a_bad_release_is_rolled_back_within_its_deadline_and_never_retried() {
    let env = Env::new();
    let v1 = env.commit(1, "1");
    let config = env.device(&health(&env, ""));
    update(&config);
    assert_eq!(running(&env), v1.to_hex());
    assert_eq!(restarts(&env), 1);

    let v2 = env.commit(2, "2");
    let started = Instant::now();
    let (ok, _, err) = ferryd(&config, &["update"]);
    assert!(!ok && err.contains("failed its trial and was rolled back"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    assert_eq!(running(&env), v1.to_hex(), "still on the bad release");
    assert_eq!(restarts(&env), 3, "restarted after the switch and after the rollback");
    let st = status(&config);
    assert_eq!(st["last_result"], "rolled-back");
    assert_eq!(st["last_rollback"]["commit"], v2.to_hex());
    assert!(st["last_rollback"]["reason"].as_str().unwrap().contains("grep"), "{st}");
    assert_eq!(st["trial"], serde_json::Value::Null);
    assert_eq!(st["bad_commits"], serde_json::json!([v2.to_hex()]));
    assert!(
        !env.path().join(format!("device/state/deploy/{}", v2.to_hex())).exists(),
        "the bad deployment is collected"
    );

    // The branch still points at the bad commit: nothing is downloaded, nothing changes.
    let s = update(&config);
    assert_eq!(s["skipped_bad_commit"], v2.to_hex());
    assert_eq!((s["requests"].as_u64(), s["chunks_downloaded"].as_u64()), (Some(1), Some(0)));
    assert_eq!(running(&env), v1.to_hex());

    // A newer, good release is accepted.
    let v3 = env.commit(3, "3");
    let s = update(&config);
    assert_eq!(s["to"], v3.to_hex());
    assert_eq!(running(&env), v3.to_hex());
    assert_eq!(status(&config)["trial"], serde_json::Value::Null);
}

#[test]
fn the_application_marks_the_trial_good() {
    let env = Env::new();
    env.commit(1, "1");
    let config = env.device(&health(&env, "require_mark_good = true\n").replace("deadline = 3", "deadline = 20"));
    let mut child = crate::harness::spawn_update(&config);
    // The update waits for the application; status shows the trial meanwhile.
    let deadline = Instant::now() + Duration::from_secs(15);
    while status(&config)["trial"]["switched"] != true {
        assert!(Instant::now() < deadline, "no switched trial appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, out, err) = ferryd(&config, &["mark-good"]);
    assert!(ok && out.contains("marked"), "{out} {err}");
    let status_code = child.wait().unwrap();
    assert!(status_code.success());
    let st = status(&config);
    assert_eq!(st["trial"], serde_json::Value::Null);
    assert_eq!(st["current"]["version"], "1");
    let (ok, out, _) = ferryd(&config, &["mark-good"]);
    assert!(ok && out.contains("nothing to do"));
}

#[test]
fn boot_check_rolls_back_after_bootlimit_boots() {
    let env = Env::new();
    let v1 = env.commit(1, "1");
    let config = env.device(&health(&env, "bootlimit = 2\n"));
    update(&config);
    // v3 passes its checks, but the agent dies right after the switch, before the trial
    // could end, as if power was cut; the device then reboots over and over.
    let v3 = env.commit(3, "3");
    let out = crate::harness::crashed_update(&config, "state-saved:1");
    assert!(!out.status.success());
    assert_eq!(running(&env), v3.to_hex());
    assert_eq!(status(&config)["trial"]["commit"], v3.to_hex());
    for boot in 1..=2 {
        let (ok, out, err) = ferryd(&config, &["boot-check"]);
        assert!(ok && out.contains(&format!("boot {boot} of 2")), "{out} {err}");
    }
    let (ok, out, err) = ferryd(&config, &["boot-check"]);
    assert!(ok && out.contains("rolled back"), "{out} {err}");
    assert_eq!(running(&env), v1.to_hex());
    let st = status(&config);
    assert!(st["last_rollback"]["reason"].as_str().unwrap().contains("bootlimit 2"), "{st}");
    let (ok, out, _) = ferryd(&config, &["boot-check"]);
    assert!(ok && out.contains("no deployment on trial"));
}

#[test]
fn a_pending_trial_is_finished_by_the_next_update() {
    let env = Env::new();
    env.commit(1, "1");
    let config = env.device(&health(&env, ""));
    update(&config);
    let v3 = env.commit(3, "3");
    let out = crate::harness::crashed_update(&config, "switched:1");
    assert!(!out.status.success());
    assert_eq!(status(&config)["trial"]["commit"], v3.to_hex());
    let s = update(&config);
    assert_eq!(s["up_to_date"], true);
    assert_eq!(status(&config)["trial"], serde_json::Value::Null, "the resumed trial passed");
    assert_eq!(running(&env), v3.to_hex());
}

#[test]
fn a_manual_rollback_returns_to_the_previous_release_for_good() {
    let env = Env::new();
    let v1 = env.commit(1, "1");
    let config = env.device("");
    update(&config);
    let v3 = env.commit(3, "3");
    update(&config);
    assert_eq!(running(&env), v3.to_hex());
    let (ok, out, err) = ferryd(&config, &["rollback", "--reason", "operator says so"]);
    assert!(ok && out.contains("rolled back"), "{out} {err}");
    assert_eq!(running(&env), v1.to_hex());
    let s = update(&config);
    assert_eq!(s["skipped_bad_commit"], v3.to_hex());
    assert_eq!(running(&env), v1.to_hex());
    let (ok, _, err) = ferryd(&config, &["rollback"]);
    assert!(!ok && err.contains("no previous deployment"), "{err}");
}

#[test]
fn a_failing_pre_switch_hook_installs_nothing_and_a_failing_post_switch_hook_rolls_back() {
    let env = Env::new();
    let v1 = env.commit(1, "1");
    let log = env.path().join("hook.log");
    let hooks = format!(
        "[hooks]\npre_switch = \"echo pre $FERRY_VERSION $(cat etc/version) >> {0} && ! grep -qx 2 etc/version\"\npost_switch = \"echo post $FERRY_VERSION >> {0} && ! grep -qx 3 etc/version\"\ntimeout = 5\n",
        log.display()
    );
    let config = env.device(&hooks);
    update(&config);
    assert_eq!(running(&env), v1.to_hex());

    // Release 2: the pre_switch hook (run inside the new deployment) refuses it.
    let v2 = env.commit(2, "2");
    let (ok, _, err) = ferryd(&config, &["update"]);
    assert!(!ok && err.contains("pre_switch hook") && err.contains("not installed"), "{err}");
    assert_eq!(running(&env), v1.to_hex());
    let st = status(&config);
    assert_eq!(st["last_result"], "aborted");
    assert_eq!(st["bad_commits"], serde_json::json!([v2.to_hex()]));

    // Release 3: switched, then the post_switch hook fails: back to 1.
    let v3 = env.commit(3, "3");
    let (ok, _, err) = ferryd(&config, &["update"]);
    assert!(!ok && err.contains("post_switch hook"), "{err}");
    assert_eq!(running(&env), v1.to_hex());
    let st = status(&config);
    assert_eq!(st["last_rollback"]["commit"], v3.to_hex());
    assert!(st["last_rollback"]["reason"].as_str().unwrap().contains("post_switch"), "{st}");

    let log = std::fs::read_to_string(log).unwrap();
    assert_eq!(log.lines().collect::<Vec<_>>(), ["pre 1 1", "post 1", "pre 2 2", "pre 3 3", "post 3"], "{log}");
}

#[test]
fn a_release_that_needs_a_reboot_reboots_and_its_trial_ends_after_it() {
    let env = Env::new();
    env.commit(1, "1");
    let log = env.path().join("reboots");
    let config = env.device(&format!("reboot_command = \"echo reboot >> {}\"\n{}", log.display(), health(&env, "")));
    update(&config);
    let v3 = env.commit_meta(3, "3", &[("reboot", "required")]);
    let s = update(&config);
    assert_eq!(s["rebooting"], true, "{s}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "reboot\n");
    assert_eq!(status(&config)["trial"]["commit"], v3.to_hex(), "the trial goes on after the reboot");
    // After the reboot: the boot check counts the boot, the daemon's first update ends the trial.
    let (ok, out, _) = ferryd(&config, &["boot-check"]);
    assert!(ok && out.contains("boot 1 of 3"), "{out}");
    update(&config);
    assert_eq!(status(&config)["trial"], serde_json::Value::Null);
    assert_eq!(running(&env), v3.to_hex());
}

#[test]
fn url_health_checks_pass_on_2xx_and_fail_otherwise() {
    let env = Env::new();
    env.commit(1, "1");
    let ok_url = format!("http://{}/v1/branches/main", env.addr);
    let config = env.device(&format!("[health]\nurls = [\"{ok_url}\"]\ndeadline = 2\ninterval = 1\n"));
    let s = update(&config);
    assert_eq!(s["version"], "1");
    assert_eq!(status(&config)["trial"], serde_json::Value::Null);
    // The same device, now checking a URL that answers 404: release 3 is rolled back.
    let bad_url = format!("http://{}/v1/branches/no-such-branch", env.addr);
    let text = std::fs::read_to_string(&config).unwrap().replace(&ok_url, &bad_url);
    std::fs::write(&config, text).unwrap();
    env.commit(3, "3");
    let (ok, _, err) = ferryd(&config, &["update"]);
    assert!(!ok && err.contains("404"), "{err}");
    assert_eq!(status(&config)["current"]["version"], "1");
}

/// A hook that writes more than a pipe holds (64 KiB) to stderr used to block on the full
/// pipe, "time out" and get its release marked bad.
#[test]
fn a_hook_writing_70_kb_to_stderr_does_not_deadlock_on_its_pipe() {
    let env = Env::new();
    env.commit(1, "1");
    let hooks = "[hooks]\npre_switch = \"head -c 71680 /dev/zero | tr '\\\\0' x >&2; echo done >&2\"\ntimeout = 5\n";
    let config = env.device(hooks);
    let started = Instant::now();
    let s = update(&config);
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let v2 = env.commit(2, "2");
    assert_eq!(update(&config)["to"], v2.to_hex());
    assert_eq!(running(&env), v2.to_hex());
    assert_eq!(status(&config)["bad_commits"], serde_json::json!([]), "{s}");
}

/// A hook that hangs is killed at its timeout together with what it started, and the
/// failure report carries the tail of what it printed, not all of it.
#[test]
fn a_hung_hook_is_killed_with_its_children_and_reports_the_tail_of_its_output() {
    let env = Env::new();
    env.commit(1, "1");
    let pid_file = env.path().join("child.pid");
    let hooks = format!(
        "[hooks]\npre_switch = \"sleep 300 & echo $! > {}; head -c 100000 /dev/zero | tr '\\\\0' y >&2; echo last-words >&2; sleep 300\"\ntimeout = 1\n",
        pid_file.display()
    );
    let config = env.device(&hooks);
    let started = Instant::now();
    let (ok, _, err) = ferryd(&config, &["update"]);
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    assert!(!ok && err.contains("did not finish within 1 s"), "{err}");
    assert!(err.contains("last-words") && err.len() < 16 * 1024, "the tail only: {} bytes", err.len());
    let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
    // The background sleep was in the hook's process group: it is gone (or a zombie whose
    // parent, the shell, was killed too and which init reaps).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let gone = stat.is_empty() || stat.split_whitespace().nth(2) == Some("Z");
        if gone {
            break;
        }
        assert!(Instant::now() < deadline, "the hook's child {pid} outlived the timeout: {stat}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh device whose first release fails its trial has nothing to roll back to. It used
/// to be stuck for good ("there is no previous deployment to roll back to" on every later
/// update, on trial forever); now the release stays, flagged bad, and the next is taken.
#[test]
fn a_first_release_that_fails_its_trial_stays_flagged_bad_until_a_newer_one() {
    let env = Env::new();
    let bad = env.commit(2, "1"); // etc/version is 2: the health check fails
    let config = env.device(&health(&env, ""));
    let (ok, _, err) = ferryd(&config, &["update"]);
    assert!(!ok && err.contains("no earlier deployment to roll back to"), "{err}");
    assert_eq!(running(&env), bad.to_hex(), "it keeps running what it has");
    let st = status(&config);
    assert_eq!(st["trial"], serde_json::Value::Null, "the trial ended: {st}");
    assert_eq!(st["last_result"], "failed");
    assert_eq!(st["bad_commits"], serde_json::json!([bad.to_hex()]));
    // Nothing more to do until something newer: no error, no retry, no trial.
    let s = update(&config);
    assert_eq!((s["to"].as_str(), s["up_to_date"].as_bool()), (Some(bad.to_hex().as_str()), Some(true)), "{s}");
    let (ok, out, _) = ferryd(&config, &["mark-good"]);
    assert!(ok && out.contains("no deployment is on trial"), "{out}");
    // The fixed release is installed as usual, with the bad one as its previous.
    let fixed = env.commit(3, "2");
    assert_eq!(update(&config)["to"], fixed.to_hex());
    assert_eq!(running(&env), fixed.to_hex());
    assert_eq!(status(&config)["trial"], serde_json::Value::Null);
}

#[test]
fn the_library_reports_a_failed_trial_as_such() {
    use ferry_client::error::{retryable, Failure};
    let env = Env::new();
    let v1 = env.commit(1, "1");
    let path = env.device(&health(&env, ""));
    update(&path);
    env.commit(2, "2");
    let config = ferry_client::Config::load(&path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let e = rt.block_on(ferry_client::update::update(&config)).unwrap_err();
    assert!(matches!(Failure::of(&e), Some(Failure::TrialFailed(m)) if m.contains("rolled back to")), "{e:#}");
    assert!(!retryable(&e));
    assert_eq!(running(&env), v1.to_hex());
}
