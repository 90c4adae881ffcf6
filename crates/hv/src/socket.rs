//! Socket options the safe crates need and the standard library does not offer.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// Sets `socket`'s send buffer (`SO_SNDBUF`) to `bytes`; Linux doubles the figure for its
/// bookkeeping. For a Unix datagram socket pair this bounds the frames queued towards the peer,
/// so a sender that keeps it small keeps its backlog (and the choice of what goes next) to
/// itself. A datagram larger than the buffer can never be sent: keep it above the largest.
pub fn set_send_buffer(socket: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    let fd: RawFd = socket.as_raw_fd();
    let value = libc::c_int::try_from(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "send buffer too large"))?;
    // SAFETY: passes a pointer to a live c_int and its exact size; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
