//! Reading a server API request: its path's segments, its query, its JSON body (within
//! `API_MAX_BODY_BYTES`), and the JSON responses.

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{HeaderMap, Response, StatusCode};
use percent_encoding::percent_decode_str;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::problem::Problem;
use crate::http::{with_type, Body};

/// The path segments after `prefix`, percent-decoded; `None` for another path, or a segment
/// that does not decode to UTF-8 without control characters.
pub(crate) fn segments(path: &str, prefix: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix(prefix)?;
    rest.split('/')
        .map(|segment| {
            let decoded = percent_decode_str(segment).decode_utf8().ok()?;
            (!decoded.chars().any(char::is_control)).then(|| decoded.into_owned())
        })
        .collect()
}

/// The query's parameters (the last of a repeated one wins).
pub(crate) fn query(query: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// A page size: `limit` if given (1 or more; clamped to `max`), else `default`.
pub(crate) fn limit(
    params: &HashMap<String, String>,
    default: usize,
    max: usize,
) -> Result<usize, Problem> {
    match params.get("limit") {
        None => Ok(default.min(max)),
        Some(raw) => match raw.parse::<usize>() {
            Ok(0) | Err(_) => Err(Problem::invalid("limit must be a whole number from 1")),
            Ok(limit) => Ok(limit.min(max)),
        },
    }
}

/// An offset parameter: `name` if given, else 0.
pub(crate) fn offset(params: &HashMap<String, String>, name: &str) -> Result<u64, Problem> {
    params.get(name).map_or(Ok(0), |raw| {
        raw.parse()
            .map_err(|_| Problem::invalid(format!("{name} must be a whole number")))
    })
}

/// The body, read to its end unless it is longer than `max` bytes.
pub(crate) async fn body(
    body: Incoming,
    headers: &HeaderMap,
    max: usize,
) -> Result<Bytes, Problem> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max as u64) {
        return Err(Problem::too_large(max));
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(Problem::too_large(max)),
        Err(_) => Err(Problem::invalid("the body could not be read")),
    }
}

/// The body as the JSON object `T`; an empty body is `{}` when `T` allows it.
pub(crate) fn json<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, Problem> {
    if body.is_empty() {
        return serde_json::from_slice(b"{}")
            .map_err(|_| Problem::bad_json("a JSON object body is required"));
    }
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(Problem::unsupported_media_type());
    }
    serde_json::from_slice(body).map_err(|err| Problem::bad_json(json_error(&err)))
}

/// For an optional body field: absent is `None`, but an explicit `null` is refused like any
/// value of the wrong type (`#[serde(default, deserialize_with = "present")]`), as the
/// OpenAPI document says.
pub(crate) fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// What was wrong with a body, for its sender: serde names the field and the type it expected
/// (and may quote the value sent, which only goes back to whoever sent it: problems are never
/// logged).
fn json_error(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match err.classify() {
        Category::Data => {
            let message = err.to_string();
            let message = message.split(" at line").next().unwrap_or("");
            format!("a field is wrong: {message}")
        }
        Category::Syntax | Category::Eof | Category::Io => {
            format!("not JSON (line {}, column {})", err.line(), err.column())
        }
    }
}

/// A JSON response.
pub(crate) fn reply(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("a response always serializes");
    with_type(status, body, "application/json")
}

/// A JSON response from bytes already encoded (a remembered idempotent response), marked as
/// replayed.
pub(crate) fn replayed(status: StatusCode, body: String) -> Response<Body> {
    let mut response = with_type(status, body, "application/json");
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_decoded_and_checked() {
        assert_eq!(
            segments("/api/v1/users/auth0%7C42/disconnect", "/api/v1/"),
            Some(vec!["users".into(), "auth0|42".into(), "disconnect".into()])
        );
        assert_eq!(segments("/other", "/api/v1/"), None);
        assert_eq!(segments("/api/v1/users/%FF", "/api/v1/"), None);
        assert_eq!(segments("/api/v1/users/a%0Ab", "/api/v1/"), None);
    }

    #[test]
    fn limits_are_clamped_and_checked() {
        let params = |limit: &str| query(Some(&format!("limit={limit}")));
        assert_eq!(limit(&query(None), 100, 50).unwrap(), 50);
        assert_eq!(limit(&params("7"), 100, 50).unwrap(), 7);
        assert_eq!(limit(&params("5000"), 100, 50).unwrap(), 50);
        assert!(limit(&params("0"), 100, 50).is_err());
        assert!(limit(&params("-1"), 100, 50).is_err());
    }
}
