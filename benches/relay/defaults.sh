#!/usr/bin/env bash
# Default flags at full speed: carbon-c-relay as packaged (no tuning flags) against polymur as packaged, interleaved
# (A B A B ...), forward to 1 and fan-out to 3. carbon-c-relay's default queue and batch sizes lose lines at these
# rates; polymur's defaults must lose none with healthy destinations.
#
#   benches/relay/defaults.sh [OUT.jsonl] [ROUNDS]
#
# Needs python3, carbon-c-relay, and ../shared/relaybench beside the repository. Takes about 10 minutes at 5 rounds.
set -euo pipefail
# The results file is named from where the script is called; the runs happen in ../shared/relaybench.
given_out=${1:+$(realpath -m "$1")}
cd "$(dirname "$0")/../.."
root=$(pwd)
out=${given_out:-$root/target/defaults-$(date +%Y%m%d-%H%M%S).jsonl}
rounds=${2:-5}
# shellcheck source=benches/relay/setup.sh
source "$root/benches/relay/setup.sh"

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
