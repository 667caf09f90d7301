//! The syntax of an SPF record (RFC 7208 §12, the ABNF of §4.6, §5, §6 and
//! §7.1), checked before mail-auth evaluates it: mail-auth 0.13.3 skips or
//! guesses around much of what the RFC makes a `permerror` (§4.6: "if
//! there are any syntax errors anywhere in the record, check_host()
//! returns immediately with the result permerror").

use std::net::Ipv6Addr;

/// Why a record is not valid SPF; the text goes into the permerror's
/// explanation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SPF syntax error: {0}")]
pub(super) struct SyntaxError(String);

fn error<T>(what: impl Into<String>) -> Result<T, SyntaxError> {
    Err(SyntaxError(what.into()))
}

/// Checks a whole record, `v=spf1` included.
pub(super) fn check(record: &str) -> Result<(), SyntaxError> {
    // §3.1, §12: visible ASCII and spaces only; terms are separated by
    // spaces, never by other white space or control characters (§4.6.1).
    if let Some(c) = record
        .chars()
        .find(|c| !(c.is_ascii_graphic() || *c == ' '))
    {
        return error(format!("character {c:?} is not allowed"));
    }
    let mut terms = record.split(' ').filter(|t| !t.is_empty());
    match terms.next() {
        Some(version) if version.eq_ignore_ascii_case("v=spf1") => {}
        _ => return error("the record does not start with v=spf1"),
    }
    let (mut redirects, mut explanations) = (0, 0);
    for term in terms {
        match modifier_name(term) {
            Some((name, value)) => {
                if name.eq_ignore_ascii_case("redirect") {
                    redirects += 1;
                    domain_spec(value).map_err(|e| within(term, e))?;
                } else if name.eq_ignore_ascii_case("exp") {
                    explanations += 1;
                    domain_spec(value).map_err(|e| within(term, e))?;
                } else {
                    macro_string(value).map_err(|e| within(term, e))?;
                }
            }
            None => directive(term).map_err(|e| within(term, e))?,
        }
    }
    // §6: each of these modifiers at most once.
    if redirects > 1 || explanations > 1 {
        return error("redirect= or exp= appears more than once");
    }
    Ok(())
}

/// A checked record without the terms that cannot change its result:
/// unknown modifiers (RFC 7208 §6: ignored), for an IPv4 client `ip6`
/// mechanisms (§5.6: they match IPv6 clients only), and `a` or `mx`
/// mechanisms naming, without macros, what is not a domain name (§4.3,
/// §4.8: such a target does not exist, so they cannot match; mail-auth
/// makes the resolver's refusal a temperror).
pub(super) fn without_inert_terms(record: &str, client_is_ipv4: bool) -> String {
    let mut terms = record.split(' ').filter(|term| !term.is_empty());
    let version = terms.next().unwrap_or_default();
    let kept = terms.filter(|term| match modifier_name(term) {
        Some((name, _)) => {
            name.eq_ignore_ascii_case("redirect") || name.eq_ignore_ascii_case("exp")
        }
        None => {
            let mechanism = term.trim_start_matches(['+', '-', '?', '~']);
            let ip6 = mechanism
                .get(..4)
                .is_some_and(|name| name.eq_ignore_ascii_case("ip6:"));
            let inert = (client_is_ipv4 && ip6) || names_no_domain(mechanism);
            !inert
        }
    });
    std::iter::once(version)
        .chain(kept)
        .collect::<Vec<_>>()
        .join(" ")
}

/// An `a:` or `mx:` mechanism whose literal target breaks the DNS limits
/// (RFC 1035 §2.3.4: labels of 1 to 63 octets, names of at most 253).
fn names_no_domain(mechanism: &str) -> bool {
    let Some((name, rest)) = mechanism.split_once(':') else {
        return false;
    };
    if !(name.eq_ignore_ascii_case("a") || name.eq_ignore_ascii_case("mx")) || rest.contains('%') {
        return false;
    }
    let (target, _) = split_dual_cidr(rest);
    let target = target.strip_suffix('.').unwrap_or(target);
    target.len() > 253
        || target
            .split('.')
            .any(|label| label.is_empty() || label.len() > 63)
}

fn within(term: &str, e: SyntaxError) -> SyntaxError {
    SyntaxError(format!("{term:?}: {}", e.0))
}

/// `name "=" value` when the term is a modifier (§4.6.1: name = ALPHA
/// *( ALPHA / DIGIT / "-" / "_" / "." )).
fn modifier_name(term: &str) -> Option<(&str, &str)> {
    let (name, value) = term.split_once('=')?;
    let mut chars = name.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    .then_some((name, value))
}

/// `[ qualifier ] mechanism` (§4.6.2, §5).
fn directive(term: &str) -> Result<(), SyntaxError> {
    let term = term.strip_prefix(['+', '-', '?', '~']).unwrap_or(term);
    let name_end = term.find([':', '/']).unwrap_or(term.len());
    let (name, rest) = term.split_at(name_end);
    match name.to_ascii_lowercase().as_str() {
        "all" if rest.is_empty() => Ok(()),
        "include" | "exists" => match rest.strip_prefix(':') {
            Some(spec) => domain_spec(spec),
            None => error("a domain is required"),
        },
        "ptr" => match rest.strip_prefix(':') {
            Some(spec) => domain_spec(spec),
            None if rest.is_empty() => Ok(()),
            None => error("ptr takes no prefix length"),
        },
        "a" | "mx" => {
            // A domain-spec may hold a "/": the prefix lengths are the
            // "/digits" at the end.
            let (target, cidr) = split_dual_cidr(rest);
            match target.strip_prefix(':') {
                Some(spec) => domain_spec(spec)?,
                None if target.is_empty() => {}
                None => return error("a domain or prefix length is expected"),
            }
            dual_cidr(cidr)
        }
        "ip4" => {
            let Some(network) = rest.strip_prefix(':') else {
                return error("an address is required");
            };
            let (address, cidr) = network.split_at(network.find('/').unwrap_or(network.len()));
            ip4_network(address)?;
            cidr_length(cidr, 32)
        }
        "ip6" => {
            let Some(network) = rest.strip_prefix(':') else {
                return error("an address is required");
            };
            let (address, cidr) = network.split_at(network.find('/').unwrap_or(network.len()));
            if address.parse::<Ipv6Addr>().is_err() {
                return error(format!("{address:?} is not an IPv6 address"));
            }
            cidr_length(cidr, 128)
        }
        _ => error("unknown mechanism"),
    }
}

/// `ip4-network = qnum "." qnum "." qnum "." qnum` (§12), no leading
/// zeros.
fn ip4_network(address: &str) -> Result<(), SyntaxError> {
    let parts: Vec<&str> = address.split('.').collect();
    let qnum = |p: &&str| {
        !p.is_empty()
            && p.len() <= 3
            && p.bytes().all(|b| b.is_ascii_digit())
            && (p.len() == 1 || !p.starts_with('0'))
            && p.parse::<u16>().is_ok_and(|n| n <= 255)
    };
    if parts.len() == 4 && parts.iter().all(qnum) {
        Ok(())
    } else {
        error(format!("{address:?} is not an IPv4 address"))
    }
}

/// `[ "/" length ]` with length in 0..=max, without leading zeros (§5.6).
fn cidr_length(cidr: &str, max: u32) -> Result<(), SyntaxError> {
    if cidr.is_empty() {
        return Ok(());
    }
    let digits = cidr.strip_prefix('/').unwrap_or("x");
    let valid = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits.len() == 1 || !digits.starts_with('0'))
        && digits.parse::<u32>().is_ok_and(|n| n <= max);
    if valid {
        Ok(())
    } else {
        error(format!("{cidr:?} is not a prefix length of 0 to {max}"))
    }
}

/// Splits `a`/`mx` arguments into the target and the trailing
/// `[/n][//m]`.
fn split_dual_cidr(rest: &str) -> (&str, &str) {
    let digits_after = |at: usize, skip: usize| {
        let tail = &rest[at + skip..];
        !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit())
    };
    let mut end = rest.len();
    if let Some(at) = rest.rfind("//").filter(|at| digits_after(*at, 2)) {
        end = at;
    }
    if let Some(at) = rest[..end].rfind('/') {
        let tail = &rest[at + 1..end];
        if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) {
            end = at;
        }
    }
    rest.split_at(end)
}

/// `dual-cidr-length = [ ip4-cidr-length ] [ "/" ip6-cidr-length ]`.
fn dual_cidr(cidr: &str) -> Result<(), SyntaxError> {
    match cidr.find("//") {
        Some(at) => {
            cidr_length(&cidr[..at], 32)?;
            cidr_length(&cidr[at + 1..], 128)
        }
        None => cidr_length(cidr, 32),
    }
}

/// `domain-spec = macro-string domain-end`, `domain-end = ( "." toplabel
/// [ "." ] ) / macro-expand` (§7.1).
fn domain_spec(spec: &str) -> Result<(), SyntaxError> {
    let ends_in_macro = macro_string(spec)?;
    if ends_in_macro {
        return Ok(());
    }
    let name = spec.strip_suffix('.').unwrap_or(spec);
    match name.rsplit_once('.') {
        Some((_, toplabel)) if is_toplabel(toplabel) => Ok(()),
        _ => error(format!("{spec:?} does not end in a valid top label")),
    }
}

/// `toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *(
/// alphanum / "-" ) alphanum )`: not all digits, no dash at either end.
fn is_toplabel(label: &str) -> bool {
    !label.is_empty()
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
        && (label.bytes().any(|b| b.is_ascii_alphabetic()) || label.contains('-'))
}

/// `macro-string = *( macro-expand / macro-literal )`; whether it ends in
/// a macro-expand.
fn macro_string(text: &str) -> Result<bool, SyntaxError> {
    let mut rest = text;
    let mut ends_in_macro = false;
    while let Some(c) = rest.chars().next() {
        if c != '%' {
            rest = &rest[c.len_utf8()..];
            ends_in_macro = false;
            continue;
        }
        let after = &rest[1..];
        rest = match after.chars().next() {
            Some('%' | '_' | '-') => &after[1..],
            Some('{') => {
                let Some(end) = after.find('}') else {
                    return error("an unterminated macro");
                };
                macro_expand(&after[1..end])?;
                &after[end + 1..]
            }
            _ => return error("a % that starts no macro"),
        };
        ends_in_macro = true;
    }
    Ok(ends_in_macro)
}

/// `macro-letter transformers *delimiter` (§7.1).
fn macro_expand(inner: &str) -> Result<(), SyntaxError> {
    let mut chars = inner.chars();
    let letter = chars.next().map(|c| c.to_ascii_lowercase());
    if !matches!(
        letter,
        Some('s' | 'l' | 'o' | 'd' | 'i' | 'p' | 'h' | 'c' | 'r' | 't' | 'v')
    ) {
        return error(format!("%{{{inner}}} is not a macro"));
    }
    let rest = chars.as_str();
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    let rest = rest
        .strip_prefix('r')
        .or_else(|| rest.strip_prefix('R'))
        .unwrap_or(rest);
    if rest
        .chars()
        .all(|c| matches!(c, '.' | '-' | '+' | ',' | '/' | '_' | '='))
    {
        Ok(())
    } else {
        error(format!("%{{{inner}}} is not a macro"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_records_pass() {
        for record in [
            "v=spf1 -all",
            "v=spf1 a -all ",
            "v=spf1 +a:example.org/24//64 mx:%{d}.x ptr ip4:192.0.2.0/24 ip6:2001:db8::/32 ~all",
            "v=spf1 include:_spf.example.org exists:%{ir}.%{v}._spf.%{d2} redirect=x.example.org",
            "v=spf1 a:a:b.example.com -all",
            "v=spf1 a:foo:bar/baz.example.com mx:x/y.example.com/24//64",
            "v=spf1 moo.cow-far_out=man:dog/cat ?all",
            "v=spf1 exp=%{l}.example.com -all",
            "V=SPF1 A:EXAMPLE.ORG.",
        ] {
            assert_eq!(check(record), Ok(()), "{record}");
        }
    }

    #[test]
    fn inert_terms_are_left_out_for_evaluation() {
        let record = "v=spf1 moo.cow-far_out=man:dog/cat ip4:1.2.3.4 -IP6:::/0 redirect=x.example exp=e.example";
        assert_eq!(
            without_inert_terms(record, true),
            "v=spf1 ip4:1.2.3.4 redirect=x.example exp=e.example"
        );
        assert_eq!(
            without_inert_terms(record, false),
            "v=spf1 ip4:1.2.3.4 -IP6:::/0 redirect=x.example exp=e.example"
        );
        // RFC 7208 §4.3, §4.8: names that cannot exist.
        let long = "a".repeat(64);
        let record =
            format!("v=spf1 a:mail.example...com mx:{long}.example.com/24 a:%{{h}}.x a -all");
        assert_eq!(without_inert_terms(&record, true), "v=spf1 a:%{h}.x a -all");
    }

    #[test]
    fn syntax_errors_are_found() {
        // RFC 7208 §3.1, §4.6.1, §5.6, §6, §7.1, §12.
        for record in [
            "v=spf1 a:\u{e9}.example.com -all",
            "v=spf1 a\t-all",
            "v=spf1 ip4:192.0.2.300 -all",
            "v=spf1 ip4:192.0.02.1 -all",
            "v=spf1 ip4:192.0.2.0/33",
            "v=spf1 ip4:192.0.2.0/032",
            "v=spf1 ip6:::1/129",
            "v=spf1 a/33",
            "v=spf1 a//129",
            "v=spf1 a:example.-com",
            "v=spf1 a:example.123",
            "v=spf1 a:museum",
            "v=spf1 a:foo.example.com\0",
            "v=spf1 mx:example.com/",
            "v=spf1 redirect=foo.example.com redirect=bar.example.com",
            "v=spf1 redirect=%{x}.example.com",
            "v=spf1 =all",
            "v=spf1 moo=%",
            "v=spf1 exp=",
            "v=spf1 include",
            "v=spf1 all:x",
            "v=spf1 frob:example.com",
        ] {
            assert!(check(record).is_err(), "{record:?}");
        }
    }
}
