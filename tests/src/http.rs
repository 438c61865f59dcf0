//! A minimal HTTP/1.1 client over a Unix socket, enough to drive the Tartarus API.
//!
//! Requests are written by hand (one connection per request); responses are parsed with
//! `httparse`, and the body is read according to `Content-Length`.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// How long a single request may take before the client gives up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed HTTP response.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// The body parsed as JSON, or `None` if it was empty or not JSON.
    pub body: Option<Value>,
    /// The body as text (lossy UTF-8).
    pub text: String,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// The `fault_message` of an error body, if there is one.
    pub fn fault_message(&self) -> Option<&str> {
        self.body.as_ref()?.get("fault_message")?.as_str()
    }

    /// A header value by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} body={:?}", self.status, self.text)
    }
}

/// Builds the bytes of a request. A body, when given, is sent as `application/json`.
pub fn format_request(method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    if let Some(b) = body {
        req.push_str("Content-Type: application/json\r\n");
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    bytes
}

/// Sends one request on a fresh connection and reads the response.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> io::Result<Response> {
    raw_request(socket, &format_request(method, path, body))
}

/// Sends arbitrary bytes on a fresh connection and reads one response.
///
/// A failed write (the server may answer and close before reading an oversized body) is not
/// an error by itself: the response is still read if the server sent one.
pub fn raw_request(socket: &Path, raw: &[u8]) -> io::Result<Response> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let write_result = stream.write_all(raw).and_then(|_| stream.flush());
    match read_response(&mut stream) {
        Ok(r) => Ok(r),
        Err(read_err) => match write_result {
            Err(write_err) => Err(io::Error::new(
                write_err.kind(),
                format!("write failed ({write_err}), then read failed ({read_err})"),
            )),
            Ok(()) => Err(read_err),
        },
    }
}

/// Reads one HTTP response from `stream`.
pub fn read_response(stream: &mut impl Read) -> io::Result<Response> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed before a complete response header (got {:?})",
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);

        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let status = match resp.parse(&buf) {
            Ok(s) => s,
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "bad HTTP response ({e}): {:?}",
                        String::from_utf8_lossy(&buf)
                    ),
                ))
            }
        };
        let header_len = match status {
            httparse::Status::Partial => continue,
            httparse::Status::Complete(n) => n,
        };
        let code = resp.code.unwrap_or(0);
        let hdrs: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).trim().to_string(),
                )
            })
            .collect();
        let content_length = hdrs
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| {
                v.parse::<usize>().map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad Content-Length {v:?}"),
                    )
                })
            })
            .transpose()?;
        let mut body = buf.split_off(header_len);
        match content_length {
            Some(len) => {
                while body.len() < len {
                    let n = stream.read(&mut chunk)?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("body shorter than Content-Length {len}: got {}", body.len()),
                        ));
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
                body.truncate(len);
            }
            None if code == 204 || code == 304 || (100..200).contains(&code) => body.clear(),
            None => {
                // No length: the body runs to the end of the connection.
                stream.read_to_end(&mut body)?;
            }
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        let json = if body.iter().all(|b| b.is_ascii_whitespace()) {
            None
        } else {
            serde_json::from_slice(&body).ok()
        };
        return Ok(Response {
            status: code,
            body: json,
            text,
            headers: hdrs,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_json_body_with_content_length() {
        let raw = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 24\r\n\r\n{\"fault_message\": \"bad\"}";
        let r = read_response(&mut &raw[..]).unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.fault_message(), Some("bad"));
        assert_eq!(r.header("content-type"), Some("application/json"));
    }

    #[test]
    fn no_content_has_no_body() {
        let raw = b"HTTP/1.1 204 No Content\r\n\r\n";
        let r = read_response(&mut &raw[..]).unwrap();
        assert_eq!(r.status, 204);
        assert!(r.body.is_none());
    }

    #[test]
    fn split_reads_are_joined() {
        struct Slow<'a>(&'a [u8]);
        impl Read for Slow<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() || out.is_empty() {
                    return Ok(0);
                }
                out[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{\"a\":1}trailing";
        let r = read_response(&mut Slow(raw)).unwrap();
        assert_eq!(r.body, Some(serde_json::json!({"a": 1})));
    }

    #[test]
    fn request_bytes() {
        let b = format_request("PUT", "/actions", Some(b"{}"));
        let s = String::from_utf8(b).unwrap();
        assert!(s.starts_with("PUT /actions HTTP/1.1\r\n"));
        assert!(s.contains("Content-Length: 2\r\n"));
        assert!(s.ends_with("\r\n\r\n{}"));
    }
}
