//! HTTP/1.1 framing for the API socket: request heads parsed by `httparse`, bodies framed by
//! `Content-Length` and capped *before* they are read, and the few response shapes the API uses.

use serde::Serialize;

use super::models::Fault;

/// Firecracker's default `--http-api-max-payload-size`.
pub const DEFAULT_MAX_PAYLOAD: usize = 51_200;
/// Largest request head (request line plus headers) accepted.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Most headers in one request.
const MAX_HEADERS: usize = 32;

/// Why a byte stream is not a request the API can take. Every one ends the connection: after a
/// framing error the next request's start is unknown.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    /// `httparse` refused the head.
    #[error("malformed HTTP request: {0}")]
    Malformed(httparse::Error),
    /// The head did not end within [`MAX_HEAD_BYTES`].
    #[error("the request head is larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// Not HTTP/1.0 or 1.1.
    #[error("only HTTP/1.0 and HTTP/1.1 are supported")]
    Version,
    /// A bad or conflicting `Content-Length`.
    #[error("invalid Content-Length header")]
    ContentLength,
    /// Chunked or other transfer codings.
    #[error("Transfer-Encoding is not supported: send a Content-Length")]
    TransferEncoding,
    /// The body is over the limit.
    #[error(
        "request payload with size {size} is larger than the limit of {limit} allowed by server"
    )]
    PayloadTooLarge {
        /// `Content-Length`.
        size: u64,
        /// `--http-api-max-payload-size`.
        limit: usize,
    },
}

impl HttpError {
    /// The status this error is answered with.
    pub fn status(&self) -> Status {
        match self {
            Self::PayloadTooLarge { .. } => Status::PayloadTooLarge,
            _ => Status::BadRequest,
        }
    }
}

/// One complete request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// As sent (`GET`, `PUT`, …): the router decides which it accepts.
    pub method: String,
    /// The request target, query string included.
    pub path: String,
    /// Exactly `Content-Length` bytes.
    pub body: Vec<u8>,
    /// Whether the client wants the connection kept open after the answer.
    pub keep_alive: bool,
}

/// What the bytes received so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed. `expect_continue` is set when the head is complete, the body is
    /// within the limit and the client waits for `100 Continue` before sending it.
    Incomplete {
        /// Send `100 Continue` (once).
        expect_continue: bool,
    },
    /// A request, and how many bytes of the buffer it used.
    Complete(Request, usize),
}

/// Parses the start of `buf` as one request.
pub fn parse(buf: &[u8], max_payload: usize) -> Result<Parsed, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf).map_err(HttpError::Malformed)? {
        httparse::Status::Complete(n) if n <= MAX_HEAD_BYTES => n,
        httparse::Status::Partial if buf.len() <= MAX_HEAD_BYTES => {
            return Ok(Parsed::Incomplete {
                expect_continue: false,
            });
        }
        _ => return Err(HttpError::HeadTooLarge),
    };
    let version = req.version.ok_or(HttpError::Version)?;
    let mut keep_alive = version == 1;
    let mut content_length: Option<u64> = None;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).map(str::trim).unwrap_or("");
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value.parse::<u64>().map_err(|_| HttpError::ContentLength)?;
            if content_length.is_some_and(|m| m != n) {
                return Err(HttpError::ContentLength);
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::TransferEncoding);
        } else if h.name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    let size = content_length.unwrap_or(0);
    // Checked on the header alone: an oversized body is never read.
    let body_len = usize::try_from(size)
        .ok()
        .filter(|&n| n <= max_payload)
        .ok_or(HttpError::PayloadTooLarge {
            size,
            limit: max_payload,
        })?;
    let total = head_len + body_len;
    if buf.len() < total {
        return Ok(Parsed::Incomplete {
            expect_continue: expect_continue && body_len > 0,
        });
    }
    let request = Request {
        method: req.method.unwrap_or_default().to_owned(),
        path: req.path.unwrap_or_default().to_owned(),
        body: buf[head_len..total].to_vec(),
        keep_alive,
    };
    Ok(Parsed::Complete(request, total))
}

/// The statuses the API answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// GET answers.
    Ok,
    /// Successful PUT/PATCH.
    NoContent,
    /// Every refused request.
    BadRequest,
    /// A body over the payload limit.
    PayloadTooLarge,
    /// A failure inside squib rather than in the request.
    InternalServerError,
}

impl Status {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            Self::Ok => 200,
            Self::NoContent => 204,
            Self::BadRequest => 400,
            Self::PayloadTooLarge => 413,
            Self::InternalServerError => 500,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::NoContent => "No Content",
            Self::BadRequest => "Bad Request",
            Self::PayloadTooLarge => "Payload Too Large",
            Self::InternalServerError => "Internal Server Error",
        }
    }
}

/// An answer: a status and, except for 204, a JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status line.
    pub status: Status,
    /// JSON body.
    pub body: Option<Vec<u8>>,
}

impl Response {
    /// `204 No Content`.
    pub fn no_content() -> Self {
        Self {
            status: Status::NoContent,
            body: None,
        }
    }

    /// `200 OK` with `value` as JSON.
    pub fn json<T: Serialize>(value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self {
                status: Status::Ok,
                body: Some(body),
            },
            Err(e) => Self::fault(Status::InternalServerError, &format!("serialization: {e}")),
        }
    }

    /// An error answer: `{"fault_message": message}`.
    pub fn fault(status: Status, message: &str) -> Self {
        let fault = Fault {
            fault_message: message.to_owned(),
        };
        // A struct of one string always serializes.
        let body = serde_json::to_vec(&fault).unwrap_or_default();
        Self {
            status,
            body: Some(body),
        }
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nServer: squib\r\nConnection: {}\r\n",
            self.status.code(),
            self.status.reason(),
            if keep_alive { "keep-alive" } else { "close" },
        );
        if let Some(body) = &self.body {
            out.push_str("Content-Type: application/json\r\n");
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if let Some(body) = &self.body {
            bytes.extend_from_slice(body);
        }
        bytes
    }
}

/// What a client waiting on `Expect: 100-continue` is sent before its body.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (Request, usize) {
        match parse(buf, DEFAULT_MAX_PAYLOAD).unwrap() {
            Parsed::Complete(r, n) => (r, n),
            other => panic!("incomplete: {other:?}"),
        }
    }

    #[test]
    fn parses_a_put_with_body_and_leaves_the_next_request() {
        let raw =
            b"PUT /drives/a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}GET / HTTP/1.1\r\n";
        let (r, n) = complete(raw);
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), &r.body[..]),
            ("PUT", "/drives/a", &b"{}"[..])
        );
        assert!(r.keep_alive);
        assert_eq!(&raw[n..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn waits_for_the_rest_of_head_and_body() {
        for cut in [5, 30, 48] {
            let raw = b"PUT /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789";
            assert!(matches!(
                parse(&raw[..cut], 100).unwrap(),
                Parsed::Incomplete {
                    expect_continue: false
                }
            ));
        }
    }

    #[test]
    fn expect_continue_only_once_the_head_is_accepted() {
        let raw = b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(
            parse(raw, 100).unwrap(),
            Parsed::Incomplete {
                expect_continue: true
            }
        );
        assert!(matches!(
            parse(raw, 5),
            Err(HttpError::PayloadTooLarge { size: 10, limit: 5 })
        ));
    }

    #[test]
    fn connection_semantics() {
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").0.keep_alive);
        assert!(
            complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(
            !complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .0
                .keep_alive
        );
    }

    #[test]
    fn refuses_bad_framing() {
        let cases: [(&[u8], HttpError); 5] = [
            (
                b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                HttpError::ContentLength,
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                HttpError::ContentLength,
            ),
            (
                b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                HttpError::TransferEncoding,
            ),
            (
                b"PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
                HttpError::ContentLength,
            ),
            (
                b"PUT / HTTP/1.1\r\nContent-Length: 51201\r\n\r\n",
                HttpError::PayloadTooLarge {
                    size: 51201,
                    limit: DEFAULT_MAX_PAYLOAD,
                },
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(parse(raw, DEFAULT_MAX_PAYLOAD).unwrap_err(), want);
        }
        assert!(matches!(
            parse(b"\x00\x01garbage\r\n\r\n", 10),
            Err(HttpError::Malformed(_))
        ));
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(
            parse(huge.as_bytes(), 10).unwrap_err(),
            HttpError::HeadTooLarge
        );
    }

    #[test]
    fn responses_are_framed() {
        let r = Response::no_content().to_bytes(true);
        assert_eq!(
            r,
            b"HTTP/1.1 204 No Content\r\nServer: squib\r\nConnection: keep-alive\r\n\r\n"
        );
        let r =
            String::from_utf8(Response::fault(Status::BadRequest, "no").to_bytes(false)).unwrap();
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(r.ends_with("Content-Length: 22\r\n\r\n{\"fault_message\":\"no\"}"));
    }
}
