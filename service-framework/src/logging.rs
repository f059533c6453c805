//! Logging as the original sets it up: a console at one level, an optional file at another
//! level rotated every hour keeping `backup_count` files, the workflow id on every line that
//! belongs to a message (handlers run inside a `workflow{id=...}` span).

use std::path::PathBuf;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

use crate::error::{Error, Result};

/// Logging settings (the CLI's `-cl`, `-f`, `-l`, `-bc`).
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Console level (default INFO).
    pub console_level: String,
    /// File level (default INFO).
    pub file_level: String,
    /// Log file path; no file when `None`.
    pub log_path: Option<PathBuf>,
    /// Hourly files kept (default 24).
    pub backup_count: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            console_level: "INFO".into(),
            file_level: "INFO".into(),
            log_path: None,
            backup_count: 24,
        }
    }
}

/// Parses the original's level names (DEBUG, INFO, WARNING, ERROR, CRITICAL) and tracing's.
pub fn parse_level(name: &str) -> Result<LevelFilter> {
    Ok(match name.trim().to_ascii_uppercase().as_str() {
        "TRACE" => LevelFilter::TRACE,
        "DEBUG" => LevelFilter::DEBUG,
        "INFO" => LevelFilter::INFO,
        "WARN" | "WARNING" => LevelFilter::WARN,
        "ERROR" | "CRITICAL" | "FATAL" => LevelFilter::ERROR,
        "OFF" | "NONE" => LevelFilter::OFF,
        other => {
            return Err(Error::Other(format!(
                "unknown log level {other:?} (use DEBUG, INFO, WARNING, ERROR or CRITICAL)"
            )))
        }
    })
}

/// Keeps the file writer flushing; drop it last.
#[derive(Debug)]
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

/// Installs the process-wide logger. A second call (several services in one process) keeps
/// the first logger and returns an empty guard.
pub fn init(options: &LogOptions) -> Result<LogGuard> {
    let console_level = parse_level(&options.console_level)?;
    let file_level = parse_level(&options.file_level)?;
    let console = fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_filter(console_level);
    let (file, guard) = match &options.log_path {
        Some(path) => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let prefix = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("service.log");
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Other(format!("cannot create log folder {}: {e}", dir.display()))
            })?;
            let appender = tracing_appender::rolling::Builder::new()
                .rotation(tracing_appender::rolling::Rotation::HOURLY)
                .filename_prefix(prefix)
                .max_log_files(options.backup_count.max(1))
                .build(dir)
                .map_err(|e| {
                    Error::Other(format!("cannot open log file {}: {e}", path.display()))
                })?;
            let (writer, guard) = tracing_appender::non_blocking(appender);
            (
                Some(
                    fmt::layer()
                        .with_writer(writer)
                        .with_ansi(false)
                        .with_filter(file_level),
                ),
                Some(guard),
            )
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(console)
        .with(file)
        .try_init();
    Ok(LogGuard(guard))
}

/// The original's `get_logger()`: the logger services write to. In Rust the `tracing`
/// macros are the logger; this handle logs under the `service_framework` target.
#[derive(Debug, Clone, Copy, Default)]
pub struct Logger;

/// Returns the service logger.
pub fn get_logger() -> Logger {
    Logger
}

impl Logger {
    /// Logs at DEBUG.
    pub fn debug(&self, msg: impl std::fmt::Display) {
        tracing::debug!(target: "service_framework", "{msg}");
    }
    /// Logs at INFO.
    pub fn info(&self, msg: impl std::fmt::Display) {
        tracing::info!(target: "service_framework", "{msg}");
    }
    /// Logs at WARNING.
    pub fn warning(&self, msg: impl std::fmt::Display) {
        tracing::warn!(target: "service_framework", "{msg}");
    }
    /// Logs at ERROR.
    pub fn error(&self, msg: impl std::fmt::Display) {
        tracing::error!(target: "service_framework", "{msg}");
    }
}
