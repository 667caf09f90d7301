//! What the per-client caps count by (connections per client, AUTH
//! lockout per client): an IPv4 address, or the IPv6 network of
//! `[server] ipv6_prefix` bits around the address (a /64 by default).
//!
//! One subscriber or server usually holds a whole /64, so counting per
//! IPv6 address would give one host 2^64 fresh places under every cap.
//! IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, what a dual-stack
//! listener reports for an IPv4 client) count as the IPv4 address they are,
//! so a client is the same whichever listener it comes through.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// A client as the per-client caps see it; equal keys share one cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// The address with the bits beyond the prefix cleared.
    network: IpAddr,
    /// 32 for IPv4; the configured prefix for IPv6.
    prefix: u8,
}

impl ClientKey {
    /// The key of `ip`, IPv6 addresses grouped by their first
    /// `ipv6_prefix` bits (clamped to 0..=128).
    pub fn new(ip: IpAddr, ipv6_prefix: u8) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey {
                network: IpAddr::V4(v4),
                prefix: 32,
            },
            IpAddr::V6(v6) => {
                let prefix = ipv6_prefix.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                ClientKey {
                    network: IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)),
                    prefix,
                }
            }
        }
    }
}

/// `192.0.2.1`, `2001:db8:1:2::/64`, or the bare IPv6 address with prefix
/// 128: what logs and shared-state keys show.
impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.network {
            IpAddr::V6(_) if self.prefix < 128 => write!(f, "{}/{}", self.network, self.prefix),
            _ => write!(f, "{}", self.network),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: &str, prefix: u8) -> ClientKey {
        ClientKey::new(ip.parse().unwrap(), prefix)
    }

    #[test]
    fn ipv6_addresses_in_one_network_share_a_key() {
        let a = key("2001:db8:1:2::1", 64);
        assert_eq!(a, key("2001:db8:1:2:ffff:ffff:ffff:ffff", 64));
        assert_ne!(a, key("2001:db8:1:3::1", 64));
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        // A /48 groups what /64 keeps apart.
        assert_eq!(key("2001:db8:1:2::1", 48), key("2001:db8:1:3::1", 48));
        assert_ne!(key("2001:db8:1:2::1", 48), key("2001:db8:2:2::1", 48));
    }

    #[test]
    fn prefix_128_is_one_key_per_address() {
        let a = key("2001:db8::1", 128);
        assert_ne!(a, key("2001:db8::2", 128));
        assert_eq!(a.to_string(), "2001:db8::1");
        assert_eq!(key("::1", 128).to_string(), "::1");
    }

    #[test]
    fn ipv4_is_per_address_whatever_the_prefix() {
        assert_ne!(key("192.0.2.1", 64), key("192.0.2.2", 64));
        assert_eq!(key("192.0.2.1", 64).to_string(), "192.0.2.1");
        assert_eq!(key("192.0.2.1", 0), key("192.0.2.1", 128));
    }

    #[test]
    fn mapped_ipv4_is_the_ipv4_address() {
        assert_eq!(key("::ffff:192.0.2.1", 64), key("192.0.2.1", 64));
        assert_ne!(key("::ffff:192.0.2.1", 64), key("::ffff:192.0.2.2", 64));
        // Not lumped with ::1, though both start with 64 zero bits.
        assert_ne!(key("::ffff:127.0.0.1", 64), key("::1", 64));
        assert_eq!(key("::ffff:127.0.0.1", 64).to_string(), "127.0.0.1");
    }

    #[test]
    fn prefix_zero_and_oversized_are_clamped() {
        assert_eq!(key("2001:db8::1", 0), key("fe80::1", 0));
        assert_eq!(key("2001:db8::1", 200), key("2001:db8::1", 128));
    }
}
