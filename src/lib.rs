//! Host package for cross-crate tests (`tests/`) and benchmarks (`benches/`).
