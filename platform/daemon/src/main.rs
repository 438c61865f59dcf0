//! `tartarusd`: the Tartarus host daemon. It owns the sandboxes of one host: templates and their
//! ready snapshots, jailed VMMs restored from them, and a REST API on a Unix socket (and
//! optionally TCP) that the `tartarus` CLI speaks.

mod access;
mod code;
mod daemon;
mod error;
mod exec;
mod fsutil;
mod hibernate;
mod images;
mod keys;
mod listen;
mod metrics;
mod netns;
mod pool;
mod ports;
mod recover;
mod routes;
mod sandbox;
mod setup;
mod store;
mod template;
mod vmm;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;

use crate::daemon::{Config, Daemon};
use crate::error::chain;

#[derive(Parser, Debug)]
#[command(name = "tartarusd", version, about = "The Tartarus sandbox daemon")]
struct Args {
    /// Unix socket of the API (mode 0600: root is the host's admin on it).
    #[arg(long, default_value = tartarus_types::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Also serve the API on this TCP address (e.g. 127.0.0.1:7070), plain HTTP: callers
    /// need an API key or a JWT.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Allow --listen on a non-loopback address.
    #[arg(long)]
    listen_any: bool,
    /// State directory: the database, templates, snapshots, jails.
    #[arg(long, default_value = tartarus_types::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Cache of ready snapshots by content key (default: <state-dir>/cache/templates).
    #[arg(long)]
    template_cache: Option<PathBuf>,
    /// The static tartarus-vmm binary (scripts/build-static.sh).
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// The tartarus-jailer binary.
    #[arg(long)]
    jailer: Option<PathBuf>,
    /// First uid (and gid) given to sandboxes; each live sandbox gets its own.
    #[arg(long, default_value_t = 900_000)]
    uid_base: u32,
    /// Most sandboxes alive at once (creating, running or paused).
    #[arg(long, default_value_t = 256)]
    max_sandboxes: usize,
    /// Most guest memory of live sandboxes together, MiB.
    #[arg(long, default_value_t = 65_536)]
    max_memory_mib: u64,
    /// Warm pools fill only while the host has more memory available than this (MiB) and
    /// drain below it.
    #[arg(long, default_value_t = 1024)]
    pool_reserve_mib: u64,
    /// PVM guest work-arounds for booted kernels: auto (detect the host), on, off.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    pvm_workarounds: String,
    /// Kernel for templates that name none (e.g. built from an image): `make kernel`'s vmlinux.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Image cache: pulled blobs and built root file systems (default: <state-dir>/images).
    #[arg(long)]
    image_cache: Option<PathBuf>,
    /// tartarus-init, injected into root file systems made from images (default: next to
    /// this binary, else scripts/build-init.sh's output).
    #[arg(long)]
    init: Option<PathBuf>,
    /// A registry (host[:port]) spoken to over plain HTTP; loopback registries always are.
    /// Repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure_registries: Vec<String>,
    /// Largest image accepted, compressed and unpacked, in bytes (suffixes K, M, G).
    #[arg(long, default_value = "16G", value_parser = parse_size)]
    max_image_size: u64,
    /// Log filter (tracing's env-filter syntax), e.g. info or tartarusd=debug.
    #[arg(long, default_value = "info")]
    log: String,
    #[command(flatten)]
    security: setup::SecurityArgs,
}

/// The binary `name` next to this executable, else in the static build directory.
fn sibling(name: &str) -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from(format!("/usr/local/bin/{name}"))
}

/// `123`, `64K`, `512M`, `16G` → bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("'{s}': unknown size suffix '{c}' (K, M, G, T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("'{s}' is not a size (e.g. 512M, 16G)"))
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("tartarusd: {msg}");
    std::process::exit(1);
}

fn check_binary(what: &str, p: &Path) {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => {}
        _ => fail(format_args!(
            "{what} binary '{}' not found (give --{what}; scripts/build-static.sh builds it)",
            p.display()
        )),
    }
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log)
                .unwrap_or_else(|e| fail(format_args!("--log: {e}"))),
        )
        .with_writer(std::io::stderr)
        .init();
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        fail("must run as root (it starts jailers, which need root)");
    }
    if let Some(addr) = args.listen {
        if !addr.ip().is_loopback() && !args.listen_any {
            fail(format_args!(
                "--listen {addr} is not a loopback address (add --listen-any to mean it); \
                 for remote clients prefer --tls-listen"
            ));
        }
    }
    let vmm_bin = args.vmm.clone().unwrap_or_else(|| sibling("tartarus-vmm"));
    let jailer = args
        .jailer
        .clone()
        .unwrap_or_else(|| sibling("tartarus-jailer"));
    check_binary("vmm", &vmm_bin);
    check_binary("jailer", &jailer);
    let state = &args.state_dir;
    for dir in ["templates", "snapshots", "sandboxes", "jail"] {
        if let Err(e) = std::fs::create_dir_all(state.join(dir)) {
            fail(format_args!(
                "cannot create {}: {e}",
                state.join(dir).display()
            ));
        }
    }
    let _ = std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o711));
    let template_cache = args
        .template_cache
        .clone()
        .unwrap_or_else(|| state.join("cache").join("templates"));
    if let Err(e) = std::fs::create_dir_all(&template_cache) {
        fail(format_args!(
            "cannot create {}: {e}",
            template_cache.display()
        ));
    }
    let pvm = match args.pvm_workarounds.as_str() {
        "on" => true,
        "off" => false,
        _ => vmm::host_is_pvm(),
    };
    let cfg = Config {
        state_dir: state.clone(),
        template_cache,
        uid_base: args.uid_base,
        max_sandboxes: args.max_sandboxes,
        max_memory_mib: args.max_memory_mib,
        pool_reserve_mib: args.pool_reserve_mib,
        launcher: vmm::Launcher {
            jailer,
            vmm: vmm_bin,
            jail_dir: state.join("jail"),
            pvm_workarounds: pvm,
            cgroup_version: vmm::detect_cgroup_version(),
        },
        default_kernel: args.kernel.clone(),
    };
    if let Some(k) = &args.kernel {
        if !k.is_absolute() || !k.is_file() {
            fail(format_args!(
                "--kernel '{}' is not an absolute path to a file",
                k.display()
            ));
        }
    }
    let image_cache = args
        .image_cache
        .clone()
        .unwrap_or_else(|| state.join("images"));
    let image_store = tartarus_images::ImageStore::open(&image_cache)
        .unwrap_or_else(|e| fail(format_args!("image cache: {}", chain(&e))));
    image_store.blobs.clean_tmp();
    let images = images::Images {
        store: Arc::new(image_store),
        init: args
            .init
            .clone()
            .unwrap_or_else(|| sibling("tartarus-init")),
        insecure_registries: args.insecure_registries.clone(),
        max_image_size: Some(args.max_image_size),
    };
    let store = store::Store::open(&state.join("state.db"))
        .unwrap_or_else(|e| fail(format_args!("state database: {}", chain(&e))));
    let keys = args
        .security
        .keys(state)
        .unwrap_or_else(|e| fail(chain(&e)));
    // VMMs that outlive their jailer become our children, so their exits can be reaped.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(format_args!("tokio runtime: {e}")));
    rt.block_on(run(args, cfg, store, images, keys));
}

async fn run(
    args: Args,
    cfg: Config,
    store: store::Store,
    images: images::Images,
    keys: Arc<tartarus_auth::keystore::KeyStore>,
) {
    let sec = &args.security;
    let tls = sec.tls().unwrap_or_else(|e| fail(chain(&e)));
    let auth = sec
        .authenticator(keys.clone())
        .await
        .unwrap_or_else(|e| fail(chain(&e)));
    let audit = sec
        .audit(&cfg.state_dir)
        .unwrap_or_else(|e| fail(chain(&e)));
    let state_dir = cfg.state_dir.clone();
    let d = Arc::new(Daemon::new(cfg, store, images, keys, audit.clone()));
    let fwd = sec
        .forwarder(&state_dir, &audit)
        .unwrap_or_else(|e| fail(chain(&e)));
    *d.forwarder.lock().unwrap_or_else(|p| p.into_inner()) = fwd;
    template::recover(&d);
    recover::recover(&d).await;
    let _reaper = hibernate::spawn_reaper(&d);
    let _pools = pool::spawn_manager(&d);
    let gate = Arc::new(access::Gate {
        auth,
        audit,
        metrics: d.metrics.clone(),
    });
    let app = routes::router(d.clone(), gate);

    if let Some(parent) = args.socket.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if args.socket.exists() {
        if std::os::unix::net::UnixStream::connect(&args.socket).is_ok() {
            fail(format_args!(
                "another daemon answers on {}",
                args.socket.display()
            ));
        }
        let _ = std::fs::remove_file(&args.socket);
    }
    let unix = tokio::net::UnixListener::bind(&args.socket).unwrap_or_else(|e| {
        fail(format_args!(
            "cannot listen on {}: {e}",
            args.socket.display()
        ))
    });
    if let Err(e) = std::fs::set_permissions(&args.socket, std::fs::Permissions::from_mode(0o600)) {
        fail(format_args!(
            "cannot make {} root-only: {e}",
            args.socket.display()
        ));
    }
    tracing::info!("listening on {}", args.socket.display());

    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(listen::unix(unix, app.clone()));
    if let Some(addr) = args.listen {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| fail(format_args!("cannot listen on {addr}: {e}")));
        tracing::info!("listening on http://{addr}");
        servers.spawn(listen::tcp(tcp, app.clone()));
    }
    if let (Some(addr), Some(tls)) = (sec.tls_listen, tls) {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| fail(format_args!("cannot listen on {addr}: {e}")));
        tracing::info!("listening on https://{addr} (client certificates required)");
        servers.spawn(listen::mtls(tcp, app.clone(), tls));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .unwrap_or_else(|e| fail(format_args!("signal handler: {e}")));
    tokio::select! {
        r = servers.join_next() => {
            if let Some(Ok(Err(e))) = r { fail(format_args!("server: {e}")); }
        }
        _ = term.recv() => tracing::info!("SIGTERM: stopping (sandboxes keep running)"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping (sandboxes keep running)"),
    }
    let _ = std::fs::remove_file(&args.socket);
    let fwd = d.forwarder.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(f) = fwd {
        let _ = f.stop().await;
    }
}

#[cfg(test)]
mod routes_tests;

#[cfg(test)]
mod access_tests;
