//! The fleet's web UI in a real headless browser (Debian's chromium, driven over WebDriver by
//! chromedriver): sign in, see the fleet and a device's history, edit configuration, promote,
//! start and pause a rollout. Screenshots land in `$CARGO_TARGET_TMPDIR/web-ui/`.

use std::path::Path;

use ferry_fixtures::webdriver::Browser;
use serde_json::{json, Value};

fn ferry(args: &[&str]) -> String {
    crate::cmd::ok(args).trim().to_string()
}

#[test]
fn an_operator_runs_the_fleet_from_the_web_ui() {
    let t = tempfile::tempdir().unwrap();
    let p = |n: &str| t.path().join(n).display().to_string();
    ferry(&["init", "--repo", &p("repo")]);
    for k in ["root", "ci", "chan"] {
        ferry(&["keygen", "--out", &p(&format!("{k}.key"))]);
    }
    std::fs::create_dir_all(t.path().join("tree")).unwrap();
    std::fs::write(t.path().join("tree/app"), "release 1").unwrap();
    let c1 = ferry(&[
        "commit",
        "--repo",
        &p("repo"),
        "--branch",
        "main",
        "--tree",
        &p("tree"),
        "--version",
        "1",
        "--sign-key",
        &p("ci.key"),
        "--hardware",
        "rev-a",
    ]);
    let c1 = c1.lines().last().unwrap().to_string();
    ferry(&[
        "keys",
        "set",
        "--repo",
        &p("repo"),
        "--sign-key",
        &p("root.key"),
        "--root",
        &p("root.key.pub"),
        "--commit-key",
        &p("ci.key.pub"),
        "--channel-key",
        &p("chan.key.pub"),
    ]);
    let admin = ferry(&["admin", "token", "create", "--name", "ops", "--fleet", &p("fleet")]);
    let enrollment = ferry(&["admin", "token", "create", "--name", "factory", "--enrollment", "--fleet", &p("fleet")]);
    let server = crate::cmd::serve(&p("repo"), &["--fleet", &p("fleet"), "--channel-key", &p("chan.key")]);
    let url = server.1.clone();

    // Two devices enroll and check in.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let http = reqwest::Client::new();
    let post = |path: &str, token: &str, body: Value| -> Value {
        rt.block_on(async {
            let r = http
                .post(format!("{url}/v1/{path}"))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).unwrap())
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
            serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
        })
    };
    for serial in ["SN-UI-1", "SN-UI-2"] {
        let v =
            post("device/enroll", "", json!({ "serial": serial, "hardware": "rev-a", "enrollment_token": enrollment }));
        let token = v["device_token"].as_str().unwrap().to_string();
        post(
            "device/checkin",
            &token,
            json!({ "channel": "stable", "current_version": "0", "last_result": "up-to-date" }),
        );
    }

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-ui");
    std::fs::create_dir_all(&shots).unwrap();
    let b = Browser::start();
    b.go(&url);
    b.type_into("#token", &admin);
    b.click("#login");
    let table = b.wait_for("#devices tbody", "SN-UI-2");
    assert!(table.contains("SN-UI-1") && table.contains("stable"), "{table}");
    b.click("#devices tr[data-serial='SN-UI-1']");
    b.wait_for("#detail-serial", "SN-UI-1");
    b.wait_for("#events", "enrolled (rev-a)");
    b.screenshot(&shots, "fleet.png");

    // Configuration: set a fleet-wide key.
    b.click("#tab-config");
    b.type_into("#cfg-key", "LOG");
    b.type_into("#cfg-value", "debug");
    b.click("#cfg-set");
    b.wait_for("#cfg-values", "LOG");
    let level: Value = rt.block_on(async {
        let r = http.get(format!("{url}/v1/admin/config/fleet")).bearer_auth(&admin).send().await.unwrap();
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
    });
    assert_eq!(level["values"]["LOG"], "debug");

    // Channels: start a rollout first, then promote commit 1 to stable with the server's key.
    b.click("#tab-rollouts");
    b.type_into("#ro-channel", "stable");
    b.type_into("#ro-percent", "20");
    b.click("#ro-start");
    b.wait_for("#msg", "no document to start from");
    b.click("#tab-channels");
    b.type_into("#pr-channel", "stable");
    b.type_into("#pr-commit", &c1[..12]);
    b.click("#pr-submit");
    b.wait_for("#msg", "stable is now at serial 1");
    b.wait_for("#channel-list", "rev-a: 1");
    // The repository's routes need a token under --fleet: an admin token reads them.
    let served = |token: &str| {
        rt.block_on(async {
            http.get(format!("{url}/v1/channels/stable")).bearer_auth(token).send().await.unwrap().status().as_u16()
        })
    };
    assert_eq!((served(&admin), served("")), (200, 401));
    b.screenshot(&shots, "channels.png");

    // Rollouts: start, then pause from the table.
    b.click("#tab-rollouts");
    b.type_into("#ro-channel", "stable");
    b.type_into("#ro-percent", "20");
    b.click("#ro-start");
    b.wait_for("#rollout-list", "running");
    b.click("#rollout-list button[data-action='pause']");
    b.wait_for("#rollout-list", "paused");
    b.screenshot(&shots, "rollouts.png");

    // Everything done in the UI is in the audit log, by the token's name.
    b.click("#tab-audit");
    let audit = b.wait_for("#audit-list", "rollout pause");
    assert!(audit.contains("admin:ops") && audit.contains("promote") && audit.contains("config"), "{audit}");
    b.screenshot(&shots, "audit.png");
    eprintln!("screenshots in {}", shots.display());
}
