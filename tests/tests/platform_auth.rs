//! Issue #14 end to end: a real `tartarusd` (no sandbox is started: its API only) with a TCP
//! listener that wants credentials, a real OIDC provider (npm oauth2-mock-server through
//! `tartarus_auth::harness`), API keys made through the root Unix socket with the real CLI, and
//! the audit trail those requests leave (`GET /audit` on the Unix socket).

use base64::Engine;
use serde_json::{json, Value};
use tartarus_auth::harness::Provider;
use tartarus_tests::platform::{free_port, tail, wait_until, Daemon, TcpClient};
use tartarus_tests::Response;

const AUD: &str = "tartarus";

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Part `i` (0 header, 1 payload) of a JWT, decoded.
fn jwt_part(token: &str, i: usize) -> Value {
    let p = token.split('.').nth(i).expect("a JWT part");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(p)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON")
}

/// The token with its header replaced (the payload and signature kept).
fn with_header(token: &str, header: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", b64(header), parts[1], parts[2])
}

/// The error message of a 401/403 body.
fn message(r: &Response) -> String {
    r.body
        .as_ref()
        .and_then(|b| b["error"]["message"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Every audit record of the daemon (the host admin's view through the Unix socket).
fn audit(d: &Daemon) -> Vec<Value> {
    let v = d.json("GET", "/audit?limit=10000", None, 200);
    v["items"].as_array().expect("items").clone()
}

/// The one audit record of request `rid`.
fn record_of(d: &Daemon, rid: &str) -> Value {
    let all = audit(d);
    let mine: Vec<&Value> = all.iter().filter(|r| r["request_id"] == rid).collect();
    assert_eq!(
        mine.len(),
        1,
        "request {rid} has {} audit records:\n{all:#?}",
        mine.len()
    );
    mine[0].clone()
}

struct Api {
    addr: String,
}

impl Api {
    /// A request over TCP with `X-Request-Id: rid` and these credential headers.
    fn call(
        &self,
        method: &str,
        path: &str,
        creds: &[(&str, &str)],
        rid: &str,
        body: Option<&str>,
    ) -> Response {
        let mut h = vec![("X-Request-Id", rid)];
        h.extend_from_slice(creds);
        TcpClient::once(&self.addr, method, path, &h, body)
    }

    fn bearer(&self, method: &str, path: &str, token: &str, rid: &str) -> Response {
        let auth = format!("Bearer {token}");
        self.call(method, path, &[("Authorization", &auth)], rid, None)
    }
}

/// A refused credential: a 401 whose message says why, and one `auth.failed` record for it
/// that names no tenant or principal (nobody was authenticated) but the TCP peer.
fn assert_refused(d: &Daemon, r: &Response, rid: &str, why: &str) {
    assert_eq!(r.status, 401, "{rid}: {r}");
    assert!(
        message(r).contains(why),
        "{rid}: 401 says {:?}, expected {why:?}",
        message(r)
    );
    assert_eq!(r.header("x-request-id"), Some(rid));
    let rec = record_of(d, rid);
    assert_eq!(rec["action"], "auth.failed", "{rec}");
    assert_eq!(rec["result"], "denied", "{rec}");
    assert_eq!(rec["tenant"], "-", "{rec}");
    assert_eq!(rec["principal"], "-", "{rec}");
    assert!(
        rec["source"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{rec}"
    );
}

#[test]
fn oidc_jwts_and_api_keys_over_tcp_are_authenticated_scoped_and_audited() {
    let mut p = Provider::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut d = Daemon::start_without_vms(
        "platform-auth",
        &[
            "--listen",
            &addr,
            "--oidc-issuer",
            &p.issuer,
            "--oidc-audience",
            AUD,
        ],
    );
    let pid = d.pid();
    let api = Api { addr: addr.clone() };
    let claims = json!({"aud": AUD, "sub": "alice", "tenant": "acme", "role": "developer"});
    let good = p.token(claims.clone());
    assert_eq!(jwt_part(&good, 0)["kid"], json!(p.first_kid));

    // A developer of acme reads, over TCP with a bearer JWT.
    for path in ["/sandboxes", "/templates"] {
        let r = api.bearer("GET", path, &good, "jwt-read");
        assert_eq!(r.status, 200, "GET {path}: {r}");
        assert!(r.body.as_ref().unwrap()["items"].is_array(), "{r}");
    }
    // ... with curl too, as a user would.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {good}"))
        .arg(format!("http://{addr}/templates"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or_default();
    assert_eq!(
        code,
        "200",
        "curl: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: Value = serde_json::from_str(body).expect("JSON");
    assert!(body["items"].is_array(), "{body}");
    // ... may not make API keys (an admin's job): 403, audited with its tenant and sub.
    let r = api.call(
        "POST",
        "/keys",
        &[("Authorization", &format!("Bearer {good}"))],
        "jwt-key-create",
        Some(r#"{"name":"sneaky","role":"admin"}"#),
    );
    assert_eq!(r.status, 403, "{r}");
    assert!(message(&r).contains("developer"), "{r}");
    let rec = record_of(&d, "jwt-key-create");
    assert_eq!(
        (
            &rec["tenant"],
            &rec["principal"],
            &rec["action"],
            &rec["result"]
        ),
        (
            &json!("acme"),
            &json!("alice"),
            &json!("key.create"),
            &json!("denied")
        ),
        "{rec}"
    );
    assert!(rec["source"].as_str().unwrap().starts_with("127.0.0.1:"));
    // A mutation it may attempt is audited under its identity too (nothing to delete: 404).
    let r = api.bearer(
        "DELETE",
        "/sandboxes/sb-000000000000",
        &good,
        "jwt-sandbox-delete",
    );
    assert_eq!(r.status, 404, "{r}");
    let rec = record_of(&d, "jwt-sandbox-delete");
    assert_eq!(
        (&rec["tenant"], &rec["principal"], &rec["action"]),
        (&json!("acme"), &json!("alice"), &json!("sandbox.delete")),
        "{rec}"
    );
    assert!(
        rec["result"].as_str().unwrap().starts_with("error: 404"),
        "{rec}"
    );
    // Not a single record of the reads, nor of anyone but acme's alice under tenant acme.
    assert!(audit(&d).iter().all(|r| r["request_id"] != "jwt-read"));
    let acme = d.json("GET", "/audit?tenant=acme", None, 200);
    let acme = acme["items"].as_array().unwrap();
    assert_eq!(acme.len(), 2, "{acme:#?}");
    assert!(acme.iter().all(|r| r["principal"] == "alice"));

    // Forged and stale tokens: each a 401 with its own reason, each an auth.failed record.
    let header = jwt_part(&good, 0);
    let mut payload = jwt_part(&good, 1);
    payload["tenant"] = json!("other");
    payload["role"] = json!("admin");
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], b64(&payload), parts[2]);
    let r = api.bearer("GET", "/sandboxes", &tampered, "jwt-bad-signature");
    assert_refused(&d, &r, "jwt-bad-signature", "JWT signature does not verify");

    let mut none = header.clone();
    none["alg"] = json!("none");
    let unsigned = format!("{}.{}.", b64(&none), parts[1]);
    let r = api.bearer("GET", "/sandboxes", &unsigned, "jwt-alg-none");
    assert_refused(
        &d,
        &r,
        "jwt-alg-none",
        "JWT algorithm \"none\" is not allowed",
    );

    let mut unknown = header.clone();
    unknown["kid"] = json!("never-published");
    let r = api.bearer(
        "GET",
        "/sandboxes",
        &with_header(&good, &unknown),
        "jwt-unknown-kid",
    );
    assert_refused(
        &d,
        &r,
        "jwt-unknown-kid",
        "JWT signed by unknown key \"never-published\"",
    );

    let mut other_aud = claims.clone();
    other_aud["aud"] = json!("someone-else");
    let t = p.token(other_aud);
    let r = api.bearer("GET", "/sandboxes", &t, "jwt-wrong-audience");
    assert_refused(&d, &r, "jwt-wrong-audience", "JWT audience is wrong");

    // Expired 5 minutes ago: beyond the verifier's 30 s leeway.
    let t = p.token_with(claims.clone(), -300);
    let r = api.bearer("GET", "/sandboxes", &t, "jwt-expired");
    assert_refused(&d, &r, "jwt-expired", "JWT expired");

    // No credentials at all.
    let r = api.call("GET", "/sandboxes", &[], "no-creds", None);
    assert_refused(&d, &r, "no-creds", "No credentials");

    // The provider rotates its signing key: tokens with the new kid are accepted by the same
    // daemon process once it refetches the JWKS (an unknown kid triggers that, at most every
    // 10 s, so the first tries may still be refused).
    let new_kid = p.rotate("RS256");
    let rotated = p.token(claims.clone());
    assert_eq!(jwt_part(&rotated, 0)["kid"], json!(new_kid));
    let mut tries = 0;
    let accepted = wait_until(std::time::Duration::from_secs(30), || {
        tries += 1;
        let r = api.bearer(
            "GET",
            "/sandboxes",
            &rotated,
            &format!("jwt-rotated-{tries}"),
        );
        assert!(
            r.status == 200 || (r.status == 401 && message(&r).contains("unknown key")),
            "{r}"
        );
        if r.status != 200 {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        r.status == 200
    });
    assert!(
        accepted,
        "a token of the rotated key was never accepted:\n{}",
        tail(&d.log(), 30)
    );
    assert_eq!(d.pid(), pid);
    eprintln!("rotated kid {new_kid} accepted after {tries} tries");
    // The old key is still published: its tokens still work.
    assert_eq!(
        api.bearer("GET", "/sandboxes", &good, "jwt-old").status,
        200
    );

    // API keys made through the Unix socket with the CLI, sent as X-API-KEY.
    let key = d
        .cli_ok(&[
            "key",
            "create",
            "--name",
            "ci",
            "--role",
            "developer",
            "--tenant",
            "acme",
        ])
        .trim()
        .to_string();
    assert!(key.starts_with("tts_"), "{key}");
    let key_id = &key[4..12];
    let r = api.call(
        "GET",
        "/sandboxes",
        &[("X-API-KEY", &key)],
        "key-read",
        None,
    );
    assert_eq!(r.status, 200, "{r}");
    let r = api.call(
        "DELETE",
        "/sandboxes/sb-000000000000",
        &[("X-API-KEY", &key)],
        "key-delete",
        None,
    );
    assert_eq!(r.status, 404, "{r}");
    let rec = record_of(&d, "key-delete");
    assert_eq!(rec["tenant"], "acme", "{rec}");
    assert_eq!(rec["principal"], format!("key:{key_id}"), "{rec}");
    let r = api.call(
        "POST",
        "/keys",
        &[("X-API-KEY", &key)],
        "key-key-create",
        Some(r#"{"name":"x","role":"viewer"}"#),
    );
    assert_eq!(r.status, 403, "{r}");
    // The key's creation through the socket is audited as the host's root admin.
    let created = audit(&d)
        .into_iter()
        .find(|r| r["action"] == "key.create" && r["result"] == "ok")
        .expect("a key.create record");
    assert_eq!(created["source"], "unix", "{created}");
    assert_eq!(created["tenant"], "*", "{created}");

    // Revoked: refused at once, on the same daemon, with the reason.
    d.cli_ok(&["key", "revoke", key_id]);
    let r = api.call(
        "GET",
        "/sandboxes",
        &[("X-API-KEY", &key)],
        "key-revoked",
        None,
    );
    assert_refused(&d, &r, "key-revoked", "API key revoked");
    // ... and a key never made is refused too.
    let r = api.call(
        "GET",
        "/sandboxes",
        &[("X-API-KEY", "tts_nope")],
        "key-bogus",
        None,
    );
    assert_refused(&d, &r, "key-bogus", "Malformed API key");

    // The trail of all this verifies.
    let (log, public) = d.audit_files();
    let o = d.cli(&[
        "audit",
        "verify",
        "--log",
        log.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    d.kill9();
}
