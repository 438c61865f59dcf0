//! `audit ls` (`GET /audit`) and `audit verify` (the log file itself, with tartarus-audit's
//! verifier: hash chain and signed checkpoints).

use std::path::{Path, PathBuf};

use serde_json::json;
use tartarus_audit::{load_public_key, public_key_path, verify, Problem, VerifyReport};
use tartarus_types::{AuditEntry, List};

use super::{CmdError, Ctx};
use crate::cli::{AuditLsArgs, AuditVerifyArgs, OutputFormat};
use crate::client::{encode_query, ClientError};
use crate::output::{audit_table, print, print_json, Table};

/// The daemon's audit log unless `--log` says otherwise.
pub const DEFAULT_LOG: &str = "/var/lib/tartarus/audit/audit.log";
/// The file name of the daemon's checkpoint signing key, beside the log.
pub const KEY_NAME: &str = "audit.key";

/// The query string of `GET /audit`.
pub fn ls_path(a: &AuditLsArgs) -> String {
    let mut q = Vec::new();
    if let Some(s) = &a.since {
        q.push(format!("since={}", encode_query(s)));
    }
    if let Some(t) = &a.tenant {
        q.push(format!("tenant={}", encode_query(t)));
    }
    if let Some(n) = a.limit {
        q.push(format!("limit={n}"));
    }
    if q.is_empty() {
        "/audit".into()
    } else {
        format!("/audit?{}", q.join("&"))
    }
}

pub async fn ls(ctx: &Ctx, a: AuditLsArgs) -> Result<i32, CmdError> {
    let body: serde_json::Value = ctx.client.get(&ls_path(&a)).await?;
    if ctx.json() {
        print_json(&body)?;
        return Ok(0);
    }
    let list: List<AuditEntry> =
        serde_json::from_value(body).map_err(|e| ClientError::Decode(e.to_string()))?;
    print(&audit_table(&list.items))?;
    Ok(0)
}

/// The public key beside a log: `<dir of log>/audit.key.pub`.
pub fn default_public_key(log: &Path) -> PathBuf {
    let dir = log.parent().unwrap_or(Path::new("."));
    public_key_path(&dir.join(KEY_NAME))
}

/// A problem as JSON: its kind, the record and line it names, and the sentence.
pub fn problem_json(p: &Problem) -> serde_json::Value {
    let (kind, seq, line) = match p {
        Problem::Malformed { line, seq, .. } => ("malformed", *seq, *line),
        Problem::Edited { seq, line } => ("edited", Some(*seq), *line),
        Problem::Deleted { first, line, .. } => ("deleted", Some(*first), *line),
        Problem::Inserted { seq, line, .. } => ("inserted", Some(*seq), *line),
        Problem::Reordered { seq, line, .. } => ("reordered", Some(*seq), *line),
        Problem::BrokenLink { seq, line } => ("broken_link", Some(*seq), *line),
        Problem::CheckpointMismatch { seq, line } => ("checkpoint_mismatch", Some(*seq), *line),
        Problem::BadSignature { seq, line } => ("bad_signature", Some(*seq), *line),
        Problem::MissingCheckpoint { seq, line } => ("missing_checkpoint", Some(*seq), *line),
        Problem::TruncatedTail { line, .. } => ("truncated_tail", None, *line),
    };
    let mut v = json!({"kind": kind, "seq": seq, "line": line, "message": p.to_string()});
    if let Problem::Deleted { first, last, .. } = p {
        v["first"] = (*first).into();
        v["last"] = (*last).into();
    }
    v
}

/// The report as `audit verify -o json` prints it.
pub fn report_json(log: &Path, key: &Path, r: &VerifyReport) -> serde_json::Value {
    json!({
        "log": log,
        "public_key": key,
        "ok": r.is_ok(),
        "records": r.records,
        "checkpoints": r.checkpoints,
        "last_seq": r.last_seq,
        "signed_through": r.signed_through,
        "unsigned_tail": r.unsigned_tail,
        "problem": r.problem.as_ref().map(problem_json),
    })
}

/// The report as a table.
pub fn report_text(log: &Path, key: &Path, r: &VerifyReport) -> String {
    let mut t = Table::new(["Log:".to_string(), log.display().to_string()]);
    let tail = if r.unsigned_tail == 0 {
        "0".to_string()
    } else {
        format!(
            "{} (after the last checkpoint: protected by the hash chain only)",
            r.unsigned_tail
        )
    };
    let rows = [
        ("Public key:", key.display().to_string()),
        ("Records:", r.records.to_string()),
        ("Checkpoints:", r.checkpoints.to_string()),
        ("Last seq:", r.last_seq.to_string()),
        ("Signed through:", r.signed_through.to_string()),
        ("Unsigned tail:", tail),
        (
            "Result:",
            match &r.problem {
                None => "intact".to_string(),
                Some(p) => format!("NOT INTACT: {p}"),
            },
        ),
    ];
    for (k, v) in rows {
        t.row([k.to_string(), v]);
    }
    t.render()
}

/// `audit verify`: 0 when intact, 1 when the log has a problem (named on stderr too).
pub fn verify_cmd(a: AuditVerifyArgs, output: OutputFormat) -> Result<i32, CmdError> {
    let log = a.log.unwrap_or_else(|| PathBuf::from(DEFAULT_LOG));
    let key_path = a.public_key.unwrap_or_else(|| default_public_key(&log));
    let key = load_public_key(&key_path)?;
    let report = verify(&log, &key)?;
    if output == OutputFormat::Json {
        print_json(&report_json(&log, &key_path, &report))?;
    } else {
        print(&report_text(&log, &key_path, &report))?;
    }
    match &report.problem {
        None => Ok(0),
        Some(p) => {
            eprintln!("tartarus: audit log {}: {p}", log.display());
            Ok(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings() {
        let mut a = AuditLsArgs {
            since: None,
            tenant: None,
            limit: None,
        };
        assert_eq!(ls_path(&a), "/audit");
        a.since = Some("2026-12-01T00:00:00+01:00".into());
        a.tenant = Some("acme".into());
        a.limit = Some(50);
        assert_eq!(
            ls_path(&a),
            "/audit?since=2026-12-01T00%3A00%3A00%2B01%3A00&tenant=acme&limit=50"
        );
    }

    #[test]
    fn public_key_beside_the_log() {
        assert_eq!(
            default_public_key(Path::new("/var/lib/tartarus/audit/audit.log")),
            PathBuf::from("/var/lib/tartarus/audit/audit.key.pub")
        );
    }

    #[test]
    fn problems_name_record_and_line() {
        let v = problem_json(&Problem::Edited { seq: 5, line: 6 });
        assert_eq!(
            (v["kind"].as_str(), v["seq"].as_u64(), v["line"].as_u64()),
            (Some("edited"), Some(5), Some(6))
        );
        let v = problem_json(&Problem::Deleted {
            first: 3,
            last: 4,
            line: 3,
        });
        assert_eq!(
            (v["first"].as_u64(), v["last"].as_u64()),
            (Some(3), Some(4))
        );
    }
}
