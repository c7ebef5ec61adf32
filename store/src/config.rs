//! The repository's configuration file, `ferry-repo.json`: format version, feature flags,
//! chunking parameters and compression level. It is read before the database is opened, so
//! that a build that cannot read a repository refuses it before touching anything.

use serde::{Deserialize, Serialize};

/// The repository layout and object format this build reads and writes.
pub const REPO_FORMAT: u32 = 1;

/// Feature flags this build understands, per class (none yet: format 1 is the first).
pub const KNOWN_FEATURES: &[&str] = &[];

/// Feature flags in the ext4 style: an unknown *compatible* feature may be ignored, an
/// unknown *read-only-compatible* one allows reading but not writing, an unknown
/// *incompatible* one forbids opening the repository at all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Features {
    pub compatible: Vec<String>,
    pub read_only_compatible: Vec<String>,
    pub incompatible: Vec<String>,
}

/// FastCDC (v2020) parameters, in bytes. Frozen when the repository is created: changing
/// them would change every cut point, so chunks of new commits would stop matching old ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl Default for ChunkParams {
    fn default() -> Self {
        ChunkParams { min_size: 16 * 1024, avg_size: 64 * 1024, max_size: 256 * 1024 }
    }
}

impl ChunkParams {
    /// Checks the ranges FastCDC v2020 accepts and `min <= avg <= max`.
    pub fn validate(&self) -> Result<(), String> {
        let ChunkParams { min_size, avg_size, max_size } = *self;
        if !(64..=1024 * 1024).contains(&min_size) {
            return Err(format!("minimum chunk size {min_size} is outside 64..=1048576"));
        }
        if !(256..=4 * 1024 * 1024).contains(&avg_size) {
            return Err(format!("average chunk size {avg_size} is outside 256..=4194304"));
        }
        if !(1024..=16 * 1024 * 1024).contains(&max_size) {
            return Err(format!("maximum chunk size {max_size} is outside 1024..=16777216"));
        }
        if !(min_size <= avg_size && avg_size <= max_size) {
            return Err(format!("chunk sizes must satisfy min <= avg <= max, got {min_size}/{avg_size}/{max_size}"));
        }
        if min_size % 2 != 0 || avg_size % 2 != 0 || max_size % 2 != 0 {
            return Err(format!("chunk sizes must be even, got {min_size}/{avg_size}/{max_size}"));
        }
        Ok(())
    }
}

impl std::fmt::Display for ChunkParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "min {} / avg {} / max {} bytes", self.min_size, self.avg_size, self.max_size)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunking {
    /// Always `"fastcdc-v2020"` in format 1.
    pub algorithm: ChunkAlgorithm,
    #[serde(flatten)]
    pub params: ChunkParams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkAlgorithm {
    #[serde(rename = "fastcdc-v2020")]
    FastCdc2020,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compression {
    /// Always `"zstd"` in format 1.
    pub algorithm: CompressionAlgorithm,
    pub level: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompressionAlgorithm {
    #[serde(rename = "zstd")]
    Zstd,
}

/// Default zstd level for chunks: level 3 compresses at hundreds of MB/s per core; higher
/// levels buy a few percent of wire bytes for several times the CI time.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;

/// The whole `ferry-repo.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    pub format: u32,
    pub features: Features,
    pub chunking: Chunking,
    pub compression: Compression,
}

impl RepoConfig {
    pub fn new(params: ChunkParams, level: i32) -> RepoConfig {
        RepoConfig {
            format: REPO_FORMAT,
            features: Features::default(),
            chunking: Chunking { algorithm: ChunkAlgorithm::FastCdc2020, params },
            compression: Compression { algorithm: CompressionAlgorithm::Zstd, level },
        }
    }

    /// Checks values; feature compatibility is checked by the repository on open.
    pub fn validate(&self) -> Result<(), String> {
        self.chunking.params.validate()?;
        let range = zstd::compression_level_range();
        if !range.contains(&self.compression.level) {
            return Err(format!(
                "zstd compression level {} is outside {}..={}",
                self.compression.level,
                range.start(),
                range.end()
            ));
        }
        Ok(())
    }
}
