//! Refuses downloads from addresses inside the cluster or the machine: loopback, private,
//! link-local (cloud metadata lives there), and the other special ranges.
//!
//! The check runs on the addresses a name resolves to, inside the HTTP client's resolver, so it
//! holds for every redirect hop and cannot be dodged by a hostname that points inward.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

use crate::error::RunnerError;

/// Which addresses code may be fetched from.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    /// Allow every address, special or not (for trusted local setups only).
    pub allow_all: bool,
    /// Special ranges that are nevertheless allowed (e.g. an internal mirror).
    pub allowed: Vec<IpNet>,
}

impl AddressPolicy {
    /// Returns why `ip` is refused, or `None` when it may be contacted.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        if self.allow_all || self.allowed.iter().any(|net| net.contains(&ip)) {
            return None;
        }
        special_range(ip)
    }

    /// Checks every resolved address; all must be allowed, as the client may use any of them.
    pub fn check_all(&self, host: &str, addrs: &[SocketAddr]) -> Result<(), RunnerError> {
        if addrs.is_empty() {
            return Err(RunnerError::Resolve { host: host.into(), message: "no addresses".into() });
        }
        for addr in addrs {
            if let Some(range) = self.refusal(addr.ip()) {
                return Err(RunnerError::BlockedAddress {
                    host: host.into(),
                    ip: addr.ip(),
                    range,
                });
            }
        }
        Ok(())
    }
}

/// Names the special-purpose range `ip` falls in, if any.
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        [0, ..] => "this-network (0.0.0.0/8)",
        [10, ..] => "private (10.0.0.0/8)",
        [100, b, ..] if (64..128).contains(&b) => "shared CGNAT (100.64.0.0/10)",
        [127, ..] => "loopback (127.0.0.0/8)",
        [169, 254, ..] => "link-local / cloud metadata (169.254.0.0/16)",
        [172, b, ..] if (16..32).contains(&b) => "private (172.16.0.0/12)",
        [192, 0, 0, _] => "IETF protocol assignments (192.0.0.0/24)",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "documentation",
        [192, 168, ..] => "private (192.168.0.0/16)",
        [198, b, ..] if b == 18 || b == 19 => "benchmarking (198.18.0.0/15)",
        [a, ..] if a >= 224 => "multicast or reserved (224.0.0.0/3)",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    // Addresses that embed an IPv4 address are judged by it.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return special_v4(v4);
    }
    let seg = ip.segments();
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] {
        let v4 =
            Ipv4Addr::new((seg[6] >> 8) as u8, seg[6] as u8, (seg[7] >> 8) as u8, seg[7] as u8);
        return special_v4(v4);
    }
    if seg[0] == 0x2002 {
        let v4 =
            Ipv4Addr::new((seg[1] >> 8) as u8, seg[1] as u8, (seg[2] >> 8) as u8, seg[2] as u8);
        return special_v4(v4);
    }
    Some(match seg {
        _ if ip.is_unspecified() => "unspecified (::)",
        _ if ip.is_loopback() => "loopback (::1)",
        [0, 0, 0, 0, 0, 0, _, _] => "IPv4-compatible (::/96)",
        [a, ..] if a & 0xfe00 == 0xfc00 => "unique local (fc00::/7)",
        [a, ..] if a & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        [a, ..] if a & 0xffc0 == 0xfec0 => "site-local (fec0::/10)",
        [a, ..] if a & 0xff00 == 0xff00 => "multicast (ff00::/8)",
        [0x2001, 0xdb8, ..] => "documentation (2001:db8::/32)",
        [0x100, 0, 0, 0, ..] => "discard (100::/64)",
        _ => return None,
    })
}

/// A DNS resolver for reqwest that refuses names resolving to refused addresses.
pub struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        Self { policy }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs = resolve_host(&host, 0).await?;
            policy.check_all(&host, &addrs)?;
            let iter: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(iter)
        })
    }
}

/// Resolves `host` with the system resolver.
pub async fn resolve_host(host: &str, port: u16) -> Result<Vec<SocketAddr>, RunnerError> {
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| RunnerError::Resolve { host: host.into(), message: e.to_string() })?;
    Ok(addrs.collect())
}

/// Checks a URL whose host is an IP literal, which reqwest connects to without resolving.
pub fn check_literal_host(policy: &AddressPolicy, url: &url::Url) -> Result<(), RunnerError> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    policy.check_all(&ip.to_string(), &[SocketAddr::new(ip, 0)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str) -> bool {
        AddressPolicy::default().refusal(s.parse().unwrap()).is_some()
    }

    #[test]
    fn inward_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "ff02::1",
        ] {
            assert!(refused(ip), "{ip} should be refused");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in ["1.1.1.1", "140.82.112.3", "172.32.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(!refused(ip), "{ip} should be allowed");
        }
    }

    #[test]
    fn configured_ranges_and_allow_all_open_the_door() {
        let policy =
            AddressPolicy { allow_all: false, allowed: vec!["127.0.0.0/8".parse().unwrap()] };
        assert!(policy.refusal("127.0.0.1".parse().unwrap()).is_none());
        assert!(policy.refusal("10.0.0.1".parse().unwrap()).is_some());
        let open = AddressPolicy { allow_all: true, allowed: vec![] };
        assert!(open.refusal("169.254.169.254".parse().unwrap()).is_none());
    }

    #[test]
    fn literal_ip_urls_are_checked() {
        let policy = AddressPolicy::default();
        let url = url::Url::parse("http://[::1]:8080/x.zip").unwrap();
        assert!(matches!(
            check_literal_host(&policy, &url),
            Err(RunnerError::BlockedAddress { .. })
        ));
        let url = url::Url::parse("http://169.254.169.254/latest").unwrap();
        assert!(check_literal_host(&policy, &url).is_err());
        let url = url::Url::parse("https://example.com/x.zip").unwrap();
        assert!(check_literal_host(&policy, &url).is_ok());
    }
}
