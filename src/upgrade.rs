//! The WebSocket handshake's checks that fastwebsockets leaves to us, and who may upgrade:
//! method, Origin, version and the key's form, each refused with a plain HTTP status before
//! any 101; and which protocol the socket will speak (the subprotocol).

use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderValue, ORIGIN, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION,
};
use hyper::{Method, Request, Response, StatusCode, Version};

use crate::config::{invalid, Config, ConfigError};
use crate::http::{plain, Body};
use crate::protocol::{self, V2_SUBPROTOCOL};

/// Who may upgrade, and whose forwarding headers are believed.
#[derive(Clone, Debug)]
pub(crate) struct UpgradePolicy {
    /// `ALLOWED_ORIGINS`: compared whole, ignoring ASCII case; `*` admits any.
    origins: Vec<String>,
    allow_missing_origin: bool,
}

impl UpgradePolicy {
    pub(crate) fn from_env(env: &Config) -> Result<UpgradePolicy, ConfigError> {
        let origins = match &env.allowed_origins {
            None => return Err(ConfigError::Missing("ALLOWED_ORIGINS".into())),
            Some(list) if list.is_empty() => {
                return Err(invalid("ALLOWED_ORIGINS", "no origin listed"))
            }
            Some(list) => list.0.clone(),
        };
        Ok(UpgradePolicy {
            origins,
            allow_missing_origin: env.allow_missing_origin,
        })
    }

    /// Origins are compared whole and ignoring ASCII case (scheme and host are
    /// case-insensitive); `*` admits any Origin. A missing Origin is admitted only with
    /// `ALLOW_MISSING_ORIGIN=true`.
    fn origin_allowed(&self, origin: Option<&HeaderValue>) -> bool {
        let Some(origin) = origin else {
            return self.allow_missing_origin;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        self.origins
            .iter()
            .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin))
    }
}

/// A refused handshake, answered with plain HTTP.
pub(crate) struct HandshakeRefusal {
    pub status: StatusCode,
    pub reason: &'static str,
}

impl HandshakeRefusal {
    pub(crate) fn into_response(self) -> Response<Body> {
        let mut response = plain(self.status, self.reason);
        if self.status == StatusCode::UPGRADE_REQUIRED {
            response
                .headers_mut()
                .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        response
    }
}

/// The checks fastwebsockets leaves to us: method, Origin, version, and the key's form.
pub(crate) fn check_upgrade(
    policy: &UpgradePolicy,
    request: &Request<Incoming>,
) -> Result<(), HandshakeRefusal> {
    let refuse = |status, reason| Err(HandshakeRefusal { status, reason });
    if request.version() != Version::HTTP_11 {
        // RFC 6455 4.1: the handshake is an HTTP/1.1 request. An HTTP/1.0 one answered with
        // 101 would leave the connection in a state neither side agrees on.
        return refuse(
            StatusCode::BAD_REQUEST,
            "websocket upgrade needs HTTP/1.1\n",
        );
    }
    if request.method() != Method::GET {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "websocket upgrade must be a GET\n",
        );
    }
    if !policy.origin_allowed(request.headers().get(ORIGIN)) {
        return refuse(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    if request
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            "websocket version 13 required\n",
        );
    }
    if !request
        .headers()
        .get(SEC_WEBSOCKET_KEY)
        .is_some_and(is_valid_key)
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "missing or invalid Sec-WebSocket-Key\n",
        );
    }
    Ok(())
}

/// The protocol a client asked for: v2 when `palisade.v2` is among the subprotocols it offers
/// (in any of its `Sec-WebSocket-Protocol` headers), else GarinChat's. Any other subprotocol
/// is not ours and is ignored, as before v2.
pub(crate) fn offered_version(headers: &HeaderMap) -> protocol::Version {
    let offered = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim() == V2_SUBPROTOCOL);
    if offered {
        protocol::Version::V2
    } else {
        protocol::Version::GarinChat
    }
}

/// Says in a 101 which subprotocol was selected (none for GarinChat's: its clients offer none).
pub(crate) fn select_version<B>(response: &mut Response<B>, version: protocol::Version) {
    if version == protocol::Version::V2 {
        response.headers_mut().insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(V2_SUBPROTOCOL),
        );
    }
}

/// RFC 6455 4.1: the key is 16 random bytes, base64-encoded: 24 characters ending in `==`.
fn is_valid_key(key: &HeaderValue) -> bool {
    let key = key.as_bytes();
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_names, env};

    #[test]
    fn v2_is_chosen_only_when_offered_by_its_exact_name() {
        let offer = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(
                    SEC_WEBSOCKET_PROTOCOL,
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            offered_version(&headers)
        };
        assert_eq!(offer(&[]), protocol::Version::GarinChat);
        assert_eq!(offer(&["chat, palisade.v3"]), protocol::Version::GarinChat);
        assert_eq!(offer(&["Palisade.V2"]), protocol::Version::GarinChat);
        assert_eq!(offer(&["chat , palisade.v2"]), protocol::Version::V2);
        assert_eq!(offer(&["chat", "palisade.v2"]), protocol::Version::V2);
    }

    #[test]
    fn origins_are_required_and_compared_whole() {
        let policy = UpgradePolicy::from_env(&env(&[(
            "ALLOWED_ORIGINS",
            "http://a.example, HTTP://B.example,",
        )]))
        .unwrap();
        let header = |value: &'static str| HeaderValue::from_static(value);
        assert!(policy.origin_allowed(Some(&header("http://a.example"))));
        assert!(policy.origin_allowed(Some(&header("http://b.example"))));
        assert!(!policy.origin_allowed(Some(&header("http://a.example.evil"))));
        assert!(!policy.origin_allowed(None));
        assert_names(
            UpgradePolicy::from_env(&env(&[("ALLOWED_ORIGINS", " , ")])),
            "ALLOWED_ORIGINS",
        );
        let mut no_origins = env(&[]);
        no_origins.allowed_origins = None;
        assert_names(UpgradePolicy::from_env(&no_origins), "ALLOWED_ORIGINS");
    }
}
