//! `ferry export`: a repository as static files, in a directory served by the real nginx with
//! the configuration Ferry ships (`packaging/nginx/ferry-export.conf`), or in a real S3 API
//! (SeaweedFS); a re-run writes nothing, a new commit is exported alone, and a run cut short
//! is completed by the next into what a fresh export writes. Servers on 127.0.0.1 only; every
//! `ferry` run is bounded in time.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use ferry_delta::content::{delta_id, ContentIndex};
use ferry_fixtures::nginx::Nginx;
use ferry_fixtures::seaweed::Seaweed;
use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as StorePath;
use object_store::{Attribute, GetOptions, ObjectStore, ObjectStoreExt};
use serde_json::Value;

use crate::{commit, init};

/// How long one `ferry export` may take. An S3 client retries an endpoint that does not
/// answer for minutes; the test fails first.
const RUN_LIMIT: Duration = Duration::from_secs(120);

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const NO_CACHE: &str = "no-cache";

/// What one `ferry` run did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `ferry ARGS` in `cwd` with `env`, and without any `AWS_*` (or `FERRY_*`) variable of this
/// process; killed and failed after [`RUN_LIMIT`].
fn ferry_in(cwd: &Path, args: &[&str], env: &[(&str, String)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(args).current_dir(cwd).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("AWS_") || k.starts_with("FERRY_") || k == "SOURCE_DATE_EPOCH") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferry {args:?} did not finish within {} s: {}", RUN_LIMIT.as_secs(), err.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run { code: status.code(), stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// `ferry export --repo REPO --to TO --json`, which must succeed: its summary.
fn export(repo: &Path, to: &str, env: &[(&str, String)]) -> Value {
    let r = ferry_in(Path::new("/"), &["export", "--repo", repo.to_str().unwrap(), "--to", to, "--json"], env);
    assert_eq!(r.code, Some(0), "ferry export --to {to} failed: {}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: not a JSON summary: {}", r.stdout))
}

/// The summary's counts are `expected` (the fields named; the others may be anything).
fn check(summary: &Value, expected: &[(&str, u64)]) {
    for (field, want) in expected {
        assert_eq!(summary[field].as_u64(), Some(*want), "{field} in {summary}");
    }
}

/// A repository in `t/repo` with a commit of the generated tree's version `v` on `main` for
/// each of `versions`, closed again.
fn repo_with(t: &Path, versions: &[u32]) -> PathBuf {
    let repo = init(t, ferry_store::ChunkParams::default());
    drop(repo);
    for v in versions {
        add_commit(t, *v);
    }
    t.join("repo")
}

/// Commits the generated tree's version `v` on `main`; its id.
fn add_commit(t: &Path, v: u32) -> String {
    add_commit_on(t, v, "main")
}

/// Commits the generated tree's version `v` on `branch`; its id.
fn add_commit_on(t: &Path, v: u32, branch: &str) -> String {
    let tree = t.join(format!("tree{v}"));
    if !tree.exists() {
        ferry_fixtures::generate(&ferry_fixtures::TreeSpec { seed: 22, size: 2 << 20, version: v }, &tree).unwrap();
    }
    let repo = ferry_store::Repository::open(&t.join("repo")).unwrap();
    commit(&repo, &tree, branch, &v.to_string()).unwrap().commit
}

/// Every file under `dir`, by its path relative to `dir` (`/`-separated), with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    stamps(dir).into_iter().map(|(k, (bytes, _))| (k, bytes)).collect()
}

/// Every file under `dir` with its bytes and modification time.
fn stamps(dir: &Path) -> BTreeMap<String, (Vec<u8>, SystemTime)> {
    fn go(root: &Path, dir: &Path, out: &mut BTreeMap<String, (Vec<u8>, SystemTime)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                go(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
                out.insert(rel, (std::fs::read(&p).unwrap(), std::fs::metadata(&p).unwrap().modified().unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    go(dir, dir, &mut out);
    out
}

/// Sets every file's modification time to 2001, so that any rewrite shows whatever the file
/// system's timestamp granularity.
fn age(dir: &Path) {
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    for name in files(dir).keys() {
        std::fs::File::options().write(true).open(dir.join(name)).unwrap().set_modified(old).unwrap();
    }
}

/// The names under `dir/` (e.g. `v1/packs/`) in a listing of files.
fn under<'a, T>(listing: &'a BTreeMap<String, T>, dir: &str) -> Vec<&'a str> {
    listing.keys().filter_map(|k| k.strip_prefix(dir)).collect()
}

/// The packs an index names: a commit's (`v1/index/<commit>`) or a pair's prepared patches
/// (`v1/deltas/<from>/<to>`), from its bytes in a listing of files.
fn packs_of(listing: &BTreeMap<String, Vec<u8>>, name: &str) -> BTreeSet<String> {
    let bytes = listing.get(name).unwrap_or_else(|| panic!("no {name}"));
    let id = match name.strip_prefix("v1/deltas/").and_then(|p| p.split_once('/')) {
        Some((from, to)) => delta_id(&from.parse().unwrap(), &to.parse().unwrap()),
        None => name.strip_prefix("v1/index/").unwrap().parse().unwrap(),
    };
    let index = ContentIndex::decode(bytes, &id, 1 << 20).unwrap_or_else(|e| panic!("{name}: {e}"));
    index.placements().map(|(_, p)| p.pack.to_hex()).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn a_directory_export_is_served_by_nginx_as_shipped() {
    let t = tempfile::tempdir().unwrap();
    let repo = repo_with(t.path(), &[1, 2]);
    // A name with an extension is a branch's all the same.
    let first = add_commit_on(t.path(), 1, "preview.html");
    let id = ferry_store::Repository::open_read_only(&repo).unwrap().branch("main").unwrap().unwrap().to_hex();
    let dir = t.path().join("export");
    let summary = export(&repo, dir.to_str().unwrap(), &[]);
    check(&summary, &[("commits", 2), ("commits_exported", 2), ("indexes_written", 2), ("deltas_written", 1)]);
    let exported = files(&dir);
    let delta = format!("v1/deltas/{first}/{id}");
    for name in [
        format!("v1/index/{id}"),
        format!("v1/objects/{id}"),
        format!("v1/commits/{id}"),
        delta.clone(),
        "v1/branches/main".into(),
        "v1/branches/preview.html".into(),
        "v1/versions/1".into(),
        "v1/keys".into(),
    ] {
        assert!(exported.contains_key(&name), "no {name} in {:?}", exported.keys());
    }
    let packs = under(&exported, "v1/packs/");
    assert!(!packs.is_empty());

    let nginx = Nginx::serve(&dir).unwrap();
    let base = nginx.url();
    runtime().block_on(async {
        let c = reqwest::Client::new();
        // Every file, byte for byte.
        for (name, bytes) in &exported {
            let r = c.get(format!("{base}/{name}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "{name}");
            assert_eq!(&r.bytes().await.unwrap()[..], &bytes[..], "{name} served differs");
        }
        // One range of a pack, as a device asks for it.
        let pack = format!("v1/packs/{}", packs[0]);
        let bytes = &exported[&pack];
        assert!(bytes.len() >= 100, "a pack of {} bytes", bytes.len());
        let r = c.get(format!("{base}/{pack}")).header("range", "bytes=10-99").send().await.unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(r.headers()["content-range"], format!("bytes 10-99/{}", bytes.len()).as_str());
        assert_eq!(r.headers()["cache-control"], IMMUTABLE);
        assert_eq!(&r.bytes().await.unwrap()[..], &bytes[10..100]);
        // Several ranges in one request get the whole file, never a multipart answer.
        let r = c.get(format!("{base}/{pack}")).header("range", "bytes=0-9,20-29").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(&r.bytes().await.unwrap()[..], &bytes[..]);
        // Names that are their content are cached for good; the rest is revalidated.
        for (name, cache, kind) in [
            (pack.as_str(), IMMUTABLE, "application/octet-stream"),
            (&format!("v1/index/{id}"), IMMUTABLE, "application/octet-stream"),
            (&format!("v1/objects/{id}"), IMMUTABLE, "application/octet-stream"),
            (&delta, IMMUTABLE, "application/octet-stream"),
            ("v1/branches/main", NO_CACHE, "application/json"),
            ("v1/branches/preview.html", NO_CACHE, "application/json"),
            (&format!("v1/commits/{id}"), NO_CACHE, "application/json"),
            ("v1/versions/1", NO_CACHE, "application/json"),
            ("v1/keys", NO_CACHE, "application/octet-stream"),
        ] {
            let r = c.get(format!("{base}/{name}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "{name}");
            assert_eq!(r.headers()["cache-control"], cache, "{name}");
            assert_eq!(r.headers()["content-type"], kind, "{name}");
        }
        // An index not exported yet, or patches not prepared yet, are missing, and their
        // 404s are not to be kept.
        for missing in [format!("v1/index/{}", "0".repeat(64)), format!("v1/deltas/{id}/{first}")] {
            let r = c.get(format!("{base}/{missing}")).send().await.unwrap();
            assert_eq!(r.status(), 404, "{missing}");
            assert_eq!(r.headers()["cache-control"], NO_CACHE, "{missing}");
        }
        // No directory is listed.
        for d in ["v1/", "v1/packs/", "v1/objects/"] {
            let r = c.get(format!("{base}/{d}")).send().await.unwrap();
            assert_eq!(r.status(), 403, "{d} is listed");
        }
    });
}

#[test]
fn a_rerun_writes_nothing_and_a_new_commit_is_exported_alone() {
    let t = tempfile::tempdir().unwrap();
    let repo = repo_with(t.path(), &[1]);
    let dir = t.path().join("export");
    let to = dir.to_str().unwrap();
    check(&export(&repo, to, &[]), &[("commits", 1), ("commits_exported", 1)]);
    age(&dir);
    let before = stamps(&dir);

    let again = export(&repo, to, &[]);
    check(
        &again,
        &[
            ("commits", 1),
            ("commits_exported", 0),
            ("objects_written", 0),
            ("packs_written", 0),
            ("indexes_written", 0),
            ("documents_written", 0),
            ("bytes_written", 0),
        ],
    );
    assert!(stamps(&dir) == before, "a re-run changed files");

    let first = ferry_store::Repository::open_read_only(&repo).unwrap().branch("main").unwrap().unwrap().to_hex();
    let second = add_commit(t.path(), 2);
    let third = export(&repo, to, &[]);
    check(&third, &[("commits", 2), ("commits_exported", 1), ("indexes_written", 1), ("deltas_written", 1)]);
    assert!(third["packs_written"].as_u64().unwrap() >= 1, "{third}");
    let after = stamps(&dir);
    let changed: Vec<&String> = before.iter().filter(|(k, v)| after.get(*k) != Some(v)).map(|(k, _)| k).collect();
    assert_eq!(changed, ["v1/branches/main"], "only the head is rewritten");
    let head: Value = serde_json::from_slice(&after["v1/branches/main"].0).unwrap();
    assert_eq!(head["commit"], second.as_str());
    for name in [
        format!("v1/index/{second}"),
        format!("v1/objects/{second}"),
        format!("v1/commits/{second}"),
        format!("v1/deltas/{first}/{second}"),
        "v1/versions/2".into(),
    ] {
        assert!(after.contains_key(&name) && !before.contains_key(&name), "{name} is not new");
    }
    // What the new commit shares with the first keeps its place: its index names the
    // first commit's pack as well as its own.
    let after = files(&dir);
    let first_packs = packs_of(&after, &format!("v1/index/{first}"));
    let second_packs = packs_of(&after, &format!("v1/index/{second}"));
    assert!(!first_packs.is_disjoint(&second_packs), "the second index does not reuse the first pack");
    assert!(!second_packs.is_subset(&first_packs), "the second commit's new chunks are in no new pack");
}

#[test]
fn an_interrupted_export_is_completed_by_the_next_run() {
    let t = tempfile::tempdir().unwrap();
    let repo = repo_with(t.path(), &[1]);
    let first = ferry_store::Repository::open_read_only(&repo).unwrap().branch("main").unwrap().unwrap().to_hex();
    let dir = t.path().join("export");
    let to = dir.to_str().unwrap();
    export(&repo, to, &[]);
    let run1 = files(&dir);
    let second = add_commit(t.path(), 2);
    check(&export(&repo, to, &[]), &[("commits_exported", 1), ("deltas_written", 1)]);
    let run2 = files(&dir);

    // The second run as if it had died between the second commit's packs and its index: what
    // it wrote before (the commit's objects, the packs of its chunks) is there; its index,
    // the prepared patches and their packs, and the documents are not, and the head is the
    // first run's.
    let chunk_packs = packs_of(&run2, &format!("v1/index/{second}"));
    // The prepared patches' index also places the chunks no patch covers, in chunk packs.
    let patch_packs: std::collections::HashSet<_> =
        packs_of(&run2, &format!("v1/deltas/{first}/{second}")).difference(&chunk_packs).cloned().collect();
    assert!(!patch_packs.is_empty(), "{patch_packs:?}");
    for (name, bytes) in &run2 {
        let kept =
            name.starts_with("v1/objects/") || name.strip_prefix("v1/packs/").is_some_and(|p| chunk_packs.contains(p));
        match run1.get(name) {
            Some(old) if old != bytes => std::fs::write(dir.join(name), old).unwrap(),
            None if !kept => std::fs::remove_file(dir.join(name)).unwrap(),
            _ => {}
        }
    }
    assert!(!dir.join(format!("v1/index/{second}")).exists());
    age(&dir);
    let before = stamps(&dir);

    let rerun = export(&repo, to, &[]);
    check(
        &rerun,
        &[
            ("commits", 2),
            ("commits_exported", 1),
            ("objects_written", 0),
            ("indexes_written", 1),
            ("deltas_written", 1),
            // The second commit's document, version 2's, and the head.
            ("documents_written", 3),
            // Only the prepared patches' packs: the chunks' packs come out the same, by the
            // same names, and are found there.
            ("packs_written", patch_packs.len() as u64),
        ],
    );
    // Nothing that was there is written again but the head, which moves to the second commit.
    let after = stamps(&dir);
    for (name, stamp) in &before {
        if name == "v1/branches/main" {
            let head: Value = serde_json::from_slice(&after[name].0).unwrap();
            assert_eq!(head["commit"], second.as_str());
        } else {
            assert!(after.get(name) == Some(stamp), "{name} was rewritten");
        }
    }

    let fresh = t.path().join("fresh");
    check(&export(&repo, fresh.to_str().unwrap(), &[]), &[("commits_exported", 2)]);
    let (completed, fresh) = (files(&dir), files(&fresh));
    assert_eq!(completed.keys().collect::<Vec<_>>(), fresh.keys().collect::<Vec<_>>());
    for (name, bytes) in &completed {
        assert!(fresh[name] == *bytes, "{name} differs from a fresh export's");
    }
    assert!(completed == run2, "the completed export differs from the uninterrupted one");
}

/// A client of the fixture's bucket with the right keys.
fn bucket(s3: &Seaweed) -> AmazonS3 {
    // object_store's HTTP client takes the process's rustls provider, as `ferry export` does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = AmazonS3Builder::new().with_bucket_name(s3.bucket());
    for (k, v) in s3.env() {
        b = b.with_config(k.to_ascii_lowercase().parse().unwrap(), v);
    }
    b.build().unwrap()
}

/// An object's bytes, ETag and modification time (in nanoseconds).
type Stored = (Vec<u8>, Option<String>, Option<i64>);

/// Every object in the bucket, by name.
async fn objects(store: &AmazonS3) -> BTreeMap<String, Stored> {
    let listed: Vec<_> = store.list(None).try_collect().await.unwrap();
    let mut out = BTreeMap::new();
    for m in listed {
        let bytes = store.get(&m.location).await.unwrap().bytes().await.unwrap().to_vec();
        out.insert(m.location.to_string(), (bytes, m.e_tag, m.last_modified.timestamp_nanos_opt()));
    }
    out
}

#[test]
fn an_s3_export_to_seaweedfs() {
    let s3 = Seaweed::start().unwrap();
    let t = tempfile::tempdir().unwrap();
    let repo = repo_with(t.path(), &[1, 2]);
    let r = ferry_store::Repository::open_read_only(&repo).unwrap();
    let id = r.branch("main").unwrap().unwrap();
    let parent = r.read_commit(&id).unwrap().parent.unwrap();
    drop(r);
    let to = format!("s3://{}/some/prefix", s3.bucket());
    let summary = export(&repo, &to, &s3.env());
    check(&summary, &[("commits", 2), ("commits_exported", 2), ("indexes_written", 2), ("deltas_written", 1)]);
    assert_eq!(summary["to"], to.as_str());

    // The same files as an export to a directory, all under the prefix.
    let dir = t.path().join("export");
    export(&repo, dir.to_str().unwrap(), &[]);
    let local = files(&dir);
    let store = bucket(&s3);
    let rt = runtime();
    let stored = rt.block_on(objects(&store));
    let relative: BTreeMap<&str, &Vec<u8>> = stored
        .iter()
        .map(|(k, (bytes, _, _))| {
            (k.strip_prefix("some/prefix/").unwrap_or_else(|| panic!("{k} is outside the prefix")), bytes)
        })
        .collect();
    assert_eq!(relative.keys().copied().collect::<Vec<_>>(), local.keys().map(String::as_str).collect::<Vec<_>>());
    for (name, bytes) in &local {
        assert!(relative[name.as_str()] == bytes, "{name} differs in the bucket");
    }

    // Each object keeps its Cache-Control and type, as a HEAD through the S3 port shows.
    let pack = under(&local, "v1/packs/")[0].to_string();
    rt.block_on(async {
        for (name, cache, kind) in [
            (format!("v1/packs/{pack}"), IMMUTABLE, "application/octet-stream"),
            (format!("v1/index/{id}"), IMMUTABLE, "application/octet-stream"),
            (format!("v1/objects/{id}"), IMMUTABLE, "application/octet-stream"),
            (format!("v1/deltas/{parent}/{id}"), IMMUTABLE, "application/octet-stream"),
            ("v1/branches/main".into(), NO_CACHE, "application/json"),
            ("v1/keys".into(), NO_CACHE, "application/octet-stream"),
        ] {
            let path = StorePath::from(format!("some/prefix/{name}"));
            let head = store.get_opts(&path, GetOptions { head: true, ..Default::default() }).await.unwrap();
            assert_eq!(head.attributes.get(&Attribute::CacheControl).map(|v| v.as_ref()), Some(cache), "{name}");
            assert_eq!(head.attributes.get(&Attribute::ContentType).map(|v| v.as_ref()), Some(kind), "{name}");
        }
    });

    // A re-run writes nothing: not even the same bytes again, which would show in the
    // modification times (kept to the second).
    std::thread::sleep(Duration::from_millis(1100));
    let again = export(&repo, &to, &s3.env());
    check(
        &again,
        &[
            ("commits_exported", 0),
            ("objects_written", 0),
            ("packs_written", 0),
            ("documents_written", 0),
            ("bytes_written", 0),
        ],
    );
    assert!(rt.block_on(objects(&store)) == stored, "a re-run changed the bucket");
}

#[test]
fn a_wrong_s3_secret_fails_naming_the_bucket_and_writes_nothing() {
    let s3 = Seaweed::start().unwrap();
    let t = tempfile::tempdir().unwrap();
    let repo = repo_with(t.path(), &[1]);
    let to = format!("s3://{}/some/prefix", s3.bucket());
    let r = ferry_in(
        t.path(),
        &["export", "--repo", repo.to_str().unwrap(), "--to", &to],
        &s3.env_with_secret("not-the-secret-key"),
    );
    assert_eq!(r.code, Some(2), "a refused export must fail: {}", r.stderr);
    assert!(
        r.stderr.starts_with("error: ") && r.stderr.contains(s3.bucket()),
        "the error names no bucket: {}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(runtime().block_on(objects(&bucket(&s3))).is_empty(), "something was written");
}

#[test]
fn bad_destinations_get_clear_errors_and_change_nothing() {
    let t = tempfile::tempdir().unwrap();
    let repo = repo_with(t.path(), &[1]);
    let cwd = t.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    for (to, expect) in [
        ("ftp://x", "only s3:// URLs and directories are supported"),
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
    ] {
        let r = ferry_in(&cwd, &["export", "--repo", repo.to_str().unwrap(), "--to", to], &[]);
        assert_eq!(r.code, Some(2), "--to {to} must fail: {}", r.stderr);
        assert!(
            r.stderr.starts_with("error: ") && r.stderr.contains(expect),
            "--to {to}: expected {expect:?} in: {}",
            r.stderr
        );
        assert!(r.stderr.contains(to), "--to {to}: the error does not quote it: {}", r.stderr);
        assert_eq!(std::fs::read_dir(&cwd).unwrap().count(), 0, "--to {to} wrote something");
    }
}

#[test]
fn a_directory_export_refuses_branches_that_would_be_file_and_directory() {
    let t = tempfile::tempdir().unwrap();
    let repo = repo_with(t.path(), &[1]);
    add_commit_on(t.path(), 2, "main/next");
    let dir = t.path().join("export");
    let r = ferry_in(t.path(), &["export", "--repo", repo.to_str().unwrap(), "--to", dir.to_str().unwrap()], &[]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("\"main\" and \"main/next\"") && r.stderr.contains("rename one"), "{}", r.stderr);
    // Refused before anything was written.
    assert!(!dir.join("v1").exists());
}
