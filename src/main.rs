//! The `polymur` binary: parse the command line, build the config, start the relay, wait for a signal, drain; or,
//! for `-t`, the config inspections (`-test-routes`, `-ring-dump`, `-ring-diff`) and `-import-ccr`, answer and exit.
//!
//! Exit codes: 0 after a requested shutdown (lines lost during it are logged and counted by the relay, not hidden
//! here), 1 on a runtime failure such as a listener that cannot bind, 64 on a usage error (also a `-ring-dump` of a
//! cluster the config lacks), 78 on a bad config (also for `-t` and the inspections, and for a carbon-c-relay config
//! that `-import-ccr` cannot read or translate).

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Context as _;
use polymur::cli::{self, Mode};
use polymur::config::{Config, LogFormat};
use polymur::inspect::{self, Tool};
use polymur::relay::Relay;
use polymur::shutdown::{ShutdownSignals, Signal};
use tracing::{debug, error, info, warn};
use tracing_subscriber::EnvFilter;

/// `EX_USAGE` from `sysexits.h`.
const EXIT_USAGE: u8 = 64;
/// `EX_CONFIG` from `sysexits.h`.
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = match cli::parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(err) => {
            // `--help` and `--version` arrive here too, to be printed on stdout with success.
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let (config, mode) = match cli.clone().into_config() {
        Ok(config_and_mode) => config_and_mode,
        Err(err) => {
            eprintln!("polymur: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match mode {
        Mode::Run => {}
        Mode::Check => {
            println!("polymur: configuration ok");
            return ExitCode::SUCCESS;
        }
        Mode::Inspect(tool) => return run_inspection(&tool, &config),
        Mode::ImportCcr(path) => return run_import(&path),
    }

    init_logging(&config);
    raise_open_files_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("polymur")
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            error!(error = %err, "cannot start the tokio runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!(error = %format!("{err:#}"), "relay failed");
            // A spool directory that cannot be used, or that another relay holds, is a configuration problem.
            if err.chain().any(|cause| cause.is::<polymur::spool::Error>()) {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Starts the relay and runs it until SIGTERM or SIGINT, then shuts it down. On SIGHUP it reads the config file
/// again, applies the same command-line flags over it, and reloads; a config that does not load or validate is
/// logged and the running one stays.
async fn run(config: Config, cli: cli::Cli) -> anyhow::Result<()> {
    // Installed before the relay starts, so a signal during startup is not lost and SIGHUP never kills us.
    let mut signals = ShutdownSignals::install().context("cannot install signal handlers")?;
    let mut relay = Relay::start(config).await.context("cannot start")?;
    let signal = loop {
        match signals.next().await {
            Signal::Shutdown(signal) => break signal,
            Signal::Reload => {
                info!("SIGHUP: reloading the configuration");
                let reloaded = match cli.clone().into_config() {
                    Ok((config, _)) => relay.reload(config).await,
                    Err(err) => Err(err.into()),
                };
                if let Err(err) = reloaded {
                    error!(error = %format!("{err:#}"), "reload rejected, the running configuration stays");
                }
            }
        }
    };
    signals.exit_on_second_signal();
    info!(%signal, "shutting down");
    let report = relay.shutdown().await;
    info!(lines_lost = report.lines_lost, "stopped");
    Ok(())
}

/// Runs a config inspection on stdin and stdout. A closed stdout (`| head`) ends it quietly with success.
fn run_inspection(tool: &Tool, config: &Config) -> ExitCode {
    match inspect::run_on_stdio(tool, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(inspect::Error::Io(err)) if err.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("polymur: {err}");
            match err {
                inspect::Error::Usage(_) => ExitCode::from(EXIT_USAGE),
                inspect::Error::Config(_) => ExitCode::from(EXIT_CONFIG),
                inspect::Error::Io(_) => ExitCode::FAILURE,
            }
        }
    }
}

/// Prints the polymur config translated from the carbon-c-relay config at `path`, and what it skipped on stderr.
fn run_import(path: &std::path::Path) -> ExitCode {
    match polymur::import_ccr::import_file(path) {
        Ok(imported) => {
            for note in &imported.notes {
                eprintln!("polymur: not imported: {note}");
            }
            print!("{}", imported.toml);
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("polymur: {}: {err}", path.display());
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Logs to stderr as text with timestamps or as JSON; `RUST_LOG`, when set, replaces `log.level`.
fn init_logging(config: &Config) {
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.is_empty());
    let (filter, rust_log_error) = match rust_log.as_deref().map(EnvFilter::try_new) {
        Some(Ok(filter)) => (filter, None),
        Some(Err(err)) => (EnvFilter::new(&config.log.level), Some(err)),
        // `log.level` passed `Config::validate`, so it parses.
        None => (EnvFilter::new(&config.log.level), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    if let Some(err) = rust_log_error {
        warn!(error = %err, level = %config.log.level, "ignoring invalid RUST_LOG, using log.level");
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: every client connection is a file descriptor.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n_files) => debug!(limit = n_files, "raised the open files limit"),
        Err(err) => warn!(error = %err, "cannot raise the open files limit"),
    }
}
