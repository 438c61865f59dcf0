//! Image pulls end to end against a real registry (`docker-registry` filled by skopeo), local
//! OCI layouts and `docker save` archives: caching, auth, index platform selection, digest
//! checks, retries, size limits, hostile layers and garbage collection of the blob cache.
//!
//! Each test uses a fresh store under the temporary directory and its own registry. Needs
//! `docker-registry`, `skopeo`, `htpasswd`, `mkfs.ext4`, and the edge fixture
//! (`tests/images/mkimages.py edge`, cached).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tartarus_images::blobs::BlobError;
use tartarus_images::manifest::{self, ManifestError};
use tartarus_images::rootfs::{self, BuildOptions, RootfsError};
use tartarus_images::store::StoreError;
use tartarus_images::unpack::{self, Layer, UnpackError, UnpackOptions};
use tartarus_images::{Auth, Digest, ImageRecord, ImageStore, PullError, PullEvent, PullOptions};
use tartarus_tests::registry::{docker_archive, edge_fixture, layout_manifest_digest, Registry};
use tartarus_tests::TempDir;

// --- helpers ---------------------------------------------------------------------------------

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A fresh store in its own temporary directory (`<tmp>/store`).
struct TestStore {
    tmp: TempDir,
    store: ImageStore,
}

impl TestStore {
    fn new(tag: &str) -> TestStore {
        let tmp = TempDir::new(&format!("pull-{tag}"));
        let store = ImageStore::open(&tmp.join("store")).expect("open store");
        TestStore { tmp, store }
    }

    fn root(&self) -> &Path {
        self.store.root()
    }

    /// Names in `<store>/tmp` (leftovers of pulls and builds).
    fn tmp_entries(&self) -> Vec<String> {
        names_in(&self.root().join("tmp"))
    }

    /// Names in `<store>/rootfs`.
    fn rootfs_entries(&self) -> Vec<String> {
        names_in(&self.root().join("rootfs"))
    }

    fn blobs(&self) -> Vec<Digest> {
        let mut b = self.store.blobs.list().expect("list blobs");
        b.sort();
        b
    }

    /// The store holds no image, no blob, no root fs and no temporary file.
    fn assert_empty(&self, why: &str) {
        assert_eq!(self.store.list().expect("list").len(), 0, "{why}: images");
        assert_eq!(self.blobs(), Vec::<Digest>::new(), "{why}: blobs");
        assert_eq!(self.tmp_entries(), Vec::<String>::new(), "{why}: tmp");
        assert_eq!(self.rootfs_entries(), Vec::<String>::new(), "{why}: rootfs");
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Fast-failing options: 3 tries, 50 ms backoff, 20 s timeout.
fn opts() -> PullOptions {
    PullOptions {
        tries: 3,
        backoff: Duration::from_millis(50),
        timeout: Duration::from_secs(20),
        ..Default::default()
    }
}

/// Pulls `input`, collecting the progress events.
fn pull(
    rt: &tokio::runtime::Runtime,
    ts: &TestStore,
    input: &str,
    name: Option<&str>,
    o: &PullOptions,
) -> (Result<ImageRecord, PullError>, Vec<PullEvent>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let progress: tartarus_images::pull::Progress = Arc::new(move |e| ev.lock().unwrap().push(e));
    let res = rt.block_on(tartarus_images::pull(&ts.store, input, name, o, progress));
    let events = events.lock().unwrap().clone();
    (res, events)
}

fn layer_events(events: &[PullEvent]) -> Vec<(Digest, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            PullEvent::Layer { digest, cached, .. } => Some((digest.clone(), *cached)),
            _ => None,
        })
        .collect()
}

fn retries(events: &[PullEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, PullEvent::Retry { .. }))
        .count()
}

fn edge() -> &'static Path {
    &edge_fixture().0
}

/// Any executable works as the injected init for these tests.
fn init_bin() -> PathBuf {
    PathBuf::from("/bin/true")
}

fn build_opts(max_bytes: Option<u64>) -> BuildOptions {
    BuildOptions {
        init: init_bin(),
        max_bytes,
    }
}

fn build(
    ts: &TestStore,
    rec: &ImageRecord,
    max_bytes: Option<u64>,
) -> Result<rootfs::Built, RootfsError> {
    rootfs::build(&ts.store, rec, &build_opts(max_bytes), &mut |_| {})
}

/// Unpacks `rec`'s cached layers into `dest` (fresh) with the crate's unpacker.
fn unpack_image(ts: &TestStore, rec: &ImageRecord, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    let layers: Vec<Layer> = rec
        .layers
        .iter()
        .map(|l| Layer {
            path: ts.store.blobs.path(&l.digest),
            digest: l.digest.to_string(),
            compression: manifest::compression(&l.media_type).ok().flatten(),
        })
        .collect();
    unpack::unpack(&layers, dest, &UnpackOptions::default(), &mut |_, _| {})
        .unwrap_or_else(|e| panic!("unpack {}: {e}", rec.id));
}

fn sha256_file(p: &Path) -> String {
    let mut f = fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Every entry of a tree: path → "type mode uid:gid size/target/sha256".
fn listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let what = if ft.is_symlink() {
                format!("symlink -> {}", fs::read_link(&p).unwrap().display())
            } else if ft.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if ft.is_file() {
                format!("file {} {}", m.len(), sha256_file(&p))
            } else {
                format!("special rdev={}", m.rdev())
            };
            let mode = if ft.is_symlink() {
                0
            } else {
                m.mode() & 0o7777
            };
            out.insert(rel, format!("{what} mode={mode:o} {}:{}", m.uid(), m.gid()));
        }
    }
    out
}

/// Checks an unpacked edge image against `edge-expect.json` (type, size, content, target).
fn check_edge_expect(tree: &BTreeMap<String, String>) {
    let expect: Value = serde_json::from_slice(&fs::read(&edge_fixture().1).unwrap()).unwrap();
    let entries = expect["entries"].as_array().expect("entries");
    assert!(!entries.is_empty());
    for e in entries {
        let path = e["path"].as_str().unwrap();
        if e["type"] == "absent" {
            assert!(!tree.contains_key(path), "{path} should be gone (whiteout)");
            continue;
        }
        let got = tree
            .get(path)
            .unwrap_or_else(|| panic!("{path} is missing from the unpacked image"));
        match e["type"].as_str().unwrap() {
            "file" => {
                let want = format!("file {} {}", e["size"], e["sha256"].as_str().unwrap());
                assert!(got.starts_with(&want), "{path}: {got} vs {want}");
            }
            "symlink" => {
                let want = format!("symlink -> {}", e["target"].as_str().unwrap());
                assert!(got.starts_with(&want), "{path}: {got} vs {want}");
            }
            "dir" => assert!(got.starts_with("dir"), "{path}: {got}"),
            _ => assert!(got.starts_with("special"), "{path}: {got}"),
        }
        if e["type"] != "symlink" {
            let mode = format!(" mode={:o} ", e["mode"].as_u64().unwrap());
            assert!(got.contains(&mode), "{path}: {got}, want{mode}");
        }
    }
}

/// A TCP port nobody listens on (bound and released).
fn dead_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reads one HTTP request head (up to the blank line) from `s`; false at EOF or error.
fn read_head(s: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return false,
        }
    }
    true
}

/// A server on a loopback port that answers 500 to every request; returns (addr, count).
fn server_500() -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let c = c.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                while read_head(&mut s) {
                    c.fetch_add(1, Ordering::SeqCst);
                    let body = "internal error";
                    let resp = format!(
                        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, count)
}

/// A server that accepts connections and never answers; returns (addr, connections).
fn server_silent() -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            c.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (addr, count)
}

fn sha256_digest(b: &[u8]) -> String {
    let h = Sha256::digest(b);
    format!(
        "sha256:{}",
        h.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Writes `bytes` as a blob of the OCI layout `dir`; returns its digest.
fn put_blob(dir: &Path, bytes: &[u8]) -> String {
    let d = sha256_digest(bytes);
    let p = dir.join("blobs/sha256");
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join(&d[7..]), bytes).unwrap();
    d
}

/// Writes an OCI layout at `dir` with one image tagged `latest`: the given layer blobs
/// (digest, size, media type) and a config with `diff_ids`.
fn write_layout(dir: &Path, layers: &[(String, u64, String)], diff_ids: &[String]) -> String {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_digest = put_blob(dir, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": layers.iter().map(|(d, s, mt)| json!({"mediaType": mt, "digest": d, "size": s}))
            .collect::<Vec<_>>(),
    }))
    .unwrap();
    let manifest_digest = put_blob(dir, &manifest);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    manifest_digest
}

/// One tar entry, written with a raw name (the tar crate refuses `..` through set_path).
enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
}

fn raw_tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, data, kind, mode): (&str, &[u8], tar::EntryType, u32) = match e {
            Entry::Dir(n) => (*n, b"", tar::EntryType::Directory, 0o755),
            Entry::File(n, d) => (*n, *d, tar::EntryType::Regular, 0o644),
            Entry::Symlink(n, t) => {
                h.set_link_name(t).unwrap_or_else(|_| {
                    // Targets with `..` are refused by set_link_name too: write them raw.
                    let gnu = h.as_gnu_mut().unwrap();
                    gnu.linkname[..t.len()].copy_from_slice(t.as_bytes());
                });
                (*n, b"", tar::EntryType::Symlink, 0o777)
            }
        };
        assert!(name.len() < 100);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name = [0; 100];
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// An OCI layout at `dir` whose one (uncompressed) layer is `tar`.
fn single_layer_layout(dir: &Path, tar: &[u8]) -> String {
    let d = put_blob(dir, tar);
    write_layout(
        dir,
        &[(
            d.clone(),
            tar.len() as u64,
            "application/vnd.oci.image.layer.v1.tar".into(),
        )],
        &[d],
    )
}

fn edge_manifest() -> Value {
    let d = layout_manifest_digest(edge());
    serde_json::from_slice(&fs::read(edge().join("blobs/sha256").join(&d[7..])).unwrap()).unwrap()
}

// --- 1. pulls, caching, imports --------------------------------------------------------------

#[test]
fn pull_caches_layers_and_imports_agree() {
    let rt = runtime();
    let reg = Registry::start(None);
    let digest = reg.push_oci(edge(), "edge:latest");
    let ts = TestStore::new("cache");

    let (res, ev) = pull(&rt, &ts, &reg.image_ref("edge:latest"), None, &opts());
    let rec = res.unwrap_or_else(|e| panic!("pull: {e}\n{}", reg.log_tail()));
    assert_eq!(rec.id.as_str(), digest);
    let name = format!("{}/edge:latest", reg.addr);
    assert_eq!(rec.names, vec![name.clone()]);
    assert_eq!(rec.layers.len(), 3);
    let first = layer_events(&ev);
    assert_eq!(first.len(), 3, "{ev:?}");
    assert!(first.iter().all(|(_, cached)| !cached), "{ev:?}");
    assert!(
        matches!(&ev[0], PullEvent::Resolved { layers: 3, digest: d, .. } if d.as_str() == digest),
        "{ev:?}"
    );
    for l in &rec.layers {
        assert!(
            ts.store.blobs.has(&l.digest),
            "layer {} not cached",
            l.digest
        );
    }
    assert!(ts.store.blobs.has(&rec.config_digest) && ts.store.blobs.has(&rec.id));

    // Second pull: nothing fetched, same image.
    let (res, ev) = pull(&rt, &ts, &reg.image_ref("edge"), None, &opts());
    let again = res.expect("second pull");
    assert_eq!(again.id, rec.id);
    let second = layer_events(&ev);
    assert_eq!(second.len(), 3, "{ev:?}");
    assert!(second.iter().all(|(_, cached)| *cached), "{ev:?}");
    assert!(
        !ev.iter().any(|e| matches!(e, PullEvent::Progress { .. })),
        "{ev:?}"
    );
    assert_eq!(ts.store.list().unwrap().len(), 1);

    // Lookups: as typed, normalized, by id, sha256:id and an id prefix.
    for what in [
        name.clone(),
        format!("{}/edge", reg.addr),
        rec.id.to_string(),
        rec.id.hex().to_string(),
        rec.id.short().to_string(),
        format!("sha256:{}", &rec.id.hex()[..8]),
    ] {
        let got = ts
            .store
            .get(&what)
            .unwrap_or_else(|e| panic!("get {what}: {e}"));
        assert_eq!(got.id, rec.id, "{what}");
    }
    for missing in ["edge", "127.0.0.1:1/edge:latest", "ffffffffffff"] {
        assert!(
            matches!(ts.store.get(missing), Err(StoreError::NotFound(_))),
            "{missing}"
        );
    }

    // The OCI layout is the same image (skopeo preserved the digests): same id, a name more.
    let (res, ev) = pull(
        &rt,
        &ts,
        &format!("oci:{}:latest", edge().display()),
        None,
        &opts(),
    );
    let oci = res.expect("oci import");
    assert_eq!(oci.id, rec.id);
    assert_eq!(oci.layers, rec.layers);
    assert!(oci.names.contains(&name), "{:?}", oci.names);
    assert!(oci.names.len() == 2, "{:?}", oci.names);
    assert!(
        layer_events(&ev).is_empty(),
        "local imports send no layer events: {ev:?}"
    );
    assert_eq!(ts.store.list().unwrap().len(), 1);

    // docker-archive: uncompressed layers, so another id; the same diff_ids and files.
    let ar = ts.tmp.join("edge-docker.tar");
    docker_archive(edge(), &ar, "tartarus/edge:v1");
    let (res, _) = pull(
        &rt,
        &ts,
        &format!("docker-archive:{}", ar.display()),
        None,
        &opts(),
    );
    let da = res.expect("docker-archive import");
    assert_ne!(da.id, rec.id);
    assert_eq!(da.names, vec!["docker.io/tartarus/edge:v1".to_string()]);
    assert_eq!(da.config.diff_ids, rec.config.diff_ids);
    let layer_ids: Vec<String> = da.layers.iter().map(|l| l.digest.to_string()).collect();
    assert_eq!(
        layer_ids, rec.config.diff_ids,
        "docker save layers are the diff_ids"
    );
    assert_eq!(ts.store.get("tartarus/edge:v1").unwrap().id, da.id);
    assert_eq!(ts.store.get(&name).unwrap().id, rec.id);
    // A name given to the pull replaces the archive's own.
    let (res, _) = pull(
        &rt,
        &ts,
        &format!("docker-archive:{}", ar.display()),
        Some("renamed:v2"),
        &opts(),
    );
    // Same image again: the name is added to it.
    assert_eq!(
        res.unwrap().names,
        vec![
            "docker.io/tartarus/edge:v1".to_string(),
            "docker.io/library/renamed:v2".to_string()
        ]
    );
    assert_eq!(ts.store.get("renamed:v2").unwrap().id, da.id);
    assert_eq!(ts.store.get("tartarus/edge:v1").unwrap().id, da.id);
    assert_eq!(ts.store.list().unwrap().len(), 2);

    // Both unpack to the same files, and those are what edge-expect.json says.
    let a = ts.tmp.join("unpack-registry");
    let b = ts.tmp.join("unpack-archive");
    unpack_image(&ts, &rec, &a);
    unpack_image(&ts, &da, &b);
    let (la, lb) = (listing(&a), listing(&b));
    assert!(la.len() > 100, "{} entries", la.len());
    if la != lb {
        let diff: Vec<_> = la
            .iter()
            .filter(|(k, v)| lb.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}: {v} vs {:?}", lb.get(k)))
            .chain(
                lb.keys()
                    .filter(|k| !la.contains_key(*k))
                    .map(|k| format!("{k}: only in the archive")),
            )
            .take(20)
            .collect();
        panic!(
            "the registry and docker-archive images unpack differently:\n{}",
            diff.join("\n")
        );
    }
    check_edge_expect(&la);
    assert!(ts.tmp_entries().is_empty(), "{:?}", ts.tmp_entries());
}

// --- 2. basic auth ---------------------------------------------------------------------------

#[test]
fn basic_auth_needs_the_right_credentials() {
    let rt = runtime();
    let reg = Registry::start(Some(("tartarus", "s3cret pass")));
    reg.push_oci(edge(), "private/edge:v1");
    let image = reg.image_ref("private/edge:v1");
    let ts = TestStore::new("auth");

    for (auth, why) in [
        (Auth::Anonymous, "no credentials"),
        (
            Auth::Basic {
                username: "tartarus".into(),
                password: "wrong".into(),
            },
            "a wrong password",
        ),
        (
            Auth::Basic {
                username: "nobody".into(),
                password: "s3cret pass".into(),
            },
            "an unknown user",
        ),
    ] {
        let o = PullOptions { auth, ..opts() };
        let (res, ev) = pull(&rt, &ts, &image, None, &o);
        match res {
            Err(e @ PullError::Auth { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("authentication"), "{why}: {msg}");
                assert!(msg.contains(&reg.addr), "{why}: {msg}");
            }
            other => panic!("{why}: expected an auth error, got {other:?}"),
        }
        assert_eq!(
            retries(&ev),
            0,
            "{why}: auth failures are not retried: {ev:?}"
        );
        ts.assert_empty(why);
    }

    let o = PullOptions {
        auth: Auth::Basic {
            username: "tartarus".into(),
            password: "s3cret pass".into(),
        },
        ..opts()
    };
    let (res, _) = pull(&rt, &ts, &image, None, &o);
    let rec = res.unwrap_or_else(|e| panic!("pull with the right credentials: {e}"));
    assert_eq!(rec.id.as_str(), layout_manifest_digest(edge()));
    assert_eq!(rec.names, vec![image.clone()]);
}

// --- 3. indexes ------------------------------------------------------------------------------

#[test]
fn indexes_resolve_to_linux_amd64() {
    let rt = runtime();
    let reg = Registry::start(None);
    let multi = reg.push_index_multiarch(edge(), "idx/edge:multi");
    let only_arm = reg.push_index(edge(), "idx/edge:armonly");
    let ts = TestStore::new("index");

    let (res, ev) = pull(&rt, &ts, &reg.image_ref("idx/edge:multi"), None, &opts());
    let rec = res.unwrap_or_else(|e| panic!("pull multi-arch: {e}"));
    let amd64 = multi.amd64.clone().expect("amd64 entry");
    assert_eq!(
        rec.id.as_str(),
        amd64,
        "the id is the amd64 manifest's digest"
    );
    assert_ne!(rec.id.as_str(), multi.index);
    assert_ne!(rec.id.as_str(), multi.arm64);
    assert_eq!(rec.config.architecture, "amd64");
    assert_eq!(rec.names, vec![reg.image_ref("idx/edge:multi")]);
    assert!(
        matches!(&ev[0], PullEvent::Resolved { digest, .. } if digest.as_str() == amd64),
        "{ev:?}"
    );
    assert!(
        !ts.store.blobs.has(&multi.index.parse::<Digest>().unwrap()),
        "the index is not kept"
    );

    let ts2 = TestStore::new("index-arm");
    let (res, _) = pull(&rt, &ts2, &reg.image_ref("idx/edge:armonly"), None, &opts());
    match res {
        Err(e @ PullError::Manifest { .. }) => {
            let msg = e.to_string();
            let PullError::Manifest { source, .. } = &e else {
                unreachable!()
            };
            match source {
                ManifestError::NoPlatform(have) => {
                    assert!(have.contains("linux/arm64"), "{have}")
                }
                other => panic!("expected NoPlatform, got {other:?}"),
            }
            assert!(
                msg.contains("linux/arm64") && msg.contains("amd64"),
                "{msg}"
            );
        }
        other => panic!("arm64-only index: expected a manifest error, got {other:?}"),
    }
    assert!(only_arm.amd64.is_none());
    ts2.assert_empty("arm64-only index");
}

// --- 4. digest mismatch ----------------------------------------------------------------------

#[test]
fn a_corrupt_blob_never_enters_the_cache() {
    let rt = runtime();
    let reg = Registry::start(None);
    reg.push_oci(edge(), "edge:latest");
    let m = edge_manifest();
    let layers = m["layers"].as_array().unwrap();
    // The small gzip layer: it fails while the big one is still downloading.
    let bad = layers[1]["digest"].as_str().unwrap().to_string();
    let path = reg.blob_data_path(&bad);
    let mut data = fs::read(&path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    data[mid + 1] ^= 0x55;
    fs::write(&path, &data).unwrap();

    let ts = TestStore::new("corrupt");
    let (res, ev) = pull(&rt, &ts, &reg.image_ref("edge:latest"), None, &opts());
    match res {
        Err(e @ PullError::Blob(BlobError::Mismatch { .. })) => {
            let PullError::Blob(BlobError::Mismatch { expected, actual }) = &e else {
                unreachable!()
            };
            assert_eq!(expected.as_str(), bad);
            assert_eq!(actual.as_str(), sha256_digest(&data));
            assert!(e.to_string().contains(&bad), "{e}");
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert_eq!(retries(&ev), 0, "a mismatch is not retried: {ev:?}");
    let bad: Digest = bad.parse().unwrap();
    assert!(
        !ts.store.blobs.has(&bad),
        "the corrupt blob is in the cache"
    );
    assert!(!ts.store.blobs.list().unwrap().contains(&bad));
    assert!(ts.store.list().unwrap().is_empty(), "an image was recorded");
    assert_eq!(
        ts.tmp_entries(),
        Vec::<String>::new(),
        "temporary files left behind"
    );
    // Whatever else was fetched is unreferenced: a prune frees it.
    ts.store.prune(&[]).unwrap();
    ts.assert_empty("after prune");
}

// --- 5. unreachable registries ---------------------------------------------------------------

#[test]
fn unreachable_registries_are_retried_then_reported() {
    let rt = runtime();
    let ts = TestStore::new("unreachable");

    // Nobody listens.
    let addr = format!("127.0.0.1:{}", dead_port());
    let t = Instant::now();
    let (res, ev) = pull(&rt, &ts, &format!("{addr}/x:latest"), None, &opts());
    match res {
        Err(PullError::Unreachable {
            tries, registry, ..
        }) => {
            assert_eq!(tries, 3);
            assert_eq!(registry, addr);
        }
        other => panic!("dead port: expected Unreachable, got {other:?}"),
    }
    assert_eq!(retries(&ev), 2, "{ev:?}");
    // Backoff 50 + 100 ms between the 3 tries.
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(60));

    // Every request answered with 500.
    let (addr, count) = server_500();
    let (res, ev) = pull(&rt, &ts, &format!("{addr}/x:latest"), None, &opts());
    match &res {
        Err(
            e @ PullError::Unreachable {
                tries: 3, detail, ..
            },
        ) => {
            assert!(detail.contains("500"), "{e}");
            assert!(e.to_string().contains("3 tries"), "{e}");
        }
        other => panic!("HTTP 500: expected Unreachable after 3 tries, got {other:?}"),
    }
    assert_eq!(retries(&ev), 2, "{ev:?}");
    let n = count.load(Ordering::SeqCst);
    assert!(n >= 3, "the server saw {n} requests for 3 tries");

    // Accepts and never answers: the timeout ends each try.
    let (addr, conns) = server_silent();
    let o = PullOptions {
        tries: 2,
        timeout: Duration::from_secs(1),
        ..opts()
    };
    let t = Instant::now();
    let (res, ev) = pull(&rt, &ts, &format!("{addr}/x:latest"), None, &o);
    let took = t.elapsed();
    match res {
        Err(PullError::Unreachable { tries: 2, .. }) => {}
        other => panic!("silent server: expected Unreachable after 2 tries, got {other:?}"),
    }
    assert_eq!(retries(&ev), 1, "{ev:?}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(conns.load(Ordering::SeqCst) >= 2, "connections: {conns:?}");
    ts.assert_empty("after failed pulls");
}

// --- 6. size limits --------------------------------------------------------------------------

#[test]
fn size_limits_leave_nothing_behind() {
    let rt = runtime();
    let reg = Registry::start(None);
    reg.push_oci(edge(), "edge:latest");
    let ts = TestStore::new("limits");
    let image = reg.image_ref("edge:latest");

    let limit = 1 << 20;
    for input in [image.clone(), format!("oci:{}:latest", edge().display())] {
        let o = PullOptions {
            max_image_size: Some(limit),
            ..opts()
        };
        let (res, ev) = pull(&rt, &ts, &input, None, &o);
        match res {
            Err(e @ PullError::TooLarge { .. }) => {
                let PullError::TooLarge { size, limit: l } = e else {
                    unreachable!()
                };
                assert_eq!(l, limit);
                assert!(size > 48_000_000, "{size}");
            }
            other => panic!("{input}: expected TooLarge, got {other:?}"),
        }
        assert!(layer_events(&ev).is_empty(), "{input}: {ev:?}");
        ts.assert_empty(&input);
    }

    // A limit the image fits under is fine.
    let o = PullOptions {
        max_image_size: Some(100 << 20),
        ..opts()
    };
    let (res, _) = pull(&rt, &ts, &image, None, &o);
    let rec = res.expect("pull under the limit");

    // The unpacked image is far over 1 MiB.
    let err = build(&ts, &rec, Some(limit)).expect_err("build over max_bytes");
    match &err {
        RootfsError::Unpack(UnpackError::TooLarge {
            limit: l, total, ..
        }) => {
            assert_eq!(*l, limit);
            assert!(*total > limit);
        }
        other => panic!("expected an unpack TooLarge, got {other:?}"),
    }
    assert!(err.to_string().contains("larger than the limit"), "{err}");
    assert_eq!(
        ts.rootfs_entries(),
        Vec::<String>::new(),
        "a root fs was cached"
    );
    assert_eq!(
        ts.tmp_entries(),
        Vec::<String>::new(),
        "staging left behind"
    );
    // The image itself stays.
    assert_eq!(ts.store.get(&image).unwrap().id, rec.id);
}

// --- 7. hostile layers -----------------------------------------------------------------------

#[test]
fn hostile_layers_pull_but_never_build() {
    let rt = runtime();
    let reg = Registry::start(None);
    let work = TempDir::new("pull-hostile-src");
    let ts = TestStore::new("hostile");
    // The build stages under <tmp>/store/tmp/build-*/root: four levels up is <tmp>.
    let sentinel = ts.tmp.join("sentinel");
    fs::write(&sentinel, b"untouched").unwrap();
    let outside = ts.tmp.path().to_path_buf();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            raw_tar(&[
                Entry::Dir("etc/"),
                Entry::File("etc/hello", b"hi\n"),
                Entry::File("../../../../sentinel", b"pwned"),
                Entry::File("../../../../escape", b"pwned"),
            ]),
            "../../../../sentinel",
        ),
        (
            "symlink",
            raw_tar(&[
                Entry::Dir("etc/"),
                Entry::Symlink("evil", "../../../.."),
                Entry::File("evil/sentinel", b"pwned"),
                Entry::File("evil/pwned", b"pwned"),
            ]),
            "evil/sentinel",
        ),
        (
            "nested-symlink",
            raw_tar(&[
                Entry::Dir("a/"),
                Entry::Symlink("a/up", "../../../../.."),
                Entry::File("a/up/pwned", b"pwned"),
            ]),
            "a/up/pwned",
        ),
    ];
    for (tag, tar, entry) in cases {
        let layout = work.join(tag);
        let digest = single_layer_layout(&layout, &tar);
        let pushed = reg.push_oci(&layout, &format!("hostile/{tag}:latest"));
        assert_eq!(pushed, digest);
        // Pulling does not unpack: it succeeds.
        let (res, _) = pull(
            &rt,
            &ts,
            &reg.image_ref(&format!("hostile/{tag}")),
            None,
            &opts(),
        );
        let rec = res.unwrap_or_else(|e| panic!("{tag}: pull: {e}"));
        assert_eq!(rec.id.as_str(), digest);

        let err = build(&ts, &rec, None).expect_err(tag);
        let msg = err.to_string();
        assert!(
            msg.contains(entry),
            "{tag}: the error does not name {entry}: {msg}"
        );
        assert!(
            matches!(
                err,
                RootfsError::Unpack(UnpackError::UnsafePath { .. })
                    | RootfsError::Unpack(UnpackError::SymlinkEscape { .. })
            ),
            "{tag}: {err:?}"
        );
        assert_eq!(
            fs::read(&sentinel).unwrap(),
            b"untouched",
            "{tag}: sentinel overwritten"
        );
        for p in [
            outside.join("escape"),
            outside.join("pwned"),
            outside.join("store/escape"),
            outside.join("store/pwned"),
            outside.join("store/tmp/escape"),
            outside.join("store/tmp/pwned"),
            std::env::temp_dir().join("pwned"),
            std::env::temp_dir().join("escape"),
            PathBuf::from("/pwned"),
        ] {
            assert!(
                fs::symlink_metadata(&p).is_err(),
                "{tag}: {} was written",
                p.display()
            );
        }
        assert_eq!(
            ts.rootfs_entries(),
            Vec::<String>::new(),
            "{tag}: a root fs was cached"
        );
        assert_eq!(
            ts.tmp_entries(),
            Vec::<String>::new(),
            "{tag}: staging left behind"
        );
    }
    // Nothing anywhere under the test directory but the store and the sentinel.
    assert_eq!(
        names_in(&outside),
        vec!["sentinel".to_string(), "store".to_string()]
    );

    // A harmless layer of the same shape builds (the failures above are about the entries).
    let layout = work.join("benign");
    let tar = raw_tar(&[
        Entry::Dir("etc/"),
        Entry::File("etc/hello", b"hi\n"),
        Entry::Symlink("link", "etc/hello"),
    ]);
    single_layer_layout(&layout, &tar);
    let (res, _) = pull(
        &rt,
        &ts,
        &format!("oci:{}", layout.display()),
        None,
        &opts(),
    );
    let rec = res.expect("benign import");
    let built = build(&ts, &rec, None).unwrap_or_else(|e| panic!("benign build: {e}"));
    assert!(built.path.is_file() && !built.cached);
    assert_eq!(ts.rootfs_entries(), vec![built.key.clone()]);
}

// --- 8. garbage collection -------------------------------------------------------------------

#[test]
fn removal_frees_only_unshared_blobs() {
    let rt = runtime();
    let reg = Registry::start(None);
    reg.push_oci(edge(), "edge:v1");
    reg.push_oci(edge(), "edge:v2");
    let ts = TestStore::new("gc");

    let v1 = reg.image_ref("edge:v1");
    let v2 = reg.image_ref("edge:v2");
    let a = pull(&rt, &ts, &v1, None, &opts()).0.expect("pull v1");
    let (res, ev) = pull(&rt, &ts, &v2, None, &opts());
    let a2 = res.expect("pull v2");
    assert_eq!(a.id, a2.id, "one image under two tags");
    assert!(layer_events(&ev).iter().all(|(_, c)| *c), "{ev:?}");
    assert_eq!(ts.store.list().unwrap().len(), 1);
    assert_eq!(
        ts.store.get(&v1).unwrap().names,
        vec![v1.clone(), v2.clone()]
    );

    // A second image sharing edge's first two layers (its own config and manifest).
    let m = edge_manifest();
    let shared: Vec<(String, u64, String)> = m["layers"].as_array().unwrap()[..2]
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
                l["mediaType"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let layout = ts.tmp.join("two-layers");
    for (d, _, _) in &shared {
        let src = edge().join("blobs/sha256").join(&d[7..]);
        fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        fs::copy(&src, layout.join("blobs/sha256").join(&d[7..])).unwrap();
    }
    let diff_ids: Vec<String> = a.config.diff_ids[..2].to_vec();
    let b_digest = write_layout(&layout, &shared, &diff_ids);
    let b = pull(
        &rt,
        &ts,
        &format!("oci:{}", layout.display()),
        Some("two:layers"),
        &opts(),
    )
    .0
    .expect("import the two-layer image");
    assert_eq!(b.id.as_str(), b_digest);
    assert_eq!(b.layers[..], a.layers[..2]);
    // 3 layers + 2 configs + 2 manifests.
    assert_eq!(ts.blobs().len(), 7, "{:?}", ts.blobs());
    let built = build(&ts, &b, None).expect("build the two-layer image");

    // Templates use `a`: removing it by id, or its last name, needs force.
    let users = vec!["tmpl-1".to_string(), "tmpl-2".to_string()];
    match ts.store.remove(a.id.as_str(), &users, false) {
        Err(e @ StoreError::InUse { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("tmpl-1") && msg.contains(a.id.short()),
                "{msg}"
            );
        }
        other => panic!("remove in use: expected InUse, got {other:?}"),
    }
    assert_eq!(ts.blobs().len(), 7);

    // Dropping one of two names keeps every blob (even with users: the image stays).
    let f = ts
        .store
        .remove(&v1, &users, false)
        .expect("remove one name");
    assert!(f.images.is_empty() && f.blobs == 0, "{f:?}");
    assert_eq!(ts.store.get(&v2).unwrap().names, vec![v2.clone()]);
    assert!(ts.store.get(&v1).is_err());
    assert_eq!(ts.blobs().len(), 7);

    // Now v2 is the last name: in use → refused, without users → removed.
    assert!(matches!(
        ts.store.remove(&v2, &users, false),
        Err(StoreError::InUse { .. })
    ));
    let f = ts
        .store
        .remove(&v2, &[], false)
        .expect("remove the last name");
    assert_eq!(f.images, vec![a.id.to_string()]);
    // Freed: layer 3, a's config and manifest. The shared layers stay for `b`.
    assert_eq!(f.blobs, 3, "{f:?}");
    let left = ts.blobs();
    let mut want: Vec<Digest> = b
        .layers
        .iter()
        .map(|l| l.digest.clone())
        .chain([b.config_digest.clone(), b.id.clone()])
        .collect();
    want.sort();
    assert_eq!(left, want);
    assert!(!ts.store.blobs.has(&a.layers[2].digest));
    // b's root fs is untouched and b still builds (from the cache).
    assert_eq!(ts.rootfs_entries(), vec![built.key.clone()]);
    assert!(build(&ts, &b, None).expect("rebuild").cached);

    // Forced removal of the last image, in use: everything goes.
    let f = ts
        .store
        .remove("two:layers", &users, true)
        .expect("forced removal");
    assert_eq!(f.images, vec![b.id.to_string()]);
    assert_eq!(f.rootfs, 1, "{f:?}");
    let p = ts.store.prune(&[]).expect("prune");
    assert_eq!(p.blobs, 0, "remove already freed everything: {p:?}");
    ts.assert_empty("after removing every image");
    assert!(matches!(
        ts.store.remove("two:layers", &[], false),
        Err(StoreError::NotFound(_))
    ));
}
