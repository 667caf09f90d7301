//! An MTA-STS policy (RFC 8461 §3.2) as the policy host serves it, and
//! whether an MX host name is one it allows (§4.1).

use crate::config::valid_domain;

/// The longest `max_age` a policy may ask for (§3.2: about a year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to a listed MX host over TLS with a valid certificate.
    Enforce,
    /// Deliver as without a policy, and report what enforce would refuse.
    Testing,
    /// The domain withdrew its policy.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// Host names and `*.` patterns, lower-cased, without a final dot.
    pub mx: Vec<String>,
    /// Seconds the policy may be cached.
    pub max_age: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("the policy is not UTF-8 text")]
    NotText,
    #[error("line {0} is not \"key: value\"")]
    Line(usize),
    #[error("the policy has no version: STSv1")]
    Version,
    #[error("mode {0:?} is not enforce, testing or none")]
    Mode(String),
    #[error("the policy has no mode")]
    NoMode,
    #[error("max_age {0:?} is not a number of seconds up to 31557600")]
    MaxAge(String),
    #[error("the policy has no max_age")]
    NoMaxAge,
    #[error("mode {0} needs at least one mx")]
    NoMx(&'static str),
    #[error("mx {0:?} is not a host name or *. pattern")]
    Mx(String),
}

impl Policy {
    /// Parses the policy body. Keys other than version, mode, mx and
    /// max_age are ignored (§3.2: extensions); a key given twice keeps its
    /// first value, except mx, which may repeat.
    pub fn parse(body: &[u8]) -> Result<Policy, PolicyError> {
        let text = std::str::from_utf8(body).map_err(|_| PolicyError::NotText)?;
        let mut version = None;
        let mut mode = None;
        let mut max_age = None;
        let mut mx = Vec::new();
        // Lines end in CRLF or LF (§3.2 ABNF: sts-policy-term).
        for (index, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let (key, value) = line.split_once(':').ok_or(PolicyError::Line(index + 1))?;
            let value = value.trim_matches([' ', '\t']);
            match key {
                "version" => {
                    version.get_or_insert(value);
                }
                "mode" => {
                    mode.get_or_insert(value);
                }
                "max_age" => {
                    max_age.get_or_insert(value);
                }
                "mx" => mx.push(value),
                _ => {}
            }
        }
        if version != Some("STSv1") {
            return Err(PolicyError::Version);
        }
        let mode = match mode.ok_or(PolicyError::NoMode)? {
            "enforce" => Mode::Enforce,
            "testing" => Mode::Testing,
            "none" => Mode::None,
            other => return Err(PolicyError::Mode(other.to_owned())),
        };
        let max_age_text = max_age.ok_or(PolicyError::NoMaxAge)?;
        // 1*10DIGIT, at most a year.
        let max_age = Some(max_age_text)
            .filter(|t| (1..=10).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<u64>().ok())
            .filter(|&n| n <= MAX_AGE_LIMIT)
            .ok_or_else(|| PolicyError::MaxAge(max_age_text.to_owned()))?;
        let mx = mx
            .into_iter()
            .map(|pattern| {
                let lower = pattern.trim_end_matches('.').to_ascii_lowercase();
                let host = lower.strip_prefix("*.").unwrap_or(&lower);
                if valid_domain(host) {
                    Ok(lower)
                } else {
                    Err(PolicyError::Mx(pattern.to_owned()))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        match mode {
            Mode::Enforce if mx.is_empty() => Err(PolicyError::NoMx("enforce")),
            Mode::Testing if mx.is_empty() => Err(PolicyError::NoMx("testing")),
            _ => Ok(Policy { mode, mx, max_age }),
        }
    }

    /// Whether `host` (an MX exchange) is one the policy lists: equal, or
    /// matching a `*.` pattern in its leftmost label only (§4.1:
    /// `*.example.com` matches `mail.example.com`, not `example.com` nor
    /// `a.b.example.com`).
    pub fn allows_mx(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => *pattern == host,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_example_parses() {
        // RFC 8461 §3.2's example, with LF and CRLF line ends mixed.
        let body = b"version: STSv1\r\nmode: enforce\nmx: mail.example.com\r\n\
                     mx: *.example.net\nmx: backupmx.example.com\nmax_age: 604800\r\n";
        let policy = Policy::parse(body).unwrap();
        assert_eq!(policy.mode, Mode::Enforce);
        assert_eq!(policy.max_age, 604_800);
        assert_eq!(
            policy.mx,
            ["mail.example.com", "*.example.net", "backupmx.example.com"]
        );
    }

    #[test]
    fn mx_patterns_match_as_section_4_1_says() {
        let policy = Policy::parse(
            b"version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 86400\n",
        )
        .unwrap();
        assert!(policy.allows_mx("mail.example.com"));
        assert!(policy.allows_mx("MAIL.Example.COM."));
        assert!(policy.allows_mx("mx1.example.net"));
        assert!(!policy.allows_mx("example.net"));
        assert!(!policy.allows_mx("a.b.example.net"));
        assert!(!policy.allows_mx("other.example.com"));
        assert!(!policy.allows_mx("mail.example.com.evil.test"));
    }

    #[test]
    fn unknown_keys_are_ignored_and_spaces_trimmed() {
        let policy = Policy::parse(
            b"version: STSv1\nmode:testing\nfuture: x\nmx:  mx.example.org \nmax_age: 0\n",
        )
        .unwrap();
        assert_eq!((policy.mode, policy.max_age), (Mode::Testing, 0));
        assert_eq!(policy.mx, ["mx.example.org"]);
        let none = Policy::parse(b"version: STSv1\nmode: none\nmax_age: 86400\n").unwrap();
        assert_eq!((none.mode, none.mx.len()), (Mode::None, 0));
    }

    #[test]
    fn malformed_policies_are_refused() {
        let cases: &[(&[u8], PolicyError)] = &[
            (
                b"mode: enforce\nmx: a.example\nmax_age: 1\n",
                PolicyError::Version,
            ),
            (
                b"version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n",
                PolicyError::Version,
            ),
            (
                b"version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n",
                PolicyError::Mode("strict".into()),
            ),
            (
                b"version: STSv1\nmx: a.example\nmax_age: 1\n",
                PolicyError::NoMode,
            ),
            (
                b"version: STSv1\nmode: enforce\nmx: a.example\n",
                PolicyError::NoMaxAge,
            ),
            (
                b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n",
                PolicyError::MaxAge("31557601".into()),
            ),
            (
                b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
                PolicyError::MaxAge("-1".into()),
            ),
            (
                b"version: STSv1\nmode: enforce\nmax_age: 1\n",
                PolicyError::NoMx("enforce"),
            ),
            (
                b"version: STSv1\nmode: enforce\nmx: bad host\nmax_age: 1\n",
                PolicyError::Mx("bad host".into()),
            ),
            (b"version: STSv1\nmode enforce\n", PolicyError::Line(2)),
            (b"version: STSv1\n\xff\n", PolicyError::NotText),
        ];
        for (body, expected) in cases {
            assert_eq!(
                Policy::parse(body).as_ref(),
                Err(expected),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
