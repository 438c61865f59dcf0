//! COM1: an 8250/16550 UART emulated by vm-superio, with counters for the metrics.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{SerialEvents, SerialState};
use vm_superio::Serial;

use super::EventFdTrigger;
use crate::bus::BusDevice;

/// Counters the metrics report for the serial port.
#[derive(Debug, Default)]
pub struct SerialCounters {
    pub bytes_out: AtomicU64,
    pub bytes_lost: AtomicU64,
    pub reads: AtomicU64,
    pub bytes_in: AtomicU64,
}

/// Event sink handed to vm-superio; shares the counters with the VMM.
#[derive(Clone, Debug, Default)]
pub struct SerialEventSink(pub Arc<SerialCounters>);

impl SerialEvents for SerialEventSink {
    fn buffer_read(&self) {
        self.0.reads.fetch_add(1, Ordering::Relaxed);
    }
    fn out_byte(&self) {
        self.0.bytes_out.fetch_add(1, Ordering::Relaxed);
    }
    fn tx_lost_byte(&self) {
        self.0.bytes_lost.fetch_add(1, Ordering::Relaxed);
    }
    fn in_buffer_empty(&self) {}
}

/// The UART's registers and pending input, as saved in a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialDeviceState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

/// The serial device as it sits on the port-I/O bus (8 registers at 0x3f8).
pub struct SerialDevice {
    inner: Serial<EventFdTrigger, SerialEventSink, Box<dyn Write + Send>>,
    counters: Arc<SerialCounters>,
}

impl SerialDevice {
    /// A UART raising `interrupt` and writing what the guest sends to `out`.
    pub fn new(interrupt: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        let counters = Arc::new(SerialCounters::default());
        let inner = Serial::with_events(interrupt, SerialEventSink(counters.clone()), out);
        SerialDevice { inner, counters }
    }

    /// A UART in the saved state `s`.
    pub fn from_state(
        s: &SerialDeviceState,
        interrupt: EventFdTrigger,
        out: Box<dyn Write + Send>,
    ) -> Result<Self, String> {
        let counters = Arc::new(SerialCounters::default());
        let state = SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        };
        let inner = Serial::from_state(&state, interrupt, SerialEventSink(counters.clone()), out)
            .map_err(|e| format!("invalid serial state: {e:?}"))?;
        Ok(SerialDevice { inner, counters })
    }

    /// The state to save in a snapshot.
    pub fn save(&self) -> SerialDeviceState {
        let s = self.inner.state();
        SerialDeviceState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    pub fn counters(&self) -> Arc<SerialCounters> {
        self.counters.clone()
    }

    /// Room left in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.inner.fifo_capacity()
    }

    /// Queues host input for the guest; returns how many bytes fit.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        match self.inner.enqueue_raw_bytes(input) {
            Ok(n) => {
                self.counters
                    .bytes_in
                    .fetch_add(n as u64, Ordering::Relaxed);
                n
            }
            Err(e) => {
                tracing::debug!("serial input dropped: {e:?}");
                0
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset > 7 {
            data.fill(0xff);
            return;
        }
        data[0] = self.inner.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset > 7 {
            return;
        }
        if let Err(e) = self.inner.write(offset as u8, data[0]) {
            tracing::warn!("serial write failed: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);
    impl Write for SharedBuf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_input_and_bad_sizes() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let buf = SharedBuf::default();
        let mut dev = SerialDevice::new(
            EventFdTrigger::new(evt.try_clone().unwrap()),
            Box::new(buf.clone()),
        );
        for b in b"hi" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*buf.0.lock().unwrap(), b"hi");
        assert_eq!(dev.counters().bytes_out.load(Ordering::Relaxed), 2);
        // Wrong access sizes are ignored rather than trusted.
        dev.write(0, &[1, 2]);
        let mut wide = [0u8; 4];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        // Enable the receive interrupt, then queue input.
        dev.write(1, &[1]);
        assert_eq!(dev.enqueue_input(b"x"), 1);
        assert_eq!(evt.read().unwrap(), 1);
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b[0], b'x');
    }

    #[test]
    fn state_round_trip() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(
            EventFdTrigger::new(evt.try_clone().unwrap()),
            Box::new(SharedBuf::default()),
        );
        dev.write(7, &[0x5a]); // scratch register
        dev.write(1, &[1]);
        dev.enqueue_input(b"ab");
        let saved = dev.save();
        let json = serde_json::to_string(&saved).unwrap();
        let back: SerialDeviceState = serde_json::from_str(&json).unwrap();
        let mut restored = SerialDevice::from_state(
            &back,
            EventFdTrigger::new(evt.try_clone().unwrap()),
            Box::new(SharedBuf::default()),
        )
        .unwrap();
        let mut b = [0u8];
        restored.read(7, &mut b);
        assert_eq!(b[0], 0x5a);
        restored.read(0, &mut b);
        assert_eq!(b[0], b'a');
    }
}
