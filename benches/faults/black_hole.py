#!/usr/bin/env python3
"""What a relay loses when the path to its destination black-holes for a while: polymur against itself (an older
build) or carbon-c-relay, with real packets dropped by nft in a network namespace of its own.

Run as root (or under `unshare -rn`, which this script does itself when it is not yet in a namespace of its own):

    python3 benches/faults/black_hole.py --relay 'polymur:target/release/polymur' --relay 'ccr' [--dark-secs 10]

Each relay gets a fresh run: a sink on 127.0.0.1 that records every line it reads, the relay forwarding to it, and a
sender writing numbered lines at a steady rate. After `--before-secs` the sink's port goes dark in both directions
(`nft` drops its packets; the sink process stays up and keeps its sockets), after `--dark-secs` more the path is
restored (with `--destination-dies`, the sink's sockets are closed when the path goes dark, as a host that dies, and
a new sink takes the port when it comes back), the sender goes on for `--after-secs`, stops, and the relay gets `--drain-secs` to deliver the rest. The
result is one JSON line per relay: lines sent, distinct lines the sink read, lines lost (sent, never read),
duplicates (read more than once), and the relay's own counts where it has /stats.

Only stdlib; needs `ip` and `nft`, and carbon-c-relay for `ccr`.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

NFT_TABLE = "polymur_bench_black_hole"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """Accepts any number of connections and counts every line it reads, by its number."""

    def __init__(self):
        self.counts = {}
        self.lock = threading.Lock()
        self.conns = []
        self.port = 0
        self._listen()

    def _listen(self):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener):
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def die(self):
        """The destination host dies: every socket closes, and with the path dark nothing tells the relay."""
        # Shut down first: a plain close leaves the port listening while the accept thread is blocked on it.
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for conn in self.conns:
            conn.close()
        self.conns = []

    def come_back(self):
        """A new destination process on the same port, counting into the same tally."""
        self._listen()

    def _read(self, conn):
        rest = b""
        while True:
            try:
                data = conn.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            lines = (rest + data).split(b"\n")
            rest = lines.pop()
            with self.lock:
                for line in lines:
                    path = line.split(b" ", 1)[0]
                    if path.startswith(b"bh.n"):
                        n = int(path[4:])
                        self.counts[n] = self.counts.get(n, 0) + 1


def nft(*args):
    subprocess.run(["nft", *args], check=True)


def go_dark(port):
    nft("add", "table", "inet", NFT_TABLE)
    for hook in ("input", "output"):
        nft("add", "chain", "inet", NFT_TABLE, hook, "{", "type", "filter", "hook", hook, "priority", "0", ";", "}")
        for direction in ("dport", "sport"):
            nft("add", "rule", "inet", NFT_TABLE, hook, "tcp", direction, str(port), "drop")


def restore():
    nft("delete", "table", "inet", NFT_TABLE)


def start_relay(spec, listen_port, sink_port, workdir):
    kind, _, arg = spec.partition(":")
    if kind == "polymur":
        stats_port = free_port()
        command = [arg, "-listen-addr", "127.0.0.1", "-listen-port", str(listen_port),
                   "-destinations", f"127.0.0.1:{sink_port}", "-stats-addr", f"127.0.0.1:{stats_port}"]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), stats_port
    if kind == "ccr":
        config = os.path.join(workdir, "ccr.conf")
        with open(config, "w") as f:
            f.write(f"cluster sink forward 127.0.0.1:{sink_port};\nmatch * send to sink;\n")
        command = ["carbon-c-relay", "-f", config, "-p", str(listen_port), "-l", os.path.join(workdir, "ccr.log")]
        command += arg.split() if arg else []
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), None
    raise SystemExit(f"unknown relay {spec!r}: polymur:PATH or ccr[:FLAGS]")


def polymur_stats(stats_port):
    if stats_port is None:
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/stats", timeout=2) as r:
            destination = json.load(r)["destinations"][0]
    except OSError:
        return None
    keep = ("sent_lines", "queued_lines", "dropped", "resent_lines", "connects", "disconnects", "write_timeouts")
    return {key: destination.get(key) for key in keep}


def wait_listening(port, deadline_secs=10):
    deadline = time.monotonic() + deadline_secs
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"relay did not listen on {port}")


def run(spec, args):
    sink = Sink()
    listen_port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        relay, stats_port = start_relay(spec, listen_port, sink.port, workdir)
        try:
            wait_listening(listen_port)
            sender = socket.create_connection(("127.0.0.1", listen_port))
            ts = int(time.time())
            n_sent = 0
            interval = 1.0 / args.batches_per_sec
            phases = [("before", args.before_secs), ("dark", args.dark_secs), ("after", args.after_secs)]
            for phase, seconds in phases:
                if phase == "dark":
                    go_dark(sink.port)
                    if args.destination_dies:
                        sink.die()
                if phase == "after":
                    if args.destination_dies:
                        sink.come_back()
                    restore()
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    batch = b"".join(b"bh.n%d 1 %d\n" % (n, ts) for n in range(n_sent, n_sent + args.batch_lines))
                    sender.sendall(batch)
                    n_sent += args.batch_lines
                    time.sleep(interval)
            sender.close()
            deadline = time.monotonic() + args.drain_secs
            while time.monotonic() < deadline:
                with sink.lock:
                    if len(sink.counts) >= n_sent:
                        break
                time.sleep(0.2)
            stats = polymur_stats(stats_port)
        finally:
            relay.terminate()
            try:
                relay.wait(timeout=15)
            except subprocess.TimeoutExpired:
                relay.kill()
    with sink.lock:
        counts = dict(sink.counts)
    n_read_distinct = sum(1 for n in range(n_sent) if n in counts)
    return {
        "relay": spec, "dark_secs": args.dark_secs, "destination_dies": args.destination_dies, "lines_sent": n_sent, "lines_read_distinct": n_read_distinct,
        "lost": n_sent - n_read_distinct, "duplicates": sum(c - 1 for c in counts.values() if c > 1),
        "relay_stats": stats,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--relay", action="append", required=True, help="polymur:PATH or ccr[:FLAGS]")
    parser.add_argument("--before-secs", type=float, default=3)
    parser.add_argument("--dark-secs", type=float, default=10)
    parser.add_argument("--after-secs", type=float, default=3)
    parser.add_argument("--drain-secs", type=float, default=60)
    parser.add_argument("--destination-dies", action="store_true",
                        help="the sink process dies when the path goes dark and a new one takes its port when it is back")
    parser.add_argument("--batch-lines", type=int, default=200)
    parser.add_argument("--batches-per-sec", type=float, default=50)
    args = parser.parse_args()
    if os.environ.get("POLYMUR_BENCH_NETNS") != "1":
        # A network namespace of our own, so nft rules touch nothing else; `lo` must be brought up in it.
        env = dict(os.environ, POLYMUR_BENCH_NETNS="1")
        script = "ip link set lo up && exec python3 \"$0\" \"$@\""
        os.execvpe("unshare", ["unshare", "-rn", "sh", "-c", script, os.path.abspath(__file__), *sys.argv[1:]], env)
    for spec in args.relay:
        print(json.dumps(run(spec, args)), flush=True)


if __name__ == "__main__":
    main()
