//! `[delivery] ignore_target_hosts`: the networks an MX-derived target may
//! not be in. A domain's DNS is its owner's to write, so without this filter
//! anyone could point an MX (or a bare A record) at this host's loopback
//! services, at `0.0.0.0` or at link-local addresses and have sluice connect
//! there. An address matches in either of its forms: `127.0.0.1` is caught
//! by `::ffff:127.0.0.0/104` and `::ffff:127.0.0.1` by `127.0.0.0/8`.

use std::net::IpAddr;

use ipnet::IpNet;

/// Whether `ip`, or its IPv4 / IPv4-mapped IPv6 twin, is in `networks`.
pub fn is_ignored(networks: &[IpNet], ip: IpAddr) -> bool {
    let twin = match ip {
        IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
    };
    networks
        .iter()
        .any(|net| net.contains(&ip) || twin.is_some_and(|twin| net.contains(&twin)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The default of `[delivery] ignore_target_hosts`, as resolved.
    fn defaults() -> Vec<IpNet> {
        let text = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\npipeline = \"p\"\n[pipeline.p]\n";
        crate::config::load_str(text, "c.toml")
            .unwrap()
            .delivery
            .ignore_target_hosts
    }

    #[test]
    fn default_list_ignores_loopback_unspecified_and_link_local() {
        let list = defaults();
        for address in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "0.1.2.3",
            "169.254.169.254",
            "::1",
            "::",
            "fe80::1",
            "febf::1",
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
            "::ffff:169.254.1.1",
        ] {
            assert!(is_ignored(&list, ip(address)), "{address} must be ignored");
        }
        for address in [
            "192.0.2.1",
            "10.0.0.1",
            "128.0.0.1",
            "169.253.255.255",
            "2001:db8::1",
            "::2",
            "fec0::1",
            "::ffff:192.0.2.1",
        ] {
            assert!(!is_ignored(&list, ip(address)), "{address} must be allowed");
        }
    }

    #[test]
    fn either_form_of_an_ipv4_address_matches() {
        let v4 = nets(&["10.0.0.0/8"]);
        assert!(is_ignored(&v4, ip("::ffff:10.1.2.3")));
        assert!(!is_ignored(&v4, ip("::ffff:11.1.2.3")));
        let mapped = nets(&["::ffff:192.0.2.0/120"]);
        assert!(is_ignored(&mapped, ip("192.0.2.77")));
        assert!(!is_ignored(&mapped, ip("192.0.3.1")));
    }

    #[test]
    fn single_hosts_and_an_empty_list() {
        let list = nets(&["192.0.2.7/32", "2001:db8::/32"]);
        assert!(is_ignored(&list, ip("192.0.2.7")));
        assert!(!is_ignored(&list, ip("192.0.2.8")));
        assert!(is_ignored(&list, ip("2001:db8:ffff::1")));
        assert!(!is_ignored(&[], ip("127.0.0.1")));
    }
}
