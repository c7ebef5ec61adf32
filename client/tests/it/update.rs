//! End-to-end updates: fresh install, upgrades, skips, going back and forth, trust.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ferry_publisher::checkout::checkout;
use ferry_publisher::import::NoProgress;
use ferry_store::Id;

use crate::harness::{crashed_update, ferryd, patch_cost, spawn_daemon, update, Env};

/// Every path under `root` with its kind, mode and content (or target).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    fn go(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, (u32, Vec<u8>)>) {
        let p = root.join(rel);
        let m = std::fs::symlink_metadata(&p).unwrap();
        let content = if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                go(root, &rel.join(e.unwrap().file_name()), out);
            }
            b"<dir>".to_vec()
        } else if m.file_type().is_symlink() {
            std::fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes()
        } else {
            std::fs::read(&p).unwrap()
        };
        out.insert(rel.to_path_buf(), (m.mode(), content));
    }
    let mut out = BTreeMap::new();
    go(root, Path::new(""), &mut out);
    out
}

fn deployed(env: &Env) -> PathBuf {
    std::fs::read_link(env.current()).unwrap()
}

/// The bytes a device on `from` must download for `to`: chunk frames, exactly.
fn chunk_cost(env: &Env, from: Option<Id>, to: Id) -> (u64, u64) {
    let to = env.repo.read_commit(&to).unwrap();
    let from = from.map(|f| env.repo.read_commit(&f).unwrap());
    let c = ferry_delta::transfer_cost(&env.repo, from.as_ref(), &to).unwrap();
    (c.chunks, c.compressed_bytes + c.chunks * ferry_delta::pack::FRAME_HEADER as u64)
}

/// Encoded size of every tree of a commit plus the commit itself.
fn metadata_bytes(env: &Env, id: Id) -> u64 {
    let c = env.repo.read_commit(&id).unwrap();
    let mut total = env.repo.read_object_bytes(&id).unwrap().len() as u64;
    let mut stack = vec![c.root];
    while let Some(t) = stack.pop() {
        total += env.repo.read_object_bytes(&t).unwrap().len() as u64 + 36;
        for e in env.repo.read_tree(&t).unwrap().entries {
            if let ferry_store::EntryKind::Dir { tree } = e.kind {
                stack.push(tree);
            }
        }
    }
    total
}

#[test]
fn fresh_install_upgrade_and_skip() {
    let env = Env::new();
    let v1 = env.commit(1, "1");
    let config = env.device("");

    // Nothing → v1: everything is downloaded, and the deployment equals `ferry checkout`.
    let s = update(&config);
    assert_eq!(s["from"], serde_json::Value::Null);
    assert_eq!(s["to"], v1.to_hex());
    let (n, bytes) = chunk_cost(&env, None, v1);
    assert_eq!((s["chunks_downloaded"].as_u64().unwrap(), s["chunk_bytes_downloaded"].as_u64().unwrap()), (n, bytes));
    let out = env.path().join("checkout-v1");
    checkout(&env.repo, &v1, &out, &NoProgress).unwrap();
    assert_eq!(snapshot(&deployed(&env)), snapshot(&out));
    // Branch, commit, every tree in one request, the chunks in one batch.
    assert_eq!(s["requests"].as_u64().unwrap(), 4, "{s}");

    // v1 → v2: only the chunks v1 lacks, most as patches against v1's files, exactly as
    // `ferry diff` plans them; unchanged files share their inode.
    let v2 = env.commit(2, "2");
    let s = update(&config);
    let (n, plain_bytes) = chunk_cost(&env, Some(v1), v2);
    let patched = patch_cost(&env, v1, v2);
    assert_eq!(
        (s["chunks_downloaded"].as_u64().unwrap(), s["chunk_bytes_downloaded"].as_u64().unwrap()),
        (n, patched.transfer_bytes),
        "{s}"
    );
    assert!(s["patches"].as_u64().unwrap() > 0 && s["patch_fallbacks"].as_u64().unwrap() == 0, "{s}");
    assert!(patched.transfer_bytes < plain_bytes * 4 / 5, "patches {patched:?} against {plain_bytes} bytes plain");
    // One more request than a fresh install: the patches, then the chunks no file covers.
    assert_eq!(s["requests"].as_u64().unwrap(), 5, "{s}");
    assert!(s["files_reused"].as_u64().unwrap() > s["files"].as_u64().unwrap() / 2, "{s}");
    let old = env.path().join(format!("device/state/deploy/{}", v1.to_hex()));
    let new = deployed(&env);
    let same = Path::new("etc/app/conf0.conf");
    let unchanged = std::fs::read_dir(new.join("lib"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            !p.is_symlink()
                && std::fs::read(p).unwrap()
                    == std::fs::read(old.join("lib").join(p.file_name().unwrap())).unwrap_or_default()
        })
        .expect("some library is unchanged between v1 and v2");
    let rel = unchanged.strip_prefix(&new).unwrap();
    assert_eq!(std::fs::metadata(new.join(rel)).unwrap().ino(), std::fs::metadata(old.join(rel)).unwrap().ino());
    let _ = same;

    // v2 → v4, skipping v3: the patches against v2 that `ferry diff` plans, plus the framing
    // and the trees.
    env.commit(3, "3");
    let v4 = env.commit(4, "4");
    let s = update(&config);
    let bytes = patch_cost(&env, v2, v4).transfer_bytes;
    assert_eq!(s["chunk_bytes_downloaded"].as_u64().unwrap(), bytes);
    let total = s["bytes_downloaded"].as_u64().unwrap();
    assert!(total <= bytes + metadata_bytes(&env, v4) + 16 * 1024, "{total} > {bytes} + metadata: {s}");
    let out = env.path().join("checkout-v4");
    checkout(&env.repo, &v4, &out, &NoProgress).unwrap();
    assert_eq!(snapshot(&deployed(&env)), snapshot(&out));

    // Nothing new: one request, answered 304.
    let s = update(&config);
    assert_eq!(s["up_to_date"], true);
    assert_eq!(s["requests"], 1);
    assert_eq!(s["bytes_downloaded"], 0);

    // Only the current and the previous deployment are kept; the device's fsck passes.
    let kept: Vec<String> = std::fs::read_dir(env.path().join("device/state/deploy"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    let (ok, _, err) = ferryd(&config, &["fsck"]);
    assert!(ok, "{err}");
    let (ok, out, _) = ferryd(&config, &["status", "--json"]);
    assert!(ok);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["current"]["version"], "4");
    assert_eq!(st["previous"]["commit"], v2.to_hex());
    assert_eq!(st["last_result"], "up-to-date");
}

#[test]
fn going_back_and_forth_downloads_nothing() {
    let env = Env::new();
    env.commit(1, "1");
    let config = env.device("");
    update(&config);
    env.commit(2, "2");
    update(&config);
    // Releases 3 and 4 carry the trees of 1 and 2 again.
    env.commit(1, "3");
    let s = update(&config);
    assert_eq!((s["chunks_downloaded"].as_u64(), s["files_reused"] == s["files"]), (Some(0), true), "{s}");
    env.commit(2, "4");
    let s = update(&config);
    assert_eq!(s["chunks_downloaded"], 0, "{s}");
}

#[test]
fn untrusted_commits_and_other_hardware_are_refused_and_change_nothing() {
    let env = Env::new();
    let v1 = env.commit(1, "1");
    let config = env.device("");
    update(&config);
    let before = deployed(&env);
    assert!(before.ends_with(v1.to_hex()));

    // A device that trusts only another key refuses v2 and keeps running v1.
    env.commit(2, "2");
    let text = std::fs::read_to_string(&config).unwrap().replace("ci.key.pub", "other.key.pub");
    std::fs::write(&config, text).unwrap();
    let (ok, _, err) = ferryd(&config, &["update"]);
    assert!(!ok && err.contains("signed by 0 of the trusted keys"), "{err}");
    assert_eq!(deployed(&env), before);

    // A device of another hardware revision refuses it too.
    let text =
        std::fs::read_to_string(&config).unwrap().replace("other.key.pub", "ci.key.pub").replace("rev-a", "rev-z");
    std::fs::write(&config, text).unwrap();
    let (ok, _, err) = ferryd(&config, &["update"]);
    assert!(!ok && err.contains("rev-z"), "{err}");
    assert_eq!(deployed(&env), before);
    let (_, out, _) = ferryd(&config, &["status", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["last_result"], "error");
    assert!(st["last_error"].as_str().unwrap().contains("rev-z"));
}

#[test]
fn device_fsck_names_a_file_changed_behind_the_agents_back() {
    let env = Env::new();
    env.commit(1, "1");
    let config = env.device("");
    update(&config);
    let victim = deployed(&env).join("etc/version");
    std::fs::write(&victim, "tampered\n").unwrap();
    let (ok, out, _) = ferryd(&config, &["fsck"]);
    assert!(!ok && out.contains("etc/version"), "{out}");
}

#[test]
fn the_daemon_follows_the_branch() {
    let mut env = Env::new();
    env.commit(1, "1");
    let config = env.device("poll_interval = 1\n");
    // `run --json` prints a line per check.
    let (daemon, rx) = spawn_daemon(&config);
    // Waits for the check that matches, returning the lines before it.
    let wait_for = |what: &str, matches: &dyn Fn(&serde_json::Value) -> bool| -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| panic!("the daemon never printed {what}: {before:?}"));
            if matches(&line) {
                return before;
            }
            before.push(line);
        }
    };
    let updated_to = |v: &'static str| move |l: &serde_json::Value| l["version"] == v && l["up_to_date"] == false;
    assert!(wait_for("the update to 1", &updated_to("1")).is_empty(), "the first check did not update");
    // The device says so too.
    let (_, out, _) = ferryd(&config, &["status", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["current"]["version"], "1", "{out}");
    let id2 = env.commit(2, "2");
    let between = wait_for("the update to 2", &updated_to("2"));
    assert!(between.iter().all(|l| l["up_to_date"] == true && l["version"] == "1"), "{between:?}");
    let (_, out, _) = ferryd(&config, &["status", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["current"]["commit"], id2.to_hex(), "{out}");
    // With the server gone, a check fails: a line says why and when the next try is.
    env.kill_server();
    wait_for("an error", &|l| {
        l["error"].as_str().is_some_and(|e| !e.is_empty()) && l["retry_in_seconds"].as_u64().is_some_and(|s| s >= 1)
    });
    drop(daemon);
}

#[test]
fn an_update_the_disk_cannot_hold_is_refused_before_downloading() {
    let env = Env::new();
    env.commit(1, "1");
    let config = env.device("min_free_bytes = 1125899906842624\n");
    let (ok, _, err) = ferryd(&config, &["update", "--json"]);
    assert!(!ok && err.contains("not enough space") && err.contains("nothing was changed"), "{err}");
    assert!(!env.current().exists());
    let staged = std::fs::read_dir(env.path().join("device/state/staging")).unwrap().count();
    assert_eq!(staged, 0, "chunks were downloaded before the space check");
}

/// Chunks an interrupted update left that a power cut damaged (the VM soak saw chunk files
/// of zeros) are found before the download, not one per failed attempt while files are
/// built: with one attempt allowed, the next update fetches them again and finishes. The
/// chunks are written in place into the objects being built (`objects/<id>.part`); five of
/// them lose their bytes.
#[test]
fn damaged_staged_chunks_are_fetched_again_in_the_same_attempt() {
    let env = Env::new();
    let v1 = env.commit(1, "1");
    let config = env.device("retries = 1\nbatch_bytes = 65536\n");
    let out = crashed_update(&config, "chunk-staged:40");
    assert!(!out.status.success(), "the update did not stop at its 40th staged chunk");
    // Where each chunk of v1 sits in the `.part` files, for chunks with one place only.
    let objects = env.path().join("device/state/objects");
    let mut places: std::collections::HashMap<Id, Vec<(PathBuf, usize, usize)>> = Default::default();
    let root = env.repo.read_commit(&v1).unwrap().root;
    ferry_store::read::walk(&env.repo, &root, |_, w| {
        if let ferry_store::read::Walked::File { meta, chunks, .. } = w {
            let object = ferry_client::local::file_object_id(&meta, &chunks);
            let mut at = 0usize;
            for c in &chunks {
                let end = at + c.len as usize;
                places.entry(c.id).or_default().push((objects.join(format!("{object}.part")), at, end));
                at = end;
            }
        }
        Ok(())
    })
    .unwrap();
    let intact = |p: &(PathBuf, usize, usize), id: &Id| {
        std::fs::read(&p.0).ok().and_then(|b| b.get(p.1..p.2).map(|r| Id::of(r) == *id)).unwrap_or(false)
    };
    let mut held: Vec<Id> =
        places.iter().filter(|(id, ps)| ps.iter().all(|p| intact(p, id))).map(|(id, _)| *id).collect();
    held.sort();
    assert!(held.len() >= 40, "{} chunks written in place", held.len());
    // Five of them, each in one place, keep their length but lose their bytes.
    let damaged: Vec<Id> = held.iter().filter(|id| places[*id].len() == 1).take(5).copied().collect();
    assert_eq!(damaged.len(), 5);
    for id in &damaged {
        let (path, start, end) = places[id][0].clone();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[start..end].fill(0);
        std::fs::write(&path, bytes).unwrap();
    }
    let (ok, out, err) = ferryd(&config, &["update", "--json"]);
    assert!(ok, "the update after the damage failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(!err.contains("attempt failed"), "it took more than one attempt: {err}");
    // The five were downloaded again, the intact ones were not.
    let (ok, _, err) = ferryd(&config, &["fsck"]);
    assert!(ok, "{err}");
    let fresh = Env::new();
    fresh.commit(1, "1");
    let full = update(&fresh.device(""));
    assert_eq!(
        v["chunks_downloaded"].as_u64().unwrap(),
        full["chunks_downloaded"].as_u64().unwrap() - (held.len() as u64 - 5),
        "{v}"
    );
}

/// Branch heads are not signed: a server (or whoever answers in its place) naming an older
/// signed commit as the head used to get it installed. Now it is refused unless the device
/// allows downgrades, and the device says it follows a branch (development mode).
#[test]
fn a_branch_head_older_than_the_running_release_is_refused() {
    let env = Env::new();
    env.commit(1, "10");
    let v2 = env.commit(2, "20");
    let config = env.device("");
    assert_eq!(update(&config)["to"], v2.to_hex());
    // The branch moves to a commit whose version is older than what runs.
    let old = env.commit(3, "15");
    let (ok, _, err) = ferryd(&config, &["update"]);
    assert!(!ok && err.contains("refusing a downgrade") && err.contains("older than the running 20"), "{err}");
    assert_eq!(deployed(&env).file_name().unwrap().to_str().unwrap(), v2.to_hex());
    let (ok, out, _) = ferryd(&config, &["status"]);
    assert!(ok && out.contains("warning:  following branch main: development mode"), "{out}");
    // A developer who means it.
    let config = env.device("allow_downgrade = true\n");
    assert_eq!(update(&config)["to"], old.to_hex());
}

#[test]
fn the_library_tells_a_refusal_from_a_network_failure() {
    use ferry_client::error::{retryable, Failure};
    let mut env = Env::new();
    env.commit(1, "1");
    let path = env.device("retries = 2\n");
    update(&path);
    env.commit(2, "2");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    // Signed by a key the device does not trust: refused, at once, and final.
    let text = std::fs::read_to_string(&path).unwrap().replace("ci.key.pub", "other.key.pub");
    std::fs::write(&path, &text).unwrap();
    let config = ferry_client::Config::load(&path).unwrap();
    let e = rt.block_on(ferry_client::update::update(&config)).unwrap_err();
    assert!(
        matches!(Failure::of(&e), Some(Failure::Refused(m)) if m.contains("signed by 0 of the trusted keys")),
        "{e:#}"
    );
    assert!(!retryable(&e));

    // The server gone: neither a refusal nor a failed trial, so the next check tries again.
    env.kill_server();
    let config = ferry_client::Config::load(&env.device("retries = 2\n")).unwrap();
    let e = rt.block_on(ferry_client::update::update(&config)).unwrap_err();
    assert!(Failure::of(&e).is_none(), "{e:#}");
    assert!(retryable(&e));
}

/// Off a terminal, `ferryd update` says each step as it begins, the trial included, so a
/// log shows where a long update is (a terminal gets one line redrawn instead).
#[test]
fn an_update_says_each_step_as_it_begins() {
    let env = Env::new();
    env.commit(1, "1");
    let config = env.device("[health]\ncommands = [\"true\"]\ndeadline = 5\ninterval = 1\n");
    let (ok, _, err) = ferryd(&config, &["update"]);
    assert!(ok, "{err}");
    let steps: Vec<&str> = err.lines().filter(|l| !l.contains(" WARN ") && !l.contains(" INFO ")).collect();
    let expect = [
        "checking for updates",
        "fetching the release's trees",
        "planning",
        "receiving ",
        "assembling the deployment (",
        "switching to 1",
        "trial: healthy for 0 s",
    ];
    let mut at = 0;
    for e in expect {
        let found = steps[at..].iter().position(|l| l.starts_with(e));
        assert!(found.is_some(), "no {e:?} after line {at} in {steps:?}");
        at += found.unwrap() + 1;
    }
    // Nothing to do: nothing switched.
    let (ok, _, err) = ferryd(&config, &["update"]);
    assert!(ok && err.contains("checking for updates") && !err.contains("switching"), "{err}");
}

/// Logs off a terminal carry no colour escapes; written to the journal (stderr is the
/// stream `JOURNAL_STREAM` names) they carry no time of their own, the journal stamps them;
/// a `JOURNAL_STREAM` inherited by a process whose stderr went elsewhere changes nothing.
#[test]
fn logs_are_plain_off_a_terminal_and_without_times_in_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    env.commit(1, "1");
    let config = env.device("");
    let run = |journal: Option<String>, name: &str| -> String {
        let path = env.path().join(name);
        let file = std::fs::File::create(&path).unwrap();
        let meta = file.metadata().unwrap();
        let mut cmd = std::process::Command::new(crate::harness::ferryd_bin());
        cmd.arg("--config").arg(&config).arg("update").stderr(file).env_remove("JOURNAL_STREAM");
        match journal {
            Some(j) if j == "this" => cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino())),
            Some(j) => cmd.env("JOURNAL_STREAM", j),
            None => &mut cmd,
        };
        assert!(cmd.status().unwrap().success());
        std::fs::read_to_string(&path).unwrap()
    };
    let warning = |log: &str| log.lines().find(|l| l.contains("development mode")).unwrap().to_string();
    let plain = run(None, "plain.log");
    assert!(!plain.contains('\u{1b}'), "{plain:?}");
    assert!(warning(&plain).starts_with("20"), "a time first: {plain}");
    let journal = run(Some("this".into()), "journal.log");
    assert!(!journal.contains('\u{1b}') && warning(&journal).trim_start().starts_with("WARN"), "{journal:?}");
    let inherited = run(Some("1:2".into()), "inherited.log");
    assert!(warning(&inherited).starts_with("20"), "{inherited}");
}
