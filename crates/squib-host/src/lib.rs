//! squib's host boundary (invariant I-CRATE-2).
//!
//! This is the one crate of the workspace allowed to contain `unsafe`. Each module wraps one
//! FFI boundary and exposes a safe API; every `unsafe` block carries a `// SAFETY:` comment that
//! argues why it is sound. `cargo xtask lint-unsafe` enforces this in CI.

pub mod alloc_counter;
pub mod bad_syscall;
pub mod block_io;
pub mod clock;
pub mod guest_io;
pub mod guest_memory;
pub mod jail;
pub mod kvm_memory;
pub mod kvm_xsave;
pub mod malloc_arenas;
pub mod random;
pub mod signals;
pub mod sparse;
pub mod tap;
pub mod terminal;
pub mod udp_segment;
pub mod uffd;
pub mod unix_socket;
pub mod uring;
pub mod uring_baseline;
