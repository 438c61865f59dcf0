//! Tartarus guest side: `tartarus-init` (PID 1 of a Linux guest), the agent it serves on vsock,
//! and the host-side client of that agent.
//!
//! The wire protocol is in [`protocol`] and specified in `guest-init/README.md`. The agent's serve
//! loop ([`agent::Agent::serve`]) runs on any [`agent::Listener`]: AF_VSOCK in the guest, a Unix
//! socket or TCP in tests. The client ([`client::Client`]) runs over any `Read + Write` stream;
//! [`client::connect_hybrid_vsock`] opens one through a VMM's vsock Unix socket.

pub mod agent;
pub mod client;
pub mod cmdline;
mod exec;
mod forward;
pub mod init;
pub mod protocol;
pub mod pty;
pub mod reaper;
pub mod user;
pub mod vsock;
pub mod xstate;

/// The vsock port the agent listens on unless `tartarus.agent_port=` says otherwise.
pub const DEFAULT_AGENT_PORT: u32 = 52;
