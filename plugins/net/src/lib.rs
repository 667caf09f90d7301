//! Client networks for sluice's bundled plugins: CIDR networks as the
//! operator writes them (`10.0.0.0/8`, `::1/128`, a bare address), lists of
//! them, and the client address as the host reports it (IPv4-mapped IPv6
//! becomes IPv4). Pure code, tested natively; a library, not a plugin.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Why a network was refused; the plugin prefixes the config key.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{value:?} is not a network ({reason})")]
pub struct NetworkError {
    pub value: String,
    pub reason: &'static str,
}

/// Parses the session's client address. Accepts brackets, an `IPv6:` tag
/// and a zone id, and treats IPv4-mapped IPv6 (`::ffff:127.0.0.1`, as a
/// dual-stack listener reports IPv4 clients) as the IPv4 address it is.
pub fn parse_client_ip(text: &str) -> Option<IpAddr> {
    let mut text = text.trim();
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        text = inner;
    }
    if text.len() >= 5 && text.is_char_boundary(5) && text[..5].eq_ignore_ascii_case("ipv6:") {
        text = &text[5..];
    }
    if let Some((addr, _zone)) = text.split_once('%') {
        text = addr;
    }
    Some(unmap(IpAddr::from_str(text).ok()?))
}

/// An IPv4-mapped IPv6 address as IPv4; anything else unchanged.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// A CIDR network, host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    V4 { addr: u32, prefix: u8 },
    V6 { addr: u128, prefix: u8 },
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (*self, unmap(ip)) {
            (Network::V4 { addr, prefix }, IpAddr::V4(ip)) => {
                u32::from(ip) & mask_v4(prefix) == addr
            }
            (Network::V6 { addr, prefix }, IpAddr::V6(ip)) => {
                u128::from(ip) & mask_v6(prefix) == addr
            }
            _ => false,
        }
    }

    fn v4(ip: Ipv4Addr, prefix: u8) -> Network {
        Network::V4 {
            addr: u32::from(ip) & mask_v4(prefix),
            prefix,
        }
    }

    fn v6(ip: Ipv6Addr, prefix: u8) -> Network {
        // Clients in IPv4-mapped form are matched as IPv4, so a mapped
        // network must become IPv4 too.
        if prefix >= 96 {
            if let Some(v4) = ip.to_ipv4_mapped() {
                return Network::v4(v4, prefix - 96);
            }
        }
        Network::V6 {
            addr: u128::from(ip) & mask_v6(prefix),
            prefix,
        }
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Network {
    type Err = NetworkError;

    /// `10.0.0.0/8`, `::1/128`, or a bare address (a single host).
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let bad = |reason| NetworkError {
            value: value.to_string(),
            reason,
        };
        let (addr, prefix) = match value.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (value, None),
        };
        let ip = IpAddr::from_str(addr).map_err(|_| bad("bad address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                // u8::from_str would take "+8"; only plain digits are a prefix.
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad("bad prefix length"));
                }
                let p: u8 = p.parse().map_err(|_| bad("bad prefix length"))?;
                if p > max {
                    return Err(bad("prefix length too long"));
                }
                p
            }
        };
        Ok(match ip {
            IpAddr::V4(v4) => Network::v4(v4, prefix),
            IpAddr::V6(v6) => Network::v6(v6, prefix),
        })
    }
}

/// A list of networks, as a config key holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Networks(Vec<Network>);

impl Networks {
    /// Parses every entry; the first bad one is the error.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Networks, NetworkError> {
        values
            .iter()
            .map(|value| value.as_ref().parse())
            .collect::<Result<_, _>>()
            .map(Networks)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// Whether the client address (as the host reports it) is in the list;
    /// an address that does not parse is in none.
    pub fn contains_client(&self, client_ip: &str) -> bool {
        parse_client_ip(client_ip).is_some_and(|ip| self.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership() {
        let net: Network = "192.168.1.77/24".parse().unwrap();
        assert_eq!(
            net,
            Network::V4 {
                addr: 0xc0a8_0100,
                prefix: 24
            }
        );
        assert!(net.contains("192.168.1.1".parse().unwrap()));
        assert!(!net.contains("192.168.2.1".parse().unwrap()));
        assert!(net.contains("::ffff:192.168.1.9".parse().unwrap()));
        let any: Network = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains("8.8.8.8".parse().unwrap()));
        assert!(!any.contains("::1".parse().unwrap()));
        let v6: Network = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db9::5".parse().unwrap()));
        let mapped: Network = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(
            mapped,
            Network::V4 {
                addr: 0x0a00_0000,
                prefix: 8
            }
        );
    }

    #[test]
    fn bad_networks_are_named() {
        for (value, reason) in [
            ("10.0.0.0/33", "prefix length too long"),
            ("10.0.0.0/+8", "bad prefix length"),
            ("10.0.0.0/", "bad prefix length"),
            ("ten", "bad address"),
            ("::1/129", "prefix length too long"),
        ] {
            assert_eq!(
                value.parse::<Network>(),
                Err(NetworkError {
                    value: value.into(),
                    reason
                })
            );
        }
        let err = Networks::parse(&["127.0.0.0/8", "nope"]).unwrap_err();
        assert_eq!(err.value, "nope");
        assert_eq!(err.to_string(), "\"nope\" is not a network (bad address)");
    }

    #[test]
    fn client_ip_forms() {
        let v4: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(parse_client_ip("127.0.0.2"), Some(v4));
        assert_eq!(parse_client_ip("[127.0.0.2]"), Some(v4));
        assert_eq!(parse_client_ip("::ffff:127.0.0.2"), Some(v4));
        assert_eq!(
            parse_client_ip("[IPv6:fe80::1%eth0]"),
            Some("fe80::1".parse().unwrap())
        );
        assert_eq!(parse_client_ip("localhost"), None);
        assert_eq!(parse_client_ip("ä€€€€"), None);
        let nets = Networks::parse(&["127.0.0.0/8", "::1"]).unwrap();
        assert!(nets.contains_client("127.9.9.9"));
        assert!(nets.contains_client("::1"));
        assert!(!nets.contains_client("10.0.0.1"));
        assert!(!nets.contains_client("garbage"));
        assert!(Networks::default().is_empty());
    }
}
