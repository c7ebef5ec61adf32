//! ed25519 signatures over commit ids, and the key file formats.
//!
//! A signature covers `context || id`, where the context names what is signed: a commit
//! (`SIGNATURE_CONTEXT`), a channel document, a key document or a device's configuration
//! document ([`Signed`]). The
//! domain-separation prefix keeps a commit signature from ever being valid as a channel
//! document's, and the other way round. Verification always goes through
//! `verify_strict`, never the lenient `Verifier` trait, and weak (small-order) public keys are
//! refused when a key is loaded.
//!
//! Key files are one line of text: `ferry-secret-key-v1 <64 hex digits of the seed>` and
//! `ferry-public-key-v1 <64 hex digits>`.

use std::fs;
use std::path::Path;

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

use crate::id::Id;

/// Prefix of every signed commit message.
pub const SIGNATURE_CONTEXT: &[u8] = b"ferry commit signature v1\0";

/// What a signature is over, each with its own domain-separation prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signed {
    Commit,
    /// A channel document (`crate::channel::ChannelDoc`).
    Channel,
    /// A key document (`crate::channel::KeyDoc`).
    Keys,
    /// A device's configuration document (`crate::device_config::ConfigDoc`).
    Config,
}

impl Signed {
    fn context(self) -> &'static [u8] {
        match self {
            Signed::Commit => SIGNATURE_CONTEXT,
            Signed::Channel => b"ferry channel signature v1\0",
            Signed::Keys => b"ferry keys signature v1\0",
            Signed::Config => b"ferry config signature v1\0",
        }
    }
}
const SECRET_PREFIX: &str = "ferry-secret-key-v1 ";
const PUBLIC_PREFIX: &str = "ferry-public-key-v1 ";

/// Errors from keys and signatures.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading key file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("key file {path} is not a {expected} (expected one line `{prefix}<64 hex digits>`)")]
    Malformed { path: String, expected: &'static str, prefix: &'static str },
    #[error("public key {key} is weak (small order) and is refused")]
    Weak { key: String },
    #[error("public key {key} is not a valid ed25519 point")]
    Invalid { key: String },
    #[error("writing key file {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("key file {path} already exists; refusing to overwrite it")]
    Exists { path: String },
    #[error("no random bytes from the operating system: {0}")]
    Random(String),
}

/// A signing key (kept secret, on the CI machine or offline).
pub struct SecretKey(SigningKey);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(public {})", self.public().to_hex())
    }
}

/// A verifying key, checked not to be weak.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SecretKey::from_seed(&seed))
    }

    /// A key from a 32-byte seed (used by test fixtures for reproducible keys).
    pub fn from_seed(seed: &[u8; 32]) -> SecretKey {
        SecretKey(SigningKey::from_bytes(seed))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs a commit id.
    pub fn sign_commit(&self, commit: &Id) -> [u8; 64] {
        self.sign(Signed::Commit, commit)
    }

    /// Signs the id of something of kind `what`.
    pub fn sign(&self, what: Signed, id: &Id) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.0.sign(&message(what, id)).to_bytes()
    }

    /// Parses the text of a secret key file.
    pub fn parse(text: &str, path: &str) -> Result<SecretKey, KeyError> {
        let seed = parse_line(text, SECRET_PREFIX).ok_or_else(|| KeyError::Malformed {
            path: path.to_string(),
            expected: "ferry secret key",
            prefix: SECRET_PREFIX,
        })?;
        Ok(SecretKey::from_seed(&seed))
    }

    pub fn load(path: &Path) -> Result<SecretKey, KeyError> {
        let text =
            fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.display().to_string(), source })?;
        SecretKey::parse(&text, &path.display().to_string())
    }

    /// Writes `path` (mode 0600) and `path.pub`, refusing to overwrite either.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let pub_path = public_path(path);
        for p in [path, pub_path.as_path()] {
            if p.symlink_metadata().is_ok() {
                return Err(KeyError::Exists { path: p.display().to_string() });
            }
        }
        let secret = format!("{SECRET_PREFIX}{}\n", hex::encode(self.0.to_bytes()));
        let public = format!("{PUBLIC_PREFIX}{}\n", self.public().to_hex());
        write_new(path, secret.as_bytes(), 0o600)?;
        write_new(&pub_path, public.as_bytes(), 0o644)?;
        Ok(())
    }
}

/// `K` → `K.pub`.
pub fn public_path(path: &Path) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".pub");
    s.into()
}

/// Writes a new key file whole or not at all, never replacing one.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    ferry_durable::write_new(path, bytes, mode).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists { path: path.display().to_string() }
        } else {
            KeyError::Write { path: path.display().to_string(), source: e }
        }
    })
}

fn parse_line(text: &str, prefix: &str) -> Option<[u8; 32]> {
    let line = text.strip_suffix('\n').unwrap_or(text);
    let digits = line.strip_prefix(prefix)?;
    let mut out = [0u8; 32];
    if digits.len() != 64 {
        return None;
    }
    hex::decode_to_slice(digits, &mut out).ok()?;
    Some(out)
}

fn message(what: Signed, id: &Id) -> Vec<u8> {
    let context = what.context();
    let mut m = Vec::with_capacity(context.len() + 32);
    m.extend_from_slice(context);
    m.extend_from_slice(id.as_bytes());
    m
}

impl PublicKey {
    /// A public key from its 32 bytes; invalid and weak keys are refused.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, KeyError> {
        let key = hex::encode(bytes);
        let vk = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::Invalid { key: key.clone() })?;
        if vk.is_weak() {
            return Err(KeyError::Weak { key });
        }
        Ok(PublicKey(vk))
    }

    pub fn parse(text: &str, path: &str) -> Result<PublicKey, KeyError> {
        let bytes = parse_line(text, PUBLIC_PREFIX).ok_or_else(|| KeyError::Malformed {
            path: path.to_string(),
            expected: "ferry public key",
            prefix: PUBLIC_PREFIX,
        })?;
        PublicKey::from_bytes(&bytes)
    }

    pub fn load(path: &Path) -> Result<PublicKey, KeyError> {
        let text =
            fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.display().to_string(), source })?;
        PublicKey::parse(&text, &path.display().to_string())
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    /// True if `signature` is this key's strict ed25519 signature of `commit`.
    pub fn verify_commit(&self, commit: &Id, signature: &[u8; 64]) -> bool {
        self.verify(Signed::Commit, commit, signature)
    }

    /// True if `signature` is this key's strict ed25519 signature of `id` as a `what`.
    pub fn verify(&self, what: Signed, id: &Id, signature: &[u8; 64]) -> bool {
        let sig = Signature::from_bytes(signature);
        self.0.verify_strict(&message(what, id), &sig).is_ok()
    }
}
