//! The serial console on the VMM's own terminal: stdin in raw mode feeds the guest's serial
//! input while the microVM runs; the terminal is restored when the VMM ends.

use std::io::Read;
use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::terminal::Terminal;

use super::{SerialOut, Vmm};

impl Vmm {
    pub(super) fn restore_terminal(&mut self) {
        if self.stdin_raw {
            let _ = std::io::stdin().lock().set_canon_mode();
            self.stdin_raw = false;
        }
    }

    pub(super) fn maybe_register_stdin(&mut self, ops: &mut EventOps) {
        if self.stdin_registered
            || self.vm.is_none()
            || !matches!(self.serial_out, SerialOut::Stdout)
        {
            return;
        }
        let stdin = std::io::stdin();
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(stdin.as_raw_fd()) } != 1 {
            return;
        }
        if stdin.lock().set_raw_mode().is_ok() {
            self.stdin_raw = true;
        }
        if ops.add(Events::new(&stdin, EventSet::IN)).is_ok() {
            self.stdin_registered = true;
        }
    }

    pub(super) fn on_stdin(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let stdin = std::io::stdin();
        let room = self
            .vm
            .as_ref()
            .map(|vm| devices::bus::lock(&vm.serial).input_capacity())
            .unwrap_or(0)
            .min(buf.len());
        if room == 0 {
            return;
        }
        match stdin.lock().read(&mut buf[..room]) {
            Ok(0) | Err(_) => {
                let _ = ops.remove(Events::new(&stdin, EventSet::IN));
                self.stdin_registered = false;
            }
            Ok(n) => {
                if let Some(vm) = &self.vm {
                    devices::bus::lock(&vm.serial).enqueue_input(&buf[..n]);
                }
            }
        }
    }
}
