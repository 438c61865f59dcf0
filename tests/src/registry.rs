//! A real OCI registry for the image tests: the CNCF distribution registry
//! (`docker-registry` 2.8) on a loopback port, with optional htpasswd (bcrypt) Basic auth,
//! filled with `skopeo`, plus the image fixtures built by `tests/images/mkimages.py`.
//!
//! - [`Registry::start`]: one registry process with its storage in a fresh temporary
//!   directory; killed, reaped and removed on drop.
//! - [`Registry::push_oci`]: `skopeo copy --preserve-digests` of an OCI layout; returns the
//!   manifest digest (the same as in the layout: skopeo neither recompresses nor rewrites).
//! - [`Registry::push_index`] / [`Registry::push_index_multiarch`]: image indexes written by
//!   hand (an arm64 entry only, or arm64 and amd64), for platform selection tests.
//! - [`Registry::blob_data_path`]: where a blob lives on disk, to corrupt it.
//! - [`fixtures`] / [`edge_fixture`]: the OCI layouts, built once per test process (cached
//!   across runs under `$TARTARUS_CACHE` or `~/.cache/tartarus`).
//! - [`docker_archive`]: a `docker save`-style archive of a layout.
//!
//! Needs `docker-registry`, `skopeo`, `htpasswd` (apache2-utils) on the PATH, and for the
//! fixtures root, `debootstrap`, GNU tar, `zstd` and a Debian mirror
//! (`TARTARUS_DEBIAN_MIRROR`).

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::TempDir;

/// How long [`Registry::start`] waits for `GET /v2/` to answer.
pub const REGISTRY_START_TIMEOUT: Duration = Duration::from_secs(20);

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// A `docker-registry serve` process on `127.0.0.1:PORT`.
#[derive(Debug)]
pub struct Registry {
    /// `127.0.0.1:PORT`: the registry host for image references (`ADDR/REPO:TAG`).
    pub addr: String,
    /// The temporary directory: config.yml, registry.log, htpasswd and storage/.
    pub dir: PathBuf,
    child: Child,
    creds: Option<(String, String)>,
    tmp: TempDir,
}

/// An HTTP response from the registry.
#[derive(Clone, Debug)]
pub struct RegResponse {
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RegResponse {
    /// A header value by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON (panics if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "registry answered non-JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// What [`Registry::push_index`] / [`Registry::push_index_multiarch`] pushed.
#[derive(Clone, Debug)]
pub struct PushedIndex {
    /// Digest of the index (also tagged as the requested tag).
    pub index: String,
    /// The linux/amd64 manifest listed in the index, if any (the layout's own manifest).
    pub amd64: Option<String>,
    /// The linux/arm64 manifest: the layout's layers with a config saying arm64.
    pub arm64: String,
}

impl Registry {
    /// Starts a registry, with htpasswd Basic auth for `(user, password)` if given, and waits
    /// until `GET /v2/` answers (200, or 401 with auth). Panics with the log tail otherwise.
    pub fn start(auth: Option<(&str, &str)>) -> Registry {
        let tmp = TempDir::new("registry");
        let dir = tmp.path().to_path_buf();
        let creds = auth.map(|(u, p)| (u.to_string(), p.to_string()));
        if let Some((user, pass)) = &creds {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .unwrap_or_else(|e| panic!("cannot run htpasswd (apache2-utils): {e}"));
            assert!(
                out.status.success(),
                "htpasswd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            fs::write(dir.join("htpasswd"), &out.stdout).expect("write htpasswd");
        }
        let want = if creds.is_some() { 401 } else { 200 };
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            fs::write(
                dir.join("config.yml"),
                config_yml(&dir, &addr, creds.is_some()),
            )
            .expect("write config.yml");
            let log = fs::File::create(dir.join("registry.log")).expect("create registry.log");
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(dir.join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start docker-registry: {e}"));
            match wait_ready(&mut child, &addr, want) {
                Ok(()) => {
                    return Registry {
                        addr,
                        dir,
                        child,
                        creds,
                        tmp,
                    }
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_log = format!("{why}\n{}", log_tail(&dir));
                    // Another process took the port between its release and the bind: retry.
                    if !last_log.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("docker-registry did not come up; log tail:\n{last_log}");
    }

    /// The last 4 KiB of the registry's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir)
    }

    /// The credentials the registry requires, if any.
    pub fn creds(&self) -> Option<(&str, &str)> {
        self.creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// `ADDR/REPO:TAG` (or `ADDR/REPO@DIGEST`) for a `repo_tag`.
    pub fn image_ref(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }

    /// Pushes `<layout_dir>:latest` as `REPO:TAG` with `skopeo copy --preserve-digests` and
    /// returns the manifest digest in the registry (asserted equal to the layout's).
    pub fn push_oci(&self, layout_dir: &Path, repo_tag: &str) -> String {
        let src = format!("oci:{}:latest", layout_dir.display());
        let dest = format!("docker://{}", self.image_ref(repo_tag));
        let mut args = vec![
            "--insecure-policy".to_string(),
            "copy".into(),
            "--quiet".into(),
            "--preserve-digests".into(),
            "--dest-tls-verify=false".into(),
        ];
        if let Some((u, p)) = self.creds() {
            args.push("--dest-creds".into());
            args.push(format!("{u}:{p}"));
        }
        args.push(src);
        args.push(dest);
        skopeo(&args);
        let digest = self.manifest_digest(repo_tag);
        let expected = layout_manifest_digest(layout_dir);
        assert_eq!(
            digest,
            expected,
            "skopeo changed the manifest of {} on push",
            layout_dir.display()
        );
        digest
    }

    /// The digest of the manifest (or index) that `REPO:TAG` points at, from
    /// `skopeo inspect --raw`.
    pub fn manifest_digest(&self, repo_tag: &str) -> String {
        let mut args = vec![
            "--insecure-policy".to_string(),
            "inspect".into(),
            "--raw".into(),
            "--tls-verify=false".into(),
        ];
        if let Some((u, p)) = self.creds() {
            args.push("--creds".into());
            args.push(format!("{u}:{p}"));
        }
        args.push(format!("docker://{}", self.image_ref(repo_tag)));
        let raw = skopeo(&args);
        format!("sha256:{}", sha256_hex(&raw))
    }

    /// Pushes the layout as `REPO:TAG-amd64`, derives an arm64 manifest from it (same
    /// layers, config with `architecture: arm64`), and tags `REPO:TAG` with an OCI index that
    /// lists ONLY the arm64 manifest: a client asking for linux/amd64 must find nothing.
    pub fn push_index(&self, layout_dir: &Path, repo_tag: &str) -> PushedIndex {
        self.push_index_impl(layout_dir, repo_tag, false)
    }

    /// Like [`Registry::push_index`], but the index lists linux/arm64 first and then the
    /// layout's own linux/amd64 manifest: a client must pick the amd64 one.
    pub fn push_index_multiarch(&self, layout_dir: &Path, repo_tag: &str) -> PushedIndex {
        self.push_index_impl(layout_dir, repo_tag, true)
    }

    fn push_index_impl(&self, layout_dir: &Path, repo_tag: &str, with_amd64: bool) -> PushedIndex {
        let (repo, tag) = split_repo_tag(repo_tag);
        let amd64 = self.push_oci(layout_dir, &format!("{repo}:{tag}-amd64"));
        let manifest_bytes = self.get_manifest(repo, &amd64);
        let manifest: Value = serde_json::from_slice(&manifest_bytes).expect("manifest JSON");
        // The arm64 twin: same layers, its own config blob.
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .expect("config digest");
        let r = self.get(&format!("/v2/{repo}/blobs/{config_digest}"));
        assert_eq!(
            r.status,
            200,
            "GET config blob: {}",
            String::from_utf8_lossy(&r.body)
        );
        let mut config = r.json();
        config["architecture"] = json!("arm64");
        config["variant"] = json!("v8");
        let config_bytes = serde_json::to_vec(&config).unwrap();
        let arm_config = self.upload_blob(repo, &config_bytes);
        let mut arm_manifest = manifest.clone();
        arm_manifest["config"]["digest"] = json!(arm_config);
        arm_manifest["config"]["size"] = json!(config_bytes.len());
        let arm_bytes = serde_json::to_vec(&arm_manifest).unwrap();
        let arm64 = self.put_manifest(repo, &format!("{tag}-arm64"), MT_OCI_MANIFEST, &arm_bytes);

        let mut entries = vec![json!({
            "mediaType": MT_OCI_MANIFEST,
            "digest": arm64,
            "size": arm_bytes.len(),
            "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
        })];
        if with_amd64 {
            entries.push(json!({
                "mediaType": MT_OCI_MANIFEST,
                "digest": amd64,
                "size": manifest_bytes.len(),
                "platform": {"architecture": "amd64", "os": "linux"},
            }));
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": MT_OCI_INDEX,
            "manifests": entries,
        });
        let index_bytes = serde_json::to_vec(&index).unwrap();
        let index = self.put_manifest(repo, tag, MT_OCI_INDEX, &index_bytes);
        PushedIndex {
            index,
            amd64: with_amd64.then_some(amd64),
            arm64,
        }
    }

    /// `GET /v2/REPO/manifests/REFERENCE` (accepting OCI and Docker media types); the raw
    /// bytes. Panics unless 200.
    pub fn get_manifest(&self, repo: &str, reference: &str) -> Vec<u8> {
        let accept = format!(
            "Accept: {MT_OCI_MANIFEST}, {MT_OCI_INDEX}, \
             application/vnd.docker.distribution.manifest.v2+json, \
             application/vnd.docker.distribution.manifest.list.v2+json"
        );
        let r = self.request(
            "GET",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[&accept],
            &[],
        );
        assert_eq!(
            r.status,
            200,
            "GET manifest {repo}:{reference}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.body
    }

    /// `PUT /v2/REPO/manifests/REFERENCE`; returns the digest. Panics unless 201.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let ct = format!("Content-Type: {media_type}");
        let r = self.request(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[&ct],
            body,
        );
        assert_eq!(
            r.status,
            201,
            "PUT manifest {repo}:{reference}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let digest = format!("sha256:{}", sha256_hex(body));
        if let Some(d) = r.header("docker-content-digest") {
            assert_eq!(d, digest, "registry computed another manifest digest");
        }
        digest
    }

    /// Uploads a blob (POST + monolithic PUT); returns its digest.
    pub fn upload_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = format!("sha256:{}", sha256_hex(data));
        let r = self.request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], &[]);
        assert_eq!(
            r.status,
            202,
            "POST blob upload: {}",
            String::from_utf8_lossy(&r.body)
        );
        let location = r.header("location").expect("upload Location").to_string();
        // The Location may be absolute (http://host/v2/...).
        let path = match location.find("/v2/") {
            Some(i) => &location[i..],
            None => panic!("odd upload Location {location}"),
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let r = self.request(
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            &["Content-Type: application/octet-stream"],
            data,
        );
        assert_eq!(
            r.status,
            201,
            "PUT blob: {}",
            String::from_utf8_lossy(&r.body)
        );
        digest
    }

    /// Where the registry keeps blob `digest` ("sha256:HEX") on disk, e.g. to corrupt it.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// A GET with the registry's credentials (if any).
    pub fn get(&self, path: &str) -> RegResponse {
        self.request("GET", path, &[], &[])
    }

    /// A request with the registry's credentials (if any). `headers` are whole header lines
    /// without CRLF. Panics on connection errors.
    pub fn request(&self, method: &str, path: &str, headers: &[&str], body: &[u8]) -> RegResponse {
        self.request_as(method, path, headers, body, true)
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.addr))
    }

    /// A request without credentials, whatever the registry requires.
    pub fn request_anonymous(&self, method: &str, path: &str) -> RegResponse {
        self.request_as(method, path, &[], &[], false)
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.addr))
    }

    fn request_as(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: &[u8],
        with_creds: bool,
    ) -> std::io::Result<RegResponse> {
        let auth = match (&self.creds, with_creds) {
            (Some((u, p)), true) => Some(base64(format!("{u}:{p}").as_bytes())),
            _ => None,
        };
        http_request(&self.addr, method, path, headers, body, auth.as_deref())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            self.tmp.keep_if_requested();
        }
        // `tmp` removes the directory when the fields drop.
    }
}

fn log_tail(dir: &Path) -> String {
    let log = fs::read(dir.join("registry.log")).unwrap_or_default();
    String::from_utf8_lossy(&log[log.len().saturating_sub(4096)..]).into_owned()
}

/// Waits until `GET /v2/` answers `want`, the process exits, or the timeout passes.
fn wait_ready(child: &mut Child, addr: &str, want: u16) -> Result<(), String> {
    let deadline = Instant::now() + REGISTRY_START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("(docker-registry exited: {status})"));
        }
        if let Ok(r) = http_request(addr, "GET", "/v2/", &[], &[], None) {
            if r.status == want {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "(no {want} from GET /v2/ within {REGISTRY_START_TIMEOUT:?})"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn config_yml(dir: &Path, addr: &str, auth: bool) -> String {
    let mut s = format!(
        "version: 0.1\n\
         log:\n  level: warn\n  formatter: text\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n  secret: tartarus-test-secret\n",
        dir.join("storage").display()
    );
    if auth {
        s.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: tartarus-test\n    path: {}\n",
            dir.join("htpasswd").display()
        ));
    }
    s
}

/// A loopback port that was free a moment ago (bound to port 0 and released).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
    basic_auth: Option<&str>,
) -> std::io::Result<RegResponse> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.set_write_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    if let Some(a) = basic_auth {
        req.push_str(&format!("Authorization: Basic {a}\r\n"));
    }
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let mut hdrs = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut hdrs);
    let n = match resp.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        other => {
            return Err(std::io::Error::other(format!(
                "bad HTTP response ({other:?}): {}",
                String::from_utf8_lossy(&raw)
            )))
        }
    };
    let status = resp.code.unwrap_or(0);
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let mut body = raw[n..].to_vec();
    if let Some(len) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
    {
        body.truncate(len);
    } else if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Ok(RegResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_str = String::from_utf8_lossy(&data[..eol]);
        let size =
            usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
}

/// Runs skopeo with `args`; returns stdout, panics with stderr on failure.
fn skopeo<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Vec<u8> {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run skopeo: {e}"));
    assert!(
        out.status.success(),
        "skopeo {:?} failed: {}",
        args.iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The digest of the manifest tagged "latest" in an OCI layout's index.json.
pub fn layout_manifest_digest(layout_dir: &Path) -> String {
    let index: Value = serde_json::from_slice(
        &fs::read(layout_dir.join("index.json"))
            .unwrap_or_else(|e| panic!("read {}/index.json: {e}", layout_dir.display())),
    )
    .expect("index.json is JSON");
    index["manifests"]
        .as_array()
        .and_then(|m| {
            m.iter().find(|d| {
                d["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some("latest")
            })
        })
        .and_then(|d| d["digest"].as_str())
        .unwrap_or_else(|| panic!("{}: no manifest tagged latest", layout_dir.display()))
        .to_string()
}

fn split_repo_tag(repo_tag: &str) -> (&str, &str) {
    repo_tag
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .unwrap_or((repo_tag, "latest"))
}

/// Writes a `docker save`-style archive of `<layout>:latest` to `out`, named `name_tag`
/// (`NAME:TAG`; skopeo records it normalized, e.g. `docker.io/NAME:TAG`). The layers are
/// stored uncompressed, named by their diff_ids. Goes through an uncompressed `dir:` copy
/// because skopeo cannot put zstd layers into a Docker-format image.
pub fn docker_archive(layout: &Path, out: &Path, name_tag: &str) {
    let tmp = TempDir::new("docker-archive");
    let dir = tmp.join("dir");
    skopeo(&[
        "--insecure-policy".to_string(),
        "copy".into(),
        "--quiet".into(),
        "--dest-decompress".into(),
        format!("oci:{}:latest", layout.display()),
        format!("dir:{}", dir.display()),
    ]);
    let _ = fs::remove_file(out);
    skopeo(&[
        "--insecure-policy".to_string(),
        "copy".into(),
        "--quiet".into(),
        format!("dir:{}", dir.display()),
        format!("docker-archive:{}:{name_tag}", out.display()),
    ]);
}

/// The image fixtures of `tests/images/mkimages.py`.
#[derive(Clone, Debug)]
pub struct Fixtures {
    /// OCI layout of the 3-layer edge-case image (tag "latest").
    pub edge: PathBuf,
    /// JSON with the expected state after unpacking `edge` (see mkimages.py).
    pub edge_expect: PathBuf,
    /// OCI layout of Debian bookworm + python3 + numpy + pandas (tag "latest").
    pub python_ds: PathBuf,
}

static ALL_FIXTURES: OnceLock<Fixtures> = OnceLock::new();

/// Builds (or finds cached) all image fixtures, once per test process.
pub fn fixtures() -> &'static Fixtures {
    ALL_FIXTURES.get_or_init(|| {
        let out = run_mkimages("all");
        Fixtures {
            edge: key_path(&out, "EDGE"),
            edge_expect: key_path(&out, "EDGE_EXPECT"),
            python_ds: key_path(&out, "PYTHON_DS"),
        }
    })
}

/// Only the edge fixture: (OCI layout, expectation JSON), once per test process. Cheaper than
/// [`fixtures`] on a cold cache (no python/numpy/pandas install).
pub fn edge_fixture() -> &'static (PathBuf, PathBuf) {
    static F: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        if let Some(f) = ALL_FIXTURES.get() {
            return (f.edge.clone(), f.edge_expect.clone());
        }
        let out = run_mkimages("edge");
        (key_path(&out, "EDGE"), key_path(&out, "EDGE_EXPECT"))
    })
}

fn run_mkimages(which: &str) -> String {
    let script = crate::repo_root().join("tests/images/mkimages.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(which)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} {which} failed ({}); its progress is above",
        script.display(),
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn key_path(stdout: &str, key: &str) -> PathBuf {
    let prefix = format!("{key}=");
    let p = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("mkimages.py printed no {key}= line:\n{stdout}"));
    PathBuf::from(p)
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// SHA-256 (FIPS 180-4) of `data`, lower-case hex. Small and slow: for manifests and configs.
pub fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[i * 4..i * 4 + 4].try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7]
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [
                t1.wrapping_add(t2),
                v[0],
                v[1],
                v[2],
                v[3].wrapping_add(t1),
                v[4],
                v[5],
                v[6],
            ];
        }
        for (a, b) in h.iter_mut().zip(v) {
            *a = a.wrapping_add(b);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_and_base64_known_answers() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(split_repo_tag("a/b:t"), ("a/b", "t"));
        assert_eq!(split_repo_tag("a/b"), ("a/b", "latest"));
    }

    fn tags(reg: &Registry, repo: &str) -> Vec<String> {
        let r = reg.get(&format!("/v2/{repo}/tags/list"));
        assert_eq!(
            r.status,
            200,
            "tags/list: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn registry_without_auth_takes_a_push() {
        let (edge, _) = edge_fixture();
        let reg = Registry::start(None);
        let digest = reg.push_oci(edge, "tartarus/edge:v1");
        assert!(tags(&reg, "tartarus/edge").contains(&"v1".to_string()));
        let manifest: Value = serde_json::from_slice(&reg.get_manifest("tartarus/edge", "v1"))
            .expect("manifest JSON");
        assert_eq!(manifest["mediaType"], MT_OCI_MANIFEST);
        // Every layer is where blob_data_path says, byte for byte the layout's blob.
        for layer in manifest["layers"].as_array().unwrap() {
            let d = layer["digest"].as_str().unwrap();
            let on_disk = fs::read(reg.blob_data_path(d)).expect("blob on disk");
            let in_layout = fs::read(edge.join("blobs/sha256").join(&d[7..])).unwrap();
            assert!(on_disk == in_layout, "blob {d} differs from the layout's");
        }
        assert_eq!(reg.manifest_digest("tartarus/edge:v1"), digest);
    }

    #[test]
    fn registry_with_auth_needs_credentials() {
        let (edge, _) = edge_fixture();
        let reg = Registry::start(Some(("tartarus", "s3cret pass")));
        assert_eq!(reg.request_anonymous("GET", "/v2/").status, 401);
        assert_eq!(reg.get("/v2/").status, 200);
        reg.push_oci(edge, "private/edge:v1");
        assert_eq!(tags(&reg, "private/edge"), vec!["v1".to_string()]);
        assert_eq!(
            reg.request_anonymous("GET", "/v2/private/edge/tags/list")
                .status,
            401
        );
    }

    #[test]
    fn docker_archive_of_the_edge_image() {
        let (edge, _) = edge_fixture();
        let tmp = TempDir::new("docker-archive-test");
        let out = tmp.join("edge.tar");
        docker_archive(edge, &out, "tartarus/edge:v1");
        let listing = Command::new("tar")
            .arg("-xOf")
            .arg(&out)
            .arg("manifest.json")
            .output()
            .expect("run tar");
        assert!(
            listing.status.success(),
            "no manifest.json in {}",
            out.display()
        );
        let manifest: Value = serde_json::from_slice(&listing.stdout).unwrap();
        let layers = manifest[0]["Layers"].as_array().expect("Layers");
        assert_eq!(layers.len(), 3);
        // Layers are the uncompressed tars, named by the layout's diff_ids.
        let m: Value = serde_json::from_slice(
            &fs::read(
                edge.join("blobs/sha256")
                    .join(&layout_manifest_digest(edge)[7..]),
            )
            .unwrap(),
        )
        .unwrap();
        let config_digest = m["config"]["digest"].as_str().unwrap();
        let config: Value = serde_json::from_slice(
            &fs::read(edge.join("blobs/sha256").join(&config_digest[7..])).unwrap(),
        )
        .unwrap();
        for (layer, diff_id) in layers
            .iter()
            .zip(config["rootfs"]["diff_ids"].as_array().unwrap())
        {
            let name = layer.as_str().unwrap();
            assert!(
                name.contains(&diff_id.as_str().unwrap()[7..]),
                "{name} vs {diff_id}"
            );
        }
        assert!(manifest[0]["RepoTags"]
            .to_string()
            .contains("tartarus/edge:v1"));
    }

    #[test]
    fn registry_serves_hand_made_indexes() {
        let (edge, _) = edge_fixture();
        let reg = Registry::start(None);
        let only_arm = reg.push_index(edge, "idx/edge:armonly");
        assert!(only_arm.amd64.is_none());
        let index: Value =
            serde_json::from_slice(&reg.get_manifest("idx/edge", "armonly")).unwrap();
        assert_eq!(index["mediaType"], MT_OCI_INDEX);
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(index["manifests"][0]["platform"]["architecture"], "arm64");
        assert_eq!(reg.manifest_digest("idx/edge:armonly"), only_arm.index);

        let multi = reg.push_index_multiarch(edge, "idx/edge:multi");
        let index: Value = serde_json::from_slice(&reg.get_manifest("idx/edge", "multi")).unwrap();
        let archs: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["platform"]["architecture"].as_str().unwrap())
            .collect();
        assert_eq!(archs, ["arm64", "amd64"]);
        assert_eq!(
            index["manifests"][1]["digest"].as_str(),
            multi.amd64.as_deref()
        );
        assert_eq!(
            multi.amd64.as_deref(),
            Some(layout_manifest_digest(edge).as_str())
        );
        assert_ne!(multi.arm64, layout_manifest_digest(edge));
    }
}
