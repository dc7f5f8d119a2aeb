//! Errors of the server API as RFC 9457 problem details: `application/problem+json` with a
//! `type` naming the problem (`urn:palisade:problem:{slug}`, listed in `docs/API.md`), its
//! `title`, the `status` and a `detail` for this occurrence. Every refusal is a 4xx; a 5xx
//! means only that the cluster's state is out of reach (503) or a bug.

use std::time::Duration;

use hyper::header::{HeaderValue, ALLOW};
use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::http::{with_retry_after, with_type, Body};

const PROBLEM_JSON: &str = "application/problem+json";

/// One problem, ready to be answered.
#[derive(Debug)]
pub(crate) struct Problem {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
    retry_after: Option<Duration>,
    allow: Option<&'static str>,
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

impl Problem {
    fn new(status: StatusCode, slug: &'static str, title: &'static str, detail: String) -> Self {
        Problem {
            status,
            slug,
            title,
            detail,
            retry_after: None,
            allow: None,
        }
    }

    /// The request breaks a rule (a field, a name, a parameter).
    pub(crate) fn invalid(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "The request is invalid",
            detail.into(),
        )
    }

    /// The body is not the JSON object the operation takes.
    pub(crate) fn bad_json(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-json",
            "The body is not valid JSON for this operation",
            detail.into(),
        )
    }

    pub(crate) fn unauthorized(detail: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "A valid credential is required",
            detail.into(),
        )
    }

    pub(crate) fn forbidden(detail: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "The credential does not grant this",
            detail.into(),
        )
    }

    pub(crate) fn not_found(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such resource",
            detail.into(),
        )
    }

    pub(crate) fn method_not_allowed(allow: &'static str) -> Self {
        let mut problem = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "The method is not allowed here",
            format!("allowed: {allow}"),
        );
        problem.allow = Some(allow);
        problem
    }

    /// An idempotency key whose first request is still being served.
    pub(crate) fn key_in_use() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "idempotency-key-in-use",
            "A request with this Idempotency-Key is in progress",
            "retry once it has been answered".into(),
        )
    }

    /// An idempotency key sent before with another request.
    pub(crate) fn key_reused() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "This Idempotency-Key was used for another request",
            "a key names one request: the same path and body".into(),
        )
    }

    pub(crate) fn too_large(max: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "The body is too large",
            format!("at most {max} bytes (API_MAX_BODY_BYTES)"),
        )
    }

    pub(crate) fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "The body must be application/json",
            "send Content-Type: application/json".into(),
        )
    }

    /// Too many of something (requests, revocations).
    pub(crate) fn too_many(detail: impl Into<String>, retry_after: Duration) -> Self {
        let mut problem = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
            detail.into(),
        );
        problem.retry_after = Some(retry_after);
        problem
    }

    /// The cluster's shared state (Redis) is out of reach.
    pub(crate) fn unavailable(detail: impl Into<String>) -> Self {
        let mut problem = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster-unavailable",
            "The cluster's shared state is out of reach",
            detail.into(),
        );
        problem.retry_after = Some(Duration::from_secs(1));
        problem
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    pub(crate) fn into_response(self) -> Response<Body> {
        let wire = Wire {
            kind: format!("urn:palisade:problem:{}", self.slug),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
        };
        let body = serde_json::to_vec(&wire).expect("a problem always serializes");
        let mut response = with_type(self.status, body, PROBLEM_JSON);
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        match self.retry_after {
            Some(wait) => with_retry_after(response, wait),
            None => response,
        }
    }
}
