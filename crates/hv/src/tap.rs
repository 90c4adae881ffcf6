//! TAP devices: a host network interface whose frames a process reads and writes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// Longest interface name Linux accepts (`IFNAMSIZ` - 1).
pub const IFNAME_MAX: usize = 15;

/// `struct ifreq` as TUNSETIFF reads and writes it: the name, the flags, padding to 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Size of the virtio-net header (`virtio_net_hdr_v1`) before each frame on a TAP opened here.
pub const VNET_HDR_LEN: usize = 12;

/// The offloads a TAP opened here takes from its reader: checksums left to finish and TCP
/// segmentation offload for IPv4 and IPv6, with ECN (`TUNSETOFFLOAD`). The kernel may then
/// hand the reader segments of up to 64 KiB with a partial checksum, described by their
/// header, and takes the same from it.
const OFFLOADS: libc::c_uint =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;

/// Opens (creating it if it does not exist) the TAP interface `name`, non-blocking, without
/// packet information and with the virtio-net header (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`,
/// [`VNET_HDR_LEN`] bytes) and the offloads in [`OFFLOADS`]. One read or write is one packet:
/// the header, then the Ethernet frame. Returns the file and the interface's name as the
/// kernel reports it. A TAP created here is not persistent: it disappears when the file is
/// closed.
pub fn open_tap(name: &str) -> io::Result<(File, String)> {
    if name.is_empty() || name.len() > IFNAME_MAX || name.bytes().any(|b| b == 0 || b == b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{name}' is not a valid interface name (1 to {IFNAME_MAX} bytes, no '/')"),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `file` is an open /dev/net/tun descriptor and `req` is a live, fully initialised
    // struct of the size TUNSETIFF reads and writes (struct ifreq, 40 bytes on x86-64).
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let header_len = VNET_HDR_LEN as libc::c_int;
    // SAFETY: `file` is a TAP just attached above; TUNSETVNETHDRSZ reads one int through the
    // pointer, which points at a live local.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETVNETHDRSZ,
            &header_len as *const libc::c_int,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; TUNSETOFFLOAD takes its flags as the argument itself (no pointer).
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(OFFLOADS),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = req.name.iter().position(|&b| b == 0).unwrap_or(16);
    let actual = String::from_utf8_lossy(&req.name[..len]).into_owned();
    Ok((file, actual))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        for bad in ["", "a-name-that-is-too-long", "a/b"] {
            let e = open_tap(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
    }
}

#[cfg(test)]
mod host_tests {
    use super::*;
    use std::io::Read;

    /// Needs root and /dev/net/tun; skipped (passes) where the host has neither.
    #[test]
    fn a_tap_is_created_by_name_and_reads_do_not_block() {
        let Ok((mut file, name)) = open_tap("vsltest0") else {
            eprintln!("no TAP support here; skipped");
            return;
        };
        assert_eq!(name, "vsltest0");
        let mut buf = [0u8; 2048];
        let e = file.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }
}
