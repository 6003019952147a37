//! Test support: the relay started in process on port 0, counting destinations, and waiting helpers.

pub mod crash;
pub mod process;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use polymur::relay::{Relay, RelayHandle, ShutdownReport};
use polymur::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// How long `eventually` waits before failing a test.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A config for tests: listens on 127.0.0.1 port 0, no stats server, fast reconnects.
pub fn config(destinations: &[SocketAddr]) -> Config {
    let mut config = Config::default();
    config.listen.address = "127.0.0.1".to_string();
    config.listen.port = 0;
    config.stats.address = String::new();
    config.stats.log_interval = Duration::ZERO;
    config.destinations = destinations.iter().map(ToString::to_string).collect();
    config.destination.retry_interval = Duration::from_millis(200);
    config
}

/// The relay, started in this process.
pub struct TestRelay {
    relay: Relay,
    /// Addresses and counters.
    pub handle: RelayHandle,
}

impl TestRelay {
    /// Starts a relay with `config`.
    pub async fn start(config: Config) -> TestRelay {
        let relay = Relay::start(config).await.expect("relay starts");
        let handle = relay.handle();
        TestRelay { relay, handle }
    }

    /// The plaintext listener's address.
    pub fn address(&self) -> SocketAddr {
        self.handle.listen_address
    }

    /// Reloads with `config`, as SIGHUP does.
    pub async fn reload(&mut self, config: Config) -> anyhow::Result<polymur::relay::ReloadReport> {
        self.relay.reload(config).await
    }

    /// Shuts the relay down gracefully.
    pub async fn shutdown(self) -> ShutdownReport {
        self.relay.shutdown().await
    }

    /// A process-wide counter.
    pub fn lines_received(&self) -> u64 {
        self.handle
            .registry
            .relay
            .lines_received
            .load(Ordering::Relaxed)
    }

    /// A reason counter by its stats name.
    pub fn invalid(&self, name: &str) -> u64 {
        let index = polymur::line::Invalid::ALL
            .iter()
            .position(|reason| reason.name() == name)
            .expect("known reason");
        self.handle.registry.relay.lines_invalid[index].load(Ordering::Relaxed)
    }

    /// A note counter by its stats name.
    pub fn noted(&self, name: &str) -> u64 {
        let index = polymur::line::Note::ALL
            .iter()
            .position(|note| note.name() == name)
            .expect("known note");
        self.handle.registry.relay.lines_noted[index].load(Ordering::Relaxed)
    }

    /// Counters of destination `index`.
    pub fn destination(&self, index: usize) -> std::sync::Arc<polymur::stats::DestinationStats> {
        std::sync::Arc::clone(&self.handle.registry.destinations()[index])
    }
}

/// A destination that accepts any number of connections and records every byte it reads.
///
/// It runs on its own threads with blocking sockets, like a real destination in another process: the test's runtime,
/// busy with thousands of clients, must not decide how fast a destination reads.
pub struct Sink {
    address: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    n_lines: Arc<AtomicUsize>,
    n_closed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<std::net::TcpStream>>>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    /// A sink on a free port.
    pub async fn start() -> Sink {
        Sink::start_on("127.0.0.1:0".parse().expect("address")).await
    }

    /// A sink on a given address (to bring a destination back on its old port).
    pub async fn start_on(address: SocketAddr) -> Sink {
        Sink::start_reading(address, 64 * 1024, Duration::ZERO)
    }

    /// A slow sink: reads at most `read_bytes` at a time, pausing `pause` after each read.
    pub async fn start_slow(read_bytes: usize, pause: Duration) -> Sink {
        Sink::start_reading("127.0.0.1:0".parse().expect("address"), read_bytes, pause)
    }

    fn start_reading(address: SocketAddr, read_bytes: usize, pause: Duration) -> Sink {
        let listener = std::net::TcpListener::bind(address).expect("sink binds");
        let address = listener.local_addr().expect("sink address");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let received = Arc::new(Mutex::new(Vec::new()));
        let n_lines = Arc::new(AtomicUsize::new(0));
        let n_closed = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let acceptor = spawn_acceptor(listener, Arc::clone(&stop), Arc::clone(&streams), {
            let received = Arc::clone(&received);
            let n_lines = Arc::clone(&n_lines);
            let n_closed = Arc::clone(&n_closed);
            move |stream| {
                let received = Arc::clone(&received);
                let n_lines = Arc::clone(&n_lines);
                let n_closed = Arc::clone(&n_closed);
                std::thread::spawn(move || {
                    read_lines(stream, read_bytes, pause, &received, &n_lines);
                    n_closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Sink {
            address,
            received,
            n_lines,
            n_closed,
            stop,
            streams,
            acceptor: Some(acceptor),
        }
    }

    /// Where the sink listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Lines read so far.
    pub fn n_lines(&self) -> usize {
        self.n_lines.load(Ordering::SeqCst)
    }

    /// Connections the sink has read to their end (EOF or error).
    #[cfg_attr(not(feature = "peers"), allow(dead_code))] // Only the peer tests use it.
    pub fn n_connections_closed(&self) -> usize {
        self.n_closed.load(Ordering::SeqCst)
    }

    /// Every byte of every whole line read so far, exactly as received (`lines` strips a CR before the LF).
    #[cfg_attr(not(feature = "peers"), allow(dead_code))] // Only the peer tests use it.
    pub fn bytes(&self) -> Vec<u8> {
        self.received.lock().clone()
    }

    /// Every line read so far, without LF, in arrival order.
    pub fn lines(&self) -> Vec<String> {
        let received = self.received.lock();
        String::from_utf8_lossy(&received)
            .lines()
            .map(ToString::to_string)
            .collect()
    }

    /// Every line read so far, sorted (a multiset to compare).
    pub fn sorted_lines(&self) -> Vec<String> {
        let mut lines = self.lines();
        lines.sort_unstable();
        lines
    }

    /// Closes the listener and every connection, as a killed destination would, and waits until they are closed.
    pub async fn kill(mut self) {
        self.close();
    }

    fn close(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.join().expect("acceptor thread");
        }
        for stream in self.streams.lock().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.close();
    }
}

/// A sink's reader: keeps only whole lines, so a connection cut mid-line does not glue onto another's bytes.
fn read_lines(
    mut stream: std::net::TcpStream,
    read_bytes: usize,
    pause: Duration,
    received: &Mutex<Vec<u8>>,
    n_lines: &AtomicUsize,
) {
    use std::io::Read;
    let mut pending = Vec::new();
    let mut buf = vec![0u8; read_bytes];
    loop {
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => keep_whole_lines(&mut pending, &buf[..n], received, n_lines),
        }
    }
}

/// A destination that accepts connections and never reads from them.
pub struct StalledSink {
    address: SocketAddr,
    accepted: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: JoinHandle<()>,
}

impl StalledSink {
    /// A stalled sink on a free port, with a small receive buffer so it fills quickly.
    pub async fn start() -> StalledSink {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        socket
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind");
        let listener = socket.listen(16).expect("listen");
        let address = listener.local_addr().expect("address");
        let accepted: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let acceptor = tokio::spawn({
            let accepted = Arc::clone(&accepted);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    accepted.lock().push(stream);
                }
            }
        });
        StalledSink {
            address,
            accepted,
            acceptor,
        }
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Reads everything the relay managed to push into the stalled connections' kernel buffers, as lines. Stops
    /// accepting first.
    pub async fn drain_lines(self) -> usize {
        self.acceptor.abort();
        let streams: Vec<TcpStream> = self.accepted.lock().drain(..).collect();
        let mut n_lines = 0;
        for mut stream in streams {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await
                {
                    Ok(Ok(n)) if n > 0 => {
                        n_lines += buf[..n].iter().filter(|&&b| b == b'\n').count()
                    }
                    _ => break,
                }
            }
        }
        n_lines
    }
}

/// Appends `read` to `pending` and moves its whole lines into `received`, counting them: a sink keeps only whole
/// lines, so a connection cut mid-line leaves its half line behind.
pub fn keep_whole_lines(
    pending: &mut Vec<u8>,
    read: &[u8],
    received: &Mutex<Vec<u8>>,
    n_lines: &AtomicUsize,
) {
    pending.extend_from_slice(read);
    if let Some(last_lf) = memchr::memrchr(b'\n', pending) {
        let n_new = memchr::memchr_iter(b'\n', &pending[..=last_lf]).count();
        received.lock().extend_from_slice(&pending[..=last_lf]);
        pending.drain(..=last_lf);
        n_lines.fetch_add(n_new, Ordering::SeqCst);
    }
}

/// Accepts connections on a nonblocking `listener` until `stop`, in blocking mode, each kept in `streams` (so that the
/// owner can cut them all) and handed to `serve` on this thread, which should spawn its reader.
pub fn spawn_acceptor(
    listener: std::net::TcpListener,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<std::net::TcpStream>>>,
    serve: impl Fn(std::net::TcpStream) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                Err(_) => break,
            };
            stream.set_nonblocking(false).expect("blocking stream");
            streams
                .lock()
                .push(stream.try_clone().expect("clone stream"));
            serve(stream);
        }
    })
}

/// Waits until `condition` holds, polling; panics with `what` after [`PATIENCE`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Opens a connection, writes `bytes`, and closes it.
pub async fn send(address: SocketAddr, bytes: &[u8]) {
    let mut stream = TcpStream::connect(address).await.expect("connect to relay");
    stream.write_all(bytes).await.expect("write to relay");
    stream.shutdown().await.expect("close");
}

/// `n` distinct valid lines, tagged with `client` so every client's lines differ.
pub fn distinct_lines(client: usize, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 48);
    for i in 0..n {
        out.extend_from_slice(
            format!("test.client{client}.metric{i} {i}.5 1700000000\n").as_bytes(),
        );
    }
    out
}

/// The lines of `bytes`, sorted.
pub fn sorted(bytes: &[u8]) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(bytes)
        .lines()
        .map(ToString::to_string)
        .collect();
    lines.sort_unstable();
    lines
}
