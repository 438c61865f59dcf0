//! Cgroups: where each controller is mounted (from /proc/mounts), the plan for the jail's
//! cgroup directories, and applying it (create, write the values, move the process in).
//!
//! - v1: for `--cgroup cpuset.cpus=0` the controller is `cpuset` (the part before the first
//!   dot); its hierarchy is the `cgroup` mount whose options name it. The jail's cgroup is
//!   `<mount>/<parent>/<id>`; the process joins through `tasks`. New cpuset directories inherit
//!   `cpuset.cpus`/`cpuset.mems` from their parent (a cpuset with empty ones cannot hold tasks).
//! - v2: the `cgroup2` mount; the jail's cgroup is `<mount>/<parent>/<id>`; every controller in
//!   use is enabled in `cgroup.subtree_control` of each ancestor; the process joins through
//!   `cgroup.procs`.
//!
//! Without `--cgroup` settings no cgroup is created (as in Firecracker).

use std::fs;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use crate::cleanup::Undo;

/// The parent cgroup when `--parent-cgroup` is not given.
pub const DEFAULT_PARENT: &str = "tartarus";

/// Files that would move processes: never written through `--cgroup`.
const FORBIDDEN_FILES: &[&str] = &["tasks", "cgroup.procs", "cgroup.threads"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Errors of cgroup validation and setup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "Invalid --cgroup {0:?}: use FILE=VALUE with a file like cpuset.cpus or pids.max \
         (controller, a dot, a name) and a non-empty value"
    )]
    Setting(String),
    #[error("Invalid --cgroup {0:?}: this file must not be written by the jailer")]
    Forbidden(String),
    #[error("Invalid --cgroup {0:?}: cgroup.* files are not tied to one v1 controller; use --cgroup-version 2 or a controller file")]
    V1CoreFile(String),
    #[error("Invalid --parent-cgroup {0:?}: use a relative path of names from [A-Za-z0-9._-] without `.` or `..`")]
    Parent(String),
    #[error("Cannot read /proc/mounts")]
    Mounts(#[source] std::io::Error),
    #[error("This host has no cgroup v1 hierarchy mounted (--cgroup-version 1)")]
    NoV1,
    #[error("This host has no cgroup v2 hierarchy mounted (--cgroup-version 2)")]
    NoV2,
    #[error("Cgroup v1 controller {controller:?} (from --cgroup {setting:?}) is not mounted on this host; mounted v1 controllers: {available}")]
    V1Controller {
        controller: String,
        setting: String,
        available: String,
    },
    #[error("Cgroup v2 controller {controller:?} (from --cgroup {setting:?}) is not available in the v2 hierarchy at {}; it offers: {available}", mount.display())]
    V2Controller {
        controller: String,
        setting: String,
        mount: PathBuf,
        available: String,
    },
    #[error("Cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("The cgroup {} already exists: another jail with this --id? (remove it with rmdir)", .0.display())]
    Exists(PathBuf),
    #[error("Cannot create the cgroup {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot write {value:?} to {}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
}

/// One `--cgroup FILE=VALUE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub file: String,
    pub value: String,
}

impl Setting {
    /// The controller: the part of the file name before the first dot.
    pub fn controller(&self) -> &str {
        self.file.split('.').next().unwrap_or("")
    }

    fn raw(&self) -> String {
        format!("{}={}", self.file, self.value)
    }
}

/// Parses `FILE=VALUE`.
pub fn parse_setting(s: &str) -> Result<Setting, CgroupError> {
    let bad = || CgroupError::Setting(s.to_string());
    let (file, value) = s.split_once('=').ok_or_else(bad)?;
    let (controller, rest) = file.split_once('.').ok_or_else(bad)?;
    let controller_ok = !controller.is_empty()
        && controller
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let rest_ok = !rest.is_empty()
        && !rest.starts_with('.')
        && !rest.ends_with('.')
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    let value_ok = !value.trim().is_empty() && !value.bytes().any(|b| b == b'\n' || b == 0);
    if !(controller_ok && rest_ok && value_ok) {
        return Err(bad());
    }
    if FORBIDDEN_FILES.contains(&file) {
        return Err(CgroupError::Forbidden(s.to_string()));
    }
    Ok(Setting {
        file: file.to_string(),
        value: value.to_string(),
    })
}

/// Checks `--parent-cgroup`: a relative path of plain names.
pub fn parse_parent(parent: &str) -> Result<PathBuf, CgroupError> {
    let bad = || CgroupError::Parent(parent.to_string());
    if parent.is_empty() || parent.starts_with('/') {
        return Err(bad());
    }
    for part in parent.split('/') {
        let ok = !part.is_empty()
            && part != "."
            && part != ".."
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(PathBuf::from(parent))
}

/// One line of /proc/mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub fstype: String,
    pub point: PathBuf,
    pub options: Vec<String>,
}

/// Parses /proc/mounts (octal escapes such as `\040` in mount points are decoded).
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let _dev = f.next()?;
            let point = unescape(f.next()?);
            let fstype = f.next()?.to_string();
            let options = f.next()?.split(',').map(str::to_string).collect();
            Some(Mount {
                fstype,
                point: PathBuf::from(point),
                options,
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The v1 hierarchy root of `controller`, if mounted.
pub fn v1_mount<'a>(mounts: &'a [Mount], controller: &str) -> Option<&'a Mount> {
    mounts
        .iter()
        .find(|m| m.fstype == "cgroup" && m.options.iter().any(|o| o == controller))
}

/// The v2 hierarchy root, if mounted.
pub fn v2_mount(mounts: &[Mount]) -> Option<&Mount> {
    mounts.iter().find(|m| m.fstype == "cgroup2")
}

/// The v1 controllers mounted on this host.
fn v1_controllers(mounts: &[Mount]) -> Vec<String> {
    const NOT_CONTROLLERS: &[&str] = &[
        "rw", "ro", "relatime", "noatime", "nosuid", "nodev", "noexec",
    ];
    let mut out: Vec<String> = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup")
        .flat_map(|m| m.options.iter())
        .filter(|o| !NOT_CONTROLLERS.contains(&o.as_str()) && !o.contains('='))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// One cgroup directory to create: `<mount>/<parent>/<id>`, with the settings that live there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupDir {
    /// The hierarchy root.
    pub mount: PathBuf,
    /// Controllers of the settings in this hierarchy.
    pub controllers: Vec<String>,
    pub settings: Vec<Setting>,
}

/// The cgroups of one jail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupPlan {
    pub version: Version,
    /// Relative path of the parent cgroup.
    pub parent: PathBuf,
    pub id: String,
    pub dirs: Vec<CgroupDir>,
}

impl CgroupPlan {
    /// Plans the cgroups for `raw` settings against this host's /proc/mounts. Reads only.
    pub fn new(
        version: Version,
        raw: &[String],
        parent: &str,
        id: &str,
    ) -> Result<CgroupPlan, CgroupError> {
        let mounts = if raw.is_empty() {
            Vec::new()
        } else {
            parse_mounts(&fs::read_to_string("/proc/mounts").map_err(CgroupError::Mounts)?)
        };
        let plan = Self::plan(version, raw, parent, id, &mounts, &|p| {
            fs::read_to_string(p).map_err(|source| CgroupError::Read {
                path: p.to_path_buf(),
                source,
            })
        })?;
        for d in &plan.dirs {
            let path = plan.path_in(d);
            if fs::symlink_metadata(&path).is_ok() {
                return Err(CgroupError::Exists(path));
            }
        }
        Ok(plan)
    }

    /// The planning logic, with /proc/mounts and file reads supplied (for unit tests).
    pub fn plan(
        version: Version,
        raw: &[String],
        parent: &str,
        id: &str,
        mounts: &[Mount],
        read: &dyn Fn(&Path) -> Result<String, CgroupError>,
    ) -> Result<CgroupPlan, CgroupError> {
        let parent = parse_parent(parent)?;
        let settings = raw
            .iter()
            .map(|s| parse_setting(s))
            .collect::<Result<Vec<_>, _>>()?;
        let mut plan = CgroupPlan {
            version,
            parent,
            id: id.to_string(),
            dirs: Vec::new(),
        };
        if settings.is_empty() {
            return Ok(plan);
        }
        match version {
            Version::V1 => {
                if !mounts.iter().any(|m| m.fstype == "cgroup") {
                    return Err(CgroupError::NoV1);
                }
                for s in settings {
                    let controller = s.controller().to_string();
                    if controller == "cgroup" {
                        return Err(CgroupError::V1CoreFile(s.raw()));
                    }
                    let m =
                        v1_mount(mounts, &controller).ok_or_else(|| CgroupError::V1Controller {
                            controller: controller.clone(),
                            setting: s.raw(),
                            available: v1_controllers(mounts).join(", "),
                        })?;
                    plan.add(&m.point, controller, s);
                }
            }
            Version::V2 => {
                let m = v2_mount(mounts).ok_or(CgroupError::NoV2)?;
                let available = read(&m.point.join("cgroup.controllers"))?;
                let available: Vec<&str> = available.split_whitespace().collect();
                for s in settings {
                    let controller = s.controller().to_string();
                    if controller != "cgroup" && !available.contains(&controller.as_str()) {
                        return Err(CgroupError::V2Controller {
                            controller,
                            setting: s.raw(),
                            mount: m.point.clone(),
                            available: if available.is_empty() {
                                "no controllers".to_string()
                            } else {
                                available.join(", ")
                            },
                        });
                    }
                    plan.add(&m.point, controller, s);
                }
            }
        }
        Ok(plan)
    }

    fn add(&mut self, mount: &Path, controller: String, s: Setting) {
        let i = match self.dirs.iter().position(|d| d.mount == mount) {
            Some(i) => i,
            None => {
                self.dirs.push(CgroupDir {
                    mount: mount.to_path_buf(),
                    controllers: Vec::new(),
                    settings: Vec::new(),
                });
                self.dirs.len() - 1
            }
        };
        let d = &mut self.dirs[i];
        if controller != "cgroup" && !d.controllers.contains(&controller) {
            d.controllers.push(controller);
        }
        d.settings.push(s);
    }

    /// `<mount>/<parent>/<id>` of one directory.
    pub fn path_in(&self, d: &CgroupDir) -> PathBuf {
        d.mount.join(&self.parent).join(&self.id)
    }

    /// The cgroup directories this plan creates (one per hierarchy).
    #[cfg(test)]
    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| self.path_in(d)).collect()
    }

    /// Creates the cgroups, writes the settings and moves process `pid` in. Every directory
    /// created is recorded in `undo`.
    pub fn apply(&self, pid: u32, undo: &mut Undo) -> Result<(), CgroupError> {
        for d in &self.dirs {
            let levels: Vec<&std::ffi::OsStr> = self
                .parent
                .components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n),
                    _ => None,
                })
                .chain(std::iter::once(std::ffi::OsStr::new(&self.id)))
                .collect();
            let mut cur = d.mount.clone();
            for level in levels {
                if self.version == Version::V2 && !d.controllers.is_empty() {
                    let enable = d
                        .controllers
                        .iter()
                        .map(|c| format!("+{c}"))
                        .collect::<Vec<_>>()
                        .join(" ");
                    write(&cur.join("cgroup.subtree_control"), &enable)?;
                }
                let next = cur.join(level);
                match fs::create_dir(&next) {
                    Ok(()) => undo.dir(next.clone()),
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(source) => return Err(CgroupError::Create { path: next, source }),
                }
                if self.version == Version::V1 && d.controllers.iter().any(|c| c == "cpuset") {
                    inherit_cpuset(&cur, &next)?;
                }
                cur = next;
            }
            for s in &d.settings {
                write(&cur.join(&s.file), &s.value)?;
            }
            let procs = match self.version {
                Version::V1 => "tasks",
                Version::V2 => "cgroup.procs",
            };
            write(&cur.join(procs), &pid.to_string())?;
        }
        Ok(())
    }
}

/// Copies `cpuset.cpus` and `cpuset.mems` from `parent` into `child` where the child's are empty.
fn inherit_cpuset(parent: &Path, child: &Path) -> Result<(), CgroupError> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let read = |p: PathBuf| {
            fs::read_to_string(&p).map_err(|source| CgroupError::Read { path: p, source })
        };
        if read(child.join(file))?.trim().is_empty() {
            let v = read(parent.join(file))?;
            write(&child.join(file), v.trim())?;
        }
    }
    Ok(())
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
/dev/vda / ext4 rw,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    fn controllers(list: &'static str) -> impl Fn(&Path) -> Result<String, CgroupError> {
        move |_| Ok(list.to_string())
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn settings() {
        let s = parse_setting("cpuset.cpus=0-1").unwrap();
        assert_eq!((s.controller(), s.value.as_str()), ("cpuset", "0-1"));
        assert_eq!(
            parse_setting("hugetlb.2MB.max=0").unwrap().controller(),
            "hugetlb"
        );
        assert_eq!(parse_setting("memory.max=a=b").unwrap().value, "a=b");
        for bad in [
            "cpuset.cpus",
            "=1",
            "cpus=0",
            "cpuset.=0",
            ".cpus=0",
            "cpuset.cpus=",
            "cpu/x.y=1",
            "../x.y=1",
            "a.b=\n1",
        ] {
            assert!(
                matches!(parse_setting(bad), Err(CgroupError::Setting(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_setting("cgroup.procs=1"),
            Err(CgroupError::Forbidden(_))
        ));
    }

    #[test]
    fn parents() {
        assert_eq!(parse_parent("a/b-c").unwrap(), PathBuf::from("a/b-c"));
        for bad in ["", "/a", "a/../b", "a//b", ".", "a/", "a b"] {
            assert!(parse_parent(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mounts_and_escapes() {
        let m = parse_mounts("cgroup /a\\040b cgroup rw,pids 0 0\n");
        assert_eq!(m[0].point, PathBuf::from("/a b"));
        let m = parse_mounts(MOUNTS);
        assert_eq!(
            v1_mount(&m, "cpuacct").unwrap().point,
            PathBuf::from("/sys/fs/cgroup/cpu")
        );
        assert!(v1_mount(&m, "memory").is_none());
        assert_eq!(
            v2_mount(&m).unwrap().point,
            PathBuf::from("/sys/fs/cgroup/unified")
        );
        assert_eq!(v1_controllers(&m), ["cpu", "cpuacct", "cpuset", "pids"]);
    }

    #[test]
    fn v1_plan_groups_by_mount() {
        let m = parse_mounts(MOUNTS);
        let raw = strings(&[
            "cpuset.cpus=0",
            "cpu.shares=10",
            "cpuacct.x=1",
            "cpuset.mems=0",
        ]);
        let p =
            CgroupPlan::plan(Version::V1, &raw, "tartarus", "vm1", &m, &controllers("")).unwrap();
        assert_eq!(p.dirs.len(), 2);
        assert_eq!(p.dirs[0].settings.len(), 2);
        assert_eq!(p.dirs[1].controllers, ["cpu", "cpuacct"]);
        assert_eq!(
            p.paths()[0],
            PathBuf::from("/sys/fs/cgroup/cpuset/tartarus/vm1")
        );
        let e = CgroupPlan::plan(
            Version::V1,
            &strings(&["memory.limit_in_bytes=1"]),
            "t",
            "v",
            &m,
            &controllers(""),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"memory\"") && e.contains("cpuset"), "{e}");
        // No settings: nothing to create, nothing required of the host.
        let p = CgroupPlan::plan(Version::V1, &[], "t", "v", &[], &controllers("")).unwrap();
        assert!(p.dirs.is_empty());
    }

    #[test]
    fn v2_plan_checks_controllers() {
        let m = parse_mounts(MOUNTS);
        let raw = strings(&["pids.max=10"]);
        let e = CgroupPlan::plan(Version::V2, &raw, "t", "v", &m, &controllers("hugetlb\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"pids\"") && e.contains("hugetlb"), "{e}");
        let e = CgroupPlan::plan(Version::V2, &raw, "t", "v", &m, &controllers("\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no controllers"), "{e}");
        let p =
            CgroupPlan::plan(Version::V2, &raw, "a/b", "v", &m, &controllers("cpu pids")).unwrap();
        assert_eq!(p.paths(), [PathBuf::from("/sys/fs/cgroup/unified/a/b/v")]);
        assert_eq!(p.dirs[0].controllers, ["pids"]);
        let no_v2 = parse_mounts("cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n");
        assert!(matches!(
            CgroupPlan::plan(Version::V2, &raw, "t", "v", &no_v2, &controllers("pids")),
            Err(CgroupError::NoV2)
        ));
        assert!(matches!(
            CgroupPlan::plan(
                Version::V1,
                &raw,
                "t",
                "v",
                &parse_mounts("cgroup2 /c cgroup2 rw 0 0\n"),
                &controllers("")
            ),
            Err(CgroupError::NoV1)
        ));
    }
}
