//! Wiring: builds every stage from a validated [`Config`], starts them, and owns the shutdown order.
//!
//! Start: validate, create counters and destinations (queues and writers), bind the plaintext listener and the stats
//! server (a bind failure is an error naming the address), then spawn the accept loop and the edges' tickers.
//!
//! Shutdown ([`Relay::shutdown`]), bounded as a whole by `shutdown_timeout`: stop accepting and stop pacing; let
//! connections read what their clients send for one second and hand over their last batches; close the queues; let
//! writers drain; at the deadline stop them and count what is left per destination as dropped (`shutdown`), logged
//! at ERROR; let `-console-out` print what it still holds, until the deadline; then the log ticker's last report.
//! Queues and writers never watch a shutdown token: they end when their input ends. The stats server stops with the
//! edges but is not waited for before the queues close, since it feeds none: it ends on its own within
//! `http::SHUTDOWN_GRACE`, while the writers drain, so a stalled stats client never holds up the exit by more than
//! that.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{Config, DestinationPlan};
use crate::destination::{Destination, Queue, SpoolParts};
use crate::http;
use crate::input::tcp::{self, ConnectionContext, ReadBufferBudget};
use crate::line::Rules;
use crate::net;
use crate::router::table::RoutingTable;
use crate::router::{Router, RouterConfig};
use crate::spool;
use crate::stats::{self, DropReason, Registry};

/// The part of shutdown's budget kept for spooling what destinations with a spool did not deliver: a quarter of
/// `shutdown_timeout`, at most 5 s. Writing what a memory queue holds (64 MiB by default) to the page cache takes
/// well under a second; the rest covers the `fdatasync` of a slow disk.
pub fn spool_shutdown_reserve(shutdown_timeout: Duration) -> Duration {
    (shutdown_timeout / 4).min(Duration::from_secs(5))
}

/// A destination with a spool, as shutdown needs it.
#[derive(Debug)]
struct SpooledDestination {
    queue: Arc<Queue>,
    writer: JoinHandle<()>,
    spooler: std::thread::JoinHandle<()>,
}

/// Opens the spool of every destination whose settings have a `spool_dir` (`None` for the others): each in its own
/// directory named by its identity, with its share of `spool_total_max_bytes`. What recovery found
/// corrupt is counted.
///
/// # Errors
///
/// A spool that cannot be opened: a directory that cannot be created or written, or one locked by another relay
/// (the error names the lock file). `main` exits with 78 for these, as for other config errors.
fn open_spools(
    config: &Config,
    plans: &[DestinationPlan],
    registry: &Registry,
) -> anyhow::Result<Vec<Option<SpoolParts>>> {
    let total_max_bytes = config.destination.spool_total_max_bytes;
    let mut spools = Vec::new();
    for (plan, stats) in plans.iter().zip(&registry.destinations) {
        let (identity, destination) = (&plan.identity, &plan.config);
        let Some(spool_dir) = &destination.spool_dir else {
            spools.push(None);
            continue;
        };
        let mut max_bytes = destination.spool_max_bytes;
        if total_max_bytes > 0 {
            max_bytes = max_bytes.min(total_max_bytes / plans.len() as u64);
        }
        let settings = spool::Settings {
            dir: spool_dir.join(spool::directory_name(&identity.to_string())),
            max_bytes,
            overflow: destination.spool_overflow,
            sync: destination.spool_sync,
        };
        let (opened, recovered) = spool::Spool::open(settings)?;
        if recovered.corrupt_lines > 0 {
            stats.add_dropped(DropReason::SpoolCorrupt, recovered.corrupt_lines);
            error!(destination = %identity, lines = recovered.corrupt_lines, "spool: corrupt records found at start, skipped");
        }
        if recovered.unread_lines > 0 {
            info!(destination = %identity, lines = recovered.unread_lines, "spool: lines to replay");
        }
        spools.push(Some(SpoolParts {
            spool: opened,
            n_unread_records: recovered.unread_records,
        }));
    }
    Ok(spools)
}

/// A running relay.
#[derive(Debug)]
pub struct Relay {
    config: Config,
    registry: Arc<Registry>,
    listen_address: SocketAddr,
    stats_address: Option<SocketAddr>,
    /// Cancelled to stop the edges: the accept loop, the stats server, the self-metrics; connections then read for
    /// their grace period and the router stops pacing.
    edges: CancellationToken,
    /// Cancelled at the shutdown deadline: writers and blocked senders stop at once.
    stop: CancellationToken,
    connections: TaskTracker,
    /// The accept loop and the self-metrics: what must stop before the queues close.
    edge_tasks: TaskTracker,
    /// The stats server stops on `edges` too, but ends on its own, at most `http::SHUTDOWN_GRACE` later.
    stats_server: Option<JoinHandle<()>>,
    /// The periodic log line runs until the very end, so that losses during shutdown are logged too.
    log_ticker: JoinHandle<()>,
    log_ticker_stop: CancellationToken,
    queues: Vec<Arc<Queue>>,
    /// Writers of destinations without a spool.
    writers: Vec<JoinHandle<()>>,
    /// Destinations with a spool: their writers stop at `stop_spooled`, then their spoolers write the rest.
    spooled: Vec<SpooledDestination>,
    /// Cancelled [`spool_shutdown_reserve`] before the deadline (or with `stop`): the writers of spooled
    /// destinations hand back what they hold, for their spoolers to write.
    stop_spooled: CancellationToken,
    /// Kept for the end of shutdown: the `-console-out` thread prints what it still holds.
    router: Arc<Router>,
}

/// A cheap handle on a running relay's addresses and counters.
#[derive(Debug, Clone)]
pub struct RelayHandle {
    /// The plaintext listener's bound address (the real port when configured with port 0).
    pub listen_address: SocketAddr,
    /// The stats server's bound address, if enabled.
    pub stats_address: Option<SocketAddr>,
    /// Every counter.
    pub registry: Arc<Registry>,
}

/// What a shutdown could not deliver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Lines still queued at the deadline, summed over destinations (counted as dropped, reason `shutdown`).
    pub lines_lost: u64,
}

impl Relay {
    /// Validates `config`, binds the listeners and starts every task on the current runtime.
    ///
    /// # Errors
    ///
    /// An invalid config, or a listener that cannot bind (the message names the address).
    pub async fn start(config: Config) -> anyhow::Result<Relay> {
        config.validate()?;
        let plans = config.destination_plans()?;
        let table = RoutingTable::new(&config)?;
        let names: Vec<String> = plans.iter().map(|plan| plan.identity.to_string()).collect();
        let registry = Arc::new(Registry::new(&names));
        // Before anything binds: a spool another relay holds must stop this one before it takes a port.
        let mut spools = open_spools(&config, &plans, &registry)?;

        let listener = net::bind(&config.listen.address, config.listen.port).await?;
        let listen_address = listener
            .local_addr()
            .context("cannot read the listener's address")?;
        let stats_listener = match crate::config::split_bind_address(&config.stats.address) {
            Some((host, port)) => Some(net::bind(host, port).await?),
            None => None,
        };

        let edges = CancellationToken::new();
        let stop = CancellationToken::new();
        let room = Arc::new(Notify::new());
        let mut queues = Vec::new();
        let mut handles = Vec::new();
        let mut writers = Vec::new();
        // Writers of destinations with a spool stop early enough at shutdown to leave time to spool the rest.
        let stop_spooled = stop.child_token();
        let mut spooled = Vec::new();
        for ((plan, stats), spool) in plans
            .iter()
            .zip(&registry.destinations)
            .zip(spools.drain(..))
        {
            let writer_stop = if spool.is_some() {
                stop_spooled.clone()
            } else {
                stop.clone()
            };
            let destination = Destination::spawn(
                &plan.identity,
                &plan.config,
                Arc::clone(stats),
                Arc::clone(&room),
                writer_stop,
                spool,
            )
            .context("cannot start a spooler thread")?;
            let queue = Arc::clone(&destination.handle.queue);
            handles.push(destination.handle);
            match destination.spooler {
                Some(spooler) => spooled.push(SpooledDestination {
                    queue: Arc::clone(&queue),
                    writer: destination.writer,
                    spooler,
                }),
                None => writers.push(destination.writer),
            }
            queues.push(queue);
        }
        if queues.is_empty() {
            warn!("no destinations configured: every valid line is counted as dropped (no_destination)");
        }
        let router = Arc::new(Router::new(RouterConfig {
            destinations: handles,
            table,
            rules: Rules::from_config(&config.line),
            room,
            registry: Arc::clone(&registry),
            console_out: config.log.console_out,
            draining: edges.clone(),
            stop: stop.clone(),
        }));

        let context = Arc::new(ConnectionContext {
            config: config.listen.clone(),
            rules: Rules::from_config(&config.line),
            router: Arc::clone(&router),
            registry: Arc::clone(&registry),
            read_buffer_budget: Arc::new(ReadBufferBudget::new(
                config.listen.read_buffer_budget_bytes,
            )),
        });
        let connections = TaskTracker::new();
        let edge_tasks = TaskTracker::new();
        let mover = Arc::clone(&router);
        let mover_stop = edges.clone();
        edge_tasks.spawn(async move { mover.move_from_out_members(mover_stop).await });
        info!("Metrics listener started: {listen_address}");
        edge_tasks.spawn(tcp::run(
            listener,
            context,
            edges.clone(),
            connections.clone(),
        ));

        let mut stats_server = None;
        let stats_address = match stats_listener {
            Some(stats_listener) => {
                let address = stats_listener
                    .local_addr()
                    .context("cannot read the stats server's address")?;
                // Not an edge task: it feeds no queue, so closing the queues need not wait for its clients.
                stats_server = Some(tokio::spawn(http::serve(
                    stats_listener,
                    Arc::clone(&registry),
                    http::Limits::from_config(&config.stats),
                    edges.clone(),
                )));
                info!("Runstats started: {address}");
                Some(address)
            }
            None => None,
        };
        let log_ticker_stop = CancellationToken::new();
        let log_ticker = tokio::spawn(stats::log::run_log_ticker(
            Arc::clone(&registry),
            config.stats.log_interval,
            log_ticker_stop.clone(),
        ));
        let prefix =
            stats::carbon::expand_prefix(&config.stats.metrics_prefix, &stats::carbon::host_name());
        let self_metrics_router = Arc::clone(&router);
        edge_tasks.spawn(stats::carbon::run_self_metrics(
            Arc::clone(&registry),
            prefix,
            config.stats.metrics_flush,
            move |batch| self_metrics_router.dispatch_priority(batch),
            edges.clone(),
        ));
        Ok(Relay {
            config,
            registry,
            listen_address,
            stats_address,
            edges,
            stop,
            connections,
            edge_tasks,
            stats_server,
            log_ticker,
            log_ticker_stop,
            queues,
            writers,
            spooled,
            stop_spooled,
            router,
        })
    }

    /// Addresses and counters of the running relay.
    pub fn handle(&self) -> RelayHandle {
        RelayHandle {
            listen_address: self.listen_address,
            stats_address: self.stats_address,
            registry: Arc::clone(&self.registry),
        }
    }

    /// Shuts down in order within `shutdown_timeout` and reports what could not be delivered.
    pub async fn shutdown(self) -> ShutdownReport {
        let deadline = tokio::time::Instant::now() + self.config.shutdown_timeout;
        info!(timeout = ?self.config.shutdown_timeout, "shutting down: no new connections, draining queues");
        self.edges.cancel();
        self.edge_tasks.close();
        self.connections.close();
        let stopped_in_time = tokio::time::timeout_at(deadline, async {
            self.edge_tasks.wait().await;
            self.connections.wait().await;
        })
        .await
        .is_ok();
        if !stopped_in_time {
            // Connections blocked on a full queue (`block`) give up their batch, counted as dropped.
            self.stop.cancel();
            self.connections.wait().await;
        }
        for queue in &self.queues {
            queue.close();
        }
        // Destinations with a spool deliver until the reserve, then spool what is left, while the others keep
        // draining until the deadline.
        let spool_deadline = deadline
            .checked_sub(spool_shutdown_reserve(self.config.shutdown_timeout))
            .unwrap_or(deadline);
        let mut spooled_writers = Vec::new();
        let mut spoolers = Vec::new();
        let mut spooled_queues = Vec::new();
        for destination in self.spooled {
            spooled_writers.push(destination.writer);
            spoolers.push(destination.spooler);
            spooled_queues.push(destination.queue);
        }
        join_writers(spooled_writers, spool_deadline, &self.stop_spooled).await;
        for queue in &spooled_queues {
            queue.finish_spool();
        }
        for spooler in spoolers {
            let joined = tokio::task::spawn_blocking(move || spooler.join());
            if tokio::time::timeout_at(deadline, joined).await.is_err() {
                error!("shutdown: a spooler did not finish before the deadline");
            }
        }
        join_writers(self.writers, deadline, &self.stop).await;
        let mut report = ShutdownReport::default();
        for queue in &self.queues {
            queue.drop_remaining();
            // Everything dropped for `shutdown`: what was left queued, and batches `block` senders gave up on.
            let n_lost =
                queue.stats().dropped_lines[DropReason::Shutdown as usize].load(Ordering::Relaxed);
            if n_lost > 0 {
                error!(destination = %queue.stats().address, lines = n_lost, "shutdown: lines not delivered");
            }
            report.lines_lost += n_lost;
        }
        if let Some(stats_server) = self.stats_server {
            // Ended by now unless the drain took less than its grace after `edges` was cancelled.
            let _ = stats_server.await;
        }
        self.router.finish_console_out(deadline).await;
        self.log_ticker_stop.cancel();
        let _ = self.log_ticker.await;
        let received = self.registry.relay.lines_received.load(Ordering::Relaxed);
        info!(
            lines_received = received,
            lines_lost = report.lines_lost,
            "shutdown complete"
        );
        report
    }
}

/// Waits for `writers`, in order, until `deadline`; then cancels `stop`, so those still draining hand back what they
/// hold, and waits for them to end.
async fn join_writers(
    writers: Vec<JoinHandle<()>>,
    deadline: tokio::time::Instant,
    stop: &CancellationToken,
) {
    let mut writers: VecDeque<JoinHandle<()>> = writers.into();
    let drained = tokio::time::timeout_at(deadline, async {
        while let Some(writer) = writers.front_mut() {
            let _ = writer.await;
            writers.pop_front();
        }
    })
    .await
    .is_ok();
    if !drained {
        stop.cancel();
        for writer in writers {
            let _ = writer.await;
        }
    }
}
