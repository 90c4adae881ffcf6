//! Fuzzes the daemon API's HTTP request parser (`vessel::http::read_request`) as a hostile
//! client drives it: any bytes on a keep-alive connection, read through a buffer of any size,
//! on a connection whose time may run out part-way (the daemon's reader then fails with
//! `TimedOut`). Every request it parses must respect the server's bounds (head, headers, body)
//! and be what the bytes said: serialized again, it parses to the same request. Errors carry
//! one of the statuses the parser promises, 408 only when the time ran out. A flag also runs
//! the CLI's response-head reader on the bytes.
//!
//! Input layout: byte 0, bits 0-6: the read buffer's capacity (0: the default), bit 7: parse a
//! response head instead; byte 1: the connection's time runs out after that many times 16
//! bytes (0: never); the rest: the bytes on the connection.
#![no_main]

use std::io::{self, BufReader, Read};

use libfuzzer_sys::fuzz_target;
use vessel::http::{read_request, read_response_head, Request, MAX_BODY, MAX_HEAD, MAX_HEADERS};

/// Most requests read from one connection.
const MAX_REQUESTS: usize = 8;

/// A connection whose bytes are `data` and whose time runs out (reads fail with `TimedOut`, as
/// the daemon's deadline makes them) once `budget` bytes have been read.
struct Connection<'a> {
    data: &'a [u8],
    budget: Option<usize>,
    timed_out: bool,
}

impl Read for Connection<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.budget {
            Some(0) if !self.data.is_empty() => {
                self.timed_out = true;
                return Err(io::ErrorKind::TimedOut.into());
            }
            Some(left) => buf.len().min(left),
            None => buf.len(),
        };
        let n = self.data.read(&mut buf[..n])?;
        if let Some(left) = &mut self.budget {
            *left -= n;
        }
        Ok(n)
    }
}

/// What the parser promises about a request it returns.
fn check(req: &Request) {
    assert!(!req.method.is_empty());
    assert!(req.method.bytes().all(|b| b.is_ascii_uppercase()));
    assert!(req.path.starts_with('/'));
    assert!(!req.path.contains(['?', ' ', '\n']));
    assert!(!req.query.contains([' ', '\n']));
    assert!(req.headers.len() <= MAX_HEADERS);
    let mut head = req.method.len() + req.path.len() + req.query.len();
    for (name, value) in &req.headers {
        assert!(!name.is_empty());
        assert!(!name.contains(|c: char| c.is_whitespace() || c == ':'));
        assert_eq!(*name, name.to_ascii_lowercase());
        assert_eq!(value.trim(), value);
        assert!(!value.contains('\n'));
        head += name.len() + value.len();
    }
    assert!(head <= MAX_HEAD);
    assert!(req.body.len() <= MAX_BODY);
    let declared = req.header("content-length").map_or(0, |v| {
        v.parse::<usize>().expect("a Content-Length that parsed")
    });
    assert_eq!(req.body.len(), declared);
    assert!(req.header("transfer-encoding").is_none());
}

/// The request as a client would send it.
fn serialize(req: &Request) -> (Vec<u8>, usize) {
    let mut head = format!("{} {}", req.method, req.path);
    if !req.query.is_empty() {
        head.push('?');
        head.push_str(&req.query);
    }
    head.push_str(" HTTP/1.1\r\n");
    for (name, value) in &req.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let head_len = head.len();
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&req.body);
    (bytes, head_len)
}

fn round_trip(req: &Request) {
    let (bytes, head_len) = serialize(req);
    match read_request(&mut BufReader::new(&bytes[..])) {
        Ok(Some(again)) => {
            assert!(head_len <= MAX_HEAD);
            assert_eq!(again.method, req.method);
            assert_eq!(again.path, req.path);
            assert_eq!(again.query, req.query);
            assert_eq!(again.headers, req.headers);
            assert_eq!(again.body, req.body);
        }
        // Lines ending in a bare LF grew by a CR each: the same head may now be too large.
        Err(e) => assert!(e.status == 431 && head_len > MAX_HEAD, "{}", e.message),
        Ok(None) => panic!("a serialized request read as a closed connection"),
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, deadline, ..] = data else {
        return;
    };
    let capacity = match usize::from(flags & 0x7f) {
        0 => 8 * 1024,
        n => n,
    };
    let mut reader = BufReader::with_capacity(
        capacity,
        Connection {
            data: &data[2..],
            budget: (*deadline != 0).then(|| usize::from(*deadline) * 16),
            timed_out: false,
        },
    );
    if flags & 0x80 != 0 {
        let _ = read_response_head(&mut reader);
        return;
    }
    for _ in 0..MAX_REQUESTS {
        match read_request(&mut reader) {
            Ok(Some(req)) => {
                check(&req);
                round_trip(&req);
            }
            Ok(None) => break,
            Err(e) => {
                assert!(
                    matches!(e.status, 400 | 408 | 411 | 413 | 431 | 505),
                    "status {}: {}",
                    e.status,
                    e.message
                );
                assert_eq!(
                    e.status == 408,
                    reader.get_ref().timed_out,
                    "408 exactly when the time ran out: {}",
                    e.message
                );
                break;
            }
        }
    }
});
