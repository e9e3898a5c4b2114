//! KVM objects: the VM (irqchip, PIT, memory slots) and its vCPUs.

pub mod state;
pub mod vcpu;
pub mod vm;
