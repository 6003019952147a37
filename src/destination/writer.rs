//! The writer: one task per destination that keeps a TCP connection up and writes queued batches to it.
//!
//! It takes batches from its [`Queue`] into its [`InFlight`] and writes them with vectored writes, continuing each
//! short write where it stopped. A line leaves the queue ([`Queue::complete`]) only once the destination's kernel
//! acknowledged it ([`unacked_bytes`], sampled after every write and every [`ACK_POLL_INTERVAL`] while bytes are
//! outstanding), so until then it counts against the queue's bounds. When the connection fails, everything not
//! acknowledged goes back to the head of the queue, from a line boundary, and is sent again after the reconnect: the
//! lines never written, the one a failed write cut, and the lines written but unacknowledged, which a black-holed path
//! or a dead host would otherwise lose. Only those last ones can reach the destination twice; they are counted in
//! `resent_lines`. Lines already acknowledged are never sent again.
//!
//! Progress is a write that took bytes or an acknowledgement that covered more bytes: a destination that reads slowly
//! is making progress even while a write waits for room in the send buffer. Only `write_timeout` without either, while
//! bytes are outstanding, ends the connection (a destination that accepts and never reads); a destination whose
//! kernel stops acknowledging altogether (dead host, black-holed path) is failed sooner by the kernel itself
//! (`tcp_user_timeout`, see [`super::connect`]). Connects ([`connect`]) are retried with jittered exponential backoff
//! up to `retry_interval`. While idle it watches the socket so that a destination that closes is noticed before the
//! next write, not by it.
//!
//! Invariants: a writer touches only its own queue and counters, so a dead, stalled or slow destination costs the
//! others nothing; a line handed back is whole, and an acknowledged line is never handed back; the writer ends when
//! its queue is closed and every line was acknowledged, or at once when told to stop (handing back what it holds).

use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::backoff::Backoff;
use super::connect::{connect, ConnectSettings};
use super::health::Health;
use super::in_flight::InFlight;
use super::queue::Queue;
use super::unacked::unacked_bytes;
use crate::batch::Batch;

/// Bytes taken from the queue for one round of writes: large enough for few syscalls, small enough to stay in cache.
pub const WRITE_CHUNK_BYTES: usize = 256 * 1024;

/// How often the writer asks the kernel what the destination acknowledged while bytes are outstanding and no write
/// completes: acknowledgements are what free queue room and show a slow destination alive. Short next to the 1 s in
/// which a destination must make progress to pace senders, and at most 100 `ioctl`s a second per waiting writer.
pub const ACK_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// First reconnect delay; doubles up to `retry_interval`.
const BACKOFF_BASE: Duration = Duration::from_millis(100);

/// Most slices handed to one `writev` (Linux's `IOV_MAX` is 1024).
const MAX_IOVECS: usize = 512;

/// Connection and timing settings of a writer.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// The destination's identity (`host:port[=instance]`), its name in logs.
    pub name: String,
    /// Where to connect and the socket options of the connection.
    pub connect: ConnectSettings,
    /// Longest time without a write taking bytes or the destination acknowledging more, while lines are
    /// outstanding, before the connection is given up.
    pub write_timeout: Duration,
    /// Longest delay between reconnect attempts.
    pub retry_interval: Duration,
}

/// The writer's view of a connection: a byte stream that can tell how much of what was written its peer has not
/// acknowledged yet, and notice the peer closing while nothing is written. [`TcpStream`] is the one real link; tests
/// use fakes that fail at a chosen byte.
pub trait Link: AsyncWrite + Unpin + Send {
    /// Bytes written that the peer has not acknowledged yet, sent or not.
    ///
    /// # Errors
    ///
    /// The connection's error; the writer then reconnects.
    fn unacked_bytes(&self) -> io::Result<usize>;

    /// Resolves, with the reason, when the peer closes the connection or it fails. Polled only while the writer has
    /// nothing to write.
    fn closed(&self) -> impl Future<Output = io::Error> + Send + '_;
}

/// Why a connection ended.
#[derive(Debug)]
enum Ended {
    /// The queue is closed and every line acknowledged: the writer is done.
    Drained,
    /// Told to stop at once; what was in flight was handed back.
    Stopped,
    /// The connection failed; what was in flight was handed back. Reconnect.
    Failed(io::Error),
}

/// What a writer shares with the router: its destination's queue, which it drains, and its health, which it reports.
#[derive(Debug, Clone, Copy)]
struct Shared<'a> {
    queue: &'a Queue,
    health: &'a Health,
}

/// Runs the writer until its queue is closed and drained, or `stop` is cancelled, reporting into `health`.
pub async fn run(
    queue: Arc<Queue>,
    health: Arc<Health>,
    settings: WriterSettings,
    stop: CancellationToken,
) {
    let shared = Shared {
        queue: &queue,
        health: &health,
    };
    let stats = Arc::clone(queue.stats());
    let mut backoff = match Backoff::try_new(
        BACKOFF_BASE.min(settings.retry_interval),
        settings.retry_interval,
    ) {
        Ok(backoff) => backoff,
        Err(err) => unreachable!("retry_interval is validated to be more than zero: {err}"),
    };
    let mut was_connected = false;
    loop {
        if queue.is_drained() {
            return;
        }
        let Some(connected) = unless_done(&queue, &stop, connect(&settings.connect)).await else {
            return;
        };
        let mut stream = match connected {
            Ok(stream) => stream,
            Err(err) => {
                let n_failures = stats.connect_failures.fetch_add(1, Ordering::Relaxed) + 1;
                let delay = backoff.next_delay();
                // The first failure and then every tenth: a destination down for hours must not flood the log.
                if n_failures == 1 || was_connected || n_failures.is_multiple_of(10) {
                    warn!(destination = %settings.name, error = %err, retry_in = ?delay, failures = n_failures, "cannot connect to destination");
                }
                was_connected = false;
                if unless_done(&queue, &stop, tokio::time::sleep(delay))
                    .await
                    .is_none()
                {
                    return;
                }
                continue;
            }
        };
        stats.connects.fetch_add(1, Ordering::Relaxed);
        health.set_connected(true);
        health.mark_progress();
        info!("Connected to destination: {}", settings.name);
        was_connected = true;
        let mut wrote_any = false;
        let ended = write_until_error(
            &mut stream,
            shared,
            settings.write_timeout,
            &stop,
            &mut wrote_any,
        )
        .await;
        health.set_connected(false);
        match ended {
            Ended::Drained | Ended::Stopped => return,
            Ended::Failed(err) => {
                stats.disconnects.fetch_add(1, Ordering::Relaxed);
                // A connection that carried data earns a quick reconnect; one that failed before its first write
                // (a destination that accepts and closes at once) keeps backing off up to `retry_interval`.
                if wrote_any {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                warn!(destination = %settings.name, error = %err, retry_in = ?delay, "lost connection to destination, reconnecting");
                if unless_done(&queue, &stop, tokio::time::sleep(delay))
                    .await
                    .is_none()
                {
                    return;
                }
            }
        }
    }
}

/// Writes every byte of `batches` with vectored writes; each write that makes no progress within `write_timeout`
/// fails with `TimedOut`. `write_all` semantics: a short write continues where it stopped. Public, and generic over
/// the stream, for the bench of what the writer costs per batch; the writer itself also waits for acknowledgements.
///
/// # Errors
///
/// The stream's write error, `TimedOut`, or `WriteZero` when the stream accepts no bytes.
pub async fn write_all_batches<W: AsyncWrite + Unpin>(
    stream: &mut W,
    batches: &[Batch],
    write_timeout: Duration,
) -> io::Result<()> {
    let mut in_flight = InFlight::new();
    in_flight.extend(batches.iter().cloned());
    while in_flight.has_unwritten() {
        let n_written = tokio::time::timeout(
            write_timeout,
            stream.write_vectored(&in_flight.unwritten(MAX_IOVECS)),
        )
        .await
        .map_err(|_| timed_out())??;
        if n_written == 0 {
            return Err(write_zero());
        }
        in_flight.advance(n_written);
    }
    Ok(())
}

impl Link for TcpStream {
    fn unacked_bytes(&self) -> io::Result<usize> {
        unacked_bytes(self)
    }

    fn closed(&self) -> impl Future<Output = io::Error> + Send + '_ {
        peer_closed(self)
    }
}

/// Runs `work` unless the writer is told to stop or its queue is closed and drained first (then `None`): what the
/// writer does while it is not connected (connecting, backing off).
async fn unless_done<F: std::future::Future>(
    queue: &Queue,
    stop: &CancellationToken,
    work: F,
) -> Option<F::Output> {
    tokio::select! {
        biased;
        () = stop.cancelled() => None,
        () = wait_drained(queue) => None,
        output = work => Some(output),
    }
}

/// Resolves when the queue is closed with nothing left in it (shutdown while the destination is unreachable, but
/// there is nothing to deliver); never resolves while lines wait.
async fn wait_drained(queue: &Queue) {
    queue.closed().await;
    if !queue.is_drained() {
        std::future::pending::<()>().await;
    }
}

/// Writes from the queue to one connection until it fails, the queue is drained, or the writer is told to stop.
/// Whatever is still unacknowledged at the end goes back to the head of the queue; if the connection failed, the
/// lines of it that were wholly written are counted in `resent_lines`.
async fn write_until_error<L: Link>(
    link: &mut L,
    shared: Shared<'_>,
    write_timeout: Duration,
    stop: &CancellationToken,
    wrote_any: &mut bool,
) -> Ended {
    let mut in_flight = InFlight::new();
    let mut acknowledged = Vec::new();
    let queue = shared.queue;
    let ended = write_in_flight(
        link,
        shared,
        write_timeout,
        stop,
        &mut in_flight,
        &mut acknowledged,
        wrote_any,
    )
    .await;
    // A last look at what the destination acknowledged: `snd_una` only moves forward, so even on a failed socket
    // this never counts unacknowledged bytes as delivered.
    if let Ok(n_unacked) = link.unacked_bytes() {
        acknowledge(queue, &mut in_flight, n_unacked, &mut acknowledged);
    }
    let mut handed_back = Vec::new();
    let n_lines_written = in_flight.hand_back(&mut handed_back);
    queue.unpop(&mut handed_back);
    // Nothing is with the kernel any more: what was handed back is lag again.
    shared.health.set_unacked_bytes(0);
    if matches!(ended, Ended::Failed(_)) && n_lines_written > 0 {
        queue
            .stats()
            .resent_lines
            .fetch_add(n_lines_written, Ordering::Relaxed);
    }
    ended
}

/// The loop of [`write_until_error`]: returns with what is still unacknowledged left in `in_flight`.
async fn write_in_flight<L: Link>(
    link: &mut L,
    shared: Shared<'_>,
    write_timeout: Duration,
    stop: &CancellationToken,
    in_flight: &mut InFlight,
    acknowledged: &mut Vec<Batch>,
    wrote_any: &mut bool,
) -> Ended {
    let Shared { queue, health } = shared;
    let mut ack_poll = tokio::time::interval(ACK_POLL_INTERVAL);
    ack_poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut popped = Vec::new();
    // Bytes written on this connection, and of those the most the destination acknowledged so far.
    let mut n_written_total: u64 = 0;
    let mut n_acked_total: u64 = 0;
    let mut last_progress = Instant::now();
    // Set once the queue is closed and empty and the write side shut: the writer waits for the last
    // acknowledgements.
    let mut draining = false;
    loop {
        if in_flight.has_unwritten() {
            let slices = in_flight.unwritten(MAX_IOVECS);
            let written = tokio::select! {
                biased;
                () = stop.cancelled() => return Ended::Stopped,
                written = link.write_vectored(&slices) => Some(written),
                // A write waiting for room while the destination acknowledges slowly is still progress.
                _ = ack_poll.tick() => None,
            };
            drop(slices);
            match written {
                Some(Ok(0)) => return Ended::Failed(write_zero()),
                Some(Ok(n_written)) => {
                    in_flight.advance(n_written);
                    n_written_total += n_written as u64;
                    last_progress = Instant::now();
                    health.mark_progress();
                    *wrote_any = true;
                }
                Some(Err(err)) => return Ended::Failed(err),
                None => {}
            }
        } else if draining {
            if in_flight.is_empty() {
                return Ended::Drained;
            }
            let closed = tokio::select! {
                biased;
                () = stop.cancelled() => return Ended::Stopped,
                closed = link.closed() => Some(closed),
                _ = ack_poll.tick() => None,
            };
            if let Some(closed) = closed {
                // A destination may close once it read everything; if it closed before acknowledging all of it,
                // what it did not acknowledge is sent again.
                if let Ok(n_unacked) = link.unacked_bytes() {
                    acknowledge(queue, in_flight, n_unacked, acknowledged);
                }
                if in_flight.is_empty() {
                    return Ended::Drained;
                }
                return Ended::Failed(closed);
            }
        } else {
            if in_flight.is_empty() {
                // Nothing to write: the destination is keeping up while the writer waits for lines.
                health.mark_progress();
            }
            let popped_any = tokio::select! {
                biased;
                () = stop.cancelled() => return Ended::Stopped,
                closed = link.closed() => return Ended::Failed(closed),
                popped_any = queue.pop_into(&mut popped, WRITE_CHUNK_BYTES) => Some(popped_any),
                _ = ack_poll.tick(), if !in_flight.is_empty() => None,
            };
            match popped_any {
                Some(true) => {
                    if in_flight.is_empty() {
                        // Time spent with nothing to write is not a stall.
                        last_progress = Instant::now();
                        health.mark_progress();
                    }
                    in_flight.extend(popped.drain(..));
                    // Straight to the write, which asks the kernel about acknowledgements after it: asking here too
                    // would double the `ioctl`s for nothing.
                    continue;
                }
                Some(false) => {
                    // Drained: say goodbye cleanly so the destination sees EOF after the last line, then wait
                    // for the acknowledgement of the last lines.
                    draining = true;
                    let shut = tokio::time::timeout(write_timeout, link.shutdown()).await;
                    if in_flight.is_empty() {
                        return Ended::Drained;
                    }
                    match shut {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => return Ended::Failed(err),
                        Err(_) => return Ended::Failed(timed_out()),
                    }
                }
                None => {}
            }
        }

        let n_unacked = match link.unacked_bytes() {
            Ok(n_unacked) => n_unacked,
            Err(err) => return Ended::Failed(err),
        };
        acknowledge(queue, in_flight, n_unacked, acknowledged);
        health.set_unacked_bytes(n_unacked);
        let n_acked_now = n_written_total.saturating_sub(n_unacked as u64);
        if n_acked_now > n_acked_total {
            n_acked_total = n_acked_now;
            last_progress = Instant::now();
            health.mark_progress();
        }
        if !in_flight.is_empty() && last_progress.elapsed() >= write_timeout {
            queue.stats().write_timeouts.fetch_add(1, Ordering::Relaxed);
            return Ended::Failed(timed_out());
        }
    }
}

/// Completes the lines in flight that the destination acknowledged, given the kernel's count of unacknowledged
/// bytes. Everything written after the first byte in flight is in flight, so the rest of what was written is
/// acknowledged.
fn acknowledge(
    queue: &Queue,
    in_flight: &mut InFlight,
    n_unacked: usize,
    acknowledged: &mut Vec<Batch>,
) {
    // The kernel's count can exceed ours by the FIN, which takes a sequence number.
    let n_acked = in_flight.n_written().saturating_sub(n_unacked);
    in_flight.acknowledge(n_acked, acknowledged);
    if !acknowledged.is_empty() {
        queue.complete(acknowledged);
        acknowledged.clear();
    }
}

/// Resolves when the idle connection turns out to be closed by the destination (EOF or error). Destinations do not
/// talk back in the plaintext protocol, so anything they send is read and ignored.
async fn peer_closed(stream: &TcpStream) -> io::Error {
    let mut scratch = [0u8; 512];
    loop {
        if let Err(err) = stream.readable().await {
            return err;
        }
        match stream.try_read(&mut scratch) {
            Ok(0) => {
                return io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "destination closed the connection",
                )
            }
            Ok(_) => continue,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return err,
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "no write progress and no acknowledgement within write_timeout",
    )
}

fn write_zero() -> io::Error {
    io::Error::new(io::ErrorKind::WriteZero, "destination accepted no bytes")
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use tokio::sync::Notify;

    use super::*;
    use crate::config::OverflowPolicy;
    use crate::destination::QueueLimits;
    use crate::stats::DestinationStats;

    /// A link that takes `capacity` bytes, at most `max_write` per write, and then fails every write and the
    /// shutdown; its peer has acknowledged all but the last `window` bytes taken.
    struct FailingLink {
        taken: Vec<u8>,
        capacity: usize,
        max_write: usize,
        window: usize,
    }

    impl AsyncWrite for FailingLink {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            slices: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let room = self.capacity - self.taken.len();
            if room == 0 {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            let mut n_left = room.min(self.max_write);
            let mut n_taken = 0;
            for slice in slices {
                let n = n_left.min(slice.len());
                self.taken.extend_from_slice(&slice[..n]);
                n_left -= n;
                n_taken += n;
            }
            Poll::Ready(Ok(n_taken))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
        }
    }

    impl Link for FailingLink {
        fn unacked_bytes(&self) -> io::Result<usize> {
            Ok(self.taken.len().min(self.window))
        }

        fn closed(&self) -> impl Future<Output = io::Error> + Send + '_ {
            std::future::pending()
        }
    }

    fn batch(text: &str) -> Batch {
        Batch::new(
            Bytes::copy_from_slice(text.as_bytes()),
            text.matches('\n').count() as u32,
        )
    }

    fn n_lines(bytes: &[u8]) -> u64 {
        memchr::memchr_iter(b'\n', bytes).count() as u64
    }

    /// Writes `batches` to a link that fails after `capacity` bytes and checks that what the queue counts as sent,
    /// plus what it holds again, is exactly the input: split after a whole line, nothing twice, nothing missing, and
    /// only the written, unacknowledged lines counted as resent.
    async fn check(batches: &[Batch], capacity: usize, max_write: usize, window: usize) {
        let input: Vec<u8> = batches.iter().flat_map(|b| b.bytes().to_vec()).collect();
        let limits = QueueLimits {
            max_lines: 1000,
            max_bytes: 1 << 20,
            overflow: OverflowPolicy::DropNewest,
        };
        let queue = Queue::new(
            limits,
            DestinationStats::new("test:1"),
            Arc::new(Notify::new()),
        );
        for batch in batches {
            queue.push(batch.clone());
        }
        queue.close();
        let mut link = FailingLink {
            taken: Vec::new(),
            capacity,
            max_write,
            window,
        };
        let mut wrote_any = false;
        let stop = CancellationToken::new();
        let health = Health::new(Arc::clone(queue.stats()), 1 << 20, Arc::new(Notify::new()));
        let shared = Shared {
            queue: &queue,
            health: &health,
        };
        let ended = write_until_error(
            &mut link,
            shared,
            Duration::from_secs(1),
            &stop,
            &mut wrote_any,
        )
        .await;
        let case =
            format!("capacity {capacity}, max_write {max_write}, window {window}: {ended:?}");

        assert_eq!(link.taken, input[..capacity], "{case}");
        let n_acked = capacity - capacity.min(window);
        let n_sent_bytes = input[..n_acked]
            .iter()
            .rposition(|&byte| byte == b'\n')
            .map_or(0, |last_lf| last_lf + 1);
        let stats = queue.stats();
        assert_eq!(
            stats.sent_bytes.load(Ordering::Relaxed),
            n_sent_bytes as u64,
            "{case}"
        );
        assert_eq!(
            stats.sent_lines.load(Ordering::Relaxed),
            n_lines(&input[..n_sent_bytes]),
            "{case}"
        );
        assert_eq!(
            stats.resent_lines.load(Ordering::Relaxed),
            n_lines(&input[n_sent_bytes..capacity]),
            "{case}"
        );
        let mut handed_back = Vec::new();
        if n_sent_bytes < input.len() {
            assert!(queue.pop_into(&mut handed_back, usize::MAX).await, "{case}");
        }
        let handed_back: Vec<u8> = handed_back
            .iter()
            .flat_map(|b| b.bytes().to_vec())
            .collect();
        assert_eq!(handed_back, input[n_sent_bytes..], "{case}");
        assert_eq!(
            stats.queued_lines.load(Ordering::Relaxed) as u64,
            n_lines(&input[n_sent_bytes..]),
            "{case}"
        );
    }

    #[tokio::test]
    async fn a_failed_write_hands_back_exactly_what_was_not_acknowledged_from_a_line_boundary() {
        let batches = [
            batch("a.b 1 1\n"),
            batch("c.dd 22 2\neee.f 3 3\n"),
            batch("g 4 44\nh 5 5\ni.j.k 6 6\n"),
        ];
        let n_bytes: usize = batches.iter().map(Batch::len).sum();
        for capacity in 0..=n_bytes {
            for max_write in [1, 3, usize::MAX] {
                for window in [0, 5, 1000] {
                    check(&batches, capacity, max_write, window).await;
                }
            }
        }
    }
}
