#!/usr/bin/env python3
"""Spool bytes per line: a polymur binary with its one destination down spools N lines of relaybench's ~60-byte
traffic; the spool's size on disk (segment headers and record headers included) divided by the lines it holds.

    python3 benches/spool/bytes_per_line.py BINARY [--lines N]

Prints one JSON line: lines, spool bytes, line bytes, bytes per line and overhead per line.
"""
import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stats(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
        return json.load(response)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("binary")
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    listen_port, stats_port, dead_port = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory() as spool_dir:
        relay = subprocess.Popen(
            [args.binary, "-listen-addr", "127.0.0.1", "-listen-port", str(listen_port),
             "-stats-addr", f"127.0.0.1:{stats_port}", "-destinations", f"127.0.0.1:{dead_port}",
             "-spool-dir", spool_dir, "-queue-max-bytes", "1MiB"],
            stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client = socket.create_connection(("127.0.0.1", listen_port))
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            line_bytes = 0
            chunk = []
            for i in range(args.lines):
                line = f"servers.fra2.host{i % 5000:05d}.disk.sda.read_bytes {i % 1000}.07 {1700000000 + i // 5000}\n"
                line_bytes += len(line)
                chunk.append(line)
                if len(chunk) == 4096:
                    client.sendall("".join(chunk).encode())
                    chunk.clear()
            client.sendall("".join(chunk).encode())
            client.close()
            deadline = time.monotonic() + 60
            while True:
                destination = stats(stats_port)["destinations"][0]
                spool = destination["spool"]
                if spool["lines"] + destination["queued_lines"] >= args.lines and destination["queued_lines"] < 50_000:
                    break
                if time.monotonic() > deadline:
                    sys.exit(f"spool did not settle: {destination}")
                time.sleep(0.1)
            # Only what is on disk: the lines still in memory are left out of both sides.
            n_lines = spool["lines"]
            n_line_bytes = line_bytes * n_lines / args.lines
            print(json.dumps({
                "lines": n_lines,
                "spool_bytes": spool["bytes"],
                "line_bytes_per_line": round(n_line_bytes / n_lines, 2),
                "spool_bytes_per_line": round(spool["bytes"] / n_lines, 2),
                "overhead_bytes_per_line": round((spool["bytes"] - n_line_bytes) / n_lines, 3),
            }))
        finally:
            relay.terminate()
            relay.wait(timeout=30)


if __name__ == "__main__":
    main()
