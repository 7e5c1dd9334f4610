//! Framework rejections as problems. axum's extractors (query strings, paths, bodies)
//! answer a malformed request with a plain-text 4xx; this layer turns every error
//! response that is not already JSON into an `application/problem+json` with a stable
//! code, so clients (and the OpenAPI document) see one error shape everywhere.
use axum::{
    body::to_bytes,
    extract::Request,
    http::{header, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::error::ApiError;

/// Plain-text rejections are short; anything longer is cut.
const MAX_DETAIL: usize = 4096;

pub async fn as_problems(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/problem+json") || ct.starts_with("application/json"));
    if is_json {
        return response;
    }
    let code = match status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        s if s.is_server_error() => "internal",
        _ => "invalid_request",
    };
    let detail = match to_bytes(response.into_body(), MAX_DETAIL).await {
        Ok(body) if !body.is_empty() && !status.is_server_error() => String::from_utf8_lossy(&body).into_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    ApiError::new(status, code, detail).into_response()
}
