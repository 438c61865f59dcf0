//! Feature negotiation (virtio spec 2.2), shared by every device and the transport.
//!
//! A device offers a 64-bit feature word and keeps what the driver accepted in a [`Features`];
//! the transport shows the offer and collects the driver's answer 32 bits at a time through the
//! page-selected DeviceFeatures/DriverFeatures registers ([`page`], [`set_page`]). Whatever the
//! driver writes, bits the device did not offer never become acked.

use super::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

/// Bit `n` of a feature word (`n` is one of the `*_F_*` constants, all below 64).
pub const fn bit(n: u32) -> u64 {
    1 << n
}

/// The features of one device: what it offers and what the driver accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    avail: u64,
    acked: u64,
}

impl Features {
    /// Offers VERSION_1 and RING_EVENT_IDX (every device here supports both) and `device_bits`.
    pub fn new(device_bits: &[u32]) -> Self {
        let avail = device_bits.iter().fold(
            bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX),
            |f, &n| f | bit(n),
        );
        Features { avail, acked: 0 }
    }

    /// Also offers feature `n` when `offered` holds.
    pub fn offer_if(mut self, n: u32, offered: bool) -> Self {
        if offered {
            self.avail |= bit(n);
        }
        self
    }

    /// The offered features.
    pub fn avail(&self) -> u64 {
        self.avail
    }

    /// The accepted features (0 until the driver sets FEATURES_OK, and after a reset).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Whether the driver accepted feature `n`.
    pub fn is_acked(&self, n: u32) -> bool {
        self.acked & bit(n) != 0
    }

    /// Records what the driver accepted, dropping bits that were not offered.
    pub fn ack(&mut self, features: u64) {
        self.acked = features & self.avail;
    }

    /// Forgets the driver's choice (device reset); the offer stays.
    pub fn reset(&mut self) {
        self.acked = 0;
    }
}

/// Which half of a feature word page `sel` selects: its shift, or `None` for pages past the
/// second (no features are defined there).
fn page_shift(sel: u32) -> Option<u32> {
    match sel {
        0 => Some(0),
        1 => Some(32),
        _ => None,
    }
}

/// Page `sel` of `features` as the DeviceFeatures register shows it; pages past the second
/// read as 0.
pub fn page(features: u64, sel: u32) -> u32 {
    page_shift(sel).map_or(0, |shift| (features >> shift) as u32)
}

/// `acked` with page `sel` replaced by `value` (a DriverFeatures write), dropping the bits of
/// `value` that are not in `offered`. A write to a page past the second changes nothing.
pub fn set_page(acked: u64, sel: u32, value: u32, offered: u64) -> u64 {
    let Some(shift) = page_shift(sel) else {
        return acked;
    };
    let mask = u64::from(u32::MAX) << shift;
    (acked & !mask) | ((u64::from(value) << shift) & offered)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: u64 = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX);

    #[test]
    fn the_offer_always_has_version_1_and_event_idx() {
        assert_eq!(Features::new(&[]).avail(), OFFER);
        let f = Features::new(&[0, 5]).offer_if(9, true).offer_if(7, false);
        assert_eq!(f.avail(), OFFER | 1 | bit(5) | bit(9));
        assert_eq!(f.acked(), 0);
    }

    #[test]
    fn only_offered_bits_are_acked_and_reset_forgets_them() {
        let mut f = Features::new(&[5]);
        f.ack(u64::MAX);
        assert_eq!(f.acked(), OFFER | bit(5));
        assert!(f.is_acked(5) && f.is_acked(VIRTIO_F_VERSION_1));
        assert!(!f.is_acked(6) && !f.is_acked(63));
        f.ack(bit(6) | bit(63));
        assert_eq!(f.acked(), 0);
        f.ack(bit(5));
        f.reset();
        assert_eq!((f.acked(), f.avail()), (0, OFFER | bit(5)));
    }

    #[test]
    fn pages_show_the_halves_and_nothing_beyond() {
        let w = 0x8765_4321_1234_5678;
        assert_eq!(page(w, 0), 0x1234_5678);
        assert_eq!(page(w, 1), 0x8765_4321);
        for sel in [2, 3, 0x8000_0000, u32::MAX] {
            assert_eq!(page(w, sel), 0, "page {sel}");
        }
    }

    #[test]
    fn driver_writes_replace_one_page_and_drop_unoffered_bits() {
        let offered = OFFER | bit(0) | bit(5);
        // A hostile driver sets every bit: only offered ones stick, page by page.
        let acked = set_page(0, 0, u32::MAX, offered);
        assert_eq!(acked, bit(0) | bit(5) | bit(VIRTIO_RING_F_EVENT_IDX));
        let acked = set_page(acked, 1, u32::MAX, offered);
        assert_eq!(acked, offered);
        // Rewriting a page replaces it and leaves the other alone.
        let acked = set_page(acked, 0, 1, offered);
        assert_eq!(acked, bit(0) | bit(VIRTIO_F_VERSION_1));
        let acked = set_page(acked, 1, 0, offered);
        assert_eq!(acked, bit(0));
        // Pages past the second are ignored, whatever their number.
        for sel in [2, 0x8000_0000, u32::MAX] {
            assert_eq!(
                set_page(acked, sel, u32::MAX, u64::MAX),
                acked,
                "page {sel}"
            );
        }
        // Acked bits the offer lost are kept outside the written page (the device's own
        // `ack` filters again at FEATURES_OK).
        assert_eq!(set_page(bit(40), 0, 1, 1), bit(40) | 1);
    }
}
