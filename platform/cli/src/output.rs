//! Tables, human-readable sizes and ages, JSON printing, and the mapping of a guest command's
//! end to the CLI's exit code.

use std::io::Write;

use tartarus_types::{ApiKeyInfo, AuditEntry, Image, ImagesFreed, Sandbox, Snapshot, Template};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write the output: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Aligned columns separated by three spaces; the last column is not padded.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(headers: I) -> Self {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, cells: I) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn render(&self) -> String {
        let cols = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; cols];
        for r in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                if i > 0 {
                    line.push_str("   ");
                }
                line.push_str(c);
                if i + 1 < r.len() {
                    line.extend(std::iter::repeat_n(' ', widths[i] - c.chars().count()));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `5s`, `3m`, `2h`, `4d`.
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// KiB as whole MiB, `-` when unknown.
pub fn mib_from_kib(kib: Option<u64>) -> String {
    match kib {
        Some(k) => format!("{} MiB", k.div_ceil(1024)),
        None => "-".into(),
    }
}

/// Bytes in the largest binary unit that keeps the number at least 1.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// Pretty JSON of a value, with a trailing newline.
pub fn print_json<T: serde::Serialize + ?Sized>(v: &T) -> Result<(), OutputError> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Prints text to stdout.
pub fn print(text: &str) -> Result<(), OutputError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

pub fn sandbox_table(items: &[Sandbox]) -> String {
    let mut t = Table::new(["ID", "TEMPLATE", "STATE", "PID", "AGE", "MEMORY"]);
    for s in items {
        t.row([
            s.id.clone(),
            s.template.clone(),
            s.state.as_str().to_string(),
            opt(s.pid),
            age(s.age_s),
            mib_from_kib(s.rss_kib),
        ]);
    }
    t.render()
}

/// `KEY: value` lines of a sandbox.
pub fn sandbox_details(s: &Sandbox) -> String {
    let labels = s
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let ms = |v: Option<f64>| {
        v.map(|v| format!("{v:.1} ms"))
            .unwrap_or_else(|| "-".into())
    };
    let mut t = Table::new(["ID:", s.id.as_str()]);
    let rows: Vec<(&str, String)> = vec![
        ("State:", s.state.as_str().to_string()),
        ("Template:", s.template.clone()),
        ("Snapshot:", opt(s.snapshot.clone())),
        ("PID:", opt(s.pid)),
        ("vCPUs:", s.vcpus.to_string()),
        ("Memory:", format!("{} MiB", s.memory_mib)),
        ("RSS:", mib_from_kib(s.rss_kib)),
        ("Network:", format!("{:?}", s.network).to_lowercase()),
        ("Guest IP:", opt(s.guest_ip.clone())),
        ("Timeout:", opt(s.timeout_s.map(|t| format!("{t}s")))),
        (
            "Labels:",
            if labels.is_empty() {
                "-".into()
            } else {
                labels
            },
        ),
        (
            "Created:",
            format!("{} ({} ago)", s.created_at, age(s.age_s)),
        ),
        ("Create time:", ms(s.create_ms)),
        ("Restore time:", ms(s.restore_ms)),
        (
            "Idle timeout:",
            opt(s.idle_timeout_s.map(|t| format!("{t}s"))),
        ),
        ("Hibernated:", opt(s.hibernated_at.clone())),
        (
            "Hibernation size:",
            opt(s
                .hibernated_bytes
                .map(|b| format!("{:.1} MiB", b as f64 / 1048576.0))),
        ),
        ("Memory freed:", mib_from_kib(s.memory_freed_kib)),
        ("Wakes:", format!("{} (last {})", s.wakes, ms(s.wake_ms))),
        ("Reason:", opt(s.reason.clone())),
    ];
    for (k, v) in rows {
        t.row([k.to_string(), v]);
    }
    t.render()
}

pub fn template_table(items: &[Template]) -> String {
    let mut t = Table::new([
        "NAME", "STATE", "VCPUS", "MEMORY", "DISK", "SNAPSHOT", "CREATED",
    ]);
    for tp in items {
        t.row([
            tp.name.clone(),
            format!("{:?}", tp.state).to_lowercase(),
            tp.vcpus.to_string(),
            format!("{} MiB", tp.memory_mib),
            format!("{} MiB", tp.disk_mib),
            opt(tp.snapshot_bytes.map(bytes)),
            tp.created_at.clone(),
        ]);
    }
    t.render()
}

pub fn template_details(tp: &Template) -> String {
    let mut t = Table::new(["Name:", tp.name.as_str()]);
    let env = tp
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let warmup = tp
        .warmup
        .iter()
        .map(|w| {
            let cmd = w.argv.join(" ");
            if w.background {
                format!("{cmd} (background)")
            } else {
                cmd
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    let rows: Vec<(&str, String)> = vec![
        ("State:", format!("{:?}", tp.state).to_lowercase()),
        ("Kernel:", tp.kernel.clone()),
        ("Rootfs:", tp.rootfs.clone()),
        (
            "Image:",
            opt(tp
                .image
                .as_ref()
                .map(|i| format!("{} ({})", i.reference, short_id(&i.id)))),
        ),
        ("Boot args:", tp.boot_args.clone()),
        ("vCPUs:", tp.vcpus.to_string()),
        ("Memory:", format!("{} MiB", tp.memory_mib)),
        ("Disk:", format!("{} MiB", tp.disk_mib)),
        ("Env:", if env.is_empty() { "-".into() } else { env }),
        (
            "Warm-up:",
            if warmup.is_empty() {
                "-".into()
            } else {
                warmup
            },
        ),
        ("Created:", tp.created_at.clone()),
        ("Build time:", opt(tp.build_ms.map(|m| format!("{m} ms")))),
        ("Snapshot:", opt(tp.snapshot_bytes.map(bytes))),
        ("Error:", opt(tp.error.clone())),
    ];
    for (k, v) in rows {
        t.row([k.to_string(), v]);
    }
    t.render()
}

pub fn snapshot_table(items: &[Snapshot]) -> String {
    let mut t = Table::new(["ID", "SANDBOX", "TEMPLATE", "SIZE", "CREATED"]);
    for s in items {
        t.row([
            s.id.clone(),
            s.sandbox.clone(),
            s.template.clone(),
            bytes(s.size_bytes),
            s.created_at.clone(),
        ]);
    }
    t.render()
}

/// Seconds since the Unix epoch of an RFC 3339 time (`2026-01-01T00:00:00Z`,
/// `2026-01-01T02:00:00.5+02:00`); None when it is not one.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        rest = &frac[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return None,
            };
            let (oh, om) = rest[1..].split_once(':')?;
            if oh.len() != 2 || om.len() != 2 {
                return None;
            }
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + h * 3600 + mi * 60 + sec - offset)
}

/// Now, in seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// An image id's first 12 hex digits (`sha256:` dropped), as `docker images` shows it.
pub fn short_id(id: &str) -> String {
    let hex = id.split_once(':').map_or(id, |(_, h)| h);
    hex.chars().take(12).collect()
}

/// `docker images`-like: one row per name (`<none>` for a dangling image), `now` in seconds
/// since the epoch for the PULLED column.
pub fn image_table(items: &[Image], now: i64) -> String {
    let mut t = Table::new(["NAME", "ID", "SIZE", "PULLED"]);
    for img in items {
        let pulled = match parse_rfc3339(&img.pulled_at) {
            Some(at) => format!("{} ago", age(now.saturating_sub(at).max(0) as u64)),
            None => img.pulled_at.clone(),
        };
        let none = ["<none>".to_string()];
        let names = if img.names.is_empty() {
            &none[..]
        } else {
            &img.names[..]
        };
        for n in names {
            t.row([
                n.clone(),
                short_id(&img.id),
                bytes(img.size),
                pulled.clone(),
            ]);
        }
    }
    t.render()
}

/// What `image rm` and `image prune` freed: a `Deleted: ID` line per image, then the totals.
pub fn freed_text(f: &ImagesFreed) -> String {
    let mut out = String::new();
    for id in &f.images {
        out.push_str(&format!("Deleted: {id}\n"));
    }
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    out.push_str(&format!(
        "Freed {} ({}, {}, {})\n",
        bytes(f.bytes),
        plural(f.images.len(), "image", "images"),
        plural(f.blobs, "blob", "blobs"),
        plural(f.rootfs, "root file system", "root file systems"),
    ));
    out
}

/// The CLI's exit code for a guest command's end: its exit code, 128+N when signal N killed it.
pub fn exit_status(code: Option<i32>, signal: Option<i32>) -> i32 {
    match (code, signal) {
        (_, Some(sig)) => 128 + sig,
        (Some(c), None) => c & 0xff,
        (None, None) => 1,
    }
}

/// The exit code for an exec the agent refused to start: 127 when the program does not exist,
/// 126 when it cannot be executed; None when the error is not about the program.
pub fn exec_error_status(message: &str) -> Option<i32> {
    if !message.contains("cannot execute") {
        return None;
    }
    if message.contains("No such file") || message.contains("not found") {
        Some(127)
    } else {
        Some(126)
    }
}

/// A Unix time relative to `now`: `5m ago`, `in 29d`, `now`.
pub fn relative(now: i64, t: i64) -> String {
    match t - now {
        0 => "now".into(),
        d if d > 0 => format!("in {}", age(d as u64)),
        d => format!("{} ago", age(d.unsigned_abs())),
    }
}

/// A key's state at `now`: `revoked`, `expired`, `rotated` (replaced, still valid for the
/// overlap) or `active`.
pub fn key_status(k: &ApiKeyInfo, now: i64) -> &'static str {
    if k.revoked_at.is_some() {
        "revoked"
    } else if k.expires_at.is_some_and(|e| e <= now) {
        "expired"
    } else if k.replaced_by.is_some() {
        "rotated"
    } else {
        "active"
    }
}

/// `tartarus key ls`: times relative to `now`.
pub fn key_table(items: &[ApiKeyInfo], now: i64) -> String {
    let mut t = Table::new([
        "ID",
        "NAME",
        "TENANT",
        "ROLE",
        "STATUS",
        "CREATED",
        "EXPIRES",
        "LAST USED",
    ]);
    for k in items {
        t.row([
            k.id.clone(),
            k.name.clone(),
            k.tenant.clone(),
            k.role.clone(),
            key_status(k, now).to_string(),
            relative(now, k.created_at),
            k.expires_at
                .map_or_else(|| "never".into(), |e| relative(now, e)),
            k.last_used_at
                .map_or_else(|| "never".into(), |u| relative(now, u)),
        ]);
    }
    t.render()
}

/// `KEY: value` lines of a key (`key get`, `key revoke`, and below a new key).
pub fn key_details(k: &ApiKeyInfo, now: i64) -> String {
    let at = |t: i64| format!("{} ({})", utc(t), relative(now, t));
    let mut t = Table::new(["ID:", k.id.as_str()]);
    let rows: Vec<(&str, String)> = vec![
        ("Name:", k.name.clone()),
        ("Tenant:", k.tenant.clone()),
        ("Role:", k.role.clone()),
        ("Status:", key_status(k, now).to_string()),
        ("Created:", at(k.created_at)),
        ("Expires:", k.expires_at.map_or_else(|| "never".into(), at)),
        (
            "Last used:",
            k.last_used_at.map_or_else(|| "never".into(), at),
        ),
        ("Revoked:", opt(k.revoked_at.map(at))),
        ("Replaced by:", opt(k.replaced_by.clone())),
    ];
    for (k, v) in rows {
        t.row([k.to_string(), v]);
    }
    t.render()
}

/// Unix seconds as `2026-12-05 17:00:00 UTC`.
pub fn utc(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// An audit record's RFC 3339 time as `2026-12-05 17:00:00` (UTC, whole seconds).
fn audit_time(t: &str) -> String {
    match parse_rfc3339(t) {
        Some(secs) => utc(secs).trim_end_matches(" UTC").to_string(),
        None => t.to_string(),
    }
}

/// `tartarus audit ls`.
pub fn audit_table(items: &[AuditEntry]) -> String {
    let mut t = Table::new([
        "SEQ",
        "TIME (UTC)",
        "TENANT",
        "PRINCIPAL",
        "ACTION",
        "RESOURCE",
        "RESULT",
        "SOURCE",
    ]);
    for e in items {
        t.row([
            e.seq.to_string(),
            audit_time(&e.time),
            e.tenant.clone(),
            e.principal.clone(),
            e.action.clone(),
            e.resource.clone(),
            e.result.clone(),
            e.source.clone(),
        ]);
    }
    t.render()
}
