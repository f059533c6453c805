//! Logging as the original sets it up: a console at one level, an optional file at another
//! level rotated every hour keeping `backup_count` files, the workflow id on every line that
//! belongs to a message (`workflow{id=...}` before the message, as a span would print it),
//! followed by the W3C trace id of the span serving it (`trace_id=...`).
//!
//! The id is not a `tracing` span: an enabled span is allocated and has its fields formatted
//! for every message, logged or not (callgrind: about 3.3k instructions a request at INFO,
//! a third of the framework's whole cost per request). Handlers run with the id in a
//! task-local instead, and the line format reads it only when a line is written.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sf_connections::wire::{TraceParent, WorkflowId};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

use crate::error::{Error, Result};

/// Logging settings (the CLI's `-cl`, `-f`, `-l`, `-bc`).
#[derive(Debug, Clone, PartialEq)]
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

/// The original's `TimedRotatingFileHandler(path, when="h", backupCount=n)`: lines go to
/// `path` itself; at the first write in a new hour the file is renamed `path.YYYY-MM-DD_HH`
/// (the hour it covers) and a fresh `path` is started, and only the newest `backup_count`
/// renamed files are kept (0 keeps them all). Hours are UTC clock hours, like the timestamps.
#[derive(Debug)]
pub struct HourlyFile {
    path: PathBuf,
    backup_count: usize,
    file: Option<File>,
    hour: u64,
}

impl HourlyFile {
    /// Opens (appends to) `path`. A file left from an earlier hour is rotated at the first
    /// write.
    pub fn open(path: &Path, backup_count: usize) -> std::io::Result<Self> {
        let hour = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_or_else(|_| unix_hour(SystemTime::now()), unix_hour);
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(HourlyFile {
            path: path.to_path_buf(),
            backup_count,
            file: Some(file),
            hour,
        })
    }

    /// The name a file covering `hour` (hours since the Unix epoch) is rotated to.
    pub fn rotated_name(path: &Path, hour: u64) -> PathBuf {
        let (y, m, d) = civil_from_days((hour / 24) as i64);
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{y:04}-{m:02}-{d:02}_{:02}", hour % 24));
        path.with_file_name(name)
    }

    fn rotate_if_due(&mut self) -> std::io::Result<()> {
        let now = unix_hour(SystemTime::now());
        if now <= self.hour && self.file.is_some() {
            return Ok(());
        }
        if now > self.hour {
            self.file = None;
            let rotated = Self::rotated_name(&self.path, self.hour);
            match std::fs::rename(&self.path, &rotated) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            self.hour = now;
            self.prune();
        }
        self.file = Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?,
        );
        Ok(())
    }

    /// Deletes rotated files beyond the newest `backup_count`.
    fn prune(&self) {
        if self.backup_count == 0 {
            return;
        }
        let Some(name) = self.path.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let prefix = format!("{name}.");
        let mut rotated: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix(&prefix))
                    .is_some_and(is_hour_suffix)
            })
            .map(|e| e.path())
            .collect();
        rotated.sort();
        let excess = rotated.len().saturating_sub(self.backup_count);
        for old in &rotated[..excess] {
            let _ = std::fs::remove_file(old);
        }
    }
}

impl Write for HourlyFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.rotate_if_due()?;
        match &mut self.file {
            Some(f) => f.write(buf),
            None => Err(std::io::Error::other("log file not open")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

fn unix_hour(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 3600)
}

/// `YYYY-MM-DD_HH`.
fn is_hour_suffix(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 13
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'_',
            _ => c.is_ascii_digit(),
        })
}

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

tokio::task_local! {
    /// The workflow id of the message the running handler serves.
    static WORKFLOW: WorkflowId;
}

/// The workflow id of the message the calling handler serves (`None` outside a handler,
/// and in tasks a handler spawned unless they run inside [`in_workflow`]). The framework's
/// line format prints it; a service that installs its own `tracing` subscriber reads it here.
pub fn current_workflow_id() -> Option<WorkflowId> {
    WORKFLOW.try_with(|id| id.clone()).ok()
}

/// Runs `fut` as serving the message `id`: every line it logs carries `workflow{id=...}`.
/// Handlers already run this way; wrap a task a handler spawns to keep its id.
pub fn in_workflow<F: std::future::Future>(
    id: WorkflowId,
    fut: F,
) -> tokio::task::futures::TaskLocalFuture<WorkflowId, F> {
    WORKFLOW.scope(id, fut)
}

tokio::task_local! {
    /// The trace context of the span the running handler serves the message in.
    static TRACE: TraceParent;
}

/// The trace context of the span the calling handler runs in (`None` outside a handler and in
/// tasks it spawned unless they run inside [`in_trace`]): the incoming message's trace id with
/// a span id of its own. Its trace id is on the handler's log lines as `trace_id=...`.
pub fn current_trace() -> Option<TraceParent> {
    TRACE.try_with(|tp| *tp).ok()
}

/// Runs `fut` in the span `trace`: every line it logs carries `trace_id=...`. Handlers
/// already run this way; wrap a task a handler spawns to keep its trace.
pub fn in_trace<F: std::future::Future>(
    trace: TraceParent,
    fut: F,
) -> tokio::task::futures::TaskLocalFuture<TraceParent, F> {
    TRACE.scope(trace, fut)
}

/// The line format: `time LEVEL workflow{id=...} trace_id=...: spans: [target: ]message
/// fields`, the layout of tracing's default format with the handler's workflow id and trace id
/// first. A service (or a test) that installs its own subscriber gets the framework's lines
/// with [`line_format`].
#[derive(Debug, Clone, Copy)]
pub struct LineFormat {
    target: bool,
}

/// The framework's line format as a `tracing_subscriber` event formatter
/// (`fmt().event_format(line_format(false))`); `target` adds each event's target, as the log
/// file's lines have it.
pub fn line_format(target: bool) -> LineFormat {
    LineFormat { target }
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let ansi = w.has_ansi_escapes();
        if fmt::time::SystemTime.format_time(&mut w).is_err() {
            w.write_str("<unknown time>")?;
        }
        let level = *event.metadata().level();
        if ansi {
            let colour = match level {
                Level::ERROR => "31",
                Level::WARN => "33",
                Level::INFO => "32",
                Level::DEBUG => "34",
                Level::TRACE => "35",
            };
            write!(w, " \x1b[{colour}m{level:>5}\x1b[0m ")?;
        } else {
            write!(w, " {level:>5} ")?;
        }
        let workflow = WORKFLOW.try_with(|id| write!(w, "workflow{{id={id}}}"));
        if let Ok(r) = workflow {
            r?;
        }
        match TRACE.try_with(|tp| tp.trace_id_hex()) {
            Ok(trace_id) if workflow.is_ok() => write!(w, " trace_id={trace_id}: ")?,
            Ok(trace_id) => write!(w, "trace_id={trace_id}: ")?,
            Err(_) if workflow.is_ok() => w.write_str(": ")?,
            Err(_) => {}
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                w.write_str(span.name())?;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(w, "{{{fields}}}")?;
                    }
                }
                w.write_str(": ")?;
            }
        }
        if self.target {
            write!(w, "{}: ", event.metadata().target())?;
        }
        ctx.format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Keeps the file writer flushing; drop it last.
#[derive(Debug)]
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

/// Installs the process-wide logger. A second call (several services in one process) keeps
/// the first logger and returns an empty guard.
pub fn init(options: &LogOptions) -> Result<LogGuard> {
    let console_level = parse_level(&options.console_level)?;
    let file_level = parse_level(&options.file_level)?;
    // Colours only for a person at a terminal: a pipe or a log collector gets plain text.
    let console = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .event_format(LineFormat { target: false })
        .with_filter(console_level);
    let (file, guard) = match &options.log_path {
        Some(path) => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Other(format!("cannot create log folder {}: {e}", dir.display()))
            })?;
            let file = HourlyFile::open(path, options.backup_count).map_err(|e| {
                Error::Other(format!("cannot open log file {}: {e}", path.display()))
            })?;
            let (writer, guard) = tracing_appender::non_blocking(file);
            (
                Some(
                    fmt::layer()
                        .with_writer(writer)
                        .with_ansi(false)
                        .event_format(LineFormat { target: true })
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
///
/// Pass `format_args!(...)` rather than `format!(...)`: the text is then only formatted when
/// the level is enabled (a `format!` in a hot handler costs its formatting on every call,
/// logged or not).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names_carry_the_hour_they_cover() {
        // 2024-02-29 13:00 UTC is 1_709_211_600 s after the epoch.
        let hour = 1_709_211_600 / 3600;
        assert_eq!(
            HourlyFile::rotated_name(Path::new("/logs/service.log"), hour),
            PathBuf::from("/logs/service.log.2024-02-29_13")
        );
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert!(is_hour_suffix("2024-02-29_13"));
        assert!(!is_hour_suffix("2024-02-29-13"));
        assert!(!is_hour_suffix("old"));
    }

    #[test]
    fn writes_to_the_path_rotates_a_stale_file_and_keeps_backup_count() {
        let dir = std::env::temp_dir().join(format!("sf-hourly-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("service.log");
        // Three rotated files from long ago, and a current file from an earlier hour.
        for h in [10, 11, 12] {
            std::fs::write(HourlyFile::rotated_name(&path, h), "old\n").unwrap();
        }
        std::fs::write(&path, "previous hour\n").unwrap();
        let mut f = HourlyFile::open(&path, 2).unwrap();
        f.hour = 13; // as if the file were written in hour 13 of 1970
        f.write_all(b"now\n").unwrap();
        f.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "now\n");
        let rotated_13 = HourlyFile::rotated_name(&path, 13);
        assert_eq!(
            std::fs::read_to_string(&rotated_13).unwrap(),
            "previous hour\n"
        );
        // backup_count 2: hours 12 and 13 remain, 10 and 11 are gone.
        assert!(HourlyFile::rotated_name(&path, 12).exists());
        assert!(!HourlyFile::rotated_name(&path, 11).exists());
        assert!(!HourlyFile::rotated_name(&path, 10).exists());
        // Within the same hour, writes append to the same file.
        f.write_all(b"again\n").unwrap();
        f.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "now\nagain\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
