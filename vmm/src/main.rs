//! The `tartarus-vmm` binary: command line, logger, API thread and the VMM event loop.

use std::path::PathBuf;
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};

use api::models::{LogLevel, MetricsConfig, VmConfig, VmmAction, VmmResponse};
use api::ApiServer;
use clap::Parser;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use seccomp::{Filters, ThreadKind};
use vmm::controller::{ApiLink, SerialOut, Vmm};
use vmm::error::error_chain;
use vmm::logger::{self, LogSettings};
use vmm::vcpu::install_seccomp;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Largest API request body accepted unless told otherwise (Firecracker's default).
const DEFAULT_MAX_PAYLOAD: usize = 51200;

#[derive(Parser, Debug)]
#[command(
    name = "tartarus-vmm",
    version,
    about = "Tartarus microVM monitor: one KVM microVM per process, driven by a \
             Firecracker-compatible HTTP API on a Unix socket."
)]
struct Args {
    /// Path of the API Unix socket (must not exist yet).
    #[arg(long, value_name = "PATH", default_value = "/run/tartarus.socket")]
    api_sock: PathBuf,
    /// Boot from this JSON file (the shape of GET /vm/config; see README "The config file").
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// Serve no API; requires --config-file.
    #[arg(long, requires = "config_file")]
    no_api: bool,
    /// Identifier of this microVM.
    #[arg(long, default_value = "anonymous-instance")]
    id: String,
    /// Off, Error, Warning, Info, Debug or Trace (Firecracker's spelling --level works too).
    #[arg(long, visible_alias = "level", value_name = "LEVEL", default_value = "Warning",
          value_parser = parse_level)]
    log_level: LogLevel,
    /// Log only the events of this module (a tracing target such as vmm::controller).
    #[arg(long, value_name = "MODULE")]
    module: Option<String>,
    /// Prefix log lines with their level (the default).
    #[arg(long)]
    show_level: bool,
    /// Prefix log lines with the file and line that logged them.
    #[arg(long)]
    show_log_origin: bool,
    /// Write metrics to this file, as PUT /metrics does.
    #[arg(long, value_name = "PATH")]
    metrics_path: Option<String>,
    /// Firecracker's boot-time measurement device: accepted and ignored (logged).
    #[arg(long)]
    boot_timer: bool,
    /// Firecracker's process start time stamps (set by its jailer): accepted and ignored.
    #[arg(long, value_name = "US")]
    start_time_us: Option<u64>,
    /// Accepted and ignored (Firecracker's start-up timing).
    #[arg(long, value_name = "US")]
    start_time_cpu_us: Option<u64>,
    /// Accepted and ignored (Firecracker's start-up timing).
    #[arg(long, value_name = "US")]
    parent_cpu_time_us: Option<u64>,
    /// Firecracker's MMDS data store limit: accepted and ignored (Tartarus has no MMDS).
    #[arg(long, value_name = "BYTES")]
    mmds_size_limit: Option<usize>,
    /// Print the snapshot format version this VMM writes and exit.
    #[arg(long, exclusive = true)]
    snapshot_version: bool,
    /// Refused: Tartarus has no PCI bus, its devices are virtio-mmio only.
    #[arg(long)]
    enable_pci: bool,
    /// Write the log here instead of stderr.
    #[arg(long, value_name = "FILE")]
    log_path: Option<String>,
    /// Write the guest's serial output here instead of stdout.
    #[arg(long, value_name = "FILE")]
    serial_out: Option<String>,
    /// Print a summary of a snapshot state file and exit.
    #[arg(long, value_name = "FILE", exclusive = true)]
    describe_snapshot: Option<PathBuf>,
    /// Add the PVM work-arounds to the guest kernel's command line: auto (when the host's KVM is
    /// PVM), on, or off (for kernels built as PVM guests).
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = parse_pvm)]
    pvm_workarounds: vmm::pvm::PvmMode,
    /// Create a network interface's tap device when it does not exist (needs CAP_NET_ADMIN; the
    /// tap disappears when the VMM exits). Without it a missing tap is a 400.
    #[arg(long)]
    allow_tap_create: bool,
    /// Largest API request body in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_PAYLOAD)]
    http_api_max_payload_size: usize,
    /// Run without seccomp filters (for debugging only).
    #[arg(long, conflicts_with = "seccomp_filter")]
    no_seccomp: bool,
    /// Seccomp filters from this JSON file (seccompiler's format, one filter per thread:
    /// "api", "vmm", "vcpu") instead of the built-in ones.
    #[arg(long, value_name = "FILE")]
    seccomp_filter: Option<PathBuf>,
    /// Test builds only: this thread kind (api, vmm, vcpu) calls a forbidden syscall right after
    /// installing its filter. The same as TARTARUS_SECCOMP_TRIGGER, for runs with an empty
    /// environment (the jailer clears it).
    #[cfg(feature = "seccomp-test-trigger")]
    #[arg(long, value_name = "KIND", hide = true)]
    seccomp_test_trigger: Option<ThreadKind>,
}

fn parse_pvm(s: &str) -> Result<vmm::pvm::PvmMode, String> {
    s.parse()
}

fn parse_level(s: &str) -> Result<LogLevel, String> {
    s.parse()
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Logs the Firecracker flags that are accepted but mean nothing for Tartarus.
fn log_ignored_flags(args: &Args) {
    if args.show_level {
        tracing::debug!("--show-level: log lines show their level by default");
    }
    if args.boot_timer {
        tracing::info!("--boot-timer ignored: Tartarus has no boot-timer device");
    }
    for (flag, value) in [
        ("--start-time-us", args.start_time_us),
        ("--start-time-cpu-us", args.start_time_cpu_us),
        ("--parent-cpu-time-us", args.parent_cpu_time_us),
    ] {
        if let Some(v) = value {
            tracing::info!("{flag} {v} ignored (Firecracker's start-up timing)");
        }
    }
    if let Some(limit) = args.mmds_size_limit {
        tracing::info!("--mmds-size-limit {limit} ignored: Tartarus has no MMDS");
    }
}

fn main() {
    let code = run();
    std::process::exit(code);
}

fn fail(msg: String) -> i32 {
    tracing::error!("{msg}");
    eprintln!("tartarus-vmm: {msg}");
    1
}

/// `--describe-snapshot`: version, integrity and what the snapshot holds.
fn describe_snapshot(path: &std::path::Path) -> i32 {
    let summary = match snapshot::describe(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tartarus-vmm: {}: {e}", path.display());
            return 1;
        }
    };
    let b = &summary.body;
    println!("snapshot: {}", path.display());
    println!(
        "format version: {}.{}{}",
        summary.version.0,
        summary.version.1,
        if summary.supported {
            ""
        } else {
            " (not readable by this VMM)"
        }
    );
    println!("crc: {}", if summary.crc_ok { "ok" } else { "MISMATCH" });
    println!("body: {} bytes", summary.body_len);
    let field = |v: &serde_json::Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    println!("written by: tartarus-vmm {}", field(&b["vmm_version"]));
    println!("id: {}", field(&b["id"]));
    println!("vcpus: {}", b["machine"]["vcpu_count"]);
    println!("memory: {} MiB", b["machine"]["mem_size_mib"]);
    println!("track_dirty_pages: {}", b["machine"]["track_dirty_pages"]);
    if let Some(regions) = b["memory"]["regions"].as_array() {
        for r in regions {
            println!(
                "  region guest {:#x} size {:#x} at file offset {:#x}",
                r["guest_base"].as_u64().unwrap_or(0),
                r["size"].as_u64().unwrap_or(0),
                r["file_offset"].as_u64().unwrap_or(0)
            );
        }
    }
    println!("kernel command line: {}", field(&b["cmdline"]));
    describe_devices(&b["devices"]);
    if summary.crc_ok && summary.supported {
        0
    } else {
        1
    }
}

/// The virtio device lines of `--describe-snapshot`.
fn describe_devices(devices: &serde_json::Value) {
    let list = devices.as_array().map(Vec::as_slice).unwrap_or_default();
    println!("virtio devices: {}", list.len());
    for d in list {
        let kind = &d["kind"];
        let t = &d["transport"];
        let backing = match kind["type"].as_str() {
            Some("block") => format!(
                " path {} {}{} {} {}",
                kind["path_on_host"].as_str().unwrap_or("?"),
                if kind["is_read_only"].as_bool() == Some(true) {
                    "ro"
                } else {
                    "rw"
                },
                if kind["is_root_device"].as_bool() == Some(true) {
                    " root"
                } else {
                    ""
                },
                kind["cache_type"].as_str().unwrap_or("?"),
                kind["io_engine"].as_str().unwrap_or("?"),
            ),
            Some("net") => format!(
                " tap {} mac {}",
                kind["host_dev_name"].as_str().unwrap_or("?"),
                kind["guest_mac"].as_str().unwrap_or("(guest's own)"),
            ),
            Some("vsock") => format!(
                " guest_cid {} uds_path {}",
                kind["guest_cid"],
                kind["uds_path"].as_str().unwrap_or("?"),
            ),
            _ => String::new(),
        };
        println!(
            "  {} {} at {:#x} irq {}:{backing}",
            kind["type"].as_str().unwrap_or("?"),
            d["id"].as_str().unwrap_or("?"),
            d["mmio_base"].as_u64().unwrap_or(0),
            d["irq"].as_u64().unwrap_or(0),
        );
        println!(
            "    driver status {:#x}, {}, acked features {:#x}, interrupt status {:#x}",
            t["status"].as_u64().unwrap_or(0),
            if t["activated"].as_bool() == Some(true) {
                "active"
            } else {
                "not active"
            },
            t["acked_features"].as_u64().unwrap_or(0),
            t["interrupt_status"].as_u64().unwrap_or(0),
        );
        for (i, q) in t["queues"].as_array().into_iter().flatten().enumerate() {
            println!(
                "    queue {i}: size {} ready {} next_avail {} next_used {}",
                q["size"], q["ready"], q["next_avail"], q["next_used"]
            );
        }
    }
}

fn run() -> i32 {
    // Before any thread exists: see vmm::allocator.
    if let Err(e) = vmm::allocator::use_single_arena() {
        return fail(e.to_string());
    }
    let args = Args::parse();
    if let Some(path) = &args.describe_snapshot {
        return describe_snapshot(path);
    }
    if args.snapshot_version {
        println!(
            "v{}.{}",
            snapshot::state::FORMAT_MAJOR,
            snapshot::state::FORMAT_MINOR
        );
        return 0;
    }
    if args.enable_pci {
        eprintln!(
            "tartarus-vmm: --enable-pci is not supported: Tartarus has no PCI bus, its devices \
             are virtio-mmio only (leave the flag out)"
        );
        return 2;
    }
    if !valid_id(&args.id) {
        eprintln!(
            "tartarus-vmm: invalid --id '{}': use 1-64 characters from [A-Za-z0-9_-]",
            args.id
        );
        return 2;
    }
    let file = match args
        .log_path
        .as_deref()
        .map(logger::open_log_file)
        .transpose()
    {
        Ok(f) => f,
        Err(e) => return fail(error_chain(&e)),
    };
    let settings = LogSettings {
        level: args.log_level,
        show_level: true,
        show_log_origin: args.show_log_origin,
        module: args.module.clone(),
        file,
        id: args.id.clone(),
    };
    logger::init(&settings);
    log_ignored_flags(&args);

    // Every thread installs its own filter from this set: api and vCPU threads first thing,
    // the VMM thread right before its event loop.
    let filters = if args.no_seccomp {
        Ok(Filters::disabled())
    } else if let Some(path) = &args.seccomp_filter {
        Filters::from_json_file(path)
    } else {
        Filters::built_in()
    };
    #[cfg_attr(not(feature = "seccomp-test-trigger"), allow(unused_mut))]
    let mut filters = match filters {
        Ok(f) => f,
        Err(e) => return fail(error_chain(&e)),
    };
    #[cfg(feature = "seccomp-test-trigger")]
    if let Some(kind) = args.seccomp_test_trigger {
        filters.set_trigger(kind);
    }
    tracing::info!("{}", filters.summary());
    if let Err(e) = seccomp::set_global(filters) {
        return fail(error_chain(&e));
    }

    // Bind first, so the socket accepts connections as early as possible.
    let mut server = if args.no_api {
        None
    } else {
        match ApiServer::bind(&args.api_sock, args.http_api_max_payload_size) {
            Ok(s) => Some(s),
            Err(e) => return fail(error_chain(&e)),
        }
    };
    // Removed when this (the VMM) thread returns: the api thread's filter has no statx or
    // unlink, and its server is dropped when the VMM thread's channel closes at exit.
    let _socket_file = server.as_mut().and_then(ApiServer::take_socket_file);

    let serial_out = match args.serial_out {
        Some(p) => SerialOut::File(p),
        None => SerialOut::Stdout,
    };
    let mut api_thread_parts = None;
    let link = match &server {
        Some(_) => {
            let evt = match EventFd::new(EFD_NONBLOCK) {
                Ok(e) => e,
                Err(e) => return fail(format!("Cannot create the API event: {e}")),
            };
            let (req_tx, req_rx) = channel();
            let (resp_tx, resp_rx) = channel();
            let wake = match evt.try_clone() {
                Ok(e) => e,
                Err(e) => return fail(format!("Cannot create the API event: {e}")),
            };
            api_thread_parts = Some((req_tx, resp_rx, wake));
            Some(ApiLink {
                evt,
                requests: req_rx,
                responses: resp_tx,
            })
        }
        None => None,
    };

    let mut vmm = match Vmm::new(args.id.clone(), settings, serial_out, link) {
        Ok(v) => v,
        Err(e) => return fail(error_chain(&e)),
    };

    vmm.set_pvm_mode(args.pvm_workarounds);
    vmm.set_allow_tap_create(args.allow_tap_create);
    if let Some(path) = &args.metrics_path {
        let put = VmmAction::PutMetrics(MetricsConfig {
            metrics_path: path.clone(),
        });
        if let VmmResponse::Error(_, e) = vmm.handle(put) {
            return fail(format!("--metrics-path: {e}"));
        }
    }

    if let Some(path) = &args.config_file {
        let cfg = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<VmConfig>(&t).map_err(|e| e.to_string()))
            .and_then(|c| c.validate().map(|()| c));
        let cfg = match cfg {
            Ok(c) => c,
            Err(e) => return fail(format!("Invalid config file {}: {e}", path.display())),
        };
        if let Err(e) = vmm.boot_from_config(cfg) {
            return fail(format!(
                "Cannot boot from config file {}: {e}",
                path.display()
            ));
        }
    }

    if let (Some(server), Some((tx, rx, wake))) = (server, api_thread_parts) {
        let spawned = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                if let Err(e) = install_seccomp(ThreadKind::Api) {
                    // Never serve untrusted requests unfiltered.
                    std::process::exit(fail(e));
                }
                if let Err(e) = server.run(tx, rx, wake) {
                    tracing::error!("API server stopped: {}", error_chain(&e));
                }
            });
        if let Err(e) = spawned {
            return fail(format!("Cannot start the API thread: {e}"));
        }
    }

    if let Err(e) = install_seccomp(ThreadKind::Vmm) {
        return fail(e);
    }
    event_loop(vmm)
}

fn event_loop(vmm: Vmm) -> i32 {
    let mut manager = match EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new() {
        Ok(m) => m,
        Err(e) => return fail(format!("Cannot create the event loop: {e:?}")),
    };
    let vmm = Arc::new(Mutex::new(vmm));
    manager.add_subscriber(vmm.clone());
    loop {
        let (code, subscribers) = {
            let mut v = vmm.lock().unwrap_or_else(|e| e.into_inner());
            (v.exit_code(), v.take_subscribers())
        };
        if let Some(code) = code {
            return code;
        }
        // Devices created by InstanceStart (or a restore) bring their own event handlers.
        for s in subscribers {
            manager.add_subscriber(s);
        }
        if let Err(e) = manager.run() {
            return fail(format!("Event loop failed: {e:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("vm-1_a"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(&"x".repeat(65)));
    }
}
