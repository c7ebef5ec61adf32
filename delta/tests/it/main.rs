//! ferry-delta's integration tests.

mod chunking;
mod fuzz_seeds;
mod plan;
