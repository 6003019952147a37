//! The disk spool against `kill -9`: the real binary in `always` mode is killed at random moments and restarted on the
//! same spool directory and port while clients keep sending, and every line a client handed over (its connection
//! closed) at least a second before the kill that followed must reach the destination at least once.
//!
//! The destination stays up but stalls now and then (a fault schedule), so at any moment the relay holds lines that
//! are seconds old: without the spool a kill loses them, and the test sees it. The seed of the kill schedule and of
//! the clients is printed; `POLYMUR_CRASH_SEED=N` repeats a run.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::stats_server::get_stats;
use crate::support::crash::{directory_bytes, free_port_below_ephemeral_range, RecordingSink};
use crate::support::process::RelayProcess;
use crate::support::{eventually, PATIENCE};

/// Kills, each followed by a restart.
const N_ROUNDS: usize = 20;
/// The spool's bound: the traffic below stays well under it, so nothing may be dropped for room.
const SPOOL_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// What the spool may hold beyond its bound: one segment header and one record (a batch of at most
/// `batch_max_bytes`, 16 KiB, plus a line of up to `max_line_bytes`, 16 KiB, and the record's header).
const SPOOL_SLACK_BYTES: u64 = 64 * 1024;
/// How long before a kill a client's connection must have closed for its lines to be owed.
const HANDED_OVER_BEFORE_KILL: Duration = Duration::from_secs(1);
/// The clients' rate, lines per second over both client threads: about 650 KB/s, so a 3 s stall spools 2 MB. Fast
/// enough that the relay's socket to the destination (`TCP_NOTSENT_LOWAT`, 256 KiB) holds well under a second of
/// it, so a kill during a stall has lines older than a second to lose.
const LINES_PER_SEC: u64 = 20_000;
/// Lines per client connection, at most; each connection sends between 1 and this many.
const MAX_LINES_PER_CONNECTION: u32 = 400;
/// The destination reads for `READING`, then stalls for `STALL`, over and over. Without a spool about one kill in
/// three then loses owed lines (measured 7 and 8 of 20), so a run of 20 cannot miss them all by chance.
const READING: Duration = Duration::from_millis(1000);
const STALL: Duration = Duration::from_millis(3000);
/// The timestamp of every line.
const TIMESTAMP: u64 = 1_700_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_always_mode_loses_no_line_handed_over_a_second_before() {
    let seed = seed();
    eprintln!("spool crash loop: seed {seed} (POLYMUR_CRASH_SEED={seed} repeats it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let mut sink = RecordingSink::start();
    sink.stall_periodically(READING, STALL);
    let spool_dir = tempfile::tempdir().expect("spool dir");
    let port = free_port_below_ephemeral_range(seed).to_string();
    let destination = sink.address().to_string();
    let spool_max_bytes = SPOOL_MAX_BYTES.to_string();
    let args = [
        "-spool-dir",
        spool_dir.path().to_str().expect("utf-8 path"),
        "-spool-mode",
        "always",
        "-spool-max-bytes",
        &spool_max_bytes,
        "-destinations",
        &destination,
        "-listen-port",
        &port,
        "-stats-addr",
        "127.0.0.1:0",
    ];
    let mut relay = RelayProcess::start(&args);
    let listen_address = relay.listen_address;
    // `spool` is null for a destination without one. Before the spool existed, this test saw thousands of owed
    // lines lost per run with the same schedule, at about one kill in three: it can fail.
    let has_spool = get_stats(relay.stats_address()).await["destinations"][0]["spool"].is_object();
    assert!(has_spool, "the destination has no spool");
    let spool_watch = SpoolWatch::start(spool_dir.path());
    let clients = Clients::start(listen_address, seed);

    // When each kill was sent, and when the relay was gone.
    let mut kills = Vec::with_capacity(N_ROUNDS);
    let mut kills_done = Vec::with_capacity(N_ROUNDS);
    let mut clients = Some(clients);
    let mut connections = BTreeMap::new();
    for round in 0..N_ROUNDS {
        // The fault schedule: a random moment of the relay's life.
        let lifetime = Duration::from_millis(rng.random_range(500..3000));
        tokio::time::sleep(lifetime).await;
        spool_watch.check(&format!("before kill {round}"));
        let killed_at = Instant::now();
        relay.signal("KILL");
        relay.wait();
        kills.push(killed_at);
        kills_done.push(Instant::now());
        if round == N_ROUNDS - 1 {
            // The last run starts with no client, so its counters hold only the replay, then the lines below.
            connections = clients
                .take()
                .expect("clients run until the last kill")
                .stop();
            sink.stop_stalling();
        }
        relay = RelayProcess::start(&args);
        assert_eq!(relay.listen_address, listen_address, "restart {round}");
    }
    spool_watch.check("after the last restart");

    // The last run's counters: it replays what the kills left, then takes new lines while the destination stalls,
    // so they wait in the spool, then delivers them.
    let stats_address = relay.stats_address();
    let replayed = settled_stats(stats_address, "the replay is delivered", |destination| {
        destination["queued_lines"] == 0 && spool_lines(destination) == 0
    })
    .await;
    assert_eq!(replayed["lines"]["received"], 0);
    let replay_counts = Counts::of(&replayed);
    sink.stall();
    let n_final_lines = 20_000u32;
    let final_opened_at = Instant::now();
    let final_connection = send_numbered(listen_address, u32::MAX, n_final_lines)
        .expect("the last run takes a connection");
    let held = settled_stats(stats_address, "the new lines wait", |_| true).await;
    let held_counts = Counts::of(&held).since(&replay_counts);
    assert_eq!(held_counts.received, u64::from(n_final_lines));
    held_counts.assert_add_up("while the destination stalls");
    {
        // In `always` mode every batch is on disk before it is sent; `spool.lines` counts only lines not yet read
        // back into memory, so the bytes are what shows it.
        let spool_bytes = held["destinations"][0]["spool"]["bytes"].as_u64();
        assert!(
            spool_bytes.is_some_and(|n_bytes| n_bytes > 0),
            "nothing on disk while the destination stalls: {held:#}"
        );
    }
    sink.resume();
    let delivered = settled_stats(
        stats_address,
        "the new lines are delivered",
        |destination| destination["queued_lines"] == 0 && spool_lines(destination) == 0,
    )
    .await;
    let delivered_counts = Counts::of(&delivered).since(&replay_counts);
    delivered_counts.assert_add_up("once delivered");
    assert_eq!(delivered_counts.dropped, 0, "{delivered:#}");
    eprintln!(
        "last run: replayed {} lines (spool.replayed_lines {}), then {delivered_counts:?}",
        replay_counts.sent, replayed["destinations"][0]["spool"]["replayed_lines"],
    );

    relay.signal("TERM");
    let status = relay.wait();
    assert_eq!(status.code(), Some(0), "{}", relay.stderr().join("\n"));
    spool_watch.check("after the drain");

    // What every client connection was owed, and what arrived.
    connections.insert(
        u32::MAX,
        ClientConnection {
            n_lines: n_final_lines,
            opened_at: final_opened_at,
            closed_at: Some(final_connection),
        },
    );
    let owed = owed_lines(&connections, &kills, &kills_done);
    let n_owed: u64 = owed.values().map(|&n| u64::from(n)).sum();
    eventually("the destination read every line owed", || {
        sink.n_lines() as u64 >= n_owed
    })
    .await;
    let arrivals = Arrivals::count(&sink.connections(), &connections);
    let lost = arrivals.lost(&owed);
    let n_lost: u64 = lost.values().sum();
    let n_kills_with_loss = kills
        .iter()
        .filter(|&&kill| {
            lost.keys().any(|id| {
                let closed_at = connections[id].closed_at.expect("owed connections closed");
                kills.iter().find(|&&next| next > closed_at) == Some(&kill)
            })
        })
        .count();
    for (id, n_lost_lines) in lost.iter().take(8) {
        let connection = &connections[id];
        let closed_at = connection.closed_at.expect("owed connections closed");
        let previous_kill = kills
            .iter()
            .rev()
            .find(|&&kill| kill <= connection.opened_at);
        let next_kill = kills.iter().find(|&&kill| kill > closed_at);
        eprintln!(
            "lost: connection {id}: {n_lost_lines} of {} lines; opened {:?} after the kill before, open for {:?}, closed {:?} before the next kill",
            connection.n_lines,
            previous_kill.map(|&kill| connection.opened_at - kill),
            closed_at - connection.opened_at,
            next_kill.map(|&kill| kill - closed_at),
        );
    }
    let max_spool_bytes = spool_watch.stop();
    eprintln!(
        "spool crash loop: seed {seed}, {N_ROUNDS} kills, {} client connections ({} closed, {} owed), \
         {} lines sent, {n_owed} owed, {n_lost} lost (at {n_kills_with_loss} kills), {} duplicates, spool at most {max_spool_bytes} bytes, {:.1} s",
        connections.len(),
        connections.values().filter(|c| c.closed_at.is_some()).count(),
        owed.len(),
        connections.values().map(|c| u64::from(c.n_lines)).sum::<u64>(),
        arrivals.n_duplicates,
        started.elapsed().as_secs_f64(),
    );
    assert!(
        arrivals.malformed.is_empty(),
        "{} lines read that no client sent (two halves joined?), e.g. {:?}",
        arrivals.malformed.len(),
        &arrivals.malformed[..arrivals.malformed.len().min(5)]
    );
    assert!(
        owed.len() > N_ROUNDS,
        "too few connections closed a second before a kill to test anything"
    );
    let escaped = destination.replace(':', "%3A");
    assert!(
        spool_dir.path().join(&escaped).is_dir(),
        "no spool directory {escaped} in {}",
        spool_dir.path().display()
    );
    assert_eq!(n_lost, 0, "lines lost to kill -9 (seed {seed})");
}

/// The seed of a run: `POLYMUR_CRASH_SEED`, or the clock.
fn seed() -> u64 {
    std::env::var("POLYMUR_CRASH_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_nanos() as u64
        })
}

/// One client connection, as its client saw it.
#[derive(Debug, Clone, Copy)]
struct ClientConnection {
    n_lines: u32,
    /// Just before the client connected.
    opened_at: Instant,
    /// When the client saw the relay close the connection after its own close: the relay had then read every line
    /// and handed the last batch on. `None` when the connection failed.
    closed_at: Option<Instant>,
}

/// Client threads sending numbered lines over many short connections, at [`LINES_PER_SEC`], until stopped.
struct Clients {
    stop: Arc<AtomicBool>,
    connections: Arc<Mutex<BTreeMap<u32, ClientConnection>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Connections are numbered across client threads.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(0);

impl Clients {
    const N_THREADS: u64 = 2;

    fn start(address: SocketAddr, seed: u64) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<BTreeMap<u32, ClientConnection>>> = Arc::default();
        let threads = (0..Self::N_THREADS)
            .map(|thread| {
                let stop = Arc::clone(&stop);
                let connections = Arc::clone(&connections);
                std::thread::spawn(move || {
                    let mut rng = StdRng::seed_from_u64(seed ^ (thread + 1));
                    let lines_per_sec = (LINES_PER_SEC / Self::N_THREADS) as f64;
                    let mut next_at = Instant::now();
                    while !stop.load(Ordering::SeqCst) {
                        // Pace to the rate: a load schedule, not a wait for anything.
                        if let Some(ahead) = next_at.checked_duration_since(Instant::now()) {
                            std::thread::sleep(ahead);
                        }
                        let n_lines = rng.random_range(1..=MAX_LINES_PER_CONNECTION);
                        let opened_at = Instant::now();
                        let Ok(mut stream) = TcpStream::connect(address) else {
                            // The relay is down: retry soon.
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        };
                        let id = u32::try_from(NEXT_CONNECTION.fetch_add(1, Ordering::SeqCst))
                            .expect("connection ids fit u32");
                        let closed_at = send_on(&mut stream, id, n_lines);
                        connections.lock().insert(
                            id,
                            ClientConnection {
                                n_lines,
                                opened_at,
                                closed_at,
                            },
                        );
                        next_at += Duration::from_secs_f64(f64::from(n_lines) / lines_per_sec);
                    }
                })
            })
            .collect();
        Clients {
            stop,
            connections,
            threads,
        }
    }

    /// Stops the clients, waits for their last connection, and returns every connection.
    fn stop(self) -> BTreeMap<u32, ClientConnection> {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().expect("client thread");
        }
        let connections = self.connections.lock().clone();
        connections
    }
}

/// Opens a connection, sends `n_lines` numbered lines, and returns when the relay closed it.
fn send_numbered(address: SocketAddr, id: u32, n_lines: u32) -> Option<Instant> {
    let mut stream = TcpStream::connect(address).ok()?;
    send_on(&mut stream, id, n_lines)
}

/// Sends the lines of connection `id`, closes its side, and waits for the relay's close.
fn send_on(stream: &mut TcpStream, id: u32, n_lines: u32) -> Option<Instant> {
    let mut body = Vec::with_capacity(n_lines as usize * 40);
    for seq in 0..n_lines {
        writeln!(body, "crash.c{id}.{seq} {seq} {TIMESTAMP}").expect("format line");
    }
    stream.write_all(&body).ok()?;
    stream.shutdown(std::net::Shutdown::Write).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut rest = [0u8; 64];
    match stream.read(&mut rest) {
        Ok(0) => Some(Instant::now()),
        _ => None,
    }
}

/// Lines owed per connection: those of connections that closed at least [`HANDED_OVER_BEFORE_KILL`] before the
/// next kill, or before no kill at all (the clean shutdown delivers).
fn owed_lines(
    connections: &BTreeMap<u32, ClientConnection>,
    kills: &[Instant],
    kills_done: &[Instant],
) -> BTreeMap<u32, u32> {
    connections
        .iter()
        .filter_map(|(&id, connection)| {
            let closed_at = connection.closed_at?;
            // A kill closes the connections it cuts, and the client sees that close like the relay's own: a
            // connection that spans a kill is not a handover, only one that lived within one run of the relay is.
            // It spans a kill if it opened before the relay was gone and closed after the signal was sent.
            if kills
                .iter()
                .zip(kills_done)
                .any(|(&kill, &done)| connection.opened_at < done && kill <= closed_at)
            {
                return None;
            }
            let next_kill = kills.iter().find(|&&kill| kill > closed_at);
            let owed = next_kill.is_none_or(|&kill| kill - closed_at >= HANDED_OVER_BEFORE_KILL);
            owed.then_some((id, connection.n_lines))
        })
        .collect()
}

/// What the destination read, per sent line.
struct Arrivals {
    /// Times each line arrived, per connection, indexed by sequence number.
    counts: BTreeMap<u32, Vec<u16>>,
    n_duplicates: u64,
    /// Lines that are not exactly one line some client sent.
    malformed: Vec<String>,
}

impl Arrivals {
    fn count(received: &[Vec<u8>], connections: &BTreeMap<u32, ClientConnection>) -> Arrivals {
        let mut arrivals = Arrivals {
            counts: connections
                .iter()
                .map(|(&id, connection)| (id, vec![0; connection.n_lines as usize]))
                .collect(),
            n_duplicates: 0,
            malformed: Vec::new(),
        };
        for line in received
            .iter()
            .flat_map(|bytes| bytes.split(|&b| b == b'\n'))
        {
            if line.is_empty() {
                continue;
            }
            match parse_numbered(line).and_then(|(id, seq)| {
                arrivals
                    .counts
                    .get_mut(&id)
                    .and_then(|counts| counts.get_mut(seq as usize))
            }) {
                Some(count) => {
                    if *count > 0 {
                        arrivals.n_duplicates += 1;
                    }
                    *count = count.saturating_add(1);
                }
                None => arrivals
                    .malformed
                    .push(String::from_utf8_lossy(line).into_owned()),
            }
        }
        arrivals
    }

    /// Owed lines that never arrived, per connection that lost any.
    fn lost(&self, owed: &BTreeMap<u32, u32>) -> BTreeMap<u32, u64> {
        owed.keys()
            .map(|&id| {
                let n_lost = self.counts[&id].iter().filter(|&&count| count == 0).count();
                (id, n_lost as u64)
            })
            .filter(|&(_, n_lost)| n_lost > 0)
            .collect()
    }
}

/// `(connection, sequence)` of a line exactly as a client writes it, `crash.c<id>.<seq> <seq> <timestamp>`.
fn parse_numbered(line: &[u8]) -> Option<(u32, u32)> {
    let line = std::str::from_utf8(line).ok()?;
    let (path, rest) = line.strip_prefix("crash.c")?.split_once(' ')?;
    let (id, seq) = path.split_once('.')?;
    let (id, seq): (u32, u32) = (id.parse().ok()?, seq.parse().ok()?);
    (rest == format!("{seq} {TIMESTAMP}")).then_some((id, seq))
}

/// The counters of the accounting, for one destination: received = sent + dropped + queued + spooled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    received: u64,
    sent: u64,
    dropped: u64,
    queued: u64,
    spooled: u64,
}

impl Counts {
    fn of(stats: &serde_json::Value) -> Counts {
        let destination = &stats["destinations"][0];
        Counts {
            received: stats["lines"]["received"].as_u64().expect("lines.received"),
            sent: destination["sent_lines"].as_u64().expect("sent_lines"),
            dropped: destination["dropped"]
                .as_object()
                .expect("dropped map")
                .values()
                .map(|count| count.as_u64().expect("count"))
                .sum(),
            queued: destination["queued_lines"].as_u64().expect("queued_lines"),
            spooled: spool_lines(destination),
        }
    }

    /// The flows since `base` (a quiet moment with nothing queued or spooled); the gauges stay as they are.
    fn since(self, base: &Counts) -> Counts {
        Counts {
            received: self.received - base.received,
            sent: self.sent - base.sent,
            dropped: self.dropped - base.dropped,
            ..self
        }
    }

    fn assert_add_up(&self, when: &str) {
        assert_eq!(
            self.received,
            self.sent + self.dropped + self.queued + self.spooled,
            "{when}: received != sent + dropped + queued + spooled: {self:?}"
        );
    }
}

/// `spool.lines` of a destination, 0 when it has no spool (`spool` is null).
fn spool_lines(destination: &serde_json::Value) -> u64 {
    destination["spool"]["lines"].as_u64().unwrap_or(0)
}

/// Polls `/stats` until the first destination satisfies `condition` and two answers in a row agree on the counts of
/// the accounting; returns that answer. Panics with `what` after [`PATIENCE`].
async fn settled_stats(
    address: SocketAddr,
    what: &str,
    mut condition: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + PATIENCE;
    let mut previous: Option<Counts> = None;
    loop {
        let stats = get_stats(address).await;
        let counts = Counts::of(&stats);
        if condition(&stats["destinations"][0]) && previous == Some(counts) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}: {:#}",
            stats["destinations"][0]
        );
        previous = Some(counts);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The spool directory's bytes, polled every 20 ms on a thread of its own; the largest seen must stay within the
/// bound plus [`SPOOL_SLACK_BYTES`].
struct SpoolWatch {
    max_bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
    dir: std::path::PathBuf,
}

impl SpoolWatch {
    fn start(dir: &Path) -> SpoolWatch {
        let max_bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let max_bytes = Arc::clone(&max_bytes);
            let stop = Arc::clone(&stop);
            let dir = dir.to_path_buf();
            move || {
                while !stop.load(Ordering::SeqCst) {
                    max_bytes.fetch_max(directory_bytes(&dir), Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        SpoolWatch {
            max_bytes,
            stop,
            thread,
            dir: dir.to_path_buf(),
        }
    }

    /// Asserts the spool directory is, and has been, within its bound.
    fn check(&self, when: &str) {
        let n_bytes = directory_bytes(&self.dir);
        let max_bytes = self
            .max_bytes
            .fetch_max(n_bytes, Ordering::SeqCst)
            .max(n_bytes);
        assert!(
            max_bytes <= SPOOL_MAX_BYTES + SPOOL_SLACK_BYTES,
            "{when}: the spool directory held {max_bytes} bytes, beyond {SPOOL_MAX_BYTES} + {SPOOL_SLACK_BYTES}"
        );
    }

    /// Stops polling and returns the largest size seen.
    fn stop(self) -> u64 {
        self.check("at the end");
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("spool watch thread");
        self.max_bytes.load(Ordering::SeqCst)
    }
}

/// A destination's spool on an 8 MiB tmpfs fills: its overflow is counted as `spool_full`, the other destination gets
/// every line, and once the destination is back the spool drains and `degraded` clears. `--features peers`: it needs
/// `unshare -rm` (a user and mount namespace, where mounting a tmpfs needs no privilege), which the relay runs under.
#[cfg(feature = "peers")]
#[tokio::test]
async fn disk_full_on_a_small_tmpfs_counts_spool_full_and_recovers() {
    use crate::support::{distinct_lines, send, Sink};

    let mount_point = tempfile::tempdir().expect("mount point");
    let mount_path = mount_point.path().to_str().expect("utf-8 path").to_string();
    let dead_address = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    };
    let live = Sink::start().await;
    let destinations = format!("{dead_address},{}", live.address());
    let mount_then_exec =
        format!("mount -t tmpfs -o size=8m tmpfs '{mount_path}' && exec \"$0\" \"$@\"");
    let mut relay = RelayProcess::start_under(
        &["unshare", "-rm", "sh", "-c", &mount_then_exec],
        &[
            "-destinations",
            &destinations,
            "-spool-dir",
            &mount_path,
            "-spool-mode",
            "overflow",
            "-queue-max-bytes",
            "1MiB",
            "-stats-addr",
            "127.0.0.1:0",
        ],
    );
    let stats_address = relay.stats_address();
    let has_spool = get_stats(stats_address).await["destinations"][0]["spool"].is_object();

    // About 16 MB of lines, twice what the tmpfs holds.
    let n_connections = 40;
    let n_lines_per_connection = 10_000;
    for connection in 0..n_connections {
        send(
            relay.listen_address,
            &distinct_lines(connection, n_lines_per_connection),
        )
        .await;
    }
    let n_lines = (n_connections * n_lines_per_connection) as u64;
    let full = settled_stats(stats_address, "the lines settle", |_| true).await;
    assert_eq!(
        live.n_lines() as u64,
        n_lines,
        "the live destination lost lines: {:#}",
        full["destinations"][1]
    );
    let full_counts = Counts::of(&full);
    assert_eq!(full_counts.received, n_lines);
    full_counts.assert_add_up("with the spool full");
    let dead = &full["destinations"][0];
    assert!(has_spool, "the dead destination has no spool");
    assert!(
        dead["dropped"]["spool_full"].as_u64().expect("spool_full") > 0,
        "a full tmpfs dropped nothing as spool_full: {dead:#}"
    );
    assert!(
        dead["spool"]["write_errors"]
            .as_u64()
            .expect("write_errors")
            > 0
    );
    assert_eq!(dead["spool"]["degraded"], true, "{dead:#}");

    let back = Sink::start_on(dead_address).await;
    let drained = settled_stats(
        stats_address,
        "the spool drains and recovers",
        |destination| {
            destination["queued_lines"] == 0
                && spool_lines(destination) == 0
                && destination["spool"]["degraded"] == false
        },
    )
    .await;
    let drained_counts = Counts::of(&drained);
    drained_counts.assert_add_up("once drained");
    let later = settled_stats(stats_address, "the counts stay put", |_| true).await;
    assert_eq!(
        later["destinations"][0]["spool"]["write_errors"],
        drained["destinations"][0]["spool"]["write_errors"],
        "spool writes failed after the disk had room again"
    );
    eventually("the returned destination reads what was sent", || {
        back.n_lines() as u64 >= drained_counts.sent - full_counts.sent
    })
    .await;
    relay.signal("TERM");
    assert_eq!(relay.wait().code(), Some(0));
}
