//! Attacks on `ferry serve --fleet` from the network (issue 18): reading the repository
//! without a token, patch requests that would cost the server more than it allows,
//! repeated compressed tree requests, and enrollment floods. The server runs in this
//! process on 127.0.0.1:0 and is spoken to with reqwest.

use std::path::PathBuf;

use ferry_delta::patch::{encode_patch_request, Patch, MAX_REQUEST_TARGET_BYTES};
use ferry_publisher::fleet::{Caller, Fleet, Settings, TokenKind};
use ferry_publisher::patches::Limits;
use ferry_store::{ChunkRef, Id, Repository};

use crate::{commit, init};

/// A repository with releases 1 and 2 on main, served with a fleet.
struct Served {
    t: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    /// The fleet's store (PostgreSQL with `FERRY_TEST_FLEET_DB=postgres`): after `rt`.
    _store: ferry_fixtures::postgres::TestFleetStore,
    /// `http://ADDR/v1`
    base: String,
    admin: String,
    enrollment: String,
    /// Commits of releases 1 and 2.
    old: Id,
    new: Id,
}

/// An answer: status, `Retry-After` if any, body.
type Answer = (u16, Option<String>, Vec<u8>);

impl Served {
    fn start(limits: Limits) -> Served {
        let t = tempfile::tempdir().unwrap();
        let repo = init(t.path(), ferry_store::ChunkParams::default());
        let mut ids = Vec::new();
        for v in 1..=2 {
            let tree = t.path().join(format!("tree-{v}"));
            ferry_fixtures::generate(&ferry_fixtures::TreeSpec { seed: 5, size: 1 << 20, version: v }, &tree).unwrap();
            ids.push(commit(&repo, &tree, "main", &v.to_string()).unwrap().commit.parse::<Id>().unwrap());
        }
        drop(repo);
        let store = ferry_fixtures::postgres::TestFleetStore::new(&t.path().join("fleet")).unwrap();
        let path = ferry_publisher::fleet::db::Location::parse(&store.at);
        let settings = Settings::default();
        let (admin, enrollment) = {
            let f = Fleet::open(&path, settings.clone()).unwrap();
            let admin = f.create_token(&Caller::Local, TokenKind::Admin, "ops").unwrap();
            (admin, f.create_token(&Caller::Local, TokenKind::Enrollment, "factory").unwrap())
        };
        let config = ferry_publisher::serve::ServeConfig {
            // Nothing prepared in the background: what the cache holds is what the requests
            // computed (the fast first answer stays on, and must respect the allowance too).
            patches: ferry_publisher::serve::PatchConfig { limits, prepare: false, ..Default::default() },
            fleet: Some(ferry_publisher::serve::FleetConfig {
                store: path,
                settings,
                channel_key: None,
                config_key: None,
            }),
            ..Default::default()
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (repo, scratch) = (t.path().join("repo"), t.path().join("scratch"));
        rt.spawn(async move {
            ferry_publisher::serve::serve_with(
                repo,
                scratch,
                "127.0.0.1:0".parse().unwrap(),
                &config,
                move |a| tx.send(a).unwrap(),
                std::future::pending(),
            )
            .await
            .unwrap()
        });
        let base = format!("http://{}/v1", rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap());
        Served { t, rt, _store: store, base, admin, enrollment, old: ids[0], new: ids[1] }
    }

    fn repo(&self) -> Repository {
        Repository::open_read_only(&self.t.path().join("repo")).unwrap()
    }

    /// The patch cache's entries (compressed trees are cached there too).
    fn cache_entries(&self) -> Vec<PathBuf> {
        let dir = self.t.path().join("scratch/patch-cache");
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        v.sort();
        v
    }

    /// `method` on `/v1/{path}` with an optional bearer token, within 60 s.
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Vec<u8>) -> Answer {
        self.call_with(method, path, token, body, "retry-after")
    }

    /// [`Served::call`], the answer's `header` (instead of `Retry-After`) second.
    fn call_with(&self, method: &str, path: &str, token: Option<&str>, body: Vec<u8>, header: &str) -> Answer {
        self.rt.block_on(async {
            let c = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build().unwrap();
            let url = format!("{}/{path}", self.base);
            let mut req = if method == "POST" { c.post(url).body(body) } else { c.get(url) };
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            let retry = r.headers().get(header).map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), retry, r.bytes().await.unwrap().to_vec())
        })
    }

    /// Enrolls `serial` with the fleet's enrollment token: (status, Retry-After, answer).
    fn enroll(&self, serial: &str) -> (u16, Option<String>, serde_json::Value) {
        let body = serde_json::json!({ "serial": serial, "hardware": "rev-a", "enrollment_token": self.enrollment });
        let (status, retry, bytes) = self.call("POST", "device/enroll", None, serde_json::to_vec(&body).unwrap());
        (status, retry, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    /// A device token of an accepted device.
    fn device_token(&self, serial: &str) -> String {
        let (status, _, v) = self.enroll(serial);
        assert_eq!((status, v["state"].as_str()), (200, Some("accepted")), "{v}");
        v["device_token"].as_str().unwrap().to_string()
    }

    /// Chunks of release 2 with their lengths, largest first.
    fn chunks(&self) -> Vec<ChunkRef> {
        let r = self.repo();
        let c = r.read_commit(&self.new).unwrap();
        let (mut trees, mut chunks) = (Default::default(), std::collections::HashSet::new());
        ferry_delta::plan::collect_chunks(&r, &c.root, &mut trees, &mut chunks).unwrap();
        let mut v: Vec<ChunkRef> =
            chunks.into_iter().map(|id| ChunkRef { id, len: r.chunk_info(&id).unwrap().unwrap().len }).collect();
        v.sort_by_key(|c| (std::cmp::Reverse(c.len), c.id));
        v
    }

    fn roots(&self) -> (Id, Id) {
        let r = self.repo();
        (r.read_commit(&self.new).unwrap().root, r.read_commit(&self.old).unwrap().root)
    }
}

/// Every repository route, as (method, path, body), each of which a reader may have.
fn routes(s: &Served) -> Vec<(&'static str, String, Vec<u8>)> {
    let (new_root, old_root) = s.roots();
    let chunks = s.chunks();
    let trees = [new_root.as_bytes().as_slice(), old_root.as_bytes().as_slice()].concat();
    let patch = Patch { reference: chunks[1..2].to_vec(), target: chunks[2..3].to_vec() };
    vec![
        ("GET", "branches/main".into(), vec![]),
        ("GET", "keys".into(), vec![]),
        ("GET", "versions/2".into(), vec![]),
        ("GET", format!("objects/{}", s.new), vec![]),
        ("GET", format!("commits/{}", s.new), vec![]),
        ("GET", format!("commits/{}/signatures", s.new), vec![]),
        ("GET", format!("chunks/{}", chunks[0].id), vec![]),
        ("POST", "chunks".into(), ferry_delta::pack::encode_request(&[chunks[0].id])),
        ("POST", "objects".into(), ferry_delta::pack::encode_request(&[new_root])),
        ("POST", "trees".into(), trees),
        ("POST", "patches".into(), encode_patch_request(&[patch])),
    ]
}

#[test]
fn fleet_repository_routes_refuse_requests_without_a_device_or_admin_token() {
    let s = Served::start(Limits::default());
    let device = s.device_token("SN-1");
    for (method, path, body) in routes(&s) {
        for token in [None, Some(s.enrollment.as_str()), Some("fd_not-a-token")] {
            let (status, _, answer) = s.call(method, &path, token, body.clone());
            assert_eq!(status, 401, "{method} {path} with {token:?}: {}", String::from_utf8_lossy(&answer));
        }
        for token in [&device, &s.admin] {
            let (status, _, answer) = s.call(method, &path, Some(token), body.clone());
            assert_eq!(status, 200, "{method} {path}: {}", String::from_utf8_lossy(&answer));
        }
    }
    // Channels too (this repository has none: past the token check, 404).
    assert_eq!(s.call("GET", "channels/stable", None, vec![]).0, 401);
    assert_eq!(s.call("GET", "channels/stable", Some(&device), vec![]).0, 404);

    // A revoked device reads nothing.
    let (status, _, _) = s.call("POST", "admin/devices/SN-1/revoke", Some(&s.admin), vec![]);
    assert_eq!(status, 200);
    for (method, path, body) in routes(&s) {
        assert_eq!(s.call(method, &path, Some(&device), body).0, 403, "{method} {path}");
    }
}

#[test]
fn fleet_a_patch_request_over_the_target_bound_is_refused_before_any_work() {
    let s = Served::start(Limits::default());
    let device = s.device_token("SN-1");
    let chunks = s.chunks();
    // The largest chunk repeated to a 4 MiB target, against the smallest one repeated a
    // different number of times (so every item differs): more than the request bound in
    // all, with few ids and a small body.
    let (big, small) = (chunks[0], chunks[chunks.len() - 1]);
    let per_target = (ferry_delta::patch::TARGET_MAX / u64::from(big.len)) as usize;
    let per_item = per_target as u64 * u64::from(big.len);
    let n = (MAX_REQUEST_TARGET_BYTES / per_item + 1) as usize;
    let items: Vec<Patch> =
        (0..n).map(|i| Patch { reference: vec![small; i + 1], target: vec![big; per_target] }).collect();
    let (status, _, answer) = s.call("POST", "patches", Some(&device), encode_patch_request(&items));
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&answer));
    assert!(String::from_utf8_lossy(&answer).contains("limit per request"), "{}", String::from_utf8_lossy(&answer));
    assert!(s.cache_entries().is_empty(), "nothing was computed: {:?}", s.cache_entries());
}

#[test]
fn fleet_patch_work_past_a_clients_allowance_is_answered_plain_and_not_cached() {
    // A client whose CPU allowance is spent: many distinct random items cost no compression.
    let s = Served::start(Limits { client_burst_seconds: 0.0, ..Limits::default() });
    let device = s.device_token("SN-1");
    let chunks = s.chunks();
    let items: Vec<Patch> =
        (1..chunks.len().min(40)).map(|i| Patch { reference: vec![chunks[i - 1]], target: vec![chunks[i]] }).collect();
    let (status, _, body) = s.call("POST", "patches", Some(&device), encode_patch_request(&items));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let mut d = ferry_delta::pack::FrameDecoder::new(items.iter().map(|p| (p.key(), p.max_response_len())));
    let frames = d.feed(&body).unwrap();
    d.finish().unwrap();
    assert_eq!(frames.len(), items.len());
    let repo = s.repo();
    for (p, f) in items.iter().zip(&frames) {
        assert_eq!(f.bytes.first(), Some(&1), "answered plain");
        let reference: Vec<u8> = p.reference.iter().flat_map(|c| repo.read_chunk(&c.id).unwrap()).collect();
        match ferry_delta::patch::decode_patch_response(p, Some(&reference), &f.bytes).unwrap() {
            ferry_delta::patch::PatchPayload::Plain(stored) => assert_eq!(stored.len(), p.target.len()),
            other => panic!("expected the plain form, got {other:?}"),
        }
    }
    assert!(s.cache_entries().is_empty(), "plain answers are not cached: {:?}", s.cache_entries());
}

#[test]
fn fleet_a_repeated_compressed_trees_request_is_served_from_the_cache() {
    let s = Served::start(Limits::default());
    let device = s.device_token("SN-1");
    let (new_root, old_root) = s.roots();
    let body = [new_root.as_bytes().as_slice(), old_root.as_bytes().as_slice(), &[1]].concat();
    let (status, _, first) = s.call("POST", "trees", Some(&device), body.clone());
    assert_eq!(status, 200);
    let entries = s.cache_entries();
    assert_eq!(entries.len(), 1, "the answer is cached: {entries:?}");
    // Swap the cached entry for another well-formed one: the next answer comes from it.
    let marker = b"served from the cache".to_vec();
    std::fs::write(&entries[0], [blake3::hash(&marker).as_bytes().as_slice(), &marker].concat()).unwrap();
    let (status, _, second) = s.call("POST", "trees", Some(&device), body.clone());
    assert_eq!(status, 200);
    assert_eq!(second, marker);
    assert_ne!(first, marker);
    assert_eq!(s.cache_entries(), entries);
}

#[test]
fn fleet_the_eleventh_enrollment_in_a_burst_gets_429() {
    let s = Served::start(Limits::default());
    for i in 0..ferry_publisher::fleet::ENROLLMENTS_PER_MINUTE {
        let (status, _, v) = s.enroll(&format!("SN-{i}"));
        assert_eq!(status, 200, "{v}");
    }
    let (status, retry, v) = s.enroll("SN-one-too-many");
    assert_eq!(status, 429, "{v}");
    let retry: u64 = retry.expect("a Retry-After header").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(v["error"].as_str().unwrap().contains("too many enrollments"), "{v}");
    // Nothing was recorded for it.
    let (_, _, list) = s.call("GET", "admin/devices", Some(&s.admin), vec![]);
    let list: serde_json::Value = serde_json::from_slice(&list).unwrap();
    assert_eq!(list.as_array().unwrap().len(), ferry_publisher::fleet::ENROLLMENTS_PER_MINUTE as usize);
}

#[test]
fn fleet_reenrolling_a_known_serial_changes_nothing_until_an_operator_approves() {
    let s = Served::start(Limits::default());
    let real = s.device_token("SN-1");
    let checkin = |token: &str| {
        let (status, _, body) = s.call("POST", "device/checkin", Some(token), b"{}".to_vec());
        (status, serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default())
    };
    let (_, _, _) = s.call(
        "POST",
        "admin/config/device/SN-1",
        Some(&s.admin),
        serde_json::to_vec(&serde_json::json!({ "set": { "SECRET": "s3cret" } })).unwrap(),
    );
    assert_eq!(checkin(&real).1["config"]["values"]["SECRET"], "s3cret");

    // The attacker enrolls the same serial with the enrollment token from an image.
    let (status, _, v) = s.enroll("SN-1");
    assert_eq!((status, v["state"].as_str()), (200, Some("pending")), "{v}");
    let stolen = v["device_token"].as_str().unwrap().to_string();
    let (status, v) = checkin(&stolen);
    assert_eq!(status, 403, "{v}");
    assert!(v.get("config").is_none(), "{v}");
    assert_eq!(s.call("GET", "branches/main", Some(&stolen), vec![]).0, 403);
    // The real device is untouched.
    let (status, v) = checkin(&real);
    assert_eq!((status, v["state"].as_str()), (200, Some("accepted")), "{v}");
    assert_eq!(s.call("GET", "branches/main", Some(&real), vec![]).0, 200);
    let (_, _, d) = s.call("GET", "admin/devices/SN-1", Some(&s.admin), vec![]);
    let d: serde_json::Value = serde_json::from_slice(&d).unwrap();
    assert_eq!(
        (d["state"].as_str(), d["reenrollment"]["enrollment_token"].as_str()),
        (Some("accepted"), Some("factory"))
    );
    // Accepting the device again hands nothing over either.
    assert_eq!(s.call("POST", "admin/devices/SN-1/accept", Some(&s.admin), vec![]).0, 200);
    assert_eq!(checkin(&stolen).0, 403);

    // Rejected: the request's token never works; the device keeps its own.
    assert_eq!(s.call("POST", "admin/devices/SN-1/reject-reenrollment", Some(&s.admin), vec![]).0, 200);
    assert_eq!(checkin(&stolen).0, 401);
    assert_eq!(checkin(&real).0, 200);
    // Approved (a reflashed board): the operator approves the request by the fingerprint
    // the board shows (the first 12 hex digits of its token's BLAKE3 hash).
    let (_, _, v) = s.enroll("SN-1");
    let reflashed = v["device_token"].as_str().unwrap().to_string();
    let fingerprint = blake3::hash(reflashed.as_bytes()).to_hex()[..12].to_string();
    let request = |s: &Served| -> serde_json::Value {
        let (_, _, d) = s.call("GET", "admin/devices/SN-1", Some(&s.admin), vec![]);
        serde_json::from_slice::<serde_json::Value>(&d).unwrap()["reenrollment"]["request"].clone()
    };
    assert_eq!(request(&s), fingerprint);
    let approve = |fp: &str| {
        let body = serde_json::to_vec(&serde_json::json!({ "request": fp })).unwrap();
        s.call("POST", "admin/devices/SN-1/approve-reenrollment", Some(&s.admin), body).0
    };
    // Someone else re-enrolls between the operator's look and the approval: the approval
    // names the request it meant, so it is refused and changes nothing.
    let (_, _, v) = s.enroll("SN-1");
    let intruder = v["device_token"].as_str().unwrap().to_string();
    assert_eq!(approve(&fingerprint), 409);
    assert_eq!((checkin(&intruder).0, checkin(&real).0), (403, 200));
    assert_eq!(s.call("POST", "admin/devices/SN-1/approve-reenrollment", Some(&s.admin), vec![]).0, 400);
    // The board enrolls again (its request is the newest), and that one is approved.
    let (_, _, v) = s.enroll("SN-1");
    let reflashed = v["device_token"].as_str().unwrap().to_string();
    let fingerprint = blake3::hash(reflashed.as_bytes()).to_hex()[..12].to_string();
    assert_eq!(approve(&fingerprint), 200);
    assert_eq!(checkin(&reflashed).0, 200);
    assert_eq!((checkin(&real).0, checkin(&intruder).0), (401, 401));
    assert_eq!(approve(&fingerprint), 404);
}

/// The admin API's device list comes in pages that name the next one, keep their filters,
/// and end; a bad `limit`, `after` or other query is a 400 that names it.
#[test]
fn fleet_the_device_list_comes_in_pages_and_refuses_bad_queries() {
    let s = Served::start(Limits::default());
    for i in 1..=7 {
        s.device_token(&format!("SN-{i}"));
    }
    assert_eq!(s.call("POST", "admin/devices/SN-2/revoke", Some(&s.admin), vec![]).0, 200);
    // Every page: (serials, the next page's path).
    let pages = |first: &str| -> Vec<(Vec<String>, Option<String>)> {
        let (mut path, mut pages) = (first.to_string(), Vec::new());
        loop {
            let (status, link, body) = s.call_with("GET", &path, Some(&s.admin), vec![], "link");
            assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
            let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let serials = list.as_array().unwrap().iter().map(|d| d["serial"].as_str().unwrap().to_string()).collect();
            let next = link.map(|l| {
                let p = l.strip_prefix("</v1/").and_then(|l| l.strip_suffix(">; rel=\"next\"")).unwrap();
                p.to_string()
            });
            pages.push((serials, next.clone()));
            match next {
                Some(n) => path = n,
                None => return pages,
            }
        }
    };
    let sn = |v: &[u32]| -> Vec<String> { v.iter().map(|i| format!("SN-{i}")).collect() };
    assert_eq!(
        pages("admin/devices?limit=3"),
        vec![
            (sn(&[1, 2, 3]), Some("admin/devices?limit=3&after=SN-3".into())),
            (sn(&[4, 5, 6]), Some("admin/devices?limit=3&after=SN-6".into())),
            (sn(&[7]), None),
        ]
    );
    assert_eq!(pages("admin/devices"), vec![(sn(&[1, 2, 3, 4, 5, 6, 7]), None)]);
    // A filtered page holds `limit` devices that pass (read past those that do not), and the
    // filter is kept in the next page's path.
    assert_eq!(pages("admin/devices?state=revoked&limit=4"), vec![(sn(&[2]), None)]);
    // The last page is the one that holds the last match: no empty page after it.
    assert_eq!(
        pages("admin/devices?state=accepted&limit=3"),
        vec![(sn(&[1, 3, 4]), Some("admin/devices?state=accepted&limit=3&after=SN-4".into())), (sn(&[5, 6, 7]), None),]
    );
    assert_eq!(pages("admin/devices?q=SN-7&limit=1"), vec![(sn(&[7]), None)]);
    assert_eq!(
        pages("admin/devices?state=ACCEPTED&limit=5"),
        vec![(sn(&[1, 3, 4, 5, 6]), Some("admin/devices?state=ACCEPTED&limit=5&after=SN-6".into())), (sn(&[7]), None)]
    );
    assert_eq!(pages("admin/devices?q=sn-5"), vec![(sn(&[5]), None)]);
    assert_eq!(pages("admin/devices?health=silent&q=SN-&limit=1000"), vec![(sn(&[1, 2, 3, 4, 5, 6, 7]), None)]);
    // The summary counts the same devices.
    let (status, _, body) = s.call("GET", "admin/summary", Some(&s.admin), vec![]);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["devices"], 7);
    assert_eq!(
        v["state"]["counts"],
        serde_json::json!([{"name": "accepted", "devices": 6}, {"name": "revoked", "devices": 1}])
    );
    assert_eq!(s.call("GET", "admin/summary", None, vec![]).0, 401);
    // An operator's change is counted at once, not after the shared count's 10 s.
    assert_eq!(s.call("POST", "admin/devices/SN-3/revoke", Some(&s.admin), vec![]).0, 200);
    let (_, _, body) = s.call("GET", "admin/summary", Some(&s.admin), vec![]);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["state"]["counts"],
        serde_json::json!([{"name": "accepted", "devices": 5}, {"name": "revoked", "devices": 2}])
    );
    assert_eq!(pages("admin/devices?after=SN-7"), vec![(vec![], None)]);
    assert_eq!(pages("admin/devices?after=ZZZ&limit=1"), vec![(vec![], None)]);

    let long = "a".repeat(10_000);
    for (query, names) in [
        ("limit=0", "limit 0 must be a number from 1 to 1000"),
        ("limit=1001", "limit 1001 must be a number from 1 to 1000"),
        ("limit=-1", "limit: invalid digit"),
        ("limit=abc", "limit: invalid digit"),
        ("limit=99999999999999999999999999", "limit: number too large"),
        ("limit=1&limit=2", "duplicate field `limit`"),
        ("after=SN%00", "after (a serial)"),
        ("after=SN%2F..%2F1", "after (a serial)"),
        ("after=", "after (a serial) must be 1 to"),
        (&format!("after={long}"), "after (a serial) must be 1 to"),
        ("after=%FF", "after (a serial) \"\u{fffd}\" may contain only"),
        ("colour=red", "unknown field `colour`"),
        ("health=bogus", "health \"bogus\" is none of on-trial, rolled-back, failing, silent, pinned, dev"),
        (&format!("q={long}"), "q is longer than 255 bytes"),
        (&format!("version={long}"), "version is longer than 255 bytes"),
        (&format!("hardware={long}"), "hardware is longer than 255 bytes"),
    ] {
        let (status, _, body) = s.call("GET", &format!("admin/devices?{query}"), Some(&s.admin), vec![]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        assert_eq!(status, 400, "{query}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| e.contains(names)), "{query}: {v}");
    }
    // The audit log's limit is read the same way.
    let (status, _, body) = s.call("GET", "admin/audit?limit=lots", Some(&s.admin), vec![]);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    // Without an admin token: nothing, whatever the query.
    assert_eq!(s.call("GET", "admin/devices?limit=1", None, vec![]).0, 401);
    let device = s.device_token("SN-8");
    assert_eq!(s.call("GET", "admin/devices?limit=1", Some(&device), vec![]).0, 401);
}
