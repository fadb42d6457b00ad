//! `GET /healthz`.

use axum::Router;
use axum::routing::get;

use crate::Broker;

pub(crate) fn routes() -> Router<Broker> {
    Router::new().route("/healthz", get(healthz))
}

async fn healthz() -> &'static str {
    "ok"
}
