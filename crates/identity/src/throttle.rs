//! Brute-force protection for password checks, and finding the client address it counts by.
//!
//! Failures are counted per account *and* per client address, in the database (so every
//! instance sees the same counts): an attacker spraying one password over many accounts is
//! caught by the address count, a distributed attack on one account by the account count.
//! Once a key has [`THRESHOLD`] failures within [`WINDOW_MS`], further attempts are refused
//! with 429 until `2^n` seconds (n = failures in the window, capped at 15 minutes) after the
//! last failure; refused attempts are not checked, so they cannot guess. A success clears the
//! account's count but not the address's: otherwise an attacker owning one account could reset
//! their address count between guesses at others.
//!
//! The check and the count are separate statements, so a burst of parallel attempts can get a
//! few guesses past the threshold before the lock shows; the growing delay is what bounds
//! guessing over time, and it applies to every attempt after that.
//!
//! The client address is the TCP peer, unless the peer is a trusted proxy (the gateway): then
//! it is the rightmost `X-Forwarded-For` entry, the one the gateway appended. Entries further
//! left come from the client and are ignored, so a forged header cannot pick a fresh address.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::HeaderMap;
use bazaar_kit::storage::now_ms;
use ipnet::IpNet;

use crate::repository::{RepoError, Repository};

/// Failures in the window before attempts are refused.
pub const THRESHOLD: i64 = 5;
/// The counting window: 15 minutes.
pub const WINDOW_MS: i64 = 15 * 60 * 1000;
/// The longest delay imposed.
pub const MAX_DELAY_SECS: u64 = 15 * 60;

/// The address a request comes from, per the rule above.
pub fn client_address(
    peer: Option<&ConnectInfo<SocketAddr>>,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> String {
    let Some(ConnectInfo(peer)) = peer else {
        // In-process calls (tests through `oneshot`) have no peer.
        return "unknown".to_owned();
    };
    let peer_ip = peer.ip();
    if trusted.iter().any(|net| net.contains(&peer_ip)) {
        // Only the last header line counts (the one the proxy wrote or appended to); an
        // unreadable one falls back to the peer rather than to an earlier, client-made line.
        let rightmost = headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').map(str::trim).find(|v| !v.is_empty()));
        if let Some(ip) = rightmost.and_then(|v| v.parse::<IpAddr>().ok()) {
            return ip.to_string();
        }
    }
    peer_ip.to_string()
}

/// Parses the configured trusted proxy networks; a bare address means just that host.
pub fn parse_networks(entries: &[String]) -> anyhow::Result<Vec<IpNet>> {
    entries
        .iter()
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| anyhow::anyhow!("trusted_proxies: `{entry}` is not an IP network"))
        })
        .collect()
}

/// The throttle keys of an attempt.
pub fn keys(email: &str, address: &str) -> [String; 2] {
    [format!("account:{email}"), format!("address:{address}")]
}

/// The delay after `failures` failures.
pub fn delay_secs(failures: i64) -> u64 {
    let exponent = u32::try_from(failures.clamp(0, 20)).unwrap_or(20);
    2u64.pow(exponent).min(MAX_DELAY_SECS)
}

/// `Some(seconds to wait)` when any of `keys` is locked out now.
pub async fn locked(repository: &Repository, keys: &[String]) -> Result<Option<u64>, RepoError> {
    let now = now_ms();
    let mut wait = 0u64;
    for key in keys {
        let (failures, last) = repository.failures_since(key, now - WINDOW_MS).await?;
        if failures >= THRESHOLD {
            let until = last + i64::try_from(delay_secs(failures) * 1000).unwrap_or(i64::MAX);
            if until > now {
                let secs = u64::try_from((until - now + 999) / 1000)
                    .unwrap_or(1)
                    .max(1);
                wait = wait.max(secs);
            }
        }
    }
    Ok((wait > 0).then_some(wait))
}

/// Counts a failure against every key.
pub async fn record_failure(repository: &Repository, keys: &[String]) -> Result<(), RepoError> {
    let now = now_ms();
    for key in keys {
        repository.record_failure(key, now).await?;
    }
    Ok(())
}

/// After a success: clears the account's count (see the module docs for why not the
/// address's).
pub async fn record_success(repository: &Repository, email: &str) -> Result<(), RepoError> {
    repository.clear_failures(&format!("account:{email}")).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn rightmost_forwarded_entry_from_trusted_peers_only() {
        let trusted = parse_networks(&["127.0.0.1/32".into()]).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 10.0.0.9"),
        );
        let local = ConnectInfo("127.0.0.1:5000".parse::<SocketAddr>().unwrap());
        let remote = ConnectInfo("192.0.2.1:5000".parse::<SocketAddr>().unwrap());
        assert_eq!(client_address(Some(&local), &headers, &trusted), "10.0.0.9");
        assert_eq!(
            client_address(Some(&remote), &headers, &trusted),
            "192.0.2.1"
        );
        assert_eq!(
            client_address(Some(&local), &HeaderMap::new(), &trusted),
            "127.0.0.1"
        );
    }

    #[test]
    fn delay_doubles_and_caps() {
        assert_eq!(delay_secs(5), 32);
        assert_eq!(delay_secs(6), 64);
        assert_eq!(delay_secs(30), MAX_DELAY_SECS);
    }
}
