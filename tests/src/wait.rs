//! Waiting without sleeping as synchronisation: poll a condition until a deadline.

use std::future::Future;
use std::time::{Duration, SystemTime};

/// How long a condition may take before a test fails. Generous: CI has two
/// cores shared by every process of every test running at the same time.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a condition is polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `check` until it returns true; panics naming `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for_some(what, timeout, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await;
}

/// Polls `check` until it returns `Some`; panics naming `what` after `timeout`.
pub async fn wait_for_some<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Runs `fut`, failing the test naming `what` if it takes longer than `timeout`.
pub async fn within<T>(what: &str, timeout: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(timeout, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {timeout:?}: {what}"),
    }
}

/// Returns once the wall clock is past `instant` (for expiry tests: the
/// broker compares against the wall clock, not against anything we can poll).
pub async fn wait_until_clock_passes(instant: SystemTime) {
    let budget = instant.duration_since(SystemTime::now()).unwrap_or_default() + DEFAULT_TIMEOUT;
    wait_for("the wall clock to pass the deadline", budget, || async move { SystemTime::now() > instant }).await;
}

/// Asserts that a condition becomes true within [`DEFAULT_TIMEOUT`], polling
/// it every [`POLL_INTERVAL`]. The condition may contain `.await`.
///
/// ```ignore
/// assert_eventually!(broker.audit_events().await.has_kind("stream.denied"));
/// assert_eventually!(upstream.accepted() == 2, "upstream saw {} connections", upstream.accepted());
/// ```
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr $(,)?) => {
        $crate::assert_eventually!($cond, "{}", stringify!($cond))
    };
    ($cond:expr, $($arg:tt)+) => {{
        let deadline = $crate::__private::tokio::time::Instant::now() + $crate::DEFAULT_TIMEOUT;
        loop {
            if $cond {
                break;
            }
            if $crate::__private::tokio::time::Instant::now() >= deadline {
                panic!("not true within {:?}: {}", $crate::DEFAULT_TIMEOUT, format!($($arg)+));
            }
            $crate::__private::tokio::time::sleep($crate::wait::POLL_INTERVAL).await;
        }
    }};
}
