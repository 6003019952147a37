//! Wiring: builds every stage from a validated [`Config`], starts them, and owns the shutdown order.
//!
//! Start: validate, create counters and destinations (queues and writers), bind the plaintext listener and the stats
//! server (a bind failure is an error naming the address), then spawn the accept loop and the edges' tickers.
//!
//! Shutdown ([`Relay::shutdown`]), bounded as a whole by `shutdown_timeout`: stop accepting and stop pacing; let
//! connections read what their clients send for one second and hand over their last batches; close the queues; let
//! writers drain; at the deadline stop them and count what is left per destination as dropped (`shutdown`), logged
//! at ERROR; let `-console-out` print what it still holds, until the deadline; then the log ticker's last report.
//! Queues and writers never watch a shutdown token: they end when their input ends.
//!
//! Reload ([`Relay::reload`], on SIGHUP): a new config is validated and its spools opened before anything changes,
//! so a bad one leaves the running relay as it was. Destinations whose identity stays keep their queue, connection
//! and spool; new ones start; the router swaps to the new table at once, without touching client connections; a
//! removed destination's queue closes once no batch is being routed with the old table, and it drains for at most
//! `shutdown_timeout` (with a spool, what it has not delivered by then stays on disk for a later config that names
//! it again). The stats server stops with the
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

use crate::config::{Config, DestinationConfig, DestinationPlan};
use crate::destination::{Destination, Handle, Identity, SpoolParts};
use crate::http;
use crate::input::tcp::{self, ConnectionContext, ReadBufferBudget};
use crate::line::Rules;
use crate::net;
use crate::router::table::RoutingTable;
use crate::router::{Router, RouterConfig, Routes};
use crate::spool;
use crate::stats::{self, DestinationStats, DropReason, Registry};

/// The part of shutdown's budget kept for spooling what destinations with a spool did not deliver: a quarter of
/// `shutdown_timeout`, at most 5 s. Writing what a memory queue holds (64 MiB by default) to the page cache takes
/// well under a second; the rest covers the `fdatasync` of a slow disk.
pub fn spool_shutdown_reserve(shutdown_timeout: Duration) -> Duration {
    (shutdown_timeout / 4).min(Duration::from_secs(5))
}

/// A destination the relay runs.
#[derive(Debug)]
struct Running {
    identity: Identity,
    config: DestinationConfig,
    stats: Arc<DestinationStats>,
    handle: Handle,
    writer: JoinHandle<()>,
    /// Its spooler thread, if it has a spool.
    spooler: Option<std::thread::JoinHandle<()>>,
    /// The bytes its spool may use (0 without a spool): its share of `spool_total_max_bytes` when it started.
    spool_cap: u64,
    /// Cancelled to make its writer hand back what it holds: at its deadline, at shutdown or when a reload removed it.
    stop: CancellationToken,
}

/// Opens the spool of a destination whose settings have a `spool_dir` (`None` for the others), in its own directory
/// named by its identity, with its share of `spool_total_max_bytes` over `n_destinations`. What recovery found
/// corrupt is counted.
///
/// # Errors
///
/// A spool that cannot be opened: a directory that cannot be created or written, or one locked by another relay
/// (the error names the lock file). `main` exits with 78 for these, as for other config errors.
fn open_spool(
    plan: &DestinationPlan,
    spool_total_max_bytes: u64,
    n_destinations: usize,
    stats: &DestinationStats,
) -> anyhow::Result<Option<SpoolParts>> {
    let (identity, destination) = (&plan.identity, &plan.config);
    let Some(spool_dir) = &destination.spool_dir else {
        return Ok(None);
    };
    let max_bytes = spool_cap(destination, spool_total_max_bytes, n_destinations);
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
    Ok(Some(SpoolParts {
        spool: opened,
        n_unread_records: recovered.unread_records,
    }))
}

/// The bytes a destination's spool may use: `spool_max_bytes`, or its share of `spool_total_max_bytes` over
/// `n_destinations` when that is smaller; 0 without a spool.
fn spool_cap(
    destination: &DestinationConfig,
    spool_total_max_bytes: u64,
    n_destinations: usize,
) -> u64 {
    if destination.spool_dir.is_none() {
        return 0;
    }
    let mut max_bytes = destination.spool_max_bytes;
    if spool_total_max_bytes > 0 {
        max_bytes = max_bytes.min(spool_total_max_bytes / n_destinations.max(1) as u64);
    }
    max_bytes
}

/// What [`Spawner::start_destinations`] shares between destinations.
#[derive(Debug)]
struct Spawner {
    room: Arc<Notify>,
    /// Parent of the writers' stop tokens without a spool.
    stop: CancellationToken,
    /// Parent of the writers' stop tokens with a spool: cancelled before `stop` at shutdown.
    stop_spooled: CancellationToken,
}

impl Spawner {
    /// Opens the spools of `plans` that have one, then starts them all; on an error nothing is left running.
    fn start_destinations(
        &self,
        plans: Vec<DestinationPlan>,
        spool_total_max_bytes: u64,
        n_destinations: usize,
        registry: &Registry,
    ) -> anyhow::Result<Vec<Running>> {
        let known = registry.destinations();
        let mut opened = Vec::with_capacity(plans.len());
        for plan in plans {
            let name = plan.identity.to_string();
            // A destination an earlier reload removed keeps counting where it left off.
            let stats = known
                .iter()
                .find(|stats| stats.address == name)
                .map_or_else(|| DestinationStats::new(&name), Arc::clone);
            let spool = open_spool(&plan, spool_total_max_bytes, n_destinations, &stats)?;
            opened.push((plan, stats, spool));
        }
        let mut running: Vec<Running> = Vec::with_capacity(opened.len());
        for (plan, stats, spool) in opened {
            let stop = if spool.is_some() {
                self.stop_spooled.child_token()
            } else {
                self.stop.child_token()
            };
            let destination = match Destination::spawn(
                &plan.identity,
                &plan.config,
                Arc::clone(&stats),
                Arc::clone(&self.room),
                stop.clone(),
                spool,
            ) {
                Ok(destination) => destination,
                Err(err) => {
                    // Leave nothing running: those started end once their queues close and their writers stop.
                    for started in &running {
                        started.handle.queue.close();
                        started.handle.queue.finish_spool();
                        started.stop.cancel();
                    }
                    return Err(err).context("cannot start a spooler thread");
                }
            };
            running.push(Running {
                spool_cap: spool_cap(&plan.config, spool_total_max_bytes, n_destinations),
                identity: plan.identity,
                config: plan.config,
                stats,
                handle: destination.handle,
                writer: destination.writer,
                spooler: destination.spooler,
                stop,
            });
        }
        Ok(running)
    }
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Destinations started.
    pub added: Vec<String>,
    /// Destinations kept with their queues and spools.
    pub kept: Vec<String>,
    /// Destinations removed: they drain, then stop.
    pub removed: Vec<String>,
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
    /// The destinations in use, in the routing table's order.
    destinations: Vec<Running>,
    /// Destinations a reload removed, draining: each task ends once its destinations stopped.
    retiring: TaskTracker,
    /// The identities of those destinations, until they stopped: a reload cannot start one again before.
    retiring_identities: Arc<parking_lot::Mutex<Vec<Identity>>>,
    /// Starts destinations (at start and on reload) with the shared notifier and stop tokens.
    spawner: Spawner,
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
        let registry = Arc::new(Registry::new(&[]));
        let edges = CancellationToken::new();
        let stop = CancellationToken::new();
        // Writers of destinations with a spool stop early enough at shutdown to leave time to spool the rest.
        let stop_spooled = stop.child_token();
        let spawner = Spawner {
            room: Arc::new(Notify::new()),
            stop: stop.clone(),
            stop_spooled: stop_spooled.clone(),
        };
        // Before anything binds: a spool another relay holds must stop this one before it takes a port.
        let n_destinations = plans.len();
        let destinations = spawner.start_destinations(
            plans,
            config.destination.spool_total_max_bytes,
            n_destinations,
            &registry,
        )?;
        registry.set_destinations(
            destinations
                .iter()
                .map(|running| Arc::clone(&running.stats))
                .collect(),
        );

        let listener = net::bind(&config.listen.address, config.listen.port).await?;
        let listen_address = listener
            .local_addr()
            .context("cannot read the listener's address")?;
        let stats_listener = match crate::config::split_bind_address(&config.stats.address) {
            Some((host, port)) => Some(net::bind(host, port).await?),
            None => None,
        };
        if destinations.is_empty() {
            warn!("no destinations configured: every valid line is counted as dropped (no_destination)");
        }
        let router = Arc::new(Router::new(RouterConfig {
            destinations: destinations
                .iter()
                .map(|running| running.handle.clone())
                .collect(),
            table,
            rules: Rules::from_config(&config.line),
            room: Arc::clone(&spawner.room),
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
            destinations,
            retiring: TaskTracker::new(),
            retiring_identities: Arc::default(),
            spawner,
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

    /// Swaps in `config` (SIGHUP): destinations whose identity stays keep their queues, connections and spools, new
    /// ones start, removed ones drain in the background for at most `shutdown_timeout`, and the router switches to
    /// the new table without touching client connections. `listen`, `line`, `stats` and `log` take effect only at a
    /// restart: a change to them is logged and otherwise left alone. A destination kept with other settings keeps its
    /// old ones (logged): its queue and spool live on.
    ///
    /// # Errors
    ///
    /// An invalid config, a spool of a new destination that cannot be opened, or a new destination whose removal by
    /// an earlier reload has not finished draining. The running relay is then left exactly as it was.
    pub async fn reload(&mut self, config: Config) -> anyhow::Result<ReloadReport> {
        config.validate()?;
        let plans = config.destination_plans()?;
        let table = RoutingTable::new(&config)?;
        let is_running = |identity: &Identity| {
            self.destinations
                .iter()
                .any(|running| running.identity == *identity)
        };
        let fresh: Vec<DestinationPlan> = plans
            .iter()
            .filter(|plan| !is_running(&plan.identity))
            .cloned()
            .collect();
        if let Some(draining) = fresh
            .iter()
            .find(|plan| self.retiring_identities.lock().contains(&plan.identity))
        {
            anyhow::bail!(
                "{} was removed by an earlier reload and is still draining; reload again once it stopped",
                draining.identity
            );
        }
        let spool_total_max_bytes = config.destination.spool_total_max_bytes;
        if spool_total_max_bytes > 0 {
            let kept: u64 = self
                .destinations
                .iter()
                .filter(|running| plans.iter().any(|plan| plan.identity == running.identity))
                .map(|running| running.spool_cap)
                .sum();
            let added: u64 = fresh
                .iter()
                .map(|plan| spool_cap(&plan.config, spool_total_max_bytes, plans.len()))
                .sum();
            // Kept spools keep the share they started with; only a restart divides the total again.
            anyhow::ensure!(
                kept + added <= spool_total_max_bytes,
                "the spools would be allowed {} bytes together (kept {kept}, new {added}), more than \
                 spool_total_max_bytes {spool_total_max_bytes}: restart to divide it among the new destinations",
                kept + added
            );
        }
        // Opening a spool reads it (recovery): not on a runtime worker's time when other tasks could run there.
        let start = || {
            self.spawner.start_destinations(
                fresh,
                spool_total_max_bytes,
                plans.len(),
                &self.registry,
            )
        };
        let mut started = if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            tokio::task::block_in_place(start)
        } else {
            start()
        }?;

        let mut report = ReloadReport::default();
        let mut old = std::mem::take(&mut self.destinations);
        for plan in plans {
            let (running, names) = if let Some(index) = old
                .iter()
                .position(|running| running.identity == plan.identity)
            {
                let running = old.swap_remove(index);
                if running.config != plan.config {
                    warn!(destination = %running.identity, "reload: the destination's settings changed; it keeps its queue and spool, and the new settings take effect once it is removed and added again, or at a restart");
                }
                (running, &mut report.kept)
            } else if let Some(index) = started
                .iter()
                .position(|running| running.identity == plan.identity)
            {
                (started.swap_remove(index), &mut report.added)
            } else {
                continue;
            };
            names.push(running.identity.to_string());
            self.destinations.push(running);
        }
        let removed = old;
        report.removed = removed
            .iter()
            .map(|running| running.identity.to_string())
            .collect();
        let kept_stats: Vec<Arc<DestinationStats>> = self
            .destinations
            .iter()
            .map(|running| Arc::clone(&running.stats))
            .collect();
        // Destinations no longer in use (removed now or earlier) stay listed after those in use, with their counters.
        self.registry.update_destinations(|current| {
            let mut next = kept_stats.clone();
            next.extend(
                current
                    .iter()
                    .filter(|stats| !kept_stats.iter().any(|kept| Arc::ptr_eq(kept, stats)))
                    .cloned(),
            );
            next
        });
        let old_routes = self.router.swap(
            self.destinations
                .iter()
                .map(|running| running.handle.clone())
                .collect(),
            table,
            Rules::from_config(&self.config.line),
        );
        self.retiring_identities
            .lock()
            .extend(removed.iter().map(|running| running.identity.clone()));
        self.retiring.spawn(retire(
            removed,
            old_routes,
            config.shutdown_timeout,
            Arc::clone(&self.retiring_identities),
        ));
        for (section, changed) in [
            ("listen", self.config.listen != config.listen),
            ("line", self.config.line != config.line),
            ("stats", self.config.stats != config.stats),
            ("log", self.config.log != config.log),
        ] {
            if changed {
                warn!(
                    section,
                    "reload: this section changed; it takes effect at a restart"
                );
            }
        }
        let running = std::mem::take(&mut self.config);
        self.config = Config {
            listen: running.listen,
            line: running.line,
            stats: running.stats,
            log: running.log,
            ..config
        };
        info!(
            added = report.added.len(),
            kept = report.kept.len(),
            removed = report.removed.len(),
            "reload: new configuration in use"
        );
        Ok(report)
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
        for running in &self.destinations {
            running.handle.queue.close();
        }
        // Destinations with a spool deliver until the reserve, then spool what is left, while the others keep
        // draining until the deadline.
        let spool_deadline = deadline
            .checked_sub(spool_shutdown_reserve(self.config.shutdown_timeout))
            .unwrap_or(deadline);
        let (spooled, plain): (Vec<Running>, Vec<Running>) = self
            .destinations
            .into_iter()
            .partition(|running| running.spooler.is_some());
        let mut spooled_writers = Vec::new();
        let mut spoolers = Vec::new();
        let mut queues = Vec::new();
        for running in spooled {
            spooled_writers.push(running.writer);
            spoolers.extend(running.spooler);
            queues.push(running.handle.queue);
        }
        join_writers(spooled_writers, spool_deadline, &self.stop_spooled).await;
        for queue in &queues {
            queue.finish_spool();
        }
        join_spoolers(spoolers, deadline).await;
        let mut plain_writers = Vec::new();
        for running in plain {
            plain_writers.push(running.writer);
            queues.push(running.handle.queue);
        }
        join_writers(plain_writers, deadline, &self.stop).await;
        self.retiring.close();
        if tokio::time::timeout_at(deadline, self.retiring.wait())
            .await
            .is_err()
        {
            self.stop.cancel();
            self.retiring.wait().await;
        }
        for queue in &queues {
            queue.drop_remaining();
        }
        let mut report = ShutdownReport::default();
        for stats in self.registry.destinations().iter() {
            // Everything dropped for `shutdown`: what was left queued, and batches `block` senders gave up on.
            let n_lost = stats.dropped_lines[DropReason::Shutdown as usize].load(Ordering::Relaxed);
            if n_lost > 0 {
                error!(destination = %stats.address, lines = n_lost, "shutdown: lines not delivered");
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

/// Waits for spooler threads until `deadline`, logging those that did not finish.
async fn join_spoolers(spoolers: Vec<std::thread::JoinHandle<()>>, deadline: tokio::time::Instant) {
    for spooler in spoolers {
        let joined = tokio::task::spawn_blocking(move || spooler.join());
        if tokio::time::timeout_at(deadline, joined).await.is_err() {
            error!("a spooler did not finish before the deadline");
        }
    }
}

/// Stops destinations a reload removed, once no batch is routed with `old_routes` any more: closes their queues, lets
/// them drain until `timeout` from now (spooled ones until the spool reserve, then they spool the rest and keep it on
/// disk) and counts what is left as dropped (`shutdown`). Their counters stay in the registry.
async fn retire(
    removed: Vec<Running>,
    old_routes: Arc<Routes>,
    timeout: Duration,
    retiring: Arc<parking_lot::Mutex<Vec<Identity>>>,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    // A connection may be routing a batch with the old table: its lines for these destinations must still find an
    // open queue. Dispatch holds the routes only for one batch (and its pacing), so this ends soon.
    while Arc::strong_count(&old_routes) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(old_routes);
    let spool_deadline = deadline
        .checked_sub(spool_shutdown_reserve(timeout))
        .unwrap_or(deadline);
    let stop_one = |running: Running| async move {
        running.handle.queue.close();
        match running.spooler {
            Some(spooler) => {
                join_writers(vec![running.writer], spool_deadline, &running.stop).await;
                running.handle.queue.finish_spool();
                join_spoolers(vec![spooler], deadline).await;
            }
            None => join_writers(vec![running.writer], deadline, &running.stop).await,
        }
        let n_lost = running.handle.queue.drop_remaining();
        if n_lost > 0 {
            error!(destination = %running.identity, lines = n_lost, "reload: removed destination stopped with lines not delivered");
        } else {
            info!(destination = %running.identity, "reload: removed destination drained and stopped");
        }
        running.identity
    };
    let mut stopping = Vec::new();
    for running in removed {
        stopping.push(tokio::spawn(stop_one(running)));
    }
    for stopped in stopping {
        // Its counters stay listed, so what it sent and dropped stays counted; a reload naming it again reuses them.
        if let Ok(stopped_identity) = stopped.await {
            retiring
                .lock()
                .retain(|identity| *identity != stopped_identity);
        }
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
