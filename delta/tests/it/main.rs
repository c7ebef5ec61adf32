//! ferry-delta's integration tests.

mod chunking;
