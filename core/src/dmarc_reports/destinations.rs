//! Where a domain's reports go: the `mailto:` URIs of its record's `rua`
//! tag (RFC 7489 §6.2, with an optional `!size` limit), each outside the
//! domain used only once the destination agreed to receive them
//! (§7.1: a `v=DMARC1` record at `<domain>._report._dmarc.<destination>`).

use crate::authn::dmarc::{is_dmarc_record, tag_value};
use crate::dns::{Dns, LookupError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// `local@domain`.
    pub address: String,
    /// The largest report this destination takes, in octets.
    pub max_size: Option<u64>,
}

impl Destination {
    pub fn domain(&self) -> &str {
        self.address.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

/// The `mailto:` destinations of a record's `rua`; other schemes are
/// skipped.
pub fn requested(record: &str) -> Vec<Destination> {
    let Some(rua) = tag_value(record, "rua") else {
        return Vec::new();
    };
    rua.split(',')
        .filter_map(|uri| destination(uri.trim()))
        .collect()
}

fn destination(uri: &str) -> Option<Destination> {
    let (scheme, rest) = uri.split_once(':')?;
    if !scheme.eq_ignore_ascii_case("mailto") {
        return None;
    }
    // §6.2: a `!` is not allowed in the URI, so the first one starts the size.
    let (address, size) = match rest.split_once('!') {
        Some((address, size)) => (address, Some(size)),
        None => (rest, None),
    };
    let address = percent_decoded(address)?;
    let (local, domain) = address.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    let max_size = match size {
        Some(size) => Some(size_limit(size)?),
        None => None,
    };
    Some(Destination {
        address: format!("{local}@{}", domain.to_ascii_lowercase()),
        max_size,
    })
}

/// `1*DIGIT [ "k" / "m" / "g" / "t" ]`, binary multiples (§6.2).
fn size_limit(text: &str) -> Option<u64> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let number: u64 = digits.parse().ok()?;
    let shift = match text[digits.len()..].to_ascii_lowercase().as_str() {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return None,
    };
    number.checked_mul(1 << shift)
}

/// `%XX` escapes in a mailto address (RFC 6068); None when one is broken
/// or the result is not UTF-8.
fn percent_decoded(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether the destination domain belongs with the policy domain: the
/// same name, or one a subdomain of the other. (The organizational
/// domain is not computed: a destination that is only a sibling gets
/// asked, which is what the RFC asks of any other domain.)
pub fn same_domain(policy_domain: &str, destination: &str) -> bool {
    let (a, b) = (
        policy_domain.to_ascii_lowercase(),
        destination.to_ascii_lowercase(),
    );
    a == b || a.ends_with(&format!(".{b}")) || b.ends_with(&format!(".{a}"))
}

/// §7.1: may reports about `policy_domain` go to `destination`?
pub async fn accepts(
    dns: &Dns,
    policy_domain: &str,
    destination: &Destination,
) -> Result<bool, LookupError> {
    let domain = destination.domain();
    if same_domain(policy_domain, domain) {
        return Ok(true);
    }
    let name = format!("{policy_domain}._report._dmarc.{domain}");
    match dns.txt(&name).await {
        Ok(records) => Ok(records.iter().any(|r| is_dmarc_record(r))),
        Err(LookupError::NxDomain(_) | LookupError::InvalidName(_)) => Ok(false),
        Err(e @ LookupError::Temporary { .. }) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailto_uris_with_sizes() {
        let found = requested(
            "v=DMARC1; p=none; rua=mailto:Agg@Example.ORG, mailto:big@reports.test!10m,https://x.test/r, mailto:a%40b@c.test!2k",
        );
        assert_eq!(
            found,
            vec![
                Destination {
                    address: "Agg@example.org".into(),
                    max_size: None
                },
                Destination {
                    address: "big@reports.test".into(),
                    max_size: Some(10 << 20)
                },
                Destination {
                    address: "a@b@c.test".into(),
                    max_size: Some(2048)
                },
            ]
        );
        assert!(requested("v=DMARC1; p=none").is_empty());
        assert!(requested("v=DMARC1; rua=mailto:x@y.test!10q").is_empty());
        assert!(requested("v=DMARC1; rua=mailto:nobody").is_empty());
    }

    #[test]
    fn subdomains_are_the_same_domain_and_others_are_not() {
        assert!(same_domain("example.org", "example.org"));
        assert!(same_domain("example.org", "reports.example.org"));
        assert!(same_domain("mail.example.org", "example.org"));
        assert!(!same_domain("example.org", "example.net"));
        assert!(!same_domain("example.org", "badexample.org"));
    }
}
