#!/usr/bin/env bash
# What a spool costs, in one relaybench run: forward to one healthy destination with no spool against the same with an
# `overflow` spool configured (the issue's target: >= 0.95), then `overflow` against `always` (write-ahead: every
# batch written to the page cache, and to disk by the kernel's writeback), alternating, 5 rounds each; then the disk's
# own sequential write rate (`dd oflag=direct`, 1 GiB) on the file system the spool used, so `always`'s rate can be
# read against it; then the spool's bytes per line, from a destination that is down.
#
#   benches/spool/modes.sh [OUT.jsonl] [ROUNDS]
#
# Needs python3 and ../shared/relaybench beside the repository. Takes about 10 minutes.
set -euo pipefail
# shellcheck source=benches/relay/setup.sh
source "$(dirname "$0")/../relay/setup.sh" spool-modes 5 "$@"

overflow="$polymur -spool-dir {workdir}/spool -spool-mode overflow"
always="$polymur -spool-dir {workdir}/spool -spool-mode always"
cd "$bench"
compare() {
  echo "### $1" >&2
  python3 "$bench/relaybench.py" compare --a-label "$1/$2" --b-label "$1/$4" --a "$3" --b "$5" \
    --dests 1 --lines 10000000 --reps "$rounds" --out "$out" --run-timeout 240 |
    sed -n '/== summary/,$p'
}
compare fwd1 nospool "$polymur" overflow "$overflow"
compare fwd1 overflow "$overflow" always "$always"

echo "### disk: dd oflag=direct, 1 GiB, on the file system of the spools (/tmp)" >&2
probe=$(mktemp -p /tmp spool-dd.XXXXXX)
dd if=/dev/zero of="$probe" bs=1M count=1024 oflag=direct 2>&1 | tail -1
rm -f "$probe"

echo "### spool bytes per line" >&2
python3 "$root/benches/spool/bytes_per_line.py" "$binary"
echo "results: $out" >&2
