//! The agent gives every exec tartarus-init's GLIBC_TUNABLES guard (guest_init::xstate), also
//! with `clear_env` and ahead of the client's own tunables. Its own test binary: the guard is
//! process-wide.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use guest_init::agent::Agent;
use guest_init::client::Client;
use guest_init::protocol::ExecSpec;
use guest_init::reaper::Reaper;
use guest_init::xstate::{self, GLIBC_SSE_ONLY};

fn tunables_seen(c: &mut Client<UnixStream>, spec: ExecSpec) -> String {
    let out = c.start_exec(&spec, &[]).unwrap().collect().unwrap();
    assert_eq!(out.code, Some(0));
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

#[test]
fn execs_get_the_guard_whatever_their_environment() {
    xstate::set_guard(Some(GLIBC_SSE_ONLY));
    assert_eq!(xstate::guard(), Some(GLIBC_SSE_ONLY));
    let agent = Agent::new(Reaper::per_child());
    let (a, b) = UnixStream::pair().unwrap();
    std::thread::spawn(move || agent.handle_connection(b));
    a.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut c = Client::new(a).unwrap();
    let echo = || ExecSpec::new(["sh", "-c", "echo \"$GLIBC_TUNABLES\""]);

    let mut spec = echo();
    spec.clear_env = true;
    assert_eq!(tunables_seen(&mut c, spec), GLIBC_SSE_ONLY);

    let mut spec = echo();
    spec.env
        .insert("GLIBC_TUNABLES".into(), "glibc.malloc.check=3".into());
    assert_eq!(
        tunables_seen(&mut c, spec),
        format!("{GLIBC_SSE_ONLY}:glibc.malloc.check=3")
    );

    let mut spec = echo();
    spec.clear_env = true;
    spec.env
        .insert("GLIBC_TUNABLES".into(), "glibc.malloc.check=3".into());
    assert_eq!(
        tunables_seen(&mut c, spec),
        format!("{GLIBC_SSE_ONLY}:glibc.malloc.check=3")
    );
}
