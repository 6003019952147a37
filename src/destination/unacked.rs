//! How many bytes written to a TCP socket its peer has not yet acknowledged: Linux's `SIOCOUTQ`.
//!
//! The writer keeps every line until the destination's kernel acknowledged it, so that a path that black-holes or a
//! host that dies loses nothing the relay still could resend (see [`super::in_flight`]). `SIOCOUTQ` (the same
//! request as `TIOCOUTQ`) answers `write_seq - snd_una`: bytes written, sent or not, that the peer has not
//! acknowledged. `TCP_INFO`'s `tcpi_bytes_acked` would give the same through a 200-byte struct; socket2, rustix and
//! nix expose neither, so this is one `ioctl`.
//!
//! Why `unsafe` is sound here: the only unsafe operation is that `ioctl`, on a descriptor borrowed for the duration
//! of the call (so it is open and is the socket the caller holds), with a pointer to a live, aligned `c_int` that
//! the kernel fills for this request and nothing else. Invariant: nothing else in this module is unsafe.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// `SIOCOUTQ` from `linux/sockios.h`, which defines it as `TIOCOUTQ`.
#[cfg(target_os = "linux")]
const SIOCOUTQ: libc::Ioctl = libc::TIOCOUTQ;

/// Bytes written to the TCP socket `socket` that its peer has not acknowledged yet (queued or in flight).
///
/// Elsewhere than Linux this is always 0: every byte the kernel took counts as delivered, as plaintext relays
/// usually assume.
///
/// # Errors
///
/// The `ioctl`'s error, e.g. `EINVAL` on a listening socket.
#[cfg(target_os = "linux")]
pub fn unacked_bytes(socket: &impl AsFd) -> io::Result<usize> {
    let fd = socket.as_fd();
    let mut n_bytes: libc::c_int = 0;
    // SAFETY: see the module doc: `fd` is borrowed and open for the call, `n_bytes` is a live `c_int`, which is
    // what `SIOCOUTQ` writes.
    let result = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCOUTQ, &mut n_bytes as *mut libc::c_int) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n_bytes).unwrap_or(0))
}

/// Bytes written to `socket` that its peer has not acknowledged: unknown here, so 0.
///
/// # Errors
///
/// None on this platform.
#[cfg(not(target_os = "linux"))]
pub fn unacked_bytes(_socket: &impl AsFd) -> io::Result<usize> {
    Ok(0)
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, IoSlice, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn bytes_the_peer_has_not_taken_are_unacknowledged_until_it_reads_them() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        assert_eq!(unacked_bytes(&client).unwrap(), 0);

        // Fill the peer's receive buffer and then our send buffer, counting what was taken (`write_vectored` rather than
        // the banned `write`): what the send buffer holds is unacknowledged.
        client.set_nonblocking(true).unwrap();
        let chunk = [b'x'; 64 * 1024];
        let mut n_written = 0;
        loop {
            match client.write_vectored(&[IoSlice::new(&chunk)]) {
                Ok(n) => n_written += n,
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) => panic!("write: {err}"),
            }
        }
        assert!(unacked_bytes(&client).unwrap() > 0);

        let mut buf = vec![0u8; n_written];
        server.read_exact(&mut buf).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while unacked_bytes(&client).unwrap() > 0 {
            assert!(Instant::now() < deadline, "the peer's ACKs never came");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            unacked_bytes(&listener).unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
    }
}
