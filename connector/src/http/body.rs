//! The workload's response body on its way to the caller: passed on frame by
//! frame as it arrives (a server-sent-event token stream is never held
//! back), counted, read for the `usage` object, and cut when the caller is
//! revoked mid-response.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::Tunnel;
use super::openai::{SseUsage, Usage, usage_of_json};

/// How often a streaming response checks for a revocation while it waits for the workload.
const REVOCATION_CHECK: Duration = Duration::from_millis(100);
/// The most of a JSON response kept to read its `usage`.
const MAX_JSON_USAGE_BODY: usize = 4 * 1024 * 1024;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How the response body ended.
#[derive(Debug, Default)]
pub(crate) struct BodyEnd {
    pub(crate) bytes: u64,
    pub(crate) usage: Option<Usage>,
    /// Cut by the connector (revocation) before the workload finished.
    pub(crate) cut: bool,
    /// The workload's side failed, or the caller went away first.
    pub(crate) incomplete: bool,
}

/// What kind of response it is, for reading `usage`.
#[derive(Debug)]
enum UsageReader {
    Sse(SseUsage),
    Json(Vec<u8>),
    Skip,
}

type OnEnd = Box<dyn FnOnce(BodyEnd) + Send>;

pub(crate) struct MeteredBody {
    inner: Incoming,
    reader: UsageReader,
    end: BodyEnd,
    /// Checked for a revocation while the response streams.
    tunnel: Arc<Tunnel>,
    tick: tokio::time::Interval,
    on_end: Option<OnEnd>,
}

impl MeteredBody {
    pub(crate) fn new(inner: Incoming, content_type: &str, tunnel: Arc<Tunnel>, on_end: OnEnd) -> Self {
        let reader = if content_type.starts_with("text/event-stream") {
            UsageReader::Sse(SseUsage::default())
        } else if content_type.starts_with("application/json") {
            UsageReader::Json(Vec::new())
        } else {
            UsageReader::Skip
        };
        let mut tick = tokio::time::interval(REVOCATION_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { inner, reader, end: BodyEnd::default(), tunnel, tick, on_end: Some(on_end) }
    }

    fn observe(&mut self, data: &Bytes) {
        self.end.bytes += data.len() as u64;
        match &mut self.reader {
            UsageReader::Sse(sse) => sse.feed(data),
            UsageReader::Json(buf) if buf.len() + data.len() <= MAX_JSON_USAGE_BODY => buf.extend_from_slice(data),
            UsageReader::Json(_) => self.reader = UsageReader::Skip,
            UsageReader::Skip => {}
        }
    }

    fn finish(&mut self, incomplete: bool) {
        let Some(on_end) = self.on_end.take() else { return };
        self.end.incomplete = incomplete;
        self.end.usage = match &self.reader {
            UsageReader::Sse(sse) => sse.usage(),
            UsageReader::Json(buf) => usage_of_json(buf),
            UsageReader::Skip => None,
        };
        on_end(std::mem::take(&mut self.end));
    }

    fn revoked(&mut self, cx: &mut Context<'_>) -> bool {
        while self.tick.poll_tick(cx).is_ready() {
            if self.tunnel.policy.is_revoked(&self.tunnel.caller.peer) {
                return true;
            }
        }
        false
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.revoked(cx) {
            self.tunnel.cut.cut();
            self.end.cut = true;
            self.finish(true);
            return Poll::Ready(Some(Err("the caller was revoked mid-response".into())));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.finish(false);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.finish(true);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    self.observe(&data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        // Normally finished already; otherwise the caller went away before the end.
        let complete = self.inner.is_end_stream();
        self.finish(!complete);
    }
}
