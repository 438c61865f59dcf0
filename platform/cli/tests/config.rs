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
