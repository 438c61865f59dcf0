//! The microVM's life cycle as data: states, the transitions between them, and which API
//! requests each state accepts.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    NotStarted,
    Running,
    Paused,
    Exited,
}

impl fmt::Display for VmState {
    /// The spelling Firecracker's `GET /` uses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmState::NotStarted => "Not started",
            VmState::Running => "Running",
            VmState::Paused => "Paused",
            VmState::Exited => "Exited",
        })
    }
}

/// The one table of valid transitions.
pub fn valid_transition(from: VmState, to: VmState) -> bool {
    use VmState::*;
    matches!(
        (from, to),
        (NotStarted, Running)
            | (NotStarted, Paused) // a snapshot restored without resuming
            | (Running, Paused)
            | (Paused, Running)
            | (NotStarted | Running | Paused, Exited)
    )
}

/// Kinds of requests, grouped by the states that accept them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Reads (GET) and logger/metrics set-up: accepted in every live state.
    Always,
    /// Machine configuration and boot source: only before InstanceStart.
    PreBoot,
    /// InstanceStart.
    Start,
    /// Requests that need a running guest (SendCtrlAltDel, pausing).
    Running,
    /// Requests that need a paused guest (resuming, creating a snapshot).
    Paused,
}

/// Whether a request of `kind` is accepted in `state`.
pub fn accepts(state: VmState, kind: RequestKind) -> bool {
    match kind {
        RequestKind::Always => state != VmState::Exited,
        RequestKind::PreBoot | RequestKind::Start => state == VmState::NotStarted,
        RequestKind::Running => state == VmState::Running,
        RequestKind::Paused => state == VmState::Paused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use VmState::*;

    #[test]
    fn transitions() {
        assert!(valid_transition(NotStarted, Running));
        assert!(valid_transition(Running, Paused));
        assert!(valid_transition(Paused, Running));
        assert!(valid_transition(Running, Exited));
        assert!(!valid_transition(Running, NotStarted));
        // A snapshot loaded without resume_vm goes straight to Paused.
        assert!(valid_transition(NotStarted, Paused));
        assert!(!valid_transition(Exited, Running));
        assert!(!valid_transition(Paused, NotStarted));
        assert!(!valid_transition(Running, Running));
    }

    #[test]
    fn acceptance() {
        assert!(accepts(NotStarted, RequestKind::PreBoot));
        assert!(!accepts(Running, RequestKind::PreBoot));
        assert!(!accepts(Running, RequestKind::Start));
        assert!(accepts(Running, RequestKind::Running));
        assert!(!accepts(NotStarted, RequestKind::Running));
        assert!(accepts(Paused, RequestKind::Paused));
        assert!(!accepts(Running, RequestKind::Paused));
        assert!(valid_transition(NotStarted, Paused));
        assert!(accepts(Paused, RequestKind::Always));
        assert_eq!(NotStarted.to_string(), "Not started");
    }
}
