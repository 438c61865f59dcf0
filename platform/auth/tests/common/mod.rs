//! A real OIDC provider for the tests: npm `oauth2-mock-server`, installed once into
//! `~/.cache/tartarus/oauth2-mock-server-<version>` and driven by tests/oidc/provider.mjs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;

use serde_json::{json, Value};

pub const MOCK_VERSION: &str = "8.2.3";

fn module() -> PathBuf {
    static MODULE: OnceLock<PathBuf> = OnceLock::new();
    MODULE
        .get_or_init(|| {
            let home = std::env::var("HOME").expect("HOME");
            let dir = PathBuf::from(home)
                .join(".cache/tartarus")
                .join(format!("oauth2-mock-server-{MOCK_VERSION}"));
            let module = dir.join("node_modules/oauth2-mock-server/dist/index.mjs");
            if !module.is_file() {
                std::fs::create_dir_all(&dir).unwrap();
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

pub struct Provider {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub issuer: String,
    pub first_kid: String,
}

impl Provider {
    pub fn start() -> Provider {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc/provider.mjs");
        let mut child = Command::new("node")
            .arg(script)
            .env("OAUTH2_MOCK_SERVER", module())
            .env("PORT", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let ready: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("{line:?}"));
        Provider {
            child,
            stdin,
            stdout,
            issuer: ready["issuer"].as_str().unwrap().to_string(),
            first_kid: ready["kid"].as_str().unwrap().to_string(),
        }
    }

    pub fn cmd(&mut self, msg: Value) -> Value {
        writeln!(self.stdin, "{msg}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("{line:?}"));
        assert!(v.get("error").is_none(), "provider: {v}");
        v
    }

    /// A token signed by the provider's current key, with these claims added.
    pub fn token(&mut self, claims: Value) -> String {
        self.token_with(claims, 3600)
    }

    pub fn token_with(&mut self, claims: Value, expires_in: i64) -> String {
        self.cmd(json!({"cmd": "token", "claims": claims, "expires_in": expires_in}))["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn rotate(&mut self, alg: &str) -> String {
        self.cmd(json!({"cmd": "rotate", "alg": alg}))["kid"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn retire(&mut self, kid: &str) -> Vec<String> {
        let v = self.cmd(json!({"cmd": "retire", "kid": kid}));
        v["kids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
