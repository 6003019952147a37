//! `-console-out`: a copy of every relayed line on stdout, written by a thread of its own.
//!
//! The seed's debugging aid. Stdout can be slow: a terminal, a pipe read slowly or not read at all. A blocking write
//! on a runtime worker would stall every connection on that worker, so the router only hands the batch (a refcount,
//! not a copy) to a bounded channel, and the `console-out` thread writes it. When the channel is full, the batch is
//! not printed: its lines are counted in `lines_console_out_dropped` (`/stats`: `lines.console_out_dropped`), and
//! relaying goes on at full speed. The channel holds at most [`QUEUE_BATCHES`] batches (1 MiB at the default batch
//! size).
//!
//! At shutdown, [`ConsoleOut::finish`] closes the channel and waits, until the shutdown deadline, for the thread to
//! print what the channel holds. A stdout that takes nothing more by then costs the lines still held, counted.
//!
//! Invariants: the router never waits for stdout; every line handed to [`ConsoleOut::print`] is written or counted
//! as dropped; nothing here touches the destination queues.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{error, warn};

use crate::batch::Batch;
use crate::stats::Registry;

/// Batches the channel to the `console-out` thread holds: about 1 MiB of lines at the default batch size, several
/// milliseconds of a terminal's speed, so that bursts are printed whole and only a stdout that falls behind loses
/// lines.
pub const QUEUE_BATCHES: usize = 64;

/// The handle on the `console-out` thread: hands it batches without waiting, and waits for it at shutdown.
#[derive(Debug)]
pub struct ConsoleOut {
    /// `None` once [`ConsoleOut::finish`] closed the channel, or when the thread could not start.
    sender: Mutex<Option<SyncSender<Batch>>>,
    /// Fires when the thread has written everything and ended.
    done: Mutex<Option<oneshot::Receiver<()>>>,
    /// Lines handed to the thread and not yet written or counted: what a shutdown deadline cuts off.
    pending_lines: Arc<AtomicU64>,
    registry: Arc<Registry>,
}

impl ConsoleOut {
    /// Starts the `console-out` thread writing to `writer` (stdout in the relay) through a channel of
    /// `capacity_batches`.
    ///
    /// If the thread cannot start, the failure is logged and every line handed over is counted as dropped: the
    /// relay itself does not need it.
    pub fn spawn(
        writer: impl Write + Send + 'static,
        capacity_batches: usize,
        registry: Arc<Registry>,
    ) -> ConsoleOut {
        let (sender, receiver) = mpsc::sync_channel(capacity_batches);
        let (done_sender, done) = oneshot::channel();
        let pending_lines = Arc::new(AtomicU64::new(0));
        let thread = {
            let pending_lines = Arc::clone(&pending_lines);
            let registry = Arc::clone(&registry);
            std::thread::Builder::new()
                .name("console-out".to_string())
                .spawn(move || {
                    write_batches(&receiver, writer, &pending_lines, &registry);
                    let _ = done_sender.send(());
                })
        };
        let (sender, done) = match thread {
            Ok(_) => (Some(sender), Some(done)),
            Err(err) => {
                error!(error = %err, "cannot start the console-out thread: -console-out lines are counted as dropped");
                (None, None)
            }
        };
        ConsoleOut {
            sender: Mutex::new(sender),
            done: Mutex::new(done),
            pending_lines,
            registry,
        }
    }

    /// Hands `batch` to the thread, or counts its lines as dropped if the channel is full or closed. Never waits.
    pub fn print(&self, batch: &Batch) {
        let n_lines = u64::from(batch.n_lines());
        // Counted before the send: the thread may write the batch and subtract it before `try_send` returns.
        self.pending_lines.fetch_add(n_lines, Ordering::Relaxed);
        let sent = match &*self.sender.lock() {
            Some(sender) => match sender.try_send(batch.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            },
            None => false,
        };
        if !sent {
            self.pending_lines.fetch_sub(n_lines, Ordering::Relaxed);
            self.add_dropped(n_lines);
        }
    }

    /// Closes the channel and waits until the thread has written what it holds, or until `deadline`; lines still
    /// held then are counted as dropped.
    pub async fn finish(&self, deadline: Instant) {
        drop(self.sender.lock().take());
        let Some(done) = self.done.lock().take() else {
            return;
        };
        if tokio::time::timeout_at(deadline, done).await.is_ok() {
            return;
        }
        let n_lines = self.pending_lines.swap(0, Ordering::Relaxed);
        self.add_dropped(n_lines);
        warn!(
            lines = n_lines,
            "shutdown: stdout took no more -console-out lines before the deadline"
        );
    }

    fn add_dropped(&self, n_lines: u64) {
        self.registry
            .relay
            .lines_console_out_dropped
            .fetch_add(n_lines, Ordering::Relaxed);
    }
}

/// The thread's loop: writes batches until the channel is closed and empty, flushing whenever it has nothing more
/// to write. After a write error (stdout closed) it keeps taking batches and counts them as dropped, so that a
/// sender never finds the channel full for good.
fn write_batches(
    receiver: &Receiver<Batch>,
    mut writer: impl Write,
    pending_lines: &AtomicU64,
    registry: &Registry,
) {
    let mut broken = false;
    loop {
        let batch = match receiver.try_recv() {
            Ok(batch) => batch,
            Err(TryRecvError::Empty) => {
                if !broken {
                    broken = report(writer.flush());
                }
                match receiver.recv() {
                    Ok(batch) => batch,
                    Err(mpsc::RecvError) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        let n_lines = u64::from(batch.n_lines());
        if !broken {
            broken = report(writer.write_all(batch.bytes()));
        }
        if broken {
            registry
                .relay
                .lines_console_out_dropped
                .fetch_add(n_lines, Ordering::Relaxed);
        }
        // Saturating: a shutdown deadline may have counted these lines as dropped already.
        let _ = pending_lines.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |pending| {
            Some(pending.saturating_sub(n_lines))
        });
    }
    if !broken {
        report(writer.flush());
    }
}

/// Logs a write error once, as the thread stops writing after it; true if there was one.
fn report(result: io::Result<()>) -> bool {
    match result {
        Ok(()) => false,
        Err(err) => {
            warn!(error = %err, "cannot write -console-out lines to stdout, counting them as dropped");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    /// A stdout that signals its first write on `entered`, then blocks it until `gate` is closed, and records
    /// everything written.
    struct GatedWriter {
        entered: Option<mpsc::Sender<()>>,
        gate: Receiver<()>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for GatedWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(entered) = self.entered.take() {
                let _ = entered.send(());
                // Returns once the test drops the gate's sender.
                let _ = self.gate.recv();
            }
            self.written.lock().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A stdout that is closed.
    struct ClosedWriter;

    impl Write for ClosedWriter {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }

        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    struct Gated {
        console_out: ConsoleOut,
        registry: Arc<Registry>,
        entered: Receiver<()>,
        gate: mpsc::Sender<()>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    fn gated(capacity_batches: usize) -> Gated {
        let registry = Arc::new(Registry::new(&[]));
        let (entered_sender, entered) = mpsc::channel();
        let (gate, gate_receiver) = mpsc::channel();
        let written = Arc::new(Mutex::new(Vec::new()));
        let writer = GatedWriter {
            entered: Some(entered_sender),
            gate: gate_receiver,
            written: Arc::clone(&written),
        };
        let console_out = ConsoleOut::spawn(writer, capacity_batches, Arc::clone(&registry));
        Gated {
            console_out,
            registry,
            entered,
            gate,
            written,
        }
    }

    fn batch(text: &'static str) -> Batch {
        let n_lines = text.bytes().filter(|&byte| byte == b'\n').count();
        Batch::new(Bytes::from_static(text.as_bytes()), n_lines as u32)
    }

    fn dropped(registry: &Registry) -> u64 {
        registry
            .relay
            .lines_console_out_dropped
            .load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn a_full_channel_drops_and_counts_and_finish_prints_everything_it_held() {
        let Gated {
            console_out,
            registry,
            entered,
            gate,
            written,
        } = gated(2);
        console_out.print(&batch("a 1 1\n"));
        entered.recv().expect("the thread writes the first batch");
        // The thread is blocked in the write: the channel takes two more, and the next is dropped at once.
        console_out.print(&batch("b 1 1\n"));
        console_out.print(&batch("c 1 1\nc 2 2\n"));
        console_out.print(&batch("d 1 1\nd 2 2\nd 3 3\n"));
        assert_eq!(dropped(&registry), 3);

        drop(gate);
        console_out
            .finish(Instant::now() + Duration::from_secs(30))
            .await;
        assert_eq!(
            String::from_utf8_lossy(&written.lock()),
            "a 1 1\nb 1 1\nc 1 1\nc 2 2\n"
        );
        assert_eq!(dropped(&registry), 3);
        console_out.print(&batch("e 1 1\n"));
        assert_eq!(dropped(&registry), 4, "a line after finish is counted");
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_deadline_what_a_stuck_stdout_still_holds_is_counted_as_dropped() {
        let Gated {
            console_out,
            registry,
            entered,
            gate,
            written,
        } = gated(4);
        console_out.print(&batch("a 1 1\na 2 2\n"));
        entered.recv().expect("the thread writes the first batch");
        console_out.print(&batch("b 1 1\nb 2 2\nb 3 3\n"));
        let started = Instant::now();
        console_out.finish(started + Duration::from_secs(5)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(dropped(&registry), 5);
        assert!(written.lock().is_empty());
        drop(gate);
    }

    #[tokio::test]
    async fn lines_for_a_closed_stdout_are_counted_as_dropped() {
        let registry = Arc::new(Registry::new(&[]));
        let console_out = ConsoleOut::spawn(ClosedWriter, 4, Arc::clone(&registry));
        console_out.print(&batch("a 1 1\na 2 2\n"));
        console_out.print(&batch("b 1 1\n"));
        console_out
            .finish(Instant::now() + Duration::from_secs(30))
            .await;
        assert_eq!(dropped(&registry), 3);
    }
}
