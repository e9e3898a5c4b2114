//! squib's VMM: builds a KVM microVM from a `VmConfig` and runs it.
#![forbid(unsafe_code)]

pub mod vm_config;
