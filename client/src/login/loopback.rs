//! The one-time receiver of the sign-in redirect, on 127.0.0.1 only.
//!
//! After the person signs in, the broker sends their browser to
//! `http://127.0.0.1:PORT/callback?code=…&state=…`. Any local process or web
//! page can also reach this port, so a request only counts if its `state` is
//! the one this CLI made; anything else gets a 400 and the wait goes on.
//! Exactly one valid callback is accepted, then the listener is closed.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::LoginError;

/// The path the broker redirects to.
pub const CALLBACK_PATH: &str = "/callback";
const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound, not yet used, loopback listener.
#[derive(Debug)]
pub(crate) struct Loopback {
    listener: TcpListener,
    port: u16,
}

impl Loopback {
    /// Binds 127.0.0.1 on a port the OS picks.
    pub(crate) async fn bind() -> std::io::Result<Loopback> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let port = listener.local_addr()?.port();
        Ok(Loopback { listener, port })
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Answers requests until one carries `state` and a code, or `timeout` passes.
    /// The listener is closed when this returns.
    pub(crate) async fn receive_code(self, state: &str, timeout: Duration) -> Result<String, LoginError> {
        let expected: Arc<str> = Arc::from(state);
        let claimed = Arc::new(AtomicBool::new(false));
        let (codes, mut received) = mpsc::channel::<String>(1);
        let mut requests = JoinSet::new();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return Err(LoginError::CallbackTimeout(timeout)),
                Some(code) = received.recv() => return Ok(code),
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let (expected, claimed, codes) = (expected.clone(), claimed.clone(), codes.clone());
                        requests.spawn(serve(stream, expected, claimed, codes));
                    }
                    Err(error) => tracing::debug!(%error, "loopback accept failed"),
                },
                Some(_) = requests.join_next(), if !requests.is_empty() => {}
            }
        }
    }
}

async fn serve(mut stream: TcpStream, expected: Arc<str>, claimed: Arc<AtomicBool>, codes: mpsc::Sender<String>) {
    let Ok(Some(request_line)) = tokio::time::timeout(READ_TIMEOUT, read_request_line(&mut stream)).await else {
        return;
    };
    let verdict = judge(&request_line, &expected, &claimed);
    let _ = respond(&mut stream, &verdict).await;
    if let Verdict::Accepted(code) = verdict {
        let _ = codes.send(code).await;
    }
}

/// What one request gets.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Accepted(String),
    NotFound,
    MethodNotAllowed,
    /// A callback that is not for this login (wrong or missing state or code).
    NotOurs,
    /// The right callback, again.
    AlreadyUsed,
}

fn judge(request_line: &str, expected: &str, claimed: &AtomicBool) -> Verdict {
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else { return Verdict::NotOurs };
    if !target.starts_with('/') {
        return Verdict::NotFound;
    }
    let Ok(url) = reqwest::Url::parse("http://127.0.0.1").and_then(|base| base.join(target)) else {
        return Verdict::NotOurs;
    };
    if url.path() != CALLBACK_PATH {
        return Verdict::NotFound;
    }
    if method != "GET" {
        return Verdict::MethodNotAllowed;
    }
    let (Some(code), Some(state)) = (single(&url, "code"), single(&url, "state")) else {
        return Verdict::NotOurs;
    };
    if code.is_empty() || !constant_time_eq(state.as_bytes(), expected.as_bytes()) {
        return Verdict::NotOurs;
    }
    if claimed.swap(true, Ordering::SeqCst) {
        return Verdict::AlreadyUsed;
    }
    Verdict::Accepted(code)
}

/// The value of a query parameter that appears exactly once.
fn single(url: &reqwest::Url, name: &str) -> Option<String> {
    let mut values = url.query_pairs().filter(|(k, _)| k == name).map(|(_, v)| v.into_owned());
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads the request head (bounded) and returns its first line.
async fn read_request_line(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|b| *b == b'\r').next()?;
    String::from_utf8(line.to_vec()).ok()
}

async fn respond(stream: &mut TcpStream, verdict: &Verdict) -> std::io::Result<()> {
    let (status, message) = match verdict {
        Verdict::Accepted(_) => ("200 OK", "signed in — you can close this tab and go back to the terminal."),
        Verdict::NotFound => ("404 Not Found", "nothing here."),
        Verdict::MethodNotAllowed => ("405 Method Not Allowed", "nothing here."),
        Verdict::NotOurs => ("400 Bad Request", "this sign-in does not belong to the waiting palisade login."),
        Verdict::AlreadyUsed => ("400 Bad Request", "this sign-in was already used."),
    };
    let body = format!(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Palisade</title>\
         <body style=\"font-family:sans-serif;margin:3em\"><p>Palisade: {message}</p></body></html>\n"
    );
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nreferrer-policy: no-referrer\r\nx-content-type-options: nosniff\r\n\
         content-security-policy: default-src 'none'; style-src 'unsafe-inline'\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_state_with_a_code_is_accepted_and_only_once() {
        let claimed = AtomicBool::new(false);
        let judge = |line: &str| judge(line, "s3cr3t", &claimed);
        assert_eq!(judge("GET /favicon.ico HTTP/1.1"), Verdict::NotFound);
        assert_eq!(judge("POST /callback?code=c&state=s3cr3t HTTP/1.1"), Verdict::MethodNotAllowed);
        assert_eq!(judge("GET /callback?code=c&state=s3cr3 HTTP/1.1"), Verdict::NotOurs);
        assert_eq!(judge("GET /callback?code=c&state=s3cr3t2 HTTP/1.1"), Verdict::NotOurs);
        assert_eq!(judge("GET /callback?state=s3cr3t HTTP/1.1"), Verdict::NotOurs);
        assert_eq!(judge("GET /callback?code=&state=s3cr3t HTTP/1.1"), Verdict::NotOurs);
        assert_eq!(judge("GET /callback?code=c&state=x&state=s3cr3t HTTP/1.1"), Verdict::NotOurs);
        assert_eq!(judge("GET http://evil/callback?code=c&state=s3cr3t HTTP/1.1"), Verdict::NotFound);
        assert_eq!(judge("GET /callback?code=c%2B1&state=s3cr3t HTTP/1.1"), Verdict::Accepted("c+1".into()));
        assert_eq!(judge("GET /callback?code=c&state=s3cr3t HTTP/1.1"), Verdict::AlreadyUsed);
    }
}
