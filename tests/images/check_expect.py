#!/usr/bin/env python3
"""Checks an unpacked root directory against edge-expect.json (from mkimages.py edge).

Usage: check_expect.py ROOTFS EXPECT_JSON

Reference for the format that tests check against the ext4 image with debugfs; also a cross
check of the expectations with an independent unpacker (e.g. umoci, after converting the zstd
layer to gzip). Paths are looked up without following symlinks (lstat). Exits 1 listing each
mismatch.
"""

import hashlib
import json
import os
import stat
import sys


def actual(root, rel):
    full = os.path.join(root, rel)
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        return {"type": "absent"}
    m = st.st_mode
    r = {"mode": m & 0o7777, "uid": st.st_uid, "gid": st.st_gid, "ino": st.st_ino}
    try:
        names = os.listxattr(full, follow_symlinks=False)
    except OSError:
        names = []
    r["xattrs"] = {n: os.getxattr(full, n, follow_symlinks=False).hex() for n in names}
    if stat.S_ISREG(m):
        with open(full, "rb") as f:
            r.update(type="file", size=st.st_size, sha256=hashlib.sha256(f.read()).hexdigest())
    elif stat.S_ISDIR(m):
        r["type"] = "dir"
    elif stat.S_ISLNK(m):
        r.update(type="symlink", target=os.readlink(full))
    elif stat.S_ISFIFO(m):
        r["type"] = "fifo"
    elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
        r.update(type="chr" if stat.S_ISCHR(m) else "blk", rdev_major=os.major(st.st_rdev),
                 rdev_minor=os.minor(st.st_rdev))
    return r


def main():
    root, expect = sys.argv[1], sys.argv[2]
    with open(expect) as f:
        entries = json.load(f)["entries"]
    errors = []
    groups = {}
    for e in entries:
        a = actual(root, e["path"])
        for k, v in e.items():
            if k in ("path", "hardlink_group"):
                continue
            if a.get(k) != v:
                errors.append(f"{e['path']}: {k} is {a.get(k)!r}, expected {v!r}")
        if "hardlink_group" in e and "ino" in a:
            groups.setdefault(e["hardlink_group"], set()).add(a["ino"])
    for g, inos in groups.items():
        if len(inos) != 1:
            errors.append(f"hardlink_group {g}: {len(inos)} different inodes")
    for err in errors:
        print(err)
    print(f"{len(entries)} entries checked, {len(errors)} mismatches")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
