//! The domain's side of a switch port: a [`NetBackend`] for its virtio-net device over the
//! domain's end of the port's Unix datagram socket pair (the switch thread owns the other end).
//!
//! The kernel's socket buffers are the port's bounded queues in both directions. A `send` that
//! finds the domain's buffer full fails with `WouldBlock`, so the device holds the frame until
//! the socket polls writable; `recv` never blocks; [`NetBackend::raw_fd`] polls readable when
//! the switch has delivered a frame. When the switch removes the port or shuts down, sends fail
//! with `ECONNREFUSED` or `ENOTCONN` (the device drops and counts them).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;

use devices::net_backend::NetBackend;

/// A switch port as a VIF backend. Made by `SwitchHandle::add_port`.
#[derive(Debug)]
pub struct SwitchPortBackend {
    socket: UnixDatagram,
    name: String,
}

impl SwitchPortBackend {
    /// Wraps the domain's end of a port's socket pair (set non-blocking here).
    pub(crate) fn new(socket: UnixDatagram, name: &str) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(SwitchPortBackend {
            socket,
            name: name.to_string(),
        })
    }

    /// The port's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The socket itself (non-blocking), for users other than a virtio device.
    pub fn into_socket(self) -> UnixDatagram {
        self.socket
    }
}

impl NetBackend for SwitchPortBackend {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        // EAGAIN is io::ErrorKind::WouldBlock: the device holds the frame. A datagram is sent
        // whole or not at all.
        self.socket.send(frame).map(|_| ())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.socket.recv(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
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

impl AsRawFd for SwitchPortBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_maps_a_full_buffer_to_would_block_and_recv_never_blocks() {
        let (ours, theirs) = UnixDatagram::pair().unwrap();
        let mut port = SwitchPortBackend::new(ours, "p0").unwrap();
        assert_eq!(port.describe(), "switch port p0");
        assert_eq!(port.raw_fd(), port.as_raw_fd());
        let mut buf = [0u8; 64];
        assert_eq!(port.recv(&mut buf).unwrap(), None);
        theirs.send(b"hello").unwrap();
        assert_eq!(port.recv(&mut buf).unwrap(), Some(5));
        // Nobody reads the other end: the buffer fills and send says WouldBlock.
        let frame = [0u8; 1514];
        let mut sent = 0;
        let err = loop {
            match port.send(&frame) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 100_000, "the buffer never filled");
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(sent > 10);
        // The other end goes away: sends fail with something other than WouldBlock.
        drop(theirs);
        let err = port.send(&frame).unwrap_err();
        assert_ne!(err.kind(), io::ErrorKind::WouldBlock);
        port.clear_error();
        assert_eq!(port.recv(&mut buf).unwrap(), None);
        let _ = port.into_socket();
    }
}
