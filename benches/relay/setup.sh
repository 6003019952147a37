# Shared by the relay benchmark scripts (source it): builds polymur, copies the binary so that a rebuild during a run
# cannot change what is measured, and defines the relaybench specs of polymur and carbon-c-relay tuned.
# Expects `root` (the repository) to be set; sets `bench`, `polymur` and `ccr`.
bench=$root/../shared/relaybench
(cd "$root" && cargo build --release --quiet)
binary=$(mktemp -d)/polymur
cp "$root/target/release/polymur" "$binary"
polymur="cmd:$binary -listen-addr 127.0.0.1 -listen-port {listen_port} -destinations {dest_addrs} -stats-addr 127.0.0.1:0"
ccr="ccr:-w 2 -b 10000 -q 20000000"
