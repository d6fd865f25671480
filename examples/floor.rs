//! The physical floor for the broadcast benchmark: a server that does nothing but write one
//! pre-formatted SSE event to every open connection, `--rate` times a second, from one loop
//! per writer (`--writers`, each with its share of the connections).
//! No hub, no tasks per connection, no HTTP beyond a fixed response head. `scripts/bench`
//! runs the load generator against it to show what this machine can push at all.
//!
//! ```text
//! cargo run --release --example floor -- --listen 127.0.0.1:8090 --rate 150
//! ```

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use clap::Parser;
use sse_bff::routes::rfc3339_nanos;
use tokio::{
    io::AsyncReadExt as _,
    net::{TcpListener, TcpStream},
};

#[derive(Parser)]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Events per second written to every connection.
    #[arg(long, default_value_t = 150.0)]
    rate: f64,
    /// Loops writing at once, each to its share of the connections.
    #[arg(long, default_value_t = 1)]
    writers: usize,
}

const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";

#[tokio::main]
async fn main() -> io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    let writers: Vec<Arc<Mutex<Vec<TcpStream>>>> = (0..args.writers.max(1)).map(|_| Arc::default()).collect();
    for writer in &writers {
        let writer = Arc::clone(writer);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for id in 1u64.. {
                tick.tick().await;
                let chunk = chunk(id);
                let mut open = writer.lock().unwrap_or_else(PoisonError::into_inner);
                // A connection that cannot take a whole event is dropped: the floor keeps no queue.
                open.retain(|stream| stream.try_write(&chunk).is_ok_and(|n| n == chunk.len()));
            }
        });
    }
    for n in 0.. {
        let (mut stream, _) = listener.accept().await?;
        let connections = Arc::clone(&writers[n % writers.len()]);
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let mut head = [0u8; 4096];
            let mut read = 0;
            while !head[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut head[read..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => read += n,
                }
                if read == head.len() {
                    return;
                }
            }
            if stream.try_write(HEAD).is_ok_and(|n| n == HEAD.len()) {
                connections.lock().unwrap_or_else(PoisonError::into_inner).push(stream);
            }
        });
    }
    Ok(())
}

/// One chunk-framed SSE event with the fields of the service's progress events.
fn chunk(id: u64) -> Vec<u8> {
    let data = format!(
        r#"{{"documentId":"bench-0","sequence":{id},"status":"running","percent":50,"stage":"steady","message":"update {id}","emittedAt":"{}"}}"#,
        rfc3339_nanos(SystemTime::now().into())
    );
    let frame = format!("id: {id}\nevent: progress\ndata: {data}\n\n");
    format!("{:x}\r\n{frame}\r\n", frame.len()).into_bytes()
}
