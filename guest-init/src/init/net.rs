//! Static IPv4 set-up from `ip=` with plain ioctls: loopback up, then the NIC's address, netmask,
//! link up and the default route. No external tools.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::cmdline::IpConfig;

/// Errors of network set-up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("Cannot open a socket for interface ioctls")]
    Socket(#[source] io::Error),
    #[error("Interface name '{0}' is too long")]
    Name(String),
    #[error("{op} on {dev} failed")]
    Ioctl {
        op: &'static str,
        dev: String,
        #[source]
        source: io::Error,
    },
}

fn ifreq(dev: &str) -> Result<libc::ifreq, NetError> {
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if dev.len() >= req.ifr_name.len() {
        return Err(NetError::Name(dev.into()));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(dev.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads it as sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

struct Ctl {
    fd: OwnedFd,
}

impl Ctl {
    fn new() -> Result<Self, NetError> {
        // SAFETY: plain socket(2) call; checked below.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(NetError::Socket(io::Error::last_os_error()));
        }
        Ok(Ctl {
            // SAFETY: a fresh fd nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        })
    }

    fn ioctl<T>(
        &self,
        req: libc::c_ulong,
        arg: &mut T,
        op: &'static str,
        dev: &str,
    ) -> Result<(), NetError> {
        // SAFETY: `arg` points to the structure type this request expects (ifreq or rtentry).
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), req, arg as *mut T) } < 0 {
            let source = io::Error::last_os_error();
            return Err(NetError::Ioctl {
                op,
                dev: dev.into(),
                source,
            });
        }
        Ok(())
    }

    fn up(&self, dev: &str) -> Result<(), NetError> {
        let mut req = ifreq(dev)?;
        self.ioctl(libc::SIOCGIFFLAGS, &mut req, "SIOCGIFFLAGS", dev)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        unsafe {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        }
        self.ioctl(libc::SIOCSIFFLAGS, &mut req, "SIOCSIFFLAGS", dev)
    }

    fn set_addr(&self, dev: &str, addr: Ipv4Addr, netmask: Ipv4Addr) -> Result<(), NetError> {
        let mut req = ifreq(dev)?;
        req.ifr_ifru.ifru_addr = sockaddr(addr);
        self.ioctl(libc::SIOCSIFADDR, &mut req, "SIOCSIFADDR", dev)?;
        let mut req = ifreq(dev)?;
        req.ifr_ifru.ifru_netmask = sockaddr(netmask);
        self.ioctl(libc::SIOCSIFNETMASK, &mut req, "SIOCSIFNETMASK", dev)
    }

    fn default_route(&self, dev: &str, gateway: Ipv4Addr) -> Result<(), NetError> {
        // SAFETY: rtentry is plain data; all-zero is valid (null device pointer = any).
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr(gateway);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        self.ioctl(libc::SIOCADDRT, &mut rt, "SIOCADDRT", dev)
    }
}

/// Brings loopback up and, when `ip` names a NIC that exists, configures it.
pub fn configure(ip: Option<&IpConfig>) -> Result<(), NetError> {
    let ctl = Ctl::new()?;
    // The kernel gives lo 127.0.0.1/8 when it comes up.
    ctl.up("lo")?;
    let Some(ip) = ip else { return Ok(()) };
    if !Path::new("/sys/class/net").join(&ip.device).exists() {
        super::log(&format!(
            "ip=: no network interface {}; skipping",
            ip.device
        ));
        return Ok(());
    }
    ctl.set_addr(&ip.device, ip.addr, ip.netmask)?;
    ctl.up(&ip.device)?;
    if let Some(gw) = ip.gateway {
        ctl.default_route(&ip.device, gw)?;
    }
    super::log(&format!(
        "{}: {}/{}",
        ip.device,
        ip.addr,
        u32::from(ip.netmask).count_ones()
    ));
    Ok(())
}
