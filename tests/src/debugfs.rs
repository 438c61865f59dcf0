//! Reads an ext4 image without mounting it (e2fsprogs' `debugfs`), to check what an image
//! build put there, entry by entry, against the fixtures' `edge-expect.json`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// One inode as `debugfs stat` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub inode: u64,
    /// file, dir, symlink, chr, blk, fifo, socket
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// A fast symlink's target.
    pub link: Option<String>,
    pub rdev: Option<(u32, u32)>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

fn run(img: &Path, cmds: &str) -> String {
    let file = std::env::temp_dir().join(format!("debugfs-{}-{}.cmds", std::process::id(), rand()));
    std::fs::write(&file, cmds).unwrap();
    let out = Command::new("debugfs")
        .arg("-f")
        .arg(&file)
        .arg(img)
        .output()
        .expect("debugfs (e2fsprogs)");
    let _ = std::fs::remove_file(&file);
    // debugfs echoes each command as "debugfs: CMD" on stdout; errors go to stderr, so read
    // both interleaved is not possible: "not found" errors go to stderr, and we detect them by
    // a missing "Inode:" line in the section.
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rand() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}

fn quote(p: &str) -> String {
    format!("\"/{}\"", p.trim_start_matches('/').replace('"', "\\\""))
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let i = line.find(key)?;
    line[i + key.len()..].split_whitespace().next()
}

fn parse_xattr_value(v: &str) -> Vec<u8> {
    let v = v.trim();
    if let Some(q) = v.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
        return q.as_bytes().to_vec();
    }
    v.split_whitespace()
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect()
}

fn parse_stat(section: &str) -> Option<Entry> {
    let mut e = Entry {
        inode: 0,
        kind: String::new(),
        mode: 0,
        uid: 0,
        gid: 0,
        size: 0,
        link: None,
        rdev: None,
        xattrs: BTreeMap::new(),
    };
    let mut found = false;
    let mut in_xattrs = false;
    for line in section.lines() {
        if line.starts_with("Inode:") {
            found = true;
            e.inode = field(line, "Inode:")?.parse().ok()?;
            let t = line.split("Type:").nth(1)?.split("Mode:").next()?.trim();
            e.kind = match t {
                "regular" => "file",
                "directory" => "dir",
                "symlink" => "symlink",
                "character special" => "chr",
                "block special" => "blk",
                "FIFO" => "fifo",
                "socket" => "socket",
                other => other,
            }
            .to_string();
            e.mode = u32::from_str_radix(field(line, "Mode:")?, 8).ok()?;
        } else if line.starts_with("User:") {
            e.uid = field(line, "User:")?.parse().ok()?;
            e.gid = field(line, "Group:")?.parse().ok()?;
            e.size = field(line, "Size:")?.parse().ok()?;
        } else if let Some(d) = line.strip_prefix("Fast link dest: ") {
            e.link = Some(d.trim().trim_matches('"').to_string());
        } else if let Some(d) = line.strip_prefix("Device major/minor number: ") {
            let mm = d.split_whitespace().next()?;
            let (a, b) = mm.split_once(':')?;
            e.rdev = Some((a.parse().ok()?, b.parse().ok()?));
        } else if line.starts_with("Extended attributes:") {
            in_xattrs = true;
        } else if in_xattrs && line.starts_with("  ") {
            let (name, rest) = line.trim().split_once(" (")?;
            let value = rest.split_once(" = ").map(|(_, v)| v).unwrap_or("");
            e.xattrs.insert(name.to_string(), parse_xattr_value(value));
        } else {
            in_xattrs = false;
        }
    }
    found.then_some(e)
}

/// `stat` of each path (relative to the root); None where there is no such entry.
pub fn stat_many(img: &Path, paths: &[&str]) -> Vec<Option<Entry>> {
    let cmds: String = paths
        .iter()
        .map(|p| format!("stat {}\n", quote(p)))
        .collect();
    let out = run(img, &cmds);
    let sections: Vec<&str> = out.split("debugfs: stat ").skip(1).collect();
    assert_eq!(sections.len(), paths.len(), "debugfs output: {out}");
    sections.iter().map(|s| parse_stat(s)).collect()
}

/// The content of a regular file.
pub fn read(img: &Path, path: &str) -> Vec<u8> {
    let tmp = std::env::temp_dir().join(format!("debugfs-dump-{}-{}", std::process::id(), rand()));
    run(
        img,
        &format!("dump {} \"{}\"\n", quote(path), tmp.display()),
    );
    let b = std::fs::read(&tmp).unwrap_or_default();
    let _ = std::fs::remove_file(&tmp);
    b
}

/// Checks the image against the fixtures' expectations file; returns what differs.
pub fn check_expect(img: &Path, expect: &Path) -> Vec<String> {
    let doc: Value = serde_json::from_slice(&std::fs::read(expect).unwrap()).unwrap();
    let entries = doc["entries"].as_array().expect("entries").clone();
    let paths: Vec<String> = entries
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let got = stat_many(img, &refs);
    let mut bad = vec![];
    let mut groups: BTreeMap<String, u64> = BTreeMap::new();
    for (want, (path, got)) in entries.iter().zip(paths.iter().zip(got)) {
        let kind = want["type"].as_str().unwrap();
        let Some(g) = got else {
            if kind != "absent" {
                bad.push(format!("{path}: missing, want {kind}"));
            }
            continue;
        };
        if kind == "absent" {
            bad.push(format!("{path}: present ({}), want absent", g.kind));
            continue;
        }
        if g.kind != kind {
            bad.push(format!("{path}: {} want {kind}", g.kind));
            continue;
        }
        for (k, v) in [
            ("mode", g.mode as u64),
            ("uid", g.uid as u64),
            ("gid", g.gid as u64),
        ] {
            if let Some(w) = want[k].as_u64() {
                if w != v {
                    bad.push(format!("{path}: {k} {v:o} want {w:o}"));
                }
            }
        }
        if let Some(t) = want["target"].as_str() {
            if let Some(l) = &g.link {
                if l != t {
                    bad.push(format!("{path}: -> {l} want -> {t}"));
                }
            }
        }
        if let (Some(ma), Some(mi)) = (want["rdev_major"].as_u64(), want["rdev_minor"].as_u64()) {
            if g.rdev != Some((ma as u32, mi as u32)) {
                bad.push(format!("{path}: rdev {:?} want {ma}:{mi}", g.rdev));
            }
        }
        if let Some(x) = want["xattrs"].as_object() {
            for (name, hex) in x {
                let want_b: Vec<u8> = (0..hex.as_str().unwrap().len() / 2)
                    .map(|i| {
                        u8::from_str_radix(&hex.as_str().unwrap()[2 * i..2 * i + 2], 16).unwrap()
                    })
                    .collect();
                if g.xattrs.get(name) != Some(&want_b) {
                    bad.push(format!(
                        "{path}: xattr {name} = {:?} want {hex}",
                        g.xattrs.get(name)
                    ));
                }
            }
        }
        if let Some(sum) = want["sha256"].as_str() {
            let data = read(img, path);
            let have = crate::registry::sha256_hex(&data);
            if have != sum {
                bad.push(format!(
                    "{path}: content sha256 {have} want {sum} ({} bytes)",
                    data.len()
                ));
            }
        }
        if let Some(grp) = want["hardlink_group"]
            .as_str()
            .map(String::from)
            .or_else(|| want["hardlink_group"].as_u64().map(|n| n.to_string()))
        {
            match groups.get(&grp) {
                Some(ino) if *ino != g.inode => bad.push(format!(
                    "{path}: inode {} not shared with its hard link group {grp}",
                    g.inode
                )),
                _ => {
                    groups.insert(grp, g.inode);
                }
            }
        }
    }
    bad
}
