//! Sender authentication on the host: SPF (RFC 7208) for the HELO and MAIL
//! FROM identities, DKIM (RFC 6376, RSA and Ed25519 / RFC 8463), DMARC
//! (RFC 7489, with the organizational domain found by mail-auth's DNS tree
//! walk rather than a public suffix list) and ARC (RFC 8617), computed with
//! mail-auth over the server's one resolver.
//!
//! Results leave this module in sluice's own types ([`Outcome`],
//! [`SpfCheck`], [`MessageChecks`]); `pipeline::auth` computes them lazily and
//! caches them per transaction, and `pipeline::host` hands them to plugins.
//! A DNS failure is always [`Outcome::TempError`], never a pass or a fail.

mod dkim;
pub(crate) mod dmarc;
mod spf_lookups;
mod spf_syntax;

use std::net::IpAddr;

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::dkim::DkimError;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, DkimResult, DmarcOutput, DmarcResult, Error, MessageAuthenticator,
    Parameters, SpfOutput, SpfResult, Txt,
};

use crate::dns::{Dns, LookupError};

/// One check's result, with the RFC 8601 result names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    None,
    Pass,
    Fail,
    SoftFail,
    Neutral,
    TempError,
    PermError,
}

impl Outcome {
    /// The RFC 8601 §2.7 name.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::None => "none",
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::SoftFail => "softfail",
            Outcome::Neutral => "neutral",
            Outcome::TempError => "temperror",
            Outcome::PermError => "permerror",
        }
    }
}

/// SPF for one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfCheck {
    pub outcome: Outcome,
    /// The domain checked: the MAIL FROM domain, or the HELO name.
    pub domain: String,
    /// The domain's `exp=` text on a fail, or why there is no result.
    pub explanation: Option<String>,
}

impl SpfCheck {
    pub fn new(outcome: Outcome, domain: &str, explanation: Option<String>) -> Self {
        SpfCheck {
            outcome,
            domain: domain.to_owned(),
            explanation,
        }
    }
}

/// One DKIM signature's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimCheck {
    pub outcome: Outcome,
    /// The signing domain (`d=`); empty for a signature that did not parse.
    pub domain: String,
    /// The selector (`s=`); empty for a signature that did not parse.
    pub selector: String,
    /// The agent or user identifier (`i=`); empty when absent.
    pub identity: String,
    /// Why the result is what it is, when the result alone does not say.
    pub reason: Option<String>,
}

/// The policy a DMARC record asks receivers to apply to failing mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcPolicy {
    None,
    Quarantine,
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmarcCheck {
    pub outcome: Outcome,
    /// The RFC5322.From domain ("" when the message has none).
    pub header_from: String,
    /// The policy for this From domain (`p=`, `sp=` or `np=` as applies;
    /// `none` when there is no record), lowered by one for a failing
    /// message its `pct=` left out of the sample.
    pub policy: DmarcPolicy,
    /// False when the record's `pct=` left this failing message out of the
    /// sample its policy applies to (RFC 7489 §6.6.4).
    pub sampled: bool,
    /// Why there is no policy, or why it is not the record's.
    pub reason: Option<String>,
    /// The record policy discovery found, with the domain that publishes
    /// it (the author's or its organizational domain); None without one.
    pub published: Option<PublishedPolicy>,
    /// Whether a DKIM signature / the SPF identity passed in alignment
    /// with the From domain (RFC 7489 §3.1).
    pub dkim_aligned: bool,
    pub spf_aligned: bool,
}

/// A domain's DMARC record, as aggregate reports describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedPolicy {
    /// The domain the record was found for (`_dmarc.` taken off).
    pub domain: String,
    pub record: String,
}

impl DmarcCheck {
    /// No DMARC for this message: no author domain, no record, or records
    /// that say nothing.
    pub fn none(header_from: &str, reason: Option<String>) -> DmarcCheck {
        DmarcCheck {
            outcome: Outcome::None,
            header_from: header_from.to_owned(),
            policy: DmarcPolicy::None,
            sampled: true,
            reason,
            published: None,
            dkim_aligned: false,
            spf_aligned: false,
        }
    }
}

/// Everything checked on the message itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageChecks {
    pub dkim: Vec<DkimCheck>,
    pub dmarc: DmarcCheck,
    /// `none` when the message carries no ARC set.
    pub arc: Outcome,
    /// The signing domain (`d=`) of the newest ARC-Seal when the chain
    /// validates; empty otherwise.
    pub arc_sealer: String,
}

impl MessageChecks {
    /// What is known of a message whose checks could not finish in time:
    /// every signature and DMARC are temporary errors, never a verdict.
    pub fn unfinished(raw: &[u8]) -> MessageChecks {
        let Some(message) = dkim::parse(raw) else {
            return MessageChecks::unparsable();
        };
        // Without verification outputs every readable signature is a
        // temporary error, but those no key could make valid.
        let dkim = dkim::checks(&message, &[]);
        let arc = if message.ams_headers.is_empty() && message.as_headers.is_empty() {
            Outcome::None
        } else {
            Outcome::TempError
        };
        MessageChecks {
            dkim,
            dmarc: DmarcCheck {
                outcome: Outcome::TempError,
                ..DmarcCheck::none(&from_domain(&message), None)
            },
            arc,
            arc_sealer: String::new(),
        }
    }

    /// A message without a header section mail-auth can read: nothing is
    /// signed and there is no author domain.
    fn unparsable() -> MessageChecks {
        MessageChecks {
            dkim: Vec::new(),
            dmarc: DmarcCheck::none("", None),
            arc: Outcome::None,
            arc_sealer: String::new(),
        }
    }
}

/// The checks, over the server's resolver.
#[derive(Clone)]
pub struct Authenticator {
    dns: Dns,
    verifier: MessageAuthenticator,
    /// Our own name, for SPF's `%{r}` macro.
    hostname: String,
}

impl Authenticator {
    pub fn new(dns: &Dns, hostname: &str) -> Self {
        Authenticator {
            dns: dns.clone(),
            verifier: MessageAuthenticator(dns.resolver().clone()),
            hostname: hostname.to_owned(),
        }
    }

    /// SPF for the HELO identity (RFC 7208 §2.3): `postmaster@helo`.
    pub async fn spf_helo(&self, ip: IpAddr, helo: &str) -> SpfCheck {
        let helo = helo.trim_end_matches('.');
        let record = match self.spf_precheck(helo).await {
            Ok(record) => record,
            Err(early) => return early,
        };
        let ip = spf_address(ip);
        let params = SpfParameters::verify_ehlo(ip, helo, &self.hostname);
        self.spf_evaluate(ip, params, helo, record).await
    }

    /// SPF for the MAIL FROM identity; `sender` is `local@domain` (the null
    /// reverse-path is the HELO identity: use [`Authenticator::spf_helo`]).
    pub async fn spf_mail_from(&self, ip: IpAddr, helo: &str, sender: &str) -> SpfCheck {
        let domain = sender
            .rsplit_once('@')
            .map_or("", |(_, domain)| domain)
            .trim_end_matches('.');
        let record = match self.spf_precheck(domain).await {
            Ok(record) => record,
            Err(early) => return early,
        };
        let ip = spf_address(ip);
        let params = SpfParameters::verify_mail_from(ip, helo, &self.hostname, sender);
        self.spf_evaluate(ip, params, domain, record).await
    }

    /// mail-auth's evaluation, watched through its lookup hooks: the
    /// client's PTR names are handed over as RFC 7208 §5.5 compares them,
    /// and more than two void lookups make the result a permerror
    /// (§4.6.4), a limit mail-auth does not keep. `record`, the domain's
    /// own record as the precheck read it, is handed over without the
    /// terms mail-auth evaluates wrongly and the RFC makes inert: unknown
    /// modifiers (§6: ignored; mail-auth refuses some names) and, for an
    /// IPv4 client, `ip6` mechanisms (§5.6: they cannot match; mail-auth
    /// matches `ip6:::/0`).
    async fn spf_evaluate(
        &self,
        ip: IpAddr,
        params: SpfParameters<'_>,
        domain: &str,
        record: Option<String>,
    ) -> SpfCheck {
        let names = self.dns.ptr(ip).await.unwrap_or_default();
        let mut lookups = spf_lookups::Lookups::with_ptr(names);
        if let Some(record) = record {
            let evaluated = spf_syntax::without_inert_terms(&record, ip.is_ipv4());
            if let Ok(parsed) = mail_auth::spf::Spf::parse(evaluated.as_bytes()) {
                let fqdn = format!("{}.", domain.to_ascii_lowercase());
                lookups = lookups.with_record(fqdn, Txt::Spf(std::sync::Arc::new(parsed)));
            }
        }
        let params = Parameters::new(params)
            .with_txt_cache(&lookups)
            .with_mx_cache(&lookups)
            .with_ptr_cache(&lookups)
            .with_ipv4_cache(&lookups)
            .with_ipv6_cache(&lookups);
        let check = spf_check(&self.verifier.verify_spf(params).await, domain);
        let void = lookups.void();
        if void > spf_lookups::VOID_LOOKUP_LIMIT && check.outcome != Outcome::TempError {
            return SpfCheck::new(
                Outcome::PermError,
                domain,
                Some(format!(
                    "{void} void DNS lookups, more than the {} allowed",
                    spf_lookups::VOID_LOOKUP_LIMIT
                )),
            );
        }
        check
    }

    /// What mail-auth does not decide the RFC's way: a domain publishing
    /// more than one SPF record is a permerror (RFC 7208 §4.5), where
    /// mail-auth would use the first, and so is a record with a syntax
    /// error (§4.6), which mail-auth partly evaluates.
    ///
    /// Err: the result, without evaluation; Ok: the domain's one SPF
    /// record (None when it publishes none), the one mail-auth evaluates,
    /// so the name is asked once.
    async fn spf_precheck(&self, domain: &str) -> Result<Option<String>, SpfCheck> {
        if domain.is_empty() {
            return Err(SpfCheck::new(
                Outcome::None,
                domain,
                Some("no domain to check".to_owned()),
            ));
        }
        match self.dns.txt(domain).await {
            Ok(records) => {
                let spf_records: Vec<&String> =
                    records.iter().filter(|r| is_spf_record(r)).collect();
                match spf_records.as_slice() {
                    [] => Ok(None),
                    // RFC 7208 §4.6: a syntax error anywhere in the record
                    // is a permerror before anything is evaluated.
                    [record] => match spf_syntax::check(record) {
                        Ok(()) => Ok(Some((*record).clone())),
                        Err(e) => Err(SpfCheck::new(
                            Outcome::PermError,
                            domain,
                            Some(e.to_string()),
                        )),
                    },
                    several => Err(SpfCheck::new(
                        Outcome::PermError,
                        domain,
                        Some(format!("{domain} publishes {} SPF records", several.len())),
                    )),
                }
            }
            Err(LookupError::NxDomain(_)) => Err(SpfCheck::new(Outcome::None, domain, None)),
            Err(LookupError::InvalidName(_)) => Err(SpfCheck::new(
                Outcome::None,
                domain,
                Some("not a valid domain name".to_owned()),
            )),
            Err(e @ LookupError::Temporary { .. }) => Err(SpfCheck::new(
                Outcome::TempError,
                domain,
                Some(e.to_string()),
            )),
        }
    }

    /// DKIM, ARC and DMARC over the raw message, parsed once. DMARC takes
    /// `spf`, the MAIL FROM identity's result, for SPF alignment.
    pub async fn message(&self, raw: &[u8], spf: &SpfCheck) -> MessageChecks {
        let Some(message) = dkim::parse(raw) else {
            return MessageChecks::unparsable();
        };
        let (verified, arc) = tokio::join!(
            self.verifier.verify_dkim(&message),
            self.verifier.verify_arc(&message)
        );
        let verified = dkim::corrected(&message, &verified);
        let spf_output = SpfOutput::new(spf.domain.clone()).with_result(spf_result(spf.outcome));
        let dmarc = self
            .verifier
            .verify_dmarc(DmarcParameters::new(
                &message,
                &verified,
                &spf.domain,
                &spf_output,
            ))
            .await;
        let dmarc = self.dmarc_policy(dmarc_check(&dmarc, &message)).await;
        let arc = arc_outcome(arc.result());
        let arc_sealer = if arc == Outcome::Pass {
            message
                .as_headers
                .iter()
                .max_by_key(|seal| seal.header.i)
                .map(|seal| seal.header.d.to_ascii_lowercase())
                .unwrap_or_default()
        } else {
            String::new()
        };
        MessageChecks {
            dkim: dkim::checks(&message, &verified),
            dmarc,
            arc,
            arc_sealer,
        }
    }

    /// mail-auth's DMARC result with RFC 7489's policy discovery applied
    /// on top: several records mean no policy (§6.6.3 step 5), and `pct=`
    /// lowers the policy of a failing message outside its sample (§6.6.4).
    async fn dmarc_policy(&self, check: DmarcCheck) -> DmarcCheck {
        if matches!(check.outcome, Outcome::None | Outcome::TempError) {
            return check;
        }
        let published = match dmarc::discover(&self.dns, &check.header_from).await {
            Ok(Some(published)) => published,
            Ok(None) => return check,
            Err(e) => {
                return DmarcCheck {
                    outcome: Outcome::TempError,
                    reason: Some(e.to_string()),
                    ..check
                }
            }
        };
        if published.records.len() > 1 {
            let reason = format!(
                "{} publishes {} DMARC records",
                published.name,
                published.records.len()
            );
            return DmarcCheck::none(&check.header_from, Some(reason));
        }
        let pct = published.pct();
        let check = DmarcCheck {
            published: Some(PublishedPolicy {
                domain: published
                    .name
                    .strip_prefix("_dmarc.")
                    .unwrap_or(&published.name)
                    .to_ascii_lowercase(),
                record: published.records[0].clone(),
            }),
            ..check
        };
        if check.outcome != Outcome::Fail || dmarc::sampled(pct) {
            return check;
        }
        DmarcCheck {
            policy: dmarc::next_lower(check.policy),
            sampled: false,
            reason: Some(format!("pct={pct} left this message out of the sample")),
            ..check
        }
    }
}

/// RFC 7208 §5 (the `ip4`/`ip6` rule of §5.6): an IPv4-mapped IPv6
/// client is an IPv4 client.
fn spf_address(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// `v=spf1` followed by a space or nothing, case-insensitively (RFC 7208
/// §4.5).
fn is_spf_record(txt: &str) -> bool {
    let bytes = txt.as_bytes();
    bytes.len() >= 6
        && bytes[..6].eq_ignore_ascii_case(b"v=spf1")
        && (bytes.len() == 6 || bytes[6] == b' ')
}

fn spf_check(output: &SpfOutput, domain: &str) -> SpfCheck {
    SpfCheck::new(
        spf_outcome(output.result()),
        domain,
        output.explanation().map(str::to_owned),
    )
}

pub(crate) fn spf_outcome(result: SpfResult) -> Outcome {
    match result {
        SpfResult::Pass => Outcome::Pass,
        SpfResult::Fail => Outcome::Fail,
        SpfResult::SoftFail => Outcome::SoftFail,
        SpfResult::Neutral => Outcome::Neutral,
        SpfResult::TempError => Outcome::TempError,
        SpfResult::PermError => Outcome::PermError,
        SpfResult::None => Outcome::None,
    }
}

/// The way back, for handing our SPF result to mail-auth's DMARC.
fn spf_result(outcome: Outcome) -> SpfResult {
    match outcome {
        Outcome::Pass => SpfResult::Pass,
        Outcome::Fail => SpfResult::Fail,
        Outcome::SoftFail => SpfResult::SoftFail,
        Outcome::Neutral => SpfResult::Neutral,
        Outcome::TempError => SpfResult::TempError,
        Outcome::PermError => SpfResult::PermError,
        Outcome::None => SpfResult::None,
    }
}

/// mail-auth reports a body that no longer matches its signature as
/// "neutral"; RFC 6376 §6.1.3 makes that a failed verification, which
/// RFC 8601 §2.7.1 calls `fail`.
pub(crate) fn dkim_outcome(result: &DkimResult) -> Outcome {
    match result {
        DkimResult::Pass => Outcome::Pass,
        DkimResult::Fail(_) => Outcome::Fail,
        DkimResult::Neutral(Error::Dkim(DkimError::FailedBodyHashMatch)) => Outcome::Fail,
        DkimResult::Neutral(_) => Outcome::Neutral,
        DkimResult::TempError(_) => Outcome::TempError,
        DkimResult::PermError(_) => Outcome::PermError,
        DkimResult::None => Outcome::None,
    }
}

/// ARC knows only none, pass and fail (RFC 8617 §4.4); a chain that cannot
/// be validated for want of DNS is a temporary error, not a fail.
pub(crate) fn arc_outcome(result: &DkimResult) -> Outcome {
    match result {
        DkimResult::Pass => Outcome::Pass,
        DkimResult::None => Outcome::None,
        DkimResult::TempError(_) => Outcome::TempError,
        DkimResult::Neutral(_) | DkimResult::Fail(_) | DkimResult::PermError(_) => Outcome::Fail,
    }
}

pub(crate) fn dmarc_outcome(result: &DmarcResult) -> Outcome {
    match result {
        DmarcResult::Pass => Outcome::Pass,
        DmarcResult::Fail(_) => Outcome::Fail,
        DmarcResult::TempError(_) => Outcome::TempError,
        DmarcResult::PermError(_) => Outcome::PermError,
        DmarcResult::None => Outcome::None,
    }
}

pub(crate) fn dmarc_policy(policy: Policy) -> DmarcPolicy {
    match policy {
        Policy::Reject => DmarcPolicy::Reject,
        Policy::Quarantine => DmarcPolicy::Quarantine,
        Policy::None | Policy::Unspecified => DmarcPolicy::None,
    }
}

fn dmarc_check(output: &DmarcOutput, message: &AuthenticatedMessage<'_>) -> DmarcCheck {
    let outcome = dmarc_outcome(&output.result());
    let header_from = if output.domain().is_empty() {
        from_domain(message)
    } else {
        output.domain().to_owned()
    };
    // Without a record there is no policy to apply.
    if outcome == Outcome::None {
        return DmarcCheck::none(&header_from, None);
    }
    DmarcCheck {
        outcome,
        header_from,
        policy: dmarc_policy(output.policy()),
        sampled: true,
        reason: None,
        published: None,
        dkim_aligned: output.dkim_result() == &DmarcResult::Pass,
        spf_aligned: output.spf_result() == &DmarcResult::Pass,
    }
}

/// The domain of the (first) RFC5322.From address, lower-cased.
fn from_domain(message: &AuthenticatedMessage<'_>) -> String {
    message
        .from()
        .rsplit_once('@')
        .map(|(_, domain)| domain.to_ascii_lowercase())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_auth::arc::ArcError;
    use mail_auth::DkimOutput;
    use mail_auth::DnsError;

    fn dns_failure() -> Error {
        Error::Dns(DnsError::Resolver("timed out".into()))
    }

    #[test]
    fn spf_results_map_one_to_one_and_back() {
        let all = [
            (SpfResult::Pass, Outcome::Pass),
            (SpfResult::Fail, Outcome::Fail),
            (SpfResult::SoftFail, Outcome::SoftFail),
            (SpfResult::Neutral, Outcome::Neutral),
            (SpfResult::TempError, Outcome::TempError),
            (SpfResult::PermError, Outcome::PermError),
            (SpfResult::None, Outcome::None),
        ];
        for (result, outcome) in all {
            assert_eq!(spf_outcome(result), outcome);
            assert_eq!(spf_result(outcome), result);
        }
    }

    #[test]
    fn mail_auth_dns_errors_are_temperror_for_spf() {
        // mail-auth turns a lookup error into an SPF result this way.
        assert_eq!(
            spf_outcome(SpfResult::from(dns_failure())),
            Outcome::TempError
        );
        assert_eq!(
            spf_outcome(SpfResult::from(Error::Dns(DnsError::InvalidRecordType))),
            Outcome::None
        );
    }

    #[test]
    fn dkim_body_hash_mismatch_is_a_fail() {
        assert_eq!(
            dkim_outcome(&DkimResult::Neutral(Error::Dkim(
                DkimError::FailedBodyHashMatch
            ))),
            Outcome::Fail
        );
        assert_eq!(
            dkim_outcome(&DkimResult::Neutral(Error::Dkim(
                DkimError::SignatureExpired
            ))),
            Outcome::Neutral
        );
        assert_eq!(
            dkim_outcome(&DkimResult::Fail(Error::Crypto(
                mail_auth::common::crypto::CryptoError::FailedVerification
            ))),
            Outcome::Fail
        );
        assert_eq!(dkim_outcome(&DkimResult::Pass), Outcome::Pass);
        assert_eq!(dkim_outcome(&DkimResult::None), Outcome::None);
    }

    #[test]
    fn dkim_dns_errors_are_temperror_and_missing_keys_permerror() {
        let temp = DkimOutput::dns_error(dns_failure());
        assert_eq!(dkim_outcome(temp.result()), Outcome::TempError);
        let missing = DkimOutput::dns_error(Error::Dns(DnsError::InvalidRecordType));
        assert_eq!(dkim_outcome(missing.result()), Outcome::PermError);
    }

    #[test]
    fn arc_is_none_pass_fail_or_temperror() {
        assert_eq!(arc_outcome(&DkimResult::None), Outcome::None);
        assert_eq!(arc_outcome(&DkimResult::Pass), Outcome::Pass);
        assert_eq!(
            arc_outcome(&DkimResult::Fail(Error::Arc(ArcError::BrokenChain))),
            Outcome::Fail
        );
        assert_eq!(
            arc_outcome(&DkimResult::Neutral(Error::Arc(
                ArcError::FailedBodyHashMatch
            ))),
            Outcome::Fail
        );
        assert_eq!(
            arc_outcome(&DkimResult::TempError(dns_failure())),
            Outcome::TempError
        );
    }

    #[test]
    fn dmarc_results_and_policies() {
        assert_eq!(dmarc_outcome(&DmarcResult::Pass), Outcome::Pass);
        assert_eq!(
            dmarc_outcome(&DmarcResult::Fail(Error::NotAligned)),
            Outcome::Fail
        );
        assert_eq!(
            dmarc_outcome(&DmarcResult::from(dns_failure())),
            Outcome::TempError
        );
        assert_eq!(
            dmarc_outcome(&DmarcResult::from(Error::ParseError)),
            Outcome::PermError
        );
        assert_eq!(dmarc_outcome(&DmarcResult::None), Outcome::None);
        assert_eq!(dmarc_policy(Policy::Reject), DmarcPolicy::Reject);
        assert_eq!(dmarc_policy(Policy::Quarantine), DmarcPolicy::Quarantine);
        assert_eq!(dmarc_policy(Policy::None), DmarcPolicy::None);
        assert_eq!(dmarc_policy(Policy::Unspecified), DmarcPolicy::None);
    }

    #[test]
    fn a_dmarc_output_without_record_has_no_policy() {
        let message = AuthenticatedMessage::parse(b"From: a@Example.ORG\r\n\r\nhi\r\n").unwrap();
        let check = dmarc_check(&DmarcOutput::default(), &message);
        assert_eq!(check.outcome, Outcome::None);
        assert_eq!(check.header_from, "example.org");
        assert_eq!(check.policy, DmarcPolicy::None);
    }

    #[test]
    fn ipv4_mapped_clients_are_ipv4_clients() {
        // RFC 7208 §5.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(spf_address(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(spf_address(v6), v6);
    }

    #[test]
    fn spf_records_are_recognised_exactly() {
        assert!(is_spf_record("v=spf1 -all"));
        assert!(is_spf_record("V=SPF1"));
        assert!(!is_spf_record("v=spf10 -all"));
        assert!(!is_spf_record("google-site-verification=x"));
        assert!(!is_spf_record("v=spf"));
    }

    #[test]
    fn unfinished_checks_name_the_signatures_and_never_pass() {
        let raw = b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=sel;\r\n h=from; bh=AAAA; b=AAAA\r\nFrom: a@example.org\r\n\r\nbody\r\n";
        let checks = MessageChecks::unfinished(raw);
        assert_eq!(checks.dkim.len(), 1);
        assert_eq!(checks.dkim[0].domain, "example.org");
        assert_eq!(checks.dkim[0].selector, "sel");
        assert_eq!(checks.dkim[0].outcome, Outcome::TempError);
        assert_eq!(checks.dmarc.outcome, Outcome::TempError);
        assert_eq!(checks.dmarc.header_from, "example.org");
        assert_eq!(checks.arc, Outcome::None);
    }
}
