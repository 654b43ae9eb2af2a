//! Where ferry may send a producer's webhooks (README, "Events and webhooks"): a URL a
//! producer registers must not turn ferry into a proxy into its own network. Checked when the
//! endpoint is created, and again at every delivery — the delivery client resolves names
//! through [`GuardedResolver`], so a name that later resolves to a private address (DNS
//! rebinding) is refused too. Redirects are never followed (the client's policy).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::Url;

/// What a webhook URL may point at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    /// `FERRY_WEBHOOKS_ALLOW_INSECURE=1`: plain `http` is allowed, to loopback only, and
    /// loopback addresses are allowed (local receivers in development and tests).
    pub allow_insecure: bool,
    /// Networks allowed although they are private (`FERRY_WEBHOOKS_ALLOWED_NETWORKS`, e.g. a
    /// receiver inside the same VPC).
    pub allowed_networks: Vec<IpNet>,
}

/// Why a webhook URL was refused; the text is what the API answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    #[error("not an absolute URL: {0}")]
    Malformed(String),
    #[error(
        "must be https:// (plain http:// only to loopback, with FERRY_WEBHOOKS_ALLOW_INSECURE=1)"
    )]
    Scheme,
    #[error("must not carry a user name or password")]
    Credentials,
    #[error(
        "{host} resolves to {address}, a {range} address; such addresses are refused unless allow-listed (FERRY_WEBHOOKS_ALLOWED_NETWORKS)"
    )]
    Forbidden {
        host: String,
        address: IpAddr,
        range: &'static str,
    },
    #[error("{0} does not resolve")]
    Unresolvable(String),
}

impl UrlPolicy {
    /// Checks a URL's form: absolute, `https` (or `http` to a loopback host when insecure
    /// webhooks are allowed), no credentials. Resolution is [`UrlPolicy::check`]'s.
    pub fn parse(&self, url: &str) -> Result<Url, UrlRefused> {
        let parsed = Url::parse(url).map_err(|e| UrlRefused::Malformed(e.to_string()))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(UrlRefused::Credentials);
        }
        let host = parsed.host_str().unwrap_or_default();
        match parsed.scheme() {
            "https" if !host.is_empty() => Ok(parsed),
            "http" if self.allow_insecure && is_loopback_host(host) => Ok(parsed),
            _ => Err(UrlRefused::Scheme),
        }
    }

    /// [`UrlPolicy::parse`], then resolves the host and refuses the URL if any address it
    /// resolves to is forbidden.
    pub async fn check(&self, url: &str) -> Result<Url, UrlRefused> {
        let parsed = self.parse(url)?;
        let host = parsed.host_str().unwrap_or_default().to_owned();
        let port = parsed.port_or_known_default().unwrap_or(443);
        let addresses: Vec<SocketAddr> = match host_ip(&host) {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|_| UrlRefused::Unresolvable(host.clone()))?
                .collect(),
        };
        if addresses.is_empty() {
            return Err(UrlRefused::Unresolvable(host));
        }
        for address in addresses {
            self.allows(&host, address.ip())?;
        }
        Ok(parsed)
    }

    /// Whether ferry may connect to `address` (named `host` in messages).
    pub fn allows(&self, host: &str, address: IpAddr) -> Result<(), UrlRefused> {
        let address = canonical(address);
        let Some(range) = forbidden_range(address) else {
            return Ok(());
        };
        if self.allowed_networks.iter().any(|n| n.contains(&address))
            || (self.allow_insecure && range == "loopback")
        {
            return Ok(());
        }
        Err(UrlRefused::Forbidden {
            host: host.to_owned(),
            address,
            range,
        })
    }
}

/// An IP literal host (`[::1]` included), if the host is one.
pub fn host_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host_ip(host).is_some_and(|ip| canonical(ip).is_loopback())
}

/// An IPv4 address written as IPv6 (`::ffff:10.0.0.1`) is judged as the IPv4 address.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The kind of non-public range `address` is in, or `None` for a public address. The
/// well-known cloud metadata addresses are named on their own: Azure's is in public space.
fn forbidden_range(address: IpAddr) -> Option<&'static str> {
    const AZURE_WIRESERVER: Ipv4Addr = Ipv4Addr::new(168, 63, 129, 16);
    const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    match address {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4 == Ipv4Addr::new(169, 254, 169, 254)
                || v4 == AZURE_WIRESERVER
                || v4 == Ipv4Addr::new(100, 100, 100, 200)
            {
                Some("cloud metadata")
            } else if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() || (a == 100 && (64..128).contains(&b)) {
                // RFC 1918 and carrier-grade NAT (RFC 6598).
                Some("private")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_unspecified()
                || a == 0
                || v4.is_broadcast()
                || v4.is_multicast()
                || a >= 240
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || (a == 198 && (18..20).contains(&b))
            {
                Some("reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6 == AWS_METADATA_V6 {
                Some("cloud metadata")
            } else if v6.is_loopback() {
                Some("loopback")
            } else if first & 0xfe00 == 0xfc00 {
                Some("private")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("reserved")
            } else if let Some(v4) = nat64_embedded(v6) {
                // 64:ff9b::/96 reaches the embedded IPv4 address through a NAT64 gateway.
                forbidden_range(IpAddr::V4(v4))
            } else {
                None
            }
        }
    }
}

fn nat64_embedded(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0]).then(|| {
        let [.., a, b, c, d] = v6.octets();
        Ipv4Addr::new(a, b, c, d)
    })
}

/// The delivery client's DNS resolver: the system's, with every forbidden address removed. A
/// name left with no address fails the attempt (retried: DNS may change back).
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub policy: Arc<UrlPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let mut allowed = Vec::new();
            let mut refused = None;
            for address in resolved {
                match policy.allows(&host, address.ip()) {
                    Ok(()) => allowed.push(address),
                    Err(e) => refused = Some(e),
                }
            }
            if allowed.is_empty() {
                let reason = refused.unwrap_or(UrlRefused::Unresolvable(host));
                return Err(Box::new(reason) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> UrlPolicy {
        UrlPolicy::default()
    }

    fn refused(policy: &UrlPolicy, address: &str) -> Option<&'static str> {
        let ip: IpAddr = address.parse().expect("test address");
        match policy.allows("h", ip) {
            Ok(()) => None,
            Err(UrlRefused::Forbidden { range, .. }) => Some(range),
            Err(other) => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn private_link_local_loopback_and_metadata_addresses_are_refused() {
        let p = strict();
        for (address, range) in [
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "private"),
            ("127.0.0.1", "loopback"),
            ("127.9.9.9", "loopback"),
            ("169.254.1.1", "link-local"),
            ("169.254.169.254", "cloud metadata"),
            ("168.63.129.16", "cloud metadata"),
            ("100.100.100.200", "cloud metadata"),
            ("0.0.0.0", "reserved"),
            ("255.255.255.255", "reserved"),
            ("224.0.0.1", "reserved"),
            ("::1", "loopback"),
            ("::", "reserved"),
            ("fe80::1", "link-local"),
            ("fc00::1", "private"),
            ("fd00:ec2::254", "cloud metadata"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:169.254.169.254", "cloud metadata"),
            ("64:ff9b::a00:1", "private"),
        ] {
            assert_eq!(refused(&p, address), Some(range), "{address}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "172.32.0.1", "2606:4700::1111"] {
            assert_eq!(refused(&p, public), None, "{public}");
        }
    }

    #[test]
    fn allow_lists_and_insecure_mode_open_only_what_they_name() {
        let allowing = UrlPolicy {
            allow_insecure: false,
            allowed_networks: vec!["10.0.0.0/8".parse().expect("net")],
        };
        assert_eq!(refused(&allowing, "10.9.9.9"), None);
        assert_eq!(refused(&allowing, "192.168.0.1"), Some("private"));
        let insecure = UrlPolicy {
            allow_insecure: true,
            allowed_networks: Vec::new(),
        };
        assert_eq!(refused(&insecure, "127.0.0.1"), None);
        assert_eq!(
            refused(&insecure, "169.254.169.254"),
            Some("cloud metadata")
        );
        assert_eq!(refused(&insecure, "10.0.0.1"), Some("private"));
    }

    #[test]
    fn only_https_or_insecure_loopback_http_urls_parse() {
        let p = strict();
        assert!(p.parse("https://hooks.example.com/ferry").is_ok());
        assert_eq!(
            p.parse("http://hooks.example.com/"),
            Err(UrlRefused::Scheme)
        );
        assert_eq!(p.parse("http://127.0.0.1:9/"), Err(UrlRefused::Scheme));
        assert_eq!(p.parse("ftp://example.com/"), Err(UrlRefused::Scheme));
        assert_eq!(
            p.parse("https://user:pw@example.com/"),
            Err(UrlRefused::Credentials)
        );
        assert!(matches!(
            p.parse("/relative"),
            Err(UrlRefused::Malformed(_))
        ));
        let insecure = UrlPolicy {
            allow_insecure: true,
            allowed_networks: Vec::new(),
        };
        assert!(insecure.parse("http://127.0.0.1:9/").is_ok());
        assert!(insecure.parse("http://localhost:9/").is_ok());
        assert!(insecure.parse("http://[::1]:9/").is_ok());
        assert_eq!(
            insecure.parse("http://hooks.example.com/"),
            Err(UrlRefused::Scheme)
        );
    }

    #[tokio::test]
    async fn names_are_judged_by_what_they_resolve_to() {
        let p = strict();
        assert!(matches!(
            p.check("https://localhost:8443/").await,
            Err(UrlRefused::Forbidden {
                range: "loopback",
                ..
            })
        ));
        assert!(matches!(
            p.check("https://169.254.169.254/latest/meta-data").await,
            Err(UrlRefused::Forbidden {
                range: "cloud metadata",
                ..
            })
        ));
        assert!(matches!(
            p.check("https://[::ffff:192.168.0.1]/").await,
            Err(UrlRefused::Forbidden {
                range: "private",
                ..
            })
        ));
    }
}
