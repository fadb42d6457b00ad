//! The OpenAI-style token stream of `palisade-bench --llm`, both ends: the
//! upstream's side (an HTTP/1.1 `POST /v1/chat/completions` answered with a
//! paced server-sent-event stream, as vLLM or llama.cpp stream tokens) and
//! the load generator's side (send the request, read the chunked stream,
//! time every token).
//!
//! Each content chunk carries its sequence number and the upstream's
//! wall-clock send time, so the reader can tell how long each token spent
//! in the tunnel. The last chunk carries `usage` (what the connector's
//! token quotas count), then `data: [DONE]`.

use std::io::{BufReader, Write as _};
use std::net::TcpStream as StdTcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::setup::connect;

/// The largest request head or body the upstream reads.
const MAX_REQUEST: usize = 64 * 1024;
/// The prompt's token count reported in `usage`.
const PROMPT_TOKENS: u64 = 12;

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// The request the load generator sends: `tokens` tokens, one every `interval`.
#[must_use]
pub fn request(tokens: u32, interval: Duration) -> Vec<u8> {
    let body = json!({
        "model": "bench",
        "stream": true,
        "max_tokens": tokens,
        "messages": [{ "role": "user", "content": "Count to a hundred, slowly." }],
        "bench_interval_us": u64::try_from(interval.as_micros()).unwrap_or(u64::MAX),
    })
    .to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n\
         accept: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

// --- the upstream's side ------------------------------------------------------

/// Serves one HTTP request on a blocking socket whose first byte (`first`)
/// was already read: a chat stream for `POST /v1/chat/completions`, a model
/// list for `GET /v1/models` (the connector's inventory asks), 404 otherwise.
///
/// # Errors
/// The request is malformed or the peer went away.
pub fn serve(socket: StdTcpStream, first: u8) -> std::io::Result<()> {
    let mut reader = BufReader::new(socket.try_clone()?);
    let (start, headers) = read_head(&mut reader, first)?;
    let body = read_body(&mut reader, &headers)?;
    let mut socket = socket;
    match start.split(' ').take(2).collect::<Vec<_>>()[..] {
        ["POST", "/v1/chat/completions"] => {
            let fields: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let tokens = fields["max_tokens"].as_u64().unwrap_or(16);
            let interval = Duration::from_micros(fields["bench_interval_us"].as_u64().unwrap_or(0));
            stream_tokens(&mut socket, tokens, interval)
        }
        ["GET", "/v1/models"] => {
            let list = json!({ "object": "list", "data": [{ "id": "bench", "object": "model" }] }).to_string();
            plain_answer(&mut socket, "200 OK", &list)
        }
        _ => plain_answer(&mut socket, "404 Not Found", r#"{"error":{"message":"not found"}}"#),
    }
}

fn invalid(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned())
}

/// The request line and the headers (names in lower case).
fn read_head(reader: &mut impl std::io::BufRead, first: u8) -> std::io::Result<(String, Vec<(String, String)>)> {
    let mut start = String::from(char::from(first));
    reader.read_line(&mut start)?;
    let mut headers = Vec::new();
    let mut read = start.len();
    loop {
        let mut line = String::new();
        read += reader.read_line(&mut line)?;
        if line.is_empty() || read > MAX_REQUEST {
            return Err(invalid("incomplete or oversized request head"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Ok((start.trim_end().to_owned(), headers));
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
}

fn read_body(reader: &mut impl std::io::BufRead, headers: &[(String, String)]) -> std::io::Result<Vec<u8>> {
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.to_ascii_lowercase());
    if header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| invalid("bad chunk size"))?;
            if body.len() + size > MAX_REQUEST {
                return Err(invalid("oversized request body"));
            }
            let mut chunk = vec![0u8; size + 2];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..size]);
            if size == 0 {
                return Ok(body);
            }
        }
    }
    let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    if length > MAX_REQUEST {
        return Err(invalid("oversized request body"));
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok(body)
}

fn plain_answer(socket: &mut StdTcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(answer.as_bytes())?;
    socket.shutdown(std::net::Shutdown::Write)
}

/// `tokens` content chunks paced by the OS timer from the moment the
/// request was read (the first one at once), then `usage` and `[DONE]`.
fn stream_tokens(socket: &mut StdTcpStream, tokens: u64, interval: Duration) -> std::io::Result<()> {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
                transfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    socket.write_all(head.as_bytes())?;
    let start = Instant::now();
    for seq in 0..tokens {
        let due = start + interval * u32::try_from(seq).unwrap_or(u32::MAX);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let chunk = json!({
            "object": "chat.completion.chunk", "model": "bench",
            "choices": [{ "index": 0, "delta": { "content": format!("{seq} ") } }],
            "bench": { "seq": seq, "sent_ns": now_ns().to_string() },
        });
        write_chunk(socket, &format!("data: {chunk}\n\n"))?;
    }
    let usage =
        json!({ "prompt_tokens": PROMPT_TOKENS, "completion_tokens": tokens, "total_tokens": PROMPT_TOKENS + tokens });
    let last = json!({ "object": "chat.completion.chunk", "model": "bench", "choices": [], "usage": usage });
    write_chunk(socket, &format!("data: {last}\n\ndata: [DONE]\n\n"))?;
    socket.write_all(b"0\r\n\r\n")?;
    socket.shutdown(std::net::Shutdown::Write)
}

fn write_chunk(socket: &mut StdTcpStream, data: &str) -> std::io::Result<()> {
    socket.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
}

// --- the load generator's side ------------------------------------------------

/// What one streamed answer looked like from the caller's side.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// From writing the request to the first token's arrival.
    pub first_token: Duration,
    /// Between consecutive tokens' arrivals.
    pub gaps: Vec<Duration>,
    /// Each token's arrival minus the upstream's send time (wall clock), µs.
    pub delays_us: Vec<f64>,
    /// From writing the request to `[DONE]`.
    pub whole: Duration,
}

/// Sends one chat request to `addr` and times the tokens of its answer.
///
/// # Errors
/// The connection failed, the answer was not a 200 token stream, or tokens
/// were missing or out of order.
pub async fn call(addr: std::net::SocketAddr, tokens: u32, interval: Duration) -> Result<Observed, String> {
    let mut stream = connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let started = Instant::now();
    stream.write_all(&request(tokens, interval)).await.map_err(|e| format!("send the request: {e}"))?;
    let mut reader = StreamReader::default();
    let mut observed = Observed::default();
    let mut last: Option<Instant> = None;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await.map_err(|e| format!("read the answer: {e}"))?;
        let at = Instant::now();
        if n == 0 {
            return Err(format!("the answer ended after {} of {tokens} tokens", observed.gaps.len() + 1));
        }
        for event in reader.push(&buf[..n])? {
            match event {
                Event::Token { seq, sent_ns } => {
                    let expected = last.map_or(0, |_| observed.gaps.len() + 1);
                    if seq as usize != expected {
                        return Err(format!("token {seq} arrived where {expected} was due"));
                    }
                    observed.delays_us.push((now_ns().saturating_sub(sent_ns)) as f64 / 1e3);
                    match last {
                        None => observed.first_token = at - started,
                        Some(prev) => observed.gaps.push(at - prev),
                    }
                    last = Some(at);
                }
                Event::Done if observed.delays_us.len() == tokens as usize => {
                    observed.whole = at - started;
                    return Ok(observed);
                }
                Event::Done => return Err(format!("[DONE] after {} of {tokens} tokens", observed.delays_us.len())),
            }
        }
    }
}

/// What the reader found in the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A content chunk.
    Token {
        /// Its position, from 0.
        seq: u64,
        /// The upstream's wall clock when it sent it, ns since the epoch.
        sent_ns: u128,
    },
    /// `data: [DONE]`.
    Done,
}

/// Parses an HTTP/1.1 response with a chunked SSE body incrementally.
#[derive(Debug, Default)]
pub struct StreamReader {
    raw: Vec<u8>,
    head_done: bool,
    /// De-chunked body bytes not yet split into events.
    body: Vec<u8>,
}

impl StreamReader {
    /// Takes more bytes; returns the events they completed.
    ///
    /// # Errors
    /// Not a 200 answer, or broken chunk framing.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Event>, String> {
        self.raw.extend_from_slice(bytes);
        if !self.head_done {
            let Some(end) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(Vec::new()) };
            let head = String::from_utf8_lossy(&self.raw[..end]).into_owned();
            if head.split(' ').nth(1) != Some("200") {
                return Err(format!("not a 200 answer: {}", head.lines().next().unwrap_or("")));
            }
            self.raw.drain(..end + 4);
            self.head_done = true;
        }
        self.dechunk()?;
        Ok(self.events())
    }

    fn dechunk(&mut self) -> Result<(), String> {
        loop {
            let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") else { return Ok(()) };
            let size_text = String::from_utf8_lossy(&self.raw[..eol]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size line {size_text:?}"))?;
            if self.raw.len() < eol + 2 + size + 2 {
                return Ok(());
            }
            self.body.extend_from_slice(&self.raw[eol + 2..eol + 2 + size]);
            self.raw.drain(..eol + 2 + size + 2);
        }
    }

    fn events(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(end) = self.body.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.body.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let Some(data) = text.trim_end().strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                events.push(Event::Done);
                continue;
            }
            let Ok(chunk) = serde_json::from_str::<Value>(data) else { continue };
            let (seq, sent) = (chunk["bench"]["seq"].as_u64(), chunk["bench"]["sent_ns"].as_str());
            if let (Some(seq), Some(sent_ns)) = (seq, sent.and_then(|s| s.parse().ok())) {
                events.push(Event::Token { seq, sent_ns });
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(data: &str) -> String {
        format!("{:x}\r\n{data}\r\n", data.len())
    }

    #[test]
    fn the_reader_finds_tokens_across_arbitrary_splits() {
        let token = |seq: u64| {
            format!("data: {}\n\n", json!({ "choices": [], "bench": { "seq": seq, "sent_ns": "1700000000000000000" } }))
        };
        let answer = format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{}{}{}0\r\n\r\n",
            chunked(&token(0)),
            chunked(&format!("{}{}", token(1), "data: {\"usage\":{}}\n\n")),
            chunked("data: [DONE]\n\n"),
        );
        for split in [1, 3, 7, answer.len()] {
            let mut reader = StreamReader::default();
            let events: Vec<Event> =
                answer.as_bytes().chunks(split).flat_map(|part| reader.push(part).expect("well formed")).collect();
            let sent_ns = 1_700_000_000_000_000_000;
            assert_eq!(
                events,
                vec![Event::Token { seq: 0, sent_ns }, Event::Token { seq: 1, sent_ns }, Event::Done],
                "split every {split} bytes"
            );
        }
    }

    #[test]
    fn an_error_answer_is_reported() {
        let mut reader = StreamReader::default();
        let err = reader.push(b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 0\r\n\r\n").unwrap_err();
        assert!(err.contains("429"), "{err}");
    }

    #[test]
    fn the_upstream_reads_a_request_split_like_the_generator_writes_it() {
        let request = request(3, Duration::from_micros(250));
        let mut reader = BufReader::new(&request[1..]);
        let (start, headers) = read_head(&mut reader, request[0]).expect("head");
        assert_eq!(start, "POST /v1/chat/completions HTTP/1.1");
        let body: Value = serde_json::from_slice(&read_body(&mut reader, &headers).expect("body")).expect("JSON");
        assert_eq!((body["max_tokens"].as_u64(), body["bench_interval_us"].as_u64()), (Some(3), Some(250)));
    }
}
