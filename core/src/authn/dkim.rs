//! DKIM verdicts where mail-auth 0.13.3 departs from the RFCs, corrected
//! around its verifier: the message is parsed so that `l=` signatures are
//! verified (its strict mode refuses them all, its body hash cuts the raw
//! body where RFC 6376 §3.5 cuts the canonical one), signatures mail-auth
//! would pass are failed where the RFCs forbid them, and every
//! DKIM-Signature field gets a result naming its `d=`, `s=` and `i=`,
//! those mail-auth cannot parse included.

use mail_auth::common::crypto::Algorithm;
use mail_auth::common::headers::Writable;
use mail_auth::dkim::{DkimError, Signature};
use mail_auth::{AuthenticatedMessage, DkimOutput, Error};

use super::{dkim_outcome, DkimCheck, Outcome};

const DKIM_SIGNATURE: &[u8] = b"DKIM-Signature";

/// The message as the checks read it, with `l=` body hashes computed the
/// RFC's way.
pub(super) fn parse(raw: &[u8]) -> Option<AuthenticatedMessage<'_>> {
    // Strict parsing turns every `l=` signature into an error; RFC 6376
    // §3.5 makes the tag optional for signers and verifiable for us.
    let mut message = AuthenticatedMessage::parse_with_opts(raw, None, false)?;
    let body = raw.get(message.body_offset as usize..).unwrap_or_default();
    for (canonicalization, algorithm, length, hash) in &mut message.body_hashes {
        if *length == 0 {
            continue;
        }
        // RFC 6376 §3.5, §3.7: `l=` counts octets of the canonicalized
        // body; mail-auth truncates the raw body and then canonicalizes.
        let mut canonical = Vec::with_capacity(body.len());
        canonicalization
            .canonical_body(body, 0)
            .write(&mut canonical);
        canonical.truncate(usize::try_from(*length).unwrap_or(usize::MAX));
        *hash = algorithm.hash(canonical.as_slice()).as_ref().to_vec();
    }
    Some(message)
}

/// Why a signature mail-auth verified is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Invalid {
    /// RFC 8301 §3.1: verifiers must not consider rsa-sha1 valid.
    Sha1,
    /// RFC 6376 §5.4, §6.1.1: `h=` must include From, or the signature is
    /// ignored (PERMFAIL).
    FromNotSigned,
}

impl Invalid {
    fn of(signature: &Signature) -> Option<Invalid> {
        if !signature
            .h
            .iter()
            .any(|name| name.trim().eq_ignore_ascii_case("from"))
        {
            Some(Invalid::FromNotSigned)
        } else if signature.a == Algorithm::RsaSha1 {
            Some(Invalid::Sha1)
        } else {
            None
        }
    }

    /// RFC 8601 §2.7.1: a signature that cannot be acceptable is a
    /// permerror; one whose algorithm is refused failed verification.
    fn outcome(self) -> Outcome {
        match self {
            Invalid::Sha1 => Outcome::Fail,
            Invalid::FromNotSigned => Outcome::PermError,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Invalid::Sha1 => "rsa-sha1 is not accepted",
            Invalid::FromNotSigned => "From is not signed",
        }
    }

    fn output<'x>(self, signature: &'x Signature) -> DkimOutput<'x> {
        match self {
            Invalid::Sha1 => DkimOutput::fail(Error::Dkim(DkimError::UnsupportedAlgorithm)),
            Invalid::FromNotSigned => DkimOutput::perm_err(Error::NoHeadersFound),
        }
        .with_signature(signature)
    }
}

/// mail-auth's results with the invalid signatures failed, for DMARC to
/// count only what is valid; one per parsed signature.
pub(super) fn corrected<'x>(
    message: &'x AuthenticatedMessage<'x>,
    outputs: &[DkimOutput<'x>],
) -> Vec<DkimOutput<'x>> {
    message
        .dkim_headers
        .iter()
        .filter_map(|header| {
            let signature = &header.header;
            match Invalid::of(signature) {
                Some(invalid) => Some(invalid.output(signature)),
                None => output_of(outputs, signature).cloned(),
            }
        })
        .collect()
}

/// One result per DKIM-Signature field, in header order.
pub(super) fn checks(
    message: &AuthenticatedMessage<'_>,
    outputs: &[DkimOutput<'_>],
) -> Vec<DkimCheck> {
    message
        .headers
        .iter()
        .filter(|(name, _)| name.trim_ascii().eq_ignore_ascii_case(DKIM_SIGNATURE))
        .map(|(_, value)| {
            let parsed = message
                .dkim_headers
                .iter()
                .find(|header| header.value.as_ptr() == value.as_ptr());
            match parsed {
                Some(header) => check(&header.header, output_of(outputs, &header.header)),
                None => unreadable(value),
            }
        })
        .collect()
}

fn output_of<'a, 'x>(
    outputs: &'a [DkimOutput<'x>],
    signature: &Signature,
) -> Option<&'a DkimOutput<'x>> {
    outputs.iter().find(|output| {
        output
            .signature()
            .is_some_and(|s| std::ptr::eq(s, signature))
    })
}

fn check(signature: &Signature, output: Option<&DkimOutput<'_>>) -> DkimCheck {
    let (outcome, reason) = match (Invalid::of(signature), output) {
        (Some(invalid), _) => (invalid.outcome(), Some(invalid.reason().to_owned())),
        (None, Some(output)) => (dkim_outcome(output.result()), None),
        (None, None) => (Outcome::TempError, Some("not verified".to_owned())),
    };
    DkimCheck {
        outcome,
        domain: signature.d.clone(),
        selector: signature.s.clone(),
        identity: signature.i.clone(),
        reason,
    }
}

/// A signature mail-auth could not parse: RFC 8601 §2.7.1 `neutral`
/// (syntax errors), still attributed to the `d=`, `s=` and `i=` it names.
fn unreadable(value: &[u8]) -> DkimCheck {
    let text = String::from_utf8_lossy(value);
    let tag = |name: &str| tag_value(&text, name).unwrap_or_default();
    DkimCheck {
        outcome: Outcome::Neutral,
        domain: tag("d").to_ascii_lowercase(),
        selector: tag("s"),
        identity: tag("i"),
        reason: Some("unreadable signature".to_owned()),
    }
}

/// A tag's value in a tag-value list (RFC 6376 §3.2), folding white space
/// removed; the first occurrence.
fn tag_value(list: &str, name: &str) -> Option<String> {
    list.split(';').find_map(|spec| {
        let (tag, value) = spec.split_once('=')?;
        // RFC 6376 §3.2: tag names are case-sensitive.
        (tag.trim() == name).then(|| value.split_whitespace().collect())
    })
}

#[cfg(test)]
mod tests {
    use mail_auth::common::crypto::HashAlgorithm;

    use super::*;

    fn message_with(signature: &str, body: &str) -> String {
        format!(
            "DKIM-Signature: {signature}\r\nFrom: a@example.org\r\nTo: b@example.net\r\n\r\n{body}"
        )
    }

    fn only_check(raw: &str) -> DkimCheck {
        let message = parse(raw.as_bytes()).unwrap();
        let mut checks = checks(&message, &[]);
        assert_eq!(checks.len(), 1, "{checks:?}");
        checks.remove(0)
    }

    fn signer(check: &DkimCheck) -> (&str, &str, &str) {
        (&check.domain, &check.selector, &check.identity)
    }

    #[test]
    fn a_signature_not_covering_from_is_a_permerror() {
        // RFC 6376 §5.4 and §6.1.1: From must be signed.
        let raw = message_with(
            "v=1; a=rsa-sha256; d=example.org; s=sel; i=@example.org; h=to; bh=AAAA; b=AAAA",
            "hi\r\n",
        );
        let check = only_check(&raw);
        assert_eq!(check.outcome, Outcome::PermError);
        assert_eq!(signer(&check), ("example.org", "sel", "@example.org"));
        assert_eq!(check.reason.as_deref(), Some("From is not signed"));
    }

    #[test]
    fn rsa_sha1_is_a_fail_whatever_the_key_says() {
        // RFC 8301 §3.1.
        let raw = message_with(
            "v=1; a=rsa-sha1; d=example.org; s=sel; h=from:to; bh=AAAA; b=AAAA",
            "hi\r\n",
        );
        let message = parse(raw.as_bytes()).unwrap();
        let signature = &message.dkim_headers[0].header;
        let forged_pass = [DkimOutput::pass().with_signature(signature)];
        let checks = checks(&message, &forged_pass);
        assert_eq!(checks[0].outcome, Outcome::Fail);
        let for_dmarc = corrected(&message, &forged_pass);
        assert!(matches!(
            for_dmarc[0].result(),
            mail_auth::DkimResult::Fail(_)
        ));
    }

    #[test]
    fn an_unreadable_signature_is_still_attributed() {
        // RFC 8601 §2.7.1: neutral for a syntax error, with header.d/s/i.
        let raw = message_with(
            "v=1; a=rsa-sha256; d=Example.ORG; s=sel;\r\n i=u@example.org; h=from; bh=AAAA",
            "hi\r\n",
        );
        let check = only_check(&raw);
        assert_eq!(check.outcome, Outcome::Neutral);
        assert_eq!(signer(&check), ("example.org", "sel", "u@example.org"));
    }

    #[test]
    fn l_counts_octets_of_the_canonical_body() {
        // RFC 6376 §3.5: relaxed canonicalization first, then l= octets.
        let raw = message_with(
            "v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=sel; h=from; l=13; bh=AAAA; b=AAAA",
            "hello   world\r\nappended\r\n",
        );
        let message = parse(raw.as_bytes()).unwrap();
        assert_eq!(message.dkim_headers.len(), 1, "l= signatures are read");
        let (_, _, length, hash) = &message.body_hashes[0];
        assert_eq!(*length, 13);
        let expected = HashAlgorithm::Sha256.hash(b"hello world\r\n".as_slice());
        assert_eq!(hash.as_slice(), expected.as_ref());
    }

    #[test]
    fn tags_are_case_sensitive_and_unfolded() {
        assert_eq!(tag_value("d=a; s = se\r\n l", "s").as_deref(), Some("sel"));
        assert_eq!(tag_value("D=a", "d"), None);
    }
}
