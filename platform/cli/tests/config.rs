//! Profiles and the precedence of the global settings: flag > env > profile > default.

use std::collections::HashMap;
use std::path::Path;

use tartarus_cli::cli::OutputFormat;
use tartarus_cli::config::{config_path, resolve, ConfigError, ConfigFile, Overrides};

const CONFIG: &str = r#"
default_profile = "local"
[profiles.local]
host = "unix:///run/tartarus/tartarusd.sock"
[profiles.lab]
host = "http://127.0.0.1:7070"
api_key = "secret"
output = "json"
[profiles.bare]
"#;

fn cfg() -> ConfigFile {
    ConfigFile::parse(CONFIG, Path::new("config.toml")).unwrap()
}

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| m.get(k).cloned()
}

fn run(
    flags: Overrides,
    e: &[(&str, &str)],
    c: &ConfigFile,
) -> Result<tartarus_cli::config::Settings, ConfigError> {
    resolve(&flags, &env(e), c, Path::new("config.toml"))
}

#[test]
fn defaults_without_config() {
    let s = run(Overrides::default(), &[], &ConfigFile::default()).unwrap();
    assert_eq!(s.host, "unix:///run/tartarus/tartarusd.sock");
    assert_eq!(
        (s.api_key, s.output, s.profile),
        (None, OutputFormat::Table, None)
    );
}

#[test]
fn default_profile_applies() {
    let mut c = cfg();
    c.default_profile = Some("lab".into());
    let s = run(Overrides::default(), &[], &c).unwrap();
    assert_eq!(s.host, "http://127.0.0.1:7070");
    assert_eq!(s.api_key.as_deref(), Some("secret"));
    assert_eq!(s.output, OutputFormat::Json);
    assert_eq!(s.profile.as_deref(), Some("lab"));
}

#[test]
fn env_profile_beats_default_profile_and_flag_beats_env() {
    let s = run(Overrides::default(), &[("TARTARUS_PROFILE", "lab")], &cfg()).unwrap();
    assert_eq!(s.host, "http://127.0.0.1:7070");
    let flags = Overrides {
        profile: Some("local".into()),
        ..Default::default()
    };
    let s = run(flags, &[("TARTARUS_PROFILE", "lab")], &cfg()).unwrap();
    assert_eq!(s.host, "unix:///run/tartarus/tartarusd.sock");
    assert_eq!(s.api_key, None);
}

#[test]
fn host_precedence() {
    let lab = Overrides {
        profile: Some("lab".into()),
        ..Default::default()
    };
    // env beats profile
    let s = run(
        lab.clone(),
        &[("TARTARUS_HOST", "unix:///env.sock")],
        &cfg(),
    )
    .unwrap();
    assert_eq!(s.host, "unix:///env.sock");
    // flag beats env
    let flags = Overrides {
        host: Some("http://10.0.0.1:1".into()),
        ..lab.clone()
    };
    let s = run(flags, &[("TARTARUS_HOST", "unix:///env.sock")], &cfg()).unwrap();
    assert_eq!(s.host, "http://10.0.0.1:1");
    // the profile's key still applies with another host
    assert_eq!(s.api_key.as_deref(), Some("secret"));
    // empty env is unset
    let s = run(lab, &[("TARTARUS_HOST", "")], &cfg()).unwrap();
    assert_eq!(s.host, "http://127.0.0.1:7070");
    // a profile without a host falls back to the default
    let bare = Overrides {
        profile: Some("bare".into()),
        ..Default::default()
    };
    assert_eq!(
        run(bare, &[], &cfg()).unwrap().host,
        "unix:///run/tartarus/tartarusd.sock"
    );
}

#[test]
fn output_flag_beats_profile() {
    let flags = Overrides {
        profile: Some("lab".into()),
        output: Some(OutputFormat::Table),
        ..Default::default()
    };
    assert_eq!(run(flags, &[], &cfg()).unwrap().output, OutputFormat::Table);
}

#[test]
fn unknown_profile_and_bad_values() {
    let flags = Overrides {
        profile: Some("nope".into()),
        ..Default::default()
    };
    let e = run(flags, &[], &cfg()).unwrap_err();
    assert_eq!(e.to_string(), "no profile 'nope' in config.toml");
    let e = run(
        Overrides::default(),
        &[("TARTARUS_PROFILE", "nope")],
        &cfg(),
    )
    .unwrap_err();
    assert!(matches!(e, ConfigError::UnknownProfile { .. }));
    let c = ConfigFile::parse(
        "default_profile = \"x\"\n[profiles.x]\noutput = \"yaml\"\n",
        Path::new("c.toml"),
    )
    .unwrap();
    assert!(matches!(
        run(Overrides::default(), &[], &c),
        Err(ConfigError::BadOutput { .. })
    ));
    let e = ConfigFile::parse("[profiles.x]\nhots = \"a\"\n", Path::new("c.toml")).unwrap_err();
    assert!(e.to_string().contains("hots"), "{e}");
}

#[test]
fn config_file_location() {
    let p = config_path(&env(&[("XDG_CONFIG_HOME", "/xdg"), ("HOME", "/home/u")])).unwrap();
    assert_eq!(p, Path::new("/xdg/tartarus/config.toml"));
    let p = config_path(&env(&[("XDG_CONFIG_HOME", ""), ("HOME", "/home/u")])).unwrap();
    assert_eq!(p, Path::new("/home/u/.config/tartarus/config.toml"));
    assert_eq!(config_path(&env(&[])), None);
}

#[test]
fn missing_file_is_empty() {
    let c = ConfigFile::load(Path::new("/nonexistent/tartarus/config.toml")).unwrap();
    assert_eq!(c, ConfigFile::default());
}

const TLS_CONFIG: &str = r#"
[profiles.tls]
host = "https://tartarus.example.com:7443"
api_key = "profile-key"
tls_ca = "ca.crt"
tls_cert = "~/certs/alice.crt"
tls_key = "/etc/tartarus/alice.key"
"#;

#[test]
fn api_key_precedence() {
    let c = ConfigFile::parse(TLS_CONFIG, Path::new("/cfg/config.toml")).unwrap();
    let prof = Overrides {
        profile: Some("tls".into()),
        ..Default::default()
    };
    let r = |flags: Overrides, e: &[(&str, &str)]| {
        resolve(&flags, &env(e), &c, Path::new("/cfg/config.toml"))
            .unwrap()
            .api_key
    };
    assert_eq!(r(prof.clone(), &[]).as_deref(), Some("profile-key"));
    assert_eq!(
        r(prof.clone(), &[("TARTARUS_API_KEY", "env-key")]).as_deref(),
        Some("env-key")
    );
    // An empty variable counts as unset.
    assert_eq!(
        r(prof.clone(), &[("TARTARUS_API_KEY", "")]).as_deref(),
        Some("profile-key")
    );
    let flag = Overrides {
        api_key: Some("flag-key".into()),
        ..prof
    };
    assert_eq!(
        r(flag, &[("TARTARUS_API_KEY", "env-key")]).as_deref(),
        Some("flag-key")
    );
    // No profile, only the environment.
    assert_eq!(
        r(Overrides::default(), &[("TARTARUS_API_KEY", "env-key")]).as_deref(),
        Some("env-key")
    );
}

#[test]
fn tls_files_precedence_and_profile_paths() {
    use std::path::PathBuf;
    let c = ConfigFile::parse(TLS_CONFIG, Path::new("/cfg/config.toml")).unwrap();
    let prof = Overrides {
        profile: Some("tls".into()),
        ..Default::default()
    };
    let r = |flags: &Overrides, e: &[(&str, &str)]| {
        resolve(flags, &env(e), &c, Path::new("/cfg/config.toml"))
            .unwrap()
            .tls
    };
    // Profile: relative to the config file's directory, `~/` under HOME, absolute as is.
    let t = r(&prof, &[("HOME", "/home/a")]);
    assert_eq!(t.ca, Some(PathBuf::from("/cfg/ca.crt")));
    assert_eq!(t.cert, Some(PathBuf::from("/home/a/certs/alice.crt")));
    assert_eq!(t.key, Some(PathBuf::from("/etc/tartarus/alice.key")));
    // env > profile
    let e = [
        ("HOME", "/home/a"),
        ("TARTARUS_TLS_CA", "/env/ca.crt"),
        ("TARTARUS_TLS_CERT", "/env/c.crt"),
        ("TARTARUS_TLS_KEY", "/env/c.key"),
    ];
    let t = r(&prof, &e);
    assert_eq!(
        (t.ca, t.cert, t.key),
        (
            Some(PathBuf::from("/env/ca.crt")),
            Some(PathBuf::from("/env/c.crt")),
            Some(PathBuf::from("/env/c.key"))
        )
    );
    // flag > env, per file
    let flags = Overrides {
        tls_ca: Some("flag-ca.crt".into()),
        tls_key: Some("flag.key".into()),
        ..prof.clone()
    };
    let t = r(&flags, &e);
    assert_eq!(t.ca, Some(PathBuf::from("flag-ca.crt")));
    assert_eq!(t.cert, Some(PathBuf::from("/env/c.crt")));
    assert_eq!(t.key, Some(PathBuf::from("flag.key")));
    // Nothing anywhere: no files.
    let t = r(&Overrides::default(), &[]);
    assert_eq!((t.ca, t.cert, t.key), (None, None, None));
    let s = resolve(&prof, &env(&[]), &c, Path::new("/cfg/config.toml")).unwrap();
    assert_eq!(s.host, "https://tartarus.example.com:7443");
}
