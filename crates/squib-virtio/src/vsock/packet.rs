//! The virtio-vsock packet header (virtio 1.2 §5.10.6) and the descriptor-chain shapes that carry
//! packets: its fields, decoded from and encoded to the 44 little-endian bytes on the ring, and
//! a fixed-capacity list of a chain's buffers (no allocation per packet).

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::GuestMemory;
use crate::queue::Chain;

/// Bytes of `struct virtio_vsock_hdr`.
pub(crate) const HDR_LEN: usize = 44;
/// The host's context id.
pub(crate) const HOST_CID: u64 = 2;
/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type squib supports.
pub(crate) const TYPE_STREAM: u16 = 1;
/// Most buffers of one chain the device handles; longer chains are dropped and counted.
pub(crate) const MAX_SEGMENTS: usize = 32;

/// `VIRTIO_VSOCK_OP_*`.
pub(crate) mod op {
    pub(crate) const REQUEST: u16 = 1;
    pub(crate) const RESPONSE: u16 = 2;
    pub(crate) const RST: u16 = 3;
    pub(crate) const SHUTDOWN: u16 = 4;
    pub(crate) const RW: u16 = 5;
    pub(crate) const CREDIT_UPDATE: u16 = 6;
    pub(crate) const CREDIT_REQUEST: u16 = 7;
}

/// `VIRTIO_VSOCK_SHUTDOWN_F_*` (from the sender's point of view).
pub(crate) mod shutdown {
    /// The sender will not receive any more data.
    pub(crate) const RECEIVE: u32 = 1;
    /// The sender will not send any more data.
    pub(crate) const SEND: u32 = 2;
}

/// A decoded header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) src_cid: u64,
    pub(crate) dst_cid: u64,
    pub(crate) src_port: u32,
    pub(crate) dst_port: u32,
    pub(crate) len: u32,
    pub(crate) type_: u16,
    pub(crate) op: u16,
    pub(crate) flags: u32,
    pub(crate) buf_alloc: u32,
    pub(crate) fwd_cnt: u32,
}

impl Header {
    pub(crate) fn decode(b: &[u8; HDR_LEN]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or_default());
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub(crate) fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Why a chain cannot carry a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShapeError {
    /// A buffer of the wrong direction (device-writable on tx, device-readable on rx).
    WrongDirection,
    /// More than [`MAX_SEGMENTS`] buffers.
    TooLong,
    /// A buffer outside guest memory.
    OutsideMemory,
    /// Fewer bytes than a header.
    TooShort,
    /// The chain breaks a descriptor rule (a loop, an index out of range, a bad table).
    Broken,
}

/// The buffers of one chain, all of one direction, within guest memory.
#[derive(Debug)]
pub(crate) struct Segments {
    bufs: [(GuestAddress, u32); MAX_SEGMENTS],
    count: usize,
    total: u64,
}

impl Segments {
    /// Collects `chain`'s buffers, which must all be device-writable (`writable`) or all
    /// device-readable, lie in guest memory and hold at least a header.
    pub(crate) fn collect(
        mut chain: Chain<'_>,
        mem: &GuestMemory,
        writable: bool,
    ) -> Result<Self, ShapeError> {
        let mut segments = Self {
            bufs: [(GuestAddress(0), 0); MAX_SEGMENTS],
            count: 0,
            total: 0,
        };
        for desc in chain.by_ref() {
            if desc.is_write_only() != writable {
                return Err(ShapeError::WrongDirection);
            }
            if desc.len() == 0 {
                continue;
            }
            if segments.count == MAX_SEGMENTS {
                return Err(ShapeError::TooLong);
            }
            if !mem.check_range(desc.addr(), desc.len() as usize) {
                return Err(ShapeError::OutsideMemory);
            }
            segments.bufs[segments.count] = (desc.addr(), desc.len());
            segments.count += 1;
            segments.total += u64::from(desc.len());
        }
        if chain.error().is_some() {
            return Err(ShapeError::Broken);
        }
        if segments.total < HDR_LEN as u64 {
            return Err(ShapeError::TooShort);
        }
        Ok(segments)
    }

    /// Bytes in all buffers.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Reads the header from the first [`HDR_LEN`] bytes.
    pub(crate) fn read_header(&self, mem: &GuestMemory) -> Option<Header> {
        let mut raw = [0u8; HDR_LEN];
        let mut done = 0;
        for (addr, len) in self.bufs() {
            if done == HDR_LEN {
                break;
            }
            let n = (len as usize).min(HDR_LEN - done);
            mem.read_slice(&mut raw[done..done + n], addr).ok()?;
            done += n;
        }
        (done == HDR_LEN).then(|| Header::decode(&raw))
    }

    /// Writes `header` into the first [`HDR_LEN`] bytes.
    pub(crate) fn write_header(&self, mem: &GuestMemory, header: &Header) -> Option<()> {
        let raw = header.encode();
        let mut done = 0;
        for (addr, len) in self.bufs() {
            if done == HDR_LEN {
                break;
            }
            let n = (len as usize).min(HDR_LEN - done);
            mem.write_slice(&raw[done..done + n], addr).ok()?;
            done += n;
        }
        (done == HDR_LEN).then_some(())
    }

    /// Calls `f` with the guest memory of bytes `offset..offset + limit`, buffer by buffer, in
    /// order, until `f` returns fewer bytes than it was given (or an error). Returns the bytes
    /// `f` reported in total.
    pub(crate) fn for_each_slice<E>(
        &self,
        mem: &GuestMemory,
        offset: u64,
        limit: u64,
        mut f: impl FnMut(&crate::GuestSlice<'_>) -> Result<usize, E>,
    ) -> Result<u64, E> {
        let mut skip = offset;
        let mut left = limit;
        let mut done = 0u64;
        for (addr, len) in self.bufs() {
            if left == 0 {
                break;
            }
            let len = u64::from(len);
            if skip >= len {
                skip -= len;
                continue;
            }
            let n = (len - skip).min(left);
            // Inside guest memory: checked when the segments were collected.
            let Some(start) = addr.0.checked_add(skip) else {
                break;
            };
            let Ok(slice) = mem.get_slice(GuestAddress(start), n as usize) else {
                break;
            };
            skip = 0;
            let moved = f(&slice)? as u64;
            done += moved;
            left -= moved.min(left);
            if moved < n {
                break;
            }
        }
        Ok(done)
    }

    /// The guest memory of bytes `offset..offset + limit`, buffer by buffer, in order (what
    /// one vectored call moves; [`Self::for_each_slice`] for one call per buffer).
    pub(crate) fn slices<'m>(
        &self,
        mem: &'m GuestMemory,
        offset: u64,
        limit: u64,
    ) -> impl Iterator<Item = crate::GuestSlice<'m>> {
        let mut skip = offset;
        let mut left = limit;
        self.bufs().filter_map(move |(addr, len)| {
            let len = u64::from(len);
            if left == 0 || skip >= len {
                skip -= skip.min(len);
                return None;
            }
            let n = (len - skip).min(left);
            // Inside guest memory (checked when the segments were collected); should that ever
            // fail, the walk stops there rather than skip a buffer.
            let slice = addr
                .checked_add(skip)
                .and_then(|start| mem.get_slice(start, n as usize).ok());
            skip = 0;
            left = if slice.is_some() { left - n } else { 0 };
            slice
        })
    }

    fn bufs(&self) -> impl Iterator<Item = (GuestAddress, u32)> + '_ {
        self.bufs[..self.count].iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_through_its_wire_form() {
        let header = Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1024,
            dst_port: 52,
            len: 7,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: shutdown::SEND,
            buf_alloc: 1 << 18,
            fwd_cnt: 99,
        };
        assert_eq!(Header::decode(&header.encode()), header);
        assert_eq!(header.encode()[30], op::RW as u8);
    }
}
