//! Who is connecting: the client's IP address, and the key that limits and bans use for it.
//!
//! Forwarding headers are believed only from a peer listed in `TRUSTED_PROXIES`; anyone else
//! could write any address there. The chain is read from the right (the entries our own
//! proxies appended), skipping trusted proxies, and the first address that is not one of them
//! is the client. IPv6 clients are keyed by their /64: one host usually owns a whole /64, so
//! per-address limits on IPv6 would be no limits at all.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use hyper::header::{HeaderMap, FORWARDED};

use crate::config::TrustedProxies;

/// The header most proxies append to.
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The key a client is counted, limited and banned under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct IpKey(IpAddr);

impl IpKey {
    pub(crate) fn of(ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(_) => IpKey(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    IpKey(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
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

/// The client's address as far as we can trust it.
pub(crate) fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let chain = forwarded_chain(headers);
    // Rightmost first: the nearest hop, written by our own proxy.
    let mut client = peer;
    for hop in chain.iter().rev() {
        match hop {
            Some(ip) => {
                client = *ip;
                if !trusted.contains(ip) {
                    return client;
                }
            }
            // An entry we cannot read ("unknown", an obfuscated name, garbage): stop at the
            // last address we could trust rather than guess.
            None => return client,
        }
    }
    client
}

/// The addresses in `X-Forwarded-For` (preferred, as most proxies write it) or `Forwarded`,
/// left to right; `None` for an entry that is not an IP address.
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let xff: Vec<Option<IpAddr>> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|entry| parse_node(entry.trim()))
        .collect();
    if !xff.is_empty() {
        return xff;
    }
    headers
        .get_all(FORWARDED)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                name.eq_ignore_ascii_case("for")
                    .then(|| parse_node(value.trim().trim_matches('"')))
            })
        })
        .collect()
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
    use hyper::header::HeaderValue;

    fn trusted(list: &[&str]) -> TrustedProxies {
        TrustedProxies(list.iter().map(|net| net.parse().unwrap()).collect())
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
        assert_eq!(client_ip(peer, &spoofed, &trusted(&[])), peer);
        assert_eq!(client_ip(peer, &spoofed, &trusted(&["10.0.0.0/8"])), peer);
    }

    #[test]
    fn trusted_proxies_reveal_the_client() {
        let proxies = trusted(&["10.0.0.0/8", "192.168.1.1/32"]);
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let case = |pairs: &[(&'static str, &'static str)]| {
            client_ip(peer, &headers(pairs), &proxies).to_string()
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
            case(&[("forwarded", "for=198.51.100.8;proto=https")]),
            "198.51.100.8"
        );
        assert_eq!(
            case(&[("forwarded", "for=\"[2001:db8::1]:4711\"")]),
            "2001:db8::1"
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
    }

    #[test]
    fn ipv6_is_keyed_by_its_64() {
        let a = IpKey::of("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = IpKey::of("2001:db8:1:2:bbbb::2".parse().unwrap());
        let c = IpKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        let mapped = IpKey::of("::ffff:198.51.100.7".parse().unwrap());
        assert_eq!(mapped, IpKey::of("198.51.100.7".parse().unwrap()));
    }
}
