//! Every command-line flag a binary accepts appears in its documented synopsis (the fenced
//! blocks of its README that start with the binary's name), so the docs cannot fall behind a
//! new flag. Flags come from the binaries' own `--help`.

use std::collections::BTreeSet;
use std::process::Command;

use tartarus_tests::{bin_path, repo_root};

/// Flags (`--name`, aliases included) listed by `bin --help`.
fn flags_of(bin: &str) -> BTreeSet<String> {
    let out = Command::new(bin_path(bin))
        .arg("--help")
        .output()
        .expect("run --help");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut flags = BTreeSet::new();
    for line in text.lines() {
        let t = line.trim_start();
        let opts = t.starts_with('-');
        for (i, _) in line.match_indices("--") {
            let name: String = line[i + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            let alias = line[..i].ends_with("alias: ") || line[..i].ends_with("aliases: ");
            if !name.is_empty()
                && (opts && t.find("--").is_some_and(|j| line.len() - t.len() + j == i) || alias)
            {
                flags.insert(format!("--{name}"));
            }
        }
    }
    flags.remove("--help");
    flags.remove("--version");
    flags
}

/// The text of every fenced block in `doc` with a line that starts with `bin` (a synopsis).
fn synopses(doc: &str, bin: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join(doc)).unwrap();
    let mut out = String::new();
    let mut block = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            if inside
                && block
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("{bin} ")))
            {
                out.push_str(&block);
            }
            block.clear();
            inside = !inside;
            continue;
        }
        if inside {
            block.push_str(line);
            block.push('\n');
        }
    }
    out
}

fn has_flag(text: &str, flag: &str) -> bool {
    text.match_indices(flag).any(|(i, _)| {
        let after = text[i + flag.len()..].chars().next();
        !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

#[test]
fn every_flag_is_in_its_synopsis() {
    let cases = [
        ("tartarus-vmm", "README.md", &["--enable-pci"][..]),
        ("tartarusd", "README.md", &[][..]),
        ("tartarus-jailer", "jailer/README.md", &[][..]),
        ("tartarus-seccomp-gen", "seccomp/README.md", &[][..]),
    ];
    let mut missing = vec![];
    for (bin, doc, prose_only) in cases {
        let flags = flags_of(bin);
        assert!(flags.len() >= 3, "{bin} --help listed {flags:?}");
        let syn = synopses(doc, bin);
        assert!(!syn.is_empty(), "{doc} has no synopsis block for {bin}");
        let whole = std::fs::read_to_string(repo_root().join(doc)).unwrap();
        for f in &flags {
            // A flag that is only refused is described in the text instead.
            let ok = if prose_only.contains(&f.as_str()) {
                has_flag(&whole, f)
            } else {
                has_flag(&syn, f)
            };
            if !ok {
                missing.push(format!("{bin} {f} (in {doc})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags missing from the docs' synopses:\n{}",
        missing.join("\n")
    );
}
