//! What one client may hold of the HTTPS listener.
//!
//! - A request with a body (its headers read, then the handler, which reads
//!   the body) must be answered within [`REQUEST_TIMEOUT`]; a client that
//!   trickles its body gets 408 and the connection is closed, so a slow body
//!   cannot hold a connection slot (slowloris). Headers have their own,
//!   shorter timeout in hyper (`HEADER_TIMEOUT` in the listener), which also
//!   closes an idle keep-alive HTTP/1.1 connection.
//! - One source address may hold at most [`PER_ADDRESS`] connections at once
//!   (trusted proxies, which carry many people's connections, are exempt),
//!   so a single host cannot take every slot of the listener.
//! - An HTTP/2 connection is asked to finish (GOAWAY) after [`MAX_AGE`]; a
//!   browser opens a new one, a client that idles on it loses its slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

/// The longest a request may take from its headers to its answer.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Connections one source address may hold at once.
pub(crate) const PER_ADDRESS: usize = 256;

/// How long a connection is served before it is asked to finish.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(600);

/// Answers 408 for a request with a body that is not answered within
/// [`REQUEST_TIMEOUT`]. `GET` and `HEAD` carry no body a handler reads, and
/// some take long on the server's side (a whole audit export), so they are
/// left alone.
pub(crate) async fn request_timeout(request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::info!(%method, %path, "HTTPS request timed out");
            let message = format!("the request was not completed within {} s", REQUEST_TIMEOUT.as_secs());
            let mut response = super::api_error(StatusCode::REQUEST_TIMEOUT, "request_timeout", message);
            response.headers_mut().insert(axum::http::header::CONNECTION, "close".parse().expect("a header value"));
            response
        }
    }
}

/// Open connections per source address.
#[derive(Clone, Default)]
pub(crate) struct PerAddress {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    exempt: Arc<Vec<IpAddr>>,
}

/// A held connection slot of one address; released on drop.
pub(crate) struct AddressSlot {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: Option<IpAddr>,
}

impl PerAddress {
    /// A counter that does not limit `exempt` addresses (trusted proxies).
    pub(crate) fn new(exempt: Vec<IpAddr>) -> Self {
        Self { open: Arc::default(), exempt: Arc::new(exempt) }
    }

    /// A slot for a new connection from `ip`, or `None` if it holds [`PER_ADDRESS`] already.
    pub(crate) fn try_take(&self, ip: IpAddr) -> Option<AddressSlot> {
        if self.exempt.contains(&ip) {
            return Some(AddressSlot { open: self.open.clone(), ip: None });
        }
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= PER_ADDRESS {
            return None;
        }
        *count += 1;
        Some(AddressSlot { open: self.open.clone(), ip: Some(ip) })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_share_and_gets_slots_back() {
        let limits = PerAddress::new(vec!["10.0.0.1".parse().unwrap()]);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let held: Vec<_> = (0..PER_ADDRESS).map(|_| limits.try_take(a).expect("within the share")).collect();
        assert!(limits.try_take(a).is_none(), "one more than the share");
        assert!(limits.try_take(b).is_some(), "another address is not affected");
        drop(held);
        assert!(limits.try_take(a).is_some(), "slots come back when connections close");
        let proxy: Vec<_> = (0..PER_ADDRESS + 10).map(|_| limits.try_take("10.0.0.1".parse().unwrap())).collect();
        assert!(proxy.iter().all(Option::is_some), "a trusted proxy is exempt");
        assert!(limits.open.lock().unwrap().len() <= 1, "nothing is kept for the exempt proxy");
    }
}
