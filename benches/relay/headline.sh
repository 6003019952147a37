#!/usr/bin/env bash
# Headline whole-process figures: polymur against the harness ceiling and against carbon-c-relay tuned, measured in
# one run, interleaved (A B A B ...), 5 rounds each, as DECISIONS.md asks.
#
#   benches/relay/headline.sh [OUT.jsonl] [ROUNDS]
#
# Needs python3, carbon-c-relay, and ../shared/relaybench beside the repository. Takes about 10 minutes.
# shellcheck source=benches/relay/setup.sh
source "$(dirname "$0")/setup.sh" headline 5 "$@"

compare() {
  local label=$1
  shift
  echo "### $label $*" >&2
  python3 "$bench/relaybench.py" compare --a-label "$label/$2" --b-label "$label/polymur" "$@" \
    --reps "$rounds" --out "$out" --run-timeout 240 | sed -n '/== summary/,$p'
}

cd "$bench"
for topology in "fwd1 --dests 1 --lines 10000000" "fanout3 --dests 3 --lines 5000000"; do
  read -r name dests_flag dests lines_flag lines <<<"$topology"
  compare "$name" --a direct --b "$polymur" "$dests_flag" "$dests" "$lines_flag" "$lines"
  compare "$name" --a "$ccr" --b "$polymur" "$dests_flag" "$dests" "$lines_flag" "$lines"
done
echo "results: $out" >&2
