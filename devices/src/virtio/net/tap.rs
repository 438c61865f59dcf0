//! The host side of a virtio-net device: a tap interface opened through `/dev/net/tun`.
//!
//! The tap is opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, non-blocking, and its virtio-net
//! header size is set to 12 bytes (`virtio_net_hdr_v1`, the VERSION_1 layout), so every frame read
//! from or written to it starts with the same header the guest uses. Which offloads the tap may
//! hand us (`TUNSETOFFLOAD`) follows the guest's negotiated features.
//!
//! Opening a tap that does not exist creates it (a non-persistent one that disappears with the
//! VMM) when the caller allows it; otherwise [`Tap::open`] fails with [`TapError::Missing`] and a
//! message saying how to create one.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, RawFd};

use super::NetBackend;

/// Request numbers from `<linux/if_tun.h>` and `<linux/sockios.h>` (x86_64), checked against
/// the C headers (see seccomp/src/ioctls.rs, which allows exactly these on the VMM thread).
pub const TUNSETIFF: u64 = 0x4004_54ca;
pub const TUNSETOFFLOAD: u64 = 0x4004_54d0;
pub const TUNSETVNETHDRSZ: u64 = 0x4004_54d8;
pub const SIOCGIFINDEX: u64 = 0x8933;

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

/// `TUNSETOFFLOAD` flags.
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_UFO: u32 = 0x10;

/// Interface names are at most 15 bytes (IFNAMSIZ 16 with the NUL).
pub const IFNAMSIZ: usize = 16;

const TUN_PATH: &str = "/dev/net/tun";

/// Errors of opening and configuring a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("'{0}' is not a valid interface name (1-15 bytes, no '/', ':', spaces or NUL)")]
    InvalidName(String),
    #[error(
        "tap device '{0}' does not exist: create it first with `ip tuntap add dev {0} mode tap` \
         and `ip link set {0} up` (or start the VMM with --allow-tap-create)"
    )]
    Missing(String),
    #[error("Cannot look up interface '{0}'")]
    Lookup(String, #[source] io::Error),
    #[error("Cannot open {TUN_PATH}")]
    OpenTun(#[source] io::Error),
    #[error("Cannot attach to tap device '{0}' (TUNSETIFF; busy, not a tap, or not permitted)")]
    Attach(String, #[source] io::Error),
    #[error("Cannot set the virtio-net header size of tap '{0}'")]
    VnetHdr(String, #[source] io::Error),
}

/// `struct ifreq`: the name, then a union whose first member we use as flags or index.
#[repr(C)]
#[derive(Clone, Copy)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Self {
        let mut r = IfReq {
            name: [0; IFNAMSIZ],
            data: [0; 24],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        r
    }
}

/// Checks an interface name the way the kernel's `dev_valid_name` does.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

/// Whether a network interface called `name` exists (in the VMM's network namespace).
pub fn exists(name: &str) -> Result<bool, TapError> {
    if !valid_name(name) {
        return Err(TapError::InvalidName(name.into()));
    }
    // Any socket answers SIOCGIFINDEX; a Unix one needs no network privileges.
    // SAFETY: socket() takes no pointers; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(TapError::Lookup(name.into(), io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq::new(name);
    // SAFETY: SIOCGIFINDEX reads the name and writes an int into `req`, which is a valid,
    // writable `struct ifreq` of the kernel's size for the duration of the call.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGIFINDEX as _, &mut req) };
    if ret == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENODEV) => Ok(false),
        _ => Err(TapError::Lookup(name.into(), e)),
    }
}

/// An open tap device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to tap `name` (creating it if it is missing and `create` is true).
    pub fn open(name: &str, create: bool) -> Result<Tap, TapError> {
        if !create && !exists(name)? {
            return Err(TapError::Missing(name.into()));
        }
        if !valid_name(name) {
            return Err(TapError::InvalidName(name.into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq::new(name);
        req.data[..2].copy_from_slice(&(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).to_ne_bytes());
        // SAFETY: TUNSETIFF reads (and may update the name in) a valid `struct ifreq` that
        // lives for the duration of the call.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
        if ret < 0 {
            return Err(TapError::Attach(name.into(), io::Error::last_os_error()));
        }
        let hdr_len: libc::c_int = super::VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from a valid pointer.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ as _, &hdr_len) };
        if ret < 0 {
            return Err(TapError::VnetHdr(name.into(), io::Error::last_os_error()));
        }
        Ok(Tap {
            file,
            name: name.into(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl NetBackend for Tap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD as _,
                flags as libc::c_ulong,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("tap0"));
        assert!(valid_name("a-very-long-nam"));
        assert!(!valid_name("a-very-long-name"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(".."));
    }

    #[test]
    fn lookups() {
        assert!(exists("lo").unwrap());
        assert!(!exists("tartarus-none0").unwrap());
        assert!(matches!(exists("x/y"), Err(TapError::InvalidName(_))));
        let e = Tap::open("tartarus-none0", false).unwrap_err();
        assert!(matches!(e, TapError::Missing(_)));
        assert!(e
            .to_string()
            .contains("ip tuntap add dev tartarus-none0 mode tap"));
    }
}
