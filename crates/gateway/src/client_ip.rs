//! Who the client is, address-wise, for per-address limits.
//!
//! The client address is the TCP peer, unless that peer is a proxy listed in
//! `trusted_proxies`: then it is the rightmost `X-Forwarded-For` entry that is not itself a
//! trusted proxy (each proxy appends the address it saw, so entries to the right of the first
//! untrusted one were written by proxies we trust, and everything to its left is whatever the
//! client claimed). A client talking to the gateway directly cannot move its limit by sending
//! an `X-Forwarded-For` of its own: from an untrusted peer the header is not read at all.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

use crate::headers::X_FORWARDED_FOR;

/// An address block (`10.0.0.0/8`, `::1/128`; a bare address is a block of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (address, prefix_len) = match text.split_once('/') {
            Some((address, len)) => (address, Some(len)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("trusted_proxies: `{text}` is not an address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix_len {
            None => max,
            Some(len) => len
                .parse::<u8>()
                .ok()
                .filter(|len| *len <= max)
                .ok_or_else(|| format!("trusted_proxies: `{text}` has an invalid prefix length"))?,
        };
        Ok(Self {
            network: network.to_canonical(),
            prefix_len,
        })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

/// Parses every entry of `trusted_proxies`, naming a bad one.
pub fn parse_all(entries: &[String]) -> anyhow::Result<Vec<Cidr>> {
    entries
        .iter()
        .map(|entry| Cidr::parse(entry).map_err(anyhow::Error::msg))
        .collect()
}

/// The client's address (see the module documentation).
pub fn client_address(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted: &[Cidr],
) -> Option<IpAddr> {
    let peer = peer?.ip().to_canonical();
    let is_trusted = |address: IpAddr| trusted.iter().any(|cidr| cidr.contains(address));
    if !is_trusted(peer) {
        return Some(peer);
    }
    // Every X-Forwarded-For field line, in order, as one list.
    let chain: Vec<IpAddr> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .map(|entry| {
            entry
                .parse::<IpAddr>()
                .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
                .map(|ip| ip.to_canonical())
        })
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    // A garbled chain tells nothing reliable: limit the proxy itself rather than guess.
    Some(
        chain
            .into_iter()
            .rev()
            .find(|address| !is_trusted(*address))
            .unwrap_or(peer),
    )
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().expect("ip"), 4000))
    }

    #[test]
    fn cidrs_match_their_blocks() {
        let block = Cidr::parse("10.1.0.0/16").expect("cidr");
        assert!(block.contains("10.1.200.3".parse().expect("ip")));
        assert!(!block.contains("10.2.0.1".parse().expect("ip")));
        assert!(Cidr::parse("::1")
            .expect("one")
            .contains("::1".parse().expect("ip")));
        assert!(Cidr::parse("127.0.0.1/32")
            .expect("v4")
            .contains("::ffff:127.0.0.1".parse().expect("mapped")));
        assert!(Cidr::parse("0.0.0.0/0")
            .expect("all")
            .contains("8.8.8.8".parse().expect("ip")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_static("1.1.1.1, 203.0.113.7, 10.0.0.2"),
        );
        let none: Vec<Cidr> = Vec::new();
        let proxies = parse_all(&["10.0.0.0/8".to_owned()]).expect("cidrs");
        // Untrusted peer: the header is the client's own claim.
        assert_eq!(
            client_address(peer("198.51.100.1"), &headers, &proxies),
            Some("198.51.100.1".parse().expect("ip"))
        );
        assert_eq!(
            client_address(peer("10.0.0.1"), &headers, &none),
            Some("10.0.0.1".parse().expect("ip"))
        );
        // Trusted peer: the rightmost untrusted entry; what the client prepended is ignored.
        assert_eq!(
            client_address(peer("10.0.0.1"), &headers, &proxies),
            Some("203.0.113.7".parse().expect("ip"))
        );
        // A trusted peer with no header is itself the client.
        assert_eq!(
            client_address(peer("10.0.0.1"), &HeaderMap::new(), &proxies),
            Some("10.0.0.1".parse().expect("ip"))
        );
        headers.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_static("garbage, 10.0.0.2"),
        );
        assert_eq!(
            client_address(peer("10.0.0.1"), &headers, &proxies),
            Some("10.0.0.1".parse().expect("ip"))
        );
    }
}
