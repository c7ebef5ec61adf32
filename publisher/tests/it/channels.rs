//! `ferry keys`, `ferry promote` and `ferry channel` as an operator runs them, and the two
//! endpoints devices read documents from.

use std::path::Path;

use crate::cmd::{fails_with as fails, ferry, ok};

use ferry_store::channel::{ChannelDoc, Envelope, KeyDoc};

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(args)).unwrap()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A repository with two signed commits for rev-a (1 and 2; 1 also for rev-b) and keys
/// root, ci and chan in `t`.
fn setup(t: &Path) -> (String, String, String) {
    let repo = s(&t.join("repo"));
    ok(&["init", "--repo", &repo]);
    for k in ["root", "ci", "chan"] {
        ok(&["keygen", "--out", &s(&t.join(format!("{k}.key")))]);
    }
    let mut ids = Vec::new();
    for (v, hw) in [("1", vec!["--hardware", "rev-a", "--hardware", "rev-b"]), ("2", vec!["--hardware", "rev-a"])] {
        let tree = t.join(format!("tree{v}"));
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("app"), format!("release {v}")).unwrap();
        let mut args = vec!["commit", "--repo", &repo, "--branch", "main", "--version", v, "--json"];
        let (tree, key) = (s(&tree), s(&t.join("ci.key")));
        args.extend(["--tree", &tree, "--sign-key", &key]);
        args.extend(hw);
        let v: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
        ids.push(v["commit"].as_str().unwrap().to_string());
    }
    (repo, ids[0].clone(), ids[1].clone())
}

/// The first key document: root, ci and chan of `setup`, signed by the root.
fn first_keys(t: &Path, repo: &str) -> serde_json::Value {
    let key = |k: &str| s(&t.join(k));
    let (root, root_pub, ci_pub, chan_pub) =
        (key("root.key"), key("root.key.pub"), key("ci.key.pub"), key("chan.key.pub"));
    json(&[
        "keys",
        "set",
        "--repo",
        repo,
        "--sign-key",
        &root,
        "--root",
        &root_pub,
        "--commit-key",
        &ci_pub,
        "--channel-key",
        &chan_pub,
        "--json",
    ])
}

#[test]
fn operators_promote_refresh_and_roll_back_from_the_command_line() {
    let t = tempfile::tempdir().unwrap();
    let (repo, c1, c2) = setup(t.path());
    let key = |k: &str| s(&t.path().join(k));
    fails(
        &["promote", "--create", "--repo", &repo, &c1, "--to", "dev", "--sign-key", &key("chan.key")],
        "ferry keys set",
    );
    fails(
        &["keys", "set", "--repo", &repo, "--sign-key", &key("root.key"), "--root", &key("root.key.pub")],
        "--commit-key",
    );
    // The first key document must be signed by one of its own roots.
    fails(
        &[
            "keys",
            "set",
            "--repo",
            &repo,
            "--sign-key",
            &key("ci.key"),
            "--root",
            &key("root.key.pub"),
            "--commit-key",
            &key("ci.key.pub"),
            "--channel-key",
            &key("chan.key.pub"),
        ],
        "signed by 0 of the root keys",
    );
    let k = first_keys(t.path(), &repo);
    assert_eq!(k["serial"], 1);

    fails(
        &["promote", "--create", "--repo", &repo, &c1, "--to", "dev", "--sign-key", &key("ci.key")],
        "may not sign channel documents",
    );
    fails(
        &[
            "promote",
            "--create",
            "--repo",
            &repo,
            &c1,
            "--to",
            "dev",
            "--sign-key",
            &key("chan.key"),
            "--expires",
            "soon",
        ],
        "--expires",
    );
    fails(
        &[
            "promote",
            "--create",
            "--repo",
            &repo,
            &c2,
            "--to",
            "dev",
            "--hardware",
            "rev-b",
            "--sign-key",
            &key("chan.key"),
        ],
        "not for rev-b",
    );
    let promote = |extra: &[&str]| {
        let mut args = vec!["promote", "--create", "--repo", repo.as_str(), "--sign-key"];
        let chan = key("chan.key");
        args.push(&chan);
        args.extend_from_slice(extra);
        args.push("--json");
        json(&args)
    };
    fails(
        &[
            "promote",
            "--create",
            "--repo",
            &repo,
            &c1,
            "--to",
            "dev",
            "--expires",
            "99999999999d",
            "--sign-key",
            &key("chan.key"),
        ],
        "at most 3650d",
    );
    let d = promote(&[&c1, "--to", "dev", "--expires", "2h"]);
    assert_eq!((d["serial"].as_u64(), d["changed"].as_bool()), (Some(1), Some(true)));
    assert_eq!(d["targets"].as_array().unwrap().len(), 2, "both revisions of commit 1: {d}");
    assert!(d["expires"].as_i64().unwrap() - d["timestamp"].as_i64().unwrap() == 7200);
    let b = promote(&["--from", "dev", "--to", "beta"]);
    assert_eq!(b["serial"], 1);
    // Promoting the same targets again writes nothing.
    assert_eq!(promote(&["--from", "dev", "--to", "beta"])["changed"], false);
    // Beta's upstream is dev, which never had commit 2.
    fails(
        &["promote", "--create", "--repo", &repo, &c2, "--to", "beta", "--sign-key", &key("chan.key")],
        "never had commit",
    );
    // Every flag a promotion lacks is named at once, each with its reason; nothing written.
    let out =
        ferry(&["promote", "--repo", &repo, &c2, "--from", "dev", "--to", "stable", "--sign-key", &key("chan.key")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("this promotion needs --force and --create; nothing was written")
            && err.contains("--force: channel dev never had commit")
            && err.contains("--create: channel stable does not exist"),
        "{err}"
    );
    let forced = promote(&[&c2, "--to", "beta", "--force"]);
    assert_eq!(forced["serial"], 2);
    fails(
        &[
            "promote",
            "--create",
            "--repo",
            &repo,
            &c1,
            "--to",
            "beta",
            "--hardware",
            "rev-a",
            "--sign-key",
            &key("chan.key"),
        ],
        "--rollback",
    );
    let back = promote(&[&c1, "--to", "beta", "--hardware", "rev-a", "--rollback"]);
    assert_eq!((back["serial"].as_u64(), back["rollback"].as_bool()), (Some(3), Some(true)));

    // Promoting another revision keeps the mark while the rolled-back target stays: a rev-a
    // device that missed the rollback document must still be allowed to go back.
    let tree3 = t.path().join("tree3");
    std::fs::create_dir_all(&tree3).unwrap();
    std::fs::write(tree3.join("app"), "release 3").unwrap();
    let c3 = json(&[
        "commit",
        "--repo",
        &repo,
        "--branch",
        "main",
        "--tree",
        &s(&tree3),
        "--version",
        "3",
        "--sign-key",
        &key("ci.key"),
        "--hardware",
        "rev-b",
        "--json",
    ])["commit"]
        .as_str()
        .unwrap()
        .to_string();
    let b3 = promote(&[&c3, "--to", "beta", "--force"]);
    assert_eq!((b3["serial"].as_u64(), b3["rollback"].as_bool()), (Some(4), Some(true)));

    // A refresh re-signs with a new serial and expiry and keeps the targets and the mark.
    let r = json(&[
        "channel",
        "refresh",
        "--repo",
        &repo,
        "beta",
        "--sign-key",
        &key("chan.key"),
        "--expires",
        "1d",
        "--json",
    ]);
    assert_eq!((r[0]["serial"].as_u64(), r[0]["rollback"].as_bool()), (Some(5), Some(true)));
    assert_eq!(r[0]["targets"], b3["targets"]);
    let log = json(&["channel", "log", "--repo", &repo, "beta", "--json"]);
    assert_eq!(
        log.as_array().unwrap().iter().map(|d| d["serial"].as_u64().unwrap()).collect::<Vec<_>>(),
        [5, 4, 3, 2, 1]
    );
    let show = json(&["channel", "show", "--repo", &repo, "beta", "--json"]);
    assert_eq!(show["serial"], 5);
    let list = json(&["channel", "list", "--repo", &repo, "--json"]);
    assert_eq!(list[0]["channel"], "beta");
    assert_eq!(list[0]["upstream"], "dev");
    // In words, a channel a line, its columns lined up.
    let text = ok(&["channel", "list", "--repo", &repo]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("CHANNEL  SERIAL      EXPIRES") && lines.len() == 3, "{text}");
    let at = lines[0].find("FROM").unwrap();
    assert!(lines[1].starts_with("beta     5 rollback") && lines[1][at..].starts_with("dev "), "{text}");
    assert!(lines[2].starts_with("dev      1") && lines[2][at..].starts_with("-  "), "{text}");
    fails(&["channel", "show", "--repo", &repo, "nope"], "channel nope does not exist");
    assert!(ok(&["channel", "show", "--repo", &repo, "beta"]).contains("ROLLBACK"));
    let out = ferry(&["fsck", "--repo", &repo]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Rotating the commit key: released commits need the new key's signature to stay
    // promotable (and installable), and `ferry sign` adds it.
    ok(&["keygen", "--out", &key("ci2.key")]);
    ok(&["keys", "set", "--repo", &repo, "--sign-key", &key("root.key"), "--commit-key", &key("ci2.key.pub")]);
    fails(
        &["promote", "--create", "--repo", &repo, &c2, "--to", "stable", "--sign-key", &key("chan.key")],
        "signed by 0 of the commit keys",
    );
    ok(&["sign", "--repo", &repo, &c2, "--sign-key", &key("ci2.key")]);
    assert_eq!(promote(&[&c2, "--to", "stable"])["serial"], 1);
}

#[test]
fn channel_and_key_documents_are_served() {
    let t = tempfile::tempdir().unwrap();
    let (repo, c1, _) = setup(t.path());
    let key = |k: &str| s(&t.path().join(k));
    let (rt, base) = crate::cmd::serve_here(t.path().join("repo"), t.path().join("scratch"));
    rt.block_on(async {
        let c = reqwest::Client::new();
        let get = |p: &str| c.get(format!("{base}/{p}")).send();
        let r = get("keys").await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.unwrap().is_empty());
        assert_eq!(get("channels/stable").await.unwrap().status(), 404);
        assert_eq!(get("channels/..").await.unwrap().status(), 404);

        // Written by the operator while the server runs: seen on the next request.
        let first: Vec<String> = vec![
            "--root".into(),
            key("root.key.pub"),
            "--commit-key".into(),
            key("ci.key.pub"),
            "--channel-key".into(),
            key("chan.key.pub"),
        ];
        for extra in [first, Vec::new()] {
            let mut args: Vec<String> = ["keys", "set", "--repo", &repo, "--sign-key"].map(String::from).to_vec();
            args.push(key("root.key"));
            args.extend(extra);
            ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        }
        ok(&["promote", "--create", "--repo", &repo, &c1, "--to", "stable", "--sign-key", &key("chan.key")]);
        let chain = get("keys").await.unwrap().bytes().await.unwrap();
        let chain = Envelope::decode_all(&chain).unwrap();
        let serials: Vec<u64> = chain.iter().map(|e| KeyDoc::decode(&e.document).unwrap().serial).collect();
        assert_eq!(serials, [1, 2]);
        let r = get("channels/stable").await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["cache-control"], "no-cache");
        let e = Envelope::decode(&r.bytes().await.unwrap()).unwrap();
        let doc = ChannelDoc::decode(&e.document).unwrap();
        assert_eq!((doc.name.as_str(), doc.serial), ("stable", 1));
        assert_eq!(doc.targets[0].commit.to_hex(), c1);
        assert_eq!(e.signatures.len(), 1);
    });
}

#[test]
fn bundles_are_written_for_channels_and_commits() {
    use ferry_delta::bundle::{BundleReader, Section};
    let t = tempfile::tempdir().unwrap();
    let (repo, c1, c2) = setup(t.path());
    let key = |k: &str| s(&t.path().join(k));
    first_keys(t.path(), &repo);
    ok(&["promote", "--create", "--repo", &repo, &c1, "--to", "stable", "--sign-key", &key("chan.key")]);
    let out = key("stable.bundle");
    let b = json(&["bundle", "--repo", &repo, "--to", "stable", "-o", &out, "--json"]);
    assert_eq!((b["channel"].as_str(), b["serial"].as_u64()), (Some("stable"), Some(1)));
    assert_eq!(b["commits"].as_array().unwrap().len(), 1, "{b}");
    assert_eq!(b["bytes"].as_u64().unwrap(), std::fs::metadata(&out).unwrap().len());
    // What the file holds, read back with the device's reader.
    let mut r = BundleReader::new(std::fs::File::open(&out).unwrap()).unwrap();
    let (mut keys, mut channel, mut chunks) = (0, 0, 0);
    while let Some(section) = r.next_section().unwrap() {
        match section {
            Section::Keys(_) => keys += 1,
            Section::Channel(_) => channel += 1,
            Section::Chunk { .. } => chunks += 1,
            _ => {}
        }
    }
    assert_eq!((keys, channel, chunks), (1, 1, b["chunks"].as_u64().unwrap()));
    // Only rev-b's target; a revision the channel lacks is refused.
    let only_b = json(&["bundle", "--repo", &repo, "--to", "stable", "--hardware", "rev-b", "-o", &out, "--json"]);
    assert_eq!(only_b["commits"][0]["commit"], c1.as_str());
    fails(&["bundle", "--repo", &repo, "--to", "stable", "--hardware", "rev-z", "-o", &out], "no target for hardware");
    // A commit, against an older one: only what changed.
    let delta = json(&["bundle", "--repo", &repo, "--to", &c2, "--from", &c1, "-o", &out, "--json"]);
    assert_eq!((delta["channel"].as_str(), delta["from"][0].as_str()), (None, Some(c1.as_str())));
    assert_eq!(delta["chunks"], 1, "one file changed: {delta}");
    // To a pipe.
    let piped = ferry(&["bundle", "--repo", &repo, "--to", "main", "-o", "-"]);
    assert!(piped.status.success());
    assert_eq!(&piped.stdout[..4], b"FRYB");
    // A name that is both a channel and a branch must be spelled out.
    ok(&["promote", "--create", "--repo", &repo, &c2, "--to", "main", "--sign-key", &key("chan.key")]);
    fails(&["bundle", "--repo", &repo, "--to", "main", "-o", &out], "channel:main");
    assert_eq!(json(&["bundle", "--repo", &repo, "--to", "channel:main", "-o", &out, "--json"])["channel"], "main");
    fails(&["bundle", "--repo", &repo, "--to", "nothing-here", "-o", &out], "names no channel");
    fails(&["bundle", "--repo", &repo, "--to", "stable", "--from", "0123456789abcdef", "-o", &out], "0123456789abcdef");
    fails(&["bundle", "--repo", &repo, "--to", "stable", "-o", &s(&t.path().join("no/such/dir/x"))], "no/such/dir");
    // A failed write leaves nothing beside the target.
    let leftovers: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty());
}

/// A bundle installs what it carries past the fleet's rollout: bundling a document that a
/// halted rollout holds back used to put it on any device a technician reached. With
/// `--fleet`, `ferry bundle` refuses it (read beside the running server), names why, and
/// takes it only with `--force`; a running partial rollout is a warning.
#[test]
fn a_bundle_of_a_document_a_halted_rollout_holds_back_needs_force() {
    use ferry_publisher::fleet::{Caller, Fleet, HeadDoc, Settings};
    let t = tempfile::tempdir().unwrap();
    let (repo, c1, c2) = setup(t.path());
    first_keys(t.path(), &repo);
    let key = |k: &str| s(&t.path().join(k));
    ok(&["promote", "--create", "--repo", &repo, &c1, "--to", "stable", "--sign-key", &key("chan.key")]);
    let base = json(&["channel", "show", "--repo", &repo, "stable", "--json"]);
    // The fleet's directory, or its PostgreSQL database (`FERRY_TEST_FLEET_DB=postgres`,
    // scripts/test-postgres): `--fleet DIR` or `--fleet-db URL`.
    let fleet = t.path().join("fleet");
    let store = ferry_fixtures::postgres::TestFleetStore::new(&fleet).unwrap();
    let flag = if store.is_postgres() { "--fleet-db" } else { "--fleet" };
    let f = Fleet::open(ferry_publisher::fleet::db::Location::parse(&store.at), Settings::default()).unwrap();
    let head = HeadDoc {
        id: base["id"].as_str().unwrap().to_string(),
        serial: base["serial"].as_u64().unwrap(),
        targets: Default::default(),
    };
    f.start_rollout(&Caller::Local, "stable", &head, 10, None, 10).unwrap();
    ok(&["promote", "--create", "--repo", &repo, &c2, "--to", "stable", "--sign-key", &key("chan.key")]);
    let out = key("stable.bundle");
    let bundle = |extra: &[&str]| {
        let mut args = vec!["bundle", "--repo", repo.as_str(), "--to", "stable", flag];
        args.push(&store.at);
        args.extend(["-o", out.as_str()]);
        args.extend(extra);
        ferry(&args)
    };
    // Running at 10%: bundled, with a warning (the fleet store is open in this process: the
    // read-only open works beside its writer, as beside `ferry serve`).
    let r = bundle(&[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stderr).contains("gives document serial 2 to 10%"));
    // Halted: refused, nothing written; forced: written, with a warning.
    f.change_rollout(&Caller::Local, "stable", ferry_publisher::fleet::RolloutAction::Pause, None).unwrap();
    std::fs::remove_file(&out).unwrap();
    let r = bundle(&[]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("rollout of document serial 2 is paused"), "{err}");
    assert!(!Path::new(&out).exists(), "a refused bundle writes nothing");
    let r = bundle(&["--force"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stderr).contains("bundling it anyway"));
    // A directory that holds no fleet is an error naming it, and nothing is written.
    std::fs::remove_file(&out).unwrap();
    let nowhere = s(&t.path().join("no-fleet"));
    fails(&["bundle", "--repo", &repo, "--to", "stable", "--fleet", &nowhere, "-o", &out], "no-fleet");
    assert!(!Path::new(&out).exists());
    // A commit bundle is not a channel's: no rollout applies.
    ok(&["bundle", "--repo", &repo, "--to", &c2, flag, &store.at, "-o", &out]);
}

/// `text` is exactly what serde_json's sorted map writes for the same value (compact as the
/// server sends it, or pretty with a newline as `ferry --json` prints it), and each of its
/// objects (the array's, or itself) has exactly `keys`. The documents' JSON was first built
/// that way; this holds it to the same bytes.
fn sorted_text(text: &str, pretty: bool, keys: &[&str]) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    let again =
        if pretty { serde_json::to_string_pretty(&v).unwrap() + "\n" } else { serde_json::to_string(&v).unwrap() };
    assert_eq!(text, again);
    for o in v.as_array().cloned().unwrap_or_else(|| vec![v.clone()]) {
        assert_eq!(o.as_object().unwrap().keys().collect::<Vec<_>>(), keys, "{o}");
    }
    v
}

const DOC: [&str; 8] = ["channel", "expires", "id", "previous", "rollback", "serial", "targets", "timestamp"];

#[test]
fn channel_documents_keep_their_text() {
    let t = tempfile::tempdir().unwrap();
    let (repo, c1, c2) = setup(t.path());
    let key = |k: &str| s(&t.path().join(k));
    first_keys(t.path(), &repo);
    let promoted_keys = [&["changed"][..], &DOC].concat();
    let d = ok(&["promote", "--create", "--repo", &repo, &c1, "--to", "dev", "--sign-key", &key("chan.key"), "--json"]);
    let d = sorted_text(&d, true, &promoted_keys);
    assert_eq!(d["targets"][0].as_object().unwrap().keys().collect::<Vec<_>>(), ["commit", "hardware", "version"]);
    assert_eq!(d["previous"], serde_json::Value::Null);
    ok(&["promote", "--create", "--repo", &repo, "--from", "dev", "--to", "beta", "--sign-key", &key("chan.key")]);
    sorted_text(&ok(&["channel", "show", "--repo", &repo, "dev", "--json"]), true, &DOC);
    let refresh = ["channel", "refresh", "--repo", &repo, "dev", "--sign-key", &key("chan.key"), "--json"];
    sorted_text(&ok(&refresh), true, &DOC);
    let log = ["channel", "log", "--repo", &repo, "dev", "--json"];
    let signed = [&DOC[..6], &["signed_by"], &DOC[6..]].concat();
    sorted_text(&ok(&log), true, &signed);
    sorted_text(&ok(&["channel", "list", "--repo", &repo, "--json"]), true, &[&DOC[..], &["upstream"]].concat());

    // The admin API's listing and promotion, from a server holding the channel key.
    let fleet = key("fleet");
    let admin =
        ok(&["admin", "token", "create", "--name", "ops", "--fleet", &fleet, "--create-fleet"]).trim().to_string();
    let server = crate::cmd::serve(&repo, &["--fleet", &fleet, "--channel-key", &key("chan.key")]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let http = reqwest::Client::new();
    let (promoted, listed) = rt.block_on(async {
        let promoted = http
            .post(format!("{}/v1/admin/channels/dev/promote", server.1))
            .bearer_auth(&admin)
            .body(format!(r#"{{"commit":"{c2}","hardware":["rev-a"]}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(promoted.status(), 200);
        let listed = http.get(format!("{}/v1/admin/channels", server.1)).bearer_auth(&admin).send().await.unwrap();
        (promoted.text().await.unwrap(), listed.text().await.unwrap())
    });
    let p = sorted_text(&promoted, false, &promoted_keys);
    assert_eq!((p["serial"].as_u64(), p["changed"].as_bool()), (Some(3), Some(true)));
    let listing = [&DOC[..2], &["history"], &DOC[2..], &["upstream"]].concat();
    let l = sorted_text(&listed, false, &listing);
    assert_eq!((l[0]["channel"].as_str(), l[0]["upstream"].as_str()), (Some("beta"), Some("dev")));
    assert_eq!(l[1]["history"].as_array().unwrap().len(), 3);
    sorted_text(&l[1]["history"].to_string(), false, &DOC);
    let audit = ok(&["audit", "--json", "--server", &server.1, "--token", &admin]);
    assert!(audit.contains(&format!("dev serial 3 (commit {c2})")), "{audit}");
}

/// Key documents version 2 from the command line: expiry, thresholds and configuration keys
/// set, shown and kept; a threshold beyond its role refused; `ferry keys refresh` re-signs
/// with a new expiry and nothing else changed; a channel threshold of 2 needs two
/// `--sign-key`s on `ferry promote`.
#[test]
fn operators_set_expiry_thresholds_and_config_keys() {
    let t = tempfile::tempdir().unwrap();
    let (repo, c1, _) = setup(t.path());
    let key = |k: &str| s(&t.path().join(k));
    for k in ["root2", "chan2", "conf"] {
        ok(&["keygen", "--out", &key(&format!("{k}.key"))]);
    }
    let k = first_keys(t.path(), &repo);
    // Without --expires-in, a year.
    assert_eq!((k["version"].as_u64(), k["thresholds"]["root"].as_u64()), (Some(2), Some(1)));
    assert_eq!(k["expires"].as_i64().unwrap() - k["timestamp"].as_i64().unwrap(), 365 * 86400);
    assert_eq!(k["config_keys"], serde_json::json!([]));

    // `ferry keys set --repo REPO --json` followed by `extra`.
    let set = |extra: &[&str]| -> Vec<String> {
        ["keys", "set", "--repo", repo.as_str(), "--json"].iter().chain(extra).map(|a| a.to_string()).collect()
    };
    let (root, root2, chan2) = (key("root.key"), key("root2.key"), key("chan2.key"));
    let (root_pub, root2_pub) = (key("root.key.pub"), key("root2.key.pub"));
    let (chan_pub, chan2_pub, conf_pub) = (key("chan.key.pub"), key("chan2.key.pub"), key("conf.key.pub"));
    // A threshold beyond its role's keys is refused, naming it; nothing is written.
    fails(&strs(&set(&["--sign-key", &root, "--commit-threshold", "2"])), "commit threshold 2 is outside 1..=1");
    fails(&strs(&set(&["--sign-key", &root, "--expires-in", "soon"])), "--expires-in");
    assert_eq!(json(&["keys", "show", "--repo", &repo, "--json"]).as_array().unwrap().len(), 1);

    let k = json(&strs(&set(&[
        "--sign-key",
        &root,
        "--sign-key",
        &root2,
        "--root",
        &root_pub,
        "--root",
        &root2_pub,
        "--root-threshold",
        "2",
        "--channel-key",
        &chan_pub,
        "--channel-key",
        &chan2_pub,
        "--channel-threshold",
        "2",
        "--config-key",
        &conf_pub,
        "--expires-in",
        "30d",
    ])));
    assert_eq!(k["serial"], 2);
    assert_eq!(k["expires"].as_i64().unwrap() - k["timestamp"].as_i64().unwrap(), 30 * 86400);
    assert_eq!((k["thresholds"]["root"].as_u64(), k["thresholds"]["channel"].as_u64()), (Some(2), Some(2)));
    assert_eq!(k["config_keys"].as_array().unwrap().len(), 1);
    // From now on one root is not enough.
    fails(&["keys", "refresh", "--repo", &repo, "--sign-key", &root], "signed by 1 of the root keys");
    let r = json(&["keys", "refresh", "--repo", &repo, "--sign-key", &root, "--sign-key", &root2, "--json"]);
    assert_eq!(r["serial"], 3);
    assert_eq!(r["expires"].as_i64().unwrap() - r["timestamp"].as_i64().unwrap(), 30 * 86400, "the lifetime stays");
    for field in ["roots", "commit_keys", "channel_keys", "config_keys", "thresholds"] {
        assert_eq!(r[field], k[field], "{field} changed on refresh");
    }
    let r = json(&[
        "keys",
        "refresh",
        "--repo",
        &repo,
        "--sign-key",
        &root,
        "--sign-key",
        &root2,
        "--expires-in",
        "400d",
        "--json",
    ]);
    assert_eq!(r["expires"].as_i64().unwrap() - r["timestamp"].as_i64().unwrap(), 400 * 86400);
    let text = ok(&["keys", "show", "--repo", &repo]);
    assert!(text.contains(&format!("{:<14}1 of 1", "config keys:")), "{text}");
    assert!(text.contains(&format!("{:<14}2 of 2", "roots:")), "{text}");

    // Channel documents need both channel keys now.
    fails(
        &["promote", "--create", "--repo", &repo, &c1, "--to", "dev", "--sign-key", &key("chan.key")],
        "asks 2 signatures",
    );
    ok(&[
        "promote",
        "--create",
        "--repo",
        &repo,
        &c1,
        "--to",
        "dev",
        "--sign-key",
        &key("chan.key"),
        "--sign-key",
        &chan2,
    ]);
    assert!(ferry(&["fsck", "--repo", &repo]).status.success());

    // Removing the configuration keys (its threshold stays 1, valid for none).
    let k = json(&strs(&set(&["--sign-key", &root, "--sign-key", &root2, "--no-config-keys"])));
    assert_eq!(k["config_keys"], serde_json::json!([]));
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A new channel needs --create (a typo starts nothing); a retired channel is gone from the
/// list and from refreshes, and its name needs --create again; an upstream is not retired
/// from under the channel promoted from it.
#[test]
fn channels_are_created_on_purpose_and_retired() {
    let t = tempfile::tempdir().unwrap();
    let (repo, c1, _) = setup(t.path());
    let key = |k: &str| s(&t.path().join(k));
    first_keys(t.path(), &repo);
    let chan = key("chan.key");
    ok(&["promote", "--repo", &repo, &c1, "--to", "dev", "--create", "--sign-key", &chan]);
    ok(&["promote", "--repo", &repo, "--from", "dev", "--to", "stable", "--create", "--sign-key", &chan]);
    // A typo: refused, naming the channels there are; nothing written.
    let out = ferry(&["promote", "--repo", &repo, &c1, "--to", "stabel", "--sign-key", &chan]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("channel stabel does not exist (the channels are dev, stable)"),
        "{err}"
    );
    assert!(err.contains("--create"), "{err}");
    let names = |v: serde_json::Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|d| d["channel"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(names(json(&["channel", "list", "--repo", &repo, "--json"])), ["dev", "stable"]);
    // Made by mistake with --create, then retired: gone from the list and from refreshes.
    ok(&["promote", "--repo", &repo, &c1, "--to", "stabel", "--create", "--sign-key", &chan]);
    let retired = json(&["channel", "retire", "--repo", &repo, "stabel", "--json"]);
    assert_eq!(retired["retired"], "stabel");
    assert_eq!(names(json(&["channel", "list", "--repo", &repo, "--json"])), ["dev", "stable"]);
    let refreshed = json(&["channel", "refresh", "--repo", &repo, "--sign-key", &chan, "--json"]);
    assert_eq!(names(refreshed), ["dev", "stable"]);
    fails(&["channel", "show", "--repo", &repo, "stabel"], "stabel");
    fails(&["channel", "retire", "--repo", &repo, "stabel"], "channel stabel does not exist");
    fails(&["promote", "--repo", &repo, &c1, "--to", "stabel", "--sign-key", &chan], "--create");
    // Made again, it goes on from its last serial: its devices would refuse serial 1 as a
    // replay. Then retired again.
    let again = json(&["promote", "--repo", &repo, &c1, "--to", "stabel", "--create", "--sign-key", &chan, "--json"]);
    assert_eq!(
        (again["serial"].as_u64(), again["previous"].as_str()),
        (Some(2), retired["last_document"].as_str()),
        "{again}"
    );
    ok(&["channel", "retire", "--repo", &repo, "stabel"]);
    // dev is stable's upstream: refused until stable goes.
    fails(&["channel", "retire", "--repo", &repo, "dev"], "channel dev is the upstream of stable");
    ok(&["channel", "retire", "--repo", &repo, "stable"]);
    ok(&["channel", "retire", "--repo", &repo, "dev"]);
    assert_eq!(json(&["channel", "list", "--repo", &repo, "--json"]), serde_json::json!([]));
}
