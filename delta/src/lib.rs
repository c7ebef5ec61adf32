//! ferry-delta: cutting files into content-defined chunks, and planning what an update costs.
//!
//! What it is for: FastCDC (v2020) chunking with a repository's frozen parameters
//! ([`chunker`]), and comparing two commits: which paths changed and which chunks the newer
//! one needs that the older lacks ([`plan`]), patches that send missing chunks compressed against a file the device
//! already holds ([`patch`]), and the pack stream that carries batches of
//! chunks and objects over any transport ([`pack`]), the offline bundle ([`bundle`]), and the static copy's packs and
//! content index, read with few single-range GETs ([`content`]). What it is not for: HTTP, async
//! runtimes, bootloaders, or reading and writing file system trees.

pub mod bundle;
pub mod chunker;
pub mod content;
pub mod pack;
pub mod patch;
pub mod plan;

pub use chunker::Chunker;
pub use plan::{diff_commits, Change, ChangeKind, PatchCost, TransferCost};
#[cfg(feature = "repository")]
pub use plan::{patch_cost, transfer_cost};
