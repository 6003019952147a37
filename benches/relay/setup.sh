# Shared by the relay benchmark scripts; each starts with
#
#   source "$(dirname "$0")/setup.sh" NAME DEFAULT_ROUNDS "$@"
#
# It takes the script's arguments, [OUT.jsonl] [ROUNDS], and sets `out` (OUT resolved from where the script was called,
# or target/NAME-DATE.jsonl), `rounds`, `root` (the repository, now the working directory) and `bench`
# (../shared/relaybench). It builds polymur and copies the binary, so that a rebuild during a run cannot change what
# is measured, and sets the relaybench specs `polymur` and `ccr` (carbon-c-relay tuned).
set -euo pipefail
setup_name=$1
setup_default_rounds=$2
shift 2
given_out=${1:+$(realpath -m "$1")}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
out=${given_out:-$root/target/$setup_name-$(date +%Y%m%d-%H%M%S).jsonl}
rounds=${2:-$setup_default_rounds}
bench=$root/../shared/relaybench
cargo build --release --quiet
binary=$(mktemp -d)/polymur
cp "$root/target/release/polymur" "$binary"
polymur="cmd:$binary -listen-addr 127.0.0.1 -listen-port {listen_port} -destinations {dest_addrs} -stats-addr 127.0.0.1:0"
ccr="ccr:-w 2 -b 10000 -q 20000000"
