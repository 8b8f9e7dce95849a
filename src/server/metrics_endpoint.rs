//! The metrics listener (`metrics_listen`): its own socket, never the application's,
//! served on the I/O runtime. `GET /metrics` (or `HEAD`) answers the Prometheus text of
//! the whole instance (every worker's slot, summed); any other path is 404, any other
//! method 405. One request per connection, a small head within a few seconds, or the
//! connection is closed: a scraper is a well-behaved client, anything else gets little.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use socket2::Socket;
use tokio::io::unix::AsyncFd;

use super::dispatch::{EventLog, LogLevel};
use super::shutdown::ShutdownSignal;
use super::socket::{register, Conn};
use crate::http::request::{HeadLimits, HeadParser};
use crate::observe::metrics;

/// How long a scraper has to send its request...
const HEAD_DEADLINE: Duration = Duration::from_secs(2);
/// ...and to read the answer.
const DEADLINE: Duration = Duration::from_secs(10);
/// The largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Scrapes served at once; more wait in the backlog.
const CONCURRENT: usize = 16;

/// Accepts on `socket` until the server shuts down.
pub async fn serve(socket: Socket, shutdown: Arc<ShutdownSignal>, log: Arc<dyn EventLog>) {
    let listener = match socket.set_nonblocking(true).and_then(|()| register(socket)) {
        Ok(l) => l,
        Err(err) => {
            log.log(
                LogLevel::Error,
                format!("The metrics listener could not start: {err}"),
            );
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENT));
    let mut stop = shutdown.subscribe();
    loop {
        let permit = tokio::select! {
            biased;
            _ = stop.recv() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            biased;
            _ = stop.recv() => return,
            r = accept(&listener) => r,
        };
        match accepted {
            Ok(conn) => {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(DEADLINE, answer(conn)).await;
                    drop(permit);
                });
            }
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn accept(listener: &AsyncFd<Socket>) -> std::io::Result<Conn> {
    loop {
        let mut ready = listener.readable().await?;
        match ready.try_io(|l| l.get_ref().accept()) {
            Ok(Ok((socket, _))) => {
                socket.set_nonblocking(true)?;
                return Conn::uncounted(socket);
            }
            Ok(Err(err)) => return Err(err),
            Err(_would_block) => continue,
        }
    }
}

/// Reads one request head and answers it, then closes.
async fn answer(conn: Conn) {
    let limits = HeadLimits {
        max_head_bytes: MAX_HEAD,
        max_request_line: MAX_HEAD,
        max_headers: 100,
        max_body_bytes: 0,
    };
    let mut parser = HeadParser::new();
    let mut buf = BytesMut::with_capacity(1024);
    let read_head = async {
        loop {
            match parser.parse(&mut buf, &limits) {
                Ok(Some(head)) => return Some(Ok(head)),
                Ok(None) => {}
                Err(_) => return Some(Err(())),
            }
            match conn.read(&mut buf, 2048).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    let head = match tokio::time::timeout(HEAD_DEADLINE, read_head).await {
        Ok(Some(Ok(head))) => head,
        Ok(Some(Err(()))) => {
            let bad = b"bad request\n";
            return send(&conn, "400 Bad Request", "text/plain", bad, false).await;
        }
        Ok(None) | Err(_) => return,
    };
    let head_only = head.method() == b"HEAD";
    let path = head
        .target()
        .split(|&b| b == b'?')
        .next()
        .unwrap_or_default();
    if head.method() != b"GET" && !head_only {
        return send(
            &conn,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
            false,
        )
        .await;
    }
    if path != b"/metrics" {
        return send(
            &conn,
            "404 Not Found",
            "text/plain",
            b"metrics are at /metrics\n",
            head_only,
        )
        .await;
    }
    // Reading /proc for every worker blocks: not on an I/O thread that serves clients.
    let text = tokio::task::spawn_blocking(metrics::render)
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    send(
        &conn,
        "200 OK",
        "text/plain; version=0.0.4; charset=utf-8",
        text.as_bytes(),
        head_only,
    )
    .await;
}

async fn send(conn: &Conn, status: &str, content_type: &str, body: &[u8], head_only: bool) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    let _ = conn.send_all(&out).await;
    conn.shutdown_write();
}
