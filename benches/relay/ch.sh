#!/usr/bin/env bash
# Consistent hashing: polymur with a carbon_ch cluster of 3 members (benches/relay/ch.toml) against the harness
# ceiling and against carbon-c-relay tuned with its own carbon_ch cluster, relaybench `--route ch`, 10 M lines,
# interleaved (A B A B ...), 5 rounds each. relaybench checks that every metric went to exactly one destination.
#
#   benches/relay/ch.sh [OUT.jsonl] [ROUNDS]
#
# Needs python3, carbon-c-relay, and ../shared/relaybench beside the repository. Takes about 10 minutes.
# shellcheck source=benches/relay/setup.sh
source "$(dirname "$0")/setup.sh" ch 5 "$@"

polymur_ch="cmd:$binary -c {config}"
cd "$bench"
for a in direct "$ccr"; do
  label=$([ "$a" = direct ] && echo direct || echo ccr)
  echo "### ch3 $label/polymur" >&2
  python3 "$bench/relaybench.py" compare --a-label "ch3/$label" --b-label "ch3/polymur" --a "$a" --b "$polymur_ch" \
    --b-config "$root/benches/relay/ch.toml" --route ch --dests 3 --lines 10000000 --reps "$rounds" --out "$out" \
    --run-timeout 240 | sed -n '/== summary/,$p'
done
echo "results: $out" >&2
