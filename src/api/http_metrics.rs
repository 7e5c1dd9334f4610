//! Counts and times every HTTP request by route template (never the raw path, so ids do
//! not explode the label set), method and status.
use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request},
    http::{header, Method},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::telemetry::metrics;

pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    // Only standard methods become labels: a client must not be able to mint series.
    let method = match *request.method() {
        Method::GET | Method::HEAD | Method::POST | Method::PUT | Method::PATCH | Method::DELETE | Method::OPTIONS => {
            request.method().as_str().to_string()
        }
        _ => "other".to_string(),
    };
    let response = next.run(request).await;
    metrics::http_request(&route, &method, response.status().as_u16(), started);
    response
}

/// `GET /metrics`: the Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")))]
pub async fn scrape() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics::render())
}
