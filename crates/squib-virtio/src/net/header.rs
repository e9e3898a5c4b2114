//! `struct virtio_net_hdr_v1` (virtio 1.2 §5.1.6): the 12 bytes before every frame.
//!
//! The TAP reads and writes the first ten bytes itself (`IFF_VNET_HDR` with a 12-byte header
//! size); the device only writes `num_buffers`, which the TAP skips.

/// Bytes of the header a VERSION_1 driver uses, `num_buffers` included.
pub const VNET_HDR_LEN: usize = squib_host::tap::VNET_HDR_LEN;

/// Offset of `le16 num_buffers` in the header.
pub(crate) const NUM_BUFFERS_OFFSET: usize = 10;

/// Largest Ethernet frame without offloads: 1500-byte MTU + 14-byte header.
pub(crate) const MAX_PLAIN_FRAME: usize = 1514;

/// Largest frame with segmentation offloads: 64 KiB of IP packet + Ethernet header (what
/// Firecracker and QEMU accept).
pub(crate) const MAX_OFFLOAD_FRAME: usize = 65_550;
