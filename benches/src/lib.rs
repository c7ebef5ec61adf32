//! ferry-benches: criterion benchmarks (see `benches/`). The library is empty on purpose:
//! the benchmarks are the crate.
