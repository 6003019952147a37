#!/usr/bin/env bash
# Scaling curves: how polymur's throughput and CPU per line change with client connections, destinations and line
# length, each point interleaved with the harness ceiling (`direct`) and, unless SKIP_CCR=1, with carbon-c-relay
# tuned (fewer lines: it is about 40 times slower). Charts: benches/relay/chart.py OUT.jsonl.
#
#   benches/relay/scaling.sh [OUT.jsonl] [ROUNDS]
#
# Needs python3, carbon-c-relay unless SKIP_CCR=1, and ../shared/relaybench beside the repository. FAMILIES (default
# "conns dests line_bytes") picks the curves. A point that fails (carbon-c-relay with 5,000 connections does) is
# recorded as failed and the run goes on.
# shellcheck source=benches/relay/setup.sh
source "$(dirname "$0")/setup.sh" scaling 3 "$@"

# point LABEL LINES RELAYBENCH-ARGS...: one interleaved comparison per baseline.
point() {
  local label=$1 lines=$2
  shift 2
  echo "### $label $*" >&2
  python3 "$bench/relaybench.py" compare --a direct --b "$polymur" --a-label "$label/direct" \
    --b-label "$label/polymur" --lines "$lines" --reps "$rounds" --out "$out" --run-timeout 240 "$@" | tail -1 || true
  if [[ ${SKIP_CCR:-0} != 1 ]]; then
    python3 "$bench/relaybench.py" compare --a "$ccr" --b "$polymur" --a-label "$label/ccr" \
      --b-label "$label/polymur-vs-ccr" --lines $((lines / 5)) --reps "$rounds" --out "$out" --run-timeout 240 "$@" |
      tail -1 || true
  fi
}

families=" ${FAMILIES:-conns dests line_bytes} "
cd "$bench"
if [[ $families == *" conns "* ]]; then
  for conns in 1 10 100 1000 5000; do
    point "conns=$conns" 5000000 --conns "$conns"
  done
fi
if [[ $families == *" dests "* ]]; then
  for dests in 1 2 3 5 8; do
    point "dests=$dests" $((5000000 / dests)) --dests "$dests"
  done
fi
if [[ $families == *" line_bytes "* ]]; then
  for bytes in 30 60 200 1000; do
    point "line_bytes=$bytes" $((300000000 / bytes)) --line-bytes "$bytes"
  done
fi
echo "results: $out" >&2
