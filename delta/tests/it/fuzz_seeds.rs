//! The fuzz seeds of delta's decoders (`fuzz/seeds/<target>/`) are what the real encoders
//! write, in the input layout each target documents. This test checks the committed seeds
//! against the encoders; `FERRY_WRITE_FUZZ_SEEDS=1` writes them instead.

use std::path::PathBuf;

use ferry_delta::content;
use ferry_delta::pack::{self, TreesEncoding, TreesRequest};
use ferry_delta::patch::{self, Patch, PatchPayload};
use ferry_store::{ChunkRef, Entry, EntryKind, Id, Meta, Tree};

/// 4 KiB of fixed pseudo-random bytes.
fn noise(seed: u64) -> Vec<u8> {
    let mut rng = ferry_fixtures::rng::Rng::new(seed);
    let mut buf = vec![0u8; 4096];
    rng.fill(&mut buf);
    buf
}

fn file(name: &str, chunks: &[&[u8]]) -> Entry {
    let chunks: Vec<ChunkRef> = chunks.iter().map(|c| ChunkRef { id: Id::of(c), len: c.len() as u32 }).collect();
    let size = chunks.iter().map(|c| u64::from(c.len)).sum();
    Entry { name: name.into(), kind: EntryKind::File { meta: Meta { mode: 0o644, ..Meta::default() }, size, chunks } }
}

fn dir(name: &str, tree: &Tree) -> Entry {
    Entry { name: name.into(), kind: EntryKind::Dir { tree: Id::of(&tree.encode().unwrap()) } }
}

fn tree(entries: Vec<Entry>) -> Tree {
    Tree { meta: Meta { mode: 0o755, ..Meta::default() }, entries }
}

/// The old release's trees and the new release's, each a root and its one subdirectory,
/// parents first.
fn releases() -> ([Tree; 2], [Tree; 2]) {
    let old_lib = tree(vec![file("libz.so.1.2", &[b"zlib 1.2"])]);
    let old = tree(vec![file("app", &[b"app v1", b"shared"]), dir("lib", &old_lib)]);
    let new_lib = tree(vec![file("libz.so.1.3", &[b"zlib 1.3"])]);
    let new = tree(vec![file("app", &[b"app v2", b"shared"]), dir("lib", &new_lib)]);
    ([old, old_lib], [new, new_lib])
}

/// The prefix of a compressed trees answer, built by `tree_prefix` as both sides build it.
fn prefix_of(trees: &[Tree]) -> Vec<u8> {
    let trees: Vec<(Id, Vec<u8>)> = trees
        .iter()
        .map(|t| {
            let bytes = t.encode().unwrap();
            (Id::of(&bytes), bytes)
        })
        .collect();
    patch::tree_prefix(&trees[0].0, |id| {
        Ok::<_, ferry_store::DecodeError>(trees.iter().find(|(i, _)| i == id).map(|(_, b)| b.clone()).unwrap())
    })
    .unwrap()
}

/// Every seed: (target, name, bytes).
fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut out = Vec::new();

    // frame_decode: u8 step ‖ u8 n ‖ (id ‖ u32 max) × n ‖ stream.
    let items: Vec<(Id, Vec<u8>)> = (0..3u8).map(|i| (Id::of(&[i]), vec![i; usize::from(i) * 5])).collect();
    let mut input = vec![7, items.len() as u8];
    for (id, bytes) in &items {
        input.extend_from_slice(id.as_bytes());
        input.extend_from_slice(&(bytes.len() as u32 + 1).to_le_bytes());
    }
    for (id, bytes) in &items {
        pack::write_frame(&mut input, id, bytes);
    }
    out.push(("frame_decode", "three-frames", input));

    // pack_request: the body.
    out.push(("pack_request", "three-ids", pack::encode_request(&[Id::of(b"a"), Id::of(b"b"), Id::of(b"c")])));

    // patch_request: the body.
    let cref = |n: u8, len| ChunkRef { id: Id::of(&[n]), len };
    let patches = [
        Patch { reference: vec![cref(1, 10), cref(2, 10)], target: vec![cref(3, 5)] },
        Patch { reference: vec![], target: vec![cref(4, 5), cref(5, 5)] },
    ];
    out.push(("patch_request", "two-items", patch::encode_patch_request(&patches)));

    // patch_answer: u8 n ‖ u32 len × n ‖ u8 has reference ‖ u16 reference length ‖ reference ‖ answer.
    let reference = noise(1);
    let mut target = reference.clone();
    target.splice(100..100, b"inserted".iter().copied());
    target.truncate(3000);
    let halves = [&target[..1000], &target[1000..]];
    let stored: Vec<Vec<u8>> = halves.iter().map(|h| zstd::bulk::compress(h, 3).unwrap()).collect();
    let answer_input = |answer: Vec<u8>| {
        let mut input = vec![2];
        for h in halves {
            input.extend_from_slice(&(h.len() as u32).to_le_bytes());
        }
        input.push(1);
        input.extend_from_slice(&(reference.len() as u16).to_le_bytes());
        input.extend_from_slice(&reference);
        input.extend_from_slice(&answer);
        input
    };
    out.push((
        "patch_answer",
        "patched",
        answer_input(patch::encode_patch_response(&reference, &target, &stored, 19).unwrap()),
    ));
    out.push(("patch_answer", "plain", answer_input(patch::encode_plain_response(&stored))));

    // trees_request: the body.
    let (new_root, old_root) = (Id::of(b"new root"), Id::of(b"old root"));
    let request = |old_root, encoding| TreesRequest { new_root, old_root, encoding }.encode();
    out.push(("trees_request", "frames", request(Some(old_root), TreesEncoding::Frames)));
    out.push(("trees_request", "compressed", request(Some(old_root), TreesEncoding::Compressed)));
    out.push(("trees_request", "fresh", request(None, TreesEncoding::Frames)));

    // trees_response: u8 encoding ‖ root id ‖ u32 prefix length ‖ prefix ‖ answer.
    let (old, new) = releases();
    let prefix = prefix_of(&old);
    let mut frames = Vec::new();
    for t in &new {
        let bytes = t.encode().unwrap();
        pack::write_frame(&mut frames, &Id::of(&bytes), &bytes);
    }
    let root = Id::of(&new[0].encode().unwrap());
    let response = |encoding: u8, prefix: &[u8], answer: &[u8]| {
        let mut input = vec![encoding];
        input.extend_from_slice(root.as_bytes());
        input.extend_from_slice(&(prefix.len() as u32).to_le_bytes());
        input.extend_from_slice(prefix);
        input.extend_from_slice(answer);
        input
    };
    out.push(("trees_response", "frames", response(0, &[], &frames)));
    let compressed = patch::compress_patch(&prefix, &frames, 19).unwrap();
    out.push(("trees_response", "compressed", response(1, &prefix, &compressed)));

    // content_index: u16 max gap ‖ u16 max range ‖ u16 piece ‖ commit id ‖ u32 index length ‖
    // index ‖ the answer (here the one pack whole, which the one range starting at 0 reads).
    let mut writer = content::PackWriter::new(1 << 20);
    for (i, c) in [&b"app v2"[..], b"shared", b"zlib 1.3", b"app v1", b"zlib 1.2"].iter().enumerate() {
        assert!(writer.add(&Id::of(c), &[i as u8; 9]).unwrap().is_none());
    }
    let (pack, placed) = writer.finish();
    let commit = Id::of(b"a commit");
    let index = content::ContentIndex::new(commit, placed).unwrap().encode();
    let mut input = [4096u16, 65535, 100].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    input.extend_from_slice(commit.as_bytes());
    input.extend_from_slice(&(index.len() as u32).to_le_bytes());
    input.extend_from_slice(&index);
    input.extend_from_slice(&pack.unwrap().1);
    out.push(("content_index", "one_pack", input));
    out
}

#[test]
fn the_fuzz_seeds_are_what_the_encoders_write() {
    // The runner's CARGO_MANIFEST_DIR: the shared build cache may hold a binary built elsewhere.
    let dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo or nextest")).join("../fuzz/seeds");
    let write = std::env::var_os("FERRY_WRITE_FUZZ_SEEDS").is_some_and(|v| v == "1");
    for (target, name, bytes) in seeds() {
        let path = dir.join(target).join(name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            continue;
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // zstd may compress differently after an upgrade: compressed seeds are compared by
        // what they decompress to.
        match (target, name) {
            ("patch_answer", "patched") | ("trees_response", "compressed") => {
                assert_eq!(decompressed(target, &committed), decompressed(target, &bytes), "{}", path.display())
            }
            _ => assert_eq!(committed, bytes, "{} is not what the encoders write", path.display()),
        }
    }
}

/// What a compressed seed decompresses to, read as its target reads it.
fn decompressed(target: &str, input: &[u8]) -> Vec<u8> {
    use ferry_store::wire::Reader;
    let mut r = Reader::new(input);
    if target == "patch_answer" {
        let n = r.u8("n").unwrap();
        let lens: Vec<u32> = (0..n).map(|_| r.u32("len").unwrap()).collect();
        r.u8("has reference").unwrap();
        let reference = r.bytes16(usize::MAX, "reference").unwrap();
        let p = Patch {
            reference: vec![],
            target: lens.iter().enumerate().map(|(i, len)| ChunkRef { id: Id::of(&[i as u8]), len: *len }).collect(),
        };
        match patch::decode_patch_response(&p, Some(reference), r.rest()).unwrap() {
            PatchPayload::Patched(bytes) => bytes,
            PatchPayload::Plain(_) => panic!("a plain answer where a patch was written"),
        }
    } else {
        r.u8("encoding").unwrap();
        r.id("root").unwrap();
        let prefix = r.bytes32(usize::MAX, "prefix").unwrap();
        let mut d = patch::PrefixDecoder::new(prefix, 1 << 20).unwrap();
        let mut out = Vec::new();
        d.feed(r.rest(), |piece| {
            out.extend_from_slice(piece);
            Ok(())
        })
        .unwrap();
        d.finish().unwrap();
        out
    }
}
