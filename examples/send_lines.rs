//! Run with: cargo run --example send_lines -- [ADDRESS] [COUNT]
//!
//! A client that sends COUNT Graphite plaintext lines (default 10000) to a relay at ADDRESS (default
//! `localhost:2005`, polymur's default listener), then closes the connection.
//!
//! This is all a Graphite client is: a TCP connection and `path value timestamp\n` lines. There is no reply and no
//! acknowledgement, so the only way to know what arrived is the relay's counters (`curl localhost:2020/stats`).
//! Two things matter when writing one:
//!
//! - Buffer the lines and use `write_all`: a bare `write` may send only part of its buffer and return the count, and
//!   the rest of that line is lost without an error (clippy is told to refuse `write` in this repository).
//! - Close the connection when done. A relay forwards only complete lines; bytes after the last LF at close are
//!   dropped and counted as `partial_eof`.

use std::io::{BufWriter, Write as _};
use std::net::TcpStream;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "localhost:2005".to_string());
    let n_lines: u64 = match args.next().map(|count| count.parse()) {
        None => 10_000,
        Some(Ok(n_lines)) => n_lines,
        Some(Err(err)) => {
            eprintln!("send_lines: COUNT must be a whole number: {err}");
            std::process::exit(64);
        }
    };

    let timestamp_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let started = Instant::now();
    let stream = TcpStream::connect(&address)?;
    // A few lines per syscall instead of one: `writeln!` on a `BufWriter` writes whole buffers with `write_all`.
    let mut writer = BufWriter::with_capacity(64 * 1024, stream);
    for index in 0..n_lines {
        // Ten series, each getting a value per line: `examples.send_lines.series_3 4567 1700000000`.
        writeln!(
            writer,
            "examples.send_lines.series_{} {index} {timestamp_secs}",
            index % 10
        )?;
    }
    let stream = writer.into_inner().map_err(|err| err.into_error())?;
    // Tell the relay we are done; it then reads to the end and forwards every line.
    stream.shutdown(std::net::Shutdown::Write)?;

    let elapsed = started.elapsed();
    // This measures how fast the kernel took the bytes, not how fast the relay forwards them.
    println!(
        "sent {n_lines} lines to {address} in {:.3}s ({:.0} lines/s)",
        elapsed.as_secs_f64(),
        n_lines as f64 / elapsed.as_secs_f64().max(f64::EPSILON)
    );
    Ok(())
}
