//! The writer: one task per destination that keeps a TCP connection up and writes queued batches to it.
//!
//! It takes many batches at once from its [`Queue`] and writes them with vectored writes until every byte is out,
//! each write bounded by `write_timeout`, so a destination that accepts but never reads becomes a reconnect instead
//! of a hang. On any error the batches not confirmed written go back to the head of the queue (at-least-once: a
//! destination may see a few lines twice, never a gap while the queue had room). Connects are bounded by
//! `connect_timeout` and retried with jittered exponential backoff up to `retry_interval`; host names are resolved
//! on every connect. While idle it watches the socket so that a destination that closes is noticed before the next
//! write, not by it.
//!
//! Invariants: a writer touches only its own queue and counters, so a dead, stalled or slow destination costs the
//! others nothing; it ends when its queue is closed and empty, or at once when told to stop (handing back what it
//! holds).

use std::io::{self, IoSlice};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::backoff::Backoff;
use super::queue::Queue;
use crate::batch::Batch;

/// Bytes taken from the queue for one round of writes: large enough for few syscalls, small enough to stay in cache.
pub const WRITE_CHUNK_BYTES: usize = 256 * 1024;

/// First reconnect delay; doubles up to `retry_interval`.
const BACKOFF_BASE: Duration = Duration::from_millis(100);

/// Most slices handed to one `writev` (Linux's `IOV_MAX` is 1024).
const MAX_IOVECS: usize = 512;

/// Connection and timing settings of a writer.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// The destination's identity (`host:port[=instance]`), its name in logs.
    pub name: String,
    /// `host:port`, resolved on every connect.
    pub address: String,
    /// Bound on one connect attempt.
    pub connect_timeout: Duration,
    /// Bound on one write that makes no progress.
    pub write_timeout: Duration,
    /// Longest delay between reconnect attempts.
    pub retry_interval: Duration,
}

/// Why a connection ended.
#[derive(Debug)]
enum Ended {
    /// The queue is closed and empty: the writer is done.
    Drained,
    /// Told to stop at once; batches were handed back.
    Stopped,
    /// The connection failed; reconnect.
    Failed(io::Error),
}

/// Runs the writer until its queue is closed and drained, or `stop` is cancelled.
pub async fn run(queue: Arc<Queue>, settings: WriterSettings, stop: CancellationToken) {
    let stats = Arc::clone(queue.stats());
    let mut backoff = match Backoff::try_new(
        BACKOFF_BASE.min(settings.retry_interval),
        settings.retry_interval,
    ) {
        Ok(backoff) => backoff,
        Err(err) => unreachable!("retry_interval is validated to be more than zero: {err}"),
    };
    let mut batches = Vec::new();
    let mut was_connected = false;
    loop {
        if queue.is_drained() {
            return;
        }
        let Some(connected) = unless_done(&queue, &stop, connect(&settings)).await else {
            return;
        };
        let stream = match connected {
            Ok(stream) => stream,
            Err(err) => {
                let n_failures = stats.connect_failures.fetch_add(1, Ordering::Relaxed) + 1;
                let delay = backoff.next_delay();
                // The first failure and then every tenth: a destination down for hours must not flood the log.
                if n_failures == 1 || was_connected || n_failures % 10 == 0 {
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
        stats.connected.store(true, Ordering::Relaxed);
        queue.mark_progress();
        info!("Connected to destination: {}", settings.name);
        was_connected = true;
        let mut wrote_any = false;
        let ended = write_until_error(
            stream,
            &queue,
            &settings,
            &stop,
            &mut batches,
            &mut wrote_any,
        )
        .await;
        stats.connected.store(false, Ordering::Relaxed);
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

async fn connect(settings: &WriterSettings) -> io::Result<TcpStream> {
    let attempt = async {
        // Resolving here, not once at start, follows a destination whose address changes.
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
    // Batches are whole; Nagle would only delay the last segment of each write.
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn write_until_error(
    mut stream: TcpStream,
    queue: &Queue,
    settings: &WriterSettings,
    stop: &CancellationToken,
    batches: &mut Vec<Batch>,
    wrote_any: &mut bool,
) -> Ended {
    loop {
        let popped = tokio::select! {
            biased;
            () = stop.cancelled() => return Ended::Stopped,
            closed = peer_closed(&stream) => {
                return Ended::Failed(closed);
            }
            popped = queue.pop_into(batches, WRITE_CHUNK_BYTES) => popped,
        };
        if !popped {
            // Drained: say goodbye cleanly so the destination sees EOF after the last line.
            let _ = tokio::time::timeout(settings.write_timeout, stream.shutdown()).await;
            return Ended::Drained;
        }
        let written = tokio::select! {
            biased;
            () = stop.cancelled() => {
                queue.unpop(batches);
                return Ended::Stopped;
            }
            written = write_all_batches(&mut stream, batches, settings.write_timeout) => written,
        };
        match written {
            Ok(()) => {
                queue.complete(batches);
                batches.clear();
                *wrote_any = true;
            }
            Err(err) => {
                if err.kind() == io::ErrorKind::TimedOut {
                    queue.stats().write_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                queue.unpop(batches);
                return Ended::Failed(err);
            }
        }
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

/// Writes every byte of `batches` with vectored writes; each write that makes no progress within `write_timeout`
/// fails with `TimedOut`. `write_all` semantics: a short write continues where it stopped. Public, and generic over
/// the stream, for the bench of what the writer costs per batch.
///
/// # Errors
///
/// The stream's write error, `TimedOut`, or `WriteZero` when the stream accepts no bytes.
pub async fn write_all_batches<W: AsyncWrite + Unpin>(
    stream: &mut W,
    batches: &[Batch],
    write_timeout: Duration,
) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batches.len().min(MAX_IOVECS));
    let mut next_batch = 0;
    let mut offset_in_first = 0;
    while next_batch < batches.len() {
        slices.clear();
        for (index, batch) in batches[next_batch..].iter().take(MAX_IOVECS).enumerate() {
            let bytes = if index == 0 {
                &batch.bytes()[offset_in_first..]
            } else {
                &batch.bytes()[..]
            };
            slices.push(IoSlice::new(bytes));
        }
        let n_written = tokio::time::timeout(write_timeout, stream.write_vectored(&slices))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "write made no progress within write_timeout",
                )
            })??;
        if n_written == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "destination accepted no bytes",
            ));
        }
        // Advance over what was written, batch by batch.
        let mut remaining = n_written;
        while remaining > 0 {
            let left_in_batch = batches[next_batch].len() - offset_in_first;
            if remaining >= left_in_batch {
                remaining -= left_in_batch;
                next_batch += 1;
                offset_in_first = 0;
            } else {
                offset_in_first += remaining;
                remaining = 0;
            }
        }
    }
    Ok(())
}
