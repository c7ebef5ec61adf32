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
            "insecure_http = true\nserver = \"http://{}\"\nchannel = \"stable\"\nstate_dir = \"{}\"\ncurrent_link = \"{}\"\nroot_keys = [\"{}\"]\nhardware = \"rev-a\"\n",
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

#[test]
fn a_working_copy_is_linked_pinned_and_unlinked() {
    let env = Env::new();
    let c1 = env.commit(1, "1");
    let dev = env.device("");
    update(&dev);
    let work = env.path().join("my-checkout");
    std::fs::create_dir_all(work.join("bin")).unwrap();
    std::fs::write(work.join("bin/app"), "dev build").unwrap();
    let (ok, _, err) = ferryd(&dev, &["dev", "--link", work.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_link(env.current()).unwrap(), work);
    let st = status(&dev);
    assert_eq!((st["pinned"].as_bool(), st["dev"]["link"].as_str()), (Some(true), work.to_str()));
    // The fleet moves on; the board stays on the working copy.
    env.commit(2, "2");
    assert_eq!(update(&dev)["pinned"], true);
    assert_eq!(std::fs::read_link(env.current()).unwrap(), work);
    // In words: the board runs the working copy, not "up to date" with the fleet.
    let (ok, out, err) = ferryd(&dev, &["update"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!(
            "running the working copy {} instead of a release: no update looked for",
            work.display()
        )) && out.contains("`ferryd dev --off` goes back to 1"),
        "{out}"
    );
    let (ok, _, err) = ferryd(&dev, &["dev", "--link", "relative/path"]);
    assert!(!ok && err.contains("absolute path"), "{err}");
    // Deploying the commit the working copy replaced puts it back (and stays pinned).
    assert_eq!(deploy(&dev, &c1.to_hex())["pinned"], true);
    assert!(std::fs::read_link(env.current()).unwrap().ends_with(c1.to_hex()));
    assert_eq!(status(&dev)["dev"], Value::Null);
    let (ok, out, err) = ferryd(&dev, &["update"]);
    assert!(ok && out.starts_with("pinned at 1 (") && out.contains("`ferryd unpin`"), "{out}{err}");
    // Off: back to the deployment, unpinned as before `dev --link`, and the next update goes on.
    let (ok, _, _) = ferryd(&dev, &["unpin"]);
    assert!(ok);
    let (ok, _, err) = ferryd(&dev, &["dev", "--link", work.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (ok, _, err) = ferryd(&dev, &["dev", "--off"]);
    assert!(ok, "{err}");
    assert!(std::fs::read_link(env.current()).unwrap().ends_with(c1.to_hex()));
    assert_eq!(status(&dev)["pinned"], false);
    assert_eq!(update(&dev)["version"], "2");
    let (ok, _, err) = ferryd(&dev, &["dev", "--off"]);
    assert!(!ok && err.contains("no working copy"), "{err}");
}

/// Every file under `dir` with its inode and content.
fn snapshot(dir: &Path) -> Vec<(String, u64, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        out.push((e.file_name().to_string_lossy().into_owned(), m.ino(), std::fs::read(e.path()).unwrap()));
    }
    out.sort();
    out
}

#[test]
fn unlock_gives_a_writable_copy_and_never_touches_the_object_store() {
    let env = Env::new();
    let c1 = env.commit(1, "1");
    let dev = env.device("");
    update(&dev);
    let objects = env.path().join("device/state/objects");
    let before = snapshot(&objects);
    let (ok, _, err) = ferryd(&dev, &["unlock"]);
    assert!(ok, "{err}");
    let copy = std::fs::read_link(env.current()).unwrap();
    assert!(copy.starts_with(env.path().join("device/state/unlocked")), "{}", copy.display());
    // Edit every regular file of the copy in place.
    let mut edited = 0;
    let mut stack = vec![copy.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                std::fs::write(e.path(), b"edited by a developer").unwrap();
                edited += 1;
            }
        }
    }
    assert!(edited > 10);
    assert_eq!(snapshot(&objects), before, "an edit reached the object store");
    let (ok, out, err) = ferryd(&dev, &["fsck"]);
    assert!(ok, "fsck after edits in the unlocked copy: {out}{err}");
    // Not pinned: the next deployment replaces the copy and drops it.
    let c2 = env.commit(2, "2");
    let s = update(&dev);
    assert_eq!((s["from"].as_str(), s["to"].as_str()), (Some(c1.to_hex().as_str()), Some(c2.to_hex().as_str())));
    assert!(!copy.exists(), "the unlocked copy was kept");
    // With --keep it stays after the next deployment.
    let (ok, _, err) = ferryd(&dev, &["unlock", "--keep"]);
    assert!(ok, "{err}");
    let kept = std::fs::read_link(env.current()).unwrap();
    env.commit(3, "3");
    update(&dev);
    assert!(kept.is_dir(), "the kept copy was removed");
    assert_eq!(status(&dev)["dev"], Value::Null);
}

#[test]
fn a_pinned_device_prefetches_only_when_asked() {
    let env = Env::new();
    let c1 = env.commit(1, "1");
    let dev = env.device("");
    update(&dev);
    let (ok, _, _) = ferryd(&dev, &["pin"]);
    assert!(ok);
    let c2 = env.commit(2, "2");
    let (ok, out, err) = ferryd(&dev, &["update", "--prefetch", "--json"]);
    assert!(ok, "{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert!(s["chunks_downloaded"].as_u64().unwrap() > 0, "{s}");
    assert_eq!((s["pinned"].as_bool(), s["to"].as_str()), (Some(true), Some(c1.to_hex().as_str())));
    assert_eq!(status(&dev)["current"]["commit"], c1.to_hex());
    // Unpinned, the update needs no chunk from the server: they were prefetched.
    let (ok, _, _) = ferryd(&dev, &["unpin"]);
    assert!(ok);
    let s = update(&dev);
    assert_eq!((s["to"].as_str(), s["chunks_downloaded"].as_u64()), (Some(c2.to_hex().as_str()), Some(0)));
}
