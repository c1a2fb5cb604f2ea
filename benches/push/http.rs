//! The bench's HTTP/1.1 client of the push API: one-off requests, and
//! `POST /api/publish` pipelined over a few keep-alive connections.

use crate::users::now_us;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};

/// One request's text.
fn request(method: &str, path: &str, key: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A response read from a buffer: status, body, whether it says
/// `Connection: close`, and the bytes it took; `None` while incomplete.
fn parse_response(buf: &[u8]) -> Result<Option<(u16, String, bool, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let head = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("a bad response ({e})")),
    };
    let mut length = 0usize;
    let mut close = false;
    for h in r.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        if h.name.eq_ignore_ascii_case("content-length") {
            length = value
                .trim()
                .parse()
                .map_err(|_| format!("Content-Length {value:?}"))?;
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    if buf.len() < head + length {
        return Ok(None);
    }
    let body = String::from_utf8_lossy(&buf[head..head + length]).into_owned();
    Ok(Some((r.code.unwrap_or(0), body, close, head + length)))
}

/// One request on a connection of its own: status and body.
pub async fn once(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.write_all(request(method, path, key, body).as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    loop {
        if let Some((status, body, _, _)) = parse_response(&buf)? {
            return Ok((status, body));
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("{method} {path}: the connection ended"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Makes the body of publish number n.
pub type Body = Arc<dyn Fn(u64) -> String + Send + Sync>;

/// What the pipelined publishes got.
pub struct Answered {
    /// Requests answered 200 with `{"delivered": 1}`.
    pub ok: usize,
    /// When the last answer came ([`now_us`]).
    pub last_us: u64,
    /// Request to answer, sorted, microseconds.
    pub latencies_us: Vec<u64>,
}

/// Sends `POST /api/publish` with `body(n)` for each n of `0..count`, over
/// `conns` connections (connection c sends c, c + conns, ...), each with at
/// most `window` requests unanswered. Any answer but 200 with
/// `{"delivered": 1}` is an error.
pub async fn publish_pipelined(
    addr: SocketAddr,
    key: &str,
    count: usize,
    conns: usize,
    window: usize,
    body: Body,
) -> Result<Answered, String> {
    let mut tasks = Vec::new();
    for c in 0..conns.max(1) {
        let ns: Vec<u64> = (c..count).step_by(conns.max(1)).map(|n| n as u64).collect();
        tasks.push(tokio::spawn(one_conn(
            addr,
            key.to_string(),
            ns,
            window,
            body.clone(),
        )));
    }
    let mut out = Answered {
        ok: 0,
        last_us: 0,
        latencies_us: Vec::with_capacity(count),
    };
    for t in tasks {
        let (ok, last, lat) = t.await.map_err(|e| e.to_string())??;
        out.ok += ok;
        out.last_us = out.last_us.max(last);
        out.latencies_us.extend(lat);
    }
    out.latencies_us.sort_unstable();
    Ok(out)
}

/// One connection's share: a writer task sends as many requests as the
/// window allows in one write, this task reads the answers in order.
async fn one_conn(
    addr: SocketAddr,
    key: String,
    ns: Vec<u64>,
    window: usize,
    body: Body,
) -> Result<(usize, u64, Vec<u64>), String> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut rd, mut wr) = s.into_split();
    let room = Arc::new(Semaphore::new(window.max(1)));
    // When each request went, in order; noted before it is written.
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<u64>();
    let total = ns.len();
    let writer = {
        let room = room.clone();
        tokio::spawn(async move {
            let mut buf = String::new();
            let mut next = ns.into_iter().peekable();
            while next.peek().is_some() {
                let Ok(first) = room.acquire().await else {
                    break;
                };
                first.forget();
                buf.clear();
                let t = now_us();
                let mut more = true;
                while more {
                    let Some(n) = next.next() else { break };
                    buf.push_str(&request("POST", "/api/publish", &key, &body(n)));
                    let _ = sent_tx.send(t);
                    more = next.peek().is_some() && room.try_acquire().map(|p| p.forget()).is_ok();
                }
                wr.write_all(buf.as_bytes())
                    .await
                    .map_err(|e| format!("write: {e}"))?;
            }
            // Kept open until the reader is done: a half-close could end
            // the keep-alive connection early.
            Ok::<_, String>(wr)
        })
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut last = 0u64;
    let mut lat = Vec::with_capacity(total);
    while lat.len() < total {
        let Some((status, text, close, used)) = parse_response(&buf)? else {
            let n = rd
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!("the connection ended after {} answers", lat.len()));
            }
            buf.extend_from_slice(&chunk[..n]);
            continue;
        };
        buf.drain(..used);
        let t = sent_rx.recv().await.ok_or("an answer to no request")?;
        let now = now_us();
        if status != 200 || text.replace(' ', "") != "{\"delivered\":1}" {
            return Err(format!("POST /api/publish answered {status} {text}"));
        }
        lat.push(now.saturating_sub(t));
        if close && lat.len() < total {
            return Err("the server closed the keep-alive connection".into());
        }
        room.add_permits(1);
        last = now;
    }
    let _wr = writer.await.map_err(|e| e.to_string())??;
    Ok((lat.len(), last, lat))
}
