//! The real `polymur` binary as a child process: started on port 0, its stderr collected, stopped by pid.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::PATIENCE;

/// What every test relay listens with: 127.0.0.1, a port of the kernel's choosing, no stats server.
pub const TEST_LISTEN_ARGS: [&str; 6] = [
    "-listen-addr",
    "127.0.0.1",
    "-listen-port",
    "0",
    "-stats-addr",
    "",
];

/// Runs the binary with `args` until it exits (stdin empty, `RUST_LOG` unset) and returns what it did.
pub fn run_to_exit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_polymur"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run the polymur binary")
}

/// Runs the binary with `args` and `stdin` as its standard input until it exits (`RUST_LOG` unset), and returns
/// what it did. The input is written from a thread of its own, so a child that answers as it reads never blocks.
pub fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_polymur"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the polymur binary");
    let mut child_stdin = child.stdin.take().expect("stdin");
    let input = stdin.to_vec();
    // A child that exits early (a bad config) closes its stdin: that broken pipe is its answer, not ours.
    let writer = std::thread::spawn(move || {
        let _ = child_stdin.write_all(&input);
    });
    let output = child
        .wait_with_output()
        .expect("wait for the polymur binary");
    writer.join().expect("stdin writer");
    output
}

/// A config file for the binary's `-c`, holding `text`; it is deleted when dropped.
pub fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("create temp file");
    file.write_all(text.as_bytes()).expect("write temp file");
    file
}

/// A running `polymur` binary.
pub struct RelayProcess {
    child: Child,
    /// The plaintext listener's address, read from its startup log line.
    pub listen_address: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
    /// The read end of a stdout pipe nobody reads, held open so that writes to it block rather than fail.
    _unread_stdout: Option<ChildStdout>,
}

impl RelayProcess {
    /// Starts the binary with `args` plus `-listen-addr 127.0.0.1 -listen-port 0 -stats-addr ''`, and waits for
    /// `Metrics listener started: ...` on stderr.
    pub fn start(args: &[&str]) -> RelayProcess {
        RelayProcess::start_with(args, false)
    }

    /// Starts the binary as [`RelayProcess::start`] does, with a stdout pipe that nobody reads: once the pipe's
    /// buffer is full, every write to stdout blocks.
    pub fn start_with_unread_stdout(args: &[&str]) -> RelayProcess {
        RelayProcess::start_with(args, true)
    }

    /// Starts the binary as [`RelayProcess::start`] does, through `wrapper`: the program and arguments that run it,
    /// given the binary's path and its arguments after them (`unshare -rm sh -c 'mount ... && exec "$0" "$@"'`).
    #[cfg_attr(not(feature = "peers"), allow(dead_code))] // Only the peer tests use it.
    pub fn start_under(wrapper: &[&str], args: &[&str]) -> RelayProcess {
        let (program, wrapper_args) = wrapper.split_first().expect("a wrapper program");
        let mut command = Command::new(program);
        command
            .args(wrapper_args)
            .arg(env!("CARGO_BIN_EXE_polymur"));
        RelayProcess::start_command(command, args, false)
    }

    fn start_with(args: &[&str], unread_stdout: bool) -> RelayProcess {
        RelayProcess::start_command(
            Command::new(env!("CARGO_BIN_EXE_polymur")),
            args,
            unread_stdout,
        )
    }

    fn start_command(mut command: Command, args: &[&str], unread_stdout: bool) -> RelayProcess {
        let mut child = command
            .args(TEST_LISTEN_ARGS)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start polymur");
        let stderr = collect_lines(child.stderr.take().expect("stderr"));
        let child_stdout = child.stdout.take().expect("stdout");
        let (stdout, unread_stdout) = if unread_stdout {
            (Arc::default(), Some(child_stdout))
        } else {
            (collect_lines(child_stdout), None)
        };
        let mut process = RelayProcess {
            child,
            listen_address: "0.0.0.0:0".parse().expect("address"),
            stderr,
            stdout,
            _unread_stdout: unread_stdout,
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
        self.wait_for_logs(needle, 1)
    }

    /// Waits until stderr has `n` lines containing `needle`, and returns the last of them.
    pub fn wait_for_logs(&mut self, needle: &str, n: usize) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self
                .stderr
                .lock()
                .iter()
                .filter(|line| line.contains(needle))
                .nth(n - 1)
            {
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

    /// The stats server's address, read from its `Runstats started: ...` log line (start with `-stats-addr`).
    pub fn stats_address(&mut self) -> SocketAddr {
        let line = self.wait_for_log("Runstats started: ");
        line.rsplit("Runstats started: ")
            .next()
            .expect("address text")
            .trim()
            .parse()
            .expect("stats address in the log line")
    }

    /// `GET /stats` from the stats server, as JSON.
    pub fn stats(&mut self) -> serde_json::Value {
        let mut stream =
            std::net::TcpStream::connect(self.stats_address()).expect("connect to /stats");
        stream
            .write_all(b"GET /stats HTTP/1.1\r\nHost: polymur\r\nConnection: close\r\n\r\n")
            .expect("send request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        serde_json::from_str(body).expect("JSON body")
    }

    /// The numbers of the descriptors the child has open, from `/proc/PID/fd`.
    pub fn open_descriptors(&self) -> Vec<u64> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc fd")
            .map(|entry| {
                let entry = entry.expect("fd entry");
                entry
                    .file_name()
                    .to_str()
                    .expect("fd name")
                    .parse()
                    .expect("fd number")
            })
            .collect()
    }

    /// Sets the child's soft and hard `RLIMIT_NOFILE` to `limit`: it can no longer open a descriptor numbered
    /// `limit` or higher. Lowering the hard limit too keeps it there, whatever the child does.
    pub fn limit_open_files(&self, limit: u64) {
        let pid = i32::try_from(self.pid()).expect("pid fits pid_t");
        rlimit::prlimit(pid, rlimit::Resource::NOFILE, Some((limit, limit)), None)
            .expect("prlimit on the child");
    }

    /// CPU time the child has used so far, user and system, from `/proc/PID/stat`.
    pub fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("read /proc stat");
        // The command name in parentheses may hold spaces; the fields after it do not. utime and stime are the
        // 14th and 15th fields, the 12th and 13th after the name.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .expect("stat has a command name")
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second() as f64)
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

/// `sysconf(_SC_CLK_TCK)`, the unit of the CPU times in `/proc/PID/stat`, as `getconf` reports it.
fn clock_ticks_per_second() -> u64 {
    let output = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("run getconf");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK")
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
