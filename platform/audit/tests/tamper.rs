//! An attacker with write access to the log file, and what `verify` says about each attack.
//!
//! The log: 30 records, a checkpoint every 10. Lines 1-10 are records 1-10, line 11 the
//! checkpoint for 10, lines 12-21 records 11-20, line 22 the checkpoint for 20, lines 23-32
//! records 21-30, line 33 the checkpoint for 30.

mod common;

use std::path::PathBuf;

use common::{event, TempDir};
use ed25519_dalek::SigningKey;
use tartarus_audit::*;

struct Fixture {
    _dir: TempDir,
    path: PathBuf,
    key: VerifyingKey,
    lines: Vec<String>,
}

fn fixture() -> Fixture {
    let dir = TempDir::new("tamper");
    let mut c = LogConfig::new(dir.path().join("audit.log"), dir.path().join("audit.key"));
    c.checkpoint_every = 10;
    let (log, _) = AuditLog::open(c).unwrap();
    for i in 0..30 {
        log.append_blocking(event(i, "acme")).unwrap();
    }
    let key = log.public_key();
    let path = log.path().to_path_buf();
    log.close().unwrap();
    let lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 33);
    let f = Fixture {
        _dir: dir,
        path,
        key,
        lines,
    };
    let rep = verify(&f.path, &f.key).unwrap();
    assert!(rep.is_ok(), "{:?}", rep.problem);
    assert_eq!(
        (rep.records, rep.checkpoints, rep.signed_through),
        (30, 3, 30)
    );
    f
}

impl Fixture {
    fn write(&self, lines: &[String]) -> Option<Problem> {
        std::fs::write(&self.path, lines.join("\n") + "\n").unwrap();
        let rep = verify(&self.path, &self.key).unwrap();
        assert!(rep.problem.is_some() != rep.is_ok());
        rep.problem
    }
}

#[test]
fn a_flipped_byte_is_an_edited_record() {
    let f = fixture();
    let mut l = f.lines.clone();
    // user-4 -> user-5 inside record 5's principal: still valid JSON.
    let mut bytes = l[4].clone().into_bytes();
    let at = l[4].find("\"principal\":\"user-").unwrap() + "\"principal\":\"user-".len();
    bytes[at] ^= 0x01;
    l[4] = String::from_utf8(bytes).unwrap();
    let p = f.write(&l).unwrap();
    assert_eq!(p, Problem::Edited { seq: 5, line: 5 });
    assert_eq!(
        p.to_string(),
        "record 5 at line 5 was edited (hash mismatch)"
    );

    // A flip that breaks the JSON itself: still named by line and seq.
    let mut l = f.lines.clone();
    l[6] = l[6].replacen("\"prev\":", "\"prev\";", 1);
    assert!(matches!(
        f.write(&l),
        Some(Problem::Malformed {
            line: 7,
            seq: Some(7),
            ..
        })
    ));

    // Whitespace only: same JSON value, not the canonical bytes.
    let mut l = f.lines.clone();
    l[2] = l[2].replacen("\"seq\":3,", "\"seq\": 3,", 1);
    assert_eq!(f.write(&l), Some(Problem::Edited { seq: 3, line: 3 }));
}

#[test]
fn a_deleted_line_is_a_gap() {
    let f = fixture();
    let mut l = f.lines.clone();
    l.remove(6); // record 7
    assert_eq!(
        f.write(&l),
        Some(Problem::Deleted {
            first: 7,
            last: 7,
            line: 7
        })
    );
}

#[test]
fn an_inserted_line_is_named() {
    let f = fixture();
    // A copy of record 3 replayed after record 4.
    let mut l = f.lines.clone();
    l.insert(4, f.lines[2].clone());
    assert_eq!(
        f.write(&l),
        Some(Problem::Inserted {
            seq: 3,
            first_line: 3,
            line: 5
        })
    );
    // A forged record 5 with a correct hash and link, put before the real one.
    let mut l = f.lines.clone();
    let r4 = Record::parse(&f.lines[3]).unwrap();
    let mut ev = event(500, "acme");
    ev.action = "key.revoke".into();
    l.insert(4, Record::new(5, &r4.hash, ev).to_line());
    assert_eq!(
        f.write(&l),
        Some(Problem::Inserted {
            seq: 5,
            first_line: 5,
            line: 6
        })
    );
    // A forged record replacing record 5 (own hash recomputed, prev pointing elsewhere).
    let mut l = f.lines.clone();
    let r3 = Record::parse(&f.lines[2]).unwrap();
    l[4] = Record::new(5, &r3.hash, event(5, "acme")).to_line();
    assert_eq!(f.write(&l), Some(Problem::BrokenLink { seq: 5, line: 5 }));
}

#[test]
fn swapped_lines_are_reordered() {
    let f = fixture();
    let mut l = f.lines.clone();
    l.swap(3, 4); // records 4 and 5
    assert_eq!(
        f.write(&l),
        Some(Problem::Reordered {
            seq: 5,
            expected: 4,
            line: 4
        })
    );
}

/// Rewrites records `from..=30` (tenant changed) with every hash and link recomputed.
fn rewrite_tail(f: &Fixture, from: u64) -> Vec<String> {
    let mut prev = GENESIS.to_string();
    let mut out = Vec::new();
    for line in &f.lines {
        if Checkpoint::is_checkpoint_line(line) {
            out.push(line.clone());
            continue;
        }
        let r = Record::parse(line).unwrap();
        let r = if r.seq >= from {
            let mut ev = r.event();
            ev.tenant = "evil".into();
            Record::new(r.seq, &prev, ev)
        } else {
            r
        };
        prev = r.hash.clone();
        out.push(r.to_line());
    }
    out
}

#[test]
fn a_rewritten_tail_with_recomputed_hashes_is_caught_by_the_checkpoint() {
    let f = fixture();
    // The chain is consistent, but the checkpoint for 20 signs the old hash of record 20.
    let l = rewrite_tail(&f, 15);
    assert_eq!(
        f.write(&l),
        Some(Problem::CheckpointMismatch { seq: 20, line: 22 })
    );
    // The attacker also puts the new hash into the checkpoint: the signature fails.
    let mut l = rewrite_tail(&f, 15);
    let mut c = Checkpoint::parse(&l[21]).unwrap();
    c.hash = Record::parse(&l[20]).unwrap().hash;
    l[21] = c.to_line();
    assert_eq!(
        f.write(&l),
        Some(Problem::BadSignature { seq: 20, line: 22 })
    );
    // ... or re-signs with a key of their own.
    let mut l = rewrite_tail(&f, 15);
    for i in [21, 32] {
        let c = Checkpoint::parse(&l[i]).unwrap();
        let hash = Record::parse(&l[i - 1]).unwrap().hash;
        l[i] = Checkpoint::sign(&SigningKey::from_bytes(&[9; 32]), c.seq, &hash, 10).to_line();
    }
    assert_eq!(
        f.write(&l),
        Some(Problem::BadSignature { seq: 20, line: 22 })
    );
    // ... or drops the checkpoints after the rewrite: the one due after 20 is missing.
    let mut l = rewrite_tail(&f, 15);
    l.remove(32);
    l.remove(21);
    assert_eq!(
        f.write(&l),
        Some(Problem::MissingCheckpoint { seq: 20, line: 21 })
    );
}

#[test]
fn a_truncated_tail_is_reported_then_repaired_on_open() {
    let f = fixture();
    let mut text = f.lines[..31].join("\n") + "\n"; // up to record 29
    text.push_str(&f.lines[31][..50]); // half of record 30
    std::fs::write(&f.path, &text).unwrap();
    let rep = verify(&f.path, &f.key).unwrap();
    assert_eq!(
        rep.problem,
        Some(Problem::TruncatedTail {
            line: 32,
            bytes: 50
        })
    );
    assert_eq!(
        (
            rep.records,
            rep.last_seq,
            rep.signed_through,
            rep.unsigned_tail
        ),
        (29, 29, 20, 9)
    );

    let dir = f.path.parent().unwrap();
    let mut c = LogConfig::new(&f.path, dir.join("audit.key"));
    c.checkpoint_every = 10;
    let (log, report) = AuditLog::open(c).unwrap();
    assert_eq!(
        report.repairs,
        vec![Repair::TruncatedPartialTail {
            line: 32,
            offset: (text.len() - 50) as u64,
            bytes: 50
        }]
    );
    assert_eq!(report.last_seq, 29);
    log.close().unwrap();
    let rep = verify(&f.path, &f.key).unwrap();
    assert!(rep.is_ok(), "{:?}", rep.problem);
    assert_eq!((rep.last_seq, rep.signed_through), (29, 29));
}

#[test]
fn another_key_fails_at_the_first_checkpoint() {
    let f = fixture();
    let other = SigningKey::from_bytes(&[3; 32]).verifying_key();
    let rep = verify(&f.path, &other).unwrap();
    assert_eq!(
        rep.problem,
        Some(Problem::BadSignature { seq: 10, line: 11 })
    );
}
