#!/usr/bin/env bash
# Default flags at full speed: carbon-c-relay as packaged (no tuning flags) against polymur as packaged, interleaved
# (A B A B ...), forward to 1 and fan-out to 3. carbon-c-relay's default queue and batch sizes lose lines at these
# rates; polymur's defaults must lose none with healthy destinations.
#
#   benches/relay/defaults.sh [OUT.jsonl] [ROUNDS]
#
# Needs python3, carbon-c-relay, and ../shared/relaybench beside the repository. Takes about 10 minutes at 5 rounds.
# shellcheck source=benches/relay/setup.sh
source "$(dirname "$0")/setup.sh" defaults 5 "$@"

cd "$bench"
for topology in "fwd1 1 10000000" "fanout3 3 5000000"; do
  read -r name dests lines <<<"$topology"
  echo "### $name, default flags" >&2
  # A run that loses lines makes relaybench exit non-zero: that is the finding here, not a failure of the script.
  python3 "$bench/relaybench.py" compare --a ccr --b "$polymur" --a-label "defaults-$name/ccr" \
    --b-label "defaults-$name/polymur" --dests "$dests" --lines "$lines" --reps "$rounds" --out "$out" \
    --run-timeout 240 | sed -n '/== summary/,$p' || true
done
echo "results: $out" >&2
