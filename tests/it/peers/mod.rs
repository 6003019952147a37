//! The real Graphite programs our users run, end to end with polymur: collectd and statsd in front of it,
//! carbon-cache behind it, carbon-c-relay on either side.
//!
//! Each test starts its peer itself, on free loopback ports, with every file in a temp dir, and stops it by pid. A
//! peer runs under coreutils `timeout -s KILL`, in its own process group, so it dies even if the test binary is
//! killed; dropping a [`Peer`] kills the whole group. With the `peers` feature on, a missing program fails its test
//! with the command that installs it: these tests never skip quietly. `/work/shared/PEERS.md` has the facts about each
//! peer that these tests rely on.

mod carbon_c_relay;
mod carbon_cache;
mod collectd;
mod import_ccr;
mod statsd;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::support::PATIENCE;

/// Longest a peer may live: `timeout` kills it after this even if the test that started it hangs or is killed.
const PEER_LIFETIME: Duration = Duration::from_secs(300);

/// A real peer program running as a child process, its stdout and stderr collected.
pub struct Peer {
    name: &'static str,
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl Peer {
    /// Starts `program` with `args` in `dir`, bounded by [`PEER_LIFETIME`].
    pub fn start(name: &'static str, program: &Path, args: &[&str], dir: &Path) -> Peer {
        let mut child = Command::new("timeout")
            .args(["-s", "KILL", &PEER_LIFETIME.as_secs().to_string()])
            .arg(program)
            .args(args)
            .current_dir(dir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name} ({}): {err}", program.display()));
        let output: Arc<Mutex<Vec<String>>> = Arc::default();
        collect_lines(child.stdout.take().expect("stdout"), &output);
        collect_lines(child.stderr.take().expect("stderr"), &output);
        Peer {
            name,
            child,
            output,
        }
    }

    /// Everything the peer printed so far, for failure messages.
    pub fn output(&self) -> String {
        self.output.lock().join("\n")
    }

    /// Panics with the peer's output if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait for peer") {
            panic!(
                "{} exited with {status}; its output:\n{}",
                self.name,
                self.output()
            );
        }
    }

    /// Sends SIGTERM (`timeout` passes it on to the peer) and waits for the peer to exit, at most [`PATIENCE`].
    pub async fn stop(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.name);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for peer") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit after SIGTERM; its output:\n{}",
                self.name,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the peer accepts TCP connections on `port` (connects and closes, sending nothing).
    pub async fn wait_for_port(&mut self, port: u16) {
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(address).await.is_err() {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{} does not accept on {address}; its output:\n{}",
                self.name,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // The group holds `timeout`, the peer and anything the peer forked.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

/// The installed program at `path` (absolute, or a name looked up on `PATH`); panics with `install` if it is missing.
pub fn program(path: &str, install: &str) -> PathBuf {
    let candidates: Vec<PathBuf> = if path.contains('/') {
        vec![PathBuf::from(path)]
    } else {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join(path))
            .collect()
    };
    candidates
        .into_iter()
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("peer `{path}` is not installed, and the `peers` feature needs it: {install}")
        })
}

/// A free TCP port on 127.0.0.1 (free when asked; a peer binds it a moment later).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free tcp port")
        .port()
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("free udp port")
        .port()
}

/// A temp dir for a peer's config and data, removed on drop.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("polymur-peer-")
        .tempdir()
        .expect("temp dir")
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
    path
}

/// Waits until `condition` holds, polling every `interval`; panics with `what` and `peer`'s output after
/// [`PATIENCE`]. For conditions that are costly to check (a child process each time), where `eventually`'s 10 ms is
/// too often.
pub async fn wait_until(
    what: &str,
    peer: &mut Peer,
    interval: Duration,
    mut condition: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        peer.assert_running();
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}; {}'s output:\n{}",
            peer.name,
            peer.output()
        );
        tokio::time::sleep(interval).await;
    }
}

/// Checks a line the way polymur does, and says whether it is valid and already in normal form.
pub fn is_valid_normal_line(line: &str) -> bool {
    let rules = polymur::line::Rules::from_config(&polymur::Config::default().line);
    let mut out = bytes::BytesMut::new();
    matches!(
        polymur::line::check(line.as_bytes(), &rules, &mut out),
        Ok(polymur::line::Valid::AsIs(_))
    )
}

/// Seconds since the Unix epoch.
pub fn unix_now_secs() -> i64 {
    polymur::line::unix_now_secs()
}

fn collect_lines(stream: impl std::io::Read + Send + 'static, lines: &Arc<Mutex<Vec<String>>>) {
    let lines = Arc::clone(lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            lines.lock().push(line);
        }
    });
}
