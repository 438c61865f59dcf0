//! Undoing what the jailer created when a later step fails before the jail is entered.

use std::fs;
use std::path::PathBuf;

/// Files and directories created so far, removed in reverse order by [`Undo::run`].
///
/// Only what this process created is recorded, and directories are removed with `rmdir` (never
/// recursively), so a failed run cannot remove anything that was there before it.
#[derive(Debug, Default)]
pub struct Undo {
    created: Vec<Created>,
}

#[derive(Debug)]
enum Created {
    File(PathBuf),
    Dir(PathBuf),
}

impl Undo {
    pub fn file(&mut self, p: PathBuf) {
        self.created.push(Created::File(p));
    }

    pub fn dir(&mut self, p: PathBuf) {
        self.created.push(Created::Dir(p));
    }

    /// Removes everything recorded, newest first; failures are reported on stderr and skipped.
    pub fn run(&mut self) {
        while let Some(c) = self.created.pop() {
            let (r, p) = match &c {
                Created::File(p) => (fs::remove_file(p), p),
                Created::Dir(p) => (fs::remove_dir(p), p),
            };
            if let Err(e) = r {
                eprintln!(
                    "tartarus-jailer: cleanup: cannot remove {}: {e}",
                    p.display()
                );
            }
        }
    }

    /// Forgets everything recorded (the jail is committed).
    pub fn forget(&mut self) {
        self.created.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_only_what_was_recorded() {
        let base = std::env::temp_dir().join(format!("jailer-undo-{}", std::process::id()));
        fs::create_dir_all(&base).unwrap();
        fs::write(base.join("keep"), b"x").unwrap();
        let mut u = Undo::default();
        let d = base.join("d");
        fs::create_dir(&d).unwrap();
        u.dir(d.clone());
        fs::write(d.join("f"), b"x").unwrap();
        u.file(d.join("f"));
        u.run();
        assert!(!d.exists());
        assert!(base.join("keep").exists());
        fs::remove_dir_all(&base).unwrap();
    }
}
