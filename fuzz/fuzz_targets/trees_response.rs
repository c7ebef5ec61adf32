//! A `/v1/trees` answer as the device decodes it (`ferryd`'s tree fetch): pack frames, or one
//! zstd frame with the device's old trees as prefix through `patch::PrefixDecoder` (with an
//! output cap), into `pack::FrameDecoder::feed_expanding`, each tree checked against its id
//! and decoded before the subtrees it names are expected. It never panics, never produces
//! more than the cap, hands over only trees that hash to their ids and decode, and an
//! answer it accepts whole is exactly those trees' frames (decompressed, for the compressed
//! form).
//!
//! Input: `u8 encoding (0 frames, 1 compressed) ‖ root id[32] ‖ u32 LE prefix length ‖
//! prefix (the old trees, as `patch::tree_prefix` builds them) ‖ answer`; the answer is fed
//! in pieces of 1000 bytes. Seeds: `delta/tests/it/fuzz_seeds.rs`.
#![no_main]
use ferry_delta::pack::{write_frame, Frame, FrameDecoder, PackError};
use ferry_delta::patch::PrefixDecoder;
use ferry_store::wire::Reader;
use ferry_store::{Id, Tree};
use libfuzzer_sys::fuzz_target;

/// The most decompressed bytes accepted (the agent's cap is 256 MiB; this keeps runs fast).
const CAP: u64 = 4 << 20;
/// The largest tree accepted.
const MAX_TREE: u32 = 1 << 20;
const PIECE: usize = 1000;

/// Why an answer is refused: a frame, a tree, or the compressed stream.
#[derive(Debug)]
enum Refused {
    Pack,
    Tree,
    Inflate,
}

impl From<PackError> for Refused {
    fn from(_: PackError) -> Refused {
        Refused::Pack
    }
}

/// What the device does with a tree frame: check it, decode it, expect its subtrees.
fn on_tree(trees: &mut Vec<Frame>, frame: Frame) -> Result<Vec<Id>, Refused> {
    if Id::of(&frame.bytes) != frame.id {
        return Err(Refused::Tree);
    }
    let tree = Tree::decode(&frame.bytes).map_err(|_| Refused::Tree)?;
    trees.push(frame);
    Ok(tree.subtrees()
        .collect())
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let (Ok(encoding), Ok(root), Ok(prefix)) = (r.u8("encoding"), r.id("root"), r.bytes32(usize::MAX, "prefix")) else {
        return;
    };
    let answer = r.rest();
    let mut decoder = FrameDecoder::new([(root, MAX_TREE)]);
    let mut trees = Vec::new();
    let mut stream = Vec::new();
    let outcome: Result<(), Refused> = match encoding {
        0 => answer
            .chunks(PIECE)
            .try_for_each(|piece| decoder.feed_expanding(piece, MAX_TREE, |f| on_tree(&mut trees, f)))
            .map(|()| stream.extend_from_slice(answer)),
        1 => {
            let Ok(mut inflate) = PrefixDecoder::new(prefix, CAP) else { return };
            let mut produced = 0u64;
            let mut refused = None;
            let fed = answer.chunks(PIECE).try_for_each(|piece| {
                inflate.feed(piece, |out| {
                    produced += out.len() as u64;
                    assert!(produced <= CAP, "the decoder produced more than its cap");
                    stream.extend_from_slice(out);
                    decoder.feed_expanding(out, MAX_TREE, |f| on_tree(&mut trees, f)).map_err(|e| {
                        refused = Some(e);
                        std::io::Error::other("refused")
                    })
                })
            });
            match (fed, refused) {
                (_, Some(e)) => Err(e),
                (Err(_), None) => Err(Refused::Inflate),
                (Ok(()), None) => inflate.finish().map_err(|_| Refused::Inflate),
            }
        }
        _ => return,
    };
    for t in &trees {
        assert_eq!(Id::of(&t.bytes), t.id);
        assert!(Tree::decode(&t.bytes).is_ok());
    }
    if outcome.is_ok() && decoder.finish().is_ok() {
        let mut again = Vec::new();
        for t in &trees {
            write_frame(&mut again, &t.id, &t.bytes);
        }
        assert_eq!(again, stream);
        if let Some(first) = trees.first() {
            assert_eq!(first.id, root, "the first tree is the root");
        }
    }
});
