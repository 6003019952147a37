#!/usr/bin/env python3
"""Regenerates the carbon-c-relay ring fixtures in this directory (see tests/data/README.md).

Writes paths.txt (the paths, one per line) and, per cluster, <method>-<name>.txt: the cluster's members in config
order, its replication, its ring as carbon-c-relay lists it, then one line per path of paths.txt with the indices of
the members carbon-c-relay sends that path to, primary first. Also positions-carbon_ch.txt and positions-fnv1a_ch.txt:
each path's ring position (hash_pos), one per line of paths.txt, the same for every cluster (the generator checks it).
Everything comes from the real program: `carbon-c-relay -t -d -f CONFIG < paths.txt`.

Run from anywhere: python3 tests/data/ccr/generate.py [path to carbon-c-relay, default /usr/bin/carbon-c-relay]
"""

import os
import random
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
N_PATHS = 2048
METHODS = ["carbon_ch", "fnv1a_ch", "jump_fnv1a_ch"]
# The methods whose hash_pos is a ring position that depends on the path alone; jump's is the primary bucket.
POSITION_METHODS = ["carbon_ch", "fnv1a_ch"]
# ch_printhashring formats each member into a char[21].
DUMP_MEMBER_BYTES = 20


def generate_paths(rng):
    """Graphite-looking paths, deterministic: dotted words, digits, the characters carbon-c-relay allows by default
    (-_:#), some UTF-8 (bytes >= 0x80 are sign-extended by carbon-c-relay's FNV-1a) and some long paths."""
    words = ["servers", "web", "db", "cpu", "load", "memory", "disk", "sda1", "user", "system", "idle", "requests",
             "p99", "count", "collectd", "statsd", "timers", "gauges", "app-1", "cache_hits", "eu:west", "#tag"]
    utf8 = ["née", "größe", "日本", "ü", "café"]
    paths = set()
    ordered = []
    while len(ordered) < N_PATHS:
        kind = rng.random()
        n_parts = rng.randint(1, 8)
        parts = []
        for _ in range(n_parts):
            r = rng.random()
            if r < 0.5:
                parts.append(rng.choice(words))
            elif r < 0.8:
                parts.append("host-%d" % rng.randint(0, 9999))
            elif r < 0.95:
                parts.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-_")
                                     for _ in range(rng.randint(1, 12))))
            else:
                parts.append(rng.choice(utf8))
        if kind < 0.02:
            parts.append("x" * rng.randint(100, 300))
        path = ".".join(parts)
        if path not in paths:
            paths.add(path)
            ordered.append(path)
    return ordered


def hosts(rng, n, same_host_every=0):
    """n distinct host:port pairs on 127.0.0.x in a non-lexical order (127.0.0.10 before 127.0.0.8)."""
    numbers = list(range(1, n + 1))
    rng.shuffle(numbers)
    members = []
    for i, number in enumerate(numbers):
        if same_host_every and i % same_host_every == 1:
            # Same host as the previous member, another port.
            members.append((members[-1][0], members[-1][1] + 1))
        else:
            members.append(("127.0.0.%d" % number, 2003 + (i % 3) * 100))
    return members


def clusters(rng):
    """(name, replication, [(host, port, instance or None)]) for every fixture cluster."""
    fixed3 = [("127.0.0.10", 2003), ("127.0.0.8", 2003), ("127.0.0.9", 2003)]
    result = []
    for replication in (1, 2, 3):
        result.append(("n3-r%d" % replication, replication, [(h, p, None) for h, p in fixed3]))
    result.append(("n3-numeric-instances", 3, [(h, p, i) for (h, p), i in zip(fixed3, ["2", "10", "1"])]))
    result.append(("n3-same-host", 2, [("127.0.0.1", 2003, None), ("127.0.0.1", 2004, None),
                                       ("127.0.0.2", 2003, None)]))
    result.append(("n12", 2, [(h, p, None) for h, p in hosts(rng, 12)]))
    result.append(("n12-instances", 3,
                   [(h, p, "cache-%s" % c) for (h, p), c in zip(hosts(rng, 12), "kbjhdlaicgfe")]))
    result.append(("n48", 3, [(h, p, None) for h, p in hosts(rng, 48, same_host_every=7)]))
    mixed = []
    for i, (h, p) in enumerate(hosts(rng, 48)):
        instance = [None, str(rng.randint(0, 99)), "i%d" % rng.randint(0, 99)][i % 3]
        if instance is not None and any(m[2] == instance for m in mixed):
            instance = instance + "-%d" % i
        mixed.append((h, p, instance))
    result.append(("n48-mixed-instances", 3, mixed))
    return result


def member_text(member):
    host, port, instance = member
    return "%s:%d" % (host, port) + ("" if instance is None else "=" + instance)


def run_relay(relay, method, replication, members, paths_file):
    """Runs carbon-c-relay -t -d on a one-cluster config; returns its ring dump as (position, member text cut to
    DUMP_MEMBER_BYTES) pairs, and per path (path, hash_pos, [member host:port, ...])."""
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as config:
        config.write("cluster c %s replication %d\n" % (method, replication))
        for member in members:
            config.write("    %s\n" % member_text(member))
        config.write("    ;\nmatch * send to c stop;\n")
        config_path = config.name
    try:
        with open(paths_file, "rb") as stdin:
            output = subprocess.run([relay, "-t", "-d", "-f", config_path], stdin=stdin, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, check=True, timeout=120).stdout
    finally:
        os.unlink(config_path)
    lines = output.decode("utf-8").split("\n")
    dump_start = lines.index("# hash ring for c follows") + 1
    dump_end = lines.index("", dump_start)
    ring = []
    for line in lines[dump_start:dump_end]:
        for entry in line.split():
            position, member = entry.split("@", 1)
            ring.append((int(position), member))
    routed = []
    for i, line in enumerate(lines):
        if line.startswith("    * -> "):
            assert lines[i + 1] == "    %s(c)" % method, lines[i + 1]
            hash_pos = lines[i + 2].strip()
            assert hash_pos.startswith("hash_pos(") and hash_pos.endswith(")"), hash_pos
            addresses = []
            j = i + 3
            while lines[j].startswith("        "):
                addresses.append(lines[j].strip())
                j += 1
            routed.append((line[len("    * -> "):], int(hash_pos[len("hash_pos("):-1]), addresses))
    return ring, routed


def main():
    relay = sys.argv[1] if len(sys.argv) > 1 else "/usr/bin/carbon-c-relay"
    rng = random.Random(17)
    paths = generate_paths(rng)
    paths_file = os.path.join(HERE, "paths.txt")
    with open(paths_file, "w", encoding="utf-8") as out:
        out.write("".join(p + "\n" for p in paths))
    version = subprocess.run([relay, "-v"], stdout=subprocess.PIPE, check=True).stdout.decode().split("\n")[0]
    positions = {}
    for name, replication, members in clusters(rng):
        index = {"%s:%d" % (h, p): i for i, (h, p, _) in enumerate(members)}
        assert len(index) == len(members), name
        dump_index = {member_text(m).encode()[:DUMP_MEMBER_BYTES].decode(): i for i, m in enumerate(members)}
        assert len(dump_index) == len(members), name
        for method in METHODS:
            ring, routed = run_relay(relay, method, replication, members, paths_file)
            assert [p for p, _, _ in routed] == paths, "%s %s: carbon-c-relay changed or dropped paths" % (method, name)
            if method in POSITION_METHODS:
                hash_positions = [hash_pos for _, hash_pos, _ in routed]
                assert positions.setdefault(method, hash_positions) == hash_positions, \
                    "%s %s: a path's position depends on the cluster" % (method, name)
            with open(os.path.join(HERE, "%s-%s.txt" % (method, name)), "w", encoding="utf-8") as out:
                out.write("# %s -t -d, written by generate.py: members in config order, the ring as -d lists it\n"
                          "# (position, member index), then the member indices of each path of paths.txt, primary\n"
                          "# first.\n" % version)
                out.write("method %s\nreplication %d\n" % (method, replication))
                for member in members:
                    out.write("member %s\n" % member_text(member))
                out.write("ring\n")
                for position, member in ring:
                    out.write("%d %d\n" % (position, dump_index[member]))
                out.write("paths\n")
                for _, _, addresses in routed:
                    assert len(addresses) == replication, (method, name, addresses)
                    out.write(" ".join(str(index[a]) for a in addresses) + "\n")
    for method in POSITION_METHODS:
        with open(os.path.join(HERE, "positions-%s.txt" % method), "w", encoding="utf-8") as out:
            out.write("".join("%d\n" % position for position in positions[method]))


if __name__ == "__main__":
    main()
