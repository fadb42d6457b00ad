//! Reading a metrics listener the way Prometheus and a kubelet do: plain
//! HTTP GET of `/metrics`, `/healthz`, `/readyz`, and the text format parsed
//! into samples.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::wait::{DEFAULT_TIMEOUT, within};

/// An HTTP answer: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    /// e.g. 200.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

/// `GET path` on `addr` over HTTP/1.1 (`Connection: close`).
pub async fn http_get(addr: SocketAddr, path: &str) -> HttpAnswer {
    within(&format!("GET http://{addr}{path}"), DEFAULT_TIMEOUT, async {
        let mut tcp = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.expect("send the request");
        let mut raw = String::new();
        tcp.read_to_string(&mut raw).await.expect("read the answer");
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not an HTTP answer: {raw:?}"));
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status code");
        HttpAnswer { status, body: body.to_owned() }
    })
    .await
}

/// One scrape of `/metrics`: every sample by its full name with labels, as
/// written (`palisade_relay_bytes_total{direction="up"}`), and the `# TYPE` lines.
#[derive(Debug, Clone)]
pub struct Scrape {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
    text: String,
}

impl Scrape {
    /// Scrapes `http://addr/metrics`, failing the test on anything but a 200.
    pub async fn from(addr: SocketAddr) -> Self {
        let answer = http_get(addr, "/metrics").await;
        assert_eq!(answer.status, 200, "GET /metrics: {}", answer.body);
        Self::parse(&answer.body)
    }

    /// Parses the Prometheus text format.
    ///
    /// # Panics
    /// On a sample line without a numeric value.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        let (mut samples, mut types) = (BTreeMap::new(), BTreeMap::new());
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                types.insert(name.to_owned(), kind.to_owned());
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let (series, value) = line.rsplit_once(' ').expect("a sample line");
                let value = value.parse().unwrap_or_else(|_| panic!("{line:?}: not a number"));
                samples.insert(series.to_owned(), value);
            }
        }
        Self { samples, types, text: text.to_owned() }
    }

    /// The value of one sample, e.g. `palisade_relay_stream_opens_total{result="allowed"}`.
    #[must_use]
    pub fn get(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// The `# TYPE` of a metric name.
    #[must_use]
    pub fn kind(&self, name: &str) -> Option<&str> {
        self.types.get(name).map(String::as_str)
    }

    /// The scrape as served, for failure messages.
    #[must_use]
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Every stderr line that is a JSON object (the `json` log format).
#[must_use]
pub fn json_log_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|v| v.is_object()).collect()
}
