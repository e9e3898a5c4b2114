//! `KVM_SET_XSAVE`, which kvm-ioctls marks `unsafe` because the kernel may read more than
//! `size_of::<kvm_xsave>()` bytes when the process enabled dynamic XSAVE features.

use kvm_bindings::kvm_xsave;
use kvm_ioctls::VcpuFd;

/// Loads a vCPU's XSAVE area (FPU, SSE, AVX, … state) saved by `KVM_GET_XSAVE`.
///
/// squib never requests guest permission for dynamic XSAVE features
/// (`ARCH_REQ_XCOMP_GUEST_PERM`, AMX), so KVM's uABI XSAVE size is the legacy 4096 bytes of
/// `kvm_xsave` and the kernel reads exactly the struct passed.
pub fn set_xsave(vcpu: &VcpuFd, xsave: &kvm_xsave) -> Result<(), kvm_ioctls::Error> {
    // SAFETY: `xsave` is a whole, initialised `kvm_xsave` (4096 bytes) borrowed for the call;
    // without dynamic-feature permission (squib never asks for it) the kernel copies exactly
    // `sizeof(struct kvm_xsave)` from it and keeps no reference after the ioctl returns.
    unsafe { vcpu.set_xsave(xsave) }
}
