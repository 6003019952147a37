#!/usr/bin/python3
"""Writes the carbon_ch and fnv1a_ch (carbon flavour) fixtures with carbon's own router.

Run from the repository root with Debian's python (graphite-carbon 1.1.7 installed):

    /usr/bin/python3 tests/data/carbon/generate.py

Each hash type (ROUTER_HASH_TYPE) and cluster gets one file, tests/data/carbon/<hash type>-<cluster>.txt:

    # comment lines
    method <hash type>                          carbon_ch or fnv1a_ch
    destination <host>:<port>[:<instance>]     one per member, in config order (index 0, 1, ...)
    <path>\t<r1 diverse>\t<r2 diverse>\t<r3 diverse>\t<r1>\t<r2>\t<r3>

where each column is the comma-separated member indices that carbon's ConsistentHashingRouter.getDestinations yields
for the path, with REPLICATION_FACTOR 1, 2, 3 and DIVERSE_REPLICAS True, then False. The output is deterministic.
"""

import importlib.metadata
import os
import random
import sys

sys.path.insert(0, "/usr/lib/python3/dist-packages")

from carbon.routers import ConsistentHashingRouter  # noqa: E402
from carbon.hashing import carbonHash  # noqa: E402
from carbon.util import parseDestinations  # noqa: E402

OUT_DIR = os.path.dirname(os.path.abspath(__file__))
N_PATHS = 2048
HASH_TYPES = ["carbon_ch", "fnv1a_ch"]


class Settings:
    def __init__(self, hash_type, replication_factor, diverse_replicas):
        self.REPLICATION_FACTOR = replication_factor
        self.DIVERSE_REPLICAS = diverse_replicas
        self.ROUTER_HASH_TYPE = hash_type


def replica_key(hash_type, server, instance, i):
    """The text ConsistentHashRing.add_node hashes for replica i of node (server, instance)."""
    if hash_type == "fnv1a_ch":
        return "%d-%s" % (i, instance)
    return "%s:%d" % ((server, instance), i)


def clusters():
    """The member lists: config orders that are not lexical, and hosts repeated with other instances."""
    rng = random.Random(17)
    c3 = ["127.0.0.10:2003", "127.0.0.8:2003", "127.0.0.9:2003"]
    c3i = ["127.0.0.10:2004:a", "127.0.0.8:2004:a", "127.0.0.10:2104:b"]
    hosts12 = ["127.0.0.%d" % n for n in (12, 3, 11, 1, 10, 2, 9, 4, 8, 5, 7, 6)]
    c12 = ["%s:2003" % h for h in hosts12]
    # Four hosts with three instances each, interleaved so a host's instances are not adjacent.
    c12i = []
    for instance, port in (("c", 2204), ("a", 2004), ("b", 2104)):
        for host in ("cache-10.example", "cache-8.example", "cache-9.example", "cache-1.example"):
            c12i.append("%s:%d:%s" % (host, port, instance))
    # What fnv1a_ch needs to spread paths at all: a distinct instance per member (one of them not ASCII).
    c12di = ["%s:2004:%s" % (h, instance) for h, instance in
             zip(hosts12, ["1", "10", "2", "11", "3", "12", "4", "5", "6", "7", "8", "café"])]
    hosts48 = ["graphite%02d.dc1" % n for n in range(1, 49)]
    rng.shuffle(hosts48)
    c48 = ["%s:2003" % h for h in hosts48]
    c48i = ["10.0.0.%d:%d:%s" % (h, 2004 + i, "abc"[i]) for h in range(1, 17) for i in range(3)]
    rng.shuffle(c48i)
    return [
        ("c3", c3),
        ("c3_instances", c3i),
        ("c12", c12),
        ("c12_instances", c12i),
        ("c12_distinct_instances", c12di),
        ("c48", c48),
        ("c48_instances", c48i),
    ]


def paths():
    """Metric paths: plain Graphite paths, a few with non-ASCII characters and a few tagged ones (hashed as written,
    carbon's default TAG_RELAY_NORMALIZED = False)."""
    rng = random.Random(7)
    words = ["servers", "web", "db", "cpu", "user", "system", "load", "disk", "sda", "used", "free", "requests",
             "latency", "p99", "count", "app", "eu-west", "us-east", "k8s", "pod", "café", "zürich", "日本"]
    result = []
    for n in range(N_PATHS):
        k = rng.randint(2, 7)
        path = ".".join(rng.choice(words) if rng.random() < 0.7 else "%s%d" % (rng.choice(words), rng.randint(0, 999))
                        for _ in range(k))
        if n % 50 == 0:
            path += ";host=web%d;dc=%s" % (rng.randint(0, 99), rng.choice(["eu", "us"]))
        result.append(path)
    return result


def main():
    all_paths = paths()
    for hash_type in HASH_TYPES:
        for name, destination_strings in clusters():
            write_fixture(hash_type, name, destination_strings, all_paths)


def write_fixture(hash_type, name, destination_strings, all_paths):
    destinations = parseDestinations(destination_strings)
    index = {(server, instance): i for i, (server, _port, instance) in enumerate(destinations)}
    routers = []
    for diverse in (True, False):
        for replication in (1, 2, 3):
            router = ConsistentHashingRouter(Settings(hash_type, replication, diverse))
            for destination in destinations:
                router.addDestination(destination)
            routers.append(router)
    ring = routers[0].ring.ring
    raw_positions = [carbonHash(replica_key(hash_type, server, instance, i), hash_type)
                     for server, _port, instance in destinations for i in range(100)]
    n_collided = len(raw_positions) - len(set(raw_positions))
    file_name = "%s-%s.txt" % (hash_type, name)
    with open(os.path.join(OUT_DIR, file_name), "w", encoding="utf-8", newline="\n") as out:
        out.write("# carbon %s ConsistentHashingRouter, %s, 100 replicas; generated by generate.py\n"
                  % (importlib.metadata.version("carbon"), hash_type))
        out.write("# columns: path, replication 1 2 3 with DIVERSE_REPLICAS True, then 1 2 3 with False\n")
        out.write("method %s\n" % hash_type)
        for destination_string in destination_strings:
            out.write("destination %s\n" % destination_string)
        for path in all_paths:
            columns = [path]
            for router in routers:
                columns.append(",".join(str(index[(server, instance)])
                                        for server, _port, instance in router.getDestinations(path)))
            out.write("\t".join(columns) + "\n")
    print("%s: %d members, %d ring entries (at least %d moved by a collision), %d paths"
          % (file_name, len(destinations), len(ring), n_collided, len(all_paths)))


if __name__ == "__main__":
    main()
