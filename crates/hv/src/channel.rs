//! The private channel between the control plane and a domain process: a Unix
//! `SOCK_SEQPACKET` socket, so each message arrives whole and alone, with the descriptors sent
//! with it (`SCM_RIGHTS`). A domain process listens on a socket the daemon bound for it (so a
//! restarted daemon can connect again); the daemon connects.
//!
//! Messages are bounded ([`MAX_MESSAGE`] bytes, [`MAX_FDS`] descriptors); a longer one is
//! refused on send and reported as an error (never truncated silently) on receive.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use nix::cmsg_space;
use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr,
};

/// Largest message, in bytes.
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Most descriptors in one message.
pub const MAX_FDS: usize = 64;

fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn seqpacket() -> io::Result<OwnedFd> {
    socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(errno)
}

/// One end of a channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(errno)?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// Connects to the listener bound at `path`.
    pub fn connect(path: &Path) -> io::Result<Channel> {
        let fd = seqpacket()?;
        let addr = UnixAddr::new(path).map_err(errno)?;
        socket::connect(fd.as_raw_fd(), &addr).map_err(errno)?;
        Ok(Channel { fd })
    }

    /// A channel on a descriptor that is one (handed over at process start).
    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel { fd }
    }

    /// A second handle on the same socket (one thread reads, another writes).
    pub fn try_clone(&self) -> io::Result<Channel> {
        Ok(Channel {
            fd: self.fd.try_clone()?,
        })
    }

    /// Sends one message with `fds`.
    pub fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if bytes.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "message of {} bytes and {} descriptors is over the channel's bounds",
                    bytes.len(),
                    fds.len()
                ),
            ));
        }
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let iov = [IoSlice::new(bytes)];
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
        loop {
            match socket::sendmsg::<()>(
                self.fd.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => {
                    return Err(io::Error::other(format!(
                        "short send on a channel: {n} of {} bytes",
                        bytes.len()
                    )))
                }
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(errno(e)),
            }
        }
    }

    /// Receives one message and its descriptors; `Ok(None)` when the other end closed.
    pub fn recv(&self) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
        // The next message's length first (MSG_PEEK | MSG_TRUNC reports it whole), so the
        // buffer is the message's size: a large buffer per message would keep the allocator's
        // memory high in a daemon with many domains.
        let len = loop {
            let mut probe = [0u8; 1];
            let mut iov = [IoSliceMut::new(&mut probe)];
            match socket::recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                None,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
            ) {
                Ok(msg) => break msg.bytes,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(errno(e)),
            }
        };
        let mut buf = vec![0u8; len.clamp(1, MAX_MESSAGE + 1)];
        let mut space = cmsg_space!([RawFd; MAX_FDS]);
        loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match socket::recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => msg,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(errno(e)),
            };
            let mut fds = Vec::new();
            for c in msg.cmsgs().map_err(errno)? {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for fd in raw {
                        // SAFETY: the kernel just installed `fd` in this process for us
                        // (SCM_RIGHTS); nothing else owns it, so taking ownership is sound.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
            let truncated = msg
                .flags
                .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
            let n = msg.bytes;
            if truncated || n > MAX_MESSAGE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a channel message was over the channel's bounds",
                ));
            }
            if n == 0 && fds.is_empty() {
                return Ok(None);
            }
            buf.truncate(n);
            return Ok(Some((buf, fds)));
        }
    }

    /// Bounds how long [`Channel::recv`] waits (`None`: forever); a timeout is `WouldBlock`.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let tv = match timeout {
            None => nix::sys::time::TimeVal::new(0, 0),
            Some(t) => nix::sys::time::TimeVal::new(
                t.as_secs().min(i64::MAX as u64) as i64,
                i64::from(t.subsec_micros()).max(if t.is_zero() { 1 } else { 0 }),
            ),
        };
        socket::setsockopt(&self.fd, socket::sockopt::ReceiveTimeout, &tv).map_err(errno)
    }

    /// Shuts both directions down: a thread blocked in [`Channel::recv`] returns.
    pub fn shutdown(&self) {
        let _ = socket::shutdown(self.fd.as_raw_fd(), socket::Shutdown::Both);
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A listening channel socket bound at a path (mode 0600).
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
}

impl Listener {
    /// Binds and listens at `path`, which must not exist; the socket file is made mode 0600
    /// before it accepts anything.
    pub fn bind(path: &Path) -> io::Result<Listener> {
        let fd = seqpacket()?;
        let addr = UnixAddr::new(path).map_err(errno)?;
        socket::bind(fd.as_raw_fd(), &addr).map_err(errno)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        socket::listen(&fd, socket::Backlog::new(4).map_err(errno)?).map_err(errno)?;
        Ok(Listener { fd })
    }

    /// A listener on a descriptor that is one (handed over at process start).
    pub fn from_fd(fd: OwnedFd) -> Listener {
        Listener { fd }
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> io::Result<Channel> {
        loop {
            match socket::accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 returned a new descriptor that nothing else owns.
                Ok(fd) => return Ok(Channel::from_fd(unsafe { OwnedFd::from_raw_fd(fd) })),
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(errno(e)),
            }
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_arrive_whole_with_their_descriptors() {
        let (a, b) = Channel::pair().unwrap();
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        a.send(b"first", &[file.as_fd()]).unwrap();
        a.send(b"second", &[]).unwrap();
        let (m1, fds1) = b.recv().unwrap().unwrap();
        assert_eq!((m1.as_slice(), fds1.len()), (&b"first"[..], 1));
        let (m2, fds2) = b.recv().unwrap().unwrap();
        assert_eq!((m2.as_slice(), fds2.len()), (&b"second"[..], 0));
        let big = vec![7u8; MAX_MESSAGE + 1];
        assert!(a.send(&big, &[]).is_err());
        drop(a);
        assert!(b.recv().unwrap().is_none(), "a closed end reads as None");
    }

    #[test]
    fn a_listener_accepts_again_after_a_client_leaves() {
        let dir = std::env::temp_dir().join(format!("hv-chan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.sock");
        let _ = std::fs::remove_file(&path);
        let l = Listener::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        for round in 0..2u8 {
            let c = Channel::connect(&path).unwrap();
            let s = l.accept().unwrap();
            c.send(&[round], &[]).unwrap();
            assert_eq!(s.recv().unwrap().unwrap().0, vec![round]);
            drop(c);
            assert!(s.recv().unwrap().is_none());
        }
        s_timeout(&l, &path);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn s_timeout(l: &Listener, path: &Path) {
        let c = Channel::connect(path).unwrap();
        let s = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let err = s.recv().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(c);
    }
}
