//! A destination behind a path that black-holes, for real: the relay and a sink run in a network namespace of their
//! own, where `nft` drops the sink's packets. `--features peers` (it needs `ip` and `nft`, and root).
//!
//! Each test has its namespace (`ip netns add`), entered by one OS thread (`setns`) that runs a current-thread
//! runtime with the relay in process and the sink: namespaces belong to threads, sockets stay in the namespace they
//! were made in, and threads inherit their creator's, so the sink's reader threads are inside too. The kernel's
//! `TCP_USER_TIMEOUT` (short here) is what notices the dead path; `write_timeout` is far longer so it cannot be it.

use std::collections::BTreeSet;
use std::fs::File;
use std::future::Future;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

use crate::support::{self, distinct_lines, eventually, send, sorted, Sink, TestRelay};

/// Lines sent, and acknowledged, before the path goes dark.
const N_BEFORE: usize = 5_000;
/// Lines sent into the dark: few enough (about 9 KB) to be written in one go into a fresh send buffer.
const N_DURING: usize = 200;
/// How long the kernel lets written bytes go unacknowledged before it fails the connection.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(1);
/// The nft table holding the test's rules, inside the test's namespace.
const NFT_TABLE: &str = "polymur_black_hole";

#[test]
fn a_black_holed_path_loses_nothing_and_resends_only_what_was_never_acknowledged() {
    let namespace = Namespace::new();
    namespace.block_on_inside(|namespace| async move {
        let sink = Sink::start().await;
        let relay = TestRelay::start(config(&sink)).await;
        let destination = relay.destination(0);
        let before = distinct_lines(1, N_BEFORE);
        send(relay.address(), &before).await;
        eventually("the destination acknowledged every line", || {
            destination.sent_lines.load(Ordering::Relaxed) == N_BEFORE as u64
        })
        .await;
        // And read them: its receive window is then wide open, so what comes next is sent at once, without
        // waiting for a window update.
        eventually("the sink read every line", || sink.n_lines() == N_BEFORE).await;

        // Both directions dark: nothing more reaches the sink, no acknowledgement comes back.
        namespace.drop_packets(&[
            &format!("tcp dport {}", sink.address().port()),
            &format!("tcp sport {}", sink.address().port()),
        ]);
        let during = distinct_lines(2, N_DURING);
        send(relay.address(), &during).await;
        eventually("the kernel fails the black-holed connection", || {
            destination.disconnects.load(Ordering::Relaxed) == 1
        })
        .await;
        assert_eq!(
            destination.resent_lines.load(Ordering::Relaxed),
            N_DURING as u64
        );
        assert_eq!(
            destination.queued_lines.load(Ordering::Relaxed),
            N_DURING as i64
        );
        assert_eq!(sink.n_lines(), N_BEFORE);

        namespace.restore_packets();
        eventually("every line arrives", || {
            sink.n_lines() >= N_BEFORE + N_DURING
        })
        .await;
        eventually("and is acknowledged", || {
            destination.queued_lines.load(Ordering::Relaxed) == 0
        })
        .await;
        let expected: Vec<String> = sorted(&[before, during].concat());
        // Exactly the lines sent: what was acknowledged before the black hole was not sent again, and what was
        // written into it, never acknowledged, arrived once.
        assert_eq!(sink.sorted_lines(), expected);
        assert_eq!(
            destination.resent_lines.load(Ordering::Relaxed),
            N_DURING as u64
        );
        assert_eq!(
            destination.sent_lines.load(Ordering::Relaxed),
            (N_BEFORE + N_DURING) as u64
        );
        assert_eq!(destination.dropped_total(), 0);
        assert_eq!(destination.connects.load(Ordering::Relaxed), 2);
        assert_eq!(destination.write_timeouts.load(Ordering::Relaxed), 0);
        relay.shutdown().await;
    });
}

#[test]
fn lines_whose_acknowledgements_were_lost_are_resent_and_every_duplicate_is_counted() {
    let namespace = Namespace::new();
    namespace.block_on_inside(|namespace| async move {
        let sink = Sink::start().await;
        let relay = TestRelay::start(config(&sink)).await;
        let destination = relay.destination(0);
        let before = distinct_lines(3, N_BEFORE);
        send(relay.address(), &before).await;
        eventually("the destination acknowledged every line", || {
            destination.sent_lines.load(Ordering::Relaxed) == N_BEFORE as u64
        })
        .await;
        // And read them: its receive window is then wide open, so what comes next is sent at once, without
        // waiting for a window update.
        eventually("the sink read every line", || sink.n_lines() == N_BEFORE).await;

        // Only the sink's packets are dropped: its process reads the lines, but no acknowledgement comes back.
        namespace.drop_packets(&[&format!("tcp sport {}", sink.address().port())]);
        let during = distinct_lines(4, N_DURING);
        send(relay.address(), &during).await;
        eventually("the sink reads the lines", || {
            sink.n_lines() == N_BEFORE + N_DURING
        })
        .await;
        eventually(
            "the kernel fails the connection that acknowledges nothing",
            || destination.disconnects.load(Ordering::Relaxed) == 1,
        )
        .await;

        namespace.restore_packets();
        eventually("the unacknowledged lines arrive again", || {
            destination.queued_lines.load(Ordering::Relaxed) == 0
        })
        .await;
        // Acknowledged by the sink's kernel is not yet read by the sink: wait for its reader too.
        eventually("the sink read the lines sent again", || {
            sink.n_lines() >= N_BEFORE + 2 * N_DURING
        })
        .await;
        let received = sink.lines();
        let distinct: BTreeSet<String> = received.iter().cloned().collect();
        let expected: BTreeSet<String> = sorted(&[before, during].concat()).into_iter().collect();
        assert_eq!(distinct, expected);
        let n_duplicates = (received.len() - distinct.len()) as u64;
        assert_eq!(n_duplicates, N_DURING as u64);
        assert_eq!(
            destination.resent_lines.load(Ordering::Relaxed),
            n_duplicates
        );
        assert_eq!(
            destination.sent_lines.load(Ordering::Relaxed),
            (N_BEFORE + N_DURING) as u64
        );
        assert_eq!(destination.dropped_total(), 0);
        relay.shutdown().await;
    });
}

/// The relay's config: one destination, a short `TCP_USER_TIMEOUT`, and a `write_timeout` far beyond the test.
fn config(sink: &Sink) -> polymur::Config {
    let mut config = support::config(&[sink.address()]);
    config.destination.tcp_user_timeout = Some(TCP_USER_TIMEOUT);
    config.destination.write_timeout = Duration::from_secs(600);
    config.destination.connect_timeout = Duration::from_millis(300);
    config
}

/// A network namespace with only `lo`, up; deleted on drop.
struct Namespace {
    name: String,
}

impl Namespace {
    fn new() -> Namespace {
        static N_CREATED: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "polymur-test-{}-{}",
            std::process::id(),
            N_CREATED.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let namespace = Namespace { name };
        run("ip", &["-n", &namespace.name, "link", "set", "lo", "up"]);
        namespace
    }

    /// Runs `test` on a thread inside the namespace, on a current-thread runtime, and passes on its panic.
    fn block_on_inside<F, Fut>(&self, test: F)
    where
        F: FnOnce(NamespaceRules) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let path = format!("/run/netns/{}", self.name);
        let rules = NamespaceRules {
            name: self.name.clone(),
        };
        let thread = std::thread::spawn(move || {
            let namespace = File::open(&path).unwrap_or_else(|err| panic!("open {path}: {err}"));
            move_into_link_name_space(namespace.as_fd(), Some(LinkNameSpaceType::Network))
                .expect("setns into the test's network namespace");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(test(rules));
        });
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The packet filter of a test's namespace.
struct NamespaceRules {
    name: String,
}

impl NamespaceRules {
    /// Drops, on their way out of any socket in the namespace, the packets matching each of `matches`.
    fn drop_packets(&self, matches: &[&str]) {
        self.nft(&format!("add table inet {NFT_TABLE}"));
        self.nft(&format!(
            "add chain inet {NFT_TABLE} output {{ type filter hook output priority 0 ; policy accept ; }}"
        ));
        for packet_match in matches {
            self.nft(&format!(
                "add rule inet {NFT_TABLE} output {packet_match} drop"
            ));
        }
    }

    /// Lets every packet through again.
    fn restore_packets(&self) {
        self.nft(&format!("delete table inet {NFT_TABLE}"));
    }

    fn nft(&self, command: &str) {
        let mut args = vec!["netns", "exec", &self.name, "nft"];
        args.extend(command.split(' '));
        run("ip", &args);
    }
}

/// Runs a program to completion; a missing program or a failure fails the test, with how to install it.
fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap_or_else(|err| {
        panic!("cannot run {program} ({err}): install iproute2 and nftables (apt-get install iproute2 nftables)")
    });
    assert!(status.success(), "{program} {args:?} failed: {status}");
}
