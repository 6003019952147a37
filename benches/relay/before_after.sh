#!/usr/bin/env bash
# A change against the build before it: the old and the new polymur alternating in one relaybench run (A B A B ...),
# forwarding 10 M lines to one destination and fanning 5 M out to three, 5 rounds each. The median of the pairwise
# ratios is the figure a change must keep within 5 %.
#
#   benches/relay/before_after.sh OLD_BINARY [OUT.jsonl] [ROUNDS]
#
# OLD_BINARY is a release build of the commit before the change (git worktree add /tmp/old REV && cargo build
# --release there). Needs python3 and ../shared/relaybench beside the repository. Takes about 8 minutes.
set -euo pipefail
old_binary=$(realpath "$1")
shift
# shellcheck source=benches/relay/setup.sh
source "$(dirname "$0")/setup.sh" before-after 5 "$@"

old="cmd:$old_binary -listen-addr 127.0.0.1 -listen-port {listen_port} -destinations {dest_addrs} -stats-addr 127.0.0.1:0"
cd "$bench"
for topology in "fwd1 --dests 1 --lines 10000000" "fanout3 --dests 3 --lines 5000000"; do
  read -r name dests_flag dests lines_flag lines <<<"$topology"
  echo "### $name old/new" >&2
  python3 "$bench/relaybench.py" compare --a-label "$name/old" --b-label "$name/new" --a "$old" --b "$polymur" \
    "$dests_flag" "$dests" "$lines_flag" "$lines" --reps "$rounds" --out "$out" --run-timeout 240 |
    sed -n '/== summary/,$p'
done
echo "results: $out" >&2
