//! `tartarus-uffd-handler`: an external userfaultfd page server speaking Firecracker's protocol.
//!
//! ```text
//! tartarus-uffd-handler --socket PATH --mem-file PATH [--chunk-size BYTES]
//!                       [--prefetch WS_FILE] [--record WS_FILE [--record-timeout-ms MS]] [--once]
//! ```
//! Listens on `--socket`; for every VMM that connects it receives the uffd and region list and
//! serves faults from `--mem-file` until that VMM closes the connection. `--prefetch` installs
//! a working set right after the uffd arrives; `--record` writes the pages faulted in to a
//! working-set file (when the timeout passes or the VMM goes away). With `--once` the handler
//! exits after its first VMM is gone. Prints one line per VMM served, on stderr.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use snapshot::server::RecordConfig;
use snapshot::{receive_from_vmm, PageServer, ServerConfig};

struct Args {
    socket: PathBuf,
    mem_file: PathBuf,
    config: ServerConfig,
    prefetch: Option<PathBuf>,
    once: bool,
}

const USAGE: &str = "usage: tartarus-uffd-handler --socket PATH --mem-file PATH \
[--chunk-size BYTES] [--prefetch WS] [--record WS [--record-timeout-ms MS]] [--once]";

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut socket, mut mem_file, mut prefetch, mut once) = (None, None, None, false);
    let mut config = ServerConfig::default();
    let mut record: Option<RecordConfig> = None;
    let mut timeout = None;
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--socket" => socket = Some(PathBuf::from(val()?)),
            "--mem-file" => mem_file = Some(PathBuf::from(val()?)),
            "--chunk-size" => {
                config.chunk_size = val()?.parse().map_err(|e| format!("--chunk-size: {e}"))?
            }
            "--prefetch" => prefetch = Some(PathBuf::from(val()?)),
            "--record" => {
                record = Some(RecordConfig {
                    path: Some(PathBuf::from(val()?)),
                    timeout: None,
                })
            }
            "--record-timeout-ms" => {
                let ms: u64 = val()?
                    .parse()
                    .map_err(|e| format!("--record-timeout-ms: {e}"))?;
                timeout = Some(Duration::from_millis(ms));
            }
            "--once" => once = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if let Some(r) = record.as_mut() {
        r.timeout = timeout;
    }
    config.record = record;
    Ok(Args {
        socket: socket.ok_or(USAGE)?,
        mem_file: mem_file.ok_or(USAGE)?,
        config,
        prefetch,
        once,
    })
}

fn serve_one(args: &Args, stream: std::os::unix::net::UnixStream) -> Result<String, String> {
    let (uffd, regions) = receive_from_vmm(&stream).map_err(|e| e.to_string())?;
    let server = PageServer::start_for_peer(
        Arc::new(uffd),
        regions,
        &args.mem_file,
        args.config.clone(),
        stream,
    )
    .map_err(|e| e.to_string())?;
    if let Some(ws) = &args.prefetch {
        server.prefetch_file(ws).map_err(|e| e.to_string())?;
    }
    let stats = server.join().map_err(|e| e.to_string())?;
    Ok(format!("{stats:?}"))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let _ = std::fs::remove_file(&args.socket);
    let listener = match UnixListener::bind(&args.socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", args.socket.display());
            return ExitCode::FAILURE;
        }
    };
    let args = Arc::new(args);
    let mut workers = Vec::new();
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let a = args.clone();
        let worker = std::thread::spawn(move || match serve_one(&a, stream) {
            Ok(stats) => {
                eprintln!("tartarus-uffd-handler: VM done: {stats}");
                true
            }
            Err(e) => {
                eprintln!("tartarus-uffd-handler: {e}");
                false
            }
        });
        if args.once {
            let ok = worker.join().unwrap_or(false);
            return if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        workers.retain(|w: &std::thread::JoinHandle<bool>| !w.is_finished());
        workers.push(worker);
    }
    ExitCode::SUCCESS
}
