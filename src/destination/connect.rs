//! Connecting to a destination: resolve its name, connect, and set the socket options that let the writer notice a
//! dead destination in seconds.
//!
//! The name is resolved on every connect, so a destination whose address changes is followed. Options on every
//! destination socket: no Nagle (batches are whole), `TCP_USER_TIMEOUT` (written bytes or keepalive probes that stay
//! unacknowledged that long fail the connection, instead of the kernel's 15 minutes of retransmissions) and TCP
//! keepalive (a destination that vanishes while the relay has nothing to send is noticed before the next write).
//!
//! Invariant: a connect never takes longer than its bounds, whatever the network does.

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Keepalive probes left unanswered before the kernel fails the connection, when `tcp_user_timeout` is `0s` (with
/// it set, the kernel fails the connection once probes went unanswered for that long instead).
const KEEPALIVE_RETRIES: u32 = 3;

/// How to reach a destination and how soon to give up on it.
#[derive(Debug, Clone)]
pub struct ConnectSettings {
    /// `host:port`, resolved on every connect.
    pub address: String,
    /// Bound on one connect attempt.
    pub connect_timeout: Duration,
    /// `TCP_USER_TIMEOUT`; zero leaves the kernel's default.
    pub tcp_user_timeout: Duration,
    /// Idle time before the first keepalive probe.
    pub tcp_keepalive_idle: Duration,
    /// Interval between keepalive probes.
    pub tcp_keepalive_interval: Duration,
}

/// Resolves the destination's name and connects, bounded by `connect_timeout`, then sets the destination socket
/// options.
///
/// # Errors
///
/// Resolution or connect errors, `TimedOut`, or an error setting a socket option.
pub async fn connect(settings: &ConnectSettings) -> io::Result<TcpStream> {
    let attempt = async {
        let mut last_error = io::Error::new(io::ErrorKind::NotFound, "name resolved to no address");
        for address in tokio::net::lookup_host(&settings.address).await? {
            match TcpStream::connect(address).await {
                Ok(stream) => return Ok(stream),
                Err(err) => last_error = err,
            }
        }
        Err(last_error)
    };
    let stream = tokio::time::timeout(settings.connect_timeout, attempt)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    set_options(&stream, settings)?;
    Ok(stream)
}

fn set_options(stream: &TcpStream, settings: &ConnectSettings) -> io::Result<()> {
    // Batches are whole; Nagle would only delay the last segment of each write.
    stream.set_nodelay(true)?;
    let socket = SockRef::from(stream);
    if !settings.tcp_user_timeout.is_zero() {
        socket.set_tcp_user_timeout(Some(settings.tcp_user_timeout))?;
    }
    let keepalive = TcpKeepalive::new()
        .with_time(settings.tcp_keepalive_idle)
        .with_interval(settings.tcp_keepalive_interval)
        .with_retries(KEEPALIVE_RETRIES);
    socket.set_tcp_keepalive(&keepalive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn destination_sockets_get_the_user_timeout_and_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let settings = ConnectSettings {
            address: listener.local_addr().unwrap().to_string(),
            connect_timeout: Duration::from_secs(5),
            tcp_user_timeout: Duration::from_millis(1500),
            tcp_keepalive_idle: Duration::from_secs(7),
            tcp_keepalive_interval: Duration::from_secs(3),
        };
        let stream = connect(&settings).await.unwrap();
        let socket = SockRef::from(&stream);
        assert!(stream.nodelay().unwrap());
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(1500))
        );
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(3)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
    }
}
