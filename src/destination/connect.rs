//! Connecting to a destination: resolve its name, connect, and set the socket options that let the writer notice a
//! dead destination in seconds.
//!
//! The name is resolved on every connect, so a destination whose address changes is followed. Resolution is bounded
//! by `connect_timeout`, and so is the connect to each address it gives, in turn: an address that black-holes the
//! connect costs its own `connect_timeout` and then the next one is tried, instead of starving it. A connect attempt
//! therefore takes at most `connect_timeout` times one plus the number of addresses. The resolver is a
//! parameter ([`Resolve`]), the system's ([`SystemResolver`]) unless a test injects its own.
//!
//! Options on every destination socket: no Nagle (batches are whole), `TCP_USER_TIMEOUT` (written bytes or keepalive
//! probes that stay unacknowledged that long fail the connection, instead of the kernel's 15 minutes of
//! retransmissions), TCP keepalive (a destination that vanishes while the relay has nothing to send is noticed
//! before the next write) and `TCP_NOTSENT_LOWAT` (the kernel holds at most one write's worth unsent, so lines wait
//! in the queue, where pacing sees them).
//!
//! Invariant: no step of a connect waits longer than `connect_timeout`, whatever the network or the DNS does.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Turns a destination's `host:port` into the addresses to try, in order.
pub trait Resolve: fmt::Debug + Send + Sync {
    /// The addresses of `address` (`host:port`), in the order to try them.
    ///
    /// # Errors
    ///
    /// The resolver's error, e.g. an unknown host.
    fn resolve<'a>(&'a self, address: &'a str) -> Resolving<'a>;
}

/// What [`Resolve::resolve`] returns: a boxed future, so that resolvers of different types fit one setting.
pub type Resolving<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// The system's resolver (`getaddrinfo` on a blocking thread, through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

/// Keepalive probes left unanswered before the kernel fails the connection, when `tcp_user_timeout` is `0s` (with
/// it set, the kernel fails the connection once probes went unanswered for that long instead).
const KEEPALIVE_RETRIES: u32 = 3;

/// How to reach a destination and how soon to give up on it.
#[derive(Debug, Clone)]
pub struct ConnectSettings {
    /// `host:port`, resolved on every connect.
    pub address: String,
    /// Resolves `address`; [`SystemResolver`] outside tests.
    pub resolver: Arc<dyn Resolve>,
    /// Bound on resolving `address`, and on the connect to each address it gives.
    pub connect_timeout: Duration,
    /// `TCP_USER_TIMEOUT`; zero leaves the kernel's default.
    pub tcp_user_timeout: Duration,
    /// Idle time before the first keepalive probe.
    pub tcp_keepalive_idle: Duration,
    /// Interval between keepalive probes.
    pub tcp_keepalive_interval: Duration,
}

/// Resolves the destination's name and connects to the first of its addresses that accepts, each step bounded by
/// `connect_timeout`, then sets the destination socket options.
///
/// # Errors
///
/// The resolver's error or `TimedOut`; otherwise the error of the last address tried (or `NotFound` if there was
/// none); or an error setting a socket option.
pub async fn connect(settings: &ConnectSettings) -> io::Result<TcpStream> {
    let addresses = tokio::time::timeout(
        settings.connect_timeout,
        settings.resolver.resolve(&settings.address),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "name resolution timed out"))??;
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "name resolved to no address");
    for address in addresses {
        match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                set_options(&stream, settings)?;
                return Ok(stream);
            }
            Ok(Err(err)) => last_error = err,
            Err(_) => {
                last_error = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect to {address} timed out"),
                )
            }
        }
    }
    Err(last_error)
}

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, address: &'a str) -> Resolving<'a> {
        Box::pin(async move { Ok(tokio::net::lookup_host(address).await?.collect()) })
    }
}

/// Most unsent bytes the kernel takes before a write waits: one [`super::writer::WRITE_CHUNK_BYTES`].
const NOTSENT_LOWAT_BYTES: u32 = super::writer::WRITE_CHUNK_BYTES as u32;

fn set_options(stream: &TcpStream, settings: &ConnectSettings) -> io::Result<()> {
    // Batches are whole; Nagle would only delay the last segment of each write.
    stream.set_nodelay(true)?;
    let socket = SockRef::from(stream);
    if !settings.tcp_user_timeout.is_zero() {
        socket.set_tcp_user_timeout(Some(settings.tcp_user_timeout))?;
    }
    // Bytes the kernel holds unsent are bytes the writer retains until acknowledged, and the queue counts them: let it
    // hold about one write's worth, so that lines wait in the queue, where pacing sees them as lag and where they are
    // still in the CPU's cache when written.
    socket.set_tcp_notsent_lowat(NOTSENT_LOWAT_BYTES)?;
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
    async fn destination_sockets_get_the_user_timeout_keepalive_and_notsent_lowat() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let settings = ConnectSettings {
            address: listener.local_addr().unwrap().to_string(),
            resolver: Arc::new(SystemResolver),
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
        assert_eq!(socket.tcp_notsent_lowat().unwrap(), NOTSENT_LOWAT_BYTES);
    }
}
