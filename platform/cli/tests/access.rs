//! `key` and `audit ls` against the stand-in daemon: the requests' shapes (the contract of
//! `/keys` and `/audit`), the outputs, and the hints on 401 and 403. The daemon's own behaviour
//! is tested end to end in platform/daemon.

mod common;

use std::process::{Command, Output};

fn tartarus(s: &common::StandIn, args: &[&str], env: &[(&str, &str)]) -> Output {
    let home = s.dir.join("home");
    Command::new(env!("CARGO_BIN_EXE_tartarus"))
        .args(["--host", &s.unix_host()])
        .args(args)
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env_remove("TARTARUS_HOST")
        .env_remove("TARTARUS_PROFILE")
        .env_remove("TARTARUS_API_KEY")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn body(r: &common::Recorded) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap()
}

#[test]
fn key_create_prints_the_key_once_and_sends_the_contract() {
    let s = common::start();
    let o = tartarus(
        &s,
        &[
            "key",
            "create",
            "--name",
            "ci",
            "--role",
            "developer",
            "--tenant",
            "acme",
            "--expires",
            "30d",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let key = out(&o);
    let key = key.trim_end();
    assert!(tartarus_auth::apikey::ApiKey::parse(key).is_ok(), "{key}");
    assert!(err(&o).contains("cannot be shown again"), "{}", err(&o));
    let r = s.exact("POST", "/keys").unwrap();
    assert_eq!(
        body(&r),
        serde_json::json!({"name": "ci", "role": "developer", "tenant": "acme",
            "expires_in_s": 2_592_000})
    );
    // Without tenant and expiry those fields are left out.
    let o = tartarus(
        &s,
        &[
            "-o", "json", "key", "create", "--name", "bot", "--role", "viewer",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let created: tartarus_types::CreatedKey = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(created.info.role, "viewer");
    assert_eq!(
        body(&s.exact("POST", "/keys").unwrap()),
        serde_json::json!({"name": "bot", "role": "viewer"})
    );
}

#[test]
fn key_create_refuses_bad_values_before_sending() {
    let s = common::start();
    for args in [
        &["key", "create", "--name", "x", "--role", "root"][..],
        &[
            "key", "create", "--name", "x", "--role", "viewer", "--tenant", "Acme",
        ],
        &[
            "key",
            "create",
            "--name",
            "x",
            "--role",
            "viewer",
            "--expires",
            "10y",
        ],
        &[
            "key",
            "create",
            "--name",
            "x",
            "--role",
            "viewer",
            "--expires",
            "0",
        ],
    ] {
        let o = tartarus(&s, args, &[]);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", err(&o));
    }
    assert!(s.last("POST", "/keys").is_none());
}

#[test]
fn key_ls_get_rotate_revoke() {
    let s = common::start();
    let o = tartarus(&s, &["key", "ls"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let text = out(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("ID "), "{text}");
    assert!(
        lines[0].contains("STATUS") && lines[0].contains("LAST USED"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("Abcd1234") && lines[1].contains("active"),
        "{text}"
    );
    assert!(
        lines[2].contains("revoked") && lines[2].contains("never"),
        "{text}"
    );
    assert!(lines[1].contains(" ago"), "{text}");
    // -o json: the API's body, times raw.
    let o = tartarus(&s, &["-o", "json", "key", "ls"], &[]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["items"][0]["created_at"], common::KEY_CREATED);

    let o = tartarus(&s, &["key", "get", "Abcd1234"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(out(&o).contains("2025-12-05 16:00:00 UTC"), "{}", out(&o));
    let o = tartarus(&s, &["key", "get", "nosuch00"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("No key nosuch00"), "{}", err(&o));

    // A whole key is reduced to its id: the secret is never put in a URL.
    let whole = tartarus_auth::apikey::ApiKey::generate().unwrap();
    let o = tartarus(
        &s,
        &["key", "rotate", &whole.expose(), "--overlap", "2h"],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let r = s.last("POST", "/keys/").unwrap();
    assert_eq!(r.uri, format!("/keys/{}/rotate", whole.id()));
    assert_eq!(body(&r), serde_json::json!({"overlap_s": 7200}));
    assert!(tartarus_auth::apikey::ApiKey::parse(out(&o).trim_end()).is_ok());
    assert!(err(&o).contains("keeps working for 2h"), "{}", err(&o));
    let o = tartarus(&s, &["key", "rotate", "Abcd1234"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(
        body(&s.last("POST", "/keys/").unwrap()),
        serde_json::json!({})
    );

    let o = tartarus(&s, &["key", "revoke", "Abcd1234", "bad"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(out(&o), "Revoked Abcd1234 ('ci')\n");
    assert!(
        err(&o).contains("bad: 'bad' is not a key id"),
        "{}",
        err(&o)
    );
    assert!(s.exact("DELETE", "/keys/Abcd1234").is_some());
    let o = tartarus(&s, &["-o", "json", "key", "revoke", "Abcd1234"], &[]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["revoked_at"], common::KEY_CREATED + 60);
}

#[test]
fn audit_ls_query_and_table() {
    let s = common::start();
    let o = tartarus(
        &s,
        &[
            "audit",
            "ls",
            "--since",
            "2026-12-01T00:00:00Z",
            "--tenant",
            "acme",
            "--limit",
            "5",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(s
        .exact(
            "GET",
            "/audit?since=2026-12-01T00%3A00%3A00Z&tenant=acme&limit=5"
        )
        .is_some());
    let text = out(&o);
    assert!(text.starts_with("SEQ "), "{text}");
    let row: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row,
        [
            "1",
            "2026-12-05",
            "17:00:01",
            "acme",
            "unix:uid=0",
            "key.create",
            "key/Abcd1234",
            "ok",
            "unix"
        ],
        "{text}"
    );
    let o = tartarus(&s, &["-o", "json", "audit", "ls"], &[]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["items"][1]["time"], "2026-12-05T17:00:02.123Z");
    assert!(s.exact("GET", "/audit").is_some());
}

#[test]
fn unauthorized_and_forbidden_hints() {
    let s = common::start();
    let o = tartarus(
        &s,
        &["key", "ls"],
        &[("TARTARUS_API_KEY", "revoked.jwt.token")],
    );
    assert_eq!(o.status.code(), Some(1));
    let e = err(&o);
    assert!(e.contains("tartarus: unauthorized: API key revoked"), "{e}");
    assert!(
        e.contains("hint: ") && e.contains("TARTARUS_API_KEY"),
        "{e}"
    );
    let o = tartarus(&s, &["audit", "ls", "--tenant", "other"], &[]);
    assert_eq!(o.status.code(), Some(1));
    let e = err(&o);
    assert!(
        e.contains("tartarus: forbidden: Role viewer may not audit_read"),
        "{e}"
    );
    assert!(e.contains("hint: ") && e.contains("role"), "{e}");
}

#[test]
fn api_key_precedence_and_typo_check() {
    let s = common::start();
    let good = tartarus_auth::apikey::ApiKey::generate().unwrap().expose();
    let env_key = tartarus_auth::apikey::ApiKey::generate().unwrap().expose();
    // flag > env
    let o = tartarus(
        &s,
        &["--api-key", &good, "health"],
        &[("TARTARUS_API_KEY", &env_key)],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let auth = s.last("GET", "/health").unwrap().authorization;
    assert_eq!(auth, Some(format!("Bearer {good}")));
    let o = tartarus(&s, &["health"], &[("TARTARUS_API_KEY", &env_key)]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let auth = s.last("GET", "/health").unwrap().authorization;
    assert_eq!(auth, Some(format!("Bearer {env_key}")));
    // A mistyped tts_ key never leaves the machine.
    let n = s.requests().len();
    let mut typo = good.clone().into_bytes();
    typo.swap(10, 11);
    let typo = String::from_utf8(typo).unwrap();
    if typo != good {
        let o = tartarus(&s, &["--api-key", &typo, "health"], &[]);
        assert_eq!(o.status.code(), Some(2), "{}", err(&o));
        assert!(err(&o).contains("checksum"), "{}", err(&o));
        assert_eq!(s.requests().len(), n);
    }
}
