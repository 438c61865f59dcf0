//! The accept loops: the root-only Unix socket, plain TCP, and TCP with mutual TLS. Each
//! connection's [`ConnInfo`] (the peer's uid, address or verified client certificate) goes into
//! every request's extensions, where [`crate::access::gate`] reads it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tartarus_auth::layer::Transport;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tower::ServiceExt;

use crate::access::ConnInfo;

/// How long a TLS handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Serves HTTP/1.1 (with upgrades) on one accepted connection.
fn serve<IO>(io: IO, app: Router, info: ConnInfo)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(info.clone());
            app.clone().oneshot(req)
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        if let Err(e) = conn.await {
            tracing::debug!("connection: {e}");
        }
    });
}

/// The peer's uid (SO_PEERCRED).
fn peer_uid(s: &tokio::net::UnixStream) -> Option<u32> {
    s.peer_cred().ok().map(|c| c.uid())
}

pub async fn unix(listener: UnixListener, app: Router) -> std::io::Result<()> {
    loop {
        let (s, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept on the Unix socket: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let info = ConnInfo::unix(peer_uid(&s));
        serve(s, app.clone(), info);
    }
}

pub async fn tcp(listener: TcpListener, app: Router) -> std::io::Result<()> {
    loop {
        let (s, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept on TCP: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        serve(s, app.clone(), ConnInfo::tcp(peer));
    }
}

/// TCP with TLS that requires a client certificate from the configured CA (rustls checks it
/// in the handshake; a certificate of another CA never reaches the router).
pub async fn mtls(
    listener: TcpListener,
    app: Router,
    config: Arc<rustls::ServerConfig>,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (s, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept on the mTLS listener: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE, acceptor.accept(s)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::info!("TLS handshake with {peer} failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::info!("TLS handshake with {peer} timed out");
                    return;
                }
            };
            let Some(cert) = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.clone().into_owned())
            else {
                // The verifier requires one; never serve a connection without it.
                return;
            };
            let info = ConnInfo {
                transport: Transport::MtlsTcp { peer_cert: cert },
                source: peer.to_string(),
            };
            serve(tls, app, info);
        });
    }
}
