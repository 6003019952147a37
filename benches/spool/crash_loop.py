#!/usr/bin/env python3
"""The spool against kill -9, for many rounds: the proof of tests/it/spool_crash.rs on a release binary.

    python3 benches/spool/crash_loop.py target/release/polymur [--rounds 200] [--seed N] [--mode always|overflow]

A sink on 127.0.0.1 records every whole line per connection and stalls now and then (it reads for --reading-secs,
then stops reading for --stall-secs: the destination stays up, the relay holds seconds of lines). Client threads send
numbered lines (`crash.c<conn>.<seq> <seq> <ts>`) over many short connections at --rate lines/s. The relay, with a
spool in --mode, is killed with SIGKILL after a random lifetime (seeded) and restarted on the same spool directory and
port, --rounds times; then the clients stop, the relay drains, and gets SIGTERM.

Owed: every line of a client connection that closed (the client saw the relay's close after its own) at least
--handover-secs before the next kill. The JSON summary: rounds, lines sent, owed, lost, duplicates, malformed lines (two
halves joined), failed restarts, the largest spool directory seen against --spool-max-bytes, the accounting of the
last run, seconds. `always` must lose nothing; `overflow` loses what sat in memory (it spools only what overflows).
"""
import argparse
import os
import random
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

PREFIX = "crash"


class Clients:
    def __init__(self, port, rate, max_lines, seed, n_threads=2):
        self.port = port
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.next_id = 0
        self.connections = {}  # id -> (n_lines, opened_at, closed_at or None)
        self.threads = [threading.Thread(target=self._run, args=(rate / n_threads, max_lines, seed + i), daemon=True)
                        for i in range(n_threads)]
        for thread in self.threads:
            thread.start()

    def _run(self, rate, max_lines, seed):
        rng = random.Random(seed)
        next_at = time.monotonic()
        while not self.stop_flag.is_set():
            ahead = next_at - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            n = rng.randint(1, max_lines)
            opened_at = time.monotonic()
            try:
                sock = common.socket.create_connection(("127.0.0.1", self.port), timeout=10)
            except OSError:
                time.sleep(0.005)
                continue
            with self.lock:
                conn_id = self.next_id
                self.next_id += 1
            closed_at = None
            try:
                sock.sendall(common.numbered_body(PREFIX, conn_id, 0, n))
                sock.shutdown(common.socket.SHUT_WR)
                if sock.recv(64) == b"":
                    closed_at = time.monotonic()
            except OSError:
                pass
            finally:
                sock.close()
            with self.lock:
                self.connections[conn_id] = (n, opened_at, closed_at)
            next_at += n / rate

    def stop(self):
        self.stop_flag.set()
        for thread in self.threads:
            thread.join()
        with self.lock:
            return dict(self.connections)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("relay", help="path of the polymur binary (a release build)")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--mode", choices=["always", "overflow"], default="always")
    parser.add_argument("--rate", type=float, default=20000, help="client lines per second")
    parser.add_argument("--max-lines-per-connection", type=int, default=400)
    parser.add_argument("--spool-max-bytes", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--slack-bytes", type=int, default=64 * 1024,
                        help="what the spool may hold beyond its bound: one segment header and one record")
    parser.add_argument("--reading-secs", type=float, default=1.0)
    parser.add_argument("--stall-secs", type=float, default=3.0)
    parser.add_argument("--min-life-secs", type=float, default=0.5)
    parser.add_argument("--max-life-secs", type=float, default=3.0)
    parser.add_argument("--handover-secs", type=float, default=1.0)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(6), "big")
    print("crash_loop: seed %d" % seed, file=sys.stderr)
    rng = random.Random(seed)
    started = time.monotonic()

    sink = common.Sink(PREFIX)
    stop_schedule = threading.Event()

    def stall_schedule():
        while not stop_schedule.wait(args.reading_secs):
            sink.stalled.set()
            stop_schedule.wait(args.stall_secs)
            sink.stalled.clear()
    threading.Thread(target=stall_schedule, daemon=True).start()

    spool_dir = tempfile.mkdtemp(prefix="polymur-crash-")
    port = common.free_port_below_ephemeral_range(rng)
    stats_port = common.free_port_below_ephemeral_range(rng)
    relay = common.Relay(args.relay, [
        "-listen-addr", "127.0.0.1", "-listen-port", str(port), "-stats-addr", "127.0.0.1:%d" % stats_port,
        "-destinations", "127.0.0.1:%d" % sink.port, "-spool-dir", spool_dir, "-spool-mode", args.mode,
        "-spool-max-bytes", str(args.spool_max_bytes), "-shutdown-timeout", "120s"])
    relay.start()
    has_spool = common.get_stats(stats_port)["destinations"][0].get("spool") is not None

    max_spool = [0]
    watching = threading.Event()

    def watch():
        while not watching.wait(0.02):
            max_spool[0] = max(max_spool[0], common.directory_bytes(spool_dir))
    threading.Thread(target=watch, daemon=True).start()

    clients = Clients(port, args.rate, args.max_lines_per_connection, seed)
    kills = []  # when each SIGKILL was sent
    kills_done = []  # when that relay was gone
    failed_restarts = 0
    connections = {}
    for round_ in range(args.rounds):
        time.sleep(rng.uniform(args.min_life_secs, args.max_life_secs))
        kills.append(time.monotonic())
        relay.kill()
        kills_done.append(time.monotonic())
        if round_ == args.rounds - 1:
            connections = clients.stop()
            stop_schedule.set()
            sink.stalled.clear()
        try:
            relay.start()
        except RuntimeError as err:
            failed_restarts += 1
            print("restart %d failed: %s" % (round_, err), file=sys.stderr)
            relay.start()
        if (round_ + 1) % 20 == 0:
            print("crash_loop: %d rounds, %.0f s" % (round_ + 1, time.monotonic() - started), file=sys.stderr)

    # The last run: no clients; it replays what the kills left and must end with everything sent.
    def drained():
        stats = common.get_stats(stats_port)
        destination = stats["destinations"][0]
        return stats if destination["queued_lines"] == 0 and common.spool_lines(destination) == 0 else None
    stats = common.wait_for("the last run drains", drained, patience=300)
    destination = stats["destinations"][0]
    accounting = {
        "received": stats["lines"]["received"], "sent": destination["sent_lines"],
        "dropped": destination["dropped"], "queued": destination["queued_lines"],
        "spooled": common.spool_lines(destination), "spool": destination.get("spool"),
    }
    exit_code = relay.terminate()
    watching.set()

    owed = {}
    for conn_id, (n, opened_at, closed_at) in connections.items():
        # A kill closes the connections it cuts, and the client sees that close like the relay's own: a connection
        # that spans a kill is not a handover, only one that lived within one run of the relay is.
        if closed_at is None or any(opened_at < done and kill <= closed_at for kill, done in zip(kills, kills_done)):
            continue
        next_kill = next((k for k in kills if k > closed_at), None)
        if next_kill is None or next_kill - closed_at >= args.handover_secs:
            owed[conn_id] = n
    n_owed = sum(owed.values())
    try:
        common.wait_for("every owed line arrives", lambda: all(
            (conn_id, seq) in sink.counts for conn_id, n in owed.items() for seq in (n - 1, 0)) or None, patience=10)
    except RuntimeError:
        pass
    counts, malformed, _ = sink.snapshot()
    lost = sum(1 for conn_id, n in owed.items() for seq in range(n) if (conn_id, seq) not in counts)
    summary = {
        "bench": "spool_crash_loop", "relay": args.relay, "mode": args.mode, "seed": seed, "has_spool": has_spool,
        "rounds": args.rounds, "connections": len(connections),
        "lines_sent": sum(n for n, _, _ in connections.values()), "lines_owed": n_owed, "lines_lost": lost,
        "duplicates": sum(c - 1 for c in counts.values() if c > 1), "malformed": len(malformed),
        "malformed_examples": malformed[:3], "failed_restarts": failed_restarts,
        "max_spool_bytes": max_spool[0], "spool_max_bytes": args.spool_max_bytes,
        "spool_within_bound": max_spool[0] <= args.spool_max_bytes + args.slack_bytes,
        "last_run": accounting, "exit_code": exit_code, "seconds": round(time.monotonic() - started, 1),
    }
    common.write_result("spool-crash-loop", summary)
    ok = lost == 0 and not malformed and failed_restarts == 0 and summary["spool_within_bound"] and exit_code == 0
    sys.exit(0 if ok or args.mode == "overflow" else 1)


if __name__ == "__main__":
    main()
