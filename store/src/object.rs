//! The object model and its canonical encoding (format version 1).
//!
//! Two kinds of encoded objects live in a repository: trees and commits. Chunks are raw bytes
//! and have no encoding. Each object's id is the BLAKE3 of its encoding, so the encoding must
//! be deterministic (one value, one byte string) and decoded strictly (one byte string, at
//! most one value): anything a canonical encoder would not have written is an error.
//!
//! The byte layout is documented in ARCHITECTURE.md ("Object formats"); this module is its
//! only owner. It does not know where objects are stored or how they travel.
#![deny(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::id::Id;
use crate::wire::{Reader, WireError, Writer};

/// Magic bytes opening an encoded tree.
pub const TREE_MAGIC: &[u8; 4] = b"FRYT";
/// Magic bytes opening an encoded commit.
pub const COMMIT_MAGIC: &[u8; 4] = b"FRYC";
/// The only encoding version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// Longest file name, in bytes (Linux NAME_MAX).
pub const MAX_NAME: usize = 255;
/// Longest symlink target, in bytes (Linux PATH_MAX - 1).
pub const MAX_SYMLINK_TARGET: usize = 4095;
/// Deepest nesting of directories any walker follows (Linux cannot address deeper paths:
/// PATH_MAX is 4096 bytes). Walkers refuse deeper trees instead of exhausting their stack.
pub const MAX_DEPTH: usize = 1024;
/// Most entries in one directory.
pub const MAX_ENTRIES: usize = 1 << 20;
/// Most chunks in one file (16 Mi chunks; at the smallest chunk size that is 1 TiB).
pub const MAX_CHUNKS: usize = 1 << 24;
/// Largest chunk any repository may use (FastCDC's own ceiling).
pub const MAX_CHUNK_LEN: u32 = 16 * 1024 * 1024;
/// Most extended attributes on one entry.
pub const MAX_XATTRS: usize = 1024;
/// Largest extended attribute value (Linux XATTR_SIZE_MAX).
pub const MAX_XATTR_VALUE: usize = 65536;
/// Longest version string.
pub const MAX_VERSION: usize = 128;
/// Longest commit subject.
pub const MAX_SUBJECT: usize = 64 * 1024;
/// Longest commit body.
pub const MAX_BODY: usize = 1024 * 1024;
/// Most metadata keys, or hardware revisions, on one commit.
pub const MAX_LIST: usize = 1024;
/// Longest metadata key or hardware revision name.
pub const MAX_KEY: usize = 255;
/// Longest metadata value.
pub const MAX_META_VALUE: usize = 64 * 1024;

/// Why a byte string is not a canonical object. Every variant names the field involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad magic: expected {expected:?}, found {found:?}")]
    BadMagic { expected: &'static str, found: Vec<u8> },
    #[error("unsupported format version {found} (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion { found: u16 },
    #[error("truncated while reading {field}")]
    Truncated { field: &'static str },
    #[error("{extra} trailing bytes after the object")]
    TrailingBytes { extra: usize },
    #[error("{field} is {len} long, more than the limit of {max}")]
    TooLong { field: &'static str, len: usize, max: usize },
    #[error("invalid name {name:?}: {why}")]
    BadName { name: String, why: &'static str },
    #[error("entries out of order or duplicated: {prev:?} then {next:?}")]
    Unsorted { prev: String, next: String },
    #[error("unknown entry kind {0}")]
    UnknownKind(u8),
    #[error("mode {0:#o} has bits outside 0o7777")]
    BadMode(u32),
    #[error("file size {size} does not match the sum of its chunk lengths {sum}")]
    SizeMismatch { size: u64, sum: u64 },
    #[error("chunk length {0} is outside 1..={MAX_CHUNK_LEN}")]
    BadChunkLength(u32),
    #[error("{field} is not valid UTF-8")]
    NotUtf8 { field: &'static str },
    #[error("invalid version {0:?}")]
    BadVersion(String),
    #[error("invalid flag byte {value} in {field}")]
    BadFlag { field: &'static str, value: u8 },
    #[error("{field} is empty or zero")]
    Empty { field: &'static str },
    #[error("unsupported {what} format version {found} (this build reads versions {supported})")]
    UnsupportedDocumentVersion { what: &'static str, found: u16, supported: &'static str },
    #[error("{role} threshold {threshold} is outside 1..={keys} (the number of {role} keys, at least 1)")]
    BadThreshold { role: &'static str, threshold: u16, keys: usize },
}

impl From<WireError> for DecodeError {
    fn from(e: WireError) -> DecodeError {
        match e {
            WireError::Truncated { field } => DecodeError::Truncated { field },
            WireError::TooLong { field, len, max } => DecodeError::TooLong { field, len, max },
            WireError::TrailingBytes { extra } => DecodeError::TrailingBytes { extra },
        }
    }
}

/// An extended attribute: name and value, both raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// Ownership, permission bits and extended attributes shared by all entry kinds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Meta {
    /// Permission bits only (`0o7777`); the file type comes from the entry kind.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Sorted by name, names unique.
    pub xattrs: Vec<Xattr>,
}

/// A piece of a regular file: the id of its uncompressed bytes and their length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    pub id: Id,
    pub len: u32,
}

/// What a directory entry is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file: its size and the chunks that make it, in order.
    File { meta: Meta, size: u64, chunks: Vec<ChunkRef> },
    /// A subdirectory: the id of its tree, which carries the directory's own metadata.
    Dir { tree: Id },
    /// A symbolic link. Its permission bits are always 0o777 on Linux and are not stored.
    Symlink { uid: u32, gid: u32, xattrs: Vec<Xattr>, target: Vec<u8> },
}

/// One named entry in a tree.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    pub name: Vec<u8>,
    pub kind: EntryKind,
}

/// A directory: its own metadata and its entries, sorted by name bytes, names unique.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Tree {
    pub meta: Meta,
    pub entries: Vec<Entry>,
}

/// An orderable release version: a plain number, or a semantic version.
///
/// Numbers order among numbers and semantic versions among semantic versions (by semver
/// precedence); the two kinds do not compare with each other.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Version {
    Number(u64),
    Semver(semver::Version),
}

impl Version {
    /// Compares two versions of the same kind; `None` for a number against a semver.
    pub fn compare(&self, other: &Version) -> Option<Ordering> {
        match (self, other) {
            (Version::Number(a), Version::Number(b)) => Some(a.cmp(b)),
            (Version::Semver(a), Version::Semver(b)) => Some(a.cmp_precedence(b)),
            _ => None,
        }
    }
}

impl FromStr for Version {
    type Err = DecodeError;

    /// Accepts only canonical spellings, so that one version has one encoding:
    /// `42` but not `042`, `1.2.3` but not `v1.2.3` or `1.2`.
    fn from_str(s: &str) -> Result<Version, DecodeError> {
        let bad = || DecodeError::BadVersion(s.to_string());
        if s.is_empty() || s.len() > MAX_VERSION {
            return Err(bad());
        }
        let v = if s.bytes().all(|b| b.is_ascii_digit()) {
            Version::Number(s.parse().map_err(|_| bad())?)
        } else {
            Version::Semver(semver::Version::parse(s).map_err(|_| bad())?)
        };
        if v.to_string() != s {
            return Err(bad());
        }
        Ok(v)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Number(n) => write!(f, "{n}"),
            Version::Semver(v) => write!(f, "{v}"),
        }
    }
}

/// A release: a root tree plus the metadata that says what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub root: Id,
    pub parent: Option<Id>,
    pub version: Version,
    /// Seconds since the Unix epoch, when given (`--timestamp` or `SOURCE_DATE_EPOCH`).
    /// Never taken from the clock implicitly: it is part of the commit id.
    pub timestamp: Option<i64>,
    pub subject: String,
    pub body: String,
    pub metadata: BTreeMap<String, String>,
    /// Hardware revisions this release was built for; sorted, unique.
    pub hardware: Vec<String>,
}

impl Commit {
    /// True when `other` records the same release: everything equal but the parent.
    pub fn same_content(&self, other: &Commit) -> bool {
        self.root == other.root
            && self.version == other.version
            && self.timestamp == other.timestamp
            && self.subject == other.subject
            && self.body == other.body
            && self.metadata == other.metadata
            && self.hardware == other.hardware
    }
}

/// Checks a branch or channel name: 1..=255 bytes of `[A-Za-z0-9._/-]`, no empty, `.` or
/// `..` component. The error says why.
/// Checks a branch (or channel) name: see [`check_ref_name`]. (Here, not in `repo`, so that
/// the device, which has no repository, checks names by the same rule.)
pub fn check_branch_name(name: &str) -> crate::Result<()> {
    check_ref_name(name).map_err(|why| crate::StoreError::BadBranchName { name: name.to_string(), why })
}

pub fn check_ref_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 255 {
        return Err("must be 1 to 255 bytes long");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b)) {
        return Err("only letters, digits, `.`, `_`, `-` and `/` are allowed");
    }
    if name.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err("no empty, `.` or `..` path components");
    }
    Ok(())
}

/// Checks a file name: 1..=255 bytes, no `/` or NUL, not `.` or `..`.
pub fn check_name(name: &[u8]) -> Result<(), DecodeError> {
    let why = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_NAME {
        Some("longer than 255 bytes")
    } else if name == b"." || name == b".." {
        Some("`.` and `..` are not entries")
    } else if name.contains(&b'/') {
        Some("contains `/`")
    } else if name.contains(&0) {
        Some("contains NUL")
    } else {
        None
    };
    match why {
        Some(why) => Err(DecodeError::BadName { name: String::from_utf8_lossy(name).into_owned(), why }),
        None => Ok(()),
    }
}

fn check_mode(mode: u32) -> Result<(), DecodeError> {
    if mode & !0o7777 != 0 {
        return Err(DecodeError::BadMode(mode));
    }
    Ok(())
}

pub(crate) fn utf8(bytes: &[u8], field: &'static str) -> Result<String, DecodeError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::NotUtf8 { field })
}

fn check_sorted<T: AsRef<[u8]>>(items: impl Iterator<Item = T>) -> Result<(), DecodeError> {
    let mut prev: Option<T> = None;
    for item in items {
        if let Some(p) = &prev {
            if p.as_ref() >= item.as_ref() {
                return Err(DecodeError::Unsorted {
                    prev: String::from_utf8_lossy(p.as_ref()).into_owned(),
                    next: String::from_utf8_lossy(item.as_ref()).into_owned(),
                });
            }
        }
        prev = Some(item);
    }
    Ok(())
}

fn check_xattrs(xattrs: &[Xattr]) -> Result<(), DecodeError> {
    if xattrs.len() > MAX_XATTRS {
        return Err(DecodeError::TooLong { field: "xattr count", len: xattrs.len(), max: MAX_XATTRS });
    }
    for x in xattrs {
        if x.name.is_empty() || x.name.len() > MAX_NAME || x.name.contains(&0) {
            return Err(DecodeError::BadName {
                name: String::from_utf8_lossy(&x.name).into_owned(),
                why: "xattr names are 1..=255 bytes without NUL",
            });
        }
        if x.value.len() > MAX_XATTR_VALUE {
            return Err(DecodeError::TooLong { field: "xattr value", len: x.value.len(), max: MAX_XATTR_VALUE });
        }
    }
    check_sorted(xattrs.iter().map(|x| &x.name))
}

pub(crate) fn check_strings(items: &[String], field: &'static str) -> Result<(), DecodeError> {
    if items.len() > MAX_LIST {
        return Err(DecodeError::TooLong { field, len: items.len(), max: MAX_LIST });
    }
    for s in items {
        if s.is_empty() {
            return Err(DecodeError::BadName {
                name: String::new(),
                why: "metadata keys and hardware revisions may not be empty",
            });
        }
        if s.len() > MAX_KEY {
            return Err(DecodeError::TooLong { field, len: s.len(), max: MAX_KEY });
        }
    }
    check_sorted(items.iter())
}

impl Tree {
    /// The trees of this tree's directories, in entry order.
    pub fn subtrees(&self) -> impl Iterator<Item = Id> + '_ {
        self.entries.iter().filter_map(|e| match e.kind {
            EntryKind::Dir { tree } => Some(tree),
            _ => None,
        })
    }

    /// Checks every rule the decoder enforces, so that only decodable trees are encoded.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_mode(self.meta.mode)?;
        check_xattrs(&self.meta.xattrs)?;
        if self.entries.len() > MAX_ENTRIES {
            return Err(DecodeError::TooLong { field: "entry count", len: self.entries.len(), max: MAX_ENTRIES });
        }
        for e in &self.entries {
            check_name(&e.name)?;
            match &e.kind {
                EntryKind::File { meta, size, chunks } => {
                    check_mode(meta.mode)?;
                    check_xattrs(&meta.xattrs)?;
                    if chunks.len() > MAX_CHUNKS {
                        return Err(DecodeError::TooLong { field: "chunk count", len: chunks.len(), max: MAX_CHUNKS });
                    }
                    let mut sum = 0u64;
                    for c in chunks {
                        if c.len == 0 || c.len > MAX_CHUNK_LEN {
                            return Err(DecodeError::BadChunkLength(c.len));
                        }
                        sum += u64::from(c.len);
                    }
                    if sum != *size {
                        return Err(DecodeError::SizeMismatch { size: *size, sum });
                    }
                }
                EntryKind::Dir { .. } => {}
                EntryKind::Symlink { xattrs, target, .. } => {
                    check_xattrs(xattrs)?;
                    if target.is_empty() || target.len() > MAX_SYMLINK_TARGET || target.contains(&0) {
                        return Err(DecodeError::BadName {
                            name: String::from_utf8_lossy(target).into_owned(),
                            why: "symlink targets are 1..=4095 bytes without NUL",
                        });
                    }
                }
            }
        }
        check_sorted(self.entries.iter().map(|e| &e.name))
    }

    /// The canonical encoding. Fails only if the tree breaks a rule of the format.
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        self.validate()?;
        let mut w = Writer::default();
        w.raw(TREE_MAGIC);
        w.u16(FORMAT_VERSION);
        write_meta(&mut w, &self.meta);
        w.u32(self.entries.len() as u32);
        for e in &self.entries {
            w.bytes16(&e.name);
            match &e.kind {
                EntryKind::File { meta, size, chunks } => {
                    w.u8(KIND_FILE);
                    write_meta(&mut w, meta);
                    w.u64(*size);
                    w.u32(chunks.len() as u32);
                    for c in chunks {
                        w.id(&c.id);
                        w.u32(c.len);
                    }
                }
                EntryKind::Dir { tree } => {
                    w.u8(KIND_DIR);
                    w.id(tree);
                }
                EntryKind::Symlink { uid, gid, xattrs, target } => {
                    w.u8(KIND_SYMLINK);
                    w.u32(*uid);
                    w.u32(*gid);
                    write_xattrs(&mut w, xattrs);
                    w.bytes16(target);
                }
            }
        }
        Ok(w.buf)
    }

    /// Decodes a tree strictly: anything [`Tree::encode`] would not produce is an error.
    pub fn decode(bytes: &[u8]) -> Result<Tree, DecodeError> {
        let mut r = Reader::new(bytes);
        read_header(&mut r, TREE_MAGIC, "FRYT")?;
        let meta = read_meta(&mut r)?;
        let count = r.u32("entry count")? as usize;
        if count > MAX_ENTRIES {
            return Err(DecodeError::TooLong { field: "entry count", len: count, max: MAX_ENTRIES });
        }
        // Every entry takes at least 36 bytes: never reserve more than the input could hold.
        let mut entries = Vec::with_capacity(count.min(bytes.len() / 36));
        for _ in 0..count {
            let name = r.bytes16(MAX_NAME, "entry name")?.to_vec();
            check_name(&name)?;
            let kind = match r.u8("entry kind")? {
                KIND_FILE => {
                    let meta = read_meta(&mut r)?;
                    let size = r.u64("file size")?;
                    let n = r.u32("chunk count")? as usize;
                    if n > MAX_CHUNKS {
                        return Err(DecodeError::TooLong { field: "chunk count", len: n, max: MAX_CHUNKS });
                    }
                    let mut chunks = Vec::with_capacity(n.min(bytes.len() / 36));
                    for _ in 0..n {
                        chunks.push(ChunkRef { id: r.id("chunk id")?, len: r.u32("chunk length")? });
                    }
                    EntryKind::File { meta, size, chunks }
                }
                KIND_DIR => EntryKind::Dir { tree: r.id("subtree id")? },
                KIND_SYMLINK => {
                    let uid = r.u32("symlink uid")?;
                    let gid = r.u32("symlink gid")?;
                    let xattrs = read_xattrs(&mut r)?;
                    let target = r.bytes16(MAX_SYMLINK_TARGET, "symlink target")?.to_vec();
                    EntryKind::Symlink { uid, gid, xattrs, target }
                }
                other => return Err(DecodeError::UnknownKind(other)),
            };
            entries.push(Entry { name, kind });
        }
        r.finish()?;
        let tree = Tree { meta, entries };
        tree.validate()?;
        Ok(tree)
    }

    /// The id of this tree: BLAKE3 of its canonical encoding.
    pub fn id(&self) -> Result<Id, DecodeError> {
        Ok(Id::of(&self.encode()?))
    }
}

const KIND_FILE: u8 = 1;
const KIND_DIR: u8 = 2;
const KIND_SYMLINK: u8 = 3;

pub(crate) fn read_header(r: &mut Reader<'_>, magic: &[u8; 4], name: &'static str) -> Result<(), DecodeError> {
    let found = r.take(4, "magic")?;
    if found != magic {
        return Err(DecodeError::BadMagic { expected: name, found: found.to_vec() });
    }
    let version = r.u16("format version")?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    Ok(())
}

fn write_meta(w: &mut Writer, m: &Meta) {
    w.u32(m.mode);
    w.u32(m.uid);
    w.u32(m.gid);
    write_xattrs(w, &m.xattrs);
}

fn read_meta(r: &mut Reader<'_>) -> Result<Meta, DecodeError> {
    let mode = r.u32("mode")?;
    check_mode(mode)?;
    let uid = r.u32("uid")?;
    let gid = r.u32("gid")?;
    let xattrs = read_xattrs(r)?;
    Ok(Meta { mode, uid, gid, xattrs })
}

fn write_xattrs(w: &mut Writer, xattrs: &[Xattr]) {
    w.u16(xattrs.len() as u16);
    for x in xattrs {
        w.bytes16(&x.name);
        w.bytes32(&x.value);
    }
}

fn read_xattrs(r: &mut Reader<'_>) -> Result<Vec<Xattr>, DecodeError> {
    let n = r.u16("xattr count")? as usize;
    if n > MAX_XATTRS {
        return Err(DecodeError::TooLong { field: "xattr count", len: n, max: MAX_XATTRS });
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.bytes16(MAX_NAME, "xattr name")?.to_vec();
        let value = r.bytes32(MAX_XATTR_VALUE, "xattr value")?.to_vec();
        out.push(Xattr { name, value });
    }
    check_xattrs(&out)?;
    Ok(out)
}

impl Commit {
    /// Checks every rule the decoder enforces.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.subject.len() > MAX_SUBJECT {
            return Err(DecodeError::TooLong { field: "subject", len: self.subject.len(), max: MAX_SUBJECT });
        }
        if self.body.len() > MAX_BODY {
            return Err(DecodeError::TooLong { field: "body", len: self.body.len(), max: MAX_BODY });
        }
        let keys: Vec<String> = self.metadata.keys().cloned().collect();
        check_strings(&keys, "metadata key")?;
        for v in self.metadata.values() {
            if v.len() > MAX_META_VALUE {
                return Err(DecodeError::TooLong { field: "metadata value", len: v.len(), max: MAX_META_VALUE });
            }
        }
        check_strings(&self.hardware, "hardware revision")?;
        // Round-trips through the strict parser: rejects non-canonical spellings.
        self.version.to_string().parse::<Version>()?;
        Ok(())
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        self.validate()?;
        let mut w = Writer::default();
        w.raw(COMMIT_MAGIC);
        w.u16(FORMAT_VERSION);
        w.id(&self.root);
        match &self.parent {
            Some(p) => {
                w.u8(1);
                w.id(p);
            }
            None => w.u8(0),
        }
        w.bytes16(self.version.to_string().as_bytes());
        match self.timestamp {
            Some(t) => {
                w.u8(1);
                w.i64(t);
            }
            None => w.u8(0),
        }
        w.bytes32(self.subject.as_bytes());
        w.bytes32(self.body.as_bytes());
        w.u16(self.metadata.len() as u16);
        for (k, v) in &self.metadata {
            w.bytes16(k.as_bytes());
            w.bytes32(v.as_bytes());
        }
        w.u16(self.hardware.len() as u16);
        for h in &self.hardware {
            w.bytes16(h.as_bytes());
        }
        Ok(w.buf)
    }

    /// Decodes a commit strictly.
    pub fn decode(bytes: &[u8]) -> Result<Commit, DecodeError> {
        let mut r = Reader::new(bytes);
        read_header(&mut r, COMMIT_MAGIC, "FRYC")?;
        let root = r.id("root tree id")?;
        let parent = match r.u8("parent flag")? {
            0 => None,
            1 => Some(r.id("parent id")?),
            value => return Err(DecodeError::BadFlag { field: "parent flag", value }),
        };
        let version = utf8(r.bytes16(MAX_VERSION, "version")?, "version")?.parse()?;
        let timestamp = match r.u8("timestamp flag")? {
            0 => None,
            1 => Some(r.i64("timestamp")?),
            value => return Err(DecodeError::BadFlag { field: "timestamp flag", value }),
        };
        let subject = utf8(r.bytes32(MAX_SUBJECT, "subject")?, "subject")?;
        let body = utf8(r.bytes32(MAX_BODY, "body")?, "body")?;
        let n = r.u16("metadata count")? as usize;
        if n > MAX_LIST {
            return Err(DecodeError::TooLong { field: "metadata count", len: n, max: MAX_LIST });
        }
        let mut keys = Vec::with_capacity(n);
        let mut metadata = BTreeMap::new();
        for _ in 0..n {
            let k = utf8(r.bytes16(MAX_KEY, "metadata key")?, "metadata key")?;
            let v = utf8(r.bytes32(MAX_META_VALUE, "metadata value")?, "metadata value")?;
            keys.push(k.clone());
            metadata.insert(k, v);
        }
        check_strings(&keys, "metadata key")?;
        let n = r.u16("hardware count")? as usize;
        if n > MAX_LIST {
            return Err(DecodeError::TooLong { field: "hardware count", len: n, max: MAX_LIST });
        }
        let mut hardware = Vec::with_capacity(n);
        for _ in 0..n {
            hardware.push(utf8(r.bytes16(MAX_KEY, "hardware revision")?, "hardware revision")?);
        }
        r.finish()?;
        let commit = Commit { root, parent, version, timestamp, subject, body, metadata, hardware };
        commit.validate()?;
        Ok(commit)
    }

    /// The id of this commit: BLAKE3 of its canonical encoding.
    pub fn id(&self) -> Result<Id, DecodeError> {
        Ok(Id::of(&self.encode()?))
    }
}

/// What kind of encoded object a byte string claims to be, from its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Tree,
    Commit,
    /// A key document (`crate::channel::KeyDoc`).
    Keys,
    /// A channel document (`crate::channel::ChannelDoc`).
    Channel,
}

impl ObjectKind {
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Tree => "tree",
            ObjectKind::Commit => "commit",
            ObjectKind::Keys => "key document",
            ObjectKind::Channel => "channel document",
        }
    }
}

/// Reads the magic of an encoded object without decoding the rest.
pub fn object_kind(bytes: &[u8]) -> Option<ObjectKind> {
    match bytes.get(..4) {
        Some(m) if m == TREE_MAGIC => Some(ObjectKind::Tree),
        Some(m) if m == COMMIT_MAGIC => Some(ObjectKind::Commit),
        Some(m) if m == crate::channel::KEYS_MAGIC => Some(ObjectKind::Keys),
        Some(m) if m == crate::channel::CHANNEL_MAGIC => Some(ObjectKind::Channel),
        _ => None,
    }
}
