//! The small HTTP/1.1 subset the daemon's API speaks over its Unix socket, both sides.
//!
//! Requests are bounded before anything is parsed: at most [`MAX_HEAD`] bytes of request line
//! and headers, [`MAX_HEADERS`] headers, and a `Content-Length` body of at most [`MAX_BODY`]
//! bytes (chunked bodies are refused). Anything outside that is an [`HttpError`] carrying the
//! status to answer with; nothing a client sends can make the server panic or allocate without
//! bound.

use std::io::{self, BufRead, Read, Write};

/// Most bytes of request line and headers.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers.
pub const MAX_HEADERS: usize = 64;
/// Largest request body.
pub const MAX_BODY: usize = 1 << 20;

/// One request.
#[derive(Debug, Default)]
pub struct Request {
    /// `GET`, `POST`...
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The query string (after `?`), possibly empty.
    pub query: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of query parameter `key`.
    pub fn query_param(&self, key: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// Whether the client wants the connection closed after this exchange.
    pub fn wants_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// A request that cannot be served, with the status to answer.
#[derive(Debug)]
pub struct HttpError {
    /// The HTTP status.
    pub status: u16,
    /// Why.
    pub message: String,
}

fn bad(status: u16, message: impl Into<String>) -> HttpError {
    HttpError {
        status,
        message: message.into(),
    }
}

/// The answer to a read that failed: 408 when the connection's time ran out (the caller gives
/// its reader a deadline), 400 otherwise.
fn read_failed(e: std::io::Error, what: &str) -> HttpError {
    if matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    ) {
        bad(408, "the request did not arrive whole in time")
    } else {
        bad(400, format!("{what}: {e}"))
    }
}

/// Reads one line of the head (CRLF or LF), counting it against `budget`.
fn read_line(r: &mut impl BufRead, budget: &mut usize) -> Result<Option<String>, HttpError> {
    let mut line = Vec::new();
    let limit = (*budget as u64) + 1;
    let n = r
        .take(limit)
        .read_until(b'\n', &mut line)
        .map_err(|e| read_failed(e, "reading the request"))?;
    if n == 0 {
        return Ok(None);
    }
    if n > *budget || !line.ends_with(b"\n") {
        if n > *budget {
            return Err(bad(431, "request head too large"));
        }
        return Err(bad(400, "the request ended in the middle of its head"));
    }
    *budget -= n;
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| bad(400, "the request head is not UTF-8"))
}

/// Reads one request; `Ok(None)` when the client closed the connection between requests.
pub fn read_request(r: &mut impl BufRead) -> Result<Option<Request>, HttpError> {
    let mut budget = MAX_HEAD;
    let Some(line) = read_line(r, &mut budget)? else {
        return Ok(None);
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(400, "malformed request line"));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(bad(505, format!("unsupported version {version}")));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad(400, "malformed method"));
    }
    if !target.starts_with('/') {
        return Err(bad(400, "the request target must be a path"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut req = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        ..Request::default()
    };
    loop {
        let line = read_line(r, &mut budget)?
            .ok_or_else(|| bad(400, "the request ended in the middle of its head"))?;
        if line.is_empty() {
            break;
        }
        if req.headers.len() == MAX_HEADERS {
            return Err(bad(431, "too many headers"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(400, format!("malformed header '{line}'")))?;
        if name.is_empty() || name.contains(|c: char| c.is_whitespace()) {
            return Err(bad(400, "malformed header name"));
        }
        req.headers
            .push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    if req.header("transfer-encoding").is_some() {
        return Err(bad(411, "send the body with Content-Length"));
    }
    let length = match req.header("content-length") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| bad(400, "malformed Content-Length"))?,
    };
    if length > MAX_BODY {
        return Err(bad(
            413,
            format!("the body is larger than {MAX_BODY} bytes"),
        ));
    }
    req.body = vec![0; length];
    r.read_exact(&mut req.body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => bad(400, "the body is shorter than its Content-Length"),
        _ => read_failed(e, "reading the body"),
    })?;
    Ok(Some(req))
}

/// One response.
#[derive(Debug)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// Its media type.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            body,
        }
    }

    /// An error: `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": message }))
    }

    /// A plain-text response.
    pub fn text(status: u16, content_type: &'static str, body: String) -> Response {
        Response {
            status,
            content_type,
            body: body.into_bytes(),
        }
    }
}

/// The reason phrase of the statuses the API uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Writes `resp`; `close` adds `Connection: close`.
pub fn write_response(w: &mut impl Write, resp: &Response, close: bool) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.write_all(&resp.body)?;
    w.flush()
}

/// The client side: sends one request with `Connection: close` and reads the status and body.
pub fn call(
    stream: &mut (impl Read + Write),
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> io::Result<(u16, Vec<u8>)> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: vessel\r\nConnection: close\r\n");
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if let Some(body) = body {
        stream.write_all(body)?;
    }
    stream.flush()?;
    let mut reader = io::BufReader::new(stream);
    let (status, length) = read_response_head(&mut reader)?;
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body)?;
        }
        None => {
            reader.read_to_end(&mut body)?;
        }
    }
    Ok((status, body))
}

/// Reads a response's status line and headers; returns the status and Content-Length.
pub fn read_response_head(r: &mut impl BufRead) -> io::Result<(u16, Option<usize>)> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut budget = MAX_HEAD;
    let line = read_line(r, &mut budget)
        .map_err(|e| invalid(&e.message))?
        .ok_or_else(|| invalid("the daemon closed the connection without answering"))?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("malformed status line"))?;
    let mut length = None;
    loop {
        let line = read_line(r, &mut budget)
            .map_err(|e| invalid(&e.message))?
            .ok_or_else(|| invalid("truncated response head"))?;
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok();
            }
        }
    }
    Ok((status, length))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Option<Request>, HttpError> {
        read_request(&mut io::BufReader::new(raw))
    }

    #[test]
    fn a_request_with_query_headers_and_body_parses() {
        let req = parse(
            b"POST /v1/domains?start=false HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("POST", "/v1/domains")
        );
        assert_eq!(req.query_param("start"), Some("false"));
        assert_eq!(req.header("host"), Some("x"));
        assert_eq!(req.body, b"{}");
        assert!(parse(b"").unwrap().is_none(), "a clean close");
    }

    #[test]
    fn hostile_requests_get_statuses_not_panics() {
        let huge_head = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (b"GET /\r\n\r\n".to_vec(), 400),
            (b"GET / HTTP/2.0\r\n\r\n".to_vec(), 505),
            (b"get / HTTP/1.1\r\n\r\n".to_vec(), 400),
            (b"GET x HTTP/1.1\r\n\r\n".to_vec(), 400),
            (b"GET / HTTP/1.1\r\nnocolon\r\n\r\n".to_vec(), 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec(), 400),
            (
                b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec(),
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n".to_vec(),
                413,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}".to_vec(),
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                411,
            ),
            (b"GET /\xff HTTP/1.1\r\n\r\n".to_vec(), 400),
            (huge_head.into_bytes(), 431),
            (many.into_bytes(), 431),
        ];
        for (raw, status) in cases {
            let err = parse(&raw).unwrap_err();
            assert_eq!(
                err.status,
                status,
                "{:?}: {}",
                String::from_utf8_lossy(&raw),
                err.message
            );
        }
    }

    /// A reader whose time ran out (a deadline, see `daemon::deadline`) gets 408, in the head
    /// or in the body.
    #[test]
    fn a_request_that_runs_out_of_time_gets_408() {
        struct Slow<'a>(&'a [u8]);
        impl Read for Slow<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                let n = buf.len().min(self.0.len()).min(3);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        for partial in [
            &b"GET /v1/ver"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\n{}",
        ] {
            let err = read_request(&mut io::BufReader::new(Slow(partial))).unwrap_err();
            assert_eq!(err.status, 408, "{}", err.message);
        }
        assert_eq!(reason(408), "Request Timeout");
    }

    #[test]
    fn a_response_round_trips_through_the_client_reader() {
        let mut out = Vec::new();
        write_response(&mut out, &Response::error(409, "busy"), true).unwrap();
        let mut r = io::BufReader::new(&out[..]);
        let (status, len) = read_response_head(&mut r).unwrap();
        assert_eq!(status, 409);
        let mut body = vec![0; len.unwrap()];
        r.read_exact(&mut body).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "busy");
    }
}
