//! Where a virtual network interface's frames go: the host side of a VIF.
//!
//! A [`NetBackend`] moves *packets*: a 12-byte virtio-net header (`virtio_net_hdr_v1`, see
//! [`crate::net_offload`]) and then a whole Ethernet frame, which may be a TCP segment of up to
//! 64 KiB or carry a checksum left to finish, as its header says. It never blocks the domain's
//! I/O thread: `send` either queues a packet or fails (the device drops it and counts it, as a
//! NIC with a full or dead link would), `recv` returns `None` when nothing is waiting, and
//! [`NetBackend::raw_fd`] polls readable when `recv` has something.
//!
//! Two kinds exist:
//!
//! - [`TapBackend`]: a host TAP interface (the file comes from `hv::tap::open_tap`, since
//!   opening one needs an ioctl and this crate has no `unsafe`), opened with the same header
//!   (`IFF_VNET_HDR`) and offloads, so the kernel reads and writes packets in this format;
//! - [`SocketBackend`]: a Unix datagram socket bound to a path, exchanging one datagram per
//!   packet with a peer socket at another path. Two `vessel run` processes pointing at each
//!   other's paths form a point-to-point Ethernet link between their guests.
//!
//! The third kind, [`PairBackend`], is the domain's end of a socket pair whose other end is a
//! port of the daemon's virtual switch: a packet per datagram, header included, so offloaded
//! segments cross the switch whole.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

/// The host side of a virtual network interface. See the module documentation.
pub trait NetBackend: Send {
    /// Sends one packet (header and frame). Never blocks: when the backend cannot take it now
    /// (full, or no peer), an error; the caller drops the packet.
    fn send(&mut self, packet: &[u8]) -> io::Result<()>;
    /// Receives one packet (header and frame) into `buf` without blocking; `Ok(None)` when none
    /// is waiting. A packet longer than `buf` is truncated to `buf.len()` bytes (pass one byte
    /// more than the largest packet accepted, to recognise oversized ones).
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>>;
    /// A descriptor that polls readable whenever `recv` has a packet.
    fn raw_fd(&self) -> RawFd;
    /// What this backend is, for messages ("tap tap0").
    fn describe(&self) -> String;
    /// Clears a pending error on the descriptor (a socket's `ECONNRESET` when its peer went
    /// away), which would otherwise keep it polling in error while the device is not reading.
    fn clear_error(&mut self) {}
}

fn nonblocking<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
        Err(e) => Err(e),
    }
}

/// A host TAP interface (`IFF_TAP | IFF_NO_PI`, opened non-blocking).
pub struct TapBackend {
    file: File,
    name: String,
}

impl TapBackend {
    /// Wraps an open, non-blocking TAP `file` whose interface is called `name`.
    pub fn new(file: File, name: String) -> Self {
        TapBackend { file, name }
    }
}

impl NetBackend for TapBackend {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let n = self.file.write(frame)?;
        if n != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to a TAP",
            ));
        }
        Ok(())
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        nonblocking(self.file.read(buf))
    }
    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
    fn describe(&self) -> String {
        format!("tap {}", self.name)
    }
}

/// One end of a point-to-point link over Unix datagram sockets: bound at `path`, sending to and
/// accepting frames only from the socket bound at `peer`. The peer need not exist yet (frames
/// sent meanwhile are dropped, like on an unplugged cable). A path that exists is refused,
/// whatever it is (a stale socket included): Vessel never unlinks a file it did not create.
/// The socket file this end created is removed on drop, if it is still that file.
///
/// The socket connects to the peer on the first send that finds it. Once both ends are
/// connected to each other, the kernel bounds a link by the sender's buffer (about a hundred
/// full-size frames) instead of the receiver's short datagram queue (`net.unix.max_dgram_qlen`,
/// 10 by default), so TCP over the link is not starved by drops. When the peer goes away the
/// kernel disconnects this end (the send fails with `ECONNREFUSED`), and the next send connects
/// to whatever socket is then bound at the peer's path (a restarted peer).
pub struct SocketBackend {
    socket: UnixDatagram,
    path: PathBuf,
    /// Device and inode of the socket file `bind` created, so that drop removes that file and
    /// never one put at the same path since.
    created: Option<(u64, u64)>,
    peer: PathBuf,
    connected: bool,
}

/// The (device, inode) of the socket at `path`, if a socket is there.
fn socket_identity(path: &Path) -> Option<(u64, u64)> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    meta.file_type()
        .is_socket()
        .then(|| (meta.dev(), meta.ino()))
}

impl SocketBackend {
    /// Binds a new socket at `path` and links to `peer`. Give both as absolute paths: the peer
    /// is recognised by the path it bound. If anything exists at `path` (another program's
    /// socket, a stale socket left by a killed Vessel, any other file) the bind is refused
    /// with [`io::ErrorKind::AddrInUse`] and nothing is removed.
    pub fn bind(path: &Path, peer: &Path) -> io::Result<Self> {
        let socket = Self::bind_socket(path)?;
        let created = socket_identity(path);
        let mut backend = Self::on_bound(socket, path, peer)?;
        backend.created = created;
        Ok(backend)
    }

    /// Binds a new datagram socket at `path`, refusing (with [`io::ErrorKind::AddrInUse`],
    /// removing nothing) if anything exists there.
    pub fn bind_socket(path: &Path) -> io::Result<UnixDatagram> {
        UnixDatagram::bind(path).map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "the path exists; Vessel never replaces a file it did not create \
                     (if it is the stale socket of a Vessel that was killed, remove it)",
                )
            } else {
                e
            }
        })
    }

    /// A link on `socket`, already bound at `path` by whoever owns the socket file (which this
    /// backend never removes), to `peer`.
    pub fn on_bound(socket: UnixDatagram, path: &Path, peer: &Path) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(SocketBackend {
            socket,
            path: path.to_path_buf(),
            created: None,
            peer: peer.to_path_buf(),
            connected: false,
        })
    }
}

impl NetBackend for SocketBackend {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        if !self.connected {
            self.connected = self.socket.connect(&self.peer).is_ok();
        }
        let sent = if self.connected {
            self.socket.send(frame)
        } else {
            self.socket.send_to(frame, &self.peer)
        };
        if let Err(e) = &sent {
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotConnected
            ) {
                // The peer is gone and the kernel disconnected us: reconnect on the next send.
                self.connected = false;
            }
        }
        sent.map(|_| ())
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            let Some((n, from)) = nonblocking(self.socket.recv_from(buf))? else {
                return Ok(None);
            };
            // Anyone who can reach the path could send; only the peer's frames are taken.
            if from.as_pathname() == Some(self.peer.as_path()) {
                return Ok(Some(n));
            }
        }
    }
    fn raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
    fn describe(&self) -> String {
        format!("socket {} <-> {}", self.path.display(), self.peer.display())
    }
    fn clear_error(&mut self) {
        let _ = self.socket.take_error();
    }
}

impl Drop for SocketBackend {
    fn drop(&mut self) {
        // Only the file bind created: if something else was put at the path since, it stays.
        if self.created.is_some() && socket_identity(&self.path) == self.created {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// One end of a connected datagram socket pair whose other end belongs to someone who relays
/// frames (the daemon's switch): a frame per datagram. The kernel's socket buffers are the
/// queues both ways; a full buffer makes `send` fail with `WouldBlock` (the device holds the
/// frame until the socket polls writable); `recv` never blocks. When the other end goes away,
/// sends fail with `ECONNREFUSED` or `ENOTCONN`.
#[derive(Debug)]
pub struct PairBackend {
    socket: UnixDatagram,
    name: String,
}

impl PairBackend {
    /// Wraps `socket` (set non-blocking here), known as `name` (a switch port's name).
    pub fn new(socket: UnixDatagram, name: &str) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(PairBackend {
            socket,
            name: name.to_string(),
        })
    }
}

impl NetBackend for PairBackend {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.socket.send(frame).map(|_| ())
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        nonblocking(self.socket.recv(buf))
    }
    fn raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
    fn describe(&self) -> String {
        format!("switch port {}", self.name)
    }
    fn clear_error(&mut self) {
        let _ = self.socket.take_error();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("vessel-net-{}-{name}", std::process::id()))
    }

    #[test]
    fn two_sockets_form_a_link_and_strangers_are_ignored() {
        let (pa, pb, ps) = (tmp("a"), tmp("b"), tmp("s"));
        let mut a = SocketBackend::bind(&pa, &pb).unwrap();
        // The peer does not exist yet: the frame is refused, not queued.
        assert!(a.send(b"early").is_err());
        let mut b = SocketBackend::bind(&pb, &pa).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(b.recv(&mut buf).unwrap(), None);
        a.send(b"frame-one").unwrap();
        assert_eq!(b.recv(&mut buf).unwrap(), Some(9));
        assert_eq!(&buf[..9], b"frame-one");
        b.send(b"back").unwrap();
        assert_eq!(a.recv(&mut buf).unwrap(), Some(4));
        // Both ends are now connected to each other: a burst beyond the receiver's datagram
        // queue (net.unix.max_dgram_qlen, 10 by default) still gets through.
        for i in 0..50u8 {
            a.send(&[i; 1514]).unwrap();
        }
        for i in 0..50u8 {
            assert_eq!(
                b.recv(&mut buf).unwrap(),
                Some(64),
                "truncated to the buffer"
            );
            assert_eq!(buf[0], i);
        }
        let stranger = UnixDatagram::bind(&ps).unwrap();
        let _ = stranger.send_to(b"injected", &pb);
        assert_eq!(b.recv(&mut buf).unwrap(), None);
        // The peer restarts: the first send notices, the next reaches the new peer.
        drop(a);
        assert!(!pa.exists(), "the socket file goes away on drop");
        let _stale = UnixDatagram::bind(&pa).unwrap();
        assert!(b.send(b"to-the-stale-one").is_ok() || b.send(b"again").is_ok());
        drop(_stale);
        // A stale socket file is refused and left in place; once it is removed, the bind works.
        let err = SocketBackend::bind(&pa, &pb)
            .err()
            .expect("a stale socket is refused");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("never replaces"), "{err}");
        assert!(pa.exists(), "the stale socket is not removed");
        std::fs::remove_file(&pa).unwrap();
        let mut a = SocketBackend::bind(&pa, &pb).unwrap();
        assert!(a.describe().contains("<->"));
        let mut delivered = false;
        for _ in 0..3 {
            if b.send(b"hello-again").is_ok() {
                delivered = true;
                break;
            }
        }
        assert!(delivered);
        let mut got = None;
        while let Some(n) = a.recv(&mut buf).unwrap() {
            got = Some(buf[..n].to_vec());
        }
        assert_eq!(got.as_deref(), Some(&b"hello-again"[..]));
        drop(stranger);
        let _ = std::fs::remove_file(&ps);
    }

    #[test]
    fn a_regular_file_is_never_replaced() {
        let p = tmp("regular");
        std::fs::write(&p, b"keep me").unwrap();
        assert!(SocketBackend::bind(&p, &tmp("nobody")).is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"keep me");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_live_socket_is_never_replaced_and_drop_removes_only_its_own_file() {
        // Another program's listening socket at the path: refused, and it keeps working.
        let p = tmp("live");
        let listener = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let err = SocketBackend::bind(&p, &tmp("nobody2")).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(std::os::unix::net::UnixStream::connect(&p).is_ok());
        drop(listener);
        std::fs::remove_file(&p).unwrap();
        // Something put at the path after the bind (the file unlinked and replaced) is left
        // alone when the backend goes.
        let ours = SocketBackend::bind(&p, &tmp("nobody2")).unwrap();
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, b"someone else's").unwrap();
        drop(ours);
        assert_eq!(std::fs::read(&p).unwrap(), b"someone else's");
        std::fs::remove_file(&p).unwrap();
    }
}
