//! Process signals: SIGTERM and SIGINT ask for a graceful shutdown, a second one forces exit, SIGHUP asks for a
//! reload.
//!
//! Sits at the process edge: `main` installs [`ShutdownSignals`] before the relay starts, so a signal that arrives
//! while listeners are binding is held until `main` waits for it, and no signal ever takes its default action (which
//! for SIGHUP would kill the relay). After the first SIGTERM or SIGINT a background task keeps watching; a second one
//! exits the process at once with code 1, for an operator who will not wait for `shutdown_timeout`.
//! SIGHUP asks `main` to reload the configuration ([`Signal::Reload`]); during shutdown it is logged and ignored.

use std::fmt;
use std::io;

use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, warn};

/// The registered signal handlers; hold it from startup until the relay should stop.
#[derive(Debug)]
pub struct ShutdownSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

/// What a signal asks of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: shut down.
    Shutdown(ShutdownSignal),
    /// SIGHUP: read the configuration again.
    Reload,
}

/// The signal that asked for the shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownSignal {
    /// SIGTERM, as sent by service managers.
    Terminate,
    /// SIGINT, as sent by Ctrl-C.
    Interrupt,
}

impl fmt::Display for ShutdownSignal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            ShutdownSignal::Terminate => "SIGTERM",
            ShutdownSignal::Interrupt => "SIGINT",
        })
    }
}

impl ShutdownSignals {
    /// Registers the handlers for SIGTERM, SIGINT and SIGHUP; from here on none of them takes its default action.
    ///
    /// # Errors
    ///
    /// The error of registering a handler.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with I/O enabled.
    pub fn install() -> io::Result<ShutdownSignals> {
        Ok(ShutdownSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next signal (including one that arrived since [`ShutdownSignals::install`]).
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.terminate.recv() => Signal::Shutdown(ShutdownSignal::Terminate),
            _ = self.interrupt.recv() => Signal::Shutdown(ShutdownSignal::Interrupt),
            _ = self.hangup.recv() => Signal::Reload,
        }
    }

    /// Once shutdown has begun: spawns a task that exits the process with code 1 on the next SIGTERM or SIGINT, and
    /// logs and ignores SIGHUP.
    pub fn exit_on_second_signal(mut self) {
        tokio::spawn(async move {
            loop {
                match self.next().await {
                    Signal::Shutdown(second_signal) => {
                        error!(
                            signal = %second_signal,
                            "second signal received, exiting without finishing shutdown"
                        );
                        std::process::exit(1);
                    }
                    Signal::Reload => warn!("shutting down: ignoring SIGHUP"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;

    const CHILD_ENV: &str = "POLYMUR_SIGNAL_TEST_CHILD";
    const TEST_NAME: &str =
        "shutdown::tests::sighup_asks_for_a_reload_and_a_second_signal_forces_exit";

    /// Signals would hit every test in this process, so the test re-runs itself in a child process: the child waits
    /// for signals and reports on stdout, the parent sends them and checks what the child did.
    #[test]
    fn sighup_asks_for_a_reload_and_a_second_signal_forces_exit() {
        if std::env::var_os(CHILD_ENV).is_some() {
            run_child();
            return;
        }
        let mut child = Command::new(std::env::current_exe().expect("test binary path"))
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the test binary");
        // libtest prints "test NAME ... " without a newline, so a report may follow it on the same line.
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let (report_sender, reports) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Some(start) = line.find("child: ") {
                    let _ = report_sender.send(line[start..].to_string());
                }
            }
        });
        assert_eq!(read_report(&reports, &mut child), "child: ready");
        send_signal(&child, "HUP");
        assert_eq!(read_report(&reports, &mut child), "child: reload");
        send_signal(&child, "TERM");
        assert_eq!(
            read_report(&reports, &mut child),
            "child: shutting down on SIGTERM"
        );
        send_signal(&child, "INT");
        let status = wait_with_deadline(&mut child, Duration::from_secs(10));
        assert_eq!(status.code(), Some(1), "{status}");
    }

    fn read_report(reports: &mpsc::Receiver<String>, child: &mut Child) -> String {
        match reports.recv_timeout(Duration::from_secs(10)) {
            Ok(report) => report,
            Err(err) => {
                let _ = child.kill();
                panic!("no report from the child: {err}");
            }
        }
    }

    fn run_child() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build runtime");
        runtime.block_on(async {
            let mut signals = ShutdownSignals::install().expect("install signal handlers");
            println!("child: ready");
            let signal = loop {
                match signals.next().await {
                    Signal::Reload => println!("child: reload"),
                    Signal::Shutdown(signal) => break signal,
                }
            };
            signals.exit_on_second_signal();
            println!("child: shutting down on {signal}");
            // The second signal must end the process before this does.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
    }

    fn send_signal(child: &Child, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name}: {status}");
    }

    fn wait_with_deadline(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait for child") {
                return status;
            }
            if Instant::now() > deadline {
                child.kill().expect("kill child");
                panic!("child did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
