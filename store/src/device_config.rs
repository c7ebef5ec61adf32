//! Signed device configuration: the document a fleet's configuration keys sign for one
//! device, and the rule a device accepts it by.
//!
//! What it is for: the format of a **configuration document** (`FRYV`) — the device's
//! serial, the configuration version (it only grows), an expiry and the merged key-values —
//! and [`accept_config`], the pure decision a device makes before it writes `config.env`.
//! What it is not for: merging levels or choosing versions (the fleet server's
//! `fleet::config`), signing (the server with its online configuration key, or an operator),
//! or writing files (the device agent's `fleet` module).
//!
//! It travels in an envelope ([`crate::channel::Envelope`]) signed over its id with the
//! [`Signed::Config`] domain, by configuration keys of the key document the device trusts
//! meeting that document's configuration threshold. A document for another serial, of a
//! version below the one applied (a replay, e.g. from a server restored from an old backup)
//! or past its expiry (judged like a channel document's, by the later of the clock and the
//! clock floor) is refused, and so is everything when the key document in force expired.
//!
//! Encoding (little-endian; `bytes16`/`bytes32` are length-prefixed):
//!
//! ```text
//! configuration: "FRYV" u16 1  bytes16 serial  u64 version  i64 timestamp  i64 expires
//!                u16 count, count × (bytes16 key, bytes16 value); keys sorted, unique,
//!                environment variable names; values one line, no control characters
//! ```
#![deny(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

use std::collections::BTreeMap;

use crate::channel::{Envelope, Trust, TrustError};
use crate::id::Id;
use crate::object::{read_header, utf8, DecodeError, FORMAT_VERSION};
use crate::sign::Signed;
use crate::wire::{Reader, Writer};

pub const CONFIG_MAGIC: &[u8; 4] = b"FRYV";
/// The longest serial number (as the fleet server allows).
pub const MAX_SERIAL: usize = 128;
/// The longest configuration key: an environment variable name.
pub const MAX_CONFIG_KEY: usize = 128;
/// The longest configuration value.
pub const MAX_CONFIG_VALUE: usize = 4096;
/// The most keys one configuration holds.
pub const MAX_CONFIG_KEYS: usize = 256;

/// One device's configuration, as signed for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDoc {
    /// The device it is for.
    pub serial: String,
    /// The fleet's configuration version; it only grows, at least 1.
    pub version: u64,
    /// Unix seconds when it was signed.
    pub timestamp: i64,
    /// Unix seconds after which devices refuse it.
    pub expires: i64,
    pub values: BTreeMap<String, String>,
}

/// True if `k` is an environment variable name (`[A-Za-z_][A-Za-z0-9_]*`), so `config.env`
/// needs no quoting of keys.
pub fn is_config_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_CONFIG_KEY
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl ConfigDoc {
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.serial.is_empty() || self.serial.chars().any(char::is_control) {
            return Err(DecodeError::Empty { field: "configuration serial (non-empty, no control characters)" });
        }
        if self.serial.len() > MAX_SERIAL {
            return Err(DecodeError::TooLong {
                field: "configuration serial",
                len: self.serial.len(),
                max: MAX_SERIAL,
            });
        }
        if self.version == 0 {
            return Err(DecodeError::Empty { field: "configuration version (it starts at 1)" });
        }
        if self.expires <= self.timestamp {
            return Err(DecodeError::Empty {
                field: "configuration document lifetime (it must expire after it is signed)",
            });
        }
        if self.values.len() > MAX_CONFIG_KEYS {
            return Err(DecodeError::TooLong {
                field: "configuration keys",
                len: self.values.len(),
                max: MAX_CONFIG_KEYS,
            });
        }
        for (k, v) in &self.values {
            if !is_config_key(k) {
                return Err(DecodeError::BadName {
                    name: k.clone(),
                    why: "a configuration key is 1 to 128 letters, digits or `_`, not starting with a digit",
                });
            }
            if v.len() > MAX_CONFIG_VALUE {
                return Err(DecodeError::TooLong { field: "configuration value", len: v.len(), max: MAX_CONFIG_VALUE });
            }
            if v.chars().any(char::is_control) {
                return Err(DecodeError::BadName {
                    name: k.clone(),
                    why: "a configuration value is one line without control characters",
                });
            }
        }
        Ok(())
    }

    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        self.validate()?;
        let mut w = Writer::default();
        w.raw(CONFIG_MAGIC);
        w.u16(FORMAT_VERSION);
        w.bytes16(self.serial.as_bytes());
        w.u64(self.version);
        w.i64(self.timestamp);
        w.i64(self.expires);
        w.u16(self.values.len() as u16);
        for (k, v) in &self.values {
            w.bytes16(k.as_bytes());
            w.bytes16(v.as_bytes());
        }
        Ok(w.buf)
    }

    pub fn decode(bytes: &[u8]) -> Result<ConfigDoc, DecodeError> {
        let mut r = Reader::new(bytes);
        read_header(&mut r, CONFIG_MAGIC, "FRYV")?;
        let serial = utf8(r.bytes16(MAX_SERIAL, "configuration serial")?, "configuration serial")?;
        let version = r.u64("configuration version")?;
        let timestamp = r.i64("timestamp")?;
        let expires = r.i64("expires")?;
        let n = usize::from(r.u16("configuration key count")?);
        if n > MAX_CONFIG_KEYS {
            return Err(DecodeError::TooLong { field: "configuration keys", len: n, max: MAX_CONFIG_KEYS });
        }
        let mut values = BTreeMap::new();
        let mut last: Option<String> = None;
        for _ in 0..n {
            let k = utf8(r.bytes16(MAX_CONFIG_KEY, "configuration key")?, "configuration key")?;
            let v = utf8(r.bytes16(MAX_CONFIG_VALUE, "configuration value")?, "configuration value")?;
            if let Some(prev) = &last {
                if prev >= &k {
                    return Err(DecodeError::Unsorted { prev: prev.clone(), next: k });
                }
            }
            last = Some(k.clone());
            values.insert(k, v);
        }
        r.finish()?;
        let doc = ConfigDoc { serial, version, timestamp, expires, values };
        doc.validate()?;
        Ok(doc)
    }
}

/// Why a device refuses a configuration document. Every refusal writes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Keys(#[from] TrustError),
    #[error("configuration document {id} cannot be checked: key document {keys_serial} names no configuration keys")]
    NoConfigKeys { id: Id, keys_serial: u64 },
    #[error("configuration document {id} is signed by {signed} of the configuration keys (key document {keys_serial}), {threshold} needed; signed by: {signers}")]
    NotSigned { id: Id, keys_serial: u64, signed: usize, threshold: u16, signers: String },
    #[error("configuration document {id} does not decode: {source}")]
    Decode { id: Id, source: DecodeError },
    #[error("configuration version {version} is for device {found:?}, not this device {expected:?}")]
    WrongDevice { version: u64, expected: String, found: String },
    #[error("configuration version {found} is older than version {applied}, which this device applied (replayed configuration)")]
    Replayed { found: u64, applied: u64 },
    #[error("configuration version {version} expired at {expires}; the device's time is {now} (clock {clock}, floor {floor})")]
    Expired { version: u64, expires: i64, now: i64, clock: i64, floor: i64 },
}

/// Decides whether a device takes a configuration document: signed by configuration keys of
/// `trust` meeting their threshold (and `trust` not expired), for `serial`, of a version not
/// below `applied` (equal is the configuration in force: nothing to write), not expired at
/// the later of `clock` and `floor`.
pub fn accept_config(
    envelope: &Envelope,
    trust: &Trust,
    serial: &str,
    applied: u64,
    clock: i64,
    floor: i64,
) -> Result<ConfigDoc, ConfigError> {
    let id = envelope.id();
    trust.check_expiry(clock, floor)?;
    if trust.config_keys.is_empty() {
        return Err(ConfigError::NoConfigKeys { id, keys_serial: trust.serial });
    }
    let quorum = trust.quorum(Signed::Config);
    let signed = quorum.signed(&id, &envelope.signatures);
    if signed < usize::from(quorum.threshold) {
        let signers: Vec<String> = envelope.signatures.iter().map(|(k, _)| hex::encode(k)).collect();
        return Err(ConfigError::NotSigned {
            id,
            keys_serial: trust.serial,
            signed,
            threshold: quorum.threshold,
            signers: if signers.is_empty() { "nobody".into() } else { signers.join(", ") },
        });
    }
    // Signed by the fleet's configuration keys: only now are its bytes decoded.
    let doc = ConfigDoc::decode(&envelope.document).map_err(|source| ConfigError::Decode { id, source })?;
    if doc.serial != serial {
        return Err(ConfigError::WrongDevice { version: doc.version, expected: serial.to_string(), found: doc.serial });
    }
    if doc.version < applied {
        return Err(ConfigError::Replayed { found: doc.version, applied });
    }
    let floor = floor.max(trust.timestamp);
    let now = clock.max(floor);
    if doc.expires <= now {
        return Err(ConfigError::Expired { version: doc.version, expires: doc.expires, now, clock, floor });
    }
    Ok(doc)
}
