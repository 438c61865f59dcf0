//! Logging through `tracing`, reconfigurable at run time by `PUT /logger`.

use std::fs::{File, OpenOptions};
use std::sync::{Arc, OnceLock};

use api::models::{LogLevel, LoggerConfig};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, Layer, Registry};

// The level filter is a global filter with its own reload handle; the formatting layer above it
// carries no per-layer filter, so it can be swapped whole. (A per-layer filter inside a reload
// layer loses its filter id on reload and panics on the next event.)
type FilterLayer = reload::Layer<Targets, Registry>;
type Base = Layered<FilterLayer, Registry>;
type FmtLayer = Box<dyn Layer<Base> + Send + Sync>;

struct Handles {
    filter: reload::Handle<Targets, Registry>,
    fmt: reload::Handle<FmtLayer, Base>,
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    #[error("Cannot open log file {0}")]
    Open(String, #[source] std::io::Error),
    #[error("The logger is not initialised")]
    NotInitialised,
    #[error("Cannot reconfigure the logger: {0}")]
    Reload(String),
}

/// The effective logger settings.
#[derive(Clone, Debug)]
pub struct LogSettings {
    pub level: LogLevel,
    pub show_level: bool,
    pub show_log_origin: bool,
    pub module: Option<String>,
    pub file: Option<Arc<File>>,
    pub id: String,
}

fn level_filter(l: LogLevel) -> LevelFilter {
    match l {
        LogLevel::Off => LevelFilter::OFF,
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warning => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    }
}

fn build_filter(s: &LogSettings) -> Targets {
    match &s.module {
        Some(m) => Targets::new().with_target(m.clone(), level_filter(s.level)),
        None => Targets::new().with_default(level_filter(s.level)),
    }
}

fn build_layer(s: &LogSettings) -> FmtLayer {
    let base = fmt::layer()
        .with_level(s.show_level)
        .with_file(s.show_log_origin)
        .with_line_number(s.show_log_origin)
        .with_target(false)
        .with_thread_names(true);
    match &s.file {
        Some(f) => base.with_ansi(false).with_writer(f.clone()).boxed(),
        None => base.with_ansi(false).with_writer(std::io::stderr).boxed(),
    }
}

/// Opens a log destination for appending (a regular file or a FIFO).
pub fn open_log_file(path: &str) -> Result<Arc<File>, LoggerError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(Arc::new)
        .map_err(|e| LoggerError::Open(path.to_string(), e))
}

/// Installs the global logger. Called once, first thing in main.
pub fn init(settings: &LogSettings) {
    let (filter, filter_handle) = reload::Layer::new(build_filter(settings));
    let (layer, fmt_handle) = reload::Layer::new(build_layer(settings));
    if tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init()
        .is_ok()
    {
        let _ = HANDLES.set(Handles {
            filter: filter_handle,
            fmt: fmt_handle,
        });
    }
}

/// Applies a `PUT /logger` body on top of the current settings.
pub fn apply(current: &LogSettings, cfg: &LoggerConfig) -> Result<LogSettings, LoggerError> {
    let mut s = current.clone();
    if let Some(p) = &cfg.log_path {
        s.file = Some(open_log_file(p)?);
    }
    if let Some(l) = cfg.level {
        s.level = l;
    }
    if let Some(v) = cfg.show_level {
        s.show_level = v;
    }
    if let Some(v) = cfg.show_log_origin {
        s.show_log_origin = v;
    }
    if cfg.module.is_some() {
        s.module = cfg.module.clone();
    }
    let handles = HANDLES.get().ok_or(LoggerError::NotInitialised)?;
    handles
        .fmt
        .reload(build_layer(&s))
        .map_err(|e| LoggerError::Reload(e.to_string()))?;
    handles
        .filter
        .reload(build_filter(&s))
        .map_err(|e| LoggerError::Reload(e.to_string()))?;
    Ok(s)
}
