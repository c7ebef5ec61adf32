//! Reading a bundle never panics and never allocates past the format's bounds; a bundle
//! that reads to its end writes back to the same bytes (one bundle, one encoding).
#![no_main]
use ferry_delta::bundle::{BundleReader, BundleWriter, Section};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut r) = BundleReader::new(data) else { return };
    let mut sections = Vec::new();
    let mut manifest = Vec::new();
    loop {
        match r.next_section() {
            Ok(Some(s)) => {
                if matches!(s, Section::Manifest(_)) {
                    manifest = r.manifest().to_vec();
                }
                sections.push(s)
            }
            Ok(None) => break,
            Err(_) => return,
        }
    }
    let mut w = BundleWriter::new(Vec::new()).expect("writing to memory");
    for s in &sections {
        match s {
            Section::Keys(k) => w.key_document(k),
            Section::Channel(c) => w.channel(c),
            Section::Commit(c) => w.commit(c),
            Section::From(f) => w.from(f),
            Section::Tree { id, bytes } => w.tree(id, bytes),
            Section::Manifest(_) => w.manifest(&manifest),
            Section::Chunk { id, frame } => w.chunk(id, frame),
        }
        .expect("sections that were read are in order");
    }
    assert_eq!(w.finish().expect("writing to memory"), data);
});
