//! Saving and restoring the virtio-mmio transport for snapshots.
//!
//! What is saved: the driver-visible registers (feature selectors, acked features, queue
//! select, driver status), InterruptStatus and ConfigGeneration, whether the device was
//! activated, and every queue (size, ready, ring addresses, event-idx, next_avail/next_used).
//! For an active device the queues come from the device itself, after it finished its
//! in-flight work, because only it advances the ring positions.
//!
//! Restoring happens on a transport freshly created for a device built from the same
//! configuration, before any vCPU runs. An active device is activated again with the restored
//! queues (not reset ones), and every queue is kicked once so that requests the guest made
//! available just before the snapshot are not left waiting for a notification that the old
//! VMM consumed.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

use super::{lock as lock_device, MmioTransport};
use crate::virtio::status::FEATURES_OK;

/// One virtqueue as saved in a snapshot (virtio-queue's `QueueState`, which has no serde).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// The maximum size the device offers.
    pub max_size: u16,
    /// The size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Guest-physical address of the descriptor table.
    pub desc_table: u64,
    /// Guest-physical address of the available (driver) ring.
    pub avail_ring: u64,
    /// Guest-physical address of the used (device) ring.
    pub used_ring: u64,
    /// Next available-ring entry the device will read.
    pub next_avail: u16,
    /// Next used-ring entry the device will write.
    pub next_used: u16,
    /// VIRTIO_RING_F_EVENT_IDX is in use.
    pub event_idx: bool,
}

impl From<&QueueState> for QueueSnapshot {
    fn from(q: &QueueState) -> Self {
        QueueSnapshot {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx: q.event_idx_enabled,
        }
    }
}

impl QueueSnapshot {
    fn to_queue(&self) -> Result<Queue, virtio_queue::Error> {
        Queue::try_from(QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
    }
}

/// The transport's saved state. New fields must carry `#[serde(default)]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// DeviceID, checked on restore.
    pub device_type: u32,
    /// DeviceFeaturesSel.
    pub features_sel: u32,
    /// DriverFeaturesSel.
    pub acked_features_sel: u32,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// The driver status register.
    pub status: u32,
    /// Whether the device was running (activated at DRIVER_OK, not reset since).
    pub activated: bool,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Every queue, in queue order.
    pub queues: Vec<QueueSnapshot>,
}

/// Errors of saving or restoring a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportPersistError {
    #[error("virtio device type {0} cannot save its queues (snapshots are not supported for it)")]
    Unsupported(u32),
    #[error("the device has {got} queues, the snapshot {saved}")]
    QueueCount { saved: usize, got: usize },
    #[error("the snapshot holds virtio device type {saved}, the device is type {got}")]
    DeviceType { saved: u32, got: u32 },
    #[error("queue {index}: the snapshot's maximum size {saved} differs from the device's {got}")]
    QueueMaxSize { index: usize, saved: u16, got: u16 },
    #[error("queue {0} in the snapshot is invalid: {1}")]
    InvalidQueue(usize, String),
    #[error("queue {0} in the snapshot lies outside guest memory")]
    QueueOutsideMemory(usize),
    #[error("the device cannot be re-activated: {0}")]
    Activate(#[source] crate::virtio::ActivateError),
    #[error("the transport must be restored before the driver uses it")]
    NotFresh,
}

impl MmioTransport {
    /// Finishes the device's in-flight work, then captures the transport's state. Call with
    /// the vCPUs paused; the device keeps running afterwards.
    pub fn save_state(&self) -> Result<TransportState, TransportPersistError> {
        // A reset the driver asked for is finished first, so the device matches the registers.
        self.complete_pending_reset();
        let queues = {
            let mut dev = lock_device(&self.device);
            dev.quiesce();
            if self.activated {
                let live = dev
                    .queue_states()
                    .ok_or(TransportPersistError::Unsupported(self.device_type))?;
                if live.len() != self.queues.len() {
                    return Err(TransportPersistError::QueueCount {
                        saved: self.queues.len(),
                        got: live.len(),
                    });
                }
                live.iter().map(QueueSnapshot::from).collect()
            } else {
                self.queues
                    .iter()
                    .map(|q| QueueSnapshot::from(&q.state()))
                    .collect()
            }
        };
        Ok(TransportState {
            device_type: self.device_type,
            features_sel: self.features_sel,
            acked_features_sel: self.acked_features_sel,
            acked_features: self.acked_features,
            queue_sel: self.queue_sel,
            status: self.status,
            activated: self.activated,
            interrupt_status: self.interrupt.status(),
            config_generation: self.interrupt.config_generation(),
            queues,
        })
    }

    /// Applies `state` to this freshly created transport (its device built from the saved
    /// configuration, never touched by a driver). An active device is activated with the saved
    /// queues; every queue is then kicked once.
    pub fn restore_state(&mut self, state: &TransportState) -> Result<(), TransportPersistError> {
        if self.status != 0 || self.activated {
            return Err(TransportPersistError::NotFresh);
        }
        if state.device_type != self.device_type {
            return Err(TransportPersistError::DeviceType {
                saved: state.device_type,
                got: self.device_type,
            });
        }
        if state.queues.len() != self.queues.len() {
            return Err(TransportPersistError::QueueCount {
                saved: state.queues.len(),
                got: self.queues.len(),
            });
        }
        let mut queues = Vec::with_capacity(state.queues.len());
        for (i, (saved, current)) in state.queues.iter().zip(&self.queues).enumerate() {
            if saved.max_size != current.max_size() {
                return Err(TransportPersistError::QueueMaxSize {
                    index: i,
                    saved: saved.max_size,
                    got: current.max_size(),
                });
            }
            let q = saved
                .to_queue()
                .map_err(|e| TransportPersistError::InvalidQueue(i, e.to_string()))?;
            if state.activated && !q.is_valid(&self.mem) {
                return Err(TransportPersistError::QueueOutsideMemory(i));
            }
            queues.push(q);
        }
        {
            let mut dev = lock_device(&self.device);
            if state.status & FEATURES_OK != 0 {
                dev.set_acked_features(state.acked_features);
            }
            if state.activated {
                let copies = state
                    .queues
                    .iter()
                    .enumerate()
                    .map(|(i, q)| {
                        q.to_queue()
                            .map_err(|e| TransportPersistError::InvalidQueue(i, e.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                dev.activate(self.mem.clone(), copies, self.interrupt.clone())
                    .map_err(TransportPersistError::Activate)?;
            }
        }
        self.queues = queues;
        self.features_sel = state.features_sel;
        self.acked_features_sel = state.acked_features_sel;
        self.acked_features = state.acked_features;
        self.queue_sel = state.queue_sel;
        self.status = state.status;
        self.activated = state.activated;
        self.interrupt
            .restore(state.interrupt_status, state.config_generation);
        if self.activated {
            for evt in &self.queue_evts {
                let _ = evt.write(1);
            }
            // An interrupt the guest had not acknowledged may not have reached the irqchip
            // before the snapshot; raising it again is harmless (the driver reads the status).
            if state.interrupt_status != 0 {
                let _ = self.interrupt.irq_evt().write(1);
            }
        }
        Ok(())
    }
}
