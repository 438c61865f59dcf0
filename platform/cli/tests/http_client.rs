//! The HTTP client against the stand-in daemon: Unix socket and TCP, JSON bodies, error bodies,
//! NDJSON streams, chunked text, and the Upgrade handshake (agent and ports).

mod common;

use hyper::Method;
use tartarus_cli::client::{error_from_body, ApiClient, Body, ClientError, Endpoint};
use tartarus_types::{BuildEvent, ExecEvent, ExecRequest, Health, List, Sandbox};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn unix(s: &common::StandIn) -> ApiClient {
    ApiClient::new(Endpoint::parse(&s.unix_host()).unwrap(), None)
}

#[tokio::test]
async fn get_over_unix_and_tcp() {
    let s = common::start();
    let h: Health = unix(&s).get("/health").await.unwrap();
    assert_eq!((h.status.as_str(), h.sandboxes), ("ok", 1));
    let tcp = ApiClient::new(Endpoint::parse(&s.tcp_host()).unwrap(), None);
    let l: List<Sandbox> = tcp.get("/sandboxes").await.unwrap();
    assert_eq!(l.items.len(), 2);
    assert_eq!(l.items[0].id, "sb-000000000001");
}

#[tokio::test]
async fn api_key_is_sent_as_bearer() {
    let s = common::start();
    let c = ApiClient::new(Endpoint::parse(&s.unix_host()).unwrap(), Some("k3y".into()));
    let _: Health = c.get("/health").await.unwrap();
    let r = s.last("GET", "/health").unwrap();
    assert_eq!(r.authorization.as_deref(), Some("Bearer k3y"));
    let _: Health = unix(&s).get("/health").await.unwrap();
    assert_eq!(s.last("GET", "/health").unwrap().authorization, None);
}

#[tokio::test]
async fn error_body_becomes_message() {
    let s = common::start();
    let err = unix(&s)
        .get::<Sandbox>("/sandboxes/sb-missing")
        .await
        .unwrap_err();
    match &err {
        ClientError::Api {
            status,
            code,
            message,
        } => {
            assert_eq!((*status, code.as_str()), (404, "not_found"));
            assert_eq!(message, "No sandbox sb-missing");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.to_string(), "No sandbox sb-missing");
    // A body that is not the API's error shape still gives a message.
    let err = unix(&s)
        .bytes(Method::GET, "/plain-error")
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "the daemon answered 500: boom");
}

#[test]
fn error_from_empty_body() {
    let e = error_from_body(hyper::StatusCode::SERVICE_UNAVAILABLE, b"");
    assert_eq!(e.to_string(), "the daemon answered 503 Service Unavailable");
    let e = error_from_body(
        hyper::StatusCode::TOO_MANY_REQUESTS,
        br#"{"error":{"code":"limit_exceeded","message":"Too many sandboxes"}}"#,
    );
    assert_eq!(e.api_code(), Some("limit_exceeded"));
}

#[tokio::test]
async fn connect_error_names_the_host() {
    let c = ApiClient::new(Endpoint::Unix("/nonexistent/tartarusd.sock".into()), None);
    let err = c.get::<Health>("/health").await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }));
    assert!(
        err.to_string()
            .contains("unix:///nonexistent/tartarusd.sock"),
        "{err}"
    );
}

#[tokio::test]
async fn post_json_and_delete() {
    let s = common::start();
    let c = unix(&s);
    let req = tartarus_types::CreateSandbox {
        template: Some("base".into()),
        ..Default::default()
    };
    let sb: Sandbox = c
        .json(Method::POST, "/sandboxes", Some(&req))
        .await
        .unwrap();
    assert_eq!(sb.id, "sb-000000000001");
    let r = s.last("POST", "/sandboxes").unwrap();
    let sent: tartarus_types::CreateSandbox = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(sent, req);
    c.call(Method::DELETE, "/sandboxes/sb-1?grace_s=2", Body::Empty)
        .await
        .unwrap();
    assert!(s.last("DELETE", "/sandboxes/sb-1?grace_s=2").is_some());
}

#[tokio::test]
async fn ndjson_exec_stream() {
    let s = common::start();
    let req = ExecRequest {
        argv: vec!["exit".into(), "3".into()],
        stream: true,
        ..Default::default()
    };
    let mut st = unix(&s)
        .stream(Method::POST, "/sandboxes/sb-1/exec", Some(&req))
        .await
        .unwrap();
    let mut events = Vec::new();
    while let Some(e) = st.next_json::<ExecEvent>().await.unwrap() {
        events.push(e);
    }
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(events[0], ExecEvent::Started { pid: 7 });
    assert!(matches!(&events[1], ExecEvent::Stdout { data } if data.starts_with("argv=exit 3")));
    assert!(matches!(
        events[3],
        ExecEvent::Exit {
            exit_code: Some(3),
            ..
        }
    ));
}

#[tokio::test]
async fn ndjson_build_stream() {
    let s = common::start();
    let spec = serde_json::json!({"name": "base", "kernel": "/k", "rootfs": "/r"});
    let mut st = unix(&s)
        .stream(Method::POST, "/templates", Some(&spec))
        .await
        .unwrap();
    let mut kinds = Vec::new();
    while let Some(e) = st.next_json::<BuildEvent>().await.unwrap() {
        kinds.push(match e {
            BuildEvent::Progress { step, .. } => format!("progress{step}"),
            BuildEvent::Log { .. } => "log".into(),
            BuildEvent::Done { template } => format!("done:{}", template.name),
            BuildEvent::Error { .. } => "error".into(),
        });
    }
    assert_eq!(kinds, ["progress1", "log", "progress2", "done:base"]);
}

#[tokio::test]
async fn lines_split_across_chunks() {
    let s = common::start();
    let mut st = unix(&s)
        .stream(
            Method::GET,
            "/sandboxes/sb-1/logs?follow=false",
            None::<&()>,
        )
        .await
        .unwrap();
    let mut lines = Vec::new();
    while let Some(l) = st.next_line().await.unwrap() {
        lines.push(String::from_utf8(l).unwrap());
    }
    assert_eq!(lines, ["boot line 1", "boot line 2"]);
}

#[tokio::test]
async fn upgrade_to_the_agent() {
    let s = common::start();
    let mut io = unix(&s).upgrade("/sandboxes/sb-1/agent").await.unwrap();
    // Speak the agent protocol by hand on the async stream: hello, then ping.
    let mut frame = Vec::new();
    guest_init::protocol::write_frame(
        &mut frame,
        &guest_init::protocol::Request::Hello {
            min_version: 1,
            max_version: 1,
            client: "test".into(),
        },
        &[],
    )
    .unwrap();
    io.write_all(&frame).await.unwrap();
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await.unwrap();
    let mut rest = vec![0u8; u32::from_be_bytes(len) as usize];
    io.read_exact(&mut rest).await.unwrap();
    let mut whole = len.to_vec();
    whole.extend_from_slice(&rest);
    let f: guest_init::protocol::Frame<guest_init::protocol::Response> =
        guest_init::protocol::read_frame(&mut &whole[..]).unwrap();
    assert!(matches!(
        f.msg,
        guest_init::protocol::Response::Hello { version: 1, .. }
    ));
}

#[tokio::test]
async fn upgrade_to_a_port_echoes() {
    let s = common::start();
    let mut io = unix(&s).upgrade("/sandboxes/sb-1/ports/80").await.unwrap();
    io.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn upgrade_refused_is_an_api_error() {
    let s = common::start();
    let err = unix(&s)
        .upgrade("/sandboxes/sb-missing/agent")
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "No sandbox sb-missing");
    // A plain 200 is not an upgrade.
    let err = unix(&s).upgrade("/health").await.unwrap_err();
    assert!(matches!(err, ClientError::NoUpgrade(200)), "{err:?}");
}

#[test]
fn endpoints() {
    assert_eq!(
        Endpoint::parse("unix:///run/t.sock").unwrap(),
        Endpoint::Unix("/run/t.sock".into())
    );
    assert_eq!(
        Endpoint::parse("/run/t.sock").unwrap(),
        Endpoint::Unix("/run/t.sock".into())
    );
    assert_eq!(
        Endpoint::parse("http://127.0.0.1:7070").unwrap(),
        Endpoint::Tcp("127.0.0.1:7070".into())
    );
    assert_eq!(
        Endpoint::parse("http://localhost:7070/").unwrap(),
        Endpoint::Tcp("localhost:7070".into())
    );
    let https = Endpoint::parse("https://tartarus.example.com:7443").unwrap();
    assert_eq!(https, Endpoint::Https("tartarus.example.com:7443".into()));
    assert!(https.is_tls());
    assert_eq!(https.to_string(), "https://tartarus.example.com:7443");
    assert!(Endpoint::parse("https://host").is_err());
    assert!(Endpoint::parse("https://host:7443/path").is_err());
    for bad in [
        "unix://rel.sock",
        "http://host",
        "ftp://x:1",
        "http://h:1/path",
        "",
    ] {
        assert!(Endpoint::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(
        Endpoint::parse("http://127.0.0.1:7070")
            .unwrap()
            .to_string(),
        "http://127.0.0.1:7070"
    );
}
