//! The cost per path of finding a `carbon_ch` ring position: computing it (MD5 of the path, first two bytes) against
//! looking it up in a `router::path_cache::PathCache` as each worker thread will.
//!
//! Run with `cargo bench --bench path_cache -- --warm-up-time 1 --measurement-time 3`.
//!
//! The paths are 100,000 distinct ones of 38–50 bytes (43 on average), like
//! `servers.fra2.rack34.host01234.disk.sda.read_bytes`: 5,000 hosts of 20 metrics each, in host order as collectors send
//! them, laid out one after the other in one buffer as they sit in a read buffer. Every iteration looks up all of
//! them once, so the time per iteration divided by 100,000 is the cost per path (criterion's `elem/s` is paths per
//! second). Each cache case prints its hit ratio over one more pass before it is measured.
//!
//! - `md5_position`: no cache, MD5 of every path.
//! - `hit/100k`: a warm cache of 256 Ki slots and a 6 MiB arena (10 MiB) over all 100,000 paths: the steady state
//!   of a relay whose paths all fit.
//! - `hit/1k`: the same cache over the first 1,000 paths only, so it stays in the CPU's caches: the floor.
//! - `miss/100k`: a cache of 1 Ki slots and a 64 KiB arena over all 100,000 paths, so nearly every lookup misses:
//!   the cost of a cold cache or of paths that never repeat (MD5, plus hashing, probing and inserting).

use std::hint::black_box;
use std::ops::Range;

use criterion::{criterion_main, Criterion, Throughput};
use md5::{Digest, Md5};
use polymur::router::path_cache::PathCache;

const N_HOSTS: usize = 5000;
const METRICS: [&str; 20] = [
    "cpu.user",
    "cpu.system",
    "cpu.iowait",
    "cpu.idle",
    "memory.free",
    "memory.cached",
    "memory.buffers",
    "load.1m",
    "load.5m",
    "load.15m",
    "disk.sda.read_bytes",
    "disk.sda.write_bytes",
    "disk.sda.read_ops",
    "disk.sda.write_ops",
    "net.eth0.rx_bytes",
    "net.eth0.tx_bytes",
    "net.eth0.rx_packets",
    "net.eth0.tx_packets",
    "net.eth0.rx_errors",
    "processes.running",
];
const DATACENTRES: [&str; 4] = ["fra2", "ams1", "lon3", "nyc1"];

/// The paths' bytes one after the other, and each path's range in them.
struct Paths {
    bytes: Vec<u8>,
    ranges: Vec<Range<usize>>,
}

impl Paths {
    fn new() -> Paths {
        let mut bytes = Vec::new();
        let mut ranges = Vec::with_capacity(N_HOSTS * METRICS.len());
        for host in 0..N_HOSTS {
            let datacentre = DATACENTRES[host % DATACENTRES.len()];
            for metric in METRICS {
                let start = bytes.len();
                let rack = host % 40;
                let path = format!("servers.{datacentre}.rack{rack:02}.host{host:05}.{metric}");
                bytes.extend_from_slice(path.as_bytes());
                ranges.push(start..bytes.len());
            }
        }
        Paths { bytes, ranges }
    }

    fn iter(&self, n_paths: usize) -> impl Iterator<Item = &[u8]> {
        self.ranges[..n_paths]
            .iter()
            .map(|range| &self.bytes[range.clone()])
    }
}

/// The `carbon_ch` ring position of a path: the first two bytes of its MD5, big-endian.
fn md5_position(path: &[u8]) -> u32 {
    let digest = Md5::digest(path);
    u32::from(u16::from_be_bytes([digest[0], digest[1]]))
}

/// Looks up the first `n_paths` paths once; returns the sum of their positions so nothing is optimised away.
fn look_up_all(cache: &mut PathCache, paths: &Paths, n_paths: usize) -> u64 {
    paths
        .iter(n_paths)
        .map(|path| u64::from(cache.get_or_insert_with(path, md5_position)))
        .sum()
}

fn path_cache(c: &mut Criterion) {
    let paths = Paths::new();
    let n_all = paths.ranges.len();
    let mean_path_bytes = paths.bytes.len() / n_all;
    println!("{n_all} paths, {mean_path_bytes} bytes on average");

    let mut group = c.benchmark_group("path_cache");
    group.sample_size(20);

    group.throughput(Throughput::Elements(n_all as u64));
    group.bench_function("md5_position", |bencher| {
        bencher.iter(|| {
            paths
                .iter(n_all)
                .map(|path| u64::from(md5_position(black_box(path))))
                .sum::<u64>()
        })
    });

    let cases = [
        ("hit/100k", 256 * 1024, 6 << 20, n_all),
        ("hit/1k", 256 * 1024, 6 << 20, 1000),
        ("miss/100k", 1024, 64 << 10, n_all),
    ];
    for (name, slots, arena_bytes, n_paths) in cases {
        let mut cache = PathCache::new(slots, arena_bytes);
        look_up_all(&mut cache, &paths, n_paths);
        let (hits_before, misses_before) = (cache.hits(), cache.misses());
        look_up_all(&mut cache, &paths, n_paths);
        let n_hits = cache.hits() - hits_before;
        let n_misses = cache.misses() - misses_before;
        let hit_ratio = n_hits as f64 / (n_hits + n_misses) as f64;
        println!(
            "{name}: {hit_ratio:.4} of lookups hit, {} bytes",
            cache.memory_bytes()
        );

        group.throughput(Throughput::Elements(n_paths as u64));
        group.bench_function(name, |bencher| {
            bencher.iter(|| look_up_all(&mut cache, &paths, n_paths))
        });
    }
    group.finish();
}

mod group {
    criterion::criterion_group!(benches, super::path_cache);
}
criterion_main!(group::benches);
