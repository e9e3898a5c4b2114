//! The virtio-net device as a hostile guest drives it, on an in-memory TAP (`FakeTap`): frames
//! move one system call's worth each. The harness and its oracles are in `squib_fuzz::net`.
#![no_main]
#![forbid(unsafe_code)]

use std::sync::Arc;

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use squib_virtio::testing::FakeTap;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = squib_fuzz::net::run(&mut u, Arc::new(FakeTap::new()));
});
