//! Shared set-up for squib's criterion benchmarks (the bench targets live beside this crate).
#![forbid(unsafe_code)]
