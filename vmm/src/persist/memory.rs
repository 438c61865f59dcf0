//! The VMM's use of the snapshot crate: writing memory and state files from a running microVM,
//! and opening guest memory for a restore from the backend the load request names.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use api::models::{MemBackend, MemBackendType, PrefetchConfig};
use devices::GuestMemoryMmap;
use kvm_ioctls::VmFd;
use snapshot::{MemoryLayout, PageServer, RecordConfig, ServerConfig};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::persist::file::MicroVmState;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotMemoryError {
    #[error("cannot read KVM's dirty log of slot {0}")]
    DirtyLog(usize, #[source] kvm_ioctls::Error),
    #[error(transparent)]
    File(#[from] snapshot::MemError),
    #[error(transparent)]
    State(#[from] snapshot::StateError),
    #[error(transparent)]
    Uffd(#[from] snapshot::UffdError),
    #[error(
        "prefetch needs the VMM's own page server: give the memory file as backend_path, not a \
         handler socket"
    )]
    PrefetchNeedsServer,
    #[error("cannot prefetch {0}")]
    Prefetch(String, #[source] snapshot::ServerError),
    #[error("working-set recording failed")]
    Record(#[source] snapshot::ServerError),
}

type Result<T> = std::result::Result<T, SnapshotMemoryError>;

/// Keeps whatever serves restored guest memory alive for as long as the microVM runs.
pub enum MemoryBackendHandle {
    /// Private mapping of the memory file: nothing to keep.
    File,
    /// The VMM's own page-server thread.
    Server {
        server: PageServer,
        /// Record the working set for this long after the first resume.
        record_for: Option<Duration>,
    },
    /// An external handler serves faults; the uffd and the connection must stay open.
    External {
        _uffd: userfaultfd::Uffd,
        _conn: UnixStream,
    },
}

impl MemoryBackendHandle {
    /// How long to record after the first resume, if this restore records.
    pub fn record_for(&self) -> Option<Duration> {
        match self {
            MemoryBackendHandle::Server { record_for, .. } => *record_for,
            _ => None,
        }
    }

    /// Ends working-set recording (writing the set to its file); a no-op when not recording.
    pub fn stop_recording(&mut self) -> Result<()> {
        if let MemoryBackendHandle::Server { server, record_for } = self {
            if record_for.take().is_some() {
                let set = server
                    .stop_recording()
                    .map_err(SnapshotMemoryError::Record)?;
                if let Some(ws) = set {
                    tracing::info!("working set recorded: {} runs", ws.runs.len());
                }
            }
        }
        Ok(())
    }
}

/// Guest memory opened for a restore, with what serves it.
pub struct OpenedMemory {
    pub mem: GuestMemoryMmap,
    pub backend: MemoryBackendHandle,
}

pub fn memory_layout(mem: &GuestMemoryMmap) -> MemoryLayout {
    MemoryLayout::of(mem)
}

/// KVM's dirty bitmaps, one per memory slot in guest-address order (reading them clears them).
fn dirty_logs(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<Vec<Vec<u64>>> {
    mem.iter()
        .enumerate()
        .map(|(slot, region)| {
            vm.get_dirty_log(slot as u32, region.len() as usize)
                .map_err(|e| SnapshotMemoryError::DirtyLog(slot, e))
        })
        .collect()
}

/// Writes all of guest memory. With dirty tracking on, KVM's log is reset so the next Diff
/// holds only what changed after this snapshot.
pub fn write_full_memory(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    path: &str,
    track_dirty: bool,
) -> Result<()> {
    let stats = snapshot::write_full(mem, Path::new(path))?;
    if track_dirty {
        dirty_logs(vm, mem)?;
    }
    tracing::debug!("full memory snapshot: {stats:?}");
    Ok(())
}

/// Writes the pages dirtied since the last snapshot onto the base memory file at `path`.
pub fn write_diff_memory(vm: &VmFd, mem: &GuestMemoryMmap, path: &str) -> Result<()> {
    let logs = dirty_logs(vm, mem)?;
    let stats = snapshot::write_diff(mem, &logs, Path::new(path))?;
    tracing::debug!("diff memory snapshot: {stats:?}");
    Ok(())
}

/// Writes the state file (atomically; after the memory file).
pub fn write_state(path: &str, state: &MicroVmState) -> Result<()> {
    Ok(snapshot::write_state_file(Path::new(path), state)?)
}

fn is_socket(path: &str) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// Opens guest memory for `state` from `backend`, prefetching or recording as asked.
pub fn open_memory(
    state: &MicroVmState,
    backend: &MemBackend,
    prefetch: Option<&PrefetchConfig>,
) -> Result<OpenedMemory> {
    let layout = &state.memory;
    let path = Path::new(&backend.backend_path);
    match backend.backend_type {
        MemBackendType::File => {
            let mem = snapshot::restore_file(path, layout)?;
            Ok(OpenedMemory {
                mem,
                backend: MemoryBackendHandle::File,
            })
        }
        MemBackendType::Uffd if is_socket(&backend.backend_path) => {
            if prefetch.is_some() {
                return Err(SnapshotMemoryError::PrefetchNeedsServer);
            }
            let ext = snapshot::restore_uffd_external(layout, path)?;
            Ok(OpenedMemory {
                mem: ext.mem,
                backend: MemoryBackendHandle::External {
                    _uffd: ext.uffd,
                    _conn: ext.conn,
                },
            })
        }
        MemBackendType::Uffd => {
            let record = prefetch.filter(|p| p.record);
            let config = ServerConfig {
                record: record.map(|p| RecordConfig {
                    path: Some(p.working_set_path.clone().into()),
                    timeout: None,
                }),
                ..Default::default()
            };
            let restored = snapshot::restore_uffd_in_process(layout, path, config)?;
            if let Some(p) = prefetch.filter(|p| !p.record) {
                let stats = restored
                    .server
                    .prefetch_file(Path::new(&p.working_set_path))
                    .map_err(|e| SnapshotMemoryError::Prefetch(p.working_set_path.clone(), e))?;
                tracing::info!("prefetched the working set: {stats:?}");
            }
            let record_for = record.map(|p| Duration::from_millis(p.record_ms.unwrap_or(1000)));
            Ok(OpenedMemory {
                mem: restored.mem,
                backend: MemoryBackendHandle::Server {
                    server: restored.server,
                    record_for,
                },
            })
        }
    }
}
