//! squib's Firecracker-compatible front ends: the REST API on a Unix socket and `--config-file`.
//!
//! Layers, outermost first: [`server`] (socket, epoll, connections) → [`http`] (framing) →
//! [`router`] (method and path to a [`action::VmmAction`], bodies through [`models`]) →
//! [`controller`] (pre-boot [`resources`], or the running VMM through the
//! [`vmm_control::VmmControl`] trait). The command line and `--config-file` are turned into the
//! same actions and applied by the same controller; [`process`] is the one process runner.
//! [`metrics`] and [`logger`] back `PUT /metrics` and `PUT /logger`.

pub mod action;
pub mod controller;
pub mod http;
pub mod kvm_vmm;
pub mod logger;
pub mod metrics;
pub mod models;
pub mod process;
pub mod resources;
pub mod router;
pub mod server;
pub mod sink;
pub mod vmm_control;
