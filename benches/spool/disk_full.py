#!/usr/bin/env python3
"""The spool on a full disk: a small tmpfs as the spool directory, one destination down, lines in until the spool can
write no more. The overflow policy must apply with its drops counted (`spool_full`), the relay must keep serving the
other destination at full rate, and once space is free again the spool must recover (write errors stop, `degraded`
clears).

    python3 benches/spool/disk_full.py target/release/polymur [--tmpfs-size 8m] [--rate 100000] [--free drain|filler]

It re-executes itself under `unshare -rm` (a user and mount namespace of its own, where `mount -t tmpfs` works
unprivileged) unless already inside one. With `--free drain` the dead destination comes back and drains the spool;
with `--free filler` a filler file taking --filler-bytes of the tmpfs from the start is deleted instead, the
destination staying down. The result is one JSON line.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from outage import CountingSink, Clients  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("relay", help="path of the polymur binary")
    parser.add_argument("--tmpfs-size", default="8m")
    parser.add_argument("--rate", type=float, default=100000, help="lines per second, all clients together")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--queue-max-bytes", default="1MiB", help="small, so the memory queue overflows at once")
    parser.add_argument("--spool-overflow", default="drop_oldest", choices=["drop_oldest", "drop_newest", "block"])
    parser.add_argument("--free", default="drain", choices=["drain", "filler"])
    parser.add_argument("--filler-bytes", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--fill-patience-secs", type=float, default=60)
    parser.add_argument("--recover-patience-secs", type=float, default=60)
    args = parser.parse_args()
    if os.environ.get("POLYMUR_BENCH_MOUNTNS") != "1":
        env = dict(os.environ, POLYMUR_BENCH_MOUNTNS="1")
        os.execvpe("unshare", ["unshare", "-rm", sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)

    tmpfs = tempfile.mkdtemp(prefix="polymur-disk-full-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + args.tmpfs_size, "tmpfs", tmpfs], check=True)
    filler = os.path.join(tmpfs, "filler")
    if args.free == "filler":
        with open(filler, "wb") as f:
            f.write(b"\0" * args.filler_bytes)
    spool_dir = os.path.join(tmpfs, "spool")
    os.makedirs(spool_dir)
    dead_port = common.free_port()
    live = CountingSink()
    listen_port, stats_port = common.free_port(), common.free_port()
    relay = common.Relay(args.relay, [
        "-listen-addr", "127.0.0.1", "-listen-port", str(listen_port), "-stats-addr", "127.0.0.1:%d" % stats_port,
        "-destinations", "127.0.0.1:%d,127.0.0.1:%d" % (dead_port, live.port), "-spool-dir", spool_dir,
        "-spool-mode", "overflow", "-spool-max-bytes", "1GiB", "-queue-max-bytes", args.queue_max_bytes,
        "-shutdown-timeout", "30s"])
    config = os.path.join(tmpfs, "..", os.path.basename(tmpfs) + ".toml")
    with open(config, "w") as f:
        # A quick reconnect once the dead destination returns: the default backoff grows to 30 s while it is down.
        f.write('[destination]\nspool_overflow = "%s"\nretry_interval = "1s"\n' % args.spool_overflow)
    relay.args = ["-c", config, *relay.args]
    relay.start()
    samples = []
    sampling = threading.Event()

    def sample():
        while not sampling.wait(0.5):
            try:
                stats = common.get_stats(stats_port)
            except OSError:
                continue
            samples.append((time.monotonic(), stats))
    threading.Thread(target=sample, daemon=True).start()

    def dead_spool():
        return common.get_stats(stats_port)["destinations"][0].get("spool")

    started = time.monotonic()
    clients = Clients(listen_port, args.clients, args.rate)
    has_spool = dead_spool() is not None
    filled = None
    try:
        filled = common.wait_for("the spool fills the tmpfs", lambda: (
            common.get_stats(stats_port) if (common.get_stats(stats_port)["destinations"][0]["dropped"]["spool_full"] > 0
                                             or (dead_spool() or {}).get("degraded")) else None),
            patience=args.fill_patience_secs, interval=0.2)
    except RuntimeError as err:
        print("disk_full: %s (has_spool %s)" % (err, has_spool), file=sys.stderr)
    filled_at = time.monotonic()
    # Stay full a few seconds: drops keep being counted, the live destination keeps its rate.
    time.sleep(3)
    full_stats = common.get_stats(stats_port)
    freed_at = time.monotonic()
    dead = None
    if args.free == "drain":
        dead = CountingSink(port=dead_port)
    else:
        os.unlink(filler)
    recovered = None
    try:
        def recovery():
            destination = common.get_stats(stats_port)["destinations"][0]
            spool = destination.get("spool")
            drained = spool and spool["lines"] == 0 and destination["queued_lines"] == 0
            return spool if drained and not spool["degraded"] else None
        recovered = common.wait_for("the spool drains and degraded clears", recovery,
                                    patience=args.recover_patience_secs, interval=0.2)
    except RuntimeError as err:
        print("disk_full: %s" % err, file=sys.stderr)
    recovered_at = time.monotonic()
    # After recovery, write errors must stop: two readings a second apart agree.
    errors_after = (dead_spool() or {}).get("write_errors")
    time.sleep(1)
    errors_later = (dead_spool() or {}).get("write_errors")
    sent = clients.stop()
    end_stats = common.get_stats(stats_port)
    exit_code = relay.terminate()
    sampling.set()
    subprocess.run(["umount", tmpfs], check=False)

    live_rates_full = live.rates(filled_at, freed_at)
    summary = {
        "bench": "spool_disk_full", "relay": args.relay, "tmpfs_size": args.tmpfs_size, "rate": args.rate,
        "free": args.free, "spool_overflow": args.spool_overflow, "has_spool": has_spool,
        "lines_sent": sum(sent), "filled": filled is not None, "secs_to_fill": round(filled_at - started, 1),
        "while_full": {d["address"]: {"dropped": d["dropped"], "spool": d.get("spool")}
                       for d in full_stats["destinations"]},
        "live_rate_while_full_median": statistics.median(live_rates_full) if live_rates_full else None,
        "live_lines": live.n_lines,
        "recovered": recovered is not None, "secs_to_recover": round(recovered_at - freed_at, 1),
        "write_errors_stopped": errors_after is not None and errors_after == errors_later,
        "dead_lines_after_return": dead.n_lines if dead else None,
        "end": {d["address"]: {"sent_lines": d["sent_lines"], "dropped": d["dropped"], "spool": d.get("spool")}
                for d in end_stats["destinations"]},
        "exit_code": exit_code, "seconds": round(time.monotonic() - started, 1),
    }
    common.write_result("spool-disk-full", summary)
    full_drops = full_stats["destinations"][0]["dropped"]["spool_full"]
    ok = summary["filled"] and full_drops > 0 and summary["recovered"] and summary["write_errors_stopped"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
