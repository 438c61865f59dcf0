//! `tartarus-audit`: the platform's tamper-evident audit log (Hermes) and its syslog
//! forwarder (Epimetheus). See the crate's README for the formats and guarantees.
//!
//! The daemon's side, in short:
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use tartarus_audit::*;
//! let (log, report) = AuditLog::open(LogConfig::new("/var/lib/tartarus/audit.log", "/var/lib/tartarus/audit.key"))?;
//! for r in &report.repairs { eprintln!("audit log: {r}"); }
//! let fwd = Forwarder::start(
//!     ForwarderConfig::new(log.path(), "/var/lib/tartarus/audit.cursor", Transport::Relp("127.0.0.1:2514".into())),
//!     Some(log.subscribe()),
//! )?;
//! let ev = AuditEvent::now("req-1", "acme", "alice", "sandbox.create", "sandbox/sb-1", Outcome::Ok, "unix");
//! let appended = log.append(ev).await?; // durable when this returns
//! let health = fwd.health();            // lag, backlog, sent, failed, last error...
//! fwd.stop().await?;
//! log.close()?;
//! # let _ = (appended, health); Ok(()) }
//! ```

pub mod checkpoint;
pub mod cursor;
pub mod event;
pub mod forwarder;
#[cfg(feature = "harness")]
pub mod harness;
pub mod log;
pub mod reader;
pub mod relp;
pub mod syslog;
pub mod tls;
pub mod verify;

pub use checkpoint::{load_or_create_key, load_public_key, public_key_path, Checkpoint, KeyError};
pub use cursor::{Cursor, CursorError};
pub use ed25519_dalek::VerifyingKey;
pub use event::{AuditEvent, Outcome, Record, Timestamp, GENESIS};
pub use forwarder::{ForwardError, Forwarder, ForwarderConfig, Health, Transport};
pub use log::{Appended, AuditLog, LogConfig, LogError, OpenReport, Repair};
pub use reader::{query, Filter, ReadError};
pub use syslog::{MsgFormat, SyslogFormat};
pub use tls::{TlsConfig, TlsError};
pub use verify::{verify, verify_with, Problem, VerifyError, VerifyOptions, VerifyReport};
