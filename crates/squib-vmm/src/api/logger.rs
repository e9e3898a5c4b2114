//! squib's log: `tracing` to stderr or a file, reconfigurable by `PUT /logger`.
//!
//! The subscriber is installed once, at start, from `--level` and `--log-path`; its filter and
//! format sit behind `reload` layers so that the API can change level, destination, module
//! filter and line format later.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Registry, fmt, reload};

use super::models::{LogLevel, LoggerBody};

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

/// Where log lines go: swapped in place when `log_path` changes.
#[derive(Clone)]
struct SharedWriter(Arc<Mutex<Box<dyn Write + Send>>>);

impl std::fmt::Debug for SharedWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedWriter")
    }
}

/// One log event's exclusive use of the writer.
struct WriterGuard<'a>(MutexGuard<'a, Box<dyn Write + Send>>);

impl Write for WriterGuard<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<'a> MakeWriter<'a> for SharedWriter {
    type Writer = WriterGuard<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        WriterGuard(self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

type Filtered = Layered<reload::Layer<Targets, Registry>, Registry>;
type FmtLayer = fmt::Layer<Filtered, fmt::format::DefaultFields, fmt::format::Format, SharedWriter>;

fn fmt_layer(writer: SharedWriter, show_level: bool, show_origin: bool) -> FmtLayer {
    fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .with_level(show_level)
        .with_target(show_origin)
        .with_file(show_origin)
        .with_line_number(show_origin)
}

fn targets(level: LogLevel, module: Option<&str>) -> Targets {
    match module {
        Some(module) => Targets::new().with_target(module, level.filter()),
        None => Targets::new().with_default(level.filter()),
    }
}

/// Opens a log destination without blocking on a named pipe that has no reader yet.
fn open_log(path: &Path) -> Result<Box<dyn Write + Send>, LogConfigError> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| LogConfigError::Open {
            path: path.to_owned(),
            source,
        })?;
    Ok(Box::new(file))
}

/// The installed logger's controls.
#[derive(Clone)]
pub struct Logger {
    filter: reload::Handle<Targets, Registry>,
    format: reload::Handle<FmtLayer, Filtered>,
    writer: SharedWriter,
    /// The settings in force, so a partial `PUT /logger` keeps the rest.
    current: Arc<Mutex<LoggerBody>>,
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logger").finish_non_exhaustive()
    }
}

impl Logger {
    /// Installs the global subscriber: `level` to stderr, or to `log_path`. Returns `Ok(None)`
    /// when a subscriber is already installed (tests running in one process).
    pub fn install(
        level: LogLevel,
        log_path: Option<&Path>,
    ) -> Result<Option<Self>, LogConfigError> {
        let out: Box<dyn Write + Send> = match log_path {
            Some(p) => open_log(p)?,
            None => Box::new(io::stderr()),
        };
        let writer = SharedWriter(Arc::new(Mutex::new(out)));
        let (filter, filter_handle) = reload::Layer::new(targets(level, None));
        let (format, format_handle) = reload::Layer::new(fmt_layer(writer.clone(), true, false));
        if tracing_subscriber::registry()
            .with(filter)
            .with(format)
            .try_init()
            .is_err()
        {
            return Ok(None);
        }
        let current = LoggerBody {
            level: Some(level),
            log_path: log_path.map(|p| p.display().to_string()),
            show_level: Some(true),
            show_log_origin: Some(false),
            module: None,
        };
        Ok(Some(Self {
            filter: filter_handle,
            format: format_handle,
            writer,
            current: Arc::new(Mutex::new(current)),
        }))
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
        let (show_level, show_origin) = (
            merged.show_level.unwrap_or(true),
            merged.show_log_origin.unwrap_or(false),
        );
        self.format
            .modify(|layer| *layer = fmt_layer(writer, show_level, show_origin))?;
        if let Some(out) = new_out {
            *self.writer.0.lock().unwrap_or_else(PoisonError::into_inner) = out;
        }
        *current = merged;
        Ok(())
    }
}
