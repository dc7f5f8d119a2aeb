//! The types of settings that are more than a number or a string: how each is read from its
//! variable (with an error that names it), and how it shows in `check-config`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A string that never shows itself in `Debug` or serialized output.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// A comma-separated list: entries trimmed, empty entries ignored (GarinChat compared them raw,
/// so `"a, b"` never matched `b` and a trailing comma admitted a missing Origin).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct CommaList(pub Vec<String>);

impl CommaList {
    /// Splits `raw` at commas.
    pub fn parse(raw: &str) -> Self {
        Self(
            raw.split(',')
                .map(str::trim)
                .filter(|entry| !entry.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }
    /// Whether no entry is listed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The entries.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

impl<'de> Deserialize<'de> for CommaList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::parse(&String::deserialize(d)?))
    }
}

/// `JWT_ALGORITHMS`: the only algorithms a token may use, pinned by the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlgorithmList(pub Vec<Algorithm>);

impl AlgorithmList {
    /// The family of the first algorithm.
    pub fn family(&self) -> Option<AlgorithmFamily> {
        self.0.first().map(|alg| alg.family())
    }
}

impl Default for AlgorithmList {
    fn default() -> Self {
        Self(vec![Algorithm::HS256])
    }
}

impl<'de> Deserialize<'de> for AlgorithmList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        let algorithms = CommaList::parse(&raw)
            .iter()
            .map(|name| {
                Algorithm::from_str(name).map_err(|_| {
                    serde::de::Error::custom(format!(
                        "unknown JWT algorithm {name:?} in JWT_ALGORITHMS"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(algorithms))
    }
}

impl Serialize for AlgorithmList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let names: Vec<String> = self.0.iter().map(|alg| format!("{alg:?}")).collect();
        s.serialize_str(&names.join(","))
    }
}

/// `LOG_FORMAT`: human-readable lines, or one JSON object per line for log collectors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(serde::de::Error::custom(format!(
                "LOG_FORMAT must be text or json, not {other:?}"
            ))),
        }
    }
}

/// `DIRECT_MESSAGES`: who may send a direct message (protocol v2) to whom.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirectMessages {
    /// Nobody: every `direct` frame is refused.
    #[default]
    Off,
    /// Only users who share a room with the sender.
    SharedRoom,
    /// Anyone, to any user with a session on some node.
    All,
}

impl<'de> Deserialize<'de> for DirectMessages {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.trim() {
            "off" => Ok(DirectMessages::Off),
            "shared-room" => Ok(DirectMessages::SharedRoom),
            "all" => Ok(DirectMessages::All),
            other => Err(serde::de::Error::custom(format!(
                "DIRECT_MESSAGES must be off, shared-room or all, not {other:?}"
            ))),
        }
    }
}

/// One identity provider whose tokens are accepted, with where its keys are.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuer {
    /// The exact `iss` value of its tokens.
    pub issuer: String,
    /// Where its key set is (https, or http to loopback).
    pub jwks_url: String,
    /// Accepted `aud` values; when empty, `aud` is not checked.
    #[serde(default, deserialize_with = "one_or_many")]
    pub audience: Vec<String>,
    /// Accepted `azp` values (the client a token was issued to); when empty, not checked.
    #[serde(default, deserialize_with = "one_or_many")]
    pub azp: Vec<String>,
    /// Put before this issuer's user ids, so that ids of different issuers never collide.
    #[serde(default)]
    pub user_id_prefix: String,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

pub(super) fn trusted_issuers<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<TrustedIssuer>>, D::Error> {
    let raw = String::deserialize(d)?;
    serde_json::from_str(&raw).map(Some).map_err(|err| {
        serde::de::Error::custom(format!(
            "TRUSTED_ISSUERS must be a JSON array of {{\"issuer\", \"jwks_url\", \"audience\"}}: {err}"
        ))
    })
}

/// `TRUSTED_PROXIES`: addresses and networks of reverse proxies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    /// Whether `ip` is one of the proxies.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }
    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for TrustedProxies {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let nets: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        s.serialize_str(&nets.join(","))
    }
}

pub(super) fn trusted_proxies<'de, D: Deserializer<'de>>(d: D) -> Result<TrustedProxies, D::Error> {
    let raw = String::deserialize(d)?;
    CommaList::parse(&raw)
        .iter()
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "TRUSTED_PROXIES entry {entry:?} is not an IP address or CIDR network"
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(TrustedProxies)
}

/// `BIND_ADDR`, with an error that names it (envy's would not).
pub(super) fn bind_addr<'de, D: Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
    let raw = String::deserialize(d)?;
    raw.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "BIND_ADDR (or METRICS_BIND_ADDR) is not an IP address: {raw:?}"
        ))
    })
}
