#!/usr/bin/env python3
"""Bytes of memory per queued byte: polymur with its one destination down, fed by many short connections.

Starts the given polymur binary with a destination that refuses connections and `queue_max_bytes` as given, opens
CONNS connections one after another, each sending LINES lines and closing, then reads the child's VmRSS
(/proc/PID/status) and the destination's queued_bytes (/stats). Prints one JSON object per run.

Run with: python3 benches/memory/queued.py target/release/polymur --conns 100000 --lines 1 [--queue-max-bytes 16MiB]
"""
import argparse, json, os, socket, subprocess, sys, time, urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def stats(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as r:
        return json.load(r)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("binary")
    p.add_argument("--conns", type=int, default=100000)
    p.add_argument("--lines", type=int, default=1)
    p.add_argument("--queue-max-bytes", default="16MiB")
    p.add_argument("--label", default="")
    a = p.parse_args()
    listen, stats_port, dead = free_port(), free_port(), free_port()
    child = subprocess.Popen(
        [a.binary, "-listen-addr", "127.0.0.1", "-listen-port", str(listen), "-stats-addr", f"127.0.0.1:{stats_port}",
         "-destinations", f"127.0.0.1:{dead}", "-queue-max-bytes", a.queue_max_bytes],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while True:
            try:
                stats(stats_port)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        rss_start = rss_kib(child.pid)
        ts = int(time.time())
        sent = 0
        for c in range(a.conns):
            body = "".join(f"bench.conn{c % 1000}.m{i} {i} {ts}\n" for i in range(a.lines)).encode()
            with socket.create_connection(("127.0.0.1", listen)) as s:
                s.sendall(body)
            sent += len(body)
        # Every line is queued or counted as dropped once the relay has read them all.
        n_lines = a.conns * a.lines
        while True:
            snap = stats(stats_port)
            d = snap["destinations"][0]
            if snap["lines"]["received"] >= n_lines and snap["lines"].get("inbound", 0) == 0:
                break
            time.sleep(0.1)
        time.sleep(1.0)
        snap = stats(stats_port)
        d = snap["destinations"][0]
        rss = rss_kib(child.pid)
        hwm = rss_kib(child.pid, "VmHWM")
        queued = d["queued_bytes"]
        out = {
            "label": a.label, "conns": a.conns, "lines_per_conn": a.lines, "bytes_sent": sent,
            "queue_max_bytes": a.queue_max_bytes, "queued_bytes": queued, "queued_lines": d["queued_lines"],
            "dropped": d["dropped"], "rss_start_kib": rss_start, "rss_kib": rss, "hwm_kib": hwm,
            "rss_growth_per_queued_byte": round((rss - rss_start) * 1024 / max(queued, 1), 2),
        }
        print(json.dumps(out), flush=True)
    finally:
        child.terminate()
        child.wait()


if __name__ == "__main__":
    sys.exit(main())
