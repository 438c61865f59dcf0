//! The HTTP/1.1 client of tartarusd's REST API, over a Unix socket or TCP.
//!
//! Each request opens its own connection (the daemon is local, and streams and upgrades own
//! theirs anyway). Error answers (`{"error": {"code", "message"}}`) become [`ClientError::Api`].

use std::path::PathBuf;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tartarus_types::{ErrorBody, UPGRADE_PROTOCOL};

/// The raw byte stream of an upgraded connection (`tokio::io::AsyncRead + AsyncWrite`).
pub type UpgradedIo = TokioIo<hyper::upgrade::Upgraded>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "bad daemon address '{0}': use unix:///path/to.sock, http://HOST:PORT or https://HOST:PORT"
    )]
    BadHost(String),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("TLS handshake with {host} failed: {source}")]
    Handshake {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to tartarusd at {host}: {source} (is tartarusd running?)")]
    Connect {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP error talking to tartarusd: {0}")]
    Http(#[from] hyper::Error),
    #[error("cannot build the request: {0}")]
    Request(#[from] hyper::http::Error),
    /// The API answered with an error body.
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from tartarusd: {0}")]
    Decode(String),
    #[error("the daemon did not switch protocols (status {0})")]
    NoUpgrade(u16),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// 401 or 403 when the daemon refused the caller's credentials or role.
    pub fn auth_status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } if *status == 401 || *status == 403 => Some(*status),
            _ => None,
        }
    }

    /// The API's error code, for an error answer.
    pub fn api_code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
    /// `host:port`, over TLS.
    Https(String),
}

impl Endpoint {
    /// `unix:///path`, a bare absolute path, `http://HOST:PORT`, `tcp://HOST:PORT` or
    /// `https://HOST:PORT`.
    pub fn parse(s: &str) -> Result<Self, ClientError> {
        let bad = || ClientError::BadHost(s.to_string());
        if let Some(path) = s.strip_prefix("unix://") {
            if path.starts_with('/') {
                return Ok(Endpoint::Unix(PathBuf::from(path)));
            }
            return Err(bad());
        }
        if s.starts_with('/') {
            return Ok(Endpoint::Unix(PathBuf::from(s)));
        }
        let (tls, rest) = match s.strip_prefix("https://") {
            Some(rest) => (true, rest),
            None => (
                false,
                s.strip_prefix("http://")
                    .or_else(|| s.strip_prefix("tcp://"))
                    .ok_or_else(bad)?,
            ),
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(bad());
        }
        match authority.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => Ok(if tls {
                Endpoint::Https(authority.to_string())
            } else {
                Endpoint::Tcp(authority.to_string())
            }),
            _ => Err(bad()),
        }
    }

    fn host_header(&self) -> &str {
        match self {
            Endpoint::Unix(_) => "tartarusd",
            Endpoint::Tcp(a) | Endpoint::Https(a) => a,
        }
    }

    /// Whether this address needs the TLS client.
    pub fn is_tls(&self) -> bool {
        matches!(self, Endpoint::Https(_))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "http://{a}"),
            Endpoint::Https(a) => write!(f, "https://{a}"),
        }
    }
}

/// A request body.
pub enum Body {
    Empty,
    Json(Vec<u8>),
    Raw(Bytes),
}

/// The API client.
#[derive(Debug, Clone)]
pub struct ApiClient {
    endpoint: Endpoint,
    api_key: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl ApiClient {
    /// A client of a `unix://` or `http://` endpoint (an `https://` one needs
    /// [`ApiClient::with_tls`]).
    pub fn new(endpoint: Endpoint, api_key: Option<String>) -> Self {
        ApiClient {
            endpoint,
            api_key,
            tls: None,
        }
    }

    /// Sets the TLS client configuration used for an `https://` endpoint.
    pub fn with_tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Whether a credential is sent with each request.
    pub fn has_api_key(&self) -> bool {
        self.api_key.is_some()
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let connect_err = |source| ClientError::Connect {
            host: self.endpoint.to_string(),
            source,
        };
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let s = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(connect_err)?;
                handshake(TokioIo::new(s)).await
            }
            Endpoint::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(connect_err)?;
                let _ = s.set_nodelay(true);
                handshake(TokioIo::new(s)).await
            }
            Endpoint::Https(addr) => {
                let name = crate::tls::server_name(addr)?;
                let config = match &self.tls {
                    Some(c) => c.clone(),
                    None => crate::tls::client_config(&Default::default())?,
                };
                let s = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(connect_err)?;
                let _ = s.set_nodelay(true);
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, s)
                    .await
                    .map_err(|source| ClientError::Handshake {
                        host: self.endpoint.to_string(),
                        source,
                    })?;
                handshake(TokioIo::new(tls)).await
            }
        }
    }

    fn build(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.endpoint.host_header());
        if let Some(key) = &self.api_key {
            b = b.header(AUTHORIZATION, format!("Bearer {key}"));
        }
        let body = match body {
            Body::Empty => Bytes::new(),
            Body::Json(v) => {
                b = b.header(CONTENT_TYPE, "application/json");
                Bytes::from(v)
            }
            Body::Raw(bytes) => {
                b = b.header(CONTENT_TYPE, "application/octet-stream");
                bytes
            }
        };
        Ok(b.body(Full::new(body))?)
    }

    /// Sends a request; an error status becomes [`ClientError::Api`].
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<Response<Incoming>, ClientError> {
        let req = self.build(method, path, body)?;
        let mut sender = self.connect().await?;
        let resp = sender.send_request(req).await?;
        if resp.status().is_client_error() || resp.status().is_server_error() {
            return Err(error_from(resp).await);
        }
        Ok(resp)
    }

    /// Sends `body` as JSON (when given) and decodes the JSON answer.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, ClientError> {
        let body = json_body(body)?;
        let resp = self.send(method, path, body).await?;
        let bytes = read_all(resp).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Like [`ApiClient::json`] but keeps the answer as a JSON value (for `-o json`).
    pub async fn json_value(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<serde_json::Value, ClientError> {
        self.json(method, path, body).await
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::GET, path, None::<&()>).await
    }

    /// A request whose answer has no body we need (204 and the like).
    pub async fn call(&self, method: Method, path: &str, body: Body) -> Result<(), ClientError> {
        let resp = self.send(method, path, body).await?;
        read_all(resp).await?;
        Ok(())
    }

    /// A request whose answer is raw bytes.
    pub async fn bytes(&self, method: Method, path: &str) -> Result<Bytes, ClientError> {
        let resp = self.send(method, path, Body::Empty).await?;
        read_all(resp).await
    }

    /// A request whose answer is a stream (NDJSON or chunked text).
    pub async fn stream(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<BodyStream, ClientError> {
        let resp = self.send(method, path, json_body(body)?).await?;
        Ok(BodyStream::new(resp))
    }

    /// `GET path` with `Connection: Upgrade`, `Upgrade: tartarus`; after the 101 the connection
    /// is a raw byte stream.
    pub async fn upgrade(&self, path: &str) -> Result<UpgradedIo, ClientError> {
        let mut req = self.build(Method::GET, path, Body::Empty)?;
        req.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        req.headers_mut()
            .insert(UPGRADE, HeaderValue::from_static(UPGRADE_PROTOCOL));
        let mut sender = self.connect().await?;
        let resp = sender.send_request(req).await?;
        match resp.status() {
            StatusCode::SWITCHING_PROTOCOLS => {
                let upgraded = hyper::upgrade::on(resp).await?;
                Ok(TokioIo::new(upgraded))
            }
            s if s.is_client_error() || s.is_server_error() => Err(error_from(resp).await),
            s => Err(ClientError::NoUpgrade(s.as_u16())),
        }
    }
}

async fn handshake<I>(io: I) -> Result<SendRequest<Full<Bytes>>, ClientError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

fn json_body(body: Option<&(impl Serialize + ?Sized)>) -> Result<Body, ClientError> {
    Ok(match body {
        Some(b) => {
            Body::Json(serde_json::to_vec(b).map_err(|e| ClientError::Decode(e.to_string()))?)
        }
        None => Body::Empty,
    })
}

/// The whole body of an answer.
pub async fn read_body(resp: Response<Incoming>) -> Result<Bytes, ClientError> {
    read_all(resp).await
}

async fn read_all(resp: Response<Incoming>) -> Result<Bytes, ClientError> {
    Ok(resp.into_body().collect().await?.to_bytes())
}

/// Turns an error answer into [`ClientError::Api`], with the body's message when it has one.
pub async fn error_from(resp: Response<Incoming>) -> ClientError {
    let status = resp.status();
    let bytes = read_all(resp).await.unwrap_or_default();
    error_from_body(status, &bytes)
}

/// The message of an error answer's body (`{"error": {"code", "message"}}`), else its text.
pub fn error_from_body(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => ClientError::Api {
            status: status.as_u16(),
            code: e.error.code,
            message: e.error.message,
        },
        Err(_) => {
            let text = String::from_utf8_lossy(body).trim().to_string();
            let message = if text.is_empty() {
                format!(
                    "the daemon answered {} {}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("")
                )
                .trim_end()
                .to_string()
            } else {
                format!("the daemon answered {}: {text}", status.as_u16())
            };
            ClientError::Api {
                status: status.as_u16(),
                code: "http".into(),
                message,
            }
        }
    }
}

/// A streaming answer: raw chunks, lines, or NDJSON values.
pub struct BodyStream {
    body: Incoming,
    buf: Vec<u8>,
    eof: bool,
}

impl BodyStream {
    pub fn new(resp: Response<Incoming>) -> Self {
        BodyStream {
            body: resp.into_body(),
            buf: Vec::new(),
            eof: false,
        }
    }

    /// The next chunk of data as it arrives; None at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        if !self.buf.is_empty() {
            return Ok(Some(Bytes::from(std::mem::take(&mut self.buf))));
        }
        while !self.eof {
            match self.body.frame().await {
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        if !data.is_empty() {
                            return Ok(Some(data));
                        }
                    }
                }
                None => self.eof = true,
            }
        }
        Ok(None)
    }

    /// The next line without its `\n`; the last line may lack one. None at the end.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(line));
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
            match self.body.frame().await {
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                None => self.eof = true,
            }
        }
    }

    /// The next NDJSON value (blank lines skipped); None at the end.
    pub async fn next_json<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ClientError> {
        loop {
            let Some(line) = self.next_line().await? else {
                return Ok(None);
            };
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            return serde_json::from_slice(&line).map(Some).map_err(|e| {
                ClientError::Decode(format!(
                    "bad stream line '{}': {e}",
                    String::from_utf8_lossy(&line)
                ))
            });
        }
    }
}

/// Percent-encodes a query value.
pub fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a path segment (ids and names normally need nothing).
pub fn encode_segment(s: &str) -> String {
    encode_query(s).replace('/', "%2F")
}

/// Percent-encodes a path rest that may span segments, such as an image name
/// (`127.0.0.1:5000/team/edge:latest`, `repo@sha256:...`): `/`, `:` and `@` stay, as do
/// unreserved characters; everything else (`%`, `?`, `#`, spaces, non-ASCII...) is encoded.
pub fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
