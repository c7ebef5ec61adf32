//! Signed channel documents, key documents, and the rules a device accepts them by.
//!
//! What it is for: the two kinds of signed metadata above commits, and the pure decision
//! functions that stand between a device and every rollback, freeze and wrong-hardware attack
//! ([`Trust::advance`], [`accept_channel`]). What it is not for: storing them (the
//! repository), fetching them (the device agent) or remembering what was seen (the device's
//! trust state, which persists [`Seen`]).
//!
//! - A **key document** (`FRYK`) names the root keys (which sign the next key document), the
//!   keys that may sign commits, the keys that may sign channel documents and (format
//!   version 2) the keys that may sign device configuration, each role with a threshold: how
//!   many distinct keys of the role must sign (k of n). Its serial starts at 1 and grows by
//!   one with each rotation. Document `n + 1` is valid only if signed by root keys of
//!   document `n` meeting `n`'s root threshold *and* by root keys it names itself meeting its
//!   own: rotating an online key needs the (offline) roots; rotating the roots needs the old
//!   and the new ones. A device's image holds the roots it starts from (document 0, threshold
//!   1). A version 2 document expires: a device refuses to act on a newest key document past
//!   its expiry ([`Trust::check_expiry`], judged with the clock floor channel documents use),
//!   so a device cut off from the fleet's keys cannot be held on an old set for ever; the
//!   operator re-signs it before (`ferry keys refresh`). Superseded documents in the chain
//!   may have expired: a device offline for months walks through them to the newest.
//!   Version 1 documents (no expiry, thresholds 1, no configuration keys) still decode, and
//!   a chain moves from version 1 to 2 with an ordinary root-signed document.
//! - A **channel document** (`FRYH`) says, for a channel, which commit (and version) each
//!   hardware revision runs. Its serial grows with every change; it expires, and is re-signed
//!   with a new expiry (`ferry channel refresh`) so a device can tell "nothing new" from "an
//!   attacker withholds updates". A deliberate downgrade is marked `rollback`.
//!
//! Both are canonical like commits (magic, format version, strictly decoded, sorted unique
//! lists) and are signed over their BLAKE3 id with their own domain-separation prefix
//! ([`crate::sign::Signed`]). On the wire and on a device they travel in an **envelope**
//! (`FRYS`): the document's bytes plus `(public key, signature)` pairs; the signatures are
//! checked against the id before the document is decoded.
//!
//! Encodings (little-endian; `bytes16`/`bytes32` are length-prefixed):
//!
//! ```text
//! key document:  "FRYK" u16 1  u64 serial  i64 timestamp  u8 has_previous [id]
//!   version 1    3 × (u16 count, count × 32-byte public key; sorted, unique): roots,
//!                commit keys, channel keys (roots and channel keys non-empty)
//! key document:  "FRYK" u16 2  u64 serial  i64 timestamp  i64 expires (> timestamp)
//!   version 2    u8 has_previous [id]
//!                4 × (u16 threshold, u16 count, count × 32-byte public key; sorted,
//!                unique): roots, commit keys, channel keys, config keys (roots and
//!                channel keys non-empty; threshold in 1..=max(count, 1))
//! channel doc:   "FRYH" u16 version  bytes16 name  u64 serial  i64 timestamp  i64 expires
//!                u8 rollback  u8 has_previous [id]
//!                u16 count, count × (bytes16 hardware, id commit, bytes16 version);
//!                sorted by hardware, unique, at least one
//! envelope:      "FRYS" u16 version  bytes32 document  u16 count,
//!                count × (32-byte public key, 64-byte signature); keys sorted, unique
//! ```
#![deny(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

use std::cmp::Ordering;

use crate::id::Id;
use crate::object::{check_strings, read_header, utf8, DecodeError, Version, FORMAT_VERSION, MAX_KEY, MAX_LIST};
use crate::sign::{PublicKey, SecretKey, Signed};
use crate::wire::{Reader, Writer};

pub const KEYS_MAGIC: &[u8; 4] = b"FRYK";
/// The key document format version this build writes; it also reads version 1.
pub const KEYS_VERSION: u16 = 2;
pub const CHANNEL_MAGIC: &[u8; 4] = b"FRYH";
pub const ENVELOPE_MAGIC: &[u8; 4] = b"FRYS";
/// The most keys a key document lists per role, and signatures an envelope carries.
pub const MAX_KEYS: usize = 64;
/// The largest document an envelope carries.
pub const MAX_DOCUMENT: usize = 1 << 20;
/// The largest envelope: the document plus its signatures and header.
pub const MAX_ENVELOPE: usize = MAX_DOCUMENT + 8 + MAX_KEYS * 96 + 16;

/// Which keys may sign what, from one key document.
///
/// Format version 1 is a document with no expiry (`expires: None`), thresholds of 1 and no
/// configuration keys; anything else is version 2, which always expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDoc {
    pub serial: u64,
    /// Unix seconds when it was signed.
    pub timestamp: i64,
    /// Unix seconds after which devices refuse it as their newest key document; `None` only
    /// for version 1 documents.
    pub expires: Option<i64>,
    pub previous: Option<Id>,
    /// Keys that sign the next key document; sorted, unique, at least one.
    pub roots: Vec<[u8; 32]>,
    /// Keys whose commit signatures devices accept; sorted, unique.
    pub commit_keys: Vec<[u8; 32]>,
    /// Keys whose channel documents devices accept; sorted, unique, at least one.
    pub channel_keys: Vec<[u8; 32]>,
    /// Keys whose configuration documents devices accept; sorted, unique. Empty: the fleet
    /// does not sign configuration (devices then take configuration only if their own
    /// configuration says they may take it unsigned).
    pub config_keys: Vec<[u8; 32]>,
    /// How many distinct keys of each role must sign.
    pub thresholds: Thresholds,
}

/// How many distinct keys of each role must sign (k of n); each is in `1..=max(n, 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Thresholds {
    /// Signatures by roots a key document needs (from the old roots and from its own).
    pub root: u16,
    /// Signatures by commit keys a commit needs.
    pub commit: u16,
    /// Signatures by channel keys a channel document needs.
    pub channel: u16,
    /// Signatures by configuration keys a configuration document needs.
    pub config: u16,
}

impl Default for Thresholds {
    /// One of each: what version 1 documents and a device's image roots mean.
    fn default() -> Thresholds {
        Thresholds { root: 1, commit: 1, channel: 1, config: 1 }
    }
}

fn check_threshold(threshold: u16, keys: &[[u8; 32]], role: &'static str) -> Result<(), DecodeError> {
    if threshold == 0 || usize::from(threshold) > keys.len().max(1) {
        return Err(DecodeError::BadThreshold { role, threshold, keys: keys.len() });
    }
    Ok(())
}

/// The keys among `allowed` with a valid signature of `id` as a `what` in `signatures`.
fn valid_signers(what: Signed, id: &Id, signatures: &[([u8; 32], [u8; 64])], allowed: &[[u8; 32]]) -> Vec<[u8; 32]> {
    signatures
        .iter()
        .filter(|(key, sig)| allowed.contains(key) && PublicKey::from_bytes(key).is_ok_and(|k| k.verify(what, id, sig)))
        .map(|(key, _)| *key)
        .collect()
}

/// How many distinct keys in `signers` are among `allowed`.
fn distinct(signers: &[[u8; 32]], allowed: &[[u8; 32]]) -> usize {
    let mut v: Vec<&[u8; 32]> = signers.iter().filter(|k| allowed.contains(k)).collect();
    v.sort();
    v.dedup();
    v.len()
}

/// What one hardware revision runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub hardware: String,
    pub commit: Id,
    pub version: Version,
}

/// One version of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelDoc {
    pub name: String,
    pub serial: u64,
    /// Unix seconds when it was signed.
    pub timestamp: i64,
    /// Unix seconds after which devices refuse it.
    pub expires: i64,
    /// An operator's deliberate downgrade: devices accept an older version from it.
    pub rollback: bool,
    /// The channel's document before this one (its history).
    pub previous: Option<Id>,
    /// Sorted by hardware revision, unique, at least one.
    pub targets: Vec<Target>,
}

/// A signed document as it travels: its canonical bytes and `(key, signature)` pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub document: Vec<u8>,
    pub signatures: Vec<([u8; 32], [u8; 64])>,
}

fn check_keys(keys: &[[u8; 32]], field: &'static str, non_empty: bool) -> Result<(), DecodeError> {
    if keys.len() > MAX_KEYS {
        return Err(DecodeError::TooLong { field, len: keys.len(), max: MAX_KEYS });
    }
    if non_empty && keys.is_empty() {
        return Err(DecodeError::Empty { field });
    }
    for pair in keys.windows(2) {
        if let [a, b] = pair {
            if a >= b {
                return Err(DecodeError::Unsorted { prev: hex::encode(a), next: hex::encode(b) });
            }
        }
    }
    Ok(())
}

fn write_keys(w: &mut Writer, keys: &[[u8; 32]]) {
    w.u16(keys.len() as u16);
    for k in keys {
        w.raw(k);
    }
}

fn read_keys(r: &mut Reader<'_>, field: &'static str, non_empty: bool) -> Result<Vec<[u8; 32]>, DecodeError> {
    let n = r.u16(field)? as usize;
    if n > MAX_KEYS {
        return Err(DecodeError::TooLong { field, len: n, max: MAX_KEYS });
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let k = r.take(32, field)?;
        out.push(<[u8; 32]>::try_from(k).map_err(|_| DecodeError::Truncated { field })?);
    }
    check_keys(&out, field, non_empty)?;
    Ok(out)
}

fn write_previous(w: &mut Writer, previous: &Option<Id>) {
    match previous {
        Some(p) => {
            w.u8(1);
            w.id(p);
        }
        None => w.u8(0),
    }
}

fn read_previous(r: &mut Reader<'_>) -> Result<Option<Id>, DecodeError> {
    match r.u8("previous flag")? {
        0 => Ok(None),
        1 => Ok(Some(r.id("previous document id")?)),
        value => Err(DecodeError::BadFlag { field: "previous flag", value }),
    }
}

impl KeyDoc {
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.serial == 0 {
            return Err(DecodeError::Empty { field: "key document serial (it starts at 1)" });
        }
        check_keys(&self.roots, "root keys", true)?;
        check_keys(&self.commit_keys, "commit keys", false)?;
        check_keys(&self.channel_keys, "channel keys", true)?;
        check_keys(&self.config_keys, "config keys", false)?;
        let t = &self.thresholds;
        check_threshold(t.root, &self.roots, "root")?;
        check_threshold(t.commit, &self.commit_keys, "commit")?;
        check_threshold(t.channel, &self.channel_keys, "channel")?;
        check_threshold(t.config, &self.config_keys, "config")?;
        match self.expires {
            Some(expires) if expires <= self.timestamp => {
                Err(DecodeError::Empty { field: "key document lifetime (it must expire after it is signed)" })
            }
            Some(_) => Ok(()),
            None if *t != Thresholds::default() || !self.config_keys.is_empty() => Err(DecodeError::Empty {
                field: "key document expiry (thresholds and config keys need format version 2, which expires)",
            }),
            None => Ok(()),
        }
    }

    /// Its format version: 2 when it expires, else 1.
    pub fn version(&self) -> u16 {
        if self.expires.is_some() {
            KEYS_VERSION
        } else {
            1
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        self.validate()?;
        let mut w = Writer::default();
        w.raw(KEYS_MAGIC);
        w.u16(self.version());
        w.u64(self.serial);
        w.i64(self.timestamp);
        match self.expires {
            Some(expires) => {
                w.i64(expires);
                write_previous(&mut w, &self.previous);
                let t = &self.thresholds;
                for (threshold, keys) in [
                    (t.root, &self.roots),
                    (t.commit, &self.commit_keys),
                    (t.channel, &self.channel_keys),
                    (t.config, &self.config_keys),
                ] {
                    w.u16(threshold);
                    write_keys(&mut w, keys);
                }
            }
            None => {
                write_previous(&mut w, &self.previous);
                write_keys(&mut w, &self.roots);
                write_keys(&mut w, &self.commit_keys);
                write_keys(&mut w, &self.channel_keys);
            }
        }
        Ok(w.buf)
    }

    pub fn decode(bytes: &[u8]) -> Result<KeyDoc, DecodeError> {
        let mut r = Reader::new(bytes);
        let found = r.take(4, "magic")?;
        if found != KEYS_MAGIC {
            return Err(DecodeError::BadMagic { expected: "FRYK", found: found.to_vec() });
        }
        let version = r.u16("format version")?;
        if version != 1 && version != KEYS_VERSION {
            return Err(DecodeError::UnsupportedDocumentVersion {
                what: "key document",
                found: version,
                supported: "1 and 2",
            });
        }
        let serial = r.u64("serial")?;
        let timestamp = r.i64("timestamp")?;
        let doc = if version == 1 {
            let previous = read_previous(&mut r)?;
            let roots = read_keys(&mut r, "root keys", true)?;
            let commit_keys = read_keys(&mut r, "commit keys", false)?;
            let channel_keys = read_keys(&mut r, "channel keys", true)?;
            KeyDoc {
                serial,
                timestamp,
                expires: None,
                previous,
                roots,
                commit_keys,
                channel_keys,
                config_keys: Vec::new(),
                thresholds: Thresholds::default(),
            }
        } else {
            let expires = r.i64("expires")?;
            let previous = read_previous(&mut r)?;
            let root = r.u16("root threshold")?;
            let roots = read_keys(&mut r, "root keys", true)?;
            let commit = r.u16("commit threshold")?;
            let commit_keys = read_keys(&mut r, "commit keys", false)?;
            let channel = r.u16("channel threshold")?;
            let channel_keys = read_keys(&mut r, "channel keys", true)?;
            let config = r.u16("config threshold")?;
            let config_keys = read_keys(&mut r, "config keys", false)?;
            KeyDoc {
                serial,
                timestamp,
                expires: Some(expires),
                previous,
                roots,
                commit_keys,
                channel_keys,
                config_keys,
                thresholds: Thresholds { root, commit, channel, config },
            }
        };
        r.finish()?;
        doc.validate()?;
        Ok(doc)
    }
}

impl ChannelDoc {
    pub fn validate(&self) -> Result<(), DecodeError> {
        crate::object::check_ref_name(&self.name)
            .map_err(|why| DecodeError::BadName { name: self.name.clone(), why })?;
        if self.targets.is_empty() {
            return Err(DecodeError::Empty { field: "channel targets" });
        }
        if self.expires <= self.timestamp {
            return Err(DecodeError::Empty { field: "channel document lifetime (it must expire after it is signed)" });
        }
        let hardware: Vec<String> = self.targets.iter().map(|t| t.hardware.clone()).collect();
        check_strings(&hardware, "hardware revision")?;
        for pair in hardware.windows(2) {
            if let [a, b] = pair {
                if a >= b {
                    return Err(DecodeError::Unsorted { prev: a.clone(), next: b.clone() });
                }
            }
        }
        for t in &self.targets {
            t.version.to_string().parse::<Version>()?;
        }
        Ok(())
    }

    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        self.validate()?;
        let mut w = Writer::default();
        w.raw(CHANNEL_MAGIC);
        w.u16(FORMAT_VERSION);
        w.bytes16(self.name.as_bytes());
        w.u64(self.serial);
        w.i64(self.timestamp);
        w.i64(self.expires);
        w.u8(u8::from(self.rollback));
        write_previous(&mut w, &self.previous);
        w.u16(self.targets.len() as u16);
        for t in &self.targets {
            w.bytes16(t.hardware.as_bytes());
            w.id(&t.commit);
            w.bytes16(t.version.to_string().as_bytes());
        }
        Ok(w.buf)
    }

    pub fn decode(bytes: &[u8]) -> Result<ChannelDoc, DecodeError> {
        let mut r = Reader::new(bytes);
        read_header(&mut r, CHANNEL_MAGIC, "FRYH")?;
        let name = utf8(r.bytes16(255, "channel name")?, "channel name")?;
        let serial = r.u64("serial")?;
        let timestamp = r.i64("timestamp")?;
        let expires = r.i64("expires")?;
        let rollback = match r.u8("rollback flag")? {
            0 => false,
            1 => true,
            value => return Err(DecodeError::BadFlag { field: "rollback flag", value }),
        };
        let previous = read_previous(&mut r)?;
        let n = r.u16("target count")? as usize;
        if n > MAX_LIST {
            return Err(DecodeError::TooLong { field: "target count", len: n, max: MAX_LIST });
        }
        let mut targets = Vec::with_capacity(n);
        for _ in 0..n {
            let hardware = utf8(r.bytes16(MAX_KEY, "hardware revision")?, "hardware revision")?;
            let commit = r.id("target commit")?;
            let version = utf8(r.bytes16(crate::object::MAX_VERSION, "target version")?, "target version")?.parse()?;
            targets.push(Target { hardware, commit, version });
        }
        r.finish()?;
        let doc = ChannelDoc { name, serial, timestamp, expires, rollback, previous, targets };
        doc.validate()?;
        Ok(doc)
    }

    /// The target for a hardware revision.
    pub fn target(&self, hardware: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.hardware == hardware)
    }
}

impl Envelope {
    /// Signs `document` (canonical bytes of a `what`) with every key in `keys`.
    pub fn sign(what: Signed, document: Vec<u8>, keys: &[&SecretKey]) -> Envelope {
        let id = Id::of(&document);
        let mut signatures: Vec<([u8; 32], [u8; 64])> =
            keys.iter().map(|k| (k.public().to_bytes(), k.sign(what, &id))).collect();
        signatures.sort_by_key(|s| s.0);
        signatures.dedup_by(|a, b| a.0 == b.0);
        Envelope { document, signatures }
    }

    pub fn id(&self) -> Id {
        Id::of(&self.document)
    }

    /// The keys among `allowed` with a valid signature in this envelope.
    pub fn signed_by(&self, what: Signed, allowed: &[[u8; 32]]) -> Vec<[u8; 32]> {
        valid_signers(what, &self.id(), &self.signatures, allowed)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.raw(ENVELOPE_MAGIC);
        w.u16(FORMAT_VERSION);
        w.bytes32(&self.document);
        w.u16(self.signatures.len() as u16);
        for (k, s) in &self.signatures {
            w.raw(k);
            w.raw(s);
        }
        w.buf
    }

    /// Decodes one envelope from the front of `bytes`; returns it and the bytes after it.
    pub fn decode_prefix(bytes: &[u8]) -> Result<(Envelope, &[u8]), DecodeError> {
        let mut r = Reader::new(bytes);
        read_header(&mut r, ENVELOPE_MAGIC, "FRYS")?;
        let document = r.bytes32(MAX_DOCUMENT, "document")?.to_vec();
        let n = r.u16("signature count")? as usize;
        if n > MAX_KEYS {
            return Err(DecodeError::TooLong { field: "signature count", len: n, max: MAX_KEYS });
        }
        let mut signatures = Vec::with_capacity(n);
        for _ in 0..n {
            let k = <[u8; 32]>::try_from(r.take(32, "signing key")?)
                .map_err(|_| DecodeError::Truncated { field: "signing key" })?;
            let s = <[u8; 64]>::try_from(r.take(64, "signature")?)
                .map_err(|_| DecodeError::Truncated { field: "signature" })?;
            signatures.push((k, s));
        }
        let keys: Vec<[u8; 32]> = signatures.iter().map(|(k, _)| *k).collect();
        check_keys(&keys, "signing keys", false)?;
        let rest = r.rest();
        Ok((Envelope { document, signatures }, rest))
    }

    /// Decodes exactly one envelope.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let (e, rest) = Envelope::decode_prefix(bytes)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes { extra: rest.len() });
        }
        Ok(e)
    }

    /// Decodes a sequence of envelopes (the key document chain).
    pub fn decode_all(mut bytes: &[u8]) -> Result<Vec<Envelope>, DecodeError> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            if out.len() >= MAX_LIST {
                return Err(DecodeError::TooLong { field: "envelope count", len: out.len() + 1, max: MAX_LIST });
            }
            let (e, rest) = Envelope::decode_prefix(bytes)?;
            out.push(e);
            bytes = rest;
        }
        Ok(out)
    }
}

/// Why a device refuses a key or channel document. Every refusal changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("key document {id} is signed by {signed} of the root keys this device trusts (roots of key document {serial}), {threshold} needed")]
    KeysNotSignedByOldRoot { id: Id, serial: u64, signed: usize, threshold: u16 },
    #[error("key document {id} is signed by {signed} of the root keys it names, {threshold} needed (a root rotation needs the old and the new roots)")]
    KeysNotSignedByNewRoot { id: Id, signed: usize, threshold: u16 },
    #[error("key document {serial}, the newest this device trusts, expired at {expires}; the device's time is {now} (clock {clock}, floor {floor}){hint}")]
    KeysExpired { serial: u64, expires: i64, now: i64, clock: i64, floor: i64, hint: &'static str },
    #[error("key document {id} has serial {found}, expected {expected}: the chain has a gap")]
    KeysOutOfOrder { id: Id, found: u64, expected: u64 },
    #[error("document {id} does not decode: {source}")]
    Decode { id: Id, source: DecodeError },
    #[error("channel document {id} is signed by {signed} of the keys allowed to sign channels (key document {keys_serial}), {threshold} needed; signed by: {signers}")]
    ChannelNotSigned { id: Id, keys_serial: u64, signed: usize, threshold: u16, signers: String },
    #[error("channel document {id} is for channel {found:?}, not {expected:?}")]
    WrongChannel { id: Id, expected: String, found: String },
    #[error(
        "channel {channel}: document serial {found} is older than serial {highest} already seen (replayed document)"
    )]
    Replayed { channel: String, found: u64, highest: u64 },
    #[error("channel {channel}: document serial {serial} expired at {expires}; the device's time is {now} (clock {clock}, floor {floor}){hint}")]
    Expired { channel: String, serial: u64, expires: i64, now: i64, clock: i64, floor: i64, hint: &'static str },
    #[error("channel {channel}: document serial {serial} has no target for hardware revision {hardware:?} (targets: {targets})")]
    NoTarget { channel: String, serial: u64, hardware: String, targets: String },
    #[error("channel {channel}: version {target} is older than the running {current} and the document is not marked as a rollback")]
    Downgrade { channel: String, target: String, current: String },
    #[error("channel {channel}: version {target} cannot be ordered against the running {current}")]
    Unordered { channel: String, target: String, current: String },
    #[error("commit {commit} is built for {built} only, not for this device's {hardware:?}")]
    WrongHardware { commit: Id, built: String, hardware: String },
    #[error("commit {commit} has version {found}, but the channel document says {expected}")]
    VersionMismatch { commit: Id, expected: String, found: String },
}

/// The keys of one role and how many distinct ones of them must sign a `what`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quorum {
    pub what: Signed,
    pub keys: Vec<[u8; 32]>,
    /// At least 1.
    pub threshold: u16,
}

impl Quorum {
    /// Any one of `keys` (a device following a branch: its `trusted_keys`).
    pub fn any(what: Signed, keys: &[PublicKey]) -> Quorum {
        Quorum { what, keys: keys.iter().map(PublicKey::to_bytes).collect(), threshold: 1 }
    }

    /// How many distinct keys of this quorum validly signed `id` among `signatures`.
    pub fn signed(&self, id: &Id, signatures: &[([u8; 32], [u8; 64])]) -> usize {
        distinct(&valid_signers(self.what, id, signatures, &self.keys), &self.keys)
    }

    /// Whether `signatures` of `id` meet the threshold.
    pub fn met(&self, id: &Id, signatures: &[([u8; 32], [u8; 64])]) -> bool {
        self.signed(id, signatures) >= usize::from(self.threshold.max(1))
    }
}

/// The keys a device currently trusts: its image's roots, advanced through key documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    /// 0 for the image's roots alone.
    pub serial: u64,
    pub roots: Vec<[u8; 32]>,
    pub commit_keys: Vec<[u8; 32]>,
    pub channel_keys: Vec<[u8; 32]>,
    /// Keys whose configuration documents the device accepts (empty: none are signed).
    pub config_keys: Vec<[u8; 32]>,
    pub thresholds: Thresholds,
    /// When the newest accepted key document expires (`None`: a version 1 document, or the
    /// image's roots alone).
    pub expires: Option<i64>,
    /// The newest signed time among accepted key documents.
    pub timestamp: i64,
}

impl Trust {
    /// The starting point: the root keys in the device's image (any one of them signs);
    /// nothing else is trusted yet.
    pub fn from_roots(roots: &[PublicKey]) -> Trust {
        let mut roots: Vec<[u8; 32]> = roots.iter().map(PublicKey::to_bytes).collect();
        roots.sort();
        roots.dedup();
        Trust {
            serial: 0,
            roots,
            commit_keys: Vec::new(),
            channel_keys: Vec::new(),
            config_keys: Vec::new(),
            thresholds: Thresholds::default(),
            expires: None,
            timestamp: i64::MIN,
        }
    }

    fn taking(&self, doc: KeyDoc) -> Trust {
        Trust {
            serial: doc.serial,
            roots: doc.roots,
            commit_keys: doc.commit_keys,
            channel_keys: doc.channel_keys,
            config_keys: doc.config_keys,
            thresholds: doc.thresholds,
            expires: doc.expires,
            timestamp: self.timestamp.max(doc.timestamp),
        }
    }

    /// The trust after accepting the next key document, which must have the next serial and
    /// be signed by current roots meeting the current root threshold and by roots it names
    /// meeting its own. Whether it expired is not asked here: a device catching up walks
    /// through expired documents to the newest, which [`Trust::check_expiry`] judges.
    pub fn advance(&self, envelope: &Envelope) -> Result<Trust, TrustError> {
        let id = envelope.id();
        let signers = envelope.signed_by(Signed::Keys, &self.roots);
        let signed = distinct(&signers, &self.roots);
        if signed < usize::from(self.thresholds.root.max(1)) {
            return Err(TrustError::KeysNotSignedByOldRoot {
                id,
                serial: self.serial,
                signed,
                threshold: self.thresholds.root.max(1),
            });
        }
        // Signed by trusted roots: only now are its bytes decoded.
        let doc = KeyDoc::decode(&envelope.document).map_err(|source| TrustError::Decode { id, source })?;
        if doc.serial != self.serial + 1 {
            return Err(TrustError::KeysOutOfOrder { id, found: doc.serial, expected: self.serial + 1 });
        }
        let own = distinct(&envelope.signed_by(Signed::Keys, &doc.roots), &doc.roots);
        if own < usize::from(doc.thresholds.root) {
            return Err(TrustError::KeysNotSignedByNewRoot { id, signed: own, threshold: doc.thresholds.root });
        }
        Ok(self.taking(doc))
    }

    /// Refuses a trust whose newest key document expired, judged like a channel document's
    /// expiry: `clock` is the device's clock, trusted only above `floor` (and the key
    /// documents' own signed time).
    pub fn check_expiry(&self, clock: i64, floor: i64) -> Result<(), TrustError> {
        let Some(expires) = self.expires else { return Ok(()) };
        let floor = floor.max(self.timestamp);
        let now = clock.max(floor);
        if expires > now {
            return Ok(());
        }
        let hint = if clock > floor && clock > self.timestamp.saturating_add(400 * 86400) {
            "; if this device's clock runs far ahead, set it right"
        } else if clock > floor {
            "; judged by this device's clock: if it is wrong, set it right, otherwise the fleet's operator must re-sign the key document (`ferry keys refresh`)"
        } else {
            "; the newest signed time this device has seen is past it: the fleet's operator must re-sign the key document (`ferry keys refresh`)"
        };
        Err(TrustError::KeysExpired { serial: self.serial, expires, now, clock, floor, hint })
    }

    /// The keys of the role that signs a `what` (commits, channel documents, configuration
    /// documents, key documents: the roots) and its threshold.
    pub fn quorum(&self, what: Signed) -> Quorum {
        let (keys, threshold) = match what {
            Signed::Commit => (&self.commit_keys, self.thresholds.commit),
            Signed::Channel => (&self.channel_keys, self.thresholds.channel),
            Signed::Config => (&self.config_keys, self.thresholds.config),
            Signed::Keys => (&self.roots, self.thresholds.root),
        };
        Quorum { what, keys: keys.clone(), threshold: threshold.max(1) }
    }

    /// Advances through a key chain as the server serves it: serials 1, 2, ... in order.
    /// A trust at serial `k` skips the first `k` documents unread (it accepted them before);
    /// a document out of place fails [`Trust::advance`]'s serial check after its signature.
    ///
    /// A trust at serial 0 (only the image's roots) first looks for the newest document
    /// signed by one of those roots *and* naming that root among its own: an image built
    /// after a root rotation holds only the new root, and starts there instead of at
    /// document 1, which only the old root signed.
    pub fn advance_all(&self, chain: &[Envelope]) -> Result<Trust, TrustError> {
        let mut t = self.clone();
        let mut start = usize::try_from(t.serial).unwrap_or(usize::MAX).min(chain.len());
        if t.serial == 0 {
            for (i, e) in chain.iter().enumerate().rev() {
                let signers = e.signed_by(Signed::Keys, &t.roots);
                if signers.is_empty() {
                    continue;
                }
                // Signed by an image root: only now is it decoded.
                let id = e.id();
                let doc = KeyDoc::decode(&e.document).map_err(|source| TrustError::Decode { id, source })?;
                let own = distinct(&e.signed_by(Signed::Keys, &doc.roots), &doc.roots);
                if doc.serial == i as u64 + 1
                    && signers.iter().any(|s| doc.roots.contains(s))
                    && own >= usize::from(doc.thresholds.root)
                {
                    t = t.taking(doc);
                    start = i + 1;
                    break;
                }
            }
        }
        for e in chain.get(start..).unwrap_or_default() {
            t = t.advance(e)?;
        }
        Ok(t)
    }
}

/// What a device remembers about a channel between checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seen {
    /// The highest serial accepted (0 if none).
    pub serial: u64,
    /// The clock floor: the newest signed time seen, and the running commit's build time.
    pub floor: i64,
}

/// What the device is running, for the downgrade check.
#[derive(Debug)]
pub struct Running<'a> {
    pub version: Option<&'a Version>,
    pub hardware: &'a str,
}

/// How far ahead of a device's clock a signed time may move its clock floor, when that
/// clock is plausible ([`believable_time`]). A day covers clocks that drift and time zones
/// set wrong.
pub const MAX_AHEAD: i64 = 86_400;

/// How much of a signed time (a channel document's, the running commit's) a device takes
/// into its clock floor. Floors only grow and every later document must not be expired at
/// the floor, so one time in 2100, signed with a leaked channel key or built with
/// `SOURCE_DATE_EPOCH` in milliseconds, would otherwise stop the channel on every device
/// that saw it. A clock at or above `plausible_from` (the agent's build date and the
/// root-signed key documents' time: signed times no channel key can move) is believed to
/// within [`MAX_AHEAD`]: the floor rises to at most a day past it, however far ahead the
/// signed time is. A clock below it is known to be behind (reset to 1970, or restored from
/// a month-old save) and cannot judge: the signed time is taken whole, and only removing the
/// channel key that signed it undoes it (the device's trust state forgets what it vouched
/// for). Documents are not refused for their time: a clock behind by days must still take
/// the documents signed now.
pub fn believable_time(signed: i64, clock: i64, plausible_from: i64) -> i64 {
    if clock >= plausible_from {
        signed.min(clock.saturating_add(MAX_AHEAD))
    } else {
        signed
    }
}

/// Decides whether a device accepts a channel document. `clock` is the device's clock (Unix
/// seconds), trusted only above `seen.floor`. Returns the document and its target for this
/// device; the caller then checks the target commit with [`check_target_commit`].
pub fn accept_channel(
    envelope: &Envelope,
    channel: &str,
    trust: &Trust,
    seen: Seen,
    clock: i64,
    running: &Running<'_>,
) -> Result<(ChannelDoc, Target), TrustError> {
    let id = envelope.id();
    trust.check_expiry(clock, seen.floor)?;
    let quorum = trust.quorum(Signed::Channel);
    let signed = quorum.signed(&id, &envelope.signatures);
    let threshold = quorum.threshold;
    if signed < usize::from(threshold) {
        let signers: Vec<String> = envelope.signatures.iter().map(|(k, _)| hex::encode(k)).collect();
        return Err(TrustError::ChannelNotSigned {
            id,
            keys_serial: trust.serial,
            signed,
            threshold,
            signers: if signers.is_empty() { "nobody".into() } else { signers.join(", ") },
        });
    }
    let doc = ChannelDoc::decode(&envelope.document).map_err(|source| TrustError::Decode { id, source })?;
    if doc.name != channel {
        return Err(TrustError::WrongChannel { id, expected: channel.to_string(), found: doc.name });
    }
    if doc.serial < seen.serial {
        return Err(TrustError::Replayed { channel: doc.name, found: doc.serial, highest: seen.serial });
    }
    let floor = seen.floor.max(trust.timestamp);
    let now = clock.max(floor);
    if doc.expires <= now {
        let hint = if clock > doc.timestamp.saturating_add(400 * 86400) && clock > floor {
            "; if this device's clock runs far ahead, set it right"
        } else {
            ""
        };
        return Err(TrustError::Expired {
            channel: doc.name,
            serial: doc.serial,
            expires: doc.expires,
            now,
            clock,
            floor,
            hint,
        });
    }
    let Some(target) = doc.target(running.hardware).cloned() else {
        return Err(TrustError::NoTarget {
            channel: doc.name.clone(),
            serial: doc.serial,
            hardware: running.hardware.to_string(),
            targets: doc.targets.iter().map(|t| t.hardware.as_str()).collect::<Vec<_>>().join(", "),
        });
    };
    if let Some(current) = running.version {
        match target.version.compare(current) {
            Some(Ordering::Less) if !doc.rollback => {
                return Err(TrustError::Downgrade {
                    channel: doc.name,
                    target: target.version.to_string(),
                    current: current.to_string(),
                })
            }
            None => {
                return Err(TrustError::Unordered {
                    channel: doc.name,
                    target: target.version.to_string(),
                    current: current.to_string(),
                })
            }
            _ => {}
        }
    }
    Ok((doc, target))
}

/// Checks the commit a channel target names, once its signature is verified and it is
/// decoded: its signed hardware list must contain the device's revision, and its version
/// must be the one the channel document states.
pub fn check_target_commit(target: &Target, commit: &crate::Commit, hardware: &str) -> Result<(), TrustError> {
    if !commit.hardware.iter().any(|h| h == hardware) {
        return Err(TrustError::WrongHardware {
            commit: target.commit,
            built: if commit.hardware.is_empty() { "no hardware revision".into() } else { commit.hardware.join(", ") },
            hardware: hardware.to_string(),
        });
    }
    if commit.version != target.version {
        return Err(TrustError::VersionMismatch {
            commit: target.commit,
            expected: target.version.to_string(),
            found: commit.version.to_string(),
        });
    }
    Ok(())
}
