//! Client addresses and networks for policy plugins: parsing the session's
//! `client-ip`, CIDR networks from plugin configs, and the network a client
//! belongs to (`/24`, `/64`), which rate limits and greylisting key on.
//! Also the `"5m"`-style durations those configs use.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Why a network or duration from a plugin config was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub value: String,
    pub reason: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not valid ({})", self.value, self.reason)
    }
}

impl std::error::Error for ParseError {}

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
    /// The network of `prefix` bits around `ip` (prefix capped at the
    /// address length).
    pub fn around(ip: IpAddr, prefix: u8) -> Network {
        match ip {
            IpAddr::V4(v4) => Network::v4(v4, prefix.min(32)),
            IpAddr::V6(v6) => Network::V6 {
                addr: u128::from(v6) & mask_v6(prefix.min(128)),
                prefix: prefix.min(128),
            },
        }
    }

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
        // Clients in IPv4-mapped form are matched as IPv4 (see
        // parse_client_ip), so a mapped network must become IPv4 too.
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

/// `192.0.2.0/24`, `2001:db8::/64`: the canonical text, used in kv keys.
impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Network::V4 { addr, prefix } => write!(f, "{}/{prefix}", Ipv4Addr::from(addr)),
            Network::V6 { addr, prefix } => write!(f, "{}/{prefix}", Ipv6Addr::from(addr)),
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
    type Err = ParseError;

    /// `10.0.0.0/8`, `::1/128`, or a bare address (a single host).
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let bad = |reason| ParseError {
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

/// An `ipv4_prefix` / `ipv6_prefix` setting longer than its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixTooLong {
    pub name: &'static str,
    pub value: u8,
    pub max: u8,
}

impl fmt::Display for PrefixTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = {} is longer than an address ({} bits)",
            self.name, self.value, self.max
        )
    }
}

impl std::error::Error for PrefixTooLong {}

/// Checks the `ipv4_prefix` and `ipv6_prefix` settings of plugins that key
/// state on the client's network (see [`Network::around`]).
pub fn check_prefixes(ipv4_prefix: u8, ipv6_prefix: u8) -> Result<(), PrefixTooLong> {
    for (name, value, max) in [
        ("ipv4_prefix", ipv4_prefix, 32),
        ("ipv6_prefix", ipv6_prefix, 128),
    ] {
        if value > max {
            return Err(PrefixTooLong { name, value, max });
        }
    }
    Ok(())
}

/// A list of networks, as a config key holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Networks(Vec<Network>);

impl Networks {
    /// Parses every entry; the first bad one is the error.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Networks, ParseError> {
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

    pub fn iter(&self) -> impl Iterator<Item = &Network> {
        self.0.iter()
    }
}

/// Parses a duration such as `"90s"`, `"5m"`, `"4h"`, `"36d"`, `"1w"` or a
/// sum like `"1h30m"`, into seconds. A unit is required; zero is allowed
/// (the caller decides whether it makes sense).
pub fn parse_duration(value: &str) -> Result<u64, ParseError> {
    let bad = |reason| ParseError {
        value: value.to_string(),
        reason,
    };
    let text = value.trim();
    if text.is_empty() {
        return Err(bad("empty duration"));
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("expected a number, like \"5m\""));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| bad("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 604_800,
            "" => return Err(bad("missing unit (s, m, h, d or w)")),
            _ => return Err(bad("unknown unit (s, m, h, d or w)")),
        };
        rest = &rest[unit_len..];
        total = number
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| bad("duration too long"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ip_forms() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(parse_client_ip("192.0.2.7"), Some(v4));
        assert_eq!(parse_client_ip("::ffff:192.0.2.7"), Some(v4));
        assert_eq!(
            parse_client_ip("[IPv6:2001:db8::1]"),
            "2001:db8::1".parse().ok()
        );
        assert_eq!(parse_client_ip("fe80::1%eth0"), "fe80::1".parse().ok());
        assert_eq!(parse_client_ip("nonsense"), None);
        assert_eq!(parse_client_ip("ipv6é"), None);
    }

    #[test]
    fn networks_around_a_client() {
        let ip = parse_client_ip("192.0.2.77").unwrap();
        assert_eq!(Network::around(ip, 24).to_string(), "192.0.2.0/24");
        assert_eq!(Network::around(ip, 40).to_string(), "192.0.2.77/32");
        let ip6 = parse_client_ip("2001:db8:1:2:3:4:5:6").unwrap();
        assert_eq!(Network::around(ip6, 64).to_string(), "2001:db8:1:2::/64");
        assert!(Network::around(ip6, 64).contains("2001:db8:1:2::9".parse().unwrap()));
        assert!(!Network::around(ip6, 64).contains(ip));
    }

    #[test]
    fn cidr_parsing() {
        let net: Network = "10.1.2.3/8".parse().unwrap();
        assert_eq!(net.to_string(), "10.0.0.0/8");
        assert!(net.contains("10.200.0.1".parse().unwrap()));
        let mapped: Network = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped, net);
        for value in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "x",
            "10.0.0.0/",
            "1.2.3.4/+8",
            "",
        ] {
            let err = value.parse::<Network>().unwrap_err();
            assert_eq!(err.value, value);
        }
    }

    #[test]
    fn network_membership() {
        let net: Network = "192.168.1.77/24".parse().unwrap();
        assert_eq!(
            net,
            Network::V4 {
                addr: 0xc0a8_0100,
                prefix: 24
            }
        );
        assert!(net.contains("192.168.1.1".parse().unwrap()));
        assert!(net.contains("192.168.1.255".parse().unwrap()));
        assert!(!net.contains("192.168.2.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));

        let any: Network = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains("203.0.113.9".parse().unwrap()));
        assert!(!any.contains("2001:db8::1".parse().unwrap()));

        let host: Network = "10.1.2.3".parse().unwrap();
        assert!(host.contains("10.1.2.3".parse().unwrap()));
        assert!(!host.contains("10.1.2.4".parse().unwrap()));

        let v6: Network = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        let all6: Network = "::/0".parse().unwrap();
        assert!(all6.contains("2001:db9::1".parse().unwrap()));
    }

    #[test]
    fn mapped_networks_become_ipv4() {
        let net: Network = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(
            net,
            Network::V4 {
                addr: 0x0a00_0000,
                prefix: 8
            }
        );
    }

    #[test]
    fn client_ip_more_forms() {
        let v4 = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(parse_client_ip("127.0.0.1"), v4);
        assert_eq!(parse_client_ip(" 127.0.0.1\n"), v4);
        assert_eq!(parse_client_ip("::ffff:127.0.0.1"), v4);
        assert_eq!(parse_client_ip("[::ffff:127.0.0.1]"), v4);
        assert_eq!(parse_client_ip("::FFFF:7f00:1"), v4);
        assert_eq!(
            parse_client_ip("::1"),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        // ::1 is not IPv4-compatible 0.0.0.1 for our purposes.
        assert_eq!(
            parse_client_ip("[IPv6:::1]"),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        assert_eq!(
            parse_client_ip("fe80::1%eth0"),
            Some("fe80::1".parse().unwrap())
        );
        assert_eq!(parse_client_ip(""), None);
        assert_eq!(parse_client_ip("localhost"), None);
        assert_eq!(parse_client_ip("127.0.0.1:25"), None);
    }

    #[test]
    fn network_lists() {
        let nets = Networks::parse(&["127.0.0.0/8", "::1"]).unwrap();
        assert!(nets.contains_client("127.9.9.9"));
        assert!(nets.contains_client("::ffff:127.0.0.2"));
        assert!(nets.contains_client("::1"));
        assert!(!nets.contains_client("10.0.0.1"));
        assert!(!nets.contains_client("garbage"));
        assert!(Networks::default().is_empty());
        let err = Networks::parse(&["127.0.0.0/8", "nope"]).unwrap_err();
        assert_eq!(err.to_string(), "\"nope\" is not valid (bad address)");
    }

    #[test]
    fn prefix_lengths() {
        assert_eq!(check_prefixes(24, 64), Ok(()));
        assert_eq!(check_prefixes(32, 128), Ok(()));
        let err = check_prefixes(33, 64).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ipv4_prefix = 33 is longer than an address (32 bits)"
        );
        let err = check_prefixes(24, 129).unwrap_err();
        assert_eq!((err.name, err.value, err.max), ("ipv6_prefix", 129, 128));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(2));
        assert_eq!(parse_duration("5m"), Ok(300));
        assert_eq!(parse_duration("4h"), Ok(14_400));
        assert_eq!(parse_duration("36d"), Ok(3_110_400));
        assert_eq!(parse_duration("1w"), Ok(604_800));
        assert_eq!(parse_duration(" 1h30m "), Ok(5_400));
        assert_eq!(parse_duration("0s"), Ok(0));
        for bad in [
            "",
            "5",
            "m",
            "5x",
            "5 m",
            "-5s",
            "1.5h",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
