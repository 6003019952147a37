//! Support for the spool's crash tests: a destination that records each connection's whole lines apart and can stall,
//! a listen port a restarted relay can take again, and the bytes a spool directory holds.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// The whole lines one accepted connection has read so far.
type Recording = Arc<Mutex<Vec<u8>>>;

/// A destination that keeps, per accepted connection, the whole lines it read, and that a test can stall.
///
/// A connection cut mid-line leaves a partial line at its end; it is discarded, never joined to the next connection's
/// bytes, so every recorded line is one line as some writer wrote it. The receive buffer is small, so a stalled
/// destination holds back the relay at once instead of soaking up megabytes in its kernel.
pub struct RecordingSink {
    address: SocketAddr,
    connections: Arc<Mutex<Vec<Recording>>>,
    n_lines: Arc<AtomicUsize>,
    stalled: Arc<AtomicBool>,
    stall_schedule_stop: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<std::net::TcpStream>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl RecordingSink {
    /// The receive buffer asked of the kernel for every accepted connection (the kernel doubles it).
    const RECEIVE_BUFFER_BYTES: usize = 16 * 1024;

    /// A recording sink on a free port of 127.0.0.1.
    pub fn start() -> RecordingSink {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .set_recv_buffer_size(Self::RECEIVE_BUFFER_BYTES)
            .expect("rcvbuf");
        let any_port: SocketAddr = "127.0.0.1:0".parse().expect("address");
        socket.bind(&any_port.into()).expect("sink binds");
        socket.listen(128).expect("sink listens");
        let listener: TcpListener = socket.into();
        let address = listener.local_addr().expect("sink address");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let connections: Arc<Mutex<Vec<Recording>>> = Arc::default();
        let n_lines = Arc::new(AtomicUsize::new(0));
        let stalled = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let acceptor = super::spawn_acceptor(listener, Arc::clone(&stop), Arc::clone(&streams), {
            let connections = Arc::clone(&connections);
            let n_lines = Arc::clone(&n_lines);
            let stalled = Arc::clone(&stalled);
            move |stream| {
                let received: Recording = Arc::default();
                connections.lock().push(Arc::clone(&received));
                let n_lines = Arc::clone(&n_lines);
                let stalled = Arc::clone(&stalled);
                std::thread::spawn(move || {
                    record_lines(stream, &received, &n_lines, &stalled);
                });
            }
        });
        RecordingSink {
            address,
            connections,
            n_lines,
            stalled,
            stall_schedule_stop: Arc::new(AtomicBool::new(true)),
            stop,
            streams,
            threads: vec![acceptor],
        }
    }

    /// Where the sink listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Whole lines read so far, over every connection.
    pub fn n_lines(&self) -> usize {
        self.n_lines.load(Ordering::SeqCst)
    }

    /// Stops reading from every connection until [`RecordingSink::resume`], as a destination in a long pause would.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    /// Reads again.
    pub fn resume(&self) {
        self.stalled.store(false, Ordering::SeqCst);
    }

    /// Alternates, on a thread of its own, `reading` time of reading and `stalled` time of not reading, until
    /// [`RecordingSink::stop_stalling`]. A fault schedule: the destination stays up and connected throughout.
    pub fn stall_periodically(&mut self, reading: Duration, stalled: Duration) {
        self.stall_schedule_stop = Arc::new(AtomicBool::new(false));
        let schedule_stop = Arc::clone(&self.stall_schedule_stop);
        let stall = Arc::clone(&self.stalled);
        self.threads.push(std::thread::spawn(move || {
            let sleep_unless_stopped = |duration: Duration| {
                let deadline = std::time::Instant::now() + duration;
                while std::time::Instant::now() < deadline {
                    if schedule_stop.load(Ordering::SeqCst) {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                true
            };
            loop {
                if !sleep_unless_stopped(reading) {
                    break;
                }
                stall.store(true, Ordering::SeqCst);
                let more = sleep_unless_stopped(stalled);
                stall.store(false, Ordering::SeqCst);
                if !more {
                    break;
                }
            }
        }));
    }

    /// Ends the schedule of [`RecordingSink::stall_periodically`]; the sink is left reading.
    pub fn stop_stalling(&self) {
        self.stall_schedule_stop.store(true, Ordering::SeqCst);
        self.resume();
    }

    /// The whole lines of each connection so far, in accept order; each holds the lines in the order read.
    pub fn connections(&self) -> Vec<Vec<u8>> {
        self.connections
            .lock()
            .iter()
            .map(|received| received.lock().clone())
            .collect()
    }
}

impl Drop for RecordingSink {
    fn drop(&mut self) {
        self.stall_schedule_stop.store(true, Ordering::SeqCst);
        self.stalled.store(false, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        for stream in self.streams.lock().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// One connection's reader: appends whole lines to `received`; a partial line left at the end is discarded.
fn record_lines(
    mut stream: std::net::TcpStream,
    received: &Mutex<Vec<u8>>,
    n_lines: &AtomicUsize,
    stalled: &AtomicBool,
) {
    use std::io::Read;
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if stalled.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => super::keep_whole_lines(&mut pending, &buf[..n], received, n_lines),
        }
    }
}

/// A free port of 127.0.0.1 below the kernel's ephemeral range.
///
/// A relay restarted on the same port must find it free. A port from the ephemeral range could meanwhile be taken as
/// the local end of some outgoing connection, or even by a client retrying its connect to it while the relay is down
/// (a TCP self-connect, which then holds the port).
pub fn free_port_below_ephemeral_range(seed: u64) -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_else(|_| "32768 60999".to_string());
    let first_ephemeral: u16 = range
        .split_whitespace()
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or(32768);
    let low = 10_000u16.min(first_ephemeral / 2);
    let n_ports = u64::from(first_ephemeral - low);
    // Walk the range from a seeded start, so parallel tests and runs spread out.
    let start = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) % n_ports;
    for step in 0..n_ports {
        let port = low + u16::try_from((start + step) % n_ports).expect("port fits u16");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {low} and {first_ephemeral}");
}

/// Bytes of every file under `dir`, recursively; files deleted while it walks count as 0.
pub fn directory_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(file_type) if file_type.is_dir() => directory_bytes(&entry.path()),
            Ok(_) => entry.metadata().map(|metadata| metadata.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}
