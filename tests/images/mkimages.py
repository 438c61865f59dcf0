#!/usr/bin/env python3
"""Builds OCI image layout directories for the image tests and benchmarks, cached by inputs.

Usage: mkimages.py {edge|python-ds|all} [--cache DIR]

The cache is DIR, else $TARTARUS_CACHE, else ~/.cache/tartarus; everything lives under
<cache>/image-fixtures/. Prints NAME=<path> lines on stdout (EDGE=, EDGE_EXPECT=, PYTHON_DS=);
progress goes to stderr. A fixture is keyed by the sha256 of this script, the Debian suite and
its package list: a second run with the same inputs only prints the paths. Everything is built
in a temporary directory and renamed into place at the end, so nothing half-made is cached.

Images:
- edge: 3 layers for the unpack tests. L1 = debootstrap minbase (gzip), L2 = the diff after
  installing a few small packages in a chroot (gzip), L3 = a hand-made zstd layer with
  whiteouts, an opaque dir, hard links, symlinks, setuid/setgid/sticky modes, a file capability
  xattr, a FIFO, devices, a write through the absolute var/run -> /run symlink and a long path.
  edge-expect.json (printed as EDGE_EXPECT=) lists the expected state after unpacking all three.
- python-ds: L1 = minbase (gzip), L2 = the diff after installing python3, numpy and pandas.

The minbase tree is made once (`debootstrap --variant=minbase`, mirror from
$TARTARUS_DEBIAN_MIRROR, default http://deb.debian.org/debian) and cached as a tar for both.
Needs root (debootstrap, chroot, mknod, chown), GNU tar, zstd and skopeo.
"""

import argparse
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import time

SUITE = "bookworm"
VARIANT = "minbase"
# Bump to rebuild the cached minbase tar (it is keyed by this, not by the whole script, so that
# editing the script does not download Debian again).
BASE_RECIPE = 1
EDGE_PACKAGES = ["iputils-ping", "less", "netbase"]
PYTHON_DS_PACKAGES = ["python3", "python3-numpy", "python3-pandas"]
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CREATED = "2026-01-01T00:00:00Z"
# Fixed mtime of the entries of the hand-made layer.
L3_MTIME = 1767225600

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

# security.capability, VFS_CAP_REVISION_2 with the effective flag: cap_net_raw (13) permitted.
CAP_NET_RAW_EP = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


def log(msg):
    print(f"[mkimages] {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def mirror():
    return os.environ.get("TARTARUS_DEBIAN_MIRROR", "http://deb.debian.org/debian")


# ---------------------------------------------------------------------------------------------
# The minbase tree


def base_tar(root):
    """The cached tar of the debootstrap minbase tree (made on first use)."""
    key = hashlib.sha256(f"{SUITE} {VARIANT} {BASE_RECIPE}".encode()).hexdigest()[:16]
    path = os.path.join(root, f"base-{SUITE}-{VARIANT}-{key}.tar")
    if os.path.exists(path):
        return path
    t0 = time.time()
    tmp = tempfile.mkdtemp(prefix=".tmp-base-", dir=root)
    try:
        tree = os.path.join(tmp, "rootfs")
        run(["debootstrap", f"--variant={VARIANT}", SUITE, tree, mirror()], stdout=sys.stderr)
        clean_apt(tree)
        out = os.path.join(tmp, "base.tar")
        run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-cpf", out,
             "-C", tree, "."])
        os.rename(out, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"minbase tar {path} made in {time.time() - t0:.0f}s")
    return path


def extract_base(tar, dest):
    os.makedirs(dest)
    run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", tar, "-C", dest])


def clean_apt(tree):
    for d in ("var/cache/apt", "var/lib/apt/lists"):
        p = os.path.join(tree, d)
        if os.path.isdir(p):
            for name in os.listdir(p):
                q = os.path.join(p, name)
                if os.path.isdir(q) and not os.path.islink(q):
                    shutil.rmtree(q)
                else:
                    os.unlink(q)


def apt_install(tree, packages):
    """apt-get install in a chroot of `tree`, with /proc mounted meanwhile; apt caches removed."""
    etc = os.path.join(tree, "etc")
    with open(os.path.join(etc, "apt/sources.list"), "w") as f:
        f.write(f"deb {mirror()} {SUITE} main\n")
    # Name resolution inside the chroot: borrow the host's resolv.conf, restore it after.
    resolv = os.path.join(etc, "resolv.conf")
    saved = None
    if os.path.lexists(resolv):
        saved = os.path.join(tree, ".resolv.conf.saved")
        os.rename(resolv, saved)
    shutil.copyfile("/etc/resolv.conf", resolv)
    proc = os.path.join(tree, "proc")
    run(["mount", "-t", "proc", "proc", proc])
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C.UTF-8")
        run(["chroot", tree, "apt-get", "update"], env=env, stdout=sys.stderr)
        run(["chroot", tree, "apt-get", "install", "-y", "--no-install-recommends", *packages],
            env=env, stdout=sys.stderr)
        run(["chroot", tree, "apt-get", "clean"], env=env, stdout=sys.stderr)
    finally:
        run(["umount", proc])
        os.unlink(resolv)
        if saved:
            os.rename(saved, resolv)
    clean_apt(tree)


# ---------------------------------------------------------------------------------------------
# Layer tars: PAX, numeric owners, sorted, hard links, devices, xattrs as raw bytes


def read_xattrs(path):
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names)}


def tarinfo(name, typ, mode, uid, gid, mtime, size=0, linkname="", devmajor=0, devminor=0,
            xattrs=None):
    ti = tarfile.TarInfo(name)
    ti.type = typ
    ti.mode = mode & 0o7777
    ti.uid, ti.gid = uid, gid
    ti.uname = ti.gname = ""
    ti.mtime = int(mtime)
    ti.size = size
    ti.linkname = linkname
    ti.devmajor, ti.devminor = devmajor, devminor
    if xattrs:
        # tarfile encodes pax values as UTF-8 text unless hdrcharset=BINARY, in which case it
        # encodes them back with surrogateescape: that is how raw xattr bytes that are not
        # UTF-8 get through unchanged (a v2 capability of small caps is valid UTF-8 already).
        for k, v in sorted(xattrs.items()):
            try:
                v.decode("utf-8")
            except UnicodeDecodeError:
                ti.pax_headers["hdrcharset"] = "BINARY"
            ti.pax_headers["SCHILY.xattr." + k] = v.decode("utf-8", "surrogateescape")
    return ti


class LayerWriter:
    """Writes an uncompressed PAX layer tar."""

    def __init__(self, path):
        self.path = path
        self.tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                                errors="surrogateescape")
        self.links = {}  # (dev, ino) -> first name written in this layer

    def add_path(self, tree, rel):
        """Adds tree/rel as it is on disk (no following of symlinks)."""
        full = os.path.join(tree, rel)
        st = os.lstat(full)
        m = st.st_mode
        x = read_xattrs(full)
        common = dict(mode=m, uid=st.st_uid, gid=st.st_gid, mtime=st.st_mtime, xattrs=x)
        if stat.S_ISREG(m):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.links:
                self.tar.addfile(tarinfo(rel, tarfile.LNKTYPE, linkname=self.links[key],
                                         **common))
                return
            if st.st_nlink > 1:
                self.links[key] = rel
            with open(full, "rb") as f:
                self.tar.addfile(tarinfo(rel, tarfile.REGTYPE, size=st.st_size, **common), f)
        elif stat.S_ISDIR(m):
            self.tar.addfile(tarinfo(rel, tarfile.DIRTYPE, **common))
        elif stat.S_ISLNK(m):
            self.tar.addfile(tarinfo(rel, tarfile.SYMTYPE, linkname=os.readlink(full), **common))
        elif stat.S_ISFIFO(m):
            self.tar.addfile(tarinfo(rel, tarfile.FIFOTYPE, **common))
        elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
            typ = tarfile.CHRTYPE if stat.S_ISCHR(m) else tarfile.BLKTYPE
            self.tar.addfile(tarinfo(rel, typ, devmajor=os.major(st.st_rdev),
                                     devminor=os.minor(st.st_rdev), **common))
        else:
            log(f"skipping socket or unknown entry {rel}")

    def add(self, ti, data=b""):
        ti.size = len(data) if ti.type == tarfile.REGTYPE else 0
        self.tar.addfile(ti, io.BytesIO(data) if data else None)

    def close(self):
        self.tar.close()


def walk(tree):
    """Relative paths of everything under tree, sorted byte-wise per directory (parents first)."""
    out = []

    def rec(rel):
        full = os.path.join(tree, rel) if rel else tree
        for name in sorted(os.listdir(full), key=os.fsencode):
            r = os.path.join(rel, name) if rel else name
            out.append(r)
            p = os.path.join(tree, r)
            if os.path.isdir(p) and not os.path.islink(p):
                rec(r)

    rec("")
    return out


def full_layer(tree, out):
    w = LayerWriter(out)
    for rel in walk(tree):
        w.add_path(tree, rel)
    w.close()


def meta(path):
    st = os.lstat(path)
    m = st.st_mode
    return (stat.S_IFMT(m), m & 0o7777, st.st_uid, st.st_gid,
            st.st_size if stat.S_ISREG(m) else 0, int(st.st_mtime),
            os.readlink(path) if stat.S_ISLNK(m) else None,
            st.st_rdev if (stat.S_ISCHR(m) or stat.S_ISBLK(m)) else 0,
            tuple(read_xattrs(path).items()))


def diff_layer(lower, upper, out):
    """The changeset from lower to upper: new or changed entries (with their parent dirs) and
    .wh. whiteouts for deleted paths (only the topmost deleted path of a deleted tree)."""
    lower_paths = set(walk(lower))
    upper_paths = walk(upper)
    upper_set = set(upper_paths)
    changed = set()
    for rel in upper_paths:
        if rel not in lower_paths or meta(os.path.join(lower, rel)) != meta(
                os.path.join(upper, rel)):
            changed.add(rel)
        elif stat.S_ISREG(os.lstat(os.path.join(upper, rel)).st_mode):
            # Same metadata: compare the content too (cheap enough for these trees).
            if sha256_file(os.path.join(lower, rel)) != sha256_file(os.path.join(upper, rel)):
                changed.add(rel)
    deleted = []
    for rel in sorted(lower_paths):
        if rel in upper_set:
            continue
        parent = os.path.dirname(rel)
        if parent and parent not in upper_set:
            continue  # covered by the whiteout of a deleted ancestor
        if parent:
            lp = os.path.join(lower, parent)
            up = os.path.join(upper, parent)
            if not os.path.isdir(up) or os.path.islink(up) or not os.path.isdir(lp) or \
                    os.path.islink(lp):
                continue  # the parent changed type: replacing it removes the old tree
        deleted.append(rel)
    entries = set(changed)
    for rel in list(changed) + deleted:
        p = os.path.dirname(rel)
        while p:
            entries.add(p)
            p = os.path.dirname(p)
    whiteouts = {os.path.join(os.path.dirname(r), ".wh." + os.path.basename(r)): r
                 for r in deleted}
    w = LayerWriter(out)
    for rel in sorted(list(entries) + list(whiteouts), key=os.fsencode):
        if rel in whiteouts:
            w.add(tarinfo(rel, tarfile.REGTYPE, 0o644, 0, 0, L3_MTIME))
        else:
            w.add_path(upper, rel)
    w.close()
    log(f"diff: {len(changed)} new or changed, {len(deleted)} whiteouts, "
        f"{len(entries) - len(changed)} parent dirs")


# ---------------------------------------------------------------------------------------------
# OCI layout


class Layout:
    def __init__(self, d):
        self.dir = d
        self.blobs = os.path.join(d, "blobs", "sha256")
        os.makedirs(self.blobs)
        with open(os.path.join(d, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)

    def put_bytes(self, data):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(self.blobs, digest), "wb") as f:
            f.write(data)
        return "sha256:" + digest, len(data)

    def put_layer(self, tar_path, compression):
        """Compresses an uncompressed layer tar into a blob; returns (descriptor, diff_id)."""
        diff_id = "sha256:" + sha256_file(tar_path)
        tmp = os.path.join(self.blobs, ".tmp-layer")
        if compression == "gzip":
            with open(tar_path, "rb") as src, open(tmp, "wb") as raw:
                with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0,
                                   filename="") as gz:
                    shutil.copyfileobj(src, gz, 1 << 20)
            mt = MT_LAYER_GZIP
        else:
            run(["zstd", "-q", "-f", "-19", tar_path, "-o", tmp])
            mt = MT_LAYER_ZSTD
        digest = sha256_file(tmp)
        os.rename(tmp, os.path.join(self.blobs, digest))
        size = os.path.getsize(os.path.join(self.blobs, digest))
        return {"mediaType": mt, "digest": "sha256:" + digest, "size": size}, diff_id

    def finish(self, layers, diff_ids, config_section, history):
        config = {
            "created": CREATED,
            "architecture": "amd64",
            "os": "linux",
            "config": config_section,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": CREATED, "created_by": h} for h in history],
        }
        cdig, csize = self.put_bytes(json.dumps(config, indent=2, sort_keys=True).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": cdig, "size": csize},
            "layers": layers,
        }
        mdig, msize = self.put_bytes(json.dumps(manifest, indent=2).encode())
        index = {
            "schemaVersion": 2,
            "mediaType": MT_INDEX,
            "manifests": [{
                "mediaType": MT_MANIFEST, "digest": mdig, "size": msize,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }],
        }
        with open(os.path.join(self.dir, "index.json"), "w") as f:
            json.dump(index, f, indent=2)
        out = subprocess.run(["skopeo", "inspect", f"oci:{self.dir}:latest"], check=True,
                             capture_output=True, text=True).stdout
        info = json.loads(out)
        assert info["Architecture"] == "amd64" and info["Os"] == "linux", info
        assert info["Digest"] == mdig, (info["Digest"], mdig)
        assert len(info["Layers"]) == len(layers), info
        log(f"skopeo inspect ok: {self.dir} manifest {mdig}")
        return mdig


# ---------------------------------------------------------------------------------------------
# Fixtures


def fixture_key(name, packages):
    with open(os.path.abspath(__file__), "rb") as f:
        script = f.read()
    h = hashlib.sha256(script)
    h.update(f"\0{name}\0{SUITE}\0{VARIANT}\0{' '.join(packages)}".encode())
    return h.hexdigest()[:16]


def cached(root, name, packages, build):
    """<root>/<name>-<key>: built by build(tmpdir) unless already there."""
    final = os.path.join(root, f"{name}-{fixture_key(name, packages)}")
    if os.path.isdir(final):
        log(f"{name}: cached at {final}")
        return final
    t0 = time.time()
    tmp = tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root)
    try:
        build(tmp)
        os.chmod(tmp, 0o755)
        work = os.path.join(tmp, "work")
        if os.path.exists(work):
            shutil.rmtree(work)
        os.rename(tmp, final)
    except BaseException:
        # Make sure no mount is left behind before removing the temp dir.
        subprocess.run(["sh", "-c", f"grep -o ' {tmp}[^ ]*' /proc/mounts | xargs -r umount"],
                       check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Drop older builds of the same fixture.
    for other in os.listdir(root):
        if other.startswith(name + "-") and os.path.join(root, other) != final and \
                len(other) == len(name) + 17:
            shutil.rmtree(os.path.join(root, other), ignore_errors=True)
    log(f"{name}: built in {time.time() - t0:.0f}s at {final}")
    return final


def du(tree):
    """(bytes of regular files counting hard links once, number of entries)"""
    total = 0
    seen = set()
    paths = walk(tree)
    for rel in paths:
        st = os.lstat(os.path.join(tree, rel))
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total, len(paths)


def build_two_layer(tmp, root, packages, check=None, delete=None):
    """L1 = minbase, L2 = diff after installing packages (and removing `delete`, to get a
    whiteout into the diff). Returns (layout, lower, upper, layer descriptors, diff_ids) with
    the trees still under tmp/work."""
    base = base_tar(root)
    work = os.path.join(tmp, "work")
    lower, upper = os.path.join(work, "lower"), os.path.join(work, "upper")
    extract_base(base, lower)
    extract_base(base, upper)
    apt_install(upper, packages)
    if delete:
        os.unlink(os.path.join(upper, delete))
    if check:
        check(upper)
    layout = Layout(os.path.join(tmp, "oci"))
    l1tar, l2tar = os.path.join(work, "l1.tar"), os.path.join(work, "l2.tar")
    full_layer(lower, l1tar)
    diff_layer(lower, upper, l2tar)
    layers, diff_ids = [], []
    for t in (l1tar, l2tar):
        d, i = layout.put_layer(t, "gzip")
        layers.append(d)
        diff_ids.append(i)
        os.unlink(t)
    return layout, lower, upper, layers, diff_ids


def build_python_ds(root):
    def check(tree):
        run(["chroot", tree, "python3", "-c", "import numpy, pandas; print('pandas', "
             "pandas.__version__, 'numpy', numpy.__version__)"], stdout=sys.stderr)

    def build(tmp):
        layout, _lower, upper, layers, diff_ids = build_two_layer(
            tmp, root, PYTHON_DS_PACKAGES, check)
        size, count = du(upper)
        layout.finish(layers, diff_ids, {
            "Env": [PATH_ENV, "LANG=C.UTF-8"],
            "Cmd": ["python3"],
            "WorkingDir": "/root",
        }, [f"debootstrap --variant={VARIANT} {SUITE}",
            "apt-get install -y --no-install-recommends " + " ".join(PYTHON_DS_PACKAGES)])
        with open(os.path.join(tmp, "info.json"), "w") as f:
            json.dump({"unpacked_bytes": size, "entries": count,
                       "compressed_bytes": sum(d["size"] for d in layers)}, f)

    d = cached(root, "python-ds", PYTHON_DS_PACKAGES, build)
    with open(os.path.join(d, "info.json")) as f:
        info = json.load(f)
    log(f"python-ds: unpacked {info['unpacked_bytes'] / 1e6:.1f} MB of regular files in "
        f"{info['entries']} entries, "
        f"compressed layers {info['compressed_bytes'] / 1e6:.1f} MB")
    print(f"PYTHON_DS={d}/oci")
    print(f"PYTHON_DS_UNPACKED_BYTES={info['unpacked_bytes']}")


# --- edge ------------------------------------------------------------------------------------

LONG_DIR = "opt/tartarus/" + "/".join(["long-directory-name-" + c * 20 for c in "abcd"])
LONG_PATH = LONG_DIR + "/file-at-the-end-of-a-long-path.txt"
# Removed after the package install (edge only): the diff turns it into a whiteout in L2.
DELETED_IN_L2 = "etc/issue.net"
# The whited-out tree of L1 (removed whole by L3).
WH_TREE = "usr/share/lintian"


def l3_entries():
    """The hand-made layer: [(TarInfo, data)]; written in sorted order."""
    t = L3_MTIME
    e = []

    def d(name, mode=0o755, uid=0, gid=0):
        e.append((tarinfo(name, tarfile.DIRTYPE, mode, uid, gid, t), b""))

    def f(name, data, mode=0o644, uid=0, gid=0, xattrs=None):
        e.append((tarinfo(name, tarfile.REGTYPE, mode, uid, gid, t, xattrs=xattrs), data))

    def wh(name):
        f(name, b"")

    # Whiteouts: a file and a whole directory tree of L1.
    wh("etc/.wh.issue")
    wh(os.path.dirname(WH_TREE) + "/.wh." + os.path.basename(WH_TREE))
    # Opaque dir: lower children of usr/share/doc vanish, this layer's stay (one of them sorts
    # before the marker).
    wh("usr/share/doc/.wh..wh..opq")
    f("usr/share/doc/README.tartarus", b"only file left in usr/share/doc\n")
    f("usr/share/doc/-early", b"sorts before the opaque marker\n")
    # A replaced regular file and a symlink (etc/os-release -> ../usr/lib/os-release) replaced by
    # a file: usr/lib/os-release must keep its content.
    f("etc/debian_version", b"tartarus-edge\n")
    f("etc/os-release", b'NAME="Tartarus edge"\nID=tartarus\n')
    d("opt/tartarus")
    f("opt/tartarus/hl-a", b"hard linked content\n", 0o644)
    e.append((tarinfo("opt/tartarus/hl-b", tarfile.LNKTYPE, 0o644, 0, 0, t,
                      linkname="opt/tartarus/hl-a"), b""))
    e.append((tarinfo("opt/tartarus/rel-link", tarfile.SYMTYPE, 0o777, 0, 0, t,
                      linkname="../../etc/debian_version"), b""))
    e.append((tarinfo("opt/tartarus/abs-link", tarfile.SYMTYPE, 0o777, 0, 0, t,
                      linkname="/etc/hostname"), b""))
    f("opt/tartarus/suid", b"#!/bin/sh\necho suid\n", 0o4755)
    f("opt/tartarus/sgid", b"#!/bin/sh\necho sgid\n", 0o2755, 1000, 1000)
    d("opt/tartarus/sticky", 0o1777)
    f("opt/tartarus/cap-file", b"capability carrier\n", 0o755,
      xattrs={"security.capability": CAP_NET_RAW_EP})
    f("opt/tartarus/owned-1000", b"private\n", 0o640, 1000, 1000)
    e.append((tarinfo("opt/tartarus/fifo", tarfile.FIFOTYPE, 0o644, 0, 0, t), b""))
    e.append((tarinfo("dev/tartarus-null", tarfile.CHRTYPE, 0o666, 0, 0, t, devmajor=1,
                      devminor=3), b""))
    e.append((tarinfo("dev/tartarus-loop", tarfile.BLKTYPE, 0o660, 0, 6, t, devmajor=7,
                      devminor=0), b""))
    # Through Debian's absolute var/run -> /run symlink: must land in <root>/run.
    d("var/run/tartarus")
    f("var/run/tartarus/pid", b"42\n")
    # A long path (> 100 bytes, needs a PAX path record) and its directories.
    p = "opt/tartarus"
    for part in LONG_DIR[len(p) + 1:].split("/"):
        p += "/" + part
        d(p)
    f(LONG_PATH, b"long path\n")
    e.sort(key=lambda x: os.fsencode(x[0].name))
    return e


def expect_entry(tree, rel, group=None):
    """The state of tree/rel (an unpacked lower layer) as an expectation record."""
    full = os.path.join(tree, rel)
    st = os.lstat(full)
    m = st.st_mode
    r = {"path": rel, "mode": m & 0o7777, "uid": st.st_uid, "gid": st.st_gid,
         "xattrs": {k: v.hex() for k, v in read_xattrs(full).items()}}
    if stat.S_ISREG(m):
        r.update(type="file", size=st.st_size, sha256=sha256_file(full))
    elif stat.S_ISDIR(m):
        r["type"] = "dir"
    elif stat.S_ISLNK(m):
        r.update(type="symlink", target=os.readlink(full))
    elif stat.S_ISFIFO(m):
        r["type"] = "fifo"
    elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
        r.update(type="chr" if stat.S_ISCHR(m) else "blk", rdev_major=os.major(st.st_rdev),
                 rdev_minor=os.minor(st.st_rdev))
    if group:
        r["hardlink_group"] = group
    return r


def expect_from_l3(ti, data, group=None):
    r = {"path": ti.name, "mode": ti.mode, "uid": ti.uid, "gid": ti.gid, "xattrs": {}}
    for k, v in ti.pax_headers.items():
        if k.startswith("SCHILY.xattr."):
            r["xattrs"][k[len("SCHILY.xattr."):]] = v.encode("utf-8", "surrogateescape").hex()
    if ti.type == tarfile.REGTYPE:
        r.update(type="file", size=len(data), sha256=hashlib.sha256(data).hexdigest())
    elif ti.type == tarfile.DIRTYPE:
        r["type"] = "dir"
    elif ti.type == tarfile.SYMTYPE:
        r.update(type="symlink", target=ti.linkname)
    elif ti.type == tarfile.FIFOTYPE:
        r["type"] = "fifo"
    elif ti.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        r.update(type="chr" if ti.type == tarfile.CHRTYPE else "blk", rdev_major=ti.devmajor,
                 rdev_minor=ti.devminor)
    if group:
        r["hardlink_group"] = group
    return r


def edge_expect(lower, upper, entries):
    """Expected final state after L1+L2+L3. `upper` is the tree after L2."""
    exp = []
    absent = lambda p: exp.append({"path": p, "type": "absent"})  # noqa: E731
    by_name = {ti.name: (ti, data) for ti, data in entries}
    # From L1 via merged /usr, and from L2.
    for rel in ("bin", "sbin", "lib", "usr/bin/bash", "usr/bin/ping", "usr/bin/less",
                "etc/protocols", "etc/hostname", "usr/lib/os-release", "var/run", "tmp",
                "usr/share/doc", "dev/null"):
        if os.path.lexists(os.path.join(upper, rel)):
            exp.append(expect_entry(upper, rel))
        else:
            log(f"edge-expect: {rel} missing from the L2 tree, not listed")
    # Whiteouts.
    absent("etc/issue")
    absent(DELETED_IN_L2)
    absent(WH_TREE)
    for rel in walk(os.path.join(lower, WH_TREE))[:3]:
        absent(os.path.join(WH_TREE, rel))
    # Opaque dir: every lower child of usr/share/doc (L1 and L2) is gone.
    doc = os.path.join(upper, "usr/share/doc")
    for name in sorted(os.listdir(doc)):
        if "usr/share/doc/" + name not in by_name:
            absent("usr/share/doc/" + name)
    # Everything of L3 that is not a whiteout.
    for ti, data in entries:
        base = os.path.basename(ti.name)
        if base.startswith(".wh."):
            continue
        if ti.type == tarfile.LNKTYPE:
            target_ti, target_data = by_name[ti.linkname]
            exp.append(dict(expect_from_l3(target_ti, target_data, "hl"), path=ti.name))
            continue
        grp = "hl" if ti.name == "opt/tartarus/hl-a" else None
        r = expect_from_l3(ti, data, grp)
        if ti.name.startswith("var/run/"):
            # Written through the var/run -> /run symlink, which itself stays.
            r["path"] = "run/" + ti.name[len("var/run/"):]
        exp.append(r)
    return exp


def build_edge(root):
    def build(tmp):
        layout, lower, upper, layers, diff_ids = build_two_layer(tmp, root, EDGE_PACKAGES,
                                                               delete=DELETED_IN_L2)
        entries = l3_entries()
        l3tar = os.path.join(tmp, "work", "l3.tar")
        w = LayerWriter(l3tar)
        for ti, data in entries:
            w.add(ti, data)
        w.close()
        out = subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner",
                              "-tvf", l3tar], check=True, capture_output=True, text=True).stdout
        if "cap-file" not in out:
            raise SystemExit("l3 tar listing lacks cap-file:\n" + out)
        xa = subprocess.run(["sh", "-c", f"mkdir -p {tmp}/work/x && tar --xattrs "
                             f"--xattrs-include='*' -xf {l3tar} -C {tmp}/work/x "
                             f"opt/tartarus/cap-file && getfattr -h -d -m - -e hex "
                             f"{tmp}/work/x/opt/tartarus/cap-file 2>/dev/null || true"],
                            capture_output=True, text=True).stdout
        log("l3 cap-file xattr after GNU tar extract: " + xa.strip().replace("\n", " "))
        d, i = layout.put_layer(l3tar, "zstd")
        layers.append(d)
        diff_ids.append(i)
        exp = edge_expect(lower, upper, entries)
        with open(os.path.join(tmp, "edge-expect.json"), "w") as f:
            json.dump({"comment": "expected state after unpacking all 3 layers of the edge "
                       "image; mode is st_mode & 0o7777 (symlinks 0o777), xattrs are hex, "
                       "entries with the same hardlink_group share an inode",
                       "entries": exp}, f, indent=1)
        layout.finish(layers, diff_ids, {
            "Env": [PATH_ENV],
            "Cmd": ["/bin/sh"],
        }, [f"debootstrap --variant={VARIANT} {SUITE}",
            "apt-get install -y --no-install-recommends " + " ".join(EDGE_PACKAGES),
            "hand-made edge-case layer"])

    d = cached(root, "edge", EDGE_PACKAGES + ["L3"], build)
    print(f"EDGE={d}/oci")
    print(f"EDGE_EXPECT={d}/edge-expect.json")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("image", choices=["edge", "python-ds", "all"])
    ap.add_argument("--cache", default=os.environ.get("TARTARUS_CACHE")
                    or os.path.expanduser("~/.cache/tartarus"))
    a = ap.parse_args()
    root = os.path.join(os.path.abspath(a.cache), "image-fixtures")
    os.makedirs(root, exist_ok=True)
    # One builder at a time (test processes may start concurrently); the others wait, then find
    # the fixture cached.
    lock = open(os.path.join(root, ".lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    if a.image in ("edge", "all"):
        build_edge(root)
    if a.image in ("python-ds", "all"):
        build_python_ds(root)


if __name__ == "__main__":
    main()
