//! `port-forward ID HOSTPORT:GUESTPORT`: a host listener whose every connection is piped to a
//! guest port through `GET /sandboxes/{id}/ports/{port}` (an HTTP upgrade).

use tokio::net::TcpListener;

use super::{CmdError, Ctx};
use crate::cli::PortForwardArgs;
use crate::client::encode_segment;

pub async fn run(ctx: &Ctx, a: PortForwardArgs) -> Result<i32, CmdError> {
    let (host_port, guest_port) = a.ports;
    let addr = if a.address.contains(':') && !a.address.starts_with('[') {
        format!("[{}]:{host_port}", a.address)
    } else {
        format!("{}:{host_port}", a.address)
    };
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(CmdError::io(format!("cannot listen on {addr}")))?;
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
    let path = format!("/sandboxes/{}/ports/{guest_port}", encode_segment(&a.id));
    // Fail early when the daemon or the sandbox is not there.
    let _: serde_json::Value = ctx
        .client
        .get(&format!("/sandboxes/{}", encode_segment(&a.id)))
        .await?;
    eprintln!("forwarding {local} -> {}:{guest_port} (Ctrl-C stops)", a.id);
    loop {
        let (mut tcp, peer) = tokio::select! {
            r = listener.accept() => r.map_err(CmdError::io("accept"))?,
            _ = tokio::signal::ctrl_c() => return Ok(0),
        };
        let client = ctx.client.clone();
        let path = path.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            match client.upgrade(&path).await {
                Ok(mut up) => {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut up).await;
                }
                Err(e) => eprintln!("tartarus: connection from {peer}: {e}"),
            }
        });
    }
}
