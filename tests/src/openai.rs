//! An OpenAI-compatible workload for the L7 tests: chat completions (JSON,
//! or SSE with a pause between events and `usage` in the last chunk),
//! embeddings, `/v1/models`, and a plain answer on any other path. It
//! records every request it receives (method, target, headers) so a test can
//! check what the connector forwarded and that refused requests never came.

use std::net::SocketAddr;
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
    /// The body.
    pub body: Vec<u8>,
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
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, log.clone(), event_gap));
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

    /// The targets of the requests made for callers (those carrying the
    /// connector's identity assertion), in order.
    #[must_use]
    pub fn targets(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|r| !r.header_values("x-palisade-identity").is_empty())
            .map(|r| r.target)
            .collect()
    }

    /// Requests the connector made on its own (no identity assertion), e.g. the model inventory.
    #[must_use]
    pub fn own_requests(&self) -> Vec<SeenRequest> {
        self.seen().into_iter().filter(|r| r.header_values("x-palisade-identity").is_empty()).collect()
    }
}

async fn serve(mut socket: TcpStream, seen: Arc<Mutex<Vec<SeenRequest>>>, gap: Duration) {
    let Some(request) = read_request(&mut socket).await else { return };
    seen.lock().expect("lock").push(request.clone());
    let fields: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let usage = |events: u64| {
        let completion = COMPLETION_TOKENS * events;
        json!({ "prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion,
                "total_tokens": PROMPT_TOKENS + completion })
    };
    let answer = match (request.method.as_str(), request.target.split('?').next().unwrap_or("")) {
        ("POST", "/v1/chat/completions") if fields["stream"] == true => {
            let events = fields["max_tokens"].as_u64().unwrap_or(3);
            return stream(socket, events, gap, usage(events)).await;
        }
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
    };
    let body = answer.to_string();
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = socket.write_all(format!("{head}{body}").as_bytes()).await;
    let _ = socket.shutdown().await;
}

/// `events` content chunks `gap` apart, a last chunk with `usage`, then `[DONE]`.
async fn stream(mut socket: TcpStream, events: u64, gap: Duration, usage: Value) {
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    if socket.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for i in 0..events {
        let delta = json!({ "object": "chat.completion.chunk", "choices": [{ "index": 0, "delta": { "content": format!("t{i} ") } }] });
        if write_chunk(&mut socket, &format!("data: {delta}\n\n")).await.is_err() {
            return;
        }
        tokio::time::sleep(gap).await;
    }
    let last = json!({ "object": "chat.completion.chunk", "choices": [], "usage": usage });
    let _ = write_chunk(&mut socket, &format!("data: {last}\n\ndata: [DONE]\n\n")).await;
    let _ = socket.write_all(b"0\r\n\r\n").await;
    let _ = socket.shutdown().await;
}

async fn write_chunk(socket: &mut TcpStream, data: &str) -> std::io::Result<()> {
    socket.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes()).await?;
    socket.flush().await
}

async fn read_request(socket: &mut TcpStream) -> Option<SeenRequest> {
    let mut buf = Vec::new();
    let end = loop {
        let mut chunk = [0u8; 8192];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut start = lines.next()?.split(' ');
    let (method, target) = (start.next()?.to_owned(), start.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize =
        headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = buf[end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(SeenRequest { method, target, headers, body })
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

/// A request for `raw_request`: `method target` with a JSON body and `connection: close`.
#[must_use]
pub fn raw_json(method: &str, target: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {target} HTTP/1.1\r\nhost: llm-prod\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
