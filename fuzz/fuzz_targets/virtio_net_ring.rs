//! The virtio-net device as a hostile guest drives it, on a datagram socket pair (`SocketTap`):
//! frames move through the TAP's io_uring, rx in batches that move frames between chains. The
//! harness and its oracles are `virtio_net`'s, in `squib_fuzz::net`.
#![no_main]
#![forbid(unsafe_code)]

use std::sync::Arc;

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use squib_virtio::testing::SocketTap;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = squib_fuzz::net::run(&mut u, Arc::new(SocketTap::new()));
});
