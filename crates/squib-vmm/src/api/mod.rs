//! squib's Firecracker-compatible front ends: the REST API on a Unix socket and `--config-file`.
//!
//! Layers, outermost first: [`server`] (socket, epoll, connections) → [`http`] (framing) →
//! [`router`] (method and path to a typed request, bodies through [`models`]) → [`controller`]
//! (pre-boot [`store`], or the running VMM through the [`vmm_control::VmmControl`] trait).
//! [`metrics`] and [`logger`] back `PUT /metrics` and `PUT /logger`.

pub mod controller;
pub mod http;
pub mod kvm_vmm;
pub mod logger;
pub mod metrics;
pub mod models;
pub mod process;
pub mod router;
pub mod server;
pub mod sink;
pub mod store;
pub mod vmm_control;
