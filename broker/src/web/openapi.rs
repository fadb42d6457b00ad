//! `GET /api/openapi.yaml`: the OpenAPI document of every HTTPS route
//! (`broker/openapi.yaml`, kept equal to the router by
//! `tests/tests/e2e/openapi/`).

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::Broker;

/// The document, as the broker serves it.
pub const DOCUMENT: &str = include_str!("../../openapi.yaml");

pub(crate) fn routes() -> Router<Broker> {
    Router::new().route("/api/openapi.yaml", get(document))
}

async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], DOCUMENT).into_response()
}
