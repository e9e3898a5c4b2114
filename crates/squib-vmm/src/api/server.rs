//! The API socket: a Unix listener and a single-threaded epoll loop over its connections.
//!
//! Connections are served in turn, one request at a time, like Firecracker's. No client can hold
//! the loop: sockets are read only when epoll says they are readable, a request must arrive
//! whole within [`REQUEST_TIMEOUT`], answers are written with a timeout, and when
//! [`MAX_CONNECTIONS`] are open the longest-idle one makes room for a newcomer.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, Permissions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::controller::ApiController;
use super::http::{self, CONTINUE, Parsed, Response};
use super::vmm_control::VmmControl;

/// Time a client has to send a whole request once its first byte arrived.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time an answer may take to be accepted by the client's socket.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Open connections at most.
pub const MAX_CONNECTIONS: usize = 16;
/// Bytes read per readiness event.
const READ_CHUNK: usize = 16 * 1024;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_WAKE: u64 = 1;
const FIRST_CONNECTION_TOKEN: u64 = 2;

/// Why the API server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process serves the path.
    #[error("another API server is answering on `{}`", .0.display())]
    InUse(PathBuf),
    /// The path exists and is not a socket: squib will not delete it.
    #[error("`{}` exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    /// Creating the socket failed.
    #[error("cannot create the API socket `{}`: {source}", path.display())]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// epoll or eventfd failed.
    #[error("API server event loop: {0}")]
    Poll(io::Error),
}

/// Creates the listening socket at `path` with mode 0600.
///
/// A stale socket file (nobody answers) is removed; a live one is refused. The socket is bound in
/// a fresh 0700 directory beside `path`, chmod-ed to 0600, and only then renamed into place: the
/// order matters because a client could otherwise connect during the window between `bind` (which
/// creates the file with the process umask) and the `chmod`. The rename is atomic and keeps the
/// socket on the same file system.
pub fn bind_socket(path: &Path) -> Result<UnixListener, ServerError> {
    let bind_err = |source| ServerError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Ok(meta) = fs::symlink_metadata(path) {
        if UnixStream::connect(path).is_ok() {
            return Err(ServerError::InUse(path.to_owned()));
        }
        if !meta.file_type().is_socket() {
            return Err(ServerError::NotASocket(path.to_owned()));
        }
        info!(path = %path.display(), "removing stale API socket");
        fs::remove_file(path).map_err(bind_err)?;
    }
    let name = path
        .file_name()
        .ok_or_else(|| bind_err(ErrorKind::InvalidInput.into()))?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let private = parent.join(format!(
        ".{}.{}.bind",
        name.to_string_lossy(),
        std::process::id()
    ));
    DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(bind_err)?;
    let staged = private.join("api.sock");
    let result = UnixListener::bind(&staged)
        .and_then(|listener| {
            fs::set_permissions(&staged, Permissions::from_mode(0o600))?;
            fs::rename(&staged, path)?;
            Ok(listener)
        })
        .map_err(bind_err);
    let _ = fs::remove_file(&staged);
    let _ = fs::remove_dir(&private);
    result
}

/// One client connection.
#[derive(Debug)]
struct Connection {
    stream: UnixStream,
    buf: Vec<u8>,
    /// When the first byte of the request being received arrived.
    request_started: Option<Instant>,
    last_active: Instant,
    sent_continue: bool,
}

/// What to do with a connection after serving its input.
#[derive(Debug, PartialEq, Eq)]
enum Keep {
    Open,
    Close,
}

/// The API server of one squib process.
#[derive(Debug)]
pub struct ApiServer {
    path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    wake: EventFd,
    max_payload: usize,
    connections: HashMap<u64, Connection>,
    next_token: u64,
}

impl ApiServer {
    /// Binds `path` (see [`bind_socket`]); bodies over `max_payload` bytes are refused with 413.
    pub fn bind(path: &Path, max_payload: usize) -> Result<Self, ServerError> {
        let listener = bind_socket(path)?;
        listener.set_nonblocking(true).map_err(ServerError::Poll)?;
        let epoll = Epoll::new().map_err(ServerError::Poll)?;
        let wake = EventFd::new(EFD_NONBLOCK).map_err(ServerError::Poll)?;
        for (fd, token) in [
            (listener.as_raw_fd(), TOKEN_LISTENER),
            (wake.as_raw_fd(), TOKEN_WAKE),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(ServerError::Poll)?;
        }
        info!(path = %path.display(), "API server listening");
        Ok(Self {
            path: path.to_owned(),
            listener,
            epoll,
            wake,
            max_payload,
            connections: HashMap::new(),
            next_token: FIRST_CONNECTION_TOKEN,
        })
    }

    /// An eventfd that wakes the loop; give it to the controller so a stopping VMM ends `run`.
    pub fn wake_event(&self) -> Result<EventFd, ServerError> {
        self.wake.try_clone().map_err(ServerError::Poll)
    }

    /// Serves requests until the microVM has stopped; returns its exit status.
    pub fn run<V: VmmControl>(
        &mut self,
        controller: &mut ApiController<V>,
    ) -> Result<i32, ServerError> {
        let mut events = vec![EpollEvent::default(); MAX_CONNECTIONS + 2];
        loop {
            if let Some(status) = controller.exit_status() {
                return Ok(status);
            }
            let now = Instant::now();
            let deadline = self
                .connections
                .values()
                .filter_map(|c| c.request_started.map(|t| t + REQUEST_TIMEOUT))
                .chain(controller.tick(now))
                .min();
            let timeout_ms = deadline.map_or(-1, |d| {
                i32::try_from(d.saturating_duration_since(now).as_millis() + 1).unwrap_or(i32::MAX)
            });
            let n = match self.epoll.wait(timeout_ms, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(ServerError::Poll(e)),
            };
            // Connections first, the listener last: bytes a client already sent are read (and
            // mark it busy) before a newcomer may evict an idle connection.
            let mut accept = false;
            for event in &events[..n] {
                match event.data() {
                    TOKEN_LISTENER => accept = true,
                    TOKEN_WAKE => {
                        let _ = self.wake.read();
                    }
                    token => self.serve(token, controller),
                }
            }
            if accept {
                self.accept();
            }
            self.expire(Instant::now());
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("accepting an API connection failed: {e}");
                    return;
                }
            };
            if self.connections.len() >= MAX_CONNECTIONS && !self.evict_idle() {
                warn!("API connection refused: {MAX_CONNECTIONS} connections are busy");
                continue;
            }
            if let Err(e) = self.add(stream) {
                warn!("cannot serve an API connection: {e}");
            }
        }
    }

    fn add(&mut self, stream: UnixStream) -> io::Result<()> {
        // Reads only happen on readiness, so the timeout is a second line of defence.
        stream.set_read_timeout(Some(WRITE_TIMEOUT))?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let token = self.next_token;
        self.next_token += 1;
        self.epoll.ctl(
            ControlOperation::Add,
            stream.as_raw_fd(),
            EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, token),
        )?;
        let now = Instant::now();
        let conn = Connection {
            stream,
            buf: Vec::new(),
            request_started: None,
            last_active: now,
            sent_continue: false,
        };
        self.connections.insert(token, conn);
        Ok(())
    }

    /// Closes the longest-idle connection with no request in flight; false if there is none.
    fn evict_idle(&mut self) -> bool {
        let victim = self
            .connections
            .iter()
            .filter(|(_, c)| c.request_started.is_none())
            .min_by_key(|(_, c)| c.last_active)
            .map(|(&t, _)| t);
        victim.map(|t| self.close(t)).is_some()
    }

    fn close(&mut self, token: u64) {
        if let Some(conn) = self.connections.remove(&token) {
            // Closing the fd removes it from the epoll set; the explicit delete keeps the set
            // exact even if the fd were duplicated.
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                conn.stream.as_raw_fd(),
                EpollEvent::default(),
            );
            debug!(token, "API connection closed");
        }
    }

    fn expire(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .connections
            .iter()
            .filter(|(_, c)| {
                c.request_started
                    .is_some_and(|t| now >= t + REQUEST_TIMEOUT)
            })
            .map(|(&t, _)| t)
            .collect();
        for token in late {
            warn!("API client too slow: no complete request within {REQUEST_TIMEOUT:?}");
            if let Some(conn) = self.connections.get_mut(&token) {
                let fault = Response::fault(
                    http::Status::BadRequest,
                    "request timed out: send the whole request at once",
                );
                let _ = conn.stream.write_all(&fault.to_bytes(false));
            }
            self.close(token);
        }
    }

    fn serve<V: VmmControl>(&mut self, token: u64, controller: &mut ApiController<V>) {
        let max_payload = self.max_payload;
        let Some(conn) = self.connections.get_mut(&token) else {
            return;
        };
        if serve_connection(conn, max_payload, controller) == Keep::Close {
            self.close(token);
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn serve_connection<V: VmmControl>(
    conn: &mut Connection,
    max_payload: usize,
    controller: &mut ApiController<V>,
) -> Keep {
    let mut chunk = [0u8; READ_CHUNK];
    let n = match conn.stream.read(&mut chunk) {
        Ok(0) => return Keep::Close,
        Ok(n) => n,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
            return Keep::Open;
        }
        Err(_) => return Keep::Close,
    };
    let now = Instant::now();
    conn.buf.extend_from_slice(&chunk[..n]);
    conn.last_active = now;
    conn.request_started.get_or_insert(now);
    loop {
        match http::parse(&conn.buf, max_payload) {
            Ok(Parsed::Incomplete { expect_continue }) => {
                if expect_continue && !conn.sent_continue {
                    conn.sent_continue = true;
                    if conn.stream.write_all(CONTINUE).is_err() {
                        return Keep::Close;
                    }
                }
                return Keep::Open;
            }
            Ok(Parsed::Complete(request, used)) => {
                conn.buf.drain(..used);
                conn.sent_continue = false;
                conn.request_started = (!conn.buf.is_empty()).then_some(now);
                debug!(method = %request.method, path = %request.path, "API request");
                let response = controller.handle_http(&request);
                if conn
                    .stream
                    .write_all(&response.to_bytes(request.keep_alive))
                    .is_err()
                    || !request.keep_alive
                {
                    return Keep::Close;
                }
            }
            Err(e) => {
                warn!("bad HTTP from an API client: {e}");
                let response = Response::fault(e.status(), &e.to_string());
                let _ = conn.stream.write_all(&response.to_bytes(false));
                return Keep::Close;
            }
        }
    }
}
