//! One client connection: read, decode into batches, hand batches to the router.
//!
//! The handler is generic over [`AsyncRead`] so its timing rules (flush on idle, flush interval, idle and
//! partial-line timeouts) are tested over `tokio::io::duplex` with paused time. A batch is handed on when it is full,
//! when the socket has no more bytes ready (so an idle collectd connection never waits), and never later than
//! `flush_interval`.
//!
//! Invariants: memory per connection is bounded by `read_buffer_bytes` plus one batch, whatever the client sends
//! (over-long lines are skipped, not buffered); nothing a client sends can panic the handler or stall another
//! connection; every byte read ends up in a forwarded line or a counted rejection.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
}

/// Reads `reader` until EOF, a timeout, an error or shutdown, forwarding every valid line.
pub async fn handle<R: AsyncRead + Unpin>(
    mut reader: R,
    context: &ConnectionContext,
    shutdown: &CancellationToken,
) -> Closed {
    let config = &context.config;
    let stats = &context.registry.relay;
    let mut buf: Vec<u8> = Vec::with_capacity(config.read_buffer_bytes);
    let mut decoder = Decoder::new(context.rules);
    let mut batch = BatchBuilder::new(config.batch_lines, config.batch_max_bytes);
    let mut counts = LineCounts::default();
    let mut batch_started = Instant::now();
    let mut last_line_at = Instant::now();
    let mut partial_since: Option<Instant> = None;
    let mut shutdown_deadline: Option<Instant> = None;

    let closed = loop {
        // Try the read without waiting first: if nothing is ready, hand the batch on before sleeping.
        let ready = poll_once(pin!(reader.read_buf(&mut buf)));
        let read_result = match ready {
            Some(result) => result,
            None => {
                flush(&mut batch, context).await;
                if shutdown_deadline.is_some() {
                    // Shutting down and nothing more is ready: what the client sent has been read.
                    break Closed::Shutdown;
                }
                let deadline = match partial_since {
                    Some(since) if !config.partial_line_timeout.is_zero() => Some(since + config.partial_line_timeout),
                    Some(_) => None,
                    None if !config.idle_timeout.is_zero() => Some(last_line_at + config.idle_timeout),
                    None => None,
                };
                let timeout = async {
                    match deadline {
                        Some(deadline) => tokio::time::sleep_until(deadline).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    result = reader.read_buf(&mut buf) => result,
                    () = timeout => {
                        if partial_since.is_some() {
                            counts.add_invalid(Invalid::PartialTimeout);
                            break Closed::PartialTimeout;
                        }
                        stats.connections_idle_closed.fetch_add(1, Ordering::Relaxed);
                        break Closed::Idle;
                    }
                    () = shutdown.cancelled(), if shutdown_deadline.is_none() => {
                        shutdown_deadline = Some(Instant::now() + SHUTDOWN_READ_GRACE);
                        continue;
                    }
                }
            }
        };
        let n_read = match read_result {
            Ok(0) => {
                decoder.finish(&buf, &mut counts);
                break Closed::Eof;
            }
            Ok(n_read) => n_read,
            Err(_) => {
                decoder.finish(&buf, &mut counts);
                break Closed::ReadError;
            }
        };
        stats.bytes_received.fetch_add(n_read as u64, Ordering::Relaxed);
        let now = Instant::now();
        if batch.is_empty() {
            batch_started = now;
        }
        decoder.set_now(line::unix_now_secs());

        let mut consumed = 0;
        loop {
            consumed += decoder.decode(&buf[consumed..], &mut batch, &mut counts);
            publish(&mut counts, context);
            if !batch.is_full() {
                break;
            }
            flush(&mut batch, context).await;
            batch_started = Instant::now();
        }
        buf.drain(..consumed);
        if consumed > 0 {
            // The idle timeout runs from the last complete line, valid or not.
            last_line_at = now;
        }
        partial_since = if buf.is_empty() && !decoder.is_discarding() {
            None
        } else {
            Some(partial_since.unwrap_or(now))
        };
        if !batch.is_empty() && now.duration_since(batch_started) >= config.flush_interval {
            flush(&mut batch, context).await;
        }
        if shutdown_deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            break Closed::Shutdown;
        }
    };
    if closed == Closed::Shutdown && (!buf.is_empty() || decoder.is_discarding()) {
        decoder.finish(&buf, &mut counts);
    }
    publish(&mut counts, context);
    flush(&mut batch, context).await;
    closed
}

/// Adds local counts to the shared counters (lines now in the batch count as inbound) and resets them.
fn publish(counts: &mut LineCounts, context: &ConnectionContext) {
    let stats = &context.registry.relay;
    if counts.valid > 0 {
        stats.inbound_lines.fetch_add(counts.valid as i64, Ordering::Relaxed);
    }
    stats.add_line_counts(counts);
    *counts = LineCounts::default();
}

async fn flush(batch: &mut BatchBuilder, context: &ConnectionContext) {
    if let Some(full) = batch.take() {
        let n_lines = i64::from(full.n_lines());
        context.router.dispatch(full).await;
        context.registry.relay.inbound_lines.fetch_sub(n_lines, Ordering::Relaxed);
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
