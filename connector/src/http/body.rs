//! The workload's response body on its way to the caller: passed on frame by
//! frame as it arrives (a server-sent-event token stream is never held
//! back), counted, read for the `usage` object, and cut when the caller is
//! revoked or its token quota is exceeded mid-response.
//!
//! Neither cut polls: the body waits on the revocation and token-count
//! watch channels next to the workload's next frame.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::Tunnel;
use super::limits::Admission;
use super::openai::{SseUsage, Usage, usage_of_json};

/// The most of a JSON response kept to read its `usage`.
const MAX_JSON_USAGE_BODY: usize = 4 * 1024 * 1024;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the connector cut a response before the workload finished it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cut {
    /// The caller's session or identity was revoked.
    Revoked,
    /// The caller's token quota was exceeded, by this response or another.
    QuotaExceeded,
}

impl Cut {
    /// The audit reason.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::Revoked => "revoked_mid_response",
            Self::QuotaExceeded => "quota_exceeded_mid_response",
        }
    }
}

/// How the response body ended.
#[derive(Debug, Default)]
pub(crate) struct BodyEnd {
    pub(crate) bytes: u64,
    pub(crate) usage: Option<Usage>,
    /// Cut by the connector before the workload finished.
    pub(crate) cut: Option<Cut>,
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
type CutWatch = Pin<Box<dyn Future<Output = Cut> + Send>>;

pub(crate) struct MeteredBody {
    inner: Incoming,
    reader: UsageReader,
    end: BodyEnd,
    tunnel: Arc<Tunnel>,
    /// The limits this response draws on; its tokens are counted as they are reported.
    admission: Option<Admission>,
    /// Resolves when the response must be cut; `None` once it fired.
    cut_watch: Option<CutWatch>,
    /// The cut was reported to hyper: the body is over.
    cut_sent: bool,
    on_end: Option<OnEnd>,
}

/// Resolves when the caller is revoked or a quota the response draws on is exceeded.
fn cut_watch(tunnel: Arc<Tunnel>, admission: Option<&Admission>) -> CutWatch {
    let quota = admission.and_then(Admission::quota_watch);
    Box::pin(async move {
        let revoked = tunnel.policy.revoked(&tunnel.caller.peer);
        match quota {
            Some(quota) => tokio::select! {
                biased;
                () = revoked => Cut::Revoked,
                () = quota.exceeded() => Cut::QuotaExceeded,
            },
            None => {
                revoked.await;
                Cut::Revoked
            }
        }
    })
}

impl MeteredBody {
    pub(crate) fn new(
        inner: Incoming,
        content_type: &str,
        tunnel: Arc<Tunnel>,
        admission: Option<Admission>,
        on_end: OnEnd,
    ) -> Self {
        let reader = if content_type.starts_with("text/event-stream") {
            UsageReader::Sse(SseUsage::default())
        } else if content_type.starts_with("application/json") {
            UsageReader::Json(Vec::new())
        } else {
            UsageReader::Skip
        };
        let cut_watch = Some(cut_watch(tunnel.clone(), admission.as_ref()));
        let end = BodyEnd::default();
        Self { inner, reader, end, tunnel, admission, cut_watch, cut_sent: false, on_end: Some(on_end) }
    }

    fn observe(&mut self, data: &Bytes) {
        self.end.bytes += data.len() as u64;
        match &mut self.reader {
            UsageReader::Sse(sse) => {
                sse.feed(data);
                if let (Some(usage), Some(admission)) = (sse.usage(), self.admission.as_mut()) {
                    admission.progress(usage.total());
                }
            }
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
        if let Some(admission) = self.admission.take() {
            admission.finish(self.end.usage.map_or(0, Usage::total));
        }
        // The tunnel may have been cut (and this body dropped) before the body saw the revocation.
        if self.end.cut.is_none() && self.tunnel.cut.is_cut() {
            self.end.cut = Some(Cut::Revoked);
        }
        on_end(std::mem::take(&mut self.end));
    }

    /// `Some` once the response must be cut. A quota exceeded by the
    /// stream's own last `usage`, after `[DONE]`, lets it end: no token follows.
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Option<Cut> {
        let cut = match self.cut_watch.as_mut()?.as_mut().poll(cx) {
            Poll::Ready(cut) => cut,
            Poll::Pending => return None,
        };
        self.cut_watch = None;
        let finished = matches!(&self.reader, UsageReader::Sse(sse) if sse.done());
        if cut == Cut::QuotaExceeded && finished {
            return None;
        }
        if cut == Cut::Revoked {
            self.tunnel.cut.cut();
        }
        self.end.cut = Some(cut);
        Some(cut)
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.cut_sent {
            return Poll::Ready(None);
        }
        if let Some(cut) = self.poll_cut(cx) {
            self.cut_sent = true;
            self.finish(true);
            return Poll::Ready(Some(Err(format!("the connector cut the response: {}", cut.reason()).into())));
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
