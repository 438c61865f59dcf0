//! The i8042 keyboard controller (ports 0x60 and 0x64), enough of it for a guest to reset the
//! machine and to receive the Ctrl-Alt-Del key sequence that `SendCtrlAltDel` injects.
//!
//! There is no keyboard behind it, but the controller and keyboard commands a Linux driver sends
//! while probing get the answers a real controller gives, so the driver binds and then reacts
//! to the injected scan codes (set 2, untranslated) by rebooting, which ends in a reset here.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_superio::Trigger;

use super::EventFdTrigger;
use crate::bus::BusDevice;

/// Offsets inside the device's port range (0x60 ..= 0x64).
const DATA: u64 = 0;
const COMMAND: u64 = 4;

// Status register bits.
const SB_OUT_FULL: u8 = 0x01;
const SB_SYSTEM: u8 = 0x04;
const SB_LAST_WAS_CMD: u8 = 0x08;
const SB_UNLOCKED: u8 = 0x10;

// Controller configuration byte bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYSTEM: u8 = 0x04;
const CTR_KBD_DISABLE: u8 = 0x10;

// Controller commands.
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xAA;
const CMD_KBD_TEST: u8 = 0xAB;
const CMD_KBD_DISABLE: u8 = 0xAD;
const CMD_KBD_ENABLE: u8 = 0xAE;
const CMD_READ_INPUT_PORT: u8 = 0xC0;
const CMD_READ_OUTPUT_PORT: u8 = 0xD0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xD1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xD2;
const CMD_RESET_CPU: u8 = 0xFE;

// Keyboard commands and answers.
const KBD_ACK: u8 = 0xFA;
const KBD_SET_LEDS: u8 = 0xED;
const KBD_ECHO: u8 = 0xEE;
const KBD_SCANCODE_SET: u8 = 0xF0;
const KBD_IDENTIFY: u8 = 0xF2;
const KBD_TYPEMATIC: u8 = 0xF3;
const KBD_RESET: u8 = 0xFF;

/// Scan codes (set 2) of Ctrl, Alt, Del pressed.
pub const CTRL_ALT_DEL: [u8; 4] = [0x14, 0x11, 0xE0, 0x71];

const BUFFER_SIZE: usize = 16;

/// Counters reported in the metrics.
#[derive(Debug, Default)]
pub struct I8042Counters {
    pub reset_requests: AtomicU64,
    pub missed_bytes: AtomicU64,
    pub interrupt_errors: AtomicU64,
}

/// What the next byte written to the data port means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pending {
    None,
    ControllerByte(u8),
    KeyboardArg,
}

/// The controller's registers and queued bytes, as saved in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    pub status: u8,
    pub ctr: u8,
    pub out: Vec<u8>,
    pub last_out: u8,
    pub pending: Pending,
}

pub struct I8042 {
    reset: EventFdTrigger,
    kbd_interrupt: EventFdTrigger,
    status: u8,
    ctr: u8,
    out: VecDeque<u8>,
    last_out: u8,
    pending: Pending,
    counters: Arc<I8042Counters>,
}

impl I8042 {
    /// `reset` fires when the guest asks for a CPU reset; `kbd_interrupt` is IRQ 1.
    pub fn new(reset: EventFdTrigger, kbd_interrupt: EventFdTrigger) -> Self {
        I8042 {
            reset,
            kbd_interrupt,
            status: SB_SYSTEM | SB_UNLOCKED,
            ctr: CTR_KBD_INT | CTR_SYSTEM,
            out: VecDeque::with_capacity(BUFFER_SIZE),
            last_out: 0,
            pending: Pending::None,
            counters: Arc::new(I8042Counters::default()),
        }
    }

    /// The state to save in a snapshot.
    pub fn save(&self) -> I8042State {
        I8042State {
            status: self.status,
            ctr: self.ctr,
            out: self.out.iter().copied().collect(),
            last_out: self.last_out,
            pending: self.pending,
        }
    }

    /// A controller in the saved state `s`; a queue longer than the controller's is cut.
    pub fn from_state(
        s: &I8042State,
        reset: EventFdTrigger,
        kbd_interrupt: EventFdTrigger,
    ) -> Self {
        let mut dev = I8042::new(reset, kbd_interrupt);
        dev.status = s.status;
        dev.ctr = s.ctr;
        dev.out = s.out.iter().copied().take(BUFFER_SIZE).collect();
        dev.last_out = s.last_out;
        dev.pending = s.pending;
        dev
    }

    pub fn counters(&self) -> Arc<I8042Counters> {
        self.counters.clone()
    }

    /// Queues the key presses of Ctrl-Alt-Del and interrupts the guest. Fails when the buffer
    /// has no room for the whole sequence (the guest is not reading its keyboard).
    pub fn trigger_ctrl_alt_del(&mut self) -> Result<(), &'static str> {
        if BUFFER_SIZE - self.out.len() < CTRL_ALT_DEL.len() {
            return Err("the guest's keyboard buffer is full");
        }
        for b in CTRL_ALT_DEL {
            self.push(b);
        }
        Ok(())
    }

    fn push(&mut self, byte: u8) {
        if self.out.len() >= BUFFER_SIZE {
            self.counters.missed_bytes.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.out.push_back(byte);
        self.status |= SB_OUT_FULL;
        self.interrupt();
    }

    fn interrupt(&self) {
        if self.ctr & CTR_KBD_INT != 0 && self.kbd_interrupt.trigger().is_err() {
            self.counters
                .interrupt_errors
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn request_reset(&mut self) {
        self.counters.reset_requests.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.reset.trigger() {
            tracing::error!("i8042 could not signal the reset: {e}");
        }
    }

    fn read_data(&mut self) -> u8 {
        if let Some(b) = self.out.pop_front() {
            self.last_out = b;
        }
        if self.out.is_empty() {
            self.status &= !SB_OUT_FULL;
        } else {
            // More bytes wait: raise the interrupt again for the next one.
            self.interrupt();
        }
        self.last_out
    }

    fn write_command(&mut self, cmd: u8) {
        self.status |= SB_LAST_WAS_CMD;
        self.pending = Pending::None;
        match cmd {
            CMD_READ_CTR => self.push(self.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT_PORT | CMD_WRITE_KBD_BUFFER => {
                self.pending = Pending::ControllerByte(cmd)
            }
            CMD_SELF_TEST => self.push(0x55),
            CMD_KBD_TEST => self.push(0x00),
            CMD_KBD_DISABLE => self.ctr |= CTR_KBD_DISABLE,
            CMD_KBD_ENABLE => self.ctr &= !CTR_KBD_DISABLE,
            CMD_READ_INPUT_PORT => self.push(0x00),
            // Output port: A20 on, CPU not held in reset, keyboard lines idle.
            CMD_READ_OUTPUT_PORT => self.push(0x03),
            CMD_RESET_CPU => self.request_reset(),
            // Everything else (aux port, password, mode commands) is accepted and ignored:
            // there is no mouse behind this controller.
            _ => {}
        }
    }

    fn write_data(&mut self, byte: u8) {
        self.status &= !SB_LAST_WAS_CMD;
        match std::mem::replace(&mut self.pending, Pending::None) {
            Pending::ControllerByte(CMD_WRITE_CTR) => self.ctr = byte,
            Pending::ControllerByte(CMD_WRITE_OUTPUT_PORT) => {
                // Bit 0 of the output port holds the CPU in reset when cleared.
                if byte & 0x01 == 0 {
                    self.request_reset();
                }
            }
            Pending::ControllerByte(CMD_WRITE_KBD_BUFFER) => self.push(byte),
            Pending::ControllerByte(_) => {}
            Pending::KeyboardArg => self.push(KBD_ACK),
            Pending::None => self.keyboard_command(byte),
        }
    }

    fn keyboard_command(&mut self, cmd: u8) {
        match cmd {
            KBD_RESET => {
                self.push(KBD_ACK);
                self.push(0xAA);
            }
            KBD_IDENTIFY => {
                self.push(KBD_ACK);
                self.push(0xAB);
                self.push(0x83);
            }
            KBD_ECHO => self.push(KBD_ECHO),
            KBD_SET_LEDS | KBD_SCANCODE_SET | KBD_TYPEMATIC => {
                self.push(KBD_ACK);
                self.pending = Pending::KeyboardArg;
            }
            _ => self.push(KBD_ACK),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            data.fill(0xff);
            return;
        }
        data[0] = match offset {
            DATA => self.read_data(),
            COMMAND => self.status,
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        match offset {
            DATA => self.write_data(data[0]),
            COMMAND => self.write_command(data[0]),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn device() -> (I8042, EventFd, EventFd) {
        let reset = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = I8042::new(
            EventFdTrigger::new(reset.try_clone().unwrap()),
            EventFdTrigger::new(irq.try_clone().unwrap()),
        );
        (dev, reset, irq)
    }

    fn rd(dev: &mut I8042, off: u64) -> u8 {
        let mut b = [0u8];
        dev.read(off, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_and_output_port() {
        let (mut dev, reset, _irq) = device();
        dev.write(COMMAND, &[CMD_RESET_CPU]);
        assert_eq!(reset.read().unwrap(), 1);
        dev.write(COMMAND, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(DATA, &[0x02]);
        assert_eq!(reset.read().unwrap(), 1);
        assert_eq!(dev.counters().reset_requests.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn ctrl_alt_del_sequence() {
        let (mut dev, _reset, irq) = device();
        assert_eq!(rd(&mut dev, COMMAND) & SB_OUT_FULL, 0);
        dev.trigger_ctrl_alt_del().unwrap();
        assert!(irq.read().unwrap() >= 1);
        let mut got = vec![];
        while rd(&mut dev, COMMAND) & SB_OUT_FULL != 0 {
            got.push(rd(&mut dev, DATA));
        }
        assert_eq!(got, CTRL_ALT_DEL);
        // A guest that never reads its keyboard fills the buffer; we refuse rather than drop.
        for _ in 0..4 {
            dev.trigger_ctrl_alt_del().unwrap();
        }
        assert!(dev.trigger_ctrl_alt_del().is_err());
    }

    #[test]
    fn state_round_trip() {
        let (mut dev, reset, irq) = device();
        dev.write(COMMAND, &[CMD_WRITE_CTR]);
        dev.trigger_ctrl_alt_del().unwrap();
        let s = dev.save();
        let json = serde_json::to_string(&s).unwrap();
        let back: I8042State = serde_json::from_str(&json).unwrap();
        let mut restored = I8042::from_state(
            &back,
            EventFdTrigger::new(reset.try_clone().unwrap()),
            EventFdTrigger::new(irq.try_clone().unwrap()),
        );
        assert_eq!(restored.save(), s);
        assert_eq!(rd(&mut restored, DATA), CTRL_ALT_DEL[0]);
        // The pending "write CTR" byte survived.
        restored.write(DATA, &[0x00]);
        restored.write(COMMAND, &[CMD_READ_CTR]);
        let mut got = vec![];
        while rd(&mut restored, COMMAND) & SB_OUT_FULL != 0 {
            got.push(rd(&mut restored, DATA));
        }
        assert_eq!(got.last(), Some(&0x00));
    }

    #[test]
    fn probe_answers() {
        let (mut dev, _reset, _irq) = device();
        dev.write(COMMAND, &[CMD_SELF_TEST]);
        assert_eq!(rd(&mut dev, DATA), 0x55);
        dev.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(rd(&mut dev, DATA), CTR_KBD_INT | CTR_SYSTEM);
        dev.write(COMMAND, &[CMD_WRITE_CTR]);
        dev.write(DATA, &[0x00]);
        dev.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(rd(&mut dev, DATA), 0x00);
        dev.write(DATA, &[KBD_RESET]);
        assert_eq!(rd(&mut dev, DATA), KBD_ACK);
        assert_eq!(rd(&mut dev, DATA), 0xAA);
        dev.write(DATA, &[KBD_SET_LEDS]);
        assert_eq!(rd(&mut dev, DATA), KBD_ACK);
        dev.write(DATA, &[0x07]);
        assert_eq!(rd(&mut dev, DATA), KBD_ACK);
        // Wide accesses are ignored.
        let mut w = [0u8; 2];
        dev.read(DATA, &mut w);
        assert_eq!(w, [0xff, 0xff]);
    }
}
