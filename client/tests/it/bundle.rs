//! Offline bundles: `ferry bundle`'s writer and `ferryd apply` on devices whose server is
//! unreachable (their configuration names a closed port), so every byte comes from the
//! bundle. Round trips (full and `--from`), and each refusal leaving the device as it was.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ferry_publisher::bundle::{write_bundle, BundleTo};
use ferry_publisher::import::NoProgress;
use ferry_store::Id;
use serde_json::Value;

use crate::channels::{promote, set_up_keys};
use crate::harness::{ferryd, Env};

/// A device following `channel` (or the branch, with `channel` empty) as `hardware`, whose
/// server address is a port nothing listens on.
fn offline_device(env: &Env, name: &str, channel: &str, hardware: &str) -> PathBuf {
    let dev = env.path().join(name);
    std::fs::create_dir_all(&dev).unwrap();
    let config = dev.join("ferryd.toml");
    let follow = if channel.is_empty() {
        format!("branch = \"main\"\ntrusted_keys = [\"{}\"]\n", env.path().join("ci.key.pub").display())
    } else {
        format!("channel = \"{channel}\"\nroot_keys = [\"{}\"]\n", env.path().join("root.key.pub").display())
    };
    let text = format!(
        "insecure_http = true\nserver = \"http://127.0.0.1:9\"\n{follow}state_dir = \"{}\"\ncurrent_link = \"{}\"\nhardware = \"{hardware}\"\nretries = 1\n",
        dev.join("state").display(),
        dev.join("current").display(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

fn bundle(env: &Env, to: BundleTo, from: &[Id], name: &str) -> PathBuf {
    let path = env.path().join(name);
    let f = std::fs::File::create(&path).unwrap();
    write_bundle(&env.repo, &to, from, f, &NoProgress).unwrap();
    path
}

fn channel(name: &str) -> BundleTo {
    BundleTo::Channel { name: name.into(), hardware: Vec::new() }
}

fn applied(config: &Path, file: &Path) -> Value {
    let (ok, out, err) = ferryd(config, &["apply", file.to_str().unwrap(), "--json"]);
    assert!(ok, "ferryd apply {} failed: {err}", file.display());
    serde_json::from_str(&out).unwrap()
}

fn running(config: &Path) -> Option<String> {
    std::fs::read_link(config.parent().unwrap().join("current"))
        .ok()
        .map(|t| t.file_name().unwrap().to_string_lossy().into_owned())
}

/// What the device holds: deployment, objects, staged chunks (as files, or in place in
/// objects being built, `objects/<id>.part`), accepted serials, pin.
fn holdings(config: &Path) -> (Option<String>, usize, usize, String, String) {
    let state = config.parent().unwrap().join("state");
    let part = |n: &std::ffi::OsString| n.to_string_lossy().ends_with(".part");
    let count = |d: &str| {
        std::fs::read_dir(state.join(d)).map_or(0, |r| r.filter(|e| !part(&e.as_ref().unwrap().file_name())).count())
    };
    let parts = std::fs::read_dir(state.join("objects"))
        .map_or(0, |r| r.filter(|e| part(&e.as_ref().unwrap().file_name())).count());
    let trust = std::fs::read_to_string(state.join("trust.json")).unwrap_or_default();
    let trust: Value = serde_json::from_str(&trust).unwrap_or(Value::Null);
    let st: Value = serde_json::from_str(&std::fs::read_to_string(state.join("state.json")).unwrap_or_default())
        .unwrap_or(Value::Null);
    (
        running(config),
        count("objects"),
        count("staging") + parts,
        trust["channels"].to_string(),
        st["pinned"].as_bool().unwrap_or(false).to_string(),
    )
}

/// `ferryd apply` that must fail naming `expect`, leaving what the device holds as it was
/// (`staged_ok`: chunks verified before the damage was met may stay in staging).
fn refused(config: &Path, file: &Path, expect: &str, staged_ok: bool) -> String {
    let before = holdings(config);
    let (ok, out, err) = ferryd(config, &["apply", file.to_str().unwrap()]);
    assert!(!ok, "ferryd apply {} should have been refused: {out}", file.display());
    assert!(err.contains(expect), "the refusal should name {expect:?}: {err}");
    let mut after = holdings(config);
    if staged_ok {
        after.2 = before.2;
    }
    assert_eq!(before, after, "a refused bundle changed the device: {err}");
    let (_, status, _) = ferryd(config, &["status", "--json"]);
    let status: Value = serde_json::from_str(&status).unwrap();
    assert!(status["last_error"].as_str().unwrap_or("").contains(expect), "status: {status}");
    err
}

fn fsck_clean(config: &Path) {
    let (ok, out, err) = ferryd(config, &["fsck"]);
    assert!(ok, "ferryd fsck: {out}{err}");
}

#[test]
fn channel_bundles_round_trip_full_and_from_an_older_release() {
    let env = Env::new();
    set_up_keys(&env);
    let v1 = env.commit(1, "1.0.0");
    promote(&env, Some(v1), None, "stable", false).unwrap();
    let full = bundle(&env, channel("stable"), &[], "v1.bundle");
    let dev = offline_device(&env, "dev", "stable", "rev-a");

    let s = applied(&dev, &full);
    assert_eq!(s["to"], v1.to_hex());
    assert_eq!(s["channel"], "stable");
    assert_eq!(s["pinned"], false, "a channel bundle moves the device like a fleet update: {s}");
    assert!(s["chunks_used"].as_u64().unwrap() > 0);
    assert_eq!(running(&dev).as_deref(), Some(v1.to_hex().as_str()));
    fsck_clean(&dev);

    let v2 = env.commit(2, "1.1.0");
    promote(&env, Some(v2), None, "stable", false).unwrap();
    let delta = bundle(&env, channel("stable"), &[v1], "v1-v2.bundle");
    let full2 = bundle(&env, channel("stable"), &[], "v2.bundle");
    let (dsize, fsize) = (std::fs::metadata(&delta).unwrap().len(), std::fs::metadata(&full2).unwrap().len());
    assert!(dsize * 2 < fsize, "a bundle from 1.0.0 ({dsize} bytes) should be far smaller than a full one ({fsize})");

    // Through a pipe, as an upload or `ssh device ferryd apply -` would send it.
    let out = Command::new(crate::harness::ferryd_bin())
        .arg("--config")
        .arg(&dev)
        .args(["apply", "-", "--json"])
        .stdin(Stdio::from(std::fs::File::open(&delta).unwrap()))
        .output()
        .unwrap();
    assert!(out.status.success(), "apply from stdin: {}", String::from_utf8_lossy(&out.stderr));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["to"], v2.to_hex());
    assert_eq!(s["bundle_bytes"], dsize);
    assert!(s["chunks_reused"].as_u64().unwrap() > 0, "{s}");
    assert!(s["files_reused"].as_u64().unwrap() > 0, "unchanged files are hardlinked: {s}");
    assert_eq!(running(&dev).as_deref(), Some(v2.to_hex().as_str()));
    fsck_clean(&dev);

    // The same bundle again: nothing to do.
    let s = applied(&dev, &delta);
    assert_eq!(s["up_to_date"], true);

    // A device on nothing takes the full bundle; the delta one it refuses, naming files.
    let fresh = offline_device(&env, "fresh", "stable", "rev-a");
    let err = refused(&fresh, &delta, "lacks", false);
    assert!(err.contains("made for devices on") && err.contains(&v1.short()), "{err}");
    assert!(err.contains("/"), "the refusal names files: {err}");
    // A bundle whose manifest lacks one chunk the device needs: refused before anything is
    // written, naming the file it belongs to.
    let err = refused(&fresh, &without_first_chunk(&full2), "lacks 1 chunks", false);
    assert!(err.contains("(in /"), "the refusal names the file: {err}");
    let s = applied(&fresh, &full2);
    assert_eq!(s["to"], v2.to_hex());
    fsck_clean(&fresh);
}

#[test]
fn cut_damaged_wrong_hardware_and_replayed_bundles_are_refused() {
    let env = Env::new();
    set_up_keys(&env);
    let v1 = env.commit(1, "1.0.0");
    promote(&env, Some(v1), None, "stable", false).unwrap();
    let b1 = bundle(&env, channel("stable"), &[], "v1.bundle");
    let v2 = env.commit(2, "1.1.0");
    promote(&env, Some(v2), None, "stable", false).unwrap();
    let b2 = bundle(&env, channel("stable"), &[v1], "v2.bundle");
    let dev = offline_device(&env, "dev", "stable", "rev-a");
    applied(&dev, &b1);

    let bytes = std::fs::read(&b2).unwrap();
    let write = |name: &str, b: &[u8]| {
        let p = env.path().join(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    // Cut in the header, in the trees, in the chunks, and just before its end.
    for (i, cut) in [40usize, bytes.len() / 3, bytes.len() * 2 / 3, bytes.len() - 1].into_iter().enumerate() {
        let p = write(&format!("cut-{i}.bundle"), &bytes[..cut]);
        refused(&dev, &p, "truncated", true);
    }
    // A byte changed in a chunk (the device verifies each chunk it needs, and the end hash
    // catches the rest), and in the commit's signature.
    let mut damaged = bytes.clone();
    let at = bytes.len() - 200;
    damaged[at] ^= 0x40;
    let err = refused(&dev, &write("damaged.bundle", &damaged), "bundle refused", true);
    assert!(err.contains("damaged"), "{err}");
    let mut forged = bytes.clone();
    let commit_section = [v2.as_bytes().as_slice(), &[1], &ferry_fixtures::test_key(1).public().to_bytes()].concat();
    let sig = find(&bytes, &commit_section).expect("the commit section") + commit_section.len() + 5;
    forged[sig] ^= 0x01;
    refused(&dev, &write("forged.bundle", &forged), "signed by 0 of the keys this device trusts", false);
    // Not a bundle at all.
    refused(&dev, &write("noise.bundle", b"this is not a bundle"), "not a Ferry bundle", false);
    assert_eq!(running(&dev).as_deref(), Some(v1.to_hex().as_str()));

    // Wrong hardware: the channel has no rev-b target; a rev-a commit is refused too.
    let rev_b = offline_device(&env, "rev-b", "stable", "rev-b");
    refused(&rev_b, &env.path().join("v1.bundle"), "rev-b", false);
    let commit_bundle = bundle(&env, BundleTo::Commit(v1), &[], "commit-v1.bundle");
    refused(&rev_b, &commit_bundle, "not a release of channel stable", false);
    let (ok, _, err) = ferryd(&rev_b, &["apply", commit_bundle.to_str().unwrap(), "--force"]);
    assert!(!ok && err.contains("not for this device's rev-b"), "forcing does not bend the hardware: {err}");

    // The good bundle still applies after all that, and then the older one is a replay.
    applied(&dev, &b2);
    assert_eq!(running(&dev).as_deref(), Some(v2.to_hex().as_str()));
    refused(&dev, &b1, "serial", false);
    fsck_clean(&dev);
}

#[test]
fn commit_bundles_never_go_back_unless_forced_and_pin_only_when_asked() {
    let env = Env::new();
    set_up_keys(&env);
    let v1 = env.commit(1, "1.0.0");
    let v2 = env.commit(2, "1.1.0");
    promote(&env, Some(v2), None, "stable", false).unwrap();
    let stable = bundle(&env, channel("stable"), &[], "stable.bundle");
    let c1 = bundle(&env, BundleTo::Commit(v1), &[], "c1.bundle");
    let c2 = bundle(&env, BundleTo::Commit(v2), &[], "c2.bundle");

    // A channel device installs what its channel says: a commit bundle (a build nobody
    // promoted, from a file, the local page or a USB stick) used to install and then make
    // the device refuse its own channel as a downgrade. Now only a technician at the device
    // forces one.
    let dev = offline_device(&env, "dev", "stable", "rev-a");
    refused(&dev, &c2, "not a release of channel stable", false);
    let (ok, out, err) = ferryd(&dev, &["apply", c2.to_str().unwrap(), "--force", "--json"]);
    assert!(ok, "{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((s["to"].as_str(), s["pinned"].as_bool()), (Some(v2.to_hex().as_str()), Some(false)), "{s}");
    refused(&dev, &c1, "not a release of channel stable", false);
    let (ok, out, err) = ferryd(&dev, &["apply", c1.to_str().unwrap(), "--force", "--pin", "--json"]);
    assert!(ok, "{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((s["to"].as_str(), s["pinned"].as_bool()), (Some(v1.to_hex().as_str()), Some(true)), "{s}");
    // Pinned, it refuses the channel's bundle until it is unpinned.
    refused(&dev, &stable, "pinned", false);
    let (ok, _, err) = ferryd(&dev, &["unpin"]);
    assert!(ok, "{err}");
    let s = applied(&dev, &stable);
    assert_eq!(s["to"], v2.to_hex());

    // A branch device takes commit bundles signed by its trusted keys, not channel ones;
    // an older one is a downgrade, refused unless forced.
    let branch = offline_device(&env, "branch", "", "rev-a");
    refused(&branch, &stable, "not a channel", false);
    let s = applied(&branch, &c2);
    assert_eq!(s["to"], v2.to_hex());
    refused(&branch, &c1, "not newer than the running 1.1.0", false);
    let (ok, out, err) = ferryd(&branch, &["apply", c1.to_str().unwrap(), "--force", "--json"]);
    assert!(ok, "{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["to"], v1.to_hex());
    fsck_clean(&branch);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A copy of the bundle at `path` without the first chunk of its manifest (and its data).
fn without_first_chunk(path: &Path) -> PathBuf {
    use ferry_delta::bundle::{BundleReader, BundleWriter, Section};
    let out = path.with_extension("minus-one");
    let mut r = BundleReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut w = BundleWriter::new(std::fs::File::create(&out).unwrap()).unwrap();
    let mut dropped = None;
    while let Some(section) = r.next_section().unwrap() {
        match section {
            Section::Keys(k) => w.key_document(&k).unwrap(),
            Section::Channel(c) => w.channel(&c).unwrap(),
            Section::Commit(c) => w.commit(&c).unwrap(),
            Section::From(f) => w.from(&f).unwrap(),
            Section::Tree { id, bytes } => w.tree(&id, &bytes).unwrap(),
            Section::Manifest(_) => {
                let m = r.manifest();
                dropped = Some(m[0].0);
                w.manifest(&m[1..]).unwrap();
            }
            Section::Chunk { id, frame } => {
                if Some(id) != dropped {
                    w.chunk(&id, &frame).unwrap();
                }
            }
        }
    }
    w.finish().unwrap();
    out
}

/// Runs the shipped USB script on `dir` (a stand-in for the stick's mounted partition).
fn usb(config: &Path, dir: &Path) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../boot-integration/usb/ferry-usb-apply");
    let bin = crate::harness::ferryd_bin().parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("sh").arg(&script).arg(dir).env("PATH", path).env("FERRYD_CONFIG", config).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_usb_script_installs_the_bundle_on_a_stick_with_the_same_refusals() {
    let env = Env::new();
    set_up_keys(&env);
    let v1 = env.commit(1, "1.0.0");
    promote(&env, Some(v1), None, "stable", false).unwrap();
    let dev = offline_device(&env, "dev", "stable", "rev-a");
    let stick = env.path().join("stick");
    std::fs::create_dir_all(&stick).unwrap();
    let (ok, out) = usb(&dev, &stick);
    assert!(ok && out.contains("nothing to do"), "{out}");
    let b1 = bundle(&env, channel("stable"), &[], "v1.bundle");
    let bytes = std::fs::read(&b1).unwrap();
    std::fs::write(stick.join("ferry-update.bundle"), &bytes[..bytes.len() - 10]).unwrap();
    let (ok, out) = usb(&dev, &stick);
    assert!(!ok && out.contains("truncated") && out.contains("was not installed"), "{out}");
    assert_eq!(running(&dev), None);
    std::fs::copy(&b1, stick.join("ferry-update.bundle")).unwrap();
    let (ok, out) = usb(&dev, &stick);
    assert!(ok && out.contains("the stick can be removed"), "{out}");
    assert_eq!(running(&dev).as_deref(), Some(v1.to_hex().as_str()));
}

/// Rewrites a bundle with `garbage` tree sections (ids nothing names, `size` bytes each)
/// after its from section, as a hostile file would carry them.
fn with_garbage_trees(file: &Path, garbage: usize, size: usize) -> PathBuf {
    use ferry_delta::bundle::{BundleReader, BundleWriter, Section};
    let out_path = file.with_extension("garbage");
    let mut reader = BundleReader::new(std::fs::File::open(file).unwrap()).unwrap();
    let mut w = BundleWriter::new(std::io::BufWriter::new(std::fs::File::create(&out_path).unwrap())).unwrap();
    while let Some(section) = reader.next_section().unwrap() {
        match section {
            Section::Keys(k) => w.key_document(&k).unwrap(),
            Section::Channel(c) => w.channel(&c).unwrap(),
            Section::Commit(c) => w.commit(&c).unwrap(),
            Section::From(f) => {
                w.from(&f).unwrap();
                let junk = vec![0x5a; size];
                for i in 0..garbage {
                    w.tree(&Id::of(&i.to_le_bytes()), &junk).unwrap();
                }
            }
            Section::Tree { id, bytes } => w.tree(&id, &bytes).unwrap(),
            Section::Manifest(_) => w.manifest(reader.manifest()).unwrap(),
            Section::Chunk { id, frame } => w.chunk(&id, &frame).unwrap(),
        }
    }
    w.finish().unwrap();
    out_path
}

/// A 190 MB header of garbage key documents and commits (no signature can be checked
/// before the header ends) used to take `ferryd apply` past 500 MB. The header is now
/// bounded as a whole and refused once past it.
#[test]
fn a_huge_garbage_header_is_refused_before_it_is_held() {
    use ferry_delta::bundle::{BundleWriter, BundledCommit};
    let env = Env::new();
    env.commit(1, "1");
    let dev = offline_device(&env, "device", "", "rev-a");
    let path = env.path().join("garbage-header.bundle");
    let mut w = BundleWriter::new(std::io::BufWriter::new(std::fs::File::create(&path).unwrap())).unwrap();
    for _ in 0..64 {
        w.key_document(&vec![0xa5; 1 << 20]).unwrap();
    }
    for i in 0..64u32 {
        let bytes = vec![0x3c; 2 << 20];
        w.commit(&BundledCommit { id: Id::of(&i.to_le_bytes()), signatures: Vec::new(), bytes }).unwrap();
    }
    w.from(&[]).unwrap();
    w.manifest(&[]).unwrap();
    w.finish().unwrap();
    let err = refused(&dev, &path, "header", false);
    assert!(err.contains("at most 16777216"), "{err}");
    let (ok, _, err, peak) = crate::harness::ferryd_peak(&dev, &["apply", path.to_str().unwrap()]);
    assert!(!ok && err.contains("header"), "{err}");
    assert!(peak < 64 << 20, "ferryd apply peaked at {} MiB", peak >> 20);
}

/// Tree sections nothing signed names are read past without being held: four of 60 MiB
/// each in an otherwise good bundle cost no memory, and the release is installed.
#[test]
fn tree_sections_nothing_names_are_read_past_unheld() {
    let env = Env::new();
    let v1 = env.commit(1, "1");
    let dev = offline_device(&env, "device", "", "rev-a");
    let good = bundle(&env, BundleTo::Commit(v1), &[], "c1.bundle");
    let hostile = with_garbage_trees(&good, 4, 60 << 20);
    let (ok, out, err, peak) = crate::harness::ferryd_peak(&dev, &["apply", hostile.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["to"], v1.to_hex());
    assert!(peak < 48 << 20, "ferryd apply peaked at {} MiB", peak >> 20);
}

/// A build committed without --hardware names no revision, so nothing says it fits this
/// board; it used to install from a file on any device. Now only `--force` takes it.
#[test]
fn a_commit_without_a_hardware_list_is_refused_on_a_device_with_a_revision() {
    use ferry_publisher::import::{commit_tree, CommitRequest};
    let env = Env::new();
    let key = ferry_fixtures::test_key(1);
    let req = CommitRequest::new(env.tree(1), "main", "1".parse().unwrap(), &key);
    assert!(req.hardware.is_empty());
    let id: Id = commit_tree(&env.repo, &req, &NoProgress).unwrap().commit.parse().unwrap();
    let dev = offline_device(&env, "device", "", "rev-a");
    let b = bundle(&env, BundleTo::Commit(id), &[], "no-hardware.bundle");
    refused(&dev, &b, "names no hardware revision", false);
    let (ok, _, err) = ferryd(&dev, &["apply", b.to_str().unwrap(), "--force"]);
    assert!(ok, "{err}");
    assert_eq!(running(&dev), Some(id.to_hex()));
}
