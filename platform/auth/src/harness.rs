//! A real OIDC provider for tests (feature `harness`): npm `oauth2-mock-server`, installed once
//! into `~/.cache/tartarus/oauth2-mock-server-<version>` with npm and driven by
//! `src/harness/provider.mjs` (one JSON command per stdin line, one JSON reply per stdout
//! line). It serves discovery and JWKS on 127.0.0.1 and signs the tokens the test asks for.
//! Used by this crate's tests and by the platform tests (tests/tests/platform_auth.rs) against
//! a real `tartarusd`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use serde_json::{json, Value};

/// The oauth2-mock-server version installed and driven.
pub const MOCK_VERSION: &str = "8.2.3";

/// The provider script (kept next to this file in the source tree).
fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/harness/provider.mjs")
}

/// The installed module's entry point; installs it on first use (once per process, and
/// serialised across the threads of a test binary).
fn module() -> PathBuf {
    static MODULE: OnceLock<PathBuf> = OnceLock::new();
    static INSTALL: Mutex<()> = Mutex::new(());
    MODULE
        .get_or_init(|| {
            let _one = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
            let home = std::env::var("HOME").expect("HOME");
            let dir = PathBuf::from(home)
                .join(".cache/tartarus")
                .join(format!("oauth2-mock-server-{MOCK_VERSION}"));
            let module = dir.join("node_modules/oauth2-mock-server/dist/index.mjs");
            if !module.is_file() {
                std::fs::create_dir_all(&dir)
                    .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
                let st = Command::new("npm")
                    .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
                    .arg(&dir)
                    .arg(format!("oauth2-mock-server@{MOCK_VERSION}"))
                    .status()
                    .expect("npm (Debian/NodeSource nodejs; scripts/setup.sh installs it)");
                assert!(st.success(), "npm install oauth2-mock-server failed");
            }
            module
        })
        .clone()
}

/// One running provider process; killed on drop.
pub struct Provider {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// `http://127.0.0.1:<port>`, the `iss` of its tokens.
    pub issuer: String,
    /// The kid of the key it starts with (RS256).
    pub first_kid: String,
}

impl Provider {
    /// Starts the provider on a free port of 127.0.0.1; panics (failing the test) when Node.js
    /// or the module is missing.
    pub fn start() -> Provider {
        let mut child = Command::new("node")
            .arg(script())
            .env("OAUTH2_MOCK_SERVER", module())
            .env("PORT", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node (scripts/setup.sh installs nodejs)");
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("provider output");
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("the provider did not start: {line:?}"));
        Provider {
            child,
            stdin,
            stdout,
            issuer: ready["issuer"].as_str().expect("issuer").to_string(),
            first_kid: ready["kid"].as_str().expect("kid").to_string(),
        }
    }

    /// One command and its reply; panics on an `error` reply.
    pub fn cmd(&mut self, msg: Value) -> Value {
        writeln!(self.stdin, "{msg}").expect("write to the provider");
        self.stdin.flush().expect("write to the provider");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read from the provider");
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("provider answered {line:?} to {msg}"));
        assert!(v.get("error").is_none(), "provider: {v}");
        v
    }

    /// A token signed by the provider's current key, with these claims added, valid 1 h.
    pub fn token(&mut self, claims: Value) -> String {
        self.token_with(claims, 3600)
    }

    /// A token that expires `expires_in` seconds from now (negative: already expired).
    pub fn token_with(&mut self, claims: Value, expires_in: i64) -> String {
        self.cmd(json!({"cmd": "token", "claims": claims, "expires_in": expires_in}))["token"]
            .as_str()
            .expect("token")
            .to_string()
    }

    /// A new signing key (published next to the old ones); returns its kid.
    pub fn rotate(&mut self, alg: &str) -> String {
        self.cmd(json!({"cmd": "rotate", "alg": alg}))["kid"]
            .as_str()
            .expect("kid")
            .to_string()
    }

    /// Stops publishing `kid` (the provider restarts on the same port without it); returns
    /// the kids still published.
    pub fn retire(&mut self, kid: &str) -> Vec<String> {
        let v = self.cmd(json!({"cmd": "retire", "kid": kid}));
        v["kids"]
            .as_array()
            .expect("kids")
            .iter()
            .map(|k| k.as_str().expect("kid").to_string())
            .collect()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
