//! The virtio-net device: its configuration, the features it offers (those Firecracker offers),
//! its configuration space (virtio 1.2 §5.1.4: the MAC) and activation, which matches the TAP's
//! offloads to the driver's choice and hands the queues to a worker thread.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use squib_host::tap::TapOffloads;
use tracing::debug;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
};

use super::backend::NetBackend;
use super::handle::{Limiters, NetHandle, Shared};
use super::handler::{Negotiated, NetHandler};
use super::header::{MAX_OFFLOAD_FRAME, MAX_PLAIN_FRAME, VNET_HDR_LEN};
use super::metrics::Counter;
use crate::device::{ActivateError, Activation, COMMON_FEATURES, RuntimeControl, VirtioDevice};
use crate::persist::{DeviceState, StateError};
use crate::rate_limiter::{RateLimiter, RateLimiterError, RateLimiterSpec};
use crate::runtime::{DeviceRuntime, QueueParts};

/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
/// The smallest rx buffer a driver that negotiated neither MRG_RXBUF nor a guest offload may
/// post (virtio 1.2 §5.1.6.3.1): header + 1514-byte frame.
pub const RX_BUFFER_MIN: usize = VNET_HDR_LEN + MAX_PLAIN_FRAME;
/// The same with GUEST_TSO4/TSO6/UFO negotiated and no MRG_RXBUF.
pub const RX_BUFFER_MIN_OFFLOADS: usize = VNET_HDR_LEN + MAX_OFFLOAD_FRAME;

const fn bit(n: u32) -> u64 {
    1 << n
}
const F_CSUM: u64 = bit(VIRTIO_NET_F_CSUM);
const F_GUEST_CSUM: u64 = bit(VIRTIO_NET_F_GUEST_CSUM);
const F_GUEST_TSO4: u64 = bit(VIRTIO_NET_F_GUEST_TSO4);
const F_GUEST_TSO6: u64 = bit(VIRTIO_NET_F_GUEST_TSO6);
const F_GUEST_UFO: u64 = bit(VIRTIO_NET_F_GUEST_UFO);
const F_HOST_TSO4: u64 = bit(VIRTIO_NET_F_HOST_TSO4);
const F_HOST_TSO6: u64 = bit(VIRTIO_NET_F_HOST_TSO6);
const F_HOST_UFO: u64 = bit(VIRTIO_NET_F_HOST_UFO);
const F_MRG_RXBUF: u64 = bit(VIRTIO_NET_F_MRG_RXBUF);
const F_MAC: u64 = bit(VIRTIO_NET_F_MAC);

/// A MAC address, `aa:bb:cc:dd:ee:ff` in text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// The six bytes.
    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(bytes: [u8; 6]) -> Self {
        Self(bytes)
    }
}

impl FromStr for MacAddr {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, NetError> {
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts
                .next()
                .ok_or_else(|| NetError::InvalidMac(s.to_owned()))?;
            if part.len() != 2 {
                return Err(NetError::InvalidMac(s.to_owned()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| NetError::InvalidMac(s.to_owned()))?;
        }
        if parts.next().is_some() {
            return Err(NetError::InvalidMac(s.to_owned()));
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What a snapshot keeps of a net device: its MAC, checked on restore. Frames in flight are
/// not kept (a network may drop them); the TAP is opened anew, with the negotiated offloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// The MAC the guest reads, if one was configured.
    pub guest_mac: Option<MacAddr>,
}

/// How the VMM configures one interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// The MAC the guest reads (VIRTIO_NET_F_MAC); `None` lets the guest pick one.
    pub guest_mac: Option<MacAddr>,
    /// Receive throttling.
    pub rx_rate_limiter: Option<RateLimiterSpec>,
    /// Transmit throttling.
    pub tx_rate_limiter: Option<RateLimiterSpec>,
}

/// Why a net device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Not six colon-separated hex bytes.
    #[error("invalid MAC address {0:?} (expected aa:bb:cc:dd:ee:ff)")]
    InvalidMac(String),
    /// A token bucket that cannot be represented.
    #[error("rate limiter: {0}")]
    RateLimiter(#[from] RateLimiterError),
    /// The host refused an eventfd or a timerfd.
    #[error("cannot create the device's event or timer fd: {0}")]
    Host(#[source] io::Error),
}

/// A virtio-net device.
#[derive(Debug)]
pub struct NetDevice {
    shared: Arc<Shared>,
    guest_mac: Option<MacAddr>,
    offered_features: u64,
    runtime: DeviceRuntime<NetHandler>,
}

impl NetDevice {
    /// A net device on `backend`. Nothing runs until the driver activates it.
    pub fn new(backend: Arc<dyn NetBackend>, config: NetConfig) -> Result<Self, NetError> {
        let limiter = |spec: Option<RateLimiterSpec>| -> Result<Option<RateLimiter>, NetError> {
            spec.map(|spec| {
                spec.validate()?;
                RateLimiter::from_spec(spec).map_err(NetError::Host)
            })
            .transpose()
        };
        let limiters = Limiters {
            rx: limiter(config.rx_rate_limiter)?,
            tx: limiter(config.tx_rate_limiter)?,
        };
        let mut offered_features = COMMON_FEATURES
            | F_CSUM
            | F_GUEST_CSUM
            | F_GUEST_TSO4
            | F_GUEST_TSO6
            | F_GUEST_UFO
            | F_HOST_TSO4
            | F_HOST_TSO6
            | F_HOST_UFO
            | F_MRG_RXBUF;
        if config.guest_mac.is_some() {
            offered_features |= F_MAC;
        }
        let shared = Shared::new(backend, limiters).map_err(NetError::Host)?;
        Ok(Self {
            shared: Arc::new(shared),
            guest_mac: config.guest_mac,
            offered_features,
            runtime: DeviceRuntime::new("squib-net"),
        })
    }

    /// A handle for the API thread: rate-limiter updates and metrics.
    pub fn handle(&self) -> NetHandle {
        NetHandle::new(Arc::clone(&self.shared))
    }

    /// Whether the driver activated the device (and did not reset it since).
    pub fn is_active(&self) -> bool {
        self.runtime.is_active()
    }

    /// The handler and queues for an activation: matches the TAP's offloads to the driver's
    /// choice.
    fn prepare(&self, activation: Activation) -> Result<(NetHandler, QueueParts), ActivateError> {
        let Activation {
            mem,
            queues,
            queue_events,
            interrupt,
            acked_features,
        } = activation;
        if queues.len() != 2 || queue_events.len() != 2 {
            return Err(ActivateError::QueueCount {
                expected: 2,
                got: queues.len().min(queue_events.len()),
            });
        }
        let acked = |f: u64| acked_features & f != 0;
        let offloads = TapOffloads {
            csum: acked(F_GUEST_CSUM),
            tso4: acked(F_GUEST_TSO4),
            tso6: acked(F_GUEST_TSO6),
            ufo: acked(F_GUEST_UFO),
        };
        let segmented = offloads.csum && (offloads.tso4 || offloads.tso6 || offloads.ufo);
        let negotiated = Negotiated {
            mergeable: acked(F_MRG_RXBUF),
            rx_frame_max: if segmented {
                RX_BUFFER_MIN_OFFLOADS
            } else {
                RX_BUFFER_MIN
            },
        };
        self.shared.backend.set_offloads(offloads)?;
        let handler = NetHandler::new(Arc::clone(&self.shared), negotiated);
        Ok((
            handler,
            QueueParts {
                mem,
                queues,
                queue_events,
                interrupt,
            },
        ))
    }
}

/// `struct virtio_net_config` up to `status` (the MAC; STATUS is not offered, so the link is
/// always up and the field reads 0).
const CONFIG_SPACE_LEN: usize = 8;

impl VirtioDevice for NetDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn offered_features(&self) -> u64 {
        self.offered_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let mut space = [0u8; CONFIG_SPACE_LEN];
        if let Some(mac) = self.guest_mac {
            space[..6].copy_from_slice(&mac.bytes());
        }
        let Some(start) = usize::try_from(offset).ok().filter(|&s| s < space.len()) else {
            return;
        };
        let len = data.len().min(space.len() - start);
        data[..len].copy_from_slice(&space[start..start + len]);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is writable only by legacy drivers, which a version-2 transport refuses.
        self.shared.metrics.count(Counter::CfgFails);
        debug!(
            offset,
            len = data.len(),
            "write to read-only virtio-net config space ignored"
        );
    }

    fn config_generation(&self) -> u32 {
        0
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if self.runtime.is_active() {
            return Err(ActivateError::AlreadyActive);
        }
        let activated = self
            .prepare(activation)
            .and_then(|(handler, parts)| self.runtime.activate(handler, parts));
        if activated.is_err() {
            self.shared.metrics.count(Counter::ActivateFails);
        }
        activated
    }

    fn reset(&mut self) {
        // Dropping the handler parks the rate limiters for the next activation.
        drop(self.runtime.reset());
    }

    fn runtime(&self) -> &dyn RuntimeControl {
        &self.runtime
    }

    fn runtime_mut(&mut self) -> &mut dyn RuntimeControl {
        &mut self.runtime
    }

    fn save_state(&self) -> Result<DeviceState, StateError> {
        self.runtime.ensure_quiescent()?;
        Ok(DeviceState::Net(NetState {
            guest_mac: self.guest_mac,
        }))
    }

    fn restore_state(
        &mut self,
        state: &DeviceState,
        activation: Option<Activation>,
    ) -> Result<(), StateError> {
        match state {
            DeviceState::Net(saved) if saved.guest_mac == self.guest_mac => {}
            _ => return Err(StateError::StateMismatch("virtio-net (same guest_mac)")),
        }
        drop(self.runtime.reset());
        if let Some(activation) = activation {
            // Re-applies the negotiated offloads to the (possibly new) TAP device.
            let (handler, parts) = self.prepare(activation)?;
            self.runtime.restore_paused(handler, parts);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_and_rejects_garbage() {
        let mac: MacAddr = "06:00:AC:10:00:02".parse().unwrap();
        assert_eq!(mac.bytes(), [6, 0, 0xac, 0x10, 0, 2]);
        assert_eq!(mac.to_string(), "06:00:ac:10:00:02");
        for bad in [
            "",
            "06:00:ac:10:00",
            "06:00:ac:10:00:02:03",
            "0g:00:00:00:00:00",
            "6:0:0:0:0:0",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
