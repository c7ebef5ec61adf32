//! Chunks from a static copy (`content_url`): the repository exported with `ferry export`,
//! served by a real nginx on loopback, the server answering everything else; and each way
//! the copy can fail (missing, tampered, cut, unreachable) ending in the same deployment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ferry_fixtures::nginx::Nginx;
use ferry_fixtures::proxy::{Fault, Proxy};
use ferry_publisher::checkout::checkout;
use ferry_publisher::export::{export, Destination, ExportOptions, ExportSummary};
use ferry_publisher::import::NoProgress;
use ferry_store::Id;

use crate::harness::{update, Env};

/// Exports the repository to `dir` (incrementally).
fn export_to(env: &Env, dir: &Path) -> ExportSummary {
    let dest = Destination::open(dir.to_str().unwrap()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(export(&env.repo, &dest, &ExportOptions { patches_from: 2, running: Vec::new() }, &NoProgress)).unwrap()
}

/// Checks the device's deployment is `ferry checkout` of `id`, file for file.
fn assert_deployed(env: &Env, id: Id) {
    let out = env.path().join(format!("checkout-{}", id.short()));
    if !out.exists() {
        checkout(&env.repo, &id, &out, &NoProgress).unwrap();
    }
    let deployed = std::fs::read_link(env.current()).unwrap();
    assert_eq!(files(&deployed), files(&out), "the deployment differs from `ferry checkout` of {id}");
}

/// Every file under `root` with its bytes (directories and symlinks by name).
fn files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if m.is_dir() {
                stack.push(p);
                out.push((rel, b"<dir>".to_vec()));
            } else if m.file_type().is_symlink() {
                out.push((rel, std::fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes()));
            } else {
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The chunk frames (header included) a device on `from` lacks for `to`.
fn plain_cost(env: &Env, from: Option<Id>, to: Id) -> (u64, u64) {
    let to = env.repo.read_commit(&to).unwrap();
    let from = from.map(|f| env.repo.read_commit(&f).unwrap());
    let c = ferry_delta::transfer_cost(&env.repo, from.as_ref(), &to).unwrap();
    (c.chunks, c.compressed_bytes + c.chunks * ferry_delta::pack::FRAME_HEADER as u64)
}

fn n(s: &serde_json::Value, key: &str) -> u64 {
    s[key].as_u64().unwrap_or_else(|| panic!("{key} missing in {s}"))
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").trim_end_matches('/').parse().unwrap()
}

/// Release v1 committed and exported to `copy`, served by nginx, and installed from it on a
/// device whose `content_url` is that nginx: (copy, nginx, device config, v1).
fn on_v1_from_copy(env: &Env) -> (PathBuf, Nginx, PathBuf, Id) {
    let copy = env.path().join("copy");
    let v1 = env.commit(1, "1");
    export_to(env, &copy);
    let nginx = Nginx::serve(&copy).unwrap();
    let config = env.device(&format!("content_url = \"{}\"\n", nginx.url()));
    update(&config);
    (copy, nginx, config, v1)
}

#[test]
fn installs_and_updates_from_a_copy_behind_nginx() {
    let env = Env::new();
    let copy = env.path().join("copy");
    let v1 = env.commit(1, "1");
    export_to(&env, &copy);
    let nginx = Nginx::serve(&copy).unwrap();
    let config = env.device(&format!("content_url = \"{}\"\n", nginx.url()));

    // A fresh install: every chunk from the copy, none from the server.
    let s = update(&config);
    assert_eq!(s["to"], v1.to_hex());
    let (chunks, frame_bytes) = plain_cost(&env, None, v1);
    assert_eq!((n(&s, "chunks_from_copy"), n(&s, "chunks_downloaded")), (chunks, chunks), "{s}");
    assert_eq!(n(&s, "chunk_bytes_downloaded"), frame_bytes, "{s}");
    assert!(s["copy_fallback"].is_null(), "{s}");
    // Branch, commit, trees from the server; the index and the pack's ranges from the copy.
    assert!(n(&s, "requests") <= 3 + 1 + 8, "{s}");
    assert_deployed(&env, v1);

    // An update: the patches a device on v1 plans were prepared by the export; the device
    // reads them in a few ranges, exactly the bytes the server would send for them.
    let post = env.device_named("post", env.addr, "");
    update(&post);
    let v2 = env.commit(2, "2");
    let e = export_to(&env, &copy);
    assert_eq!((e.commits_exported, e.deltas_written), (1, 1));
    let s = update(&config);
    assert_eq!(s["to"], v2.to_hex());
    let (chunks, _) = plain_cost(&env, Some(v1), v2);
    let patched = crate::harness::patch_cost(&env, v1, v2);
    assert_eq!((n(&s, "chunks_from_copy"), n(&s, "chunk_bytes_downloaded")), (chunks, patched.transfer_bytes), "{s}");
    assert!(n(&s, "patches") > 0 && n(&s, "chunks_patched") > 0, "{s}");
    assert!(s["copy_fallback"].is_null(), "{s}");
    assert_deployed(&env, v2);
    // The same update through the server's POST routes: bytes within 10%, requests at most 10.
    let p = update(&post);
    let (copy_bytes, post_bytes) = (n(&s, "bytes_downloaded"), n(&p, "bytes_downloaded"));
    assert!(copy_bytes * 10 <= post_bytes * 11, "copy {copy_bytes} bytes, POST {post_bytes}: {s}\n{p}");
    assert!(n(&s, "requests") <= 10, "{s}");
    eprintln!(
        "v1 -> v2: from the copy {} requests, {copy_bytes} bytes; through the server {} requests, {post_bytes} bytes",
        n(&s, "requests"),
        n(&p, "requests"),
    );
}

#[test]
fn without_prepared_patches_the_copy_sends_plain_ranges() {
    let env = Env::new();
    let (copy, _nginx, config, v1) = on_v1_from_copy(&env);
    let v2 = env.commit(2, "2");
    // Exported without prepared patches: every missing chunk comes plain, from the packs.
    let dest = Destination::open(copy.to_str().unwrap()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(export(&env.repo, &dest, &ExportOptions::default(), &NoProgress)).unwrap();
    let s = update(&config);
    let (chunks, frame_bytes) = plain_cost(&env, Some(v1), v2);
    assert_eq!((n(&s, "chunks_from_copy"), n(&s, "chunk_bytes_downloaded")), (chunks, frame_bytes), "{s}");
    assert_eq!(n(&s, "patches"), 0, "{s}");
    assert!(s["copy_fallback"].is_null(), "{s}");
    // Gaps read through cost at most 5% more than the frames, plus the metadata.
    assert!(n(&s, "bytes_downloaded") <= frame_bytes * 105 / 100 + 256 * 1024, "{s}");
    assert!(n(&s, "requests") <= 3 + 2 + 8, "{s}");
    assert_deployed(&env, v2);
}

#[test]
fn a_copy_that_lacks_the_commit_leaves_it_to_the_server() {
    let env = Env::new();
    let copy = env.path().join("copy");
    env.commit(1, "1");
    export_to(&env, &copy);
    let nginx = Nginx::serve(&copy).unwrap();
    let config = env.device(&format!("content_url = \"{}\"\n", nginx.url()));
    update(&config);
    // v2 is committed but not exported yet.
    let v2 = env.commit(2, "2");
    let s = update(&config);
    assert_eq!(s["to"], v2.to_hex());
    assert_eq!(n(&s, "chunks_from_copy"), 0, "{s}");
    assert!(s["copy_fallback"].as_str().unwrap().contains("no content index"), "{s}");
    assert!(n(&s, "chunks_downloaded") > 0);
    assert_deployed(&env, v2);
}

#[test]
fn a_tampered_pack_is_refused_and_the_server_sends_the_rest() {
    let env = Env::new();
    let copy = env.path().join("copy");
    let v1 = env.commit(1, "1");
    export_to(&env, &copy);
    // One byte of the pack's middle, inside some chunk's zstd frame, flipped on the copy.
    let packs: Vec<PathBuf> = std::fs::read_dir(copy.join("v1/packs")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(packs.len(), 1);
    let mut bytes = std::fs::read(&packs[0]).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(&packs[0], bytes).unwrap();
    let nginx = Nginx::serve(&copy).unwrap();
    let config = env.device(&format!("content_url = \"{}\"\n", nginx.url()));

    let s = update(&config);
    assert_eq!(s["to"], v1.to_hex());
    let why = s["copy_fallback"].as_str().unwrap();
    assert!(why.contains("chunk") || why.contains("frame"), "{s}");
    let (chunks, _) = plain_cost(&env, None, v1);
    // Chunks before the damage were kept; the server sent the rest.
    assert!(n(&s, "chunks_from_copy") < chunks, "{s}");
    assert_eq!(n(&s, "chunks_downloaded"), chunks, "{s}");
    assert_deployed(&env, v1);
}

/// Release v1 committed and exported, served by nginx behind a fault-injecting proxy:
/// (nginx, proxy, v1, v1's chunk count, their frame bytes).
fn copy_behind_proxy(env: &Env) -> (Nginx, Proxy, Id, u64, u64) {
    let copy = env.path().join("copy");
    let v1 = env.commit(1, "1");
    export_to(env, &copy);
    let nginx = Nginx::serve(&copy).unwrap();
    let proxy = Proxy::start(addr_of(&nginx.url())).unwrap();
    let (chunks, frame_bytes) = plain_cost(env, None, v1);
    (nginx, proxy, v1, chunks, frame_bytes)
}

#[test]
fn a_copy_cut_mid_transfer_keeps_what_arrived_and_the_server_sends_the_rest() {
    let env = Env::new();
    let (_nginx, proxy, v1, chunks, frame_bytes) = copy_behind_proxy(&env);
    // Past the index, about a third into the pack.
    proxy.arm(Fault::Cut(frame_bytes / 3));
    let config = env.device(&format!("content_url = \"http://{}\"\n", proxy.addr));

    let s = update(&config);
    assert!(proxy.fired());
    assert_eq!(s["to"], v1.to_hex());
    assert!(s["copy_fallback"].is_string(), "{s}");
    let from_copy = n(&s, "chunks_from_copy");
    assert!(from_copy > 0 && from_copy < chunks, "{s}");
    assert_eq!(n(&s, "chunks_downloaded"), chunks, "nothing fetched twice: {s}");
    assert_deployed(&env, v1);
}

#[test]
fn an_unreachable_copy_leaves_everything_to_the_server() {
    let env = Env::new();
    let v1 = env.commit(1, "1");
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = env.device(&format!("content_url = \"http://{closed}\"\nretries = 1\n"));
    let s = update(&config);
    assert_eq!(s["to"], v1.to_hex());
    assert_eq!(n(&s, "chunks_from_copy"), 0, "{s}");
    assert!(s["copy_fallback"].is_string(), "{s}");
    assert_deployed(&env, v1);
}

/// The places the prepared patches of `from` → `to` have in the copy.
fn delta_places(copy: &Path, from: Id, to: Id) -> Vec<(Id, ferry_delta::content::Placement)> {
    let bytes = std::fs::read(copy.join(format!("v1/deltas/{from}/{to}"))).unwrap();
    let index =
        ferry_delta::content::ContentIndex::decode(&bytes, &ferry_delta::content::delta_id(&from, &to), 1 << 20)
            .unwrap();
    index.placements().collect()
}

#[test]
fn a_tampered_prepared_patch_is_refused_and_its_chunks_come_another_way() {
    let env = Env::new();
    let (copy, _nginx, config, v1) = on_v1_from_copy(&env);
    let v2 = env.commit(2, "2");
    export_to(&env, &copy);
    // The middle byte of the largest prepared patch's answer, flipped in its pack.
    let (_, at) = delta_places(&copy, v1, v2).into_iter().max_by_key(|(_, p)| p.len).unwrap();
    let pack = copy.join(format!("v1/packs/{}", at.pack));
    let mut bytes = std::fs::read(&pack).unwrap();
    let i = (at.offset + u64::from(at.len) / 2 + 18) as usize;
    bytes[i] ^= 0x55;
    std::fs::write(&pack, bytes).unwrap();

    let s = update(&config);
    assert_eq!(s["to"], v2.to_hex());
    let (chunks, _) = plain_cost(&env, Some(v1), v2);
    // The refused patch's chunks came another way (from the server as a patch when it
    // staged none of them, else plain from the copy), each once.
    let (f, t) = (env.repo.read_commit(&v1).unwrap(), env.repo.read_commit(&v2).unwrap());
    let planned = ferry_delta::plan::planned_patches(&env.repo, &f, &t).unwrap();
    let patch_chunks: u64 = planned.patches.iter().map(|p| p.target.len() as u64).sum();
    assert!(n(&s, "chunks_patched") < patch_chunks, "{s}");
    assert_eq!(n(&s, "chunks_downloaded"), chunks, "nothing twice: {s}");
    assert!(s["copy_fallback"].is_null(), "{s}");
    assert_deployed(&env, v2);
}

#[test]
fn a_copy_refusing_its_prepared_patches_still_sends_the_chunks() {
    // An S3 bucket without list rights, or CloudFront, answers 403 for a missing key.
    let env = Env::new();
    let copy = env.path().join("copy");
    let v1 = env.commit(1, "1");
    export_to(&env, &copy);
    let snippet = env.path().join("deltas-403.conf");
    let shipped = std::fs::read_to_string(ferry_fixtures::nginx::shipped_snippet().unwrap()).unwrap();
    let deltas = "location /v1/deltas/ {\n    add_header Cache-Control \"public, max-age=31536000, immutable\";\n}";
    assert!(shipped.contains(deltas), "the shipped snippet changed: update this test");
    std::fs::write(&snippet, shipped.replace(deltas, "location /v1/deltas/ {\n    return 403;\n}")).unwrap();
    let nginx = Nginx::serve_with(&copy, &snippet).unwrap();
    let config = env.device(&format!("content_url = \"{}\"\n", nginx.url()));
    update(&config);
    let v2 = env.commit(2, "2");
    export_to(&env, &copy);
    let s = update(&config);
    let (chunks, frame_bytes) = plain_cost(&env, Some(v1), v2);
    assert_eq!((n(&s, "chunks_from_copy"), n(&s, "chunk_bytes_downloaded")), (chunks, frame_bytes), "{s}");
    assert!(s["copy_fallback"].is_null(), "{s}");
    assert_deployed(&env, v2);
}

#[test]
fn a_copy_that_cannot_be_set_up_leaves_everything_to_the_server() {
    let env = Env::new();
    let v1 = env.commit(1, "1");
    let config = env.device("content_url = \"https://127.0.0.1:9\"\ncontent_ca_file = \"/nonexistent/ca.pem\"\n");
    let s = update(&config);
    assert_eq!(s["to"], v1.to_hex());
    assert_eq!(n(&s, "chunks_from_copy"), 0, "{s}");
    assert!(s["copy_fallback"].as_str().unwrap().contains("content_url"), "{s}");
    assert_deployed(&env, v1);
}

#[test]
fn a_copy_that_trickles_is_left_for_the_server() {
    // A CDN (or someone on the path) sending a byte now and then must not hold the update:
    // below the copy's minimum rate over a read_timeout window, the server gives the rest.
    let env = Env::new();
    let (_nginx, proxy, v1, chunks, frame_bytes) = copy_behind_proxy(&env);
    proxy.arm(Fault::Trickle(frame_bytes / 3, std::time::Duration::from_millis(100)));
    let config = env.device(&format!("content_url = \"http://{}\"\nread_timeout = 2\n", proxy.addr));
    let started = std::time::Instant::now();
    let s = update(&config);
    assert!(proxy.fired());
    assert!(s["copy_fallback"].as_str().unwrap().contains("bytes a second"), "{s}");
    assert_eq!(n(&s, "chunks_downloaded"), chunks, "{s}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "{:?}", started.elapsed());
    assert_deployed(&env, v1);
}

/// A static server that lies about ranges: it serves `root`'s files, but answers a range
/// request with the bytes one further on and a `Content-Range` that says so (off by one),
/// as a broken cache or an attacker on the path would. One request per connection; stops
/// when the test ends (its thread is detached, the listener dies with the process).
fn lying_copy(root: PathBuf) -> SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(1000) {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let (mut line, mut path, mut range) = (String::new(), String::new(), None);
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                let l = line.trim_end().to_string();
                if let Some(p) = l.strip_prefix("GET ") {
                    path = p.split(' ').next().unwrap_or("").to_string();
                } else if let Some(r) = l.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let (a, b) = r.split_once('-').unwrap();
                    range = Some((a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()));
                }
                line.clear();
            }
            let Ok(body) = std::fs::read(root.join(path.trim_start_matches('/'))) else {
                let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            };
            let total = body.len() as u64;
            let head = match range {
                Some((a, b)) => {
                    let (a, b) = ((a + 1).min(total - 1), (b + 1).min(total - 1));
                    let part = &body[a as usize..=b as usize];
                    let head = format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{total}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        part.len()
                    );
                    [head.into_bytes(), part.to_vec()].concat()
                }
                None => {
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n");
                    [head.into_bytes(), body].concat()
                }
            };
            let _ = conn.write_all(&head);
        }
    });
    addr
}

#[test]
fn a_copy_lying_about_its_ranges_is_refused_and_the_server_sends_everything() {
    let env = Env::new();
    let copy = env.path().join("copy");
    let v1 = env.commit(1, "1");
    export_to(&env, &copy);
    let liar = lying_copy(copy.clone());
    let config = env.device(&format!("content_url = \"http://{liar}\"\n"));
    let s = update(&config);
    assert_eq!(s["to"], v1.to_hex());
    // Its index was whole (no range): the device asked it for chunks, refused every answer
    // by its Content-Range, and took them from the server.
    assert_eq!(n(&s, "chunks_from_copy"), 0, "{s}");
    assert!(s["copy_fallback"].as_str().is_some_and(|f| f.contains("Content-Range")), "{s}");
    assert_deployed(&env, v1);
}
