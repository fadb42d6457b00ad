//! An OpenAI-compatible workload for the L7 tests: chat completions (JSON,
//! or SSE with a pause between events and `usage` in the last chunk, or in
//! every chunk with vLLM's `stream_options.continuous_usage_stats`),
//! embeddings, `/v1/models`, and a plain answer on any other path. It
//! records every request it receives (method, target, headers, body, and
//! which accepted connection carried it) so a test can check what the
//! connector forwarded, that refused requests never came, and that
//! connections are kept alive. JSON answers keep the connection open;
//! streams close it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Usage every answer reports: prompt tokens.
pub const PROMPT_TOKENS: u64 = 11;
/// Usage every answer reports: completion tokens per requested event (SSE) or per answer (JSON).
pub const COMPLETION_TOKENS: u64 = 7;

/// One request as the workload received it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    /// The method.
    pub method: String,
    /// The request target exactly as sent (path and query).
    pub target: String,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
    /// Which accepted connection carried it, counting from 1.
    pub connection: u64,
}

impl SeenRequest {
    /// Every value of a header.
    #[must_use]
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }
}

/// The workload; stops when dropped.
pub struct OpenAiUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    task: JoinHandle<()>,
}

impl Drop for OpenAiUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OpenAiUpstream {
    /// Starts listening on a free port; SSE events are `event_gap` apart.
    pub async fn spawn(event_gap: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the OpenAI upstream");
        let addr = listener.local_addr().expect("upstream address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let accepted = AtomicU64::new(0);
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let connection = accepted.fetch_add(1, Ordering::Relaxed) + 1;
                tokio::spawn(serve(socket, connection, log.clone(), event_gap));
            }
        });
        Self { addr, seen, task }
    }

    /// Where the connector should dial.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far.
    #[must_use]
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().expect("lock").clone()
    }

    /// The requests made for callers (those carrying the connector's identity assertion), in order.
    #[must_use]
    pub fn for_callers(&self) -> Vec<SeenRequest> {
        self.seen().into_iter().filter(|r| !r.header_values("x-palisade-identity").is_empty()).collect()
    }

    /// The targets of the requests made for callers, in order.
    #[must_use]
    pub fn targets(&self) -> Vec<String> {
        self.for_callers().into_iter().map(|r| r.target).collect()
    }

    /// Requests the connector made on its own (no identity assertion), e.g. the model inventory.
    #[must_use]
    pub fn own_requests(&self) -> Vec<SeenRequest> {
        self.seen().into_iter().filter(|r| r.header_values("x-palisade-identity").is_empty()).collect()
    }
}

/// Answers requests on one connection until a stream ends it or the peer closes it.
async fn serve(mut socket: TcpStream, connection: u64, seen: Arc<Mutex<Vec<SeenRequest>>>, gap: Duration) {
    let mut buf = Vec::new();
    while let Some(mut request) = read_request(&mut socket, &mut buf).await {
        request.connection = connection;
        seen.lock().expect("lock").push(request.clone());
        let fields: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let path = request.target.split('?').next().unwrap_or("");
        if (request.method.as_str(), path) == ("POST", "/v1/chat/completions") && fields["stream"] == true {
            let events = fields["max_tokens"].as_u64().unwrap_or(3);
            let every_chunk = fields["stream_options"]["continuous_usage_stats"] == true;
            return stream(socket, events, gap, every_chunk).await;
        }
        let body = answer(&request.method, path, &fields).to_string();
        let head =
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
        if socket.write_all(format!("{head}{body}").as_bytes()).await.is_err() {
            return;
        }
    }
}

fn usage(events: u64) -> Value {
    let completion = COMPLETION_TOKENS * events;
    json!({ "prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion,
            "total_tokens": PROMPT_TOKENS + completion })
}

fn answer(method: &str, path: &str, fields: &Value) -> Value {
    match (method, path) {
        ("POST", "/v1/chat/completions") => json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": fields["model"],
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": "hello" }, "finish_reason": "stop" }],
            "usage": usage(1),
        }),
        ("POST", "/v1/embeddings") => json!({
            "object": "list", "data": [{ "object": "embedding", "index": 0, "embedding": [0.1, 0.2] }],
            "model": fields["model"], "usage": { "prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS },
        }),
        ("GET", "/v1/models") => json!({ "object": "list", "data": [{ "id": "llama-3.1-8b", "object": "model" }] }),
        (_, path) => json!({ "reached": path }),
    }
}

/// `events` content chunks `gap` apart (each with the usage so far if
/// `every_chunk`), a last chunk with `usage`, then `[DONE]`.
async fn stream(mut socket: TcpStream, events: u64, gap: Duration, every_chunk: bool) {
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    if socket.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for i in 0..events {
        let mut delta = json!({ "object": "chat.completion.chunk", "choices": [{ "index": 0, "delta": { "content": format!("t{i} ") } }] });
        if every_chunk {
            delta["usage"] = usage(i + 1);
        }
        if write_chunk(&mut socket, &format!("data: {delta}\n\n")).await.is_err() {
            return;
        }
        tokio::time::sleep(gap).await;
    }
    let last = json!({ "object": "chat.completion.chunk", "choices": [], "usage": usage(events) });
    let _ = write_chunk(&mut socket, &format!("data: {last}\n\ndata: [DONE]\n\n")).await;
    let _ = socket.write_all(b"0\r\n\r\n").await;
    let _ = socket.shutdown().await;
}

async fn write_chunk(socket: &mut TcpStream, data: &str) -> std::io::Result<()> {
    socket.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes()).await?;
    socket.flush().await
}

/// Reads more of the connection into `buf`; `None` at its end.
async fn fill(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    let n = socket.read(&mut chunk).await.ok()?;
    buf.extend_from_slice(&chunk[..n]);
    (n > 0).then_some(())
}

/// Takes one request off the front of `buf`, reading as much as it needs.
async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<SeenRequest> {
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        fill(socket, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 4);
    let mut lines = head.split("\r\n");
    let mut start = lines.next()?.split(' ');
    let (method, target) = (start.next()?.to_owned(), start.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.to_ascii_lowercase());
    let body = if header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        read_chunked(socket, buf).await?
    } else {
        let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        while buf.len() < length {
            fill(socket, buf).await?;
        }
        buf.drain(..length).collect()
    };
    Some(SeenRequest { method, target, headers, body, connection: 0 })
}

async fn read_chunked(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                break at;
            }
            fill(socket, buf).await?;
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        buf.drain(..line_end + 2);
        while buf.len() < size + 2 {
            fill(socket, buf).await?;
        }
        body.extend(buf.drain(..size));
        buf.drain(..2);
        if size == 0 {
            return Some(body);
        }
    }
}

/// Sends raw request bytes to `addr` and returns the status code and the whole answer.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the forward");
    stream.write_all(request).await.expect("write the request");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(crate::DEFAULT_TIMEOUT, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(read.is_ok(), "no complete answer in time; got {answer:?}");
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, answer)
}

/// One HTTP/1.1 connection kept open for several requests, one at a time:
/// unlike a pooling client, it never opens a second connection (so a
/// second tunnel) behind the test's back.
pub struct KeepAlive {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    /// Connects to `addr` (a `palisade connect` port).
    pub async fn connect(addr: SocketAddr) -> Self {
        Self { stream: TcpStream::connect(addr).await.expect("connect to the forward"), buf: Vec::new() }
    }

    /// Sends `method target` with a JSON body; returns the status and the answer's body.
    pub async fn json(&mut self, method: &str, target: &str, body: &str) -> (u16, String) {
        let request = format!(
            "{method} {target} HTTP/1.1\r\nhost: llm-prod\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(request.as_bytes()).await.expect("write the request");
        let answer = tokio::time::timeout(crate::DEFAULT_TIMEOUT, self.read_answer()).await;
        answer.expect("an answer in time").expect("a complete answer on the kept-alive connection")
    }

    async fn read_answer(&mut self) -> Option<(u16, String)> {
        let end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            fill(&mut self.stream, &mut self.buf).await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
        self.buf.drain(..end + 4);
        let status = head.split(' ').nth(1)?.parse().ok()?;
        let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length:"))?.trim().parse().ok()?;
        while self.buf.len() < length {
            fill(&mut self.stream, &mut self.buf).await?;
        }
        let body = self.buf.drain(..length).collect::<Vec<u8>>();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// A request for `raw_request`: `method target` with a JSON body and `connection: close`.
#[must_use]
pub fn raw_json(method: &str, target: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {target} HTTP/1.1\r\nhost: llm-prod\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
