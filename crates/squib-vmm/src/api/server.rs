//! The API socket: a Unix listener and a single-threaded epoll loop over its connections.
//!
//! Connections are served in turn, a few requests at a time, like Firecracker's. No client can
//! hold the loop or lock others out: sockets are non-blocking and read only when epoll says they
//! are readable; answers the socket does not take wait in a per-connection buffer (and the
//! connection is not read or served until they are written); a connection with more pipelined
//! requests than [`REQUESTS_PER_TURN`] waits for the next turn; a request must arrive whole, and
//! waiting answers must be read, within [`REQUEST_TIMEOUT`]; and when [`MAX_CONNECTIONS`] are
//! open a newcomer evicts the longest-idle connection, or if none is idle the one stuck longest
//! on a partial request or unread answers.

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

/// One client connection. Its socket is non-blocking: answers the socket does not take at once
/// wait in `output`, and while they wait the connection is neither read nor served, so a client
/// that does not read its answers holds only its own buffer and slot.
#[derive(Debug)]
struct Connection {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// When the first byte of the request being received arrived (unset while answers wait).
    request_started: Option<Instant>,
    /// When the socket first refused part of `output`.
    write_blocked: Option<Instant>,
    last_active: Instant,
    sent_continue: bool,
    /// Close once `output` is written (`Connection: close`, a malformed request).
    close_after_output: bool,
    /// The epoll interest registered: readable, or writable while `output` waits.
    wants_write: bool,
}

impl Connection {
    /// When this connection started to hold the server's attention without progress: a partial
    /// request or unwritten answers. `None` when idle.
    fn busy_since(&self) -> Option<Instant> {
        self.write_blocked.or(self.request_started)
    }
}

/// What to do with a connection after serving it.
#[derive(Debug, PartialEq, Eq)]
enum Keep {
    Open,
    /// Complete requests remain in its input: serve it again on the next turn.
    Pending,
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
    /// Connections with buffered requests left over from their last turn.
    pending: Vec<u64>,
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
            pending: Vec::new(),
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
                .filter_map(|c| c.busy_since().map(|t| t + REQUEST_TIMEOUT))
                .chain(controller.tick(now))
                .min();
            let timeout_ms = if self.pending.is_empty() {
                deadline.map_or(-1, |d| {
                    i32::try_from(d.saturating_duration_since(now).as_millis() + 1)
                        .unwrap_or(i32::MAX)
                })
            } else {
                0
            };
            let n = match self.epoll.wait(timeout_ms, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(ServerError::Poll(e)),
            };
            // Connections first, the listener last: bytes a client already sent are read (and
            // mark it busy) before a newcomer may evict an idle connection.
            let mut accept = false;
            let mut turn = std::mem::take(&mut self.pending);
            for event in &events[..n] {
                match event.data() {
                    TOKEN_LISTENER => accept = true,
                    TOKEN_WAKE => {
                        let _ = self.wake.read();
                    }
                    token if !turn.contains(&token) => turn.push(token),
                    _ => {}
                }
            }
            for token in turn {
                self.serve(token, controller);
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
            if self.connections.len() >= MAX_CONNECTIONS {
                self.evict();
            }
            if let Err(e) = self.add(stream) {
                warn!("cannot serve an API connection: {e}");
            }
        }
    }

    fn add(&mut self, stream: UnixStream) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let token = self.next_token;
        self.next_token += 1;
        self.epoll.ctl(
            ControlOperation::Add,
            stream.as_raw_fd(),
            EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, token),
        )?;
        let conn = Connection {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            request_started: None,
            write_blocked: None,
            last_active: Instant::now(),
            sent_continue: false,
            close_after_output: false,
            wants_write: false,
        };
        self.connections.insert(token, conn);
        Ok(())
    }

    /// Makes room for a newcomer: the longest-idle connection goes first; when none is idle, the
    /// one stuck longest on a partial request or on answers it does not read. A client that
    /// sends its requests whole and reads its answers is never the one stuck longest, so
    /// squatters evict each other, not it.
    fn evict(&mut self) {
        let idle = self
            .connections
            .iter()
            .filter(|(_, c)| c.busy_since().is_none())
            .min_by_key(|(_, c)| c.last_active)
            .map(|(&t, _)| t);
        let victim = idle.or_else(|| {
            self.connections
                .iter()
                .min_by_key(|(_, c)| c.busy_since())
                .map(|(&t, _)| t)
        });
        if let Some(token) = victim {
            debug!(token, "API connection evicted for a newcomer");
            self.close(token);
        }
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
            self.pending.retain(|&t| t != token);
            debug!(token, "API connection closed");
        }
    }

    fn expire(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .connections
            .iter()
            .filter(|(_, c)| c.busy_since().is_some_and(|t| now >= t + REQUEST_TIMEOUT))
            .map(|(&t, _)| t)
            .collect();
        for token in late {
            if let Some(conn) = self.connections.get_mut(&token)
                && conn.output.is_empty()
            {
                warn!("API client too slow: no complete request within {REQUEST_TIMEOUT:?}");
                let fault = Response::fault(
                    http::Status::BadRequest,
                    "request timed out: send the whole request at once",
                );
                // Best effort, never waiting: the connection closes either way.
                let _ = conn.stream.write(&fault.to_bytes(false));
            } else {
                warn!("API client does not read its answers; closing it after {REQUEST_TIMEOUT:?}");
            }
            self.close(token);
        }
    }

    fn serve<V: VmmControl>(&mut self, token: u64, controller: &mut ApiController<V>) {
        let max_payload = self.max_payload;
        let Some(conn) = self.connections.get_mut(&token) else {
            return;
        };
        let keep = serve_connection(conn, max_payload, controller);
        let wants_write = !conn.output.is_empty();
        if keep != Keep::Close && wants_write != conn.wants_write {
            conn.wants_write = wants_write;
            let interest = if wants_write {
                EventSet::OUT | EventSet::READ_HANG_UP
            } else {
                EventSet::IN | EventSet::READ_HANG_UP
            };
            if self
                .epoll
                .ctl(
                    ControlOperation::Modify,
                    conn.stream.as_raw_fd(),
                    EpollEvent::new(interest, token),
                )
                .is_err()
            {
                self.close(token);
                return;
            }
        }
        match keep {
            Keep::Open => {}
            Keep::Pending => self.pending.push(token),
            Keep::Close => self.close(token),
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Requests one connection may have answered per turn of the loop before the others get theirs.
const REQUESTS_PER_TURN: usize = 4;

/// One turn for one connection: write what waits, read what arrived, answer up to
/// [`REQUESTS_PER_TURN`] complete requests. Never waits on the socket.
fn serve_connection<V: VmmControl>(
    conn: &mut Connection,
    max_payload: usize,
    controller: &mut ApiController<V>,
) -> Keep {
    let now = Instant::now();
    if !flush_output(conn, now) {
        return Keep::Close;
    }
    if !conn.output.is_empty() {
        return Keep::Open;
    }
    if conn.close_after_output {
        return Keep::Close;
    }
    let mut chunk = [0u8; READ_CHUNK];
    match conn.stream.read(&mut chunk) {
        Ok(0) => return Keep::Close,
        Ok(n) => {
            conn.input.extend_from_slice(&chunk[..n]);
            conn.last_active = now;
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
        Err(_) => return Keep::Close,
    }
    for _ in 0..REQUESTS_PER_TURN {
        if conn.input.is_empty() {
            conn.request_started = None;
            return Keep::Open;
        }
        conn.request_started.get_or_insert(now);
        match http::parse(&conn.input, max_payload) {
            Ok(Parsed::Incomplete { expect_continue }) => {
                if expect_continue && !conn.sent_continue {
                    conn.sent_continue = true;
                    conn.output.extend_from_slice(CONTINUE);
                    if !flush_output(conn, now) {
                        return Keep::Close;
                    }
                }
                return Keep::Open;
            }
            Ok(Parsed::Complete(request, used)) => {
                conn.input.drain(..used);
                conn.sent_continue = false;
                conn.request_started = None;
                debug!(method = %request.method, path = %request.path, "API request");
                let response = controller.handle_http(&request);
                conn.output
                    .extend_from_slice(&response.to_bytes(request.keep_alive));
                conn.close_after_output = !request.keep_alive;
                if !flush_output(conn, now) {
                    return Keep::Close;
                }
                if !conn.output.is_empty() {
                    // The client is not reading: serve it again once its socket drains.
                    return Keep::Open;
                }
                if conn.close_after_output {
                    return Keep::Close;
                }
            }
            Err(e) => {
                warn!("bad HTTP from an API client: {e}");
                let response = Response::fault(e.status(), &e.to_string());
                conn.output.extend_from_slice(&response.to_bytes(false));
                conn.close_after_output = true;
                conn.input.clear();
                conn.request_started = None;
                if !flush_output(conn, now) || conn.output.is_empty() {
                    return Keep::Close;
                }
                return Keep::Open;
            }
        }
    }
    if conn.input.is_empty() {
        Keep::Open
    } else {
        Keep::Pending
    }
}

/// Writes as much of the connection's waiting output as its socket takes; false if the socket
/// failed.
fn flush_output(conn: &mut Connection, now: Instant) -> bool {
    let mut written = 0;
    while written < conn.output.len() {
        match conn.stream.write(&conn.output[written..]) {
            Ok(0) => return false,
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => return false,
        }
    }
    conn.output.drain(..written);
    if conn.output.is_empty() {
        conn.write_blocked = None;
    } else {
        conn.write_blocked.get_or_insert(now);
        if written > 0 {
            // Progress: the client reads, slowly.
            conn.write_blocked = Some(now);
        }
    }
    if written > 0 {
        conn.last_active = now;
    }
    true
}
