//! The page server: resolves userfaultfd faults from a memory file.
//!
//! One thread polls the uffd (plus a stop eventfd and, for external handlers, the VMM's
//! connection). For a fault it serves the aligned `chunk_size` window around the faulting page:
//! file data with `UFFDIO_COPY` straight from a read-only mapping of the memory file, holes of a
//! sparse file (looked up lazily, per served range, with `SEEK_DATA`/`SEEK_HOLE`, so starting a
//! server costs no scan of the file) with `UFFDIO_ZEROPAGE`. Pages already
//! present are skipped (tracked in a bitmap; `EEXIST` is tolerated); `UFFD_EVENT_REMOVE`
//! (balloon, `MADV_DONTNEED`) clears them again.
//!
//! In record mode the server notes every range served for a fault until recording stops (a
//! call, a timeout, or the server stopping) and then writes a [`WorkingSet`] file.
//! [`PageServer::prefetch`] installs such a set in large runs before the vCPUs resume.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use userfaultfd::{Event, EventBuffer, Uffd};
use vmm_sys_util::eventfd::EventFd;

use crate::uffd::UffdRegion;
use crate::working_set::{PrefetchStats, WorkingSet, WorkingSetError};
use crate::PAGE_SIZE;

mod pages;
use self::pages::{is_gone, Core, Fill};

/// Errors from the page server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Opening, inspecting or mapping the memory file failed.
    #[error("page server: memory file {path}: {source}")]
    MemFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The memory file is shorter than the regions it must serve.
    #[error("page server: memory file is {actual} bytes, regions need {expected}")]
    FileTooShort {
        /// Bytes needed.
        expected: u64,
        /// File size.
        actual: u64,
    },
    /// The configuration is unusable.
    #[error("page server: {0}")]
    Config(String),
    /// Creating the stop eventfd or the thread failed.
    #[error("page server: cannot start: {0}")]
    Start(#[source] io::Error),
    /// A userfaultfd ioctl failed.
    #[error("page server: {op} at {addr:#x}+{len:#x}: {source}")]
    Ioctl {
        /// Which ioctl.
        op: &'static str,
        /// Destination address.
        addr: u64,
        /// Length.
        len: u64,
        /// The error.
        source: userfaultfd::Error,
    },
    /// The server thread stopped on an error.
    #[error("page server thread failed: {0}")]
    Thread(String),
    /// Working-set file problems.
    #[error(transparent)]
    WorkingSet(#[from] WorkingSetError),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, ServerError>;

/// How the server serves faults and whether it records the working set.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Bytes served per fault: the aligned window around the faulting page, clipped to the
    /// region. A power of two, at least 4 KiB. Default 64 KiB.
    pub chunk_size: usize,
    /// Record the working set.
    pub record: Option<RecordConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            chunk_size: 64 << 10,
            record: None,
        }
    }
}

/// Working-set recording.
#[derive(Debug, Clone, Default)]
pub struct RecordConfig {
    /// Where to write the set when recording stops (`None`: only returned by
    /// [`PageServer::stop_recording`]).
    pub path: Option<PathBuf>,
    /// Stop recording this long after the server starts.
    pub timeout: Option<Duration>,
}

/// Counters, readable at any time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Page-fault events handled.
    pub faults: u64,
    /// Pages installed with UFFDIO_COPY for faults.
    pub pages_copied: u64,
    /// Pages installed with UFFDIO_ZEROPAGE for faults.
    pub pages_zeroed: u64,
    /// Bytes copied for faults.
    pub bytes_copied: u64,
    /// Pages installed by prefetch (copied or zeroed).
    pub pages_prefetched: u64,
    /// Bytes copied by prefetch.
    pub bytes_prefetched: u64,
    /// Pages found already present (EEXIST).
    pub eexist: u64,
    /// UFFD_EVENT_REMOVE events.
    pub remove_events: u64,
    /// Faults that could not be served (the thread is woken to retry).
    pub errors: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    faults: AtomicU64,
    pages_copied: AtomicU64,
    pages_zeroed: AtomicU64,
    bytes_copied: AtomicU64,
    pages_prefetched: AtomicU64,
    bytes_prefetched: AtomicU64,
    pub(crate) eexist: AtomicU64,
    remove_events: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ServerStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerStats {
            faults: l(&self.faults),
            pages_copied: l(&self.pages_copied),
            pages_zeroed: l(&self.pages_zeroed),
            bytes_copied: l(&self.bytes_copied),
            pages_prefetched: l(&self.pages_prefetched),
            bytes_prefetched: l(&self.bytes_prefetched),
            eexist: l(&self.eexist),
            remove_events: l(&self.remove_events),
            errors: l(&self.errors),
        }
    }
}

fn add(a: &AtomicU64, v: u64) {
    a.fetch_add(v, Ordering::Relaxed);
}

struct Recorder {
    ranges: Vec<(u64, u64)>,
    path: Option<PathBuf>,
    deadline: Option<Instant>,
    result: Option<std::result::Result<WorkingSet, String>>,
    active: bool,
}

struct Shared {
    core: Core,
    counters: Counters,
    recorder: Mutex<Recorder>,
    fatal: Mutex<Option<String>>,
}

/// A running page server. Dropping it stops the thread; the uffd closes when the last owner
/// drops it — from then on missing pages of the registered ranges read as zeros, so keep the
/// server alive as long as the guest memory, or call [`PageServer::hydrate`] first.
pub struct PageServer {
    shared: Arc<Shared>,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PageServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageServer")
            .field("stats", &self.stats())
            .finish()
    }
}

impl PageServer {
    /// Starts serving `regions` of `uffd` from the memory file at `mem_file`.
    pub fn start(
        uffd: Arc<Uffd>,
        regions: Vec<UffdRegion>,
        mem_file: &Path,
        config: ServerConfig,
    ) -> Result<Self> {
        Self::spawn(uffd, regions, mem_file, config, None)
    }

    /// Like [`start`](Self::start), for an external handler: the thread also exits when the
    /// VMM closes `peer` (the connection the uffd came over).
    pub fn start_for_peer(
        uffd: Arc<Uffd>,
        regions: Vec<UffdRegion>,
        mem_file: &Path,
        config: ServerConfig,
        peer: UnixStream,
    ) -> Result<Self> {
        Self::spawn(uffd, regions, mem_file, config, Some(peer))
    }

    fn spawn(
        uffd: Arc<Uffd>,
        regions: Vec<UffdRegion>,
        mem_file: &Path,
        config: ServerConfig,
        peer: Option<UnixStream>,
    ) -> Result<Self> {
        let chunk = config.chunk_size;
        if chunk < PAGE_SIZE || !chunk.is_power_of_two() {
            return Err(ServerError::Config(format!(
                "chunk size {chunk} is not a power of two >= {PAGE_SIZE}"
            )));
        }
        let core = Core::new(uffd, regions, mem_file, chunk)?;
        let active = config.record.is_some();
        let rec = config.record.unwrap_or_default();
        let recorder = Recorder {
            ranges: Vec::new(),
            path: rec.path,
            deadline: rec.timeout.map(|t| Instant::now() + t),
            result: None,
            active,
        };
        let shared = Arc::new(Shared {
            core,
            counters: Counters::default(),
            recorder: Mutex::new(recorder),
            fatal: Mutex::new(None),
        });
        let stop =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(ServerError::Start)?;
        let thread_stop = stop.try_clone().map_err(ServerError::Start)?;
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("uffd-server".into())
            .spawn(move || {
                if let Err(e) = serve_loop(&s, &thread_stop, peer) {
                    *lock(&s.fatal) = Some(e);
                }
                finish_recording(&s);
            })
            .map_err(ServerError::Start)?;
        Ok(PageServer {
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// Current counters.
    pub fn stats(&self) -> ServerStats {
        self.shared.counters.snapshot()
    }

    /// The uffd being served.
    pub fn uffd(&self) -> &Arc<Uffd> {
        &self.shared.core.uffd
    }

    /// Whether the serving thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Installs the pages of `ws` with UFFDIO_COPY / UFFDIO_ZEROPAGE in runs of at most
    /// `max_chunk` bytes (rounded down to pages; 2 MiB is a good value), skipping pages already
    /// present. Call before the vCPUs resume; faults are still served meanwhile.
    pub fn prefetch(&self, ws: &WorkingSet, max_chunk: usize) -> Result<PrefetchStats> {
        ws.check_size(self.shared.core.mem_size())?;
        let max_chunk = (max_chunk / PAGE_SIZE).max(1) * PAGE_SIZE;
        let mut st = PrefetchStats::default();
        for &(off, len) in &ws.runs {
            let mut pos = off;
            let end = (off + len).min(self.shared.core.mem_size());
            while pos < end {
                let n = (end - pos).min(max_chunk as u64);
                let fill =
                    self.shared
                        .core
                        .fill_file_range(pos, n, false, &self.shared.counters)?;
                st.pages_copied += fill.copied;
                st.pages_zeroed += fill.zeroed;
                st.pages_skipped += fill.skipped;
                st.ioctls += fill.ioctls;
                add(
                    &self.shared.counters.pages_prefetched,
                    fill.copied + fill.zeroed,
                );
                add(
                    &self.shared.counters.bytes_prefetched,
                    fill.copied * PAGE_SIZE as u64,
                );
                pos += n;
            }
        }
        Ok(st)
    }

    /// Reads the working set at `path` and [`prefetch`](Self::prefetch)es it in 2 MiB runs.
    pub fn prefetch_file(&self, path: &Path) -> Result<PrefetchStats> {
        let ws = WorkingSet::read(path)?;
        self.prefetch(&ws, 2 << 20)
    }

    /// Installs every page not yet present, so the guest never faults again. Returns pages
    /// installed.
    pub fn hydrate(&self) -> Result<u64> {
        let size = self.shared.core.mem_size();
        let mut pos = 0;
        let mut pages = 0;
        while pos < size {
            let n = (size - pos).min(2 << 20);
            let fill = self
                .shared
                .core
                .fill_file_range(pos, n, true, &self.shared.counters)?;
            pages += fill.copied + fill.zeroed;
            pos += n;
        }
        Ok(pages)
    }

    /// Stops recording now, writes the working-set file if one was configured, and returns the
    /// set (`None` if the server was not recording). Later calls return the same result.
    pub fn stop_recording(&self) -> Result<Option<WorkingSet>> {
        finish_recording(&self.shared);
        let rec = lock(&self.shared.recorder);
        match &rec.result {
            None => Ok(None),
            Some(Ok(ws)) => Ok(Some(ws.clone())),
            Some(Err(e)) => Err(ServerError::Thread(e.clone())),
        }
    }

    /// Stops the thread and returns the final counters, or the error that stopped it.
    pub fn stop(mut self) -> Result<ServerStats> {
        self.shutdown();
        if let Some(e) = lock(&self.shared.fatal).take() {
            return Err(ServerError::Thread(e));
        }
        Ok(self.stats())
    }

    /// Waits until the thread exits by itself (uffd closed, peer gone, or a fatal error).
    pub fn join(mut self) -> Result<ServerStats> {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.stop()
    }

    fn shutdown(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.stop.write(1);
            let _ = t.join();
        }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn finish_recording(s: &Shared) {
    let mut rec = lock(&s.recorder);
    if !rec.active {
        return;
    }
    rec.active = false;
    let ws = WorkingSet::from_ranges(s.core.mem_size(), std::mem::take(&mut rec.ranges));
    let res = match &rec.path {
        Some(p) => ws.write(p).map(|_| ws).map_err(|e| e.to_string()),
        None => Ok(ws),
    };
    rec.result = Some(res);
}

fn poll_fds(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<()> {
    // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd structs.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// The serving thread. Returns `Err` only for fatal errors.
fn serve_loop(
    s: &Shared,
    stop: &EventFd,
    mut peer: Option<UnixStream>,
) -> std::result::Result<(), String> {
    let uffd = &s.core.uffd;
    let mut buf = EventBuffer::new(64);
    loop {
        let deadline = {
            let rec = lock(&s.recorder);
            rec.deadline.filter(|_| rec.active)
        };
        let timeout_ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    finish_recording(s);
                    continue;
                }
                left.as_millis().clamp(1, i32::MAX as u128) as i32
            }
        };
        let mut fds = vec![pollfd(uffd.as_raw_fd()), pollfd(stop.as_raw_fd())];
        if let Some(p) = &peer {
            fds.push(pollfd(p.as_raw_fd()));
        }
        poll_fds(&mut fds, timeout_ms).map_err(|e| format!("poll: {e}"))?;
        if fds[1].revents != 0 {
            return Ok(());
        }
        if let (Some(p), Some(pfd)) = (peer.as_mut(), fds.get(2)) {
            if pfd.revents != 0 {
                let mut b = [0u8; 64];
                match p.read(&mut b) {
                    Ok(0) | Err(_) => return Ok(()),
                    Ok(_) => {}
                }
            }
        }
        if fds[0].revents & libc::POLLERR != 0 {
            return Err("userfaultfd reported POLLERR".into());
        }
        if fds[0].revents == 0 {
            continue;
        }
        let events = match uffd.read_events(&mut buf) {
            Ok(ev) => ev,
            Err(userfaultfd::Error::ReadEof) => return Ok(()),
            Err(e) => return Err(format!("reading uffd events: {e}")),
        };
        for ev in events {
            match ev {
                Ok(Event::Pagefault { addr, .. }) => {
                    if !handle_fault(s, addr as u64) {
                        return Ok(());
                    }
                }
                Ok(Event::Remove { start, end }) => {
                    add(&s.counters.remove_events, 1);
                    s.core.forget(start as u64, end as u64);
                }
                Ok(_) => {}
                Err(e) => return Err(format!("bad uffd event: {e}")),
            }
        }
    }
}

/// Serves one fault. `Ok(false)`: the guest memory is gone (VMM exited or unmapped it), stop.
fn handle_fault(s: &Shared, addr: u64) -> bool {
    add(&s.counters.faults, 1);
    let page_addr = addr & !(PAGE_SIZE as u64 - 1);
    let Some((file_off, len)) = s.core.fault_window(page_addr) else {
        // Not in any region we serve: nothing to install; wake so the thread is not stuck.
        add(&s.counters.errors, 1);
        let _ = s.core.uffd.wake(page_addr as *mut _, PAGE_SIZE);
        return true;
    };
    let res = s.core.fill_file_range(file_off, len, false, &s.counters);
    let gone = match res {
        Ok(Fill {
            ranges,
            copied,
            zeroed,
            ..
        }) => {
            add(&s.counters.pages_copied, copied);
            add(&s.counters.pages_zeroed, zeroed);
            add(&s.counters.bytes_copied, copied * PAGE_SIZE as u64);
            let mut rec = lock(&s.recorder);
            if rec.active {
                rec.ranges.extend(ranges);
            }
            false
        }
        Err(ServerError::Ioctl { source, .. }) => {
            add(&s.counters.errors, 1);
            is_gone(&source)
        }
        Err(_) => {
            add(&s.counters.errors, 1);
            false
        }
    };
    if gone {
        return false;
    }
    // Wake everything waiting in the window, served now or earlier. After a failure this makes
    // the thread fault again, which retries.
    if let Some(h) = s.core.file_to_host(file_off) {
        if let Err(e) = s.core.uffd.wake(h as *mut _, len as usize) {
            return !is_gone(&e);
        }
    }
    true
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
