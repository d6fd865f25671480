//! The load generator's side of HTTP/1.1: one request per connection from a chosen source
//! address, the response head, and incremental chunked decoding of the body.

use std::net::{Ipv4Addr, SocketAddr};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
};

/// A response whose head was read: its status, the connection, and the body bytes that came
/// with the head.
pub struct Opened {
    pub status: u16,
    pub head: String,
    pub stream: TcpStream,
    pub body: Vec<u8>,
}

/// Connects from `127.0.0.<source>` to `target`, sends `GET path` with `headers` (each a full
/// `Name: value` line) and reads the response head.
pub async fn get(target: SocketAddr, source: u8, path: &str, headers: &[String]) -> Result<Opened, String> {
    let source = Ipv4Addr::new(127, 0, 0, source.max(1));
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket.bind(SocketAddr::from((source, 0))).map_err(|e| format!("bind {source}: {e}"))?;
    let mut stream = socket.connect(target).await.map_err(|e| format!("connect: {e}"))?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {target}\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16384];
    let body_start = loop {
        let read = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("closed before the response head".into());
        }
        buf.extend_from_slice(&chunk[..read]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() > 16384 {
            return Err("response head too large".into());
        }
    };
    let head = String::from_utf8_lossy(&buf[..body_start]).into_owned();
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    Ok(Opened { status, head, stream, body: buf.split_off(body_start) })
}

/// HTTP/1.1 chunked transfer decoding, incremental.
#[derive(Default)]
pub struct Dechunker {
    buf: Vec<u8>,
    state: Chunk,
}

#[derive(Default, Clone, Copy)]
enum Chunk {
    /// Reading a size line.
    #[default]
    Size,
    /// This many data bytes still to come.
    Data(usize),
    /// The CRLF after a chunk's data.
    Crlf,
    /// The last chunk was read.
    Done,
}

impl Dechunker {
    /// Decodes what `input` completes into `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.buf.extend_from_slice(input);
        let mut pos = 0;
        loop {
            match self.state {
                Chunk::Size => {
                    let Some(end) = self.buf[pos..].windows(2).position(|w| w == b"\r\n") else { break };
                    let line = std::str::from_utf8(&self.buf[pos..pos + end]).unwrap_or("");
                    let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
                    pos += end + 2;
                    self.state = if size == 0 { Chunk::Done } else { Chunk::Data(size) };
                }
                Chunk::Data(left) => {
                    let take = left.min(self.buf.len() - pos);
                    out.extend_from_slice(&self.buf[pos..pos + take]);
                    pos += take;
                    self.state = if take == left { Chunk::Crlf } else { Chunk::Data(left - take) };
                    if pos == self.buf.len() {
                        break;
                    }
                }
                Chunk::Crlf if self.buf.len() - pos >= 2 => {
                    pos += 2;
                    self.state = Chunk::Size;
                }
                Chunk::Crlf | Chunk::Done => break,
            }
        }
        self.buf.drain(..pos);
    }

    /// Whether the last chunk was read: the response is complete.
    pub fn finished(&self) -> bool {
        matches!(self.state, Chunk::Done)
    }
}
