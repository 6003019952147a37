//! Run with: cargo run --example embedded
//!
//! The relay as a library: start it inside your own program, send it lines, read its counters, shut it down.
//! Tests and benches use polymur this way; so could a program that wants a relay without a second process.
//!
//! The steps are the ones the `polymur` binary takes, minus the command line and signals:
//!
//! 1. Build a [`polymur::Config`] (here in code; the binary loads `config/polymur.toml` and applies flags on top).
//! 2. [`polymur::Relay::start`] validates it, binds the listeners and spawns every task on the current tokio runtime.
//! 3. [`polymur::Relay::handle`] gives the bound addresses and the counters; `registry.snapshot()` is the value
//!    `GET /stats` serves as JSON.
//! 4. [`polymur::Relay::shutdown`] stops accepting, drains the queues and reports what it could not deliver.
//!
//! A destination is needed to see lines go out, so this example runs a tiny one of its own: a TCP listener that
//! reads and counts lines, standing in for carbon-cache.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use polymur::{Config, Relay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Valid lines sent by [`lines`].
const N_VALID_LINES: u64 = 3;

/// Three valid lines and two the relay refuses, counted as `fields` and `nan`. A timestamp more than a year from
/// now would still be forwarded, but counted as `ts_far`, so these use the current time.
fn lines(timestamp_secs: i64) -> String {
    format!(
        "examples.embedded.a 1 {timestamp_secs}\n\
         examples.embedded.b 2.5 {timestamp_secs}\n\
         examples.embedded.c -1e3 {timestamp_secs}\n\
         examples.embedded.no_value {timestamp_secs}\n\
         examples.embedded.d nan {timestamp_secs}\n"
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The relay logs with `tracing`; without a subscriber it would be silent.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();

    let destination = TcpListener::bind("127.0.0.1:0").await?;
    let destination_address = destination.local_addr()?;
    let n_delivered = Arc::new(AtomicU64::new(0));
    tokio::spawn(count_lines(destination, Arc::clone(&n_delivered)));

    // Start from the defaults (the same as an empty config file) and change what this program needs.
    let mut config = Config {
        destinations: vec![destination_address.to_string()],
        ..Config::default()
    };
    // Port 0: any free port, read back from the handle. This keeps the example clear of a polymur already running.
    config.listen.address = "127.0.0.1".to_string();
    config.listen.port = 0;
    // No stats HTTP server: this program reads the counters directly.
    config.stats.address = String::new();
    let relay = Relay::start(config).await?;
    let handle = relay.handle();

    let mut client = TcpStream::connect(handle.listen_address).await?;
    client
        .write_all(lines(polymur::line::unix_now_secs()).as_bytes())
        .await?;
    client.shutdown().await?;

    // Plaintext has no acknowledgements: wait until the destination has read the valid lines, for at most 10 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while n_delivered.load(Ordering::Relaxed) < N_VALID_LINES
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let snapshot = handle.registry.snapshot();
    println!("{}", serde_json::to_string_pretty(&snapshot)?);

    let report = relay.shutdown().await;
    println!(
        "destination read {} lines; shutdown lost {} lines",
        n_delivered.load(Ordering::Relaxed),
        report.lines_lost
    );
    Ok(())
}

/// A stand-in destination: accepts connections and counts the LF-terminated lines it reads.
async fn count_lines(listener: TcpListener, n_lines: Arc<AtomicU64>) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let n_lines = Arc::clone(&n_lines);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n_read) = stream.read(&mut buf).await {
                if n_read == 0 {
                    break;
                }
                let n_new = buf[..n_read].iter().filter(|&&byte| byte == b'\n').count();
                n_lines.fetch_add(n_new as u64, Ordering::Relaxed);
            }
        });
    }
}
