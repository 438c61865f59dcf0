//! `tartarus audit verify` on a real audit log written by tartarus-audit's `AuditLog`:
//! intact → exit 0; an edited record, a flipped byte, a deleted line → exit 1 naming the record
//! and line; a missing key → exit 2.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tartarus_audit::{AuditEvent, AuditLog, LogConfig, Outcome};

/// A log of 12 records with a checkpoint every 5 (so lines 1-5 are records 1-5), written
/// where the daemon keeps it: `audit.log` and `audit.key` (+ `audit.key.pub`) in one dir.
fn write_log(dir: &Path) -> PathBuf {
    let mut c = LogConfig::new(dir.join("audit.log"), dir.join("audit.key"));
    c.checkpoint_every = 5;
    let (log, _) = AuditLog::open(c).unwrap();
    for i in 0..12 {
        log.append_blocking(AuditEvent::now(
            format!("r{i}"),
            "acme",
            "alice",
            "sandbox.create",
            format!("sandbox/sb-{i:012}"),
            Outcome::Ok,
            "unix",
        ))
        .unwrap();
    }
    let path = log.path().to_path_buf();
    log.close().unwrap();
    path
}

fn verify(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tartarus"))
        .args(["audit", "verify"])
        .args(args)
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .env_remove("TARTARUS_PROFILE")
        .output()
        .unwrap()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(p: &Path, l: &[String]) {
    std::fs::write(p, l.join("\n") + "\n").unwrap();
}

#[test]
fn intact_log() {
    let dir = common::temp_dir("audit-ok");
    let log = write_log(&dir);
    let o = verify(&["--log", log.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    let text = out(&o);
    assert!(text.contains("\nRecords:          12\n"), "{text}");
    assert!(text.contains("\nResult:           intact\n"), "{text}");
    let o = verify(&["-o", "json", "--log", log.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["records"], 12);
    assert_eq!(v["last_seq"], 12);
    assert!(v["problem"].is_null());
    assert_eq!(
        v["public_key"].as_str().unwrap(),
        dir.join("audit.key.pub").to_str().unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn edited_record_is_named() {
    let dir = common::temp_dir("audit-edit");
    let log = write_log(&dir);
    let mut l = lines(&log);
    assert!(l[2].contains("\"seq\":3,"));
    l[2] = l[2].replace("\"principal\":\"alice\"", "\"principal\":\"alicf\"");
    write_lines(&log, &l);
    let o = verify(&["--log", log.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        err(&o).contains("record 3 at line 3 was edited"),
        "{}",
        err(&o)
    );
    assert!(out(&o).contains("NOT INTACT"), "{}", out(&o));
    let o = verify(&["-o", "json", "--log", log.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["problem"]["kind"], "edited");
    assert_eq!(
        (v["problem"]["seq"].as_u64(), v["problem"]["line"].as_u64()),
        (Some(3), Some(3))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn flipped_byte_is_named() {
    let dir = common::temp_dir("audit-flip");
    let log = write_log(&dir);
    let mut bytes = std::fs::read(&log).unwrap();
    // A byte inside record 4's resource name (line 4).
    let line4 = bytes
        .split(|b| *b == b'\n')
        .take(3)
        .map(|l| l.len() + 1)
        .sum::<usize>();
    let at = line4 + bytes[line4..].windows(3).position(|w| w == b"sb-").unwrap() + 5;
    bytes[at] ^= 0x01;
    std::fs::write(&log, bytes).unwrap();
    let o = verify(&["--log", log.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    let e = err(&o);
    assert!(e.contains("record 4") && e.contains("line 4"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn deleted_line_is_named() {
    let dir = common::temp_dir("audit-del");
    let log = write_log(&dir);
    let mut l = lines(&log);
    assert!(l[1].contains("\"seq\":2,"));
    l.remove(1);
    write_lines(&log, &l);
    let o = verify(&["--log", log.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        err(&o).contains("record 2 was deleted (before line 2)"),
        "{}",
        err(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wrong_or_missing_key() {
    let dir = common::temp_dir("audit-key");
    let log = write_log(&dir);
    // Another log's key: the checkpoints' signatures do not verify.
    let other = common::temp_dir("audit-key-other");
    write_log(&other);
    let o = verify(&[
        "--log",
        log.to_str().unwrap(),
        "--public-key",
        other.join("audit.key.pub").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(err(&o).contains("bad signature"), "{}", err(&o));
    // No key, no log: could not check at all.
    let o = verify(&[
        "--log",
        log.to_str().unwrap(),
        "--public-key",
        "/nonexistent.pub",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    let o = verify(&[
        "--log",
        dir.join("nope.log").to_str().unwrap(),
        "--public-key",
        other.join("audit.key.pub").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
}
