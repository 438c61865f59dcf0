//! Dropping privileges for good: no supplementary groups, uid/gid (real, effective, saved) set,
//! empty capability sets (bounding and ambient included) and `no_new_privs`; then verified.

use std::io;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("Cannot drop capability {cap} from the bounding set")]
    Bounding {
        cap: u32,
        #[source]
        source: io::Error,
    },
    #[error("Cannot clear the ambient capabilities")]
    Ambient(#[source] io::Error),
    #[error("Cannot clear the supplementary groups")]
    Groups(#[source] io::Error),
    #[error("Cannot switch to gid {0}")]
    Gid(u32, #[source] io::Error),
    #[error("Cannot switch to uid {0}")]
    Uid(u32, #[source] io::Error),
    #[error("Cannot set no_new_privs")]
    NoNewPrivs(#[source] io::Error),
    #[error("Cannot read the capabilities")]
    Capget(#[source] io::Error),
    #[error("Privileges remain after dropping them: {0}")]
    Remaining(String),
}

/// The capability sets of this process.
fn capget() -> io::Result<[CapData; 2]> {
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget with a version-3 header writes exactly two CapData structs into `data`,
    // which is valid and writable for that size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(data)
}

/// Whether capability `cap` is in this process's effective set.
pub fn has_effective_cap(cap: u32) -> bool {
    let Ok(d) = capget() else {
        return false;
    };
    let (word, bit) = ((cap / 32) as usize, cap % 32);
    word < 2 && d[word].effective & (1 << bit) != 0
}

fn prctl(op: libc::c_int, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: the prctl operations used here take integer arguments only; no memory is passed.
    let rc = unsafe {
        libc::prctl(
            op,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// Switches to `uid`/`gid` with no capabilities, no supplementary groups and `no_new_privs`,
/// then checks that nothing is left. Must run as root (with CAP_SETUID, CAP_SETGID,
/// CAP_SETPCAP); `uid` and `gid` must not be 0.
pub fn drop_to(uid: u32, gid: u32) -> Result<(), PrivilegeError> {
    // The bounding set first (needs CAP_SETPCAP, which goes away with the uid switch). Probing
    // PR_CAPBSET_READ finds the kernel's last capability without reading /proc.
    let mut cap = 0u32;
    while prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong).is_ok() {
        prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong)
            .map_err(|source| PrivilegeError::Bounding { cap, source })?;
        cap += 1;
    }
    // SAFETY: integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(PrivilegeError::Ambient(io::Error::last_os_error()));
    }
    // SAFETY: a zero-length group list; the pointer is not read.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(PrivilegeError::Groups(io::Error::last_os_error()));
    }
    // SAFETY: plain syscalls with integer arguments.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return Err(PrivilegeError::Gid(gid, io::Error::last_os_error()));
    }
    // Without SECBIT_KEEP_CAPS/NO_SETUID_FIXUP, leaving uid 0 for all three uids clears the
    // permitted and effective sets; this is verified below rather than assumed.
    // SAFETY: as above.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(PrivilegeError::Uid(uid, io::Error::last_os_error()));
    }
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map_err(PrivilegeError::NoNewPrivs)?;
    verify(uid, gid)
}

/// Checks ids, groups, capability sets and no_new_privs.
fn verify(uid: u32, gid: u32) -> Result<(), PrivilegeError> {
    let mut problems = Vec::new();
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: the three pointers are valid, writable u32s.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    if (r, e, s) != (uid, uid, uid) {
        problems.push(format!("uids {r}/{e}/{s}"));
    }
    // SAFETY: as above.
    unsafe { libc::getresgid(&mut r, &mut e, &mut s) };
    if (r, e, s) != (gid, gid, gid) {
        problems.push(format!("gids {r}/{e}/{s}"));
    }
    // SAFETY: size 0 asks only for the number of supplementary groups; nothing is written.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if n != 0 {
        problems.push(format!("{n} supplementary groups"));
    }
    let caps = capget().map_err(PrivilegeError::Capget)?;
    for (name, get) in [
        (
            "effective",
            (|d: &CapData| d.effective) as fn(&CapData) -> u32,
        ),
        ("permitted", |d| d.permitted),
        ("inheritable", |d| d.inheritable),
    ] {
        let v = (u64::from(get(&caps[1])) << 32) | u64::from(get(&caps[0]));
        if v != 0 {
            problems.push(format!("{name} capabilities {v:016x}"));
        }
    }
    let mut cap = 0;
    while let Ok(v) = prctl(libc::PR_CAPBSET_READ, cap) {
        if v != 0 {
            problems.push(format!("capability {cap} in the bounding set"));
        }
        cap += 1;
    }
    if prctl(libc::PR_GET_NO_NEW_PRIVS, 0).map_or(true, |v| v != 1) {
        problems.push("no_new_privs not set".into());
    }
    // SAFETY: setuid(0) must fail now; if it does not, we report it (and do not continue).
    if unsafe { libc::setuid(0) } == 0 {
        problems.push("setuid(0) still succeeds".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError::Remaining(problems.join(", ")))
    }
}
