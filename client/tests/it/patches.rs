//! Patches: missing chunks sent compressed against the device's own old files (issue 6).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ferry_publisher::checkout::checkout;
use ferry_publisher::import::NoProgress;
use ferry_store::Id;

use crate::harness::{ferryd, patch_cost, update, Env};

/// Regular files under `root` (relative path → content).
fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn go(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(root.join(rel)).unwrap() {
            let e = e.unwrap();
            let rel = rel.join(e.file_name());
            let t = e.file_type().unwrap();
            if t.is_dir() {
                go(root, &rel, out);
            } else if t.is_file() {
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, Path::new(""), &mut out);
    out
}

/// The deployment `current` points at equals `ferry checkout` of `id`.
fn assert_deployed(env: &Env, id: Id) {
    let out = env.path().join(format!("checkout-{}", id.short()));
    if !out.exists() {
        checkout(&env.repo, &id, &out, &NoProgress).unwrap();
    }
    let current = std::fs::read_link(env.current()).unwrap();
    assert!(current.ends_with(id.to_hex()), "{}", current.display());
    assert!(files(&current) == files(&out), "the deployment differs from the commit");
}

/// The largest file that exists in both v1 and v2 with different content.
fn largest_changed_file(env: &Env) -> PathBuf {
    let (a, b) = (files(&env.tree(1)), files(&env.tree(2)));
    b.iter()
        .filter(|(p, c)| a.get(*p).is_some_and(|old| old != *c))
        .max_by_key(|(_, c)| c.len())
        .map(|(p, _)| p.clone())
        .unwrap()
}

fn plain_cost(env: &Env, from: Id, to: Id) -> u64 {
    let (from, to) = (env.repo.read_commit(&from).unwrap(), env.repo.read_commit(&to).unwrap());
    ferry_delta::transfer_cost(&env.repo, Some(&from), &to).unwrap().compressed_bytes
}

#[test]
fn a_changed_file_moved_to_another_directory_is_patched_against_its_old_path() {
    let env = Env::new();
    let v1 = env.commit(1, "1");
    let config = env.device("");
    update(&config);
    // In v2 the largest changed file also moves to a directory of its own.
    let moved = largest_changed_file(&env);
    let v2_tree = env.tree(2);
    std::fs::create_dir_all(v2_tree.join("moved")).unwrap();
    std::fs::rename(v2_tree.join(&moved), v2_tree.join("moved").join(moved.file_name().unwrap())).unwrap();
    let v2 = env.commit(2, "2");
    let s = update(&config);
    let expected = patch_cost(&env, v1, v2);
    // The device asked for exactly what the shared rule plans (the moved file patched
    // against its old path) and got it patched.
    assert_eq!(s["chunk_bytes_downloaded"].as_u64().unwrap(), expected.transfer_bytes, "{s}");
    assert_eq!(s["patch_fallbacks"].as_u64().unwrap(), 0, "{s}");
    assert!(expected.patched > 0 && expected.transfer_bytes < plain_cost(&env, v1, v2) * 4 / 5, "{expected:?}");
    // The same tree without the move costs about the same: the rename did not lose the reference.
    std::fs::rename(v2_tree.join("moved").join(moved.file_name().unwrap()), v2_tree.join(&moved)).unwrap();
    let v2_in_place = env.commit(2, "3");
    let in_place = patch_cost(&env, v1, v2_in_place);
    assert!(
        expected.transfer_bytes < in_place.transfer_bytes + in_place.transfer_bytes / 5,
        "moved: {expected:?}, in place: {in_place:?}"
    );
    assert_deployed(&env, v2);
    assert!(ferryd(&config, &["fsck"]).0);
}

/// Installs v1, commits v2, and returns the object file on the device of v1's version of
/// the largest file v2 changes.
fn device_with_reference(env: &Env) -> (PathBuf, Id, Id, PathBuf) {
    let v1 = env.commit(1, "1");
    let config = env.device("");
    update(&config);
    let changed = largest_changed_file(env);
    let deployed = std::fs::read_link(env.current()).unwrap().join(&changed);
    let ino = std::fs::metadata(&deployed).unwrap().ino();
    let object = std::fs::read_dir(env.path().join("device/state/objects"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::metadata(p).unwrap().ino() == ino)
        .unwrap();
    let v2 = env.commit(2, "2");
    (config, v1, v2, object)
}

#[test]
fn a_reference_missing_on_the_device_means_plain_chunks_for_that_file() {
    let env = Env::new();
    let (config, v1, v2, object) = device_with_reference(&env);
    std::fs::remove_file(&object).unwrap();
    let s = update(&config);
    let full = patch_cost(&env, v1, v2);
    // Fewer patches than with the reference, none failed, and the deployment is right.
    assert!(s["patches"].as_u64().unwrap() < full.patches, "{s} against {full:?}");
    assert_eq!(s["patch_fallbacks"].as_u64().unwrap(), 0, "{s}");
    assert!(s["chunk_bytes_downloaded"].as_u64().unwrap() > full.transfer_bytes, "{s}");
    assert_deployed(&env, v2);
}

#[test]
fn a_corrupted_reference_is_detected_and_its_chunks_come_plain() {
    let env = Env::new();
    let (config, _v1, v2, object) = device_with_reference(&env);
    // Damage the old file on the device's disk (the deployment shares the inode).
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::set_permissions(&object, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&object, &bytes).unwrap();
    let (ok, out, err) = ferryd(&config, &["update", "--json"]);
    assert!(ok, "{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(s["patch_fallbacks"].as_u64().unwrap() > 0, "{s}");
    assert!(err.contains("reference chunk is missing or damaged"), "{err}");
    // Nothing wrong was deployed.
    assert_deployed(&env, v2);
}

/// (inode, size) of each patch cache entry of the test server.
fn cache_entries(env: &Env) -> BTreeMap<String, (u64, u64)> {
    std::fs::read_dir(env.path().join("serve-scratch/patch-cache"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (e.file_name().to_string_lossy().into_owned(), (m.ino(), m.len()))
        })
        .collect()
}

#[test]
fn the_second_device_on_a_version_is_answered_from_the_cache() {
    let env = Env::new();
    env.commit(1, "1");
    let first = env.device("");
    let second = env.device_named("device-2", env.addr, "");
    update(&first);
    update(&second);
    assert!(cache_entries(&env).is_empty(), "a fresh install needs no patch");
    let v2 = env.commit(2, "2");
    // Cold: the first device's patches, and its compressed trees, are computed and cached.
    let a = update(&first);
    let cold = cache_entries(&env);
    assert_eq!(cold.len() as u64, a["patches"].as_u64().unwrap() + 1, "{a}");
    // Warm: the second device gets the same bytes, and no entry was written again.
    let b = update(&second);
    assert_eq!(b["chunk_bytes_downloaded"], a["chunk_bytes_downloaded"], "{a}\n{b}");
    assert_eq!(cache_entries(&env), cold);
    assert!(std::fs::read_link(env.path().join("device-2/current")).unwrap().ends_with(v2.to_hex()));
}

/// The patch cache of the server `env` runs now (the newest scratch directory).
fn patch_cache_dir(env: &Env) -> PathBuf {
    let mut scratches: Vec<PathBuf> = std::fs::read_dir(env.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("serve-scratch"))
        .collect();
    scratches.sort();
    scratches.pop().unwrap().join("patch-cache")
}

/// Waits (at most two minutes) until every patch a device on `from` plans for `to` is
/// cached at the server's level.
fn wait_for_best(env: &Env, from: Id, to: Id) {
    let (f, t) = (env.repo.read_commit(&from).unwrap(), env.repo.read_commit(&to).unwrap());
    let plan = ferry_delta::plan::planned_patches(&env.repo, &f, &t).unwrap();
    assert!(!plan.patches.is_empty());
    let dir = patch_cache_dir(env);
    let level = ferry_delta::patch::DEFAULT_LEVEL;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let missing =
            plan.patches.iter().filter(|p| !dir.join(format!("{}-{level}", p.key().to_hex())).exists()).count();
        if missing == 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{missing} of {} patches still not prepared", plan.patches.len());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn the_first_device_gets_a_fast_patch_at_once_and_the_next_one_the_best() {
    let env = Env::with_patches(ferry_publisher::serve::PatchConfig { prepare: false, ..Default::default() });
    let v1 = env.commit(1, "1");
    let first = env.device("");
    let second = env.device_named("device-2", env.addr, "");
    update(&first);
    update(&second);
    let v2 = env.commit(2, "2");
    let (f, t) = (env.repo.read_commit(&v1).unwrap(), env.repo.read_commit(&v2).unwrap());
    let fast = ferry_delta::patch_cost(&env.repo, &f, &t, ferry_publisher::patches::FAST_LEVEL).unwrap();
    let best = patch_cost(&env, v1, v2);
    // The first device is answered at the fast level: exactly its bytes.
    let a = update(&first);
    assert_eq!(a["chunk_bytes_downloaded"].as_u64().unwrap(), fast.transfer_bytes, "{a}");
    assert_deployed(&env, v2);
    // Meanwhile the server computes the best answers; the next device gets them.
    wait_for_best(&env, v1, v2);
    let b = update(&second);
    assert_eq!(b["chunk_bytes_downloaded"].as_u64().unwrap(), best.transfer_bytes, "{b}");
    assert!(best.transfer_bytes <= fast.transfer_bytes);
    eprintln!(
        "v1 -> v2 patches: fast first answer {} bytes, best {} bytes (+{:.1}%); best cost {:.2} s of CPU",
        fast.transfer_bytes,
        best.transfer_bytes,
        (fast.transfer_bytes as f64 / best.transfer_bytes as f64 - 1.0) * 100.0,
        best.seconds
    );
}

#[test]
fn a_new_release_is_prepared_before_any_device_asks() {
    let env = Env::with_patches(ferry_publisher::serve::PatchConfig::default());
    let v1 = env.commit(1, "1");
    let device = env.device("");
    update(&device);
    let v2 = env.commit(2, "2");
    // No device has asked for v2: the server finds the new head and prepares its patches
    // from v1 (its parent) on its own.
    wait_for_best(&env, v1, v2);
    // The trees answer was prepared too (first, at the same level), and nothing fast was
    // made: the device gets only prepared answers.
    let (f, t) = (env.repo.read_commit(&v1).unwrap(), env.repo.read_commit(&v2).unwrap());
    let plan = ferry_delta::plan::planned_patches(&env.repo, &f, &t).unwrap();
    let keys: std::collections::HashSet<_> = plan.patches.iter().map(|p| p.key()).collect();
    let at = |level: i32| {
        let suffix = format!("-{level}");
        std::fs::read_dir(patch_cache_dir(&env))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(&suffix))
            .count()
    };
    let best = ferry_delta::patch::DEFAULT_LEVEL;
    assert_eq!(at(best), keys.len() + 1, "each patch and the trees at level {best}");
    let s = update(&device);
    assert_eq!(s["chunk_bytes_downloaded"].as_u64().unwrap(), patch_cost(&env, v1, v2).transfer_bytes, "{s}");
    assert_eq!(at(ferry_publisher::patches::FAST_LEVEL), 0, "nothing was computed while the device waited");
    assert_deployed(&env, v2);
    // The worker runs at the lowest priority: what it prepares never slows a device.
    assert_eq!(thread_nice("ferry-patches"), Some(19));
}

/// The nice value of this process's thread named `name` (the in-process server's).
fn thread_nice(name: &str) -> Option<i64> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        if std::fs::read_to_string(dir.join("comm")).ok()?.trim_end() == name {
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // Fields after the command (which ends with the last ')'): nice is the 19th field
            // of the line, the 17th after it.
            let rest = &stat[stat.rfind(')')? + 2..];
            return rest.split(' ').nth(16)?.parse().ok();
        }
    }
    None
}

#[test]
fn servers_sharing_a_patch_store_compute_each_patch_once() {
    use ferry_publisher::patches::FirstAnswer;
    use ferry_publisher::serve::PatchConfig;
    let store = tempfile::tempdir().unwrap();
    let shared = Some(store.path().to_str().unwrap().to_string());
    // Server A computes the best answers while its device waits, and shares them.
    let env = Env::with_patches(PatchConfig {
        first: FirstAnswer::Best,
        prepare: false,
        store: shared.clone(),
        ..Default::default()
    });
    let v1 = env.commit(1, "1");
    let a = env.device("");
    update(&a);
    // Server B, with a cache of its own, answers first requests fast and prepares nothing:
    // only the shared store can give its device the best answers.
    let (_b_rt, b_addr) = env.another_server(PatchConfig { prepare: false, store: shared, ..Default::default() });
    let b = env.device_named("device-b", b_addr, "");
    update(&b);
    let c = env.device_named("device-c", env.addr, "");
    update(&c);
    let v2 = env.commit(2, "2");
    let (f, t) = (env.repo.read_commit(&v1).unwrap(), env.repo.read_commit(&v2).unwrap());
    let fast = ferry_delta::patch_cost(&env.repo, &f, &t, ferry_publisher::patches::FAST_LEVEL).unwrap();
    let best = patch_cost(&env, v1, v2);
    assert!(best.transfer_bytes < fast.transfer_bytes, "the fixture must tell the levels apart");
    let s = update(&a);
    assert_eq!(s["chunk_bytes_downloaded"].as_u64().unwrap(), best.transfer_bytes, "{s}");
    let stored = std::fs::read_dir(store.path().join("patch-cache")).unwrap().count() as u64;
    assert!(stored >= s["patches"].as_u64().unwrap(), "{stored} answers stored for {s}");
    let s = update(&b);
    assert_eq!(s["chunk_bytes_downloaded"].as_u64().unwrap(), best.transfer_bytes, "server B computed: {s}");
    // A wrong answer in the store is not used: whoever can write the store forges entries
    // (every other one with a checksum that fits, the rest damaged); a third server, with a
    // cache of its own, checks each against the repository and computes (fast) instead.
    for (i, e) in std::fs::read_dir(store.path().join("patch-cache")).unwrap().enumerate() {
        let p = e.unwrap().path();
        let mut bytes = std::fs::read(&p).unwrap();
        if i % 2 == 0 {
            let forged = vec![1u8; 100];
            bytes = blake3::hash(&forged).as_bytes().to_vec();
            bytes.extend_from_slice(&forged);
        } else {
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
        }
        std::fs::write(&p, bytes).unwrap();
    }
    let (_c_rt, c_addr) = env.another_server(PatchConfig {
        prepare: false,
        store: Some(store.path().to_str().unwrap().to_string()),
        ..Default::default()
    });
    // The same device C, now pointed at server C.
    let c = env.device_named("device-c", c_addr, "");
    let s = update(&c);
    assert_eq!(s["chunk_bytes_downloaded"].as_u64().unwrap(), fast.transfer_bytes, "stored answers used: {s}");
    assert_eq!(s["patch_fallbacks"].as_u64().unwrap(), 0, "a forged answer reached the device: {s}");
    assert!(std::fs::read_link(env.path().join("device-c/current")).unwrap().ends_with(v2.to_hex()));
}
