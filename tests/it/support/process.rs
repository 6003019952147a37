//! The real `polymur` binary as a child process: started on port 0, its stderr collected, stopped by pid.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::PATIENCE;

/// A running `polymur` binary.
pub struct RelayProcess {
    child: Child,
    /// The plaintext listener's address, read from its startup log line.
    pub listen_address: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl RelayProcess {
    /// Starts the binary with `args` plus `-listen-addr 127.0.0.1 -listen-port 0 -stats-addr ''`, and waits for
    /// `Metrics listener started: ...` on stderr.
    pub fn start(args: &[&str]) -> RelayProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_polymur"))
            .args([
                "-listen-addr",
                "127.0.0.1",
                "-listen-port",
                "0",
                "-stats-addr",
                "",
            ])
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start polymur");
        let stderr = collect_lines(child.stderr.take().expect("stderr"));
        let stdout = collect_lines(child.stdout.take().expect("stdout"));
        let mut process = RelayProcess {
            child,
            listen_address: "0.0.0.0:0".parse().expect("address"),
            stderr,
            stdout,
        };
        let line = process.wait_for_log("Metrics listener started: ");
        let address = line
            .rsplit("Metrics listener started: ")
            .next()
            .expect("address text");
        process.listen_address = address
            .trim()
            .parse()
            .expect("listener address in the log line");
        process
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until stderr has a line containing `needle`, and returns it.
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.stderr.lock().iter().find(|line| line.contains(needle)) {
                return line.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "polymur exited with {status} before logging {needle:?}:\n{}",
                    self.stderr().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "no log line {needle:?} in:\n{}",
                self.stderr().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything logged so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().clone()
    }

    /// Everything printed on stdout so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().clone()
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, at most `PATIENCE`.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for polymur") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "polymur did not exit:\n{}",
                self.stderr().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The peak resident set size, from `/proc/PID/status` (`VmHWM`), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        self.status_bytes("VmHWM")
    }

    /// The resident set size now, from `/proc/PID/status` (`VmRSS`), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.status_bytes("VmRSS")
    }

    fn status_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        let line = status
            .lines()
            .find(|line| {
                line.strip_prefix(field)
                    .is_some_and(|rest| rest.starts_with(':'))
            })
            .unwrap_or_else(|| panic!("{field} line"));
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .expect("kB value")
            .parse()
            .expect("kB number");
        kib * 1024
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect_lines(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            sink.lock().push(line);
        }
    });
    lines
}
