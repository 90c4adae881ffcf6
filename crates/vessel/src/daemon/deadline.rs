//! A connection's socket with a deadline: each read or write waits at most until the deadline
//! (the socket's timeout is set to the time left before every call), then fails with
//! `TimedOut`. A per-read timeout alone lets a client that sends one byte now and then hold its
//! connection for ever; a deadline bounds the whole exchange, however the bytes trickle in.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// A stream socket whose reads and writes can be given timeouts: the API's Unix socket and the
/// metrics listener's TCP.
pub trait TimedSocket: Read + Write {
    /// As the standard library's `set_read_timeout` of each socket type.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// As the standard library's `set_write_timeout` of each socket type.
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl TimedSocket for UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_write_timeout(self, timeout)
    }
}

impl TimedSocket for TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, timeout)
    }
}

/// A stream socket (a Unix one unless said otherwise) whose reads and writes fail once its
/// deadline has passed.
pub struct DeadlineStream<S: TimedSocket = UnixStream> {
    stream: S,
    deadline: Option<Instant>,
}

impl<S: TimedSocket> DeadlineStream<S> {
    /// `stream`, with no deadline yet.
    pub fn new(stream: S) -> DeadlineStream<S> {
        DeadlineStream {
            stream,
            deadline: None,
        }
    }

    /// From now on, reads and writes fail once `at` has passed (`None`: they may wait for ever).
    pub fn set_deadline(&mut self, at: Option<Instant>) {
        self.deadline = at;
    }

    /// The stream itself (to shut it down).
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The time left before the deadline, as a socket timeout (`None`: no deadline), or
    /// `TimedOut` if it has passed.
    fn time_left(&self) -> io::Result<Option<Duration>> {
        match self.deadline {
            None => Ok(None),
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    Err(timed_out())
                } else {
                    Ok(Some(left))
                }
            }
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the connection's time limit passed",
    )
}

/// A socket timeout shows as `WouldBlock` (EAGAIN): report it as what it is.
fn as_timeout(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        timed_out()
    } else {
        e
    }
}

impl<S: TimedSocket> Read for DeadlineStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(self.time_left()?)?;
        self.stream.read(buf).map_err(as_timeout)
    }
}

impl<S: TimedSocket> Write for DeadlineStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(self.time_left()?)?;
        self.stream.write(buf).map_err(as_timeout)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trickling_peer_is_cut_off_at_the_deadline_not_after_each_byte() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut s = DeadlineStream::new(ours);
        let started = Instant::now();
        s.set_deadline(Some(started + Duration::from_millis(300)));
        let trickle = std::thread::spawn(move || {
            // One byte every 50 ms for a second: each read would succeed on its own.
            for _ in 0..20 {
                if theirs.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let mut got = 0;
        let mut buf = [0u8; 16];
        let err = loop {
            match s.read(&mut buf) {
                Ok(0) => panic!("the peer closed"),
                Ok(n) => got += n,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(900),
            "cut off after {elapsed:?}"
        );
        assert!(got >= 1, "the bytes before the deadline were read");
        s.set_deadline(None);
        drop(s);
        trickle.join().unwrap();
    }
}
