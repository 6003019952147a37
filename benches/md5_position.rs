//! The cost per path of a `carbon_ch` ring position (the first two bytes of the path's MD5): one MD5 at a time with
//! RustCrypto's `md-5`, against eight side by side with `router::hash::md5_lanes`, as the router computes a batch's.
//!
//! Run with `cargo bench --bench md5_position -- --warm-up-time 1 --measurement-time 3`.
//!
//! The paths are 100,000 distinct ones of 38–50 bytes (43 on average), like
//! `servers.fra2.rack34.host01234.disk.sda.read_bytes`: 5,000 hosts of 20 metrics each, laid out one after the other
//! in one buffer as they sit in a batch. Every iteration computes all of them once, so the time per iteration divided
//! by 100,000 is the cost per path (criterion's `elem/s` is paths per second).

use std::hint::black_box;
use std::ops::Range;

use criterion::{criterion_main, Criterion, Throughput};
use md5::{Digest, Md5};
use polymur::router::hash::md5_lanes::md5_positions;

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

fn md5_position_bench(c: &mut Criterion) {
    let paths = Paths::new();
    let n_all = paths.ranges.len();
    let mean_path_bytes = paths.bytes.len() / n_all;
    println!("{n_all} paths, {mean_path_bytes} bytes on average");

    let mut group = c.benchmark_group("md5_position");
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

    let mut positions = Vec::with_capacity(n_all);
    group.bench_function("md5_lanes", |bencher| {
        bencher.iter(|| {
            md5_positions(
                n_all,
                |index| &paths.bytes[paths.ranges[index].clone()],
                &mut positions,
            );
            positions
                .iter()
                .map(|&position| u64::from(position))
                .sum::<u64>()
        })
    });

    group.finish();
}

mod group {
    criterion::criterion_group!(benches, super::md5_position_bench);
}
criterion_main!(group::benches);
