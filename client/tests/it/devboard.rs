//! A developer's dev board: deploying any commit by id, version or branch, which pins the
//! device, and a pinned device ignoring the fleet until unpinned.

use std::path::Path;

use serde_json::Value;

use crate::channels::{promote, set_up_keys};
use crate::harness::{ferryd, update, Env};

fn deploy(config: &Path, rev: &str) -> Value {
    let (ok, out, err) = ferryd(config, &["deploy", rev, "--json"]);
    assert!(ok, "ferryd deploy {rev} failed: {err}");
    serde_json::from_str(&out).unwrap()
}

fn status(config: &Path) -> Value {
    let (ok, out, err) = ferryd(config, &["status", "--json"]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn deploy_by_id_version_or_branch_pins_the_board() {
    let env = Env::new();
    let (c1, c2) = (env.commit(1, "1"), env.commit(2, "2"));
    let dev = env.device("");
    assert_eq!(update(&dev)["to"], c2.to_hex());

    // An older commit by id: no downgrade check for a developer's explicit choice.
    let s = deploy(&dev, &c1.to_hex());
    assert_eq!((s["to"].as_str(), s["pinned"].as_bool()), (Some(c1.to_hex().as_str()), Some(true)));
    assert_eq!(status(&dev)["pinned"], true);
    // The branch moves on; the pinned board looks for nothing and downloads nothing.
    let c3 = env.commit(3, "3");
    let s = update(&dev);
    assert_eq!(
        (s["pinned"].as_bool(), s["up_to_date"].as_bool(), s["to"].as_str()),
        (Some(true), Some(true), Some(c1.to_hex().as_str()))
    );
    assert_eq!(s["bytes_downloaded"], 0);

    // By version, and by branch.
    assert_eq!(deploy(&dev, "2")["to"], c2.to_hex());
    assert_eq!(deploy(&dev, "main")["to"], c3.to_hex());
    let (ok, _, err) = ferryd(&dev, &["deploy", "9.9.9"]);
    assert!(!ok && err.contains("names no commit, version or branch"), "{err}");
    assert_eq!(status(&dev)["current"]["commit"], c3.to_hex(), "a failed deploy changed nothing");

    // Unpinned, it follows the branch again.
    deploy(&dev, "1");
    let (ok, _, _) = ferryd(&dev, &["unpin"]);
    assert!(ok);
    assert_eq!(update(&dev)["to"], c3.to_hex());
    assert_eq!(status(&dev)["pinned"], false);
}

#[test]
fn a_pinned_device_ignores_a_promotion() {
    let env = Env::new();
    set_up_keys(&env);
    let (c1, c2) = (env.commit(1, "1"), env.commit(2, "2"));
    promote(&env, Some(c1), None, "stable", false).unwrap();
    let dev = env.path().join("device");
    std::fs::create_dir_all(&dev).unwrap();
    let config = dev.join("ferryd.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"http://{}\"\nchannel = \"stable\"\nstate_dir = \"{}\"\ncurrent_link = \"{}\"\nroot_keys = [\"{}\"]\nhardware = \"rev-a\"\n",
            env.addr,
            dev.join("state").display(),
            dev.join("current").display(),
            env.path().join("root.key.pub").display()
        ),
    )
    .unwrap();
    assert_eq!(update(&config)["to"], c1.to_hex());
    let (ok, _, _) = ferryd(&config, &["pin"]);
    assert!(ok);
    promote(&env, Some(c2), None, "stable", false).unwrap();
    let s = update(&config);
    assert_eq!((s["to"].as_str(), s["pinned"].as_bool()), (Some(c1.to_hex().as_str()), Some(true)));
    let (ok, _, _) = ferryd(&config, &["unpin"]);
    assert!(ok);
    assert_eq!(update(&config)["to"], c2.to_hex());
}
