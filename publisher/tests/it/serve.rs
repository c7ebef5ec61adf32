//! `ferry serve`'s HTTP API, spoken to with a real HTTP client on 127.0.0.1.

use std::path::Path;

use ferry_store::{Id, Repository};

use crate::{commit, init};

/// A repository with one commit on main, served on 127.0.0.1:0.
fn served() -> (tempfile::TempDir, tokio::runtime::Runtime, String, Id) {
    let t = tempfile::tempdir().unwrap();
    let repo = init(t.path(), ferry_store::ChunkParams::default());
    let tree = t.path().join("tree");
    ferry_fixtures::generate(&ferry_fixtures::TreeSpec { seed: 2, size: 1 << 20, version: 1 }, &tree).unwrap();
    let id: Id = commit(&repo, &tree, "release/stable", "1").unwrap().commit.parse().unwrap();
    drop(repo);
    let (rt, base) = crate::cmd::serve_here(t.path().join("repo"), t.path().join("scratch"));
    (t, rt, base, id)
}

/// Up to `n` chunk ids of a commit, with their lengths.
fn some_chunks(repo: &Path, id: &Id, n: usize) -> Vec<(Id, u32)> {
    let r = Repository::open_read_only(repo).unwrap();
    let c = r.read_commit(id).unwrap();
    let (mut trees, mut chunks) = (Default::default(), std::collections::HashSet::new());
    ferry_delta::plan::collect_chunks(&r, &c.root, &mut trees, &mut chunks).unwrap();
    let mut v: Vec<Id> = chunks.into_iter().collect();
    v.sort();
    v.truncate(n);
    v.into_iter().map(|c| (c, r.chunk_info(&c).unwrap().unwrap().len)).collect()
}

#[test]
fn branch_heads_objects_and_signatures() {
    let (_t, rt, base, id) = served();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let r = c.get(format!("{base}/branches/release/stable")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let etag = r.headers()["etag"].to_str().unwrap().to_string();
        assert_eq!(etag, format!("\"{id}\""));
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(v["commit"], id.to_hex());
        let r = c.get(format!("{base}/branches/release/stable")).header("if-none-match", &etag).send().await.unwrap();
        assert_eq!(r.status(), 304);
        assert_eq!(c.get(format!("{base}/branches/nope")).send().await.unwrap().status(), 404);

        let r = c.get(format!("{base}/objects/{id}")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["cache-control"].to_str().unwrap().contains("immutable"));
        assert_eq!(Id::of(&r.bytes().await.unwrap()), id);
        let both: serde_json::Value =
            serde_json::from_slice(&c.get(format!("{base}/commits/{id}")).send().await.unwrap().bytes().await.unwrap())
                .unwrap();
        assert_eq!(Id::of(&hex::decode(both["bytes"].as_str().unwrap()).unwrap()), id);
        assert_eq!(both["signatures"][0]["key"], crate::key().public().to_hex());
        let sigs: serde_json::Value = serde_json::from_slice(
            &c.get(format!("{base}/commits/{id}/signatures")).send().await.unwrap().bytes().await.unwrap(),
        )
        .unwrap();
        assert_eq!(sigs["signatures"][0]["key"], crate::key().public().to_hex());

        let r = c.get(format!("{base}/objects/xyz")).send().await.unwrap();
        assert_eq!(r.status(), 400);
        assert!(r.text().await.unwrap().contains("xyz"));
        let missing = Id::of(b"missing");
        let r = c.get(format!("{base}/objects/{missing}")).send().await.unwrap();
        assert_eq!(r.status(), 404);
        assert!(r.text().await.unwrap().contains(&missing.to_hex()));
        assert_eq!(c.get(format!("{base}/../nothing")).send().await.unwrap().status(), 404);
    });
}

#[test]
fn batched_chunks_stream_verified_frames_and_refuse_bad_requests() {
    let (t, rt, base, id) = served();
    let chunks = some_chunks(&t.path().join("repo"), &id, 20);
    let ids: Vec<Id> = chunks.iter().map(|(c, _)| *c).collect();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let body = ferry_delta::pack::encode_request(&ids);
        let r = c.post(format!("{base}/chunks")).body(body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let bytes = r.bytes().await.unwrap();
        let mut d = ferry_delta::pack::FrameDecoder::new(ids.iter().map(|i| (*i, 1 << 20)));
        let frames = d.feed(&bytes).unwrap();
        d.finish().unwrap();
        assert_eq!(frames.iter().map(|f| f.id).collect::<Vec<_>>(), ids, "frames in request order");
        for (f, (_, len)) in frames.iter().zip(&chunks) {
            ferry_store::chunk::decode_chunk(&f.id, &f.bytes, *len).unwrap();
        }

        // Unknown ids: 404 naming them, before any frame.
        let unknown = Id::of(b"no such chunk");
        let mut with_unknown = ids.clone();
        with_unknown.push(unknown);
        let r = c
            .post(format!("{base}/chunks"))
            .body(ferry_delta::pack::encode_request(&with_unknown))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(v["missing"], serde_json::json!([unknown.to_hex()]));

        // Malformed bodies and too many ids.
        let r = c.post(format!("{base}/chunks")).body(vec![0u8; 33]).send().await.unwrap();
        assert_eq!(r.status(), 400);
        let r = c.post(format!("{base}/chunks")).body(vec![0u8; 64]).send().await.unwrap();
        assert_eq!(r.status(), 400, "a repeated id");
        let r = c
            .post(format!("{base}/chunks"))
            .body(vec![1u8; 32 * (ferry_delta::pack::MAX_IDS_PER_REQUEST + 1)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
    });
}

#[test]
fn patches_are_answered_in_order_and_bad_requests_refused_before_any_frame() {
    use ferry_delta::patch::{decode_patch_response, encode_patch_request, Patch, PatchPayload, REFERENCE_MAX};
    use ferry_store::ChunkRef;
    let (t, rt, base, id) = served();
    let chunks: Vec<ChunkRef> =
        some_chunks(&t.path().join("repo"), &id, 6).into_iter().map(|(id, len)| ChunkRef { id, len }).collect();
    let repo = Repository::open_read_only(&t.path().join("repo")).unwrap();
    let bytes_of = |cs: &[ChunkRef]| -> Vec<u8> { cs.iter().flat_map(|c| repo.read_chunk(&c.id).unwrap()).collect() };
    let patches = vec![
        Patch { reference: chunks[..2].to_vec(), target: chunks[2..4].to_vec() },
        Patch { reference: vec![], target: chunks[4..6].to_vec() },
    ];
    rt.block_on(async {
        let c = reqwest::Client::new();
        let post = |body: Vec<u8>| c.post(format!("{base}/patches")).body(body).send();
        let r = post(encode_patch_request(&patches)).await.unwrap();
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.unwrap();
        let mut d = ferry_delta::pack::FrameDecoder::new(patches.iter().map(|p| (p.key(), p.max_response_len())));
        let frames = d.feed(&body).unwrap();
        d.finish().unwrap();
        assert_eq!(frames.iter().map(|f| f.id).collect::<Vec<_>>(), patches.iter().map(Patch::key).collect::<Vec<_>>());
        for (p, f) in patches.iter().zip(&frames) {
            let reference = bytes_of(&p.reference);
            let target: Vec<u8> = match decode_patch_response(p, Some(&reference), &f.bytes).unwrap() {
                PatchPayload::Patched(b) => b,
                PatchPayload::Plain(frames) => frames
                    .iter()
                    .zip(&p.target)
                    .flat_map(|(f, c)| ferry_store::chunk::decode_chunk(&c.id, f, c.len).unwrap())
                    .collect(),
            };
            assert_eq!(target, bytes_of(&p.target));
        }

        // Malformed, naming unknown chunks, or over the window bound: refused with a status.
        let r = post(vec![1, 2, 3]).await.unwrap();
        assert_eq!(r.status(), 400);
        assert!(r.text().await.unwrap().contains("ends inside item 0"));
        let unknown = Patch { reference: vec![], target: vec![ChunkRef { id: Id::of(b"nope"), len: 4 }] };
        let r = post(encode_patch_request(&[unknown])).await.unwrap();
        assert_eq!(r.status(), 404);
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(v["missing"][0], Id::of(b"nope").to_hex());
        let repeated = vec![chunks[0]; (REFERENCE_MAX / u64::from(chunks[0].len)) as usize + 1];
        let too_big = Patch { reference: repeated, target: chunks[..1].to_vec() };
        let r = post(encode_patch_request(&[too_big])).await.unwrap();
        assert_eq!(r.status(), 400);
        assert!(r.text().await.unwrap().contains("the limit is"));
        let r = post(vec![0; ferry_delta::patch::MAX_PATCH_REQUEST + 8]).await.unwrap();
        assert!(r.status() == 400 || r.status() == 413, "{}", r.status());
    });
}

#[test]
fn the_patch_cache_computes_once_survives_a_restart_and_serves_identical_bytes() {
    use ferry_delta::patch::PatchRequest;
    use ferry_publisher::patches::Patcher;
    let (t, _rt, _base, id) = served();
    let chunks = some_chunks(&t.path().join("repo"), &id, 4);
    let repo = Repository::open_read_only(&t.path().join("repo")).unwrap();
    let items: Vec<PatchRequest> =
        (0..2).map(|i| PatchRequest { reference: vec![chunks[i].0], target: vec![chunks[2 + i].0] }).collect();
    let dir = t.path().join("cache");
    let cold = Patcher::open(&dir, 1 << 30, 19, 2).unwrap();
    // Several threads ask for the same patches at once: each is computed once.
    let answers: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| items.iter().map(|i| cold.answer(&repo, i).unwrap()).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|a| a == &answers[0]));
    let st = cold.stats();
    assert_eq!((st.computed, st.cache_hits), (2, 6), "{st:?}");
    drop(cold);
    // After a restart, the cache answers.
    let warm = Patcher::open(&dir, 1 << 30, 19, 2).unwrap();
    let mut sent = Vec::new();
    warm.answer_all(&repo, &items, |_, r| {
        sent.push(r.unwrap());
        true
    });
    assert_eq!(sent, answers[0]);
    let st = warm.stats();
    assert_eq!((st.computed, st.cache_hits), (0, 2), "{st:?}");
}

#[test]
fn every_tree_a_device_lacks_comes_in_one_request_parents_first() {
    let (t, rt, base, id) = served();
    let repo = Repository::open_read_only(&t.path().join("repo")).unwrap();
    let root = repo.read_commit(&id).unwrap().root;
    rt.block_on(async {
        let c = reqwest::Client::new();
        let post = |body: Vec<u8>| c.post(format!("{base}/trees")).body(body).send();
        let mut body = root.as_bytes().to_vec();
        body.extend_from_slice(&[0; 32]);
        let r = post(body).await.unwrap();
        assert_eq!(r.status(), 200);
        let bytes = r.bytes().await.unwrap();
        // Each frame is a tree named by one received before it (the root first).
        let mut d = ferry_delta::pack::FrameDecoder::new([(root, 1 << 26)]);
        let mut count = 0;
        d.feed_expanding(&bytes, 1 << 26, |f| {
            assert_eq!(Id::of(&f.bytes), f.id);
            count += 1;
            let tree = ferry_store::Tree::decode(&f.bytes).unwrap();
            Ok::<_, ferry_delta::pack::PackError>(
                tree.entries
                    .into_iter()
                    .filter_map(|e| match e.kind {
                        ferry_store::EntryKind::Dir { tree } => Some(tree),
                        _ => None,
                    })
                    .collect(),
            )
        })
        .unwrap();
        d.finish().unwrap();
        assert_eq!(d.remaining(), 0);
        assert!(count > 3, "{count} trees");
        // Compressed against the old root's trees: the same frames. (Here the "old" root is
        // the same commit's root, so nothing is lacking; then against an empty directory tree.)
        let mut body = root.as_bytes().to_vec();
        body.extend_from_slice(root.as_bytes());
        body.push(1);
        let r = post(body).await.unwrap();
        assert_eq!(r.status(), 200);
        let z = r.bytes().await.unwrap();
        let prefix = ferry_delta::patch::tree_prefix(&root, |id| repo.read_object_bytes(id)).unwrap();
        let n = zstd::zstd_safe::get_frame_content_size(&z).unwrap().unwrap() as usize;
        assert_eq!(n, 0);
        assert!(ferry_delta::patch::decompress_patch(&prefix, &z, n).unwrap().is_empty());
        let mut body = root.as_bytes().to_vec();
        body.extend_from_slice(&[0; 32]);
        body.push(1);
        assert_eq!(post(body).await.unwrap().status(), 400, "compressed needs an old root");
        let mut body = root.as_bytes().to_vec();
        body.extend_from_slice(root.as_bytes());
        body.push(7);
        assert_eq!(post(body).await.unwrap().status(), 400, "unknown encoding");
        // Against itself: nothing is lacking.
        let mut body = root.as_bytes().to_vec();
        body.extend_from_slice(root.as_bytes());
        assert!(post(body).await.unwrap().bytes().await.unwrap().is_empty());
        // Wrong length, unknown root: refused.
        assert_eq!(post(vec![0; 63]).await.unwrap().status(), 400);
        let mut body = Id::of(b"nope").as_bytes().to_vec();
        body.extend_from_slice(&[0; 32]);
        assert_eq!(post(body).await.unwrap().status(), 404);
    });
}

/// The exact text of every JSON answer of the repository API: the bytes `ferryd` (and any
/// other reader) has always been sent, field for field.
#[test]
fn json_answers_keep_their_text() {
    let (t, rt, base, id) = served();
    let r = Repository::open_read_only(&t.path().join("repo")).unwrap();
    let bytes = hex::encode(r.read_object_bytes(&id).unwrap());
    let sig = &r.signatures(&id).unwrap()[0];
    let (key, signature) = (hex::encode(sig.key), hex::encode(sig.signature));
    drop(r);
    let sigs = format!(r#"[{{"key":"{key}","signature":"{signature}"}}]"#);
    let unknown = Id::of(b"no such chunk");
    rt.block_on(async {
        let c = reqwest::Client::new();
        let text = |path: String| {
            let get = c.get(format!("{base}/{path}"));
            async move { get.send().await.unwrap().text().await.unwrap() }
        };
        assert_eq!(
            text("branches/release/stable".into()).await,
            format!(r#"{{"branch":"release/stable","commit":"{id}"}}"#)
        );
        assert_eq!(text("versions/1".into()).await, format!(r#"{{"commits":["{id}"],"version":"1"}}"#));
        assert_eq!(
            text(format!("commits/{id}")).await,
            format!(r#"{{"bytes":"{bytes}","commit":"{id}","signatures":{sigs}}}"#)
        );
        assert_eq!(
            text(format!("commits/{id}/signatures")).await,
            format!(r#"{{"commit":"{id}","signatures":{sigs}}}"#)
        );
        assert_eq!(text("branches/nope".into()).await, r#"{"error":"no such branch"}"#);
        let r = c.post(format!("{base}/chunks")).body(unknown.as_bytes().to_vec()).send().await.unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(
            r.text().await.unwrap(),
            format!(
                r#"{{"error":"1 requested chunks are not in the repository, e.g. {unknown}","missing":["{unknown}"]}}"#
            )
        );
    });
}

#[test]
fn hostile_trees_requests_get_a_reason_and_no_work() {
    let (_t, rt, base, id) = served();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let post = |body: Vec<u8>| {
            let c = c.clone();
            let url = format!("{base}/trees");
            async move {
                let r = c.post(url).body(body).send().await.unwrap();
                let status = r.status().as_u16();
                (status, String::from_utf8_lossy(&r.bytes().await.unwrap()).into_owned())
            }
        };
        let root = *id.as_bytes();
        let mut compressed_alone = root.to_vec();
        compressed_alone.extend([0u8; 32]);
        compressed_alone.push(1);
        let mut unknown = root.to_vec();
        unknown.extend(root);
        unknown.push(7);
        for (body, says) in [
            (Vec::new(), "64 or 65 bytes"),
            (vec![0u8; 63], "not 63"),
            (vec![0u8; 66], "not 66"),
            (unknown, "unknown trees encoding 7"),
            (compressed_alone, "compressed trees need an old root"),
        ] {
            let (status, text) = post(body).await;
            assert_eq!(status, 400, "{text}");
            assert!(text.contains(says), "{text}");
        }
        // A root the repository does not hold is not found, and nothing is streamed.
        let (status, _) = post([[7u8; 32], [0u8; 32]].concat()).await;
        assert_eq!(status, 404);
        // A body past the route's limit is refused before it is read whole.
        let (status, _) = post(vec![0u8; ferry_delta::pack::MAX_IDS_PER_REQUEST * 32 + 1]).await;
        assert_eq!(status, 413);
    });
}
