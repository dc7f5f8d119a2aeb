//! Who is connecting: the client's IP address, and the key that limits and bans use for it.
//!
//! Forwarding headers are believed only from a peer listed in `TRUSTED_PROXIES`, and only the
//! one header `FORWARDED_HEADER` names (`x-forwarded-for` or `forwarded`): a client may write
//! either header itself, so the other one is never read. The chain is read from the right (the
//! entries our own proxies appended), skipping trusted proxies, and the first address that is
//! not one of them is the client. Addresses are canonical first: an IPv4 proxy seen on a
//! dual-stack listener as `::ffff:a.b.c.d` is `a.b.c.d`. IPv6 clients are keyed by their /64:
//! one host usually owns a whole /64, so per-address limits on IPv6 would be no limits at all.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use hyper::header::{HeaderMap, FORWARDED};

use crate::config::{invalid, Config, ConfigError, TrustedProxies};

/// The key a client is counted, limited and banned under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct IpKey(IpAddr);

impl IpKey {
    pub(crate) fn of(ip: IpAddr) -> IpKey {
        match canonical(ip) {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpKey(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => IpKey(v4),
        }
    }

    /// The key as [`Display`](fmt::Display) writes it: `1.2.3.4` or `2001:db8::/64`.
    pub(crate) fn parse(text: &str) -> Option<IpKey> {
        let ip: IpAddr = text.strip_suffix("/64").unwrap_or(text).parse().ok()?;
        Some(IpKey::of(ip))
    }
}

impl fmt::Display for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`, what a dual-stack socket reports for an
/// IPv4 peer) as the IPv4 address it is.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The forwarding header trusted proxies write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`: what most proxies append to.
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

/// Whose forwarding headers are believed, and which header.
#[derive(Clone, Debug)]
pub(crate) struct ProxyPolicy {
    trusted: TrustedProxies,
    header: ForwardedHeader,
}

impl ProxyPolicy {
    pub(crate) fn from_env(env: &Config) -> Result<ProxyPolicy, ConfigError> {
        let header = match env.forwarded_header.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => ForwardedHeader::XForwardedFor,
            "forwarded" => ForwardedHeader::Forwarded,
            _ => return Err(invalid("FORWARDED_HEADER", "x-forwarded-for or forwarded")),
        };
        Ok(ProxyPolicy {
            trusted: env.trusted_proxies.clone(),
            header,
        })
    }

    /// Whether `peer` is one of the trusted proxies.
    pub(crate) fn is_trusted(&self, peer: IpAddr) -> bool {
        self.trusted.contains(&canonical(peer))
    }

    /// The client's address as far as it can be trusted.
    pub(crate) fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusted.contains(&peer) {
            return peer;
        }
        // Rightmost first: the nearest hop, written by our own proxy.
        let mut client = peer;
        for hop in self.chain(headers).iter().rev() {
            match hop {
                Some(ip) => {
                    client = canonical(*ip);
                    if !self.trusted.contains(&client) {
                        return client;
                    }
                }
                // An entry we cannot read ("unknown", an obfuscated name, garbage): stop at
                // the last address we could trust rather than guess.
                None => return client,
            }
        }
        client
    }

    /// The addresses in the configured header, left to right; `None` for an entry that is not
    /// an IP address.
    fn chain(&self, headers: &HeaderMap) -> Vec<Option<IpAddr>> {
        let values = || {
            let name = match self.header {
                ForwardedHeader::XForwardedFor => "x-forwarded-for",
                ForwardedHeader::Forwarded => FORWARDED.as_str(),
            };
            headers
                .get_all(name)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
        };
        match self.header {
            ForwardedHeader::XForwardedFor => {
                values().map(|entry| parse_node(entry.trim())).collect()
            }
            ForwardedHeader::Forwarded => values()
                .map(|element| {
                    element
                        .split(';')
                        .find_map(|pair| {
                            let (name, value) = pair.trim().split_once('=')?;
                            name.eq_ignore_ascii_case("for")
                                .then(|| parse_node(value.trim().trim_matches('"')))
                        })
                        .flatten()
                })
                .collect(),
        }
    }
}

/// An address with an optional port: `1.2.3.4`, `1.2.3.4:80`, `[::1]`, `[::1]:80`, `::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    node.rsplit_once(':')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_names, env};
    use hyper::header::HeaderValue;

    fn policy(trusted: &str, header: &str) -> ProxyPolicy {
        ProxyPolicy::from_env(&env(&[
            ("TRUSTED_PROXIES", trusted),
            ("FORWARDED_HEADER", header),
        ]))
        .unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn untrusted_peers_are_taken_at_their_word_only_for_themselves() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let spoofed = headers(&[("x-forwarded-for", "1.1.1.1")]);
        let none = ProxyPolicy::from_env(&env(&[])).unwrap();
        assert_eq!(none.client_ip(peer, &spoofed), peer);
        assert_eq!(
            policy("10.0.0.0/8", "x-forwarded-for").client_ip(peer, &spoofed),
            peer
        );
    }

    #[test]
    fn trusted_proxies_reveal_the_client() {
        let xff = policy("10.0.0.0/8, 192.168.1.1/32", "x-forwarded-for");
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let case = |pairs: &[(&'static str, &'static str)]| {
            xff.client_ip(peer, &headers(pairs)).to_string()
        };
        // The client may write anything on the left; we read from the right.
        assert_eq!(
            case(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 192.168.1.1")]),
            "198.51.100.7"
        );
        assert_eq!(
            case(&[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "198.51.100.7")
            ]),
            "198.51.100.7"
        );
        assert_eq!(
            case(&[("x-forwarded-for", "198.51.100.7:5555")]),
            "198.51.100.7"
        );
        // Unreadable entries stop the walk at the last trusted hop.
        assert_eq!(
            case(&[("x-forwarded-for", "198.51.100.7, unknown")]),
            "10.0.0.2"
        );
        assert_eq!(
            case(&[("x-forwarded-for", "garbage, 192.168.1.1")]),
            "192.168.1.1"
        );
        // No header: the proxy itself.
        assert_eq!(case(&[]), "10.0.0.2");
        let forwarded = policy("10.0.0.0/8", "forwarded");
        let case = |pairs: &[(&'static str, &'static str)]| {
            forwarded.client_ip(peer, &headers(pairs)).to_string()
        };
        assert_eq!(
            case(&[("forwarded", "for=198.51.100.8;proto=https")]),
            "198.51.100.8"
        );
        assert_eq!(
            case(&[("forwarded", "for=\"[2001:db8::1]:4711\"")]),
            "2001:db8::1"
        );
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        // The proxy writes Forwarded; the client wrote its own X-Forwarded-For.
        let both = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=198.51.100.8"),
        ]);
        assert_eq!(
            policy("10.0.0.0/8", "forwarded")
                .client_ip(peer, &both)
                .to_string(),
            "198.51.100.8"
        );
        assert_eq!(
            policy("10.0.0.0/8", "x-forwarded-for")
                .client_ip(peer, &headers(&[("forwarded", "for=6.6.6.6")]))
                .to_string(),
            "10.0.0.2",
            "a Forwarded header is not read when the proxy writes X-Forwarded-For"
        );
        assert_names(
            ProxyPolicy::from_env(&env(&[("FORWARDED_HEADER", "x-real-ip")])),
            "FORWARDED_HEADER",
        );
    }

    #[test]
    fn mapped_ipv4_proxies_are_trusted_as_ipv4() {
        let proxies = policy("10.0.0.2", "x-forwarded-for");
        let mapped: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        assert!(proxies.is_trusted(mapped));
        assert_eq!(
            proxies
                .client_ip(
                    mapped,
                    &headers(&[("x-forwarded-for", "::ffff:198.51.100.7")])
                )
                .to_string(),
            "198.51.100.7"
        );
    }

    #[test]
    fn ipv6_is_keyed_by_its_64() {
        let a = IpKey::of("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = IpKey::of("2001:db8:1:2:bbbb::2".parse().unwrap());
        let c = IpKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(IpKey::parse(&a.to_string()), Some(a));
        let mapped = IpKey::of("::ffff:198.51.100.7".parse().unwrap());
        assert_eq!(mapped, IpKey::of("198.51.100.7".parse().unwrap()));
    }
}
