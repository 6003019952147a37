#!/usr/bin/env bash
# One destination of three degraded, polymur against carbon-c-relay tuned in one interleaved run (A B A B ...):
# fan-out to 3 where the third destination is `normal` (the all-healthy reference), `slow:50000`, `stall:100000` or
# `down`. Only the healthy destinations carry expectations, so "lost" counts their lines alone; the degraded one's
# are dropped and counted by the relay.
#
#   benches/relay/degraded.sh [OUT.jsonl] [ROUNDS]
#
# Needs python3, carbon-c-relay, and ../shared/relaybench beside the repository. Takes about 15 minutes at 5 rounds
# (carbon-c-relay needs 15-30 s a run). MODES overrides the list.
# shellcheck source=benches/relay/setup.sh
source "$(dirname "$0")/setup.sh" degraded 5 "$@"

cd "$bench"
for mode in ${MODES:-normal slow:50000 stall:100000 down}; do
  echo "### third destination $mode" >&2
  python3 "$bench/relaybench.py" compare --a "$ccr" --b "$polymur" --a-label "degraded=$mode/ccr" \
    --b-label "degraded=$mode/polymur" --dests 3 --dest-modes "normal,normal,$mode" --lines 5000000 \
    --reps "$rounds" --out "$out" --run-timeout 240 | sed -n '/== summary/,$p' || true
done
echo "results: $out" >&2
