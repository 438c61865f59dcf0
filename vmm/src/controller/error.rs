//! One error type for every API action, and the one place it becomes an HTTP status.
//!
//! A request the caller can fix (bad input, wrong state, a path that does not open) is a 400
//! with a message naming the problem; a failure of the VMM or the host (KVM refused, a vCPU
//! thread gone, a response that cannot be serialised) is a 500. The message is the error and
//! all of its sources, so the caller sees the cause the host gave.

use api::models::VmmResponse;

use crate::builder::{BuildError, ContextError};
use crate::error::error_chain;
use crate::lifecycle::VmState;
use crate::logger::LoggerError;
use crate::metrics::MetricsError;
use crate::persist::{CreateError, LoadError};
use crate::vcpu::VcpuError;
use crate::virtio::block::DriveError;
use crate::virtio::net::NetError;
use crate::virtio::vsock::VsockError;

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("{what} is not allowed in state {state}: it is accepted {when}")]
    NotAllowed {
        what: &'static str,
        state: VmState,
        when: &'static str,
    },
    /// A body the API's own validation refused (its message names the field).
    #[error("{0}")]
    Invalid(String),
    #[error("Invalid boot-source: {field} '{path}' cannot be accessed")]
    BootFileAccess {
        field: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Invalid boot-source: {field} '{path}' is not a regular file")]
    BootFileKind { field: &'static str, path: String },
    #[error("Invalid boot-source: {field} '{path}' cannot be opened")]
    BootFileOpen {
        field: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Invalid boot-source: boot_args")]
    BootArgs(#[source] BuildError),
    #[error(transparent)]
    Drive(#[from] DriveError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error("Invalid logger configuration")]
    Logger(#[source] LoggerError),
    #[error("Invalid metrics configuration")]
    Metrics(#[source] MetricsError),
    #[error("Cannot flush metrics: the metrics file is not configured (PUT /metrics first)")]
    MetricsNotConfigured,
    #[error("Cannot flush metrics")]
    FlushMetrics(#[source] MetricsError),
    /// An action that needs a microVM (the state table normally refuses it earlier).
    #[error("{0}")]
    NoMicroVm(&'static str),
    #[error("Cannot start microVM")]
    Start(#[source] BuildError),
    #[error("Cannot start microVM")]
    StartContext(#[source] ContextError),
    #[error("Cannot pause the microVM")]
    Pause(#[source] VcpuError),
    #[error("Cannot resume the microVM")]
    Resume(#[source] VcpuError),
    #[error("Cannot create snapshot")]
    CreateSnapshot(#[source] Box<CreateError>),
    #[error("Cannot load snapshot")]
    LoadSnapshot(#[source] Box<LoadError>),
    /// The guest has not drained its keyboard buffer.
    #[error("Cannot send Ctrl-Alt-Del: {0}")]
    CtrlAltDel(&'static str),
    #[error("Cannot serialise the response")]
    Serialise(#[source] serde_json::Error),
}

impl ActionError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        use ActionError::*;
        match self {
            Start(e) if e.is_internal() => 500,
            LoadSnapshot(e) if matches!(&**e, LoadError::Build(b) if b.is_internal()) => 500,
            CreateSnapshot(e) if e.is_internal() => 500,
            LoadSnapshot(e) if matches!(&**e, LoadError::Context(ContextError::EventFd(_))) => 500,
            StartContext(ContextError::EventFd(_))
            | Pause(_)
            | Resume(_)
            | FlushMetrics(_)
            | Serialise(_) => 500,
            _ => 400,
        }
    }

    /// The response: the status and the error with its causes.
    pub fn response(&self) -> VmmResponse {
        VmmResponse::Error(self.status(), error_chain(self))
    }
}
