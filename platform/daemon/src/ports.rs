//! Port forwarding: the agent's `connect {port}` request (protocol v2) turns an agent
//! connection into a raw byte pipe to 127.0.0.1:port inside the guest.

use std::os::unix::net::UnixStream;

use guest_init::client::Client;

use crate::daemon::agent_error;
use crate::error::ApiError;

/// The agent protocol version that has `connect`.
pub const PORTS_VERSION: u32 = 2;

/// Asks the agent on `c` to connect to guest port `port`; returns the raw stream.
pub fn open(c: Client<UnixStream>, port: u16) -> Result<UnixStream, ApiError> {
    if c.version() < PORTS_VERSION {
        return Err(ApiError::Unavailable(format!(
            "The sandbox's agent speaks protocol {}; port forwarding needs {PORTS_VERSION}",
            c.version()
        )));
    }
    c.connect_port(port).map_err(agent_error)
}
