//! Each sandbox's network: a network namespace of its own holding the tap its VMM attaches to
//! (the jailer joins it with `--netns`). Every template snapshot has one NIC, `eth0` at
//! 172.16.0.2/30 in the guest, so every clone has the same guest address.
//!
//! - `none`: the tap is up with no address and no uplink: the guest's packets go nowhere.
//! - `nat`: the tap gets 172.16.0.1/30, a veth pair joins the namespace to the host with a /30
//!   of 10.200.0.0/16 of its own, the namespace masquerades the guest behind its veth address,
//!   and the host forwards and masquerades it onward. Host rules keep sandboxes apart: no
//!   forwarding between sandbox veths, and no new connections from a sandbox to the host.
//!
//! The namespace and the tap are made with syscalls in a short-lived thread (cheap: no process
//! is started for a `none` sandbox); `nat` plumbing uses `ip` and `iptables`.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where namespace files are bind-mounted (`ip netns` finds them there too).
pub const NETNS_DIR: &str = "/run/netns";
/// The tap's name inside every sandbox namespace (what the template's NIC names).
pub const TAP: &str = "tap0";
pub const GUEST_IP: &str = "172.16.0.2";
pub const TAP_IP: [u8; 4] = [172, 16, 0, 1];
pub const GUEST_MAC: &str = "06:00:ac:10:00:02";
/// The `ip=` kernel argument every template boots with.
pub const GUEST_IP_ARG: &str = "ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off";
/// Host side of the sandboxes' veth pairs: one /30 each.
pub const UPLINK_NET: &str = "10.200.0.0/16";
/// Interface name prefix of every sandbox veth on the host (iptables matches `tsb+`).
pub const VETH_PREFIX: &str = "tsb";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{op}")]
    Sys {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed: {stderr}")]
    Command { cmd: String, stderr: String },
}

fn sys(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
    let op = op.into();
    move |source| NetError::Sys { op, source }
}

fn last(op: &str) -> NetError {
    NetError::Sys {
        op: op.to_string(),
        source: std::io::Error::last_os_error(),
    }
}

pub fn ns_name(id: &str) -> String {
    format!("tartarus-{id}")
}

pub fn ns_path(id: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(ns_name(id))
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;

/// An `ifreq` with a name and a short (flags) or a sockaddr payload.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> IfReq {
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        r
    }
    fn set_short(&mut self, v: i16) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }
    fn short(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }
    fn set_ipv4(&mut self, ip: [u8; 4]) {
        self.data = [0; 24];
        self.data[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        self.data[4..8].copy_from_slice(&ip);
    }
}

fn ioctl(fd: i32, req: libc::c_ulong, arg: *mut libc::c_void, what: &str) -> Result<(), NetError> {
    // SAFETY: the callers pass an fd they own and a pointer to an IfReq that outlives the call.
    if unsafe { libc::ioctl(fd, req as _, arg) } < 0 {
        return Err(last(what));
    }
    Ok(())
}

/// A TUNSET* request whose argument is a plain integer.
fn ioctl_val(fd: i32, req: libc::c_ulong, val: libc::c_ulong, what: &str) -> Result<(), NetError> {
    // SAFETY: these requests read their argument as an integer, not through a pointer.
    if unsafe { libc::ioctl(fd, req as _, val) } < 0 {
        return Err(last(what));
    }
    Ok(())
}

fn inet_socket() -> Result<OwnedFd, NetError> {
    // SAFETY: socket() takes integers and returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last("socket"));
    }
    // SAFETY: a fresh fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn link_up(sock: i32, name: &str) -> Result<(), NetError> {
    let mut r = IfReq::new(name);
    ioctl(
        sock,
        libc::SIOCGIFFLAGS as _,
        (&mut r as *mut IfReq).cast(),
        "SIOCGIFFLAGS",
    )?;
    let flags = r.short() | libc::IFF_UP as i16;
    r.set_short(flags);
    ioctl(
        sock,
        libc::SIOCSIFFLAGS as _,
        (&mut r as *mut IfReq).cast(),
        "SIOCSIFFLAGS",
    )
}

/// Runs in a fresh thread: a new network namespace, bind-mounted at `path`, with `lo` up and
/// a persistent tap owned by `uid` (with `tap_ip`, if given, on a /30).
fn make_ns(path: &Path, uid: u32, tap_ip: Option<[u8; 4]>) -> Result<(), NetError> {
    // SAFETY: unshare with a flag; it changes only this thread's network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
        return Err(last("unshare(CLONE_NEWNET)"));
    }
    std::fs::create_dir_all(NETNS_DIR).map_err(sys(format!("mkdir {NETNS_DIR}")))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(sys(format!("create {}", path.display())))?;
    let src = CString::new("/proc/thread-self/ns/net").expect("no NUL");
    let dst = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| NetError::Sys {
        op: "netns path".into(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: two NUL-terminated paths and a flag; no data argument.
    if unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    } < 0
    {
        let e = last("bind-mount the network namespace");
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    let sock = inet_socket()?;
    link_up(sock.as_raw_fd(), "lo")?;
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(sys("open /dev/net/tun"))?;
    let mut r = IfReq::new(TAP);
    r.set_short((libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16);
    let fd = tun.as_raw_fd();
    ioctl(fd, TUNSETIFF, (&mut r as *mut IfReq).cast(), "TUNSETIFF")?;
    ioctl_val(fd, TUNSETOWNER, uid as libc::c_ulong, "TUNSETOWNER")?;
    ioctl_val(fd, TUNSETGROUP, uid as libc::c_ulong, "TUNSETGROUP")?;
    ioctl_val(fd, TUNSETPERSIST, 1, "TUNSETPERSIST")?;
    drop(tun);
    if let Some(ip) = tap_ip {
        let mut r = IfReq::new(TAP);
        r.set_ipv4(ip);
        ioctl(
            sock.as_raw_fd(),
            libc::SIOCSIFADDR as _,
            (&mut r as *mut IfReq).cast(),
            "SIOCSIFADDR",
        )?;
        let mut r = IfReq::new(TAP);
        r.set_ipv4([255, 255, 255, 252]);
        ioctl(
            sock.as_raw_fd(),
            libc::SIOCSIFNETMASK as _,
            (&mut r as *mut IfReq).cast(),
            "SIOCSIFNETMASK",
        )?;
    }
    link_up(sock.as_raw_fd(), TAP)
}

/// Creates sandbox `id`'s namespace with its tap (owned by `uid`); with `nat`, also the uplink
/// through subnet number `index`.
pub fn create(id: &str, uid: u32, nat: Option<u16>) -> Result<PathBuf, NetError> {
    let path = ns_path(id);
    let p2 = path.clone();
    let tap_ip = nat.map(|_| TAP_IP);
    let made = std::thread::spawn(move || make_ns(&p2, uid, tap_ip))
        .join()
        .unwrap_or_else(|_| {
            Err(NetError::Sys {
                op: "netns thread panicked".into(),
                source: std::io::Error::other("panic"),
            })
        });
    if let Err(e) = made {
        remove(id);
        return Err(e);
    }
    if let Some(index) = nat {
        if let Err(e) = uplink(id, index) {
            remove(id);
            return Err(e);
        }
    }
    Ok(path)
}

fn run(cmd: &str, args: &[&str]) -> Result<(), NetError> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(sys(format!("run {cmd}")))?;
    if !out.status.success() {
        return Err(NetError::Command {
            cmd: format!("{cmd} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The host and namespace addresses of uplink subnet `index` (a /30 of 10.200.0.0/16).
pub fn uplink_addrs(index: u16) -> (String, String) {
    let base = (index as u32) * 4;
    let (a, b) = ((base >> 8) & 0xff, base & 0xff);
    (
        format!("10.200.{a}.{}", b + 1),
        format!("10.200.{a}.{}", b + 2),
    )
}

/// Host interface name of a sandbox's veth.
pub fn veth_name(id: &str) -> String {
    let tail = id.rsplit('-').next().unwrap_or(id);
    let hex: String = tail
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(10)
        .collect();
    format!("{VETH_PREFIX}{hex}h")
}

fn uplink(id: &str, index: u16) -> Result<(), NetError> {
    host_rules()?;
    let ns = ns_name(id);
    let host = veth_name(id);
    let peer = format!("{}n", &host[..host.len() - 1]);
    let (host_ip, ns_ip) = uplink_addrs(index);
    run(
        "ip",
        &["link", "add", &host, "type", "veth", "peer", "name", &peer],
    )?;
    run("ip", &["link", "set", &peer, "netns", &ns])?;
    run(
        "ip",
        &["addr", "add", &format!("{host_ip}/30"), "dev", &host],
    )?;
    run("ip", &["link", "set", &host, "up"])?;
    run("ip", &["-n", &ns, "link", "set", &peer, "name", "uplink0"])?;
    run(
        "ip",
        &[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            "uplink0",
        ],
    )?;
    run("ip", &["-n", &ns, "link", "set", "uplink0", "up"])?;
    run(
        "ip",
        &["-n", &ns, "route", "add", "default", "via", &host_ip],
    )?;
    run(
        "ip",
        &[
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
    )?;
    run(
        "ip",
        &[
            "netns",
            "exec",
            &ns,
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "uplink0",
            "-j",
            "MASQUERADE",
        ],
    )?;
    Ok(())
}

/// The host's side, set once: forwarding on, sandbox traffic masqueraded on its way out,
/// sandboxes kept from each other and from the host's own services.
fn host_rules() -> Result<(), NetError> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(sys("enable ip_forward"))?;
    let wildcard = format!("{VETH_PREFIX}+");
    let rules: [(&str, &str, Vec<&str>); 4] = [
        (
            "nat",
            "POSTROUTING",
            vec!["-s", UPLINK_NET, "!", "-d", UPLINK_NET, "-j", "MASQUERADE"],
        ),
        (
            "filter",
            "FORWARD",
            vec!["-i", &wildcard, "-o", &wildcard, "-j", "DROP"],
        ),
        (
            "filter",
            "INPUT",
            vec![
                "-i",
                &wildcard,
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
        ),
        ("filter", "INPUT", vec!["-i", &wildcard, "-j", "DROP"]),
    ];
    for (table, chain, spec) in rules {
        let mut check = vec!["-w", "-t", table, "-C", chain];
        check.extend(spec.iter().copied());
        if run("iptables", &check).is_ok() {
            continue;
        }
        let mut add = vec!["-w", "-t", table, "-A", chain];
        add.extend(spec.iter().copied());
        run("iptables", &add)?;
    }
    Ok(())
}

/// Removes a sandbox's namespace (its tap and veth go with it). Idempotent.
/// The sandbox's namespace: the one it kept while it hibernated, or a new one (after a daemon
/// restart or a host reboot, which leave no mounted namespace behind).
pub fn ensure(id: &str, uid: u32, nat: Option<u16>) -> Result<PathBuf, NetError> {
    use std::os::unix::fs::MetadataExt;
    let path = ns_path(id);
    // A namespace file is an nsfs mount: its device differs from its directory's.
    let mounted = match (std::fs::metadata(&path), std::fs::metadata(NETNS_DIR)) {
        (Ok(f), Ok(dir)) => f.dev() != dir.dev(),
        _ => false,
    };
    if mounted {
        return Ok(path);
    }
    remove(id);
    create(id, uid, nat)
}

pub fn remove(id: &str) {
    let path = ns_path(id);
    if let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) {
        // SAFETY: a NUL-terminated path and a flag.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = std::fs::remove_file(&path);
    // The veth pair dies with the namespace; remove the host end too in case it lingers.
    let host = veth_name(id);
    if Path::new("/sys/class/net").join(&host).exists() {
        let _ = run("ip", &["link", "del", &host]);
    }
}

/// Namespaces of sandboxes this daemon made (for recovery).
pub fn existing() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("tartarus-"))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names() {
        assert_eq!(uplink_addrs(0), ("10.200.0.1".into(), "10.200.0.2".into()));
        assert_eq!(uplink_addrs(64), ("10.200.1.1".into(), "10.200.1.2".into()));
        assert_eq!(
            uplink_addrs(16383),
            ("10.200.255.253".into(), "10.200.255.254".into())
        );
        let n = veth_name("sb-0123456789ab");
        assert_eq!(n, "tsb0123456789h");
        assert!(n.len() <= 15);
    }

    #[test]
    fn a_namespace_with_a_tap_comes_and_goes() {
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/net/tun").exists() {
            eprintln!("skipped: needs root and /dev/net/tun");
            return;
        }
        let id = format!("sb-{}", crate::fsutil::random_hex(6));
        let p = create(&id, 12345, None).unwrap();
        assert!(p.exists());
        let out = Command::new("ip")
            .args(["-n", &ns_name(&id), "-o", "link", "show", TAP])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("UP") && text.contains("tap0"), "{text}");
        assert!(existing().contains(&id));
        remove(&id);
        assert!(!p.exists());
        assert!(!existing().contains(&id));
    }
}
