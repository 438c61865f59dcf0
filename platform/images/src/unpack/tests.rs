//! Tests for `unpack` (they run as root: ownership, devices and `security.` xattrs need it).
//! Each builds its layers with `tar::Builder` or hand-made headers (for names an honest builder
//! refuses to write) and checks the result, and every refused escape checks that nothing
//! appeared outside the root.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tar::{EntryType, Header};

use super::*;

mod security;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// `<tmp>/tartarus-unpack-<pid>-<n>/{root,sentinel,layers}`, removed on drop.
struct Scratch {
    base: PathBuf,
    layers: Vec<Layer>,
}

impl Scratch {
    fn new() -> Scratch {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = std::env::temp_dir().join(format!("tartarus-unpack-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        for d in ["root", "sentinel", "layers"] {
            fs::create_dir_all(base.join(d)).unwrap();
        }
        Scratch {
            base,
            layers: Vec::new(),
        }
    }

    fn root(&self) -> PathBuf {
        self.base.join("root")
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    fn sentinel(&self) -> PathBuf {
        self.base.join("sentinel")
    }

    /// Adds a layer blob with these bytes.
    fn layer(&mut self, bytes: &[u8], compression: Option<Compression>) -> &mut Self {
        let i = self.layers.len();
        let path = self.base.join("layers").join(i.to_string());
        fs::write(&path, bytes).unwrap();
        self.layers.push(Layer {
            path,
            digest: format!("sha256:layer{i}"),
            compression,
        });
        self
    }

    fn run(&self, opts: &UnpackOptions) -> Result<UnpackStats, UnpackError> {
        unpack(&self.layers, &self.root(), opts, &mut |_, _| {})
    }

    fn ok(&self) -> UnpackStats {
        self.run(&UnpackOptions::default()).expect("unpack")
    }

    /// Nothing but our three directories next to the root, and the sentinel untouched.
    fn assert_contained(&self) {
        let mut names: Vec<_> = fs::read_dir(&self.base)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["layers", "root", "sentinel"]);
        let mut inside: Vec<_> = fs::read_dir(self.sentinel())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        inside.sort();
        assert!(
            inside.iter().all(|n| n == "secret"),
            "sentinel gained {inside:?}"
        );
        if self.sentinel().join("secret").exists() {
            assert_eq!(
                fs::read(self.sentinel().join("secret")).unwrap(),
                b"keep out"
            );
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// A tar being built; every entry is owned by root and dated 1000 unless set otherwise.
struct Tar(tar::Builder<Vec<u8>>);

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1000);
    h
}

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn add(&mut self, mut h: Header, path: &str, data: &[u8]) -> &mut Self {
        h.set_size(data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }

    fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.add(header(EntryType::Regular, 0o644, 0), path, data)
    }

    fn file_with(&mut self, path: &str, data: &[u8], mode: u32, uid: u64, mtime: u64) -> &mut Self {
        let mut h = header(EntryType::Regular, mode, 0);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(mtime);
        self.add(h, path, data)
    }

    fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.add(header(EntryType::Directory, mode, 0), path, b"")
    }

    fn link(&mut self, kind: EntryType, path: &str, target: &str) -> &mut Self {
        let mut h = header(kind, 0o777, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    /// An entry whose name (and link name) are written raw, as an attacker would.
    fn raw(&mut self, kind: EntryType, name: &[u8], link: &[u8], data: &[u8]) -> &mut Self {
        let mut h = header(kind, 0o644, data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.0
            .append_pax_extensions(records.iter().copied())
            .unwrap();
        self
    }

    fn bytes(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

fn lstat(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn lgetxattr(p: &Path, key: &str) -> Option<Vec<u8>> {
    let path = CString::new(p.as_os_str().as_bytes()).unwrap();
    let key = CString::new(key).unwrap();
    let mut buf = vec![0u8; 1024];
    // SAFETY: both strings are NUL-terminated and `buf` is writable for its length.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            key.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

#[test]
fn layers_apply_in_order() {
    let mut s = Scratch::new();
    s.layer(
        &Tar::new()
            .dir("etc", 0o755)
            .file("etc/a", b"one")
            .file("etc/b", b"b")
            .bytes(),
        None,
    );
    s.layer(
        &Tar::new()
            .file("etc/a", b"two")
            .file("etc/a", b"three")
            .bytes(),
        None,
    );
    let stats = s.ok();
    assert_eq!(
        fs::read(s.p("etc/a")).unwrap(),
        b"three",
        "later entry and layer win"
    );
    assert_eq!(fs::read(s.p("etc/b")).unwrap(), b"b");
    assert_eq!(
        stats,
        UnpackStats {
            entries: 5,
            bytes: 3 + 1 + 3 + 5,
            whiteouts: 0
        }
    );
}

#[test]
fn whiteouts_remove_files_and_trees() {
    let mut s = Scratch::new();
    s.layer(
        &Tar::new()
            .file("a", b"a")
            .file("d/x/y/z", b"z")
            .file("d/keep", b"k")
            .bytes(),
        None,
    );
    s.layer(
        &Tar::new()
            .file("a/.wh.under_a_file", b"")
            .file(".wh.a", b"")
            .file("d/.wh.x", b"")
            .file("gone/.wh.nothing", b"")
            .bytes(),
        None,
    );
    let stats = s.ok();
    assert!(!exists(&s.p("a")));
    assert!(!exists(&s.p("d/x")));
    assert_eq!(names(&s.p("d")), ["keep"]);
    assert!(!exists(&s.p(".wh.a")) && !exists(&s.p("d/.wh.x")) && !exists(&s.p("gone")));
    assert_eq!(stats.whiteouts, 4);
}

#[test]
fn opaque_dir_hides_lower_children_only() {
    let mut s = Scratch::new();
    s.layer(
        &Tar::new()
            .file("d/old", b"o")
            .file("d/sub/old2", b"o")
            .file("d/sub/deep/old3", b"o")
            .file("other", b"x")
            .bytes(),
        None,
    );
    s.layer(
        &Tar::new()
            .file("d/before", b"b")
            .file("d/sub/kept", b"k")
            .file("d/.wh..wh..opq", b"")
            .file("d/after", b"a")
            .bytes(),
        None,
    );
    s.ok();
    assert_eq!(names(&s.p("d")), ["after", "before", "sub"]);
    assert_eq!(names(&s.p("d/sub")), ["kept"]);
    assert!(exists(&s.p("other")));
}

#[test]
fn file_and_dir_replace_each_other() {
    let mut s = Scratch::new();
    s.layer(
        &Tar::new()
            .file("x", b"file")
            .dir("y", 0o755)
            .file("y/child", b"c")
            .dir("z", 0o700)
            .file("z/kept", b"k")
            .bytes(),
        None,
    );
    s.layer(
        &Tar::new()
            .dir("x", 0o755)
            .file("x/inner", b"i")
            .file("y", b"now a file")
            .dir("z", 0o751)
            .bytes(),
        None,
    );
    s.ok();
    assert!(lstat(&s.p("x")).is_dir());
    assert_eq!(fs::read(s.p("x/inner")).unwrap(), b"i");
    assert!(lstat(&s.p("y")).is_file());
    assert_eq!(fs::read(s.p("y")).unwrap(), b"now a file");
    assert_eq!(
        fs::read(s.p("z/kept")).unwrap(),
        b"k",
        "a dir over a dir keeps its contents"
    );
    assert_eq!(
        lstat(&s.p("z")).mode() & 0o7777,
        0o751,
        "and takes the new metadata"
    );
}

#[test]
fn hard_links_share_the_inode() {
    let mut s = Scratch::new();
    s.layer(&Tar::new().file("bin/busybox", b"bb").bytes(), None);
    s.layer(
        &Tar::new()
            .link(EntryType::Link, "bin/sh", "bin/busybox")
            .file("usr/x", b"x")
            .link(EntryType::Link, "usr/y", "./usr/x")
            .link(EntryType::Link, "usr/y", "usr/x")
            .bytes(),
        None,
    );
    s.ok();
    let (a, b) = (lstat(&s.p("bin/busybox")), lstat(&s.p("bin/sh")));
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    assert_eq!(lstat(&s.p("usr/x")).ino(), lstat(&s.p("usr/y")).ino());

    let mut s = Scratch::new();
    s.layer(
        &Tar::new().link(EntryType::Link, "a", "missing").bytes(),
        None,
    );
    let err = s.run(&UnpackOptions::default()).unwrap_err();
    assert!(
        matches!(err, UnpackError::BadHardLink { ref entry, .. } if entry == "a"),
        "{err}"
    );
}

#[test]
fn symlinks_are_written_verbatim_with_owner() {
    let mut s = Scratch::new();
    let mut t = Tar::new();
    t.link(EntryType::Symlink, "rel", "../x/y")
        .link(EntryType::Symlink, "abs", "/etc/passwd");
    let mut h = header(EntryType::Symlink, 0o777, 0);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(3_000_000);
    t.0.append_link(&mut h, "owned", "dangling/target").unwrap();
    s.layer(&t.bytes(), None);
    s.ok();
    assert_eq!(fs::read_link(s.p("rel")).unwrap(), Path::new("../x/y"));
    assert_eq!(fs::read_link(s.p("abs")).unwrap(), Path::new("/etc/passwd"));
    let m = lstat(&s.p("owned"));
    assert!(m.file_type().is_symlink());
    assert_eq!((m.uid(), m.gid(), m.mtime()), (1000, 1001, 3_000_000));
}

#[test]
fn setuid_setgid_sticky_survive_non_root_owner() {
    let mut s = Scratch::new();
    let mut t = Tar::new();
    t.file_with("usr/bin/su", b"su", 0o4755, 1000, 1000);
    let mut h = header(EntryType::Directory, 0o2775, 0);
    h.set_uid(1000);
    h.set_gid(1000);
    t.add(h, "srv/shared", b"");
    t.dir("tmp", 0o1777);
    s.layer(&t.bytes(), None);
    s.ok();
    let su = lstat(&s.p("usr/bin/su"));
    assert_eq!(
        (su.mode() & 0o7777, su.uid(), su.gid()),
        (0o4755, 1000, 1000)
    );
    let shared = lstat(&s.p("srv/shared"));
    assert_eq!((shared.mode() & 0o7777, shared.uid()), (0o2775, 1000));
    assert_eq!(lstat(&s.p("tmp")).permissions().mode() & 0o7777, 0o1777);
}

#[test]
fn xattrs_round_trip_exactly() {
    // VFS_CAP_REVISION_2 with cap_net_bind_service permitted and effective.
    let cap: &[u8] = &[1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut s = Scratch::new();
    let mut t = Tar::new();
    t.pax(&[
        ("SCHILY.xattr.security.capability", cap),
        ("SCHILY.xattr.user.note", b"hi\0there"),
    ]);
    t.file_with("bin/ping", b"ping", 0o755, 1000, 1000);
    t.pax(&[("SCHILY.xattr.user.dir", b"d")]).dir("data", 0o755);
    s.layer(&t.bytes(), None);
    s.ok();
    assert_eq!(
        lgetxattr(&s.p("bin/ping"), "security.capability").as_deref(),
        Some(cap)
    );
    assert_eq!(
        lgetxattr(&s.p("bin/ping"), "user.note").as_deref(),
        Some(&b"hi\0there"[..])
    );
    assert_eq!(
        lgetxattr(&s.p("data"), "user.dir").as_deref(),
        Some(&b"d"[..])
    );
    assert_eq!(
        lstat(&s.p("bin/ping")).uid(),
        1000,
        "chown came before the capability"
    );
}

#[test]
fn devices_and_fifos() {
    let mut s = Scratch::new();
    let mut t = Tar::new();
    let mut h = header(EntryType::Char, 0o666, 0);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    t.add(h, "dev/null", b"");
    let mut h = header(EntryType::Block, 0o660, 0);
    h.set_device_major(7).unwrap();
    h.set_device_minor(0).unwrap();
    h.set_gid(6);
    t.add(h, "dev/loop0", b"");
    t.add(header(EntryType::Fifo, 0o640, 0), "run/initctl", b"");
    s.layer(&t.bytes(), None);
    s.ok();
    let null = lstat(&s.p("dev/null"));
    assert!(null.file_type().is_char_device());
    assert_eq!(
        (null.rdev(), null.mode() & 0o7777),
        (libc::makedev(1, 3), 0o666)
    );
    let lp = lstat(&s.p("dev/loop0"));
    assert!(lp.file_type().is_block_device());
    assert_eq!((lp.rdev(), lp.gid()), (libc::makedev(7, 0), 6));
    let fifo = lstat(&s.p("run/initctl"));
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o640);
}

#[test]
fn mtimes_including_directories_after_their_contents() {
    let mut s = Scratch::new();
    let mut t = Tar::new();
    let mut h = header(EntryType::Directory, 0o755, 0);
    h.set_mtime(2_000_000);
    t.add(h, "d", b"");
    t.file_with("d/f", b"f", 0o644, 0, 1_000_000);
    t.pax(&[("mtime", b"1500000.25")]).file("d/precise", b"p");
    s.layer(&t.bytes(), None);
    s.layer(&Tar::new().file("d/later", b"l").bytes(), None);
    s.ok();
    assert_eq!(lstat(&s.p("d")).mtime(), 2_000_000);
    assert_eq!(lstat(&s.p("d/f")).mtime(), 1_000_000);
    let p = lstat(&s.p("d/precise"));
    assert_eq!((p.mtime(), p.mtime_nsec()), (1_500_000, 250_000_000));
}

#[test]
fn zero_size_sparse_long_names_and_root_entry() {
    let mut s = Scratch::new();
    let long = format!("deep/{}/file", "n".repeat(150));
    let mut t = Tar::new();
    t.dir("./", 0o700).file("empty", b"").file(&long, b"long");
    t.pax(&[("path", b"pax/named/file")]).file("short", b"pax");
    // A GNU sparse file: 1 MiB with 512 bytes of data at 512 KiB.
    let mut h = header(EntryType::GNUSparse, 0o644, 512);
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.sparse[0].offset.copy_from_slice(b"00002000000\0");
        gnu.sparse[0].numbytes.copy_from_slice(b"00000001000\0");
        gnu.sparse[1].offset.copy_from_slice(b"00004000000\0");
        gnu.sparse[1].numbytes.copy_from_slice(b"00000000000\0");
        gnu.realsize.copy_from_slice(b"00004000000\0");
    }
    t.0.append_data(&mut h, "sparse", &[b'A'; 512][..]).unwrap();
    s.layer(&t.bytes(), None);
    let stats = s.ok();
    assert_eq!(lstat(&s.root()).mode() & 0o7777, 0o700);
    assert_eq!(lstat(&s.p("empty")).len(), 0);
    assert_eq!(fs::read(s.p(&long)).unwrap(), b"long");
    assert_eq!(fs::read(s.p("pax/named/file")).unwrap(), b"pax");
    let sparse = fs::read(s.p("sparse")).unwrap();
    assert_eq!(sparse.len(), 1 << 20);
    assert!(sparse[..512 * 1024].iter().all(|b| *b == 0));
    assert_eq!(&sparse[512 * 1024..512 * 1024 + 512], &[b'A'; 512][..]);
    assert!(
        lstat(&s.p("sparse")).blocks() * 512 < 1 << 20,
        "holes stay holes"
    );
    assert_eq!(stats.bytes, 4 + 3 + (1 << 20));
}

#[test]
fn absolute_symlinks_in_parents_resolve_inside_the_root() {
    let mut s = Scratch::new();
    s.layer(
        &Tar::new()
            .dir("run", 0o755)
            .dir("var", 0o755)
            .link(EntryType::Symlink, "var/run", "/run")
            .dir("usr/lib", 0o755)
            .link(EntryType::Symlink, "lib", "usr/lib")
            .link(EntryType::Symlink, "lib64", "/usr/./lib/")
            .bytes(),
        None,
    );
    s.layer(
        &Tar::new()
            .file("var/run/x", b"x")
            .file("lib/y", b"y")
            .file("lib64/z", b"z")
            .link(EntryType::Link, "hl", "var/run/x")
            .file("lib/.wh.y", b"")
            .bytes(),
        None,
    );
    s.ok();
    assert_eq!(fs::read(s.p("run/x")).unwrap(), b"x");
    assert!(lstat(&s.p("var/run")).file_type().is_symlink());
    assert_eq!(fs::read(s.p("usr/lib/z")).unwrap(), b"z");
    assert!(!exists(&s.p("usr/lib/y")));
    assert_eq!(lstat(&s.p("hl")).ino(), lstat(&s.p("run/x")).ino());
}

#[test]
fn max_bytes_is_enforced_before_writing() {
    let mut s = Scratch::new();
    s.layer(&Tar::new().file("a", &[1; 600]).bytes(), None);
    s.layer(&Tar::new().file("b", &[2; 600]).bytes(), None);
    let err = s
        .run(&UnpackOptions {
            max_bytes: Some(1000),
        })
        .unwrap_err();
    assert!(
        matches!(err, UnpackError::TooLarge { limit: 1000, total: 1200, ref digest, ref entry }
            if digest == "sha256:layer1" && entry == "b"),
        "{err}"
    );
    assert!(!exists(&s.p("b")));
    let s2 = Scratch {
        base: s.base.clone(),
        layers: s.layers.clone(),
    };
    std::mem::forget(s);
    fs::remove_dir_all(s2.root()).unwrap();
    fs::create_dir(s2.root()).unwrap();
    assert_eq!(
        s2.run(&UnpackOptions {
            max_bytes: Some(1200)
        })
        .unwrap()
        .bytes,
        1200
    );
}

#[test]
fn corrupt_and_truncated_layers_name_the_digest() {
    let tar = Tar::new().file("a", &[7; 100_000]).file("b", b"b").bytes();
    let gz = gzip(&tar);
    let mut flipped = gz.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    let cases: Vec<(Vec<u8>, Option<Compression>)> = vec![
        (gz[..gz.len() / 2].to_vec(), None),
        (flipped, Some(Compression::Gzip)),
        (gz[..gz.len() - 4].to_vec(), None),
        (zstd(&tar)[..40].to_vec(), None),
        (tar[..tar.len() / 2].to_vec(), None),
        (b"\x1f\x8bnot really gzip".to_vec(), None),
    ];
    for (i, (bytes, compression)) in cases.into_iter().enumerate() {
        let mut s = Scratch::new();
        s.layer(&bytes, compression);
        let err = s.run(&UnpackOptions::default()).unwrap_err();
        assert!(
            matches!(err, UnpackError::Corrupt { ref digest, .. } if digest == "sha256:layer0"),
            "case {i}: {err}"
        );
        assert!(err.to_string().contains("sha256:layer0"));
    }
}

#[test]
fn gzip_zstd_and_plain_layers_by_magic_or_media_type() {
    assert_eq!(Compression::detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
    assert_eq!(
        Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
        Compression::Zstd
    );
    assert_eq!(Compression::detect(b"etc/\0"), Compression::None);
    assert_eq!(Compression::detect(&[]), Compression::None);
    let mut s = Scratch::new();
    s.layer(&gzip(&Tar::new().file("g", b"gzip").bytes()), None);
    s.layer(&zstd(&Tar::new().file("z", b"zstd").bytes()), None);
    s.layer(&Tar::new().file("p", b"plain").bytes(), None);
    s.layer(
        &gzip(&Tar::new().file("g2", b"gzip2").bytes()),
        Some(Compression::Gzip),
    );
    s.layer(
        &zstd(&Tar::new().file("z2", b"zstd2").bytes()),
        Some(Compression::Zstd),
    );
    s.layer(
        &Tar::new().file("p2", b"plain2").bytes(),
        Some(Compression::None),
    );
    s.layer(b"", None);
    let mut seen = Vec::new();
    unpack(
        &s.layers,
        &s.root(),
        &UnpackOptions::default(),
        &mut |i, n| seen.push((i, n)),
    )
    .unwrap();
    for (name, data) in [
        ("g", "gzip"),
        ("z", "zstd"),
        ("p", "plain"),
        ("g2", "gzip2"),
        ("z2", "zstd2"),
        ("p2", "plain2"),
    ] {
        assert_eq!(fs::read(s.p(name)).unwrap(), data.as_bytes());
    }
    // Progress: every layer reported, counts never go down, and the last is the blob's size.
    for (i, layer) in s.layers.iter().enumerate() {
        let counts: Vec<u64> = seen
            .iter()
            .filter(|(l, _)| *l == i)
            .map(|(_, n)| *n)
            .collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
        assert_eq!(
            *counts.last().unwrap(),
            fs::metadata(&layer.path).unwrap().len()
        );
    }
}

#[test]
fn parent_that_is_a_file_is_an_error() {
    let mut s = Scratch::new();
    s.layer(&Tar::new().file("f", b"f").file("f/x", b"x").bytes(), None);
    let err = s.run(&UnpackOptions::default()).unwrap_err();
    assert!(
        matches!(err, UnpackError::NotADirectory { ref entry, ref parent, .. }
        if entry == "f/x" && parent == "/f"),
        "{err}"
    );
}

/// The resolved-parent cache must never outlive a change to the parent's chain: a directory
/// replaced by a symlink (or whited out) between two entries under it.
#[test]
fn a_parent_replaced_between_entries_is_resolved_again() {
    let mut s = Scratch::new();
    s.layer(
        &Tar::new()
            .dir("d", 0o755)
            .file("d/x", b"x")
            .dir("e", 0o755)
            .link(EntryType::Symlink, "d", "e")
            .file("d/y", b"y")
            .bytes(),
        None,
    );
    s.layer(
        &Tar::new()
            .file("e/z", b"z")
            .file("e/.wh.y", b"")
            .file("e/w", b"w")
            .bytes(),
        None,
    );
    s.ok();
    assert!(lstat(&s.p("d")).file_type().is_symlink());
    assert_eq!(fs::read(s.p("e/z")).unwrap(), b"z");
    assert_eq!(fs::read(s.p("e/w")).unwrap(), b"w");
    assert!(
        !exists(&s.p("e/y")),
        "the whiteout went through to the real directory"
    );
    assert!(!exists(&s.p("d/x")) && !exists(&s.p("e/x")));
    s.assert_contained();
}
