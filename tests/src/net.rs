//! Host-side networking for virtio-net tests and benchmarks: tap devices made with `ip`, and
//! AF_PACKET sockets bound to them to capture what the guest sends and inject what it receives.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The EtherType the test guest uses (IEEE 802 local experimental 1).
pub const ETHERTYPE_TARTARUS: u16 = 0x88b5;
const ETH_P_ALL: u16 = 0x0003;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A tap device created with `ip tuntap add` and brought up; deleted on drop.
#[derive(Debug)]
pub struct HostTap {
    pub name: String,
}

impl HostTap {
    /// A tap with a name unique to this process: `tt<pid>n<k>` (at most 15 bytes).
    pub fn create() -> Result<HostTap, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tt{}n{}",
            std::process::id() % 1_000_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["tuntap", "add", "dev", &name, "mode", "tap"])?;
        let tap = HostTap { name };
        ip(&["link", "set", &tap.name, "up"])?;
        Ok(tap)
    }

    /// A unique name of a tap that does not exist.
    pub fn unused_name() -> String {
        format!("ttx{}", std::process::id() % 1_000_000)
    }

    pub fn ifindex(&self) -> io::Result<i32> {
        let name = std::ffi::CString::new(self.name.clone()).map_err(io::Error::other)?;
        // SAFETY: a valid NUL-terminated string.
        let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if idx == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(idx as i32)
    }
}

impl Drop for HostTap {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.name]);
    }
}

/// An AF_PACKET raw socket bound to one interface (all EtherTypes).
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    pub fn bind(ifindex: i32) -> io::Result<PacketSocket> {
        // SAFETY: plain socket creation; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ALL.to_be()),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let addr = Self::addr(ifindex);
        // SAFETY: `addr` is a valid sockaddr_ll of the length passed.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd, ifindex })
    }

    fn addr(ifindex: i32) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        a.sll_family = libc::AF_PACKET as u16;
        a.sll_protocol = ETH_P_ALL.to_be();
        a.sll_ifindex = ifindex;
        a.sll_halen = 6;
        a
    }

    /// Sets how long `recv` waits.
    pub fn set_timeout(&self, d: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: d.as_secs() as libc::time_t,
            tv_usec: d.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: a valid timeval of the length passed.
        let ret = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Asks for a receive buffer of `bytes` (SO_RCVBUFFORCE as root, beyond rmem_max), so
    /// bursts are not dropped before they are read.
    pub fn set_rcvbuf(&self, bytes: i32) -> io::Result<()> {
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: a valid int of the length passed.
            let ret = unsafe {
                libc::setsockopt(
                    self.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    &bytes as *const i32 as *const libc::c_void,
                    std::mem::size_of::<i32>() as u32,
                )
            };
            if ret == 0 {
                return Ok(());
            }
        }
        Err(io::Error::last_os_error())
    }

    /// Receives one frame that came in from the tap (the guest's side), skipping frames the
    /// host itself sent; None on timeout.
    pub fn recv_incoming(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            let mut from = Self::addr(self.ifindex);
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: `buf` and `from` are valid for writes of the lengths passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                    &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Ok(None),
                    _ => Err(e),
                };
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            return Ok(Some(n as usize));
        }
    }

    /// Sends one whole Ethernet frame out through the interface (into the guest for a tap).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let addr = Self::addr(self.ifindex);
        // SAFETY: `frame` and `addr` are valid for reads of the lengths passed.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// An Ethernet frame: `dst`, `src`, EtherType 0x88b5, `payload`, zero padding to 60 bytes.
pub fn tartarus_frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60.max(14 + payload.len()));
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE_TARTARUS.to_be_bytes());
    f.extend_from_slice(payload);
    f.resize(60.max(f.len()), 0);
    f
}

/// Whether `frame` has EtherType 0x88b5.
pub fn is_tartarus(frame: &[u8]) -> bool {
    frame.len() >= 14 && u16::from_be_bytes([frame[12], frame[13]]) == ETHERTYPE_TARTARUS
}
