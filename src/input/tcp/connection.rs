//! One client connection: read, decode into batches, hand batches to the router.
//!
//! The handler is generic over [`AsyncRead`] so its timing rules (flush on idle, flush interval, idle and
//! partial-line timeouts) are tested over `tokio::io::duplex` with paused time. A batch is handed on when it is full,
//! when the socket has no more bytes ready (so an idle collectd connection never waits), and never later than
//! `flush_interval`.
//!
//! Invariants: memory per connection is bounded by `read_buffer_bytes` plus one batch, whatever the client sends
//! (over-long lines are skipped, not buffered), and what read buffers grow by beyond their initial size is bounded
//! for all connections together by `read_buffer_budget_bytes`; nothing a client sends can panic the handler or stall
//! another connection; every byte read ends up in a forwarded line or a counted rejection.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::batch::BatchBuilder;
use crate::config::ListenConfig;
use crate::line::{self, Decoder, Invalid, LineCounts, Rules};
use crate::router::Router;
use crate::stats::Registry;

/// How long a closing relay keeps reading what clients already sent.
pub const SHUTDOWN_READ_GRACE: Duration = Duration::from_secs(1);

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The client closed it.
    Eof,
    /// No complete line for `idle_timeout`.
    Idle,
    /// A partial line was older than `partial_line_timeout`.
    PartialTimeout,
    /// A read failed (reset by the client, for example).
    ReadError,
    /// The relay is shutting down.
    Shutdown,
}

/// What every connection of a listener shares.
#[derive(Debug, Clone)]
pub struct ConnectionContext {
    /// Listener settings: buffer sizes, batch limits, timeouts.
    pub config: ListenConfig,
    /// Line rules (the time in it is refreshed per read).
    pub rules: Rules,
    /// Where batches go.
    pub router: Arc<Router>,
    /// Counters.
    pub registry: Arc<Registry>,
    /// What read buffers may still grow by, shared by every connection.
    pub read_buffer_budget: Arc<ReadBufferBudget>,
}

/// Bytes the read buffers of all connections may grow by, together, beyond their initial size: the
/// `listen.read_buffer_budget_bytes` left. Without it, a thousand busy connections would each hold the largest
/// buffer (256 MiB at the defaults, 2.5 GiB at `max_connections`); with it, the first busy connections get large
/// reads and the others read in their initial size.
#[derive(Debug)]
pub struct ReadBufferBudget {
    available: AtomicUsize,
}

impl ReadBufferBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> ReadBufferBudget {
        ReadBufferBudget {
            available: AtomicUsize::new(bytes),
        }
    }

    /// Bytes not taken by any connection.
    pub fn available(&self) -> usize {
        self.available.load(Ordering::Relaxed)
    }

    /// Takes `bytes` if that many are left.
    fn take(&self, bytes: usize) -> bool {
        self.available
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |available| {
                available.checked_sub(bytes)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.available.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Reads `reader` until EOF, a timeout, an error or shutdown, forwarding every valid line.
pub async fn handle<R: AsyncRead + Unpin>(
    reader: R,
    context: &ConnectionContext,
    shutdown: &CancellationToken,
) -> Closed {
    let mut connection = Connection::new(reader, context, shutdown);
    let closed = connection.run().await;
    connection.finish(closed).await;
    closed
}

/// The state of one connection between reads: its buffer, decoder and batch, the counts not yet published, and the
/// clocks of its timeouts.
///
/// The read loop ([`Connection::run`]) is a sequence of named steps: take bytes that are ready
/// ([`Connection::read_ready`]); if there are none, hand the batch on and wait for bytes, a timeout or the end of
/// the shutdown grace ([`Connection::wait_for_bytes`]); decode what was read into batches
/// ([`Connection::process_read`]); and at the end count a trailing partial line and hand on the last batch
/// ([`Connection::finish`]).
struct Connection<'a, R> {
    reader: R,
    context: &'a ConnectionContext,
    shutdown: &'a CancellationToken,
    read_buffer: ReadBufferSize<'a>,
    /// Bytes read and not yet decoded: at most a partial line between reads.
    buf: Vec<u8>,
    decoder: Decoder,
    batch: BatchBuilder,
    /// Line counts not yet added to the shared counters.
    counts: LineCounts,
    clocks: Clocks,
    /// Set when shutdown starts: the connection reads until then, and closes.
    shutdown_deadline: Option<Instant>,
}

/// What a wait for bytes ended with.
enum Waited {
    /// The read completed (with bytes, EOF or an error).
    Read(io::Result<usize>),
    /// Shutdown started: the grace deadline is now set, look again.
    ShutdownStarted,
    /// The connection ends without a read.
    Closed(Closed),
}

/// The clocks of a connection's flush interval and timeouts.
#[derive(Debug)]
struct Clocks {
    /// When the batch being filled got its first read.
    batch_started: Instant,
    /// The last complete line, valid or not: the idle timeout runs from it.
    last_line_at: Instant,
    /// Since when the line now pending has been partial, if one is: the partial-line timeout runs from it.
    partial_since: Option<Instant>,
}

impl<'a, R: AsyncRead + Unpin> Connection<'a, R> {
    fn new(
        reader: R,
        context: &'a ConnectionContext,
        shutdown: &'a CancellationToken,
    ) -> Connection<'a, R> {
        let config = &context.config;
        let read_buffer = ReadBufferSize::new(
            config.read_buffer_bytes,
            context.rules.max_line_bytes,
            &context.read_buffer_budget,
        );
        let buf = Vec::with_capacity(read_buffer.target);
        Connection {
            reader,
            context,
            shutdown,
            read_buffer,
            buf,
            decoder: Decoder::new(context.rules),
            batch: BatchBuilder::new(config.batch_lines, config.batch_max_bytes),
            counts: LineCounts::default(),
            clocks: Clocks::new(Instant::now()),
            shutdown_deadline: None,
        }
    }

    /// Reads and decodes until the connection ends, and says why it did.
    async fn run(&mut self) -> Closed {
        loop {
            // Try the read without waiting first: if nothing is ready, hand the batch on before sleeping.
            let read_result = match self.read_ready() {
                Some(result) => result,
                None => match self.wait_for_bytes().await {
                    Waited::Read(result) => result,
                    Waited::ShutdownStarted => continue,
                    Waited::Closed(closed) => return closed,
                },
            };
            match read_result {
                Ok(0) => return Closed::Eof,
                Ok(n_read) => self.process_read(n_read).await,
                Err(_) => return Closed::ReadError,
            }
            if self.grace_over() {
                return Closed::Shutdown;
            }
        }
    }

    /// Reads what the socket has ready without waiting: `None` if nothing is.
    fn read_ready(&mut self) -> Option<io::Result<usize>> {
        self.read_buffer.make_room(&mut self.buf);
        let spare_before_read = self.buf.capacity() - self.buf.len();
        let result = poll_once(pin!(self.reader.read_buf(&mut self.buf)))?;
        if let Ok(n_read) = result {
            self.read_buffer.after_read(n_read, spare_before_read);
        }
        Some(result)
    }

    /// Hands the batch on, then waits for bytes, the idle or partial-line timeout, the start of shutdown, or the end
    /// of its grace period.
    async fn wait_for_bytes(&mut self) -> Waited {
        // Time the relay holds this connection while handing the batch on (pacing, `block`) is not the client's
        // idleness: push its clocks forward by it.
        let flush_started = Instant::now();
        flush(&mut self.batch, self.context).await;
        self.clocks.hold(flush_started.elapsed());
        let timeout = sleep_until_or_never(self.clocks.timeout_deadline(&self.context.config));
        // Once shutting down, keep reading what clients send for the grace period, then stop.
        let grace_over = sleep_until_or_never(self.shutdown_deadline);
        self.read_buffer.before_wait(&mut self.buf);
        let wait_started = Instant::now();
        let spare_before_wait = self.buf.capacity() - self.buf.len();
        let read_buffer = &mut self.read_buffer;
        let buf = &mut self.buf;
        let reader = &mut self.reader;
        let read = async {
            let result = reader.read_buf(buf).await;
            read_buffer.after_wait(wait_started.elapsed());
            result
        };
        tokio::select! {
            // Bytes that are ready win over a deadline that passed meanwhile.
            biased;
            result = read => {
                // The buffer may have shrunk while waiting: judge the read by the room it had.
                if let Ok(n_read) = result {
                    self.read_buffer.after_read(n_read, spare_before_wait);
                }
                Waited::Read(result)
            }
            () = timeout => {
                if self.clocks.partial_since.is_some() {
                    // A line being skipped for its length was counted as `line_len` already: only a real partial
                    // line counts as `partial_timeout`.
                    self.decoder.finish_timed_out(&self.buf, &mut self.counts);
                    return Waited::Closed(Closed::PartialTimeout);
                }
                let stats = &self.context.registry.relay;
                stats.connections_idle_closed.fetch_add(1, Ordering::Relaxed);
                Waited::Closed(Closed::Idle)
            }
            () = grace_over => Waited::Closed(Closed::Shutdown),
            () = self.shutdown.cancelled(), if self.shutdown_deadline.is_none() => {
                self.shutdown_deadline = Some(Instant::now() + SHUTDOWN_READ_GRACE);
                Waited::ShutdownStarted
            }
        }
    }

    /// Decodes the `n_read` bytes just read (and a partial line kept before them), hands on the batches that fill,
    /// and restarts the clocks the complete lines reset. Hands the batch on too if `flush_interval` has passed.
    async fn process_read(&mut self, n_read: usize) {
        let stats = &self.context.registry.relay;
        stats
            .bytes_received
            .fetch_add(n_read as u64, Ordering::Relaxed);
        let now = Instant::now();
        if self.batch.is_empty() {
            self.clocks.batch_started = now;
        }
        self.decoder.set_now(line::unix_now_secs());
        let n_completed = self.decode_into_batches().await;
        let line_pending = !self.buf.is_empty() || self.decoder.is_discarding();
        self.clocks
            .lines_processed(Instant::now(), n_completed, line_pending);
        if !self.batch.is_empty()
            && now.duration_since(self.clocks.batch_started) >= self.context.config.flush_interval
        {
            flush(&mut self.batch, self.context).await;
        }
    }

    /// Decodes every complete line of the buffer into the batch, handing each batch on as it fills, and removes those
    /// lines from the buffer. Returns the number of complete lines, valid or not.
    async fn decode_into_batches(&mut self) -> u64 {
        let mut consumed = 0;
        let mut n_completed = 0;
        loop {
            let start = consumed;
            consumed += self
                .decoder
                .decode(&self.buf[start..], &mut self.batch, &mut self.counts);
            if let Some((reason, range)) = self.decoder.take_rejected() {
                log_rejected(
                    reason,
                    &self.buf[start..][range],
                    &self.counts,
                    self.context,
                );
            }
            n_completed += self.counts.valid + self.counts.n_invalid();
            publish(&mut self.counts, self.context);
            if !self.batch.is_full() {
                break;
            }
            flush(&mut self.batch, self.context).await;
            self.clocks.batch_started = Instant::now();
        }
        self.buf.drain(..consumed);
        n_completed
    }

    /// True once the shutdown grace is over. Starts it if shutdown began while this connection was reading: a client
    /// that always has bytes ready never reaches the wait in [`Connection::wait_for_bytes`].
    fn grace_over(&mut self) -> bool {
        if self.shutdown_deadline.is_none() && self.shutdown.is_cancelled() {
            self.shutdown_deadline = Some(Instant::now() + SHUTDOWN_READ_GRACE);
        }
        self.shutdown_deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// Counts a trailing partial line (at EOF, on a read error, or cut off by shutdown), publishes the counts and
    /// hands on the last batch.
    async fn finish(&mut self, closed: Closed) {
        // A line being skipped for its length was counted already; `finish` counts nothing more for it.
        let partial_line_left = !self.buf.is_empty();
        match closed {
            Closed::Eof | Closed::ReadError => self.decoder.finish(&self.buf, &mut self.counts),
            Closed::Shutdown if partial_line_left => {
                self.decoder.finish(&self.buf, &mut self.counts);
            }
            Closed::Shutdown | Closed::Idle | Closed::PartialTimeout => {}
        }
        publish(&mut self.counts, self.context);
        flush(&mut self.batch, self.context).await;
    }
}

impl Clocks {
    fn new(now: Instant) -> Clocks {
        Clocks {
            batch_started: now,
            last_line_at: now,
            partial_since: None,
        }
    }

    /// Pushes the client's clocks forward by `held`, time the relay kept the connection waiting.
    fn hold(&mut self, held: Duration) {
        self.last_line_at += held;
        self.partial_since = self.partial_since.map(|since| since + held);
    }

    /// When the connection times out if no more bytes arrive: the partial-line timeout while a line is pending,
    /// otherwise the idle timeout; `None` if the one that applies is zero (disabled).
    fn timeout_deadline(&self, config: &ListenConfig) -> Option<Instant> {
        match self.partial_since {
            Some(since) if !config.partial_line_timeout.is_zero() => {
                Some(since + config.partial_line_timeout)
            }
            Some(_) => None,
            None if !config.idle_timeout.is_zero() => Some(self.last_line_at + config.idle_timeout),
            None => None,
        }
    }

    /// Updates the timeout clocks after a read was decoded at `at`, `n_completed` lines completed, and a partial (or
    /// over-long, being skipped) line is pending or not.
    fn lines_processed(&mut self, at: Instant, n_completed: u64, line_pending: bool) {
        if n_completed > 0 {
            // The idle timeout runs from the last complete line, valid or not.
            self.last_line_at = at;
        }
        // The partial-line clock measures the line now pending: it restarts whenever a line completes, so a busy
        // sender whose reads end mid-line is never taken for a slowloris.
        self.partial_since = if !line_pending {
            None
        } else if n_completed > 0 {
            Some(at)
        } else {
            Some(self.partial_since.unwrap_or(at))
        };
    }
}

/// Sleeps until `deadline`, or forever if there is none.
async fn sleep_until_or_never(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Adds local counts to the shared counters (lines now in the batch count as inbound) and resets them.
fn publish(counts: &mut LineCounts, context: &ConnectionContext) {
    let stats = &context.registry.relay;
    if counts.valid > 0 {
        stats
            .inbound_lines
            .fetch_add(counts.valid as i64, Ordering::Relaxed);
    }
    stats.add_line_counts(counts);
    *counts = LineCounts::default();
}

/// How a connection's read buffer grows and shrinks: it starts small, doubles up to `listen.read_buffer_bytes` while
/// reads fill it (a busy sender: large reads save syscalls, measured 0.91x CPU at 256 KiB against 64 KiB) and the
/// shared [`ReadBufferBudget`] has room, and drops back to its initial size before waiting when the connection's
/// previous wait was long (a sender that writes now and then, such as collectd: thousands of them must not each hold
/// a large buffer). What it grew by goes back to the budget when it shrinks or the connection ends.
#[derive(Debug)]
struct ReadBufferSize<'a> {
    /// Capacity to keep available for reads.
    target: usize,
    initial: usize,
    max: usize,
    /// True when the last wait for data lasted at least [`IDLE_WAIT`].
    was_idle: bool,
    /// Holds `target - initial` of it.
    budget: &'a ReadBufferBudget,
}

/// A wait for data at least this long marks a connection as mostly idle.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Free room a read buffer starts with beyond the longest partial line it may have to keep.
const INITIAL_READ_ROOM: usize = 16 * 1024;

impl<'a> ReadBufferSize<'a> {
    fn new(max: usize, max_line_bytes: usize, budget: &'a ReadBufferBudget) -> ReadBufferSize<'a> {
        // Room for the longest partial line the decoder keeps, plus room to read more after it.
        let initial = (max_line_bytes + 1 + INITIAL_READ_ROOM).min(max);
        ReadBufferSize {
            target: initial,
            initial,
            max,
            was_idle: false,
            budget,
        }
    }

    /// Ensures the buffer has its target capacity (a partial line kept at its start counts against it).
    fn make_room(&self, buf: &mut Vec<u8>) {
        if buf.capacity() < self.target {
            buf.reserve_exact(self.target - buf.len());
        }
    }

    /// A read that filled all the room it had means more is waiting: grow.
    fn after_read(&mut self, n_read: usize, spare: usize) {
        if n_read == spare && self.target < self.max {
            let grown = (self.target * 2).min(self.max);
            if self.budget.take(grown - self.target) {
                self.target = grown;
            }
        }
    }

    /// Before waiting for data: a connection that was idle last time and holds no partial line gives its large
    /// buffer back.
    fn before_wait(&mut self, buf: &mut Vec<u8>) {
        if self.was_idle && buf.is_empty() && buf.capacity() > self.initial {
            *buf = Vec::with_capacity(self.initial);
            self.shrink();
        }
    }

    fn shrink(&mut self) {
        self.budget.give_back(self.target - self.initial);
        self.target = self.initial;
    }

    fn after_wait(&mut self, waited: Duration) {
        self.was_idle = waited >= IDLE_WAIT;
    }
}

impl Drop for ReadBufferSize<'_> {
    fn drop(&mut self) {
        self.shrink();
    }
}

/// Longest sample of a refused line in a log message, after escaping.
const MAX_LOGGED_LINE_BYTES: usize = 400;

/// Logs one refused line, escaped and truncated, at most once a second for the whole relay.
fn log_rejected(reason: Invalid, line: &[u8], counts: &LineCounts, context: &ConnectionContext) {
    if !context.registry.relay.invalid_line_log.allow() {
        return;
    }
    // `escape_ascii` gives ASCII only, so any byte index is a char boundary.
    let mut escaped = line.escape_ascii().to_string();
    if escaped.len() > MAX_LOGGED_LINE_BYTES {
        escaped.truncate(MAX_LOGGED_LINE_BYTES - 3);
        escaped.push_str("...");
    }
    warn!(reason = reason.name(), line = %escaped, refused_in_read = counts.n_invalid(), "refused invalid line (sampled)");
}

async fn flush(batch: &mut BatchBuilder, context: &ConnectionContext) {
    if let Some(full) = batch.take() {
        // `dispatch` takes the lines out of "inbound" once they are in the queues, before it paces the sender.
        context.router.dispatch(full).await;
    }
}

/// Polls a future once without a real waker: `Some` if it completed at once. Used to ask "are bytes ready?" of a
/// cancel-safe read, which is then dropped if it was not.
fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Option<F::Output> {
    let mut context = Context::from_waker(Waker::noop());
    match future.poll(&mut context) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::pin::Pin;

    use tokio::io::{AsyncWriteExt, DuplexStream, ReadBuf};
    use tokio::sync::Notify;

    use super::*;
    use crate::config::{DestinationConfig, LineConfig, OverflowPolicy};
    use crate::destination::health::lag_watermark_bytes;
    use crate::destination::{Handle, Health, Queue, QueueLimits};
    use crate::router::RouterConfig;

    const LINE: &[u8] = b"a.b 1 1700000000\n";

    /// A connection context whose router feeds one queue without a writer, so tests can look at the batches.
    fn context(config: ListenConfig) -> (ConnectionContext, Arc<Queue>) {
        let registry = Arc::new(Registry::new(&["test:1".to_string()]));
        let defaults = DestinationConfig::default();
        let limits = QueueLimits {
            max_lines: defaults.queue_capacity_lines,
            max_bytes: 1 << 30,
            overflow: OverflowPolicy::DropNewest,
        };
        let room = Arc::new(Notify::new());
        let queue = Arc::new(Queue::new(
            limits,
            Arc::clone(&registry.destinations()[0]),
            Arc::clone(&room),
        ));
        let health = Arc::new(Health::new(
            Arc::clone(&registry.destinations()[0]),
            lag_watermark_bytes(limits.max_bytes),
            Arc::clone(&room),
        ));
        let router = Router::new(RouterConfig {
            destinations: vec![Handle {
                queue: Arc::clone(&queue),
                health,
            }],
            table: crate::router::table::RoutingTable::new(&crate::config::Config {
                destinations: vec!["127.0.0.1:2003".to_string()],
                ..crate::config::Config::default()
            })
            .unwrap(),
            rules: Rules::from_config(&LineConfig::default()),
            room,
            registry: Arc::clone(&registry),
            console_out: false,
            draining: CancellationToken::new(),
            stop: CancellationToken::new(),
        });
        let context = ConnectionContext {
            config,
            rules: Rules::from_config(&LineConfig::default()),
            router: Arc::new(router),
            registry,
            read_buffer_budget: Arc::new(ReadBufferBudget::new(64 << 20)),
        };
        (context, queue)
    }

    fn spawn(
        client: DuplexStream,
        context: ConnectionContext,
    ) -> tokio::task::JoinHandle<(Closed, Instant)> {
        tokio::spawn(async move {
            let closed = handle(client, &context, &CancellationToken::new()).await;
            (closed, Instant::now())
        })
    }

    fn queued_lines(queue: &Queue) -> i64 {
        queue.stats().queued_lines.load(Ordering::Relaxed)
    }

    async fn settle() {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_line_is_handed_on_as_soon_as_the_connection_has_nothing_more_ready() {
        let (context, queue) = context(ListenConfig::default());
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let started = Instant::now();
        let connection = spawn(server, context);
        client.write_all(LINE).await.unwrap();
        settle().await;
        assert_eq!(queued_lines(&queue), 1);
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "the batch waited for a timer"
        );
        drop(client);
        assert_eq!(connection.await.unwrap().0, Closed::Eof);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_after_idle_timeout_from_its_last_complete_line() {
        let (context, queue) = context(ListenConfig::default());
        let registry = Arc::clone(&context.registry);
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let started = Instant::now();
        let connection = spawn(server, context);
        client.write_all(LINE).await.unwrap();
        tokio::time::sleep(Duration::from_secs(300)).await;
        client.write_all(LINE).await.unwrap();
        let (closed, at) = connection.await.unwrap();
        assert_eq!(closed, Closed::Idle);
        assert_eq!(at - started, Duration::from_secs(300 + 600));
        assert_eq!(queued_lines(&queue), 2);
        assert_eq!(
            registry
                .relay
                .connections_idle_closed
                .load(Ordering::Relaxed),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_line_older_than_its_timeout_is_dropped_and_counted() {
        let (context, queue) = context(ListenConfig::default());
        let registry = Arc::clone(&context.registry);
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let started = Instant::now();
        let connection = spawn(server, context);
        client
            .write_all(b"a.b 1 1700000000\nslow.loris 1 17")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        // More of the same partial line does not restart its clock.
        client.write_all(b"000").await.unwrap();
        let (closed, at) = connection.await.unwrap();
        assert_eq!(closed, Closed::PartialTimeout);
        assert_eq!(at - started, Duration::from_secs(30));
        assert_eq!(queued_lines(&queue), 1);
        let partial_timeouts = &registry.relay.lines_invalid[Invalid::PartialTimeout as usize];
        assert_eq!(partial_timeouts.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_over_long_line_cut_by_the_partial_line_timeout_is_counted_once_as_line_len() {
        // Regression: the timeout counted `partial_timeout` for a line already counted as `line_len`.
        let (context, queue) = context(ListenConfig::default());
        let registry = Arc::clone(&context.registry);
        let max_line_bytes = context.rules.max_line_bytes;
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let connection = spawn(server, context);
        client.write_all(b"a.b 1 1700000000\n").await.unwrap();
        client
            .write_all(&vec![b'x'; max_line_bytes + 1])
            .await
            .unwrap();
        let (closed, _) = connection.await.unwrap();
        assert_eq!(closed, Closed::PartialTimeout);
        assert_eq!(queued_lines(&queue), 1);
        let invalid =
            |reason: Invalid| registry.relay.lines_invalid[reason as usize].load(Ordering::Relaxed);
        assert_eq!(invalid(Invalid::LineLen), 1);
        assert_eq!(invalid(Invalid::PartialTimeout), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sender_whose_reads_always_end_mid_line_is_not_taken_for_a_slowloris() {
        // Regression: the partial-line clock kept the time of the first partial line while later lines completed,
        // so a steady sender was cut off after `partial_line_timeout`.
        let (context, queue) = context(ListenConfig::default());
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let connection = spawn(server, context);
        client
            .write_all(b"a.b 1 1700000000\nc.d 1 17")
            .await
            .unwrap();
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_secs(10)).await;
            client.write_all(b"00000000\nc.d 1 17").await.unwrap();
        }
        settle().await;
        assert!(!connection.is_finished(), "closed a steady sender");
        assert_eq!(queued_lines(&queue), 7);
        client.write_all(b"00000000\n").await.unwrap();
        drop(client);
        assert_eq!(connection.await.unwrap().0, Closed::Eof);
        assert_eq!(queued_lines(&queue), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_timeouts_keep_a_quiet_connection_open() {
        let config = ListenConfig {
            idle_timeout: Duration::ZERO,
            partial_line_timeout: Duration::ZERO,
            ..ListenConfig::default()
        };
        let (context, _queue) = context(config);
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let connection = spawn(server, context);
        client.write_all(b"partial").await.unwrap();
        tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
        assert!(!connection.is_finished());
        drop(client);
        assert_eq!(connection.await.unwrap().0, Closed::Eof);
    }

    #[tokio::test(start_paused = true)]
    async fn at_shutdown_a_connection_reads_for_the_grace_period_then_closes() {
        let (context, queue) = context(ListenConfig::default());
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let shutdown = CancellationToken::new();
        let connection = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { (handle(server, &context, &shutdown).await, Instant::now()) }
        });
        client.write_all(LINE).await.unwrap();
        settle().await;
        let signalled = Instant::now();
        shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(500)).await;
        client.write_all(LINE).await.unwrap();
        let (closed, at) = connection.await.unwrap();
        assert_eq!(closed, Closed::Shutdown);
        assert_eq!(at - signalled, SHUTDOWN_READ_GRACE);
        assert_eq!(
            queued_lines(&queue),
            2,
            "the line sent during the grace period was lost"
        );
    }

    #[test]
    fn a_read_buffer_doubles_while_reads_fill_it_and_shrinks_after_an_idle_wait() {
        let budget = ReadBufferBudget::new(1 << 20);
        let mut size = ReadBufferSize::new(256 * 1024, 16 * 1024, &budget);
        let initial = 16 * 1024 + 1 + INITIAL_READ_ROOM;
        assert_eq!(size.target, initial);
        size.after_read(100, initial);
        assert_eq!(size.target, initial, "a short read does not grow it");
        for _ in 0..10 {
            let target = size.target;
            size.after_read(target, target);
        }
        assert_eq!(
            size.target,
            256 * 1024,
            "it stops at the configured largest size"
        );
        let mut buf = Vec::new();
        size.make_room(&mut buf);
        assert!(buf.capacity() >= 256 * 1024);

        size.before_wait(&mut buf);
        assert!(
            buf.capacity() >= 256 * 1024,
            "a busy connection keeps its buffer"
        );
        size.after_wait(IDLE_WAIT);
        buf.push(b'x');
        size.before_wait(&mut buf);
        assert!(
            buf.capacity() >= 256 * 1024,
            "a buffer holding a partial line is kept"
        );
        buf.clear();
        size.before_wait(&mut buf);
        assert_eq!(size.target, initial);
        assert!(
            buf.capacity() < 256 * 1024,
            "an idle connection gives its large buffer back"
        );
        assert_eq!(budget.available(), 1 << 20, "what it grew by went back");
    }

    #[test]
    fn read_buffers_grow_only_by_what_the_shared_budget_has_left() {
        let initial = 16 * 1024 + 1 + INITIAL_READ_ROOM;
        let budget = ReadBufferBudget::new(256 * 1024 - initial);
        let fill = |size: &mut ReadBufferSize| {
            for _ in 0..10 {
                let target = size.target;
                size.after_read(target, target);
            }
        };
        let mut first = ReadBufferSize::new(256 * 1024, 16 * 1024, &budget);
        fill(&mut first);
        assert_eq!(
            first.target,
            256 * 1024,
            "the first busy connection grows fully"
        );
        assert_eq!(budget.available(), 0);

        let mut second = ReadBufferSize::new(256 * 1024, 16 * 1024, &budget);
        fill(&mut second);
        assert_eq!(second.target, initial, "nothing was left for the second");

        drop(first);
        assert_eq!(
            budget.available(),
            256 * 1024 - initial,
            "a closed connection gives back"
        );
        fill(&mut second);
        assert_eq!(second.target, 256 * 1024);
    }

    /// A client that always has another line ready, until a deadline in real time.
    struct Firehose {
        until: std::time::Instant,
    }

    impl AsyncRead for Firehose {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if std::time::Instant::now() < self.until {
                buf.put_slice(LINE);
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_is_handed_on_after_flush_interval_even_if_the_client_never_pauses() {
        let config = ListenConfig {
            flush_interval: Duration::from_millis(50),
            batch_lines: usize::MAX,
            batch_max_bytes: 16 * 1024 * 1024,
            ..ListenConfig::default()
        };
        let (context, queue) = context(config);
        let firehose = Firehose {
            until: std::time::Instant::now() + Duration::from_millis(600),
        };
        assert_eq!(
            handle(firehose, &context, &CancellationToken::new()).await,
            Closed::Eof
        );
        let mut batches = Vec::new();
        assert!(queue.pop_into(&mut batches, usize::MAX).await);
        // Without the interval the whole stream would be one batch, handed on at EOF.
        assert!(batches.len() >= 3, "only {} batches", batches.len());
    }
}
