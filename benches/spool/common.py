"""Shared parts of the spool scripts (stdlib only): a recording sink, numbered clients, the relay as a child process,
/stats, a directory's bytes and the results file.

Lines are `<prefix>.c<conn>.<seq> <seq> <ts>`; a sink keeps each connection's whole lines apart, so a connection cut
mid-line leaves a half line that is dropped, never glued to the next connection's bytes.
"""
import json
import os
import socket
import subprocess
import threading
import time
import urllib.request

TIMESTAMP = 1700000000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_below_ephemeral_range(rng):
    """A free port below the ephemeral range, so a relay restarted on it finds it free (no client's local port, no
    self-connect of a client retrying while the relay is down)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            first = int(f.read().split()[0])
    except OSError:
        first = 32768
    low = min(10000, first // 2)
    for _ in range(1000):
        port = rng.randrange(low, first)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise SystemExit("no free port below the ephemeral range")


class Listener:
    """A destination's listening side: accepts on 127.0.0.1 (`port` 0 for any), hands each connection to
    `self._read(conn, index)` on a thread of its own, and can die (listener and every connection closed) and listen
    again on the same port. `rcvbuf`, when set, is every accepted connection's receive buffer."""

    def listen(self):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.rcvbuf:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def die(self):
        """The destination goes away: listener and every connection closed."""
        # Shut down first: a plain close leaves the port listening while the accept thread is blocked on it.
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass
        self.conns = []

    def _accept(self, listener):
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            # Numbered across every listen, so a destination that comes back does not reuse an earlier number.
            index = self.n_accepted = getattr(self, "n_accepted", 0) + 1
            threading.Thread(target=self._read, args=(conn, index - 1), daemon=True).start()


class Sink(Listener):
    """A destination: counts every line per (conn, seq), keeps per-connection whole lines only, can stall, and
    measures its rate per second. `rcvbuf` small makes a stall hold the relay back at once."""

    def __init__(self, prefix, rcvbuf=16 * 1024, port=0):
        self.prefix = prefix.encode() + b".c"
        self.counts = {}
        self.malformed = []
        self.n_lines = 0
        # Order per client connection: a line seen for the first time must come after every line of its
        # connection seen before (a resend may repeat old lines; it must not bring a new one out of order).
        self.max_seq = {}
        self.order_violations = 0
        self.lock = threading.Lock()
        self.stalled = threading.Event()
        self.per_second = {}
        self.conns = []
        self.rcvbuf = rcvbuf
        self.port = port
        self.listen()

    def _read(self, conn, _index):
        rest = b""
        while True:
            while self.stalled.is_set():
                time.sleep(0.005)
            try:
                data = conn.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            lines = (rest + data).split(b"\n")
            rest = lines.pop()
            second = int(time.monotonic())
            with self.lock:
                self.per_second[second] = self.per_second.get(second, 0) + len(lines)
                self.n_lines += len(lines)
                for line in lines:
                    key = parse_numbered(line, self.prefix)
                    if key is None:
                        if len(self.malformed) < 20:
                            self.malformed.append(line[:200].decode("utf-8", "replace"))
                        continue
                    seen = self.counts.get(key, 0)
                    if not seen:
                        client, seq = key
                        if seq < self.max_seq.get(client, -1):
                            self.order_violations += 1
                        else:
                            self.max_seq[client] = seq
                    self.counts[key] = seen + 1

    def snapshot(self):
        with self.lock:
            return dict(self.counts), list(self.malformed), self.n_lines


def parse_numbered(line, prefix):
    """(conn, seq) of exactly `<prefix>.c<conn>.<seq> <seq> <ts>`, else None."""
    if not line.startswith(prefix):
        return None
    fields = line[len(prefix):].split(b" ")
    if len(fields) != 3:
        return None
    conn, _, seq = fields[0].partition(b".")
    try:
        conn, seq, value, ts = int(conn), int(seq), int(fields[1]), int(fields[2])
    except ValueError:
        return None
    if value != seq or ts != TIMESTAMP:
        return None
    return conn, seq


def numbered_body(prefix, conn, first, n):
    return b"".join(b"%s.c%d.%d %d %d\n" % (prefix.encode(), conn, seq, seq, TIMESTAMP) for seq in range(first, first + n))


class Relay:
    """The polymur binary as a child process; `start` waits for its listener line (a failed restart raises)."""

    def __init__(self, binary, args):
        self.binary = binary
        self.args = args
        self.process = None
        self.stderr = []
        self.listen_address = None

    def start(self, patience=60):
        self.stderr = []
        self.process = subprocess.Popen([self.binary, *self.args], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        listening = threading.Event()

        def collect(process, lines):
            for raw in process.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                lines.append(line)
                if "Metrics listener started: " in line:
                    listening.set()
        threading.Thread(target=collect, args=(self.process, self.stderr), daemon=True).start()
        deadline = time.monotonic() + patience
        while not listening.wait(0.01):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("relay did not start (exit %s):\n%s" % (self.process.poll(), "\n".join(self.stderr[-20:])))
        return self

    def kill(self):
        self.process.kill()
        self.process.wait()

    def terminate(self, timeout=120):
        self.process.terminate()
        return self.process.wait(timeout=timeout)

    def pid(self):
        return self.process.pid

    def rss_bytes(self):
        try:
            with open("/proc/%d/status" % self.process.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0


def get_stats(stats_port, timeout=5):
    with urllib.request.urlopen("http://127.0.0.1:%d/stats" % stats_port, timeout=timeout) as r:
        return json.load(r)


def wait_for(what, condition, patience=120, interval=0.05):
    deadline = time.monotonic() + patience
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for: " + what)
        time.sleep(interval)


def directory_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def dropped_total(destination):
    return sum(destination.get("dropped", {}).values())


def spool_lines(destination):
    spool = destination.get("spool")
    return spool["lines"] if spool else 0


def write_result(name, summary):
    """Prints the summary line and appends it to benches/results/<date>-<name>-<commit>.jsonl."""
    line = json.dumps(summary)
    print(line, flush=True)
    here = os.path.dirname(os.path.abspath(__file__))
    results = os.path.join(here, "..", "results")
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    path = os.path.join(results, "%s-%s-%s.jsonl" % (time.strftime("%Y-%m-%d"), name, commit))
    with open(path, "a") as f:
        f.write(line + "\n")
    print("result appended to " + os.path.relpath(path), file=__import__("sys").stderr)
