#!/usr/bin/env python3
"""One destination down for a while under load, spool in `overflow` mode: does it get every line back, in order, while
the other destinations keep their rate and the relay's memory stays within its budget?

    python3 benches/spool/outage.py target/release/polymur [--outage-secs 60 --rate 200000]
    python3 benches/spool/outage.py target/release/polymur --outage-secs 5 --rate 50000     # a smoke run, seconds

Three destinations: `dead` goes away (listener and connections closed) after --before-secs and comes back on the same
port after --outage-secs; `live1` and `live2` stay up and count lines per second. --clients long-lived client
connections send numbered lines (`out.c<conn>.<seq> <seq> <ts>`) at --rate lines/s in total through the outage and
--after-secs beyond, then stop; the relay gets --drain-secs to deliver the rest, then SIGTERM.

`dead` writes each of its connections' whole lines to a file, checked afterwards: every line of every client connection
arrived (lost), and the first arrival of each came in order (gaps: a line arriving before an earlier one of its
connection). RSS is sampled every second from /proc and compared with the budget, --queue-max-bytes × destinations
+ 40 MB. The replay rate is `dead`'s lines/s after it returns, against the live destinations' rate.
"""
import argparse
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

PREFIX = b"out"
LINE = re.compile(rb"^out\.c(\d+)\.(\d+) (\d+) (\d+)$", re.M)


class CountingSink(common.Listener):
    """Counts whole lines per second; with `record_dir`, also writes each connection's whole lines to a file of its
    own (a half line at a connection's end is dropped)."""

    def __init__(self, record_dir=None, port=0):
        self.record_dir = record_dir
        self.per_second = {}
        self.n_lines = 0
        self.lock = threading.Lock()
        self.conns = []
        self.rcvbuf = None
        self.port = port
        self.listen()

    def _read(self, conn, index):
        out = open(os.path.join(self.record_dir, "%06d" % index), "wb") if self.record_dir else None
        rest = b""
        try:
            while True:
                try:
                    data = conn.recv(1 << 20)
                except OSError:
                    return
                if not data:
                    return
                data = rest + data
                last = data.rfind(b"\n")
                if last < 0:
                    rest = data
                    continue
                whole, rest = data[:last + 1], data[last + 1:]
                n = whole.count(b"\n")
                if out:
                    out.write(whole)
                second = int(time.monotonic())
                with self.lock:
                    self.per_second[second] = self.per_second.get(second, 0) + n
                    self.n_lines += n
        finally:
            if out:
                out.close()

    def rates(self, start, end):
        """Lines per whole second in [start, end)."""
        with self.lock:
            return [self.per_second.get(s, 0) for s in range(int(start), int(end))]


class Clients:
    """Long-lived client connections sending numbered lines at a total rate, in chunks of 1/20 s."""

    def __init__(self, port, n_clients, rate):
        self.stop_flag = threading.Event()
        self.sent = [0] * n_clients
        self.errors = []
        self.threads = [threading.Thread(target=self._run, args=(port, i, rate / n_clients), daemon=True)
                        for i in range(n_clients)]
        for thread in self.threads:
            thread.start()

    def _run(self, port, client, rate):
        sock = socket.create_connection(("127.0.0.1", port))
        chunk = max(1, int(rate / 20))
        next_at = time.monotonic()
        try:
            while not self.stop_flag.is_set():
                first = self.sent[client]
                sock.sendall(b"".join(b"out.c%d.%d %d %d\n" % (client, seq, seq, common.TIMESTAMP)
                                      for seq in range(first, first + chunk)))
                self.sent[client] = first + chunk
                next_at += chunk / rate
                ahead = next_at - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        except OSError as err:
            self.errors.append("client %d: %s" % (client, err))
        finally:
            sock.close()

    def stop(self):
        self.stop_flag.set()
        for thread in self.threads:
            thread.join()
        return list(self.sent)


def check_recorded(record_dir, sent):
    """Lost lines, gaps (a first arrival before an earlier line of its connection) and duplicates, from the files."""
    next_seq = [0] * len(sent)
    gaps = duplicates = malformed = 0
    seen_beyond = [set() for _ in sent]  # lines that arrived after a gap, in case the gap fills later
    for name in sorted(os.listdir(record_dir)):
        with open(os.path.join(record_dir, name), "rb") as f:
            data = f.read()
        n_matched = 0
        for m in LINE.finditer(data):
            n_matched += 1
            client, seq, value, ts = (int(g) for g in m.groups())
            if client >= len(sent) or seq != value or ts != common.TIMESTAMP or seq >= sent[client]:
                malformed += 1
                continue
            if seq == next_seq[client]:
                next_seq[client] += 1
                beyond = seen_beyond[client]
                while next_seq[client] in beyond:
                    beyond.discard(next_seq[client])
                    next_seq[client] += 1
            elif seq < next_seq[client] or seq in seen_beyond[client]:
                duplicates += 1
            else:
                gaps += 1
                seen_beyond[client].add(seq)
        malformed += data.count(b"\n") - n_matched
    lost = sum(n - next_seq[c] - len(seen_beyond[c]) for c, n in enumerate(sent))
    return {"lost": lost, "gaps": gaps, "duplicates": duplicates, "malformed": malformed}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("relay", help="path of the polymur binary (a release build)")
    parser.add_argument("--rate", type=float, default=200000, help="lines per second, all clients together")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--before-secs", type=float, default=5)
    parser.add_argument("--outage-secs", type=float, default=60)
    parser.add_argument("--after-secs", type=float, default=10)
    parser.add_argument("--drain-secs", type=float, default=600)
    parser.add_argument("--queue-max-bytes", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--spool-max-bytes", type=int, default=4 * 1024 * 1024 * 1024)
    parser.add_argument("--work-dir", default=None, help="where the spool and the recorded lines go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="polymur-outage-", dir=args.work_dir)
    spool_dir, record_dir = os.path.join(work, "spool"), os.path.join(work, "dead")
    os.makedirs(spool_dir)
    os.makedirs(record_dir)
    dead = CountingSink(record_dir)
    live = [CountingSink(), CountingSink()]
    listen_port, stats_port = common.free_port(), common.free_port()
    destinations = ",".join("127.0.0.1:%d" % s.port for s in [dead, *live])
    relay = common.Relay(args.relay, [
        "-listen-addr", "127.0.0.1", "-listen-port", str(listen_port), "-stats-addr", "127.0.0.1:%d" % stats_port,
        "-destinations", destinations, "-spool-dir", spool_dir, "-spool-mode", "overflow",
        "-spool-max-bytes", str(args.spool_max_bytes), "-queue-max-bytes", str(args.queue_max_bytes),
        "-shutdown-timeout", "60s"]).start()
    rss = []
    max_spool = [0]
    sampling = threading.Event()

    def sample():
        while not sampling.wait(1.0):
            rss.append(relay.rss_bytes())
            max_spool[0] = max(max_spool[0], common.directory_bytes(spool_dir))
    threading.Thread(target=sample, daemon=True).start()

    try:
        started = time.monotonic()
        clients = Clients(listen_port, args.clients, args.rate)
        time.sleep(args.before_secs)
        down_at = time.monotonic()
        dead.die()
        time.sleep(args.outage_secs)
        spool_at_return = common.get_stats(stats_port)["destinations"][0].get("spool")
        back_at = time.monotonic()
        dead.listen()
        time.sleep(args.after_secs)
        sent = clients.stop()
        stopped_at = time.monotonic()
        n_sent = sum(sent)
        common.wait_for("every destination has every line",
                        lambda: all(s.n_lines >= n_sent for s in [dead, *live]), patience=args.drain_secs, interval=0.2)
        caught_up_at = time.monotonic()
        stats = common.get_stats(stats_port)
        exit_code = relay.terminate()
    finally:
        sampling.set()
        if relay.process.poll() is None:
            relay.kill()

    # The replay rate: `dead`'s lines per second from its return until it had everything, whole seconds only.
    replay_rates = dead.rates(back_at + 1, caught_up_at)
    live_rates_outage = [r for s in live for r in s.rates(down_at + 1, back_at)]
    live_rates_before = [r for s in live for r in s.rates(started + 1, down_at)]
    budget = args.queue_max_bytes * 3 + 40 * 1024 * 1024
    destination_stats = [{k: d.get(k) for k in ("address", "sent_lines", "queued_lines", "dropped", "resent_lines",
                                                "spool")} for d in stats["destinations"]]
    summary = {
        "bench": "spool_outage", "relay": args.relay, "rate": args.rate, "clients": args.clients,
        "outage_secs": args.outage_secs, "lines_sent": n_sent, "client_errors": clients.errors,
        "dead": check_recorded(record_dir, sent),
        "live_lines": [s.n_lines for s in live],
        "live_rate_before_median": statistics.median(live_rates_before) if live_rates_before else None,
        "live_rate_outage_median": statistics.median(live_rates_outage) if live_rates_outage else None,
        "live_rate_outage_min": min(live_rates_outage) if live_rates_outage else None,
        "spool_at_return": spool_at_return, "max_spool_dir_bytes": max_spool[0],
        "replay_rate_median": statistics.median(replay_rates) if replay_rates else None,
        "replay_secs": round(caught_up_at - back_at, 1), "catch_up_after_clients_stopped_secs": round(caught_up_at - stopped_at, 1),
        "max_rss_bytes": max(rss) if rss else None, "rss_budget_bytes": budget,
        "rss_within_budget": bool(rss) and max(rss) <= budget,
        "destinations": destination_stats, "exit_code": exit_code,
        "seconds": round(time.monotonic() - started, 1),
    }
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    common.write_result("spool-outage", summary)
    ok = summary["dead"]["lost"] == 0 and summary["dead"]["gaps"] == 0 and summary["rss_within_budget"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
