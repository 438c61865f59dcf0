//! Serves the API on a socket with a stand-in VMM, to try clients against it:
//!
//! ```text
//! cargo run -p api --example fake_vmm -- /tmp/api.sock
//! curl --unix-socket /tmp/api.sock http://localhost/version
//! ```
//!
//! Every request is printed; GETs answer with fixed JSON, everything else with 204.

use std::sync::mpsc::channel;
use std::thread;

use api::models::MachineConfig;
use api::server::DEFAULT_MAX_PAYLOAD;
use api::{ApiServer, VmmAction, VmmResponse};
use vmm_sys_util::eventfd::EventFd;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/tartarus-api.sock".to_string());
    let server = ApiServer::bind(path.as_ref(), DEFAULT_MAX_PAYLOAD)?;
    let (to_vmm, requests) = channel();
    let (replies, from_vmm) = channel();
    let wake = EventFd::new(0)?;
    let vmm_wake = wake.try_clone()?;
    thread::spawn(move || {
        while vmm_wake.read().is_ok() {
            while let Ok(action) = requests.try_recv() {
                println!("{action:?}");
                let reply = match action {
                    VmmAction::GetVersion => VmmResponse::Json(serde_json::json!({
                        "firecracker_version": "1.7.0",
                        "tartarus_version": env!("CARGO_PKG_VERSION"),
                    })),
                    VmmAction::GetMachineConfig => VmmResponse::Json(
                        serde_json::to_value(MachineConfig::default()).unwrap_or_default(),
                    ),
                    _ => VmmResponse::Empty,
                };
                if replies.send(reply).is_err() {
                    return;
                }
            }
        }
    });
    println!("Serving on {path}");
    server.run(to_vmm, from_vmm, wake)?;
    Ok(())
}
