//! squib's log: `tracing` to stderr or a file/FIFO, in Firecracker's line format, reconfigurable
//! by `PUT /logger`.
//!
//! A line is `<time> [<id>:<thread>[:<level>][:<file>:<line>]] <message>`, as Firecracker writes
//! it (`show_level` and `show_log_origin` off by default; the time is UTC with nanoseconds,
//! where Firecracker uses local time). The subscriber is installed once, at start, from the
//! command-line flags; its filter and format sit behind `reload` layers so that the API can
//! change them later. A file or FIFO is written through a [`LineSink`]: a full pipe drops the
//! line and counts it (`logger.missed_log_count`) instead of blocking the thread that logged.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Registry, fmt, reload};

use super::models::{LogLevel, LoggerBody};
use super::sink::{LineOutcome, LineSink};

/// Why the logger could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum LogConfigError {
    /// The log file cannot be opened.
    #[error("cannot open log_path `{}`: {source}", path.display())]
    Open {
        /// As given.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A global subscriber was already installed by someone else.
    #[error("the logger is not under squib's control (another subscriber is installed)")]
    NotInstalled,
    /// The reload layer's subscriber is gone (cannot happen while the process runs).
    #[error("cannot reconfigure the logger: {0}")]
    Reload(#[from] reload::Error),
}

impl LogLevel {
    fn filter(self) -> LevelFilter {
        match self {
            Self::Off => LevelFilter::OFF,
            Self::Error => LevelFilter::ERROR,
            Self::Warning => LevelFilter::WARN,
            Self::Info => LevelFilter::INFO,
            Self::Debug => LevelFilter::DEBUG,
            Self::Trace => LevelFilter::TRACE,
        }
    }
}

/// Counts of lines the log destination could not take (the `logger` metrics group).
#[derive(Debug, Default)]
pub struct LogCounters {
    missed_log_count: AtomicU64,
}

impl LogCounters {
    /// Lines dropped since start (Firecracker's `logger.missed_log_count`).
    pub fn missed_log_count(&self) -> u64 {
        self.missed_log_count.load(Ordering::Relaxed)
    }
}

/// Where log lines go.
enum Destination {
    Stderr,
    Sink(LineSink),
}

/// The destination, swapped in place when `log_path` changes.
#[derive(Clone)]
struct SharedWriter {
    out: Arc<Mutex<Destination>>,
    counters: Arc<LogCounters>,
}

impl std::fmt::Debug for SharedWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedWriter")
    }
}

/// One log event's exclusive use of the writer. The formatter hands over a whole line in one
/// `write`.
struct WriterGuard<'a> {
    out: MutexGuard<'a, Destination>,
    counters: &'a LogCounters,
}

impl Write for WriterGuard<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *self.out {
            Destination::Stderr => io::stderr().write(buf),
            Destination::Sink(sink) => {
                if sink.write_line(buf) == LineOutcome::Dropped {
                    self.counters
                        .missed_log_count
                        .fetch_add(1, Ordering::Relaxed);
                }
                // Dropped on purpose: report it taken so the formatter does not retry.
                Ok(buf.len())
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for SharedWriter {
    type Writer = WriterGuard<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        WriterGuard {
            out: self.out.lock().unwrap_or_else(PoisonError::into_inner),
            counters: &self.counters,
        }
    }
}

/// Firecracker's line format.
#[derive(Clone, Debug)]
pub struct FirecrackerFormat {
    id: Arc<str>,
    show_level: bool,
    show_origin: bool,
}

impl<S, N> FormatEvent<S, N> for FirecrackerFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        write_utc_timestamp(&mut writer, SystemTime::now())?;
        let thread = std::thread::current();
        write!(
            writer,
            " [{}:{}",
            self.id,
            thread.name().unwrap_or("unnamed")
        )?;
        if self.show_level {
            write!(writer, ":{}", level_name(*meta.level()))?;
        }
        if self.show_origin {
            write!(
                writer,
                ":{}:{}",
                meta.file().unwrap_or("?"),
                meta.line().unwrap_or(0)
            )?;
        }
        writer.write_str("] ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Firecracker's level names.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn` in UTC.
fn write_utc_timestamp(out: &mut impl std::fmt::Write, now: SystemTime) -> std::fmt::Result {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_nanos()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

type Filtered = Layered<reload::Layer<Targets, Registry>, Registry>;
type FmtLayer = fmt::Layer<Filtered, DefaultFields, FirecrackerFormat, SharedWriter>;

fn fmt_layer(writer: SharedWriter, format: FirecrackerFormat) -> FmtLayer {
    fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .event_format(format)
}

fn targets(level: LogLevel, module: Option<&str>) -> Targets {
    match module {
        Some(module) => Targets::new().with_target(module, level.filter()),
        None => Targets::new().with_default(level.filter()),
    }
}

fn open_log(path: &Path) -> Result<Destination, LogConfigError> {
    LineSink::open(path)
        .map(Destination::Sink)
        .map_err(|source| LogConfigError::Open {
            path: path.to_owned(),
            source,
        })
}

/// The installed logger's controls.
#[derive(Clone)]
pub struct Logger {
    filter: reload::Handle<Targets, Registry>,
    format: reload::Handle<FmtLayer, Filtered>,
    writer: SharedWriter,
    id: Arc<str>,
    /// The settings in force (every field set), so a partial `PUT /logger` keeps the rest.
    current: Arc<Mutex<LoggerBody>>,
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logger").finish_non_exhaustive()
    }
}

/// Firecracker's defaults for what `flags` leaves out.
fn with_defaults(flags: &LoggerBody) -> LoggerBody {
    LoggerBody {
        level: Some(flags.level.unwrap_or_default()),
        log_path: flags.log_path.clone(),
        show_level: Some(flags.show_level.unwrap_or(false)),
        show_log_origin: Some(flags.show_log_origin.unwrap_or(false)),
        module: flags.module.clone(),
    }
}

impl Logger {
    /// Installs the global subscriber as the command-line flags say (`log_path` absent: stderr)
    /// for instance `id`. Returns `Ok(None)` when a subscriber is already installed (tests
    /// running in one process).
    pub fn install(flags: &LoggerBody, id: &str) -> Result<Option<Self>, LogConfigError> {
        let settings = with_defaults(flags);
        let out = match &settings.log_path {
            Some(p) => open_log(Path::new(p))?,
            None => Destination::Stderr,
        };
        let writer = SharedWriter {
            out: Arc::new(Mutex::new(out)),
            counters: Arc::default(),
        };
        let id: Arc<str> = id.into();
        let level = settings.level.unwrap_or_default();
        let (filter, filter_handle) =
            reload::Layer::new(targets(level, settings.module.as_deref()));
        let format = FirecrackerFormat {
            id: id.clone(),
            show_level: settings.show_level == Some(true),
            show_origin: settings.show_log_origin == Some(true),
        };
        let (layer, format_handle) = reload::Layer::new(fmt_layer(writer.clone(), format));
        if tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .try_init()
            .is_err()
        {
            return Ok(None);
        }
        Ok(Some(Self {
            filter: filter_handle,
            format: format_handle,
            writer,
            id,
            current: Arc::new(Mutex::new(settings)),
        }))
    }

    /// The settings in force, every field filled in.
    pub fn settings(&self) -> LoggerBody {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The drop counters.
    pub fn counters(&self) -> Arc<LogCounters> {
        self.writer.counters.clone()
    }

    /// Applies a `PUT /logger`: the fields given replace the current ones.
    pub fn apply(&self, body: &LoggerBody) -> Result<(), LogConfigError> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let new_out = body
            .log_path
            .as_deref()
            .map(|p| open_log(Path::new(p)))
            .transpose()?;
        let merged = LoggerBody {
            level: body.level.or(current.level),
            log_path: body.log_path.clone().or_else(|| current.log_path.clone()),
            show_level: body.show_level.or(current.show_level),
            show_log_origin: body.show_log_origin.or(current.show_log_origin),
            module: body.module.clone().or_else(|| current.module.clone()),
        };
        let level = merged.level.unwrap_or_default();
        self.filter
            .reload(targets(level, merged.module.as_deref()))?;
        let writer = self.writer.clone();
        let format = FirecrackerFormat {
            id: self.id.clone(),
            show_level: merged.show_level == Some(true),
            show_origin: merged.show_log_origin == Some(true),
        };
        self.format
            .modify(|layer| *layer = fmt_layer(writer, format))?;
        if let Some(out) = new_out {
            *self
                .writer
                .out
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = out;
        }
        *current = merged;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_with_nanoseconds() {
        let mut s = String::new();
        let t = UNIX_EPOCH + std::time::Duration::new(1_709_210_096, 123_456_789);
        write_utc_timestamp(&mut s, t).unwrap();
        assert_eq!(s, "2024-02-29T12:34:56.123456789");
        s.clear();
        write_utc_timestamp(&mut s, UNIX_EPOCH).unwrap();
        assert_eq!(s, "1970-01-01T00:00:00.000000000");
    }

    #[test]
    fn flags_get_firecracker_defaults() {
        let d = with_defaults(&LoggerBody::default());
        assert_eq!(
            (d.level, d.show_level, d.show_log_origin),
            (Some(LogLevel::Info), Some(false), Some(false))
        );
    }
}
