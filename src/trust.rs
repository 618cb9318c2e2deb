//! Which peers may speak for the client: the front proxies whose
//! `X-Forwarded-*` headers outrider lets stand (`OUTRIDER_TRUSTED_PROXIES`).
//! Everyone else's are overwritten with what outrider saw, because an app
//! framework that reads the leftmost `X-Forwarded-For` or `-Proto` would
//! otherwise believe whatever a client wrote there.

use std::{fmt, net::IpAddr};

/// A list of networks (`10.0.0.0/8`, `2001:db8::/32`, a bare address).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Net>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl TrustedProxies {
    /// Parses a comma-separated list; empty trusts nobody.
    ///
    /// # Errors
    /// An entry that is not an address or `address/prefix`, or a prefix
    /// longer than the address.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (addr, prefix) = match entry.split_once('/') {
                Some((addr, prefix)) => (addr, Some(prefix)),
                None => (entry, None),
            };
            let addr: IpAddr = addr.parse().map_err(|_| format!("`{entry}` is not an IP address or a CIDR such as 10.0.0.0/8"))?;
            let bits = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => bits,
                Some(p) => {
                    p.parse::<u8>().ok().filter(|p| *p <= bits).ok_or_else(|| format!("`{entry}`: the prefix must be 0 to {bits}"))?
                }
            };
            nets.push(Net { addr: addr.to_canonical(), prefix });
        }
        Ok(Self(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(ip))
    }

    /// The client behind a trusted `peer`, from its `X-Forwarded-For`: the
    /// rightmost address no trusted proxy owns (each trusted hop appended
    /// the one before it, so that is the last address anyone trusted saw).
    /// `None` when every entry is trusted or unreadable.
    pub fn client_from<'a>(&self, forwarded_for: impl DoubleEndedIterator<Item = &'a str>) -> Option<IpAddr> {
        forwarded_for
            .rev()
            .flat_map(|value| value.rsplit(','))
            .map(|entry| entry.trim().parse::<IpAddr>())
            .map_while(Result::ok)
            .find(|ip| !self.contains(*ip))
    }
}

impl Net {
    fn contains(self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}/{}", net.addr, net.prefix)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn networks_and_addresses() {
        let t = TrustedProxies::parse(" 10.0.0.0/8, 192.168.1.5 ,2001:db8::/32").expect("valid");
        assert!(t.contains(ip("10.200.3.4")));
        assert!(t.contains(ip("::ffff:10.1.1.1")), "an IPv4-mapped peer is its IPv4 address");
        assert!(t.contains(ip("192.168.1.5")));
        assert!(!t.contains(ip("192.168.1.6")));
        assert!(t.contains(ip("2001:db8:1::1")));
        assert!(!t.contains(ip("2001:db9::1")));
        assert!(TrustedProxies::parse("0.0.0.0/0").expect("valid").contains(ip("8.8.8.8")));
        assert_eq!(t.to_string(), "10.0.0.0/8,192.168.1.5/32,2001:db8::/32");
        assert_eq!(TrustedProxies::parse(&t.to_string()), Ok(t));
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/", "::/129", "10.0.0.0/-1"] {
            assert!(TrustedProxies::parse(bad).is_err(), "{bad}");
        }
        assert!(TrustedProxies::parse("").expect("empty is fine").is_empty());
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop() {
        let t = TrustedProxies::parse("10.0.0.0/8").expect("valid");
        let xff = ["203.0.113.9, 198.51.100.1", "10.0.0.2"];
        assert_eq!(t.client_from(xff.into_iter()), Some(ip("198.51.100.1")));
        assert_eq!(t.client_from(["10.0.0.1, 10.0.0.2"].into_iter()), None);
        assert_eq!(t.client_from(["garbage, 10.0.0.2"].into_iter()), None);
    }
}
