//! The `ferry` command as a user runs it: exit codes, output shapes, and one-line errors.

use std::path::Path;
use std::process::Command;

use crate::cmd::{ferry, ok};

/// Runs a command that must fail; returns its stderr, which must be one `error:` line.
fn fails(args: &[&str]) -> String {
    let out = ferry(args);
    assert_eq!(out.status.code(), Some(2), "ferry {args:?} should fail with exit code 2");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("error: ") && stderr.trim_end().lines().count() == 1, "{stderr}");
    stderr
}

/// `ferry commit` arguments: repository, branch, tree, version, signing key, then `extra`.
fn commit_args<'a>(
    repo: &'a str,
    branch: &'a str,
    tree: &'a str,
    version: &'a str,
    key: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args =
        vec!["commit", "--repo", repo, "--branch", branch, "--tree", tree, "--version", version, "--sign-key", key];
    args.extend_from_slice(extra);
    args
}

struct Setup {
    t: tempfile::TempDir,
    repo: String,
    key: String,
}

impl Setup {
    fn new() -> Setup {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo").to_str().unwrap().to_string();
        let key = t.path().join("ci.key").to_str().unwrap().to_string();
        ok(&["init", "--repo", &repo]);
        let public = ok(&["keygen", "--out", &key]);
        assert_eq!(public.trim().len(), 64);
        Setup { t, repo, key }
    }

    fn tree(&self, version: u32) -> String {
        let out = self.t.path().join(format!("v{version}"));
        if !out.exists() {
            ferry_fixtures::generate(&ferry_fixtures::TreeSpec { seed: 5, size: 2 << 20, version }, &out).unwrap();
        }
        out.to_str().unwrap().to_string()
    }

    fn commit(&self, version: u32) -> String {
        let tree = self.tree(version);
        let v = version.to_string();
        let out = ok(&commit_args(
            &self.repo,
            "main",
            &tree,
            &v,
            &self.key,
            &["--meta", "git=abc123", "--hardware", "rev-b", "--hardware", "rev-a"],
        ));
        let last = out.lines().last().unwrap().to_string();
        assert!(last.len() == 64 && last.bytes().all(|b| b.is_ascii_hexdigit()), "{out}");
        last
    }
}

#[test]
fn commit_log_show_ls_diff_checkout_fsck() {
    let s = Setup::new();
    let v1 = s.commit(1);
    let v2 = s.commit(2);

    let log = ok(&["log", "--repo", &s.repo, "--branch", "main"]);
    assert!(log.find(&v2).unwrap() < log.find(&v1).unwrap(), "newest first: {log}");

    let show: serde_json::Value = serde_json::from_str(&ok(&["show", "--repo", &s.repo, &v2[..10], "--json"])).unwrap();
    assert_eq!(show["id"], v2.as_str());
    assert_eq!(show["parent"], v1.as_str());
    assert_eq!(show["version"], "2");
    assert_eq!(show["metadata"]["git"], "abc123");
    assert_eq!(show["hardware"], serde_json::json!(["rev-a", "rev-b"]));
    assert_eq!(show["signatures"][0]["valid"], true);
    assert!(ok(&["show", "--repo", &s.repo, "main"]).contains("signature: "));

    let ls = ok(&["ls", "--repo", &s.repo, "main", "lib"]);
    assert!(ls.contains("libmod0.so -> libmod0.so.1") && ls.contains("libmod0.so.1"), "{ls}");
    let one: serde_json::Value =
        serde_json::from_str(&ok(&["ls", "--repo", &s.repo, "main", "etc/version", "--json"])).unwrap();
    assert_eq!(one[0]["size"], 2);
    assert!(fails(&["ls", "--repo", &s.repo, "main", "etc/nope"]).contains("etc/nope"));

    let diff: serde_json::Value = serde_json::from_str(&ok(&["diff", "--repo", &s.repo, &v1, &v2, "--json"])).unwrap();
    assert!(diff["added"].as_array().unwrap().iter().any(|p| p == "share/doc/added/round2.txt"), "{diff}");
    assert!(diff["changed"].as_array().unwrap().iter().any(|p| p == "etc/version"), "{diff}");
    assert!(!diff["removed"].as_array().unwrap().is_empty());
    let chunks = diff["transfer_chunks"].as_u64().unwrap();
    let bytes = diff["transfer_compressed_bytes"].as_u64().unwrap();
    assert!(chunks > 0 && bytes > 0);
    // With patches against v1's files, less than the plain chunks, everything counted.
    let patched = diff["patch"]["transfer_bytes"].as_u64().unwrap();
    assert!(patched > 0 && patched < bytes, "{diff}");
    assert!(diff["patch"]["patches"].as_u64().unwrap() > 0, "{diff}");
    let plain: serde_json::Value =
        serde_json::from_str(&ok(&["diff", "--repo", &s.repo, &v1, &v2, "--json", "--no-patches"])).unwrap();
    assert_eq!(plain["patch"], serde_json::Value::Null);
    assert_eq!(plain["transfer_compressed_bytes"], diff["transfer_compressed_bytes"]);
    let bad = ferry(&["diff", "--repo", &s.repo, &v1, &v2, "--patch-level", "23"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("23 is not in 1..=22"));
    // A device already on v2 needs nothing; one with nothing needs more than the delta.
    let same: serde_json::Value =
        serde_json::from_str(&ok(&["diff", "--repo", &s.repo, &v2, "main", "--json"])).unwrap();
    assert_eq!(same["transfer_chunks"], 0);
    let text = ok(&["diff", "--repo", &s.repo, &v1, &v2]);
    assert!(text.contains("transfer") && text.contains("with patches against"), "{text}");

    let out = s.t.path().join("checkout");
    ok(&["checkout", "--repo", &s.repo, &v1, out.to_str().unwrap()]);
    assert_eq!(crate::snapshot(&out), crate::snapshot(Path::new(&s.tree(1))));
    let before = crate::snapshot(&out);
    let err = fails(&["checkout", "--repo", &s.repo, &v2, out.to_str().unwrap()]);
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(crate::snapshot(&out), before, "a refused checkout changed the directory");

    let public = format!("{}.pub", s.key);
    ok(&["fsck", "--repo", &s.repo, "--trusted-key", &public]);
    let report: serde_json::Value = serde_json::from_str(&ok(&["fsck", "--repo", &s.repo, "--json"])).unwrap();
    assert_eq!(report["commits"], 2);
    assert_eq!(report["problems"], serde_json::json!([]));
}

#[test]
fn commit_json_summary_and_idempotent_rerun() {
    let s = Setup::new();
    let tree = s.tree(1);
    let args = commit_args(&s.repo, "main", &tree, "1.0.0", &s.key, &["--json"]);
    let first: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    for field in ["files", "bytes", "chunks", "new_chunks", "new_compressed_bytes", "mb_per_s"] {
        assert!(first[field].is_number(), "{field} missing: {first}");
    }
    assert_eq!(first["unchanged"], false);
    let again: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    assert_eq!(again["unchanged"], true);
    assert_eq!(again["commit"], first["commit"]);
    assert_eq!(again["new_chunks"], 0);
}

#[test]
fn keys_that_are_missing_wrong_or_untrusted() {
    let s = Setup::new();
    let tree = s.tree(1);
    let missing = s.t.path().join("missing.key");
    let err = fails(&commit_args(&s.repo, "main", &tree, "1", missing.to_str().unwrap(), &[]));
    assert!(err.contains("missing.key"), "{err}");
    let public = format!("{}.pub", s.key);
    let err = fails(&commit_args(&s.repo, "main", &tree, "1", &public, &[]));
    assert!(err.contains("ci.key.pub") && err.contains("secret key"), "{err}");
    assert!(fails(&["log", "--repo", &s.repo, "--branch", "main"]).contains("no branch"));

    s.commit(1);
    let other = s.t.path().join("other.key");
    ok(&["keygen", "--out", other.to_str().unwrap()]);
    let out = ferry(&["fsck", "--repo", &s.repo, "--trusted-key", &format!("{}.pub", other.display())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no valid signature by a trusted key"));
    assert!(fails(&["keygen", "--out", other.to_str().unwrap()]).contains("already exists"));
}

#[test]
fn bad_arguments_get_clear_errors_and_change_nothing() {
    let s = Setup::new();
    let tree = s.tree(1);
    let err = fails(&commit_args(&s.repo, "main", &tree, "v1", &s.key, &[]));
    assert!(err.contains("--version"), "{err}");
    let err = fails(&commit_args(&s.repo, "a//b", &tree, "1", &s.key, &[]));
    assert!(err.contains("a//b"), "{err}");
    let err = fails(&commit_args(&s.repo, "main", &tree, "1", &s.key, &["--meta", "novalue"]));
    assert!(err.contains("KEY=VALUE"), "{err}");
    let err = fails(&["show", "--repo", &s.repo, "deadbeefdeadbeef"]);
    assert!(err.contains("deadbeefdeadbeef"), "{err}");
    let err = fails(&["init", "--repo", &s.repo, "--chunk-avg", "32768"]);
    assert!(err.contains("created with chunking") && err.contains("32768"), "{err}");
    let err = fails(&["init", "--repo", &s.repo, "--compression-level", "5"]);
    assert!(err.contains("was created with zstd level 3, not 5"), "{err}");
    ok(&["init", "--repo", &s.repo]);
    let err = fails(&[
        "init",
        "--repo",
        s.t.path().join("x").to_str().unwrap(),
        "--chunk-min",
        "100000",
        "--chunk-avg",
        "65536",
    ]);
    assert!(err.contains("min <= avg <= max"), "{err}");
    assert!(!s.t.path().join("x").exists());
    let err = fails(&["log", "--repo", s.t.path().to_str().unwrap(), "--branch", "main"]);
    assert!(err.contains("not a ferry repository"), "{err}");
    // Nothing above created a branch.
    assert!(fails(&["log", "--repo", &s.repo, "--branch", "main"]).contains("no branch"));
}

#[test]
fn source_date_epoch_sets_the_timestamp() {
    let s = Setup::new();
    let tree = s.tree(1);
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(commit_args(&s.repo, "main", &tree, "1", &s.key, &[]))
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(out.status.success());
    let show: serde_json::Value = serde_json::from_str(&ok(&["show", "--repo", &s.repo, "main", "--json"])).unwrap();
    assert_eq!(show["timestamp"], 1_700_000_000);
    assert!(ok(&["show", "--repo", &s.repo, "main"]).contains("2023-11-14 22:13:20 UTC"));
    // SOURCE_DATE_EPOCH in milliseconds would be a time devices take for their clock floor:
    // refused, nothing committed.
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(commit_args(&s.repo, "main", &s.tree(2), "2", &s.key, &[]))
        .env("SOURCE_DATE_EPOCH", "1700000000000")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is SOURCE_DATE_EPOCH in milliseconds?"), "{err}");
    let show: serde_json::Value = serde_json::from_str(&ok(&["show", "--repo", &s.repo, "main", "--json"])).unwrap();
    assert_eq!(show["version"], "1");
}

#[test]
fn a_second_writer_gets_a_clear_error() {
    let s = Setup::new();
    let tree = s.tree(1);
    // This process holds the repository open for writing, as a long `ferry commit` would.
    let _held = ferry_store::Repository::open(Path::new(&s.repo)).unwrap();
    let err = fails(&commit_args(&s.repo, "main", &tree, "1", &s.key, &[]));
    assert!(err.contains("open for writing by another process"), "{err}");
    // Readers are not blocked by the writer.
    assert!(fails(&["log", "--repo", &s.repo, "--branch", "main"]).contains("no branch"));
}

#[test]
fn image_refuses_bad_arguments_before_writing_anything() {
    let t = tempfile::tempdir().unwrap();
    let p = |n: &str| t.path().join(n).display().to_string();
    ok(&["init", "--repo", &p("repo")]);
    ok(&["keygen", "--out", &p("ci.key")]);
    std::fs::create_dir_all(t.path().join("tree")).unwrap();
    std::fs::write(t.path().join("tree/app"), "v1").unwrap();
    let (repo, tree, key) = (p("repo"), p("tree"), p("ci.key"));
    let out = ok(&commit_args(&repo, "main", &tree, "1", &key, &["--hardware", "rev-a"]));
    let c = out.lines().last().unwrap().to_string();
    std::fs::write(t.path().join("device.toml"), "insecure_http = true\nserver = \"http://127.0.0.1:9\"\n").unwrap();
    let image = |extra: &[&str]| {
        let (repo, out, dc) = (p("repo"), p("image"), p("device.toml"));
        let mut args = vec![
            "image",
            "--repo",
            &repo,
            "--commit",
            &c,
            "--out",
            &out,
            "--device-config",
            &dc,
            "--ferryd",
            "/bin/false",
        ];
        args.extend_from_slice(extra);
        fails(&args)
    };
    assert!(image(&["--hardware", "rev-b"]).contains("not for rev-b"));
    assert!(image(&["--hardware", "rev-a", "--raw", &p("sd.img"), "--size", "12Q"]).contains("K, M, G or T"));
    assert!(image(&["--hardware", "rev-a", "--raw", &p("sd.img"), "--size", "1M"]).contains("at least 8 MiB"));
    assert!(image(&["--hardware", "rev-a", "--config-path", "etc/ferryd.toml"]).contains("absolute"));
    assert!(!t.path().join("image").exists(), "nothing was written");
    std::fs::create_dir_all(t.path().join("image/x")).unwrap();
    assert!(image(&["--hardware", "rev-a"]).contains("not empty"));
    // ferryd refusing (here: /bin/false) is reported, not hidden.
    std::fs::remove_dir_all(t.path().join("image")).unwrap();
    assert!(image(&["--hardware", "rev-a"]).contains("ferryd seed-image failed"));
}

/// A version names one commit: another commit under a used version is refused (re-running
/// the same job commits nothing new); a lower version than the head's needs
/// --allow-downgrade; and every command that takes a commit takes its version, saying which
/// rule a bad name failed.
#[test]
fn versions_name_one_build_and_every_command_takes_them() {
    let s = Setup::new();
    let one = s.commit(1);
    let two = s.commit(2);
    let (t1, t3) = (s.tree(1), s.tree(3));
    // Other content under version 2, on this branch or another: refused, the branch unmoved.
    for branch in ["main", "other"] {
        let err = fails(&commit_args(&s.repo, branch, &t3, "2", &s.key, &[]));
        assert!(err.contains("version 2 is already commit") && err.contains(&two[..8]), "{err}");
    }
    assert!(ok(&["show", "--repo", &s.repo, "main", "--json"]).contains(&two));
    // Re-running the job is the same commit; the same build on another branch is another
    // commit, and refused.
    assert_eq!(s.commit(2), two);
    let err = fails(&commit_args(&s.repo, "other", &t1, "1", &s.key, &[]));
    assert!(err.contains("version 1 is already commit") && err.contains(&one[..8]), "{err}");
    // Going down: refused, then allowed when meant.
    let err = fails(&commit_args(&s.repo, "main", &t3, "0", &s.key, &[]));
    assert!(err.contains("version 0 is lower than 2") && err.contains("--allow-downgrade"), "{err}");
    ok(&commit_args(&s.repo, "main", &t3, "0", &s.key, &["--allow-downgrade"]));
    // Versions resolve wherever a commit is named.
    let shown: serde_json::Value = serde_json::from_str(&ok(&["show", "--repo", &s.repo, "2", "--json"])).unwrap();
    assert_eq!(shown["id"], two.as_str(), "{shown}");
    ok(&["diff", "--repo", &s.repo, "2", "0"]);
    let shown: serde_json::Value = serde_json::from_str(&ok(&["show", "--repo", &s.repo, "1", "--json"])).unwrap();
    assert_eq!(shown["id"], one.as_str(), "{shown}");
    for (rev, says) in [
        ("820dbe", "as a commit id prefix it has 6 digits; give at least 8"),
        ("9.9.9", "no commit on the branches has version 9.9.9"),
        ("stabel", "no branch has that name"),
    ] {
        let err = fails(&["show", "--repo", &s.repo, rev]);
        assert!(err.contains(says), "{rev}: {err}");
    }
}
