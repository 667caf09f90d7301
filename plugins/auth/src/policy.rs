//! What `builtin:auth` decides from the host's SPF, DKIM, DMARC and ARC
//! results: its configuration, the `Authentication-Results` header it
//! writes (RFC 8601), which existing ones are forgeries of ours, and the
//! verdicts of the mail and data stages.
//!
//! Nothing here calls the host, so it tests natively; `lib.rs` asks the host
//! for the results and hands back what this module decided.

use serde::Deserialize;
use sluice_sdk::auth::{AuthResult, DkimResult, DmarcPolicy, DmarcResult, SpfResult};
use sluice_sdk::{Reply, Verdict};

/// The header this plugin writes and polices.
pub const HEADER: &str = "Authentication-Results";

/// The header that marks a message DMARC asked to quarantine, when it is
/// delivered: `X-Sluice-DMARC: quarantine`, for the mailbox server to file
/// (a Sieve `header :is "X-Sluice-DMARC" "quarantine"` rule). Any copy the
/// message arrives with is removed.
pub const QUARANTINE_HEADER: &str = "X-Sluice-DMARC";
pub const QUARANTINE_MARK: &str = "quarantine";

/// Why the plugin's configuration was refused; shown to the operator when
/// the pipeline is built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Malformed JSON, an unknown key (serde names it) or a wrong type.
    #[error("auth: invalid config: {0}")]
    Json(String),
}

/// The operator's settings, as `[plugins.NAME.config]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Refuse MAIL FROM with 550 5.7.23 when SPF says `fail`.
    pub reject_spf_fail: bool,
    /// Honor the sender domain's DMARC policy: `p=reject` refuses the
    /// message (550 5.7.1), `p=quarantine` is handled as `dmarc_quarantine`
    /// says.
    pub dmarc_policy: bool,
    /// What `p=quarantine` does to a failing message: delivered with
    /// [`QUARANTINE_HEADER`], or held in sluice's quarantine.
    pub dmarc_quarantine: DmarcQuarantine,
    /// Answer 451 4.7.0 when a check could not be made for a DNS failure,
    /// instead of accepting.
    pub tempfail_on_temperror: bool,
    /// Forwarders whose validating ARC chain (their seal the newest)
    /// overrides a DMARC fail for the disposition (RFC 8617 §7.2.1).
    pub trusted_arc_sealers: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            reject_spf_fail: false,
            dmarc_policy: true,
            dmarc_quarantine: DmarcQuarantine::Deliver,
            tempfail_on_temperror: false,
            trusted_arc_sealers: Vec::new(),
        }
    }
}

/// RFC 7489 §6.3: quarantine means "treat as suspicious", not refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DmarcQuarantine {
    /// Deliver, marked with [`QUARANTINE_HEADER`].
    Deliver,
    /// Hold in sluice's quarantine.
    Hold,
}

impl Config {
    /// Parses the JSON config; an empty string means all defaults.
    pub fn parse(json: &str) -> Result<Config, ConfigError> {
        if json.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_json::from_str(json).map_err(|e| ConfigError::Json(e.to_string()))
    }

    /// Whether the mail stage has anything to decide (otherwise SPF is left
    /// for the data stage, or for nobody).
    pub fn checks_at_mail(&self) -> bool {
        self.reject_spf_fail || self.tempfail_on_temperror
    }

    /// The mail stage's verdict on the MAIL FROM identity's SPF result.
    pub fn mail_verdict(&self, spf: &SpfResult, client_ip: &str) -> Verdict {
        if self.reject_spf_fail && spf.outcome == AuthResult::Fail {
            return spf_reject(spf, client_ip);
        }
        if self.tempfail_on_temperror && spf.outcome == AuthResult::Temperror {
            return temperror("SPF");
        }
        Verdict::Next
    }

    /// The data stage's verdict once every result is in.
    pub fn data_verdict(&self, results: &Results, client_ip: &str) -> Verdict {
        let spf = &results.spf;
        let dmarc = &results.dmarc;
        // Only when the mail stage did not run this plugin can an SPF fail
        // still be here.
        if self.reject_spf_fail && spf.outcome == AuthResult::Fail {
            return spf_reject(spf, client_ip);
        }
        let honored = self.dmarc_policy && self.arc_override(results).is_none();
        if honored && dmarc.outcome == AuthResult::Fail {
            match dmarc.policy {
                DmarcPolicy::Reject => {
                    return Verdict::Reject(Some(Reply::new(
                        550,
                        "5.7.1",
                        &format!(
                            "Message rejected by the DMARC policy of {}",
                            dmarc.header_from
                        ),
                    )))
                }
                DmarcPolicy::Quarantine if self.dmarc_quarantine == DmarcQuarantine::Hold => {
                    return Verdict::Quarantine(format!(
                        "DMARC policy of {} (p=quarantine)",
                        dmarc.header_from
                    ))
                }
                DmarcPolicy::Quarantine => {}
                DmarcPolicy::None => {}
            }
        }
        if self.tempfail_on_temperror {
            if dmarc.outcome == AuthResult::Temperror {
                return temperror("DMARC");
            }
            // An SPF temperror matters unless DMARC passed on DKIM.
            if spf.outcome == AuthResult::Temperror && dmarc.outcome != AuthResult::Pass {
                return temperror("SPF");
            }
        }
        Verdict::Next
    }

    /// The trusted sealer whose validating ARC chain sets a DMARC fail
    /// aside (RFC 8617 §7.2.1: the receiver may trust the forwarder's
    /// recorded results), if any.
    pub fn arc_override<'r>(&self, results: &'r Results) -> Option<&'r str> {
        let trusted = results.dmarc.outcome == AuthResult::Fail
            && results.arc == AuthResult::Pass
            && !results.arc_sealer.is_empty()
            && self
                .trusted_arc_sealers
                .iter()
                .any(|sealer| sealer.eq_ignore_ascii_case(&results.arc_sealer));
        trusted.then_some(results.arc_sealer.as_str())
    }

    /// Whether a message accepted at data is to carry [`QUARANTINE_HEADER`]:
    /// DMARC failed under a quarantine policy that is delivered.
    pub fn marks_quarantine(&self, results: &Results) -> bool {
        self.dmarc_policy
            && self.arc_override(results).is_none()
            && self.dmarc_quarantine == DmarcQuarantine::Deliver
            && results.dmarc.outcome == AuthResult::Fail
            && results.dmarc.policy == DmarcPolicy::Quarantine
    }
}

fn spf_reject(spf: &SpfResult, client_ip: &str) -> Verdict {
    let text = match spf.explanation.as_deref().map(printable) {
        Some(explanation) if !explanation.is_empty() => {
            format!("SPF check failed: {explanation}")
        }
        _ => format!(
            "SPF check failed: {} does not allow {client_ip} to send its mail",
            spf.domain
        ),
    };
    // RFC 7372 §3.2: 5.7.23 is "SPF validation failed".
    Verdict::Reject(Some(Reply::new(550, "5.7.23", &text)))
}

fn temperror(check: &str) -> Verdict {
    Verdict::Tempfail(Some(Reply::new(
        451,
        "4.7.0",
        &format!("Temporary {check} lookup failure, try again later"),
    )))
}

/// A domain's explanation text as it may go into a reply: printable ASCII
/// on one line, at most 200 characters.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(200)
        .collect()
}

/// What the host computed for the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Results {
    pub spf: SpfResult,
    pub dkim: Vec<DkimResult>,
    pub dmarc: DmarcResult,
    pub arc: AuthResult,
    /// The newest sealer of a validating ARC chain; empty otherwise.
    pub arc_sealer: String,
}

/// The session details the header names.
pub struct Identity<'a> {
    /// MAIL FROM as given; "" for the null reverse-path.
    pub reverse_path: &'a str,
    pub helo: Option<&'a str>,
}

/// The value of our `Authentication-Results` header (RFC 8601 §2.2): the
/// authserv-id, then one resinfo per method, each with the identity it
/// checked. It is one line: the host writes header values unfolded.
/// `overridden_by` names the trusted ARC sealer that set a DMARC fail
/// aside.
pub fn header_value(
    authserv_id: &str,
    results: &Results,
    identity: &Identity<'_>,
    overridden_by: Option<&str>,
) -> String {
    let mut parts = vec![pvalue(authserv_id)];

    let spf = &results.spf;
    let mut resinfo = format!("spf={}", result_name(spf.outcome));
    if !identity.reverse_path.is_empty() {
        resinfo.push_str(&format!(" smtp.mailfrom={}", pvalue(identity.reverse_path)));
    } else if !spf.domain.is_empty() && !spf.domain.starts_with('[') {
        // RFC 7208 §2.4: the null reverse-path is checked as postmaster@HELO.
        resinfo.push_str(&format!(
            " smtp.mailfrom={}",
            pvalue(&format!("postmaster@{}", spf.domain))
        ));
    } else if let Some(helo) = identity.helo {
        resinfo.push_str(&format!(" smtp.helo={}", pvalue(helo)));
    }
    parts.push(resinfo);

    if results.dkim.is_empty() {
        parts.push("dkim=none".to_owned());
    }
    for dkim in &results.dkim {
        parts.push(dkim_resinfo(dkim));
    }

    let dmarc = &results.dmarc;
    let mut resinfo = format!("dmarc={}", result_name(dmarc.outcome));
    if dmarc.outcome != AuthResult::None {
        let policy = policy_name(dmarc.policy);
        resinfo.push_str(&format!(" (p={policy}"));
        if let Some(reason) = &dmarc.reason {
            resinfo.push_str(&format!(": {}", comment(reason)));
        }
        resinfo.push(')');
    } else if let Some(reason) = &dmarc.reason {
        resinfo.push_str(&format!(" ({})", comment(reason)));
    }
    if !dmarc.header_from.is_empty() {
        resinfo.push_str(&format!(" header.from={}", pvalue(&dmarc.header_from)));
    }
    // RFC 8601 §2.3 `policy`: the local outcome differs from the record's
    // policy (RFC 7489 §6.6.4 sampling, RFC 8617 §7.2.1 ARC override).
    if let Some(sealer) = overridden_by {
        resinfo.push_str(&format!(
            " policy.dmarc=none policy.arc-sealer={}",
            pvalue(sealer)
        ));
    } else if !dmarc.sampled {
        resinfo.push_str(&format!(" policy.dmarc={}", policy_name(dmarc.policy)));
    }
    parts.push(resinfo);

    if results.arc != AuthResult::None {
        parts.push(format!("arc={}", result_name(results.arc)));
    }
    parts.join("; ")
}

/// One signature's resinfo: RFC 8601 §2.7.1 wants `header.d` and
/// `header.s` (and `header.i` when the signature has one) on every result,
/// so that each can be attributed to its signer.
fn dkim_resinfo(dkim: &DkimResult) -> String {
    let mut resinfo = format!("dkim={}", result_name(dkim.outcome));
    if let Some(reason) = &dkim.reason {
        resinfo.push_str(&format!(" ({})", comment(reason)));
    }
    for (property, value) in [
        ("header.d", &dkim.domain),
        ("header.s", &dkim.selector),
        ("header.i", &dkim.identity),
    ] {
        if !value.is_empty() {
            resinfo.push_str(&format!(" {property}={}", pvalue(value)));
        }
    }
    resinfo
}

fn policy_name(policy: DmarcPolicy) -> &'static str {
    match policy {
        DmarcPolicy::None => "none",
        DmarcPolicy::Quarantine => "quarantine",
        DmarcPolicy::Reject => "reject",
    }
}

/// Text for inside an RFC 5322 comment: printable, parentheses and
/// backslashes dropped.
fn comment(text: &str) -> String {
    printable(text).replace(['(', ')', '\\'], "")
}

/// The RFC 8601 §2.7 name of a result.
pub fn result_name(result: AuthResult) -> &'static str {
    match result {
        AuthResult::None => "none",
        AuthResult::Pass => "pass",
        AuthResult::Fail => "fail",
        AuthResult::Softfail => "softfail",
        AuthResult::Neutral => "neutral",
        AuthResult::Temperror => "temperror",
        AuthResult::Permerror => "permerror",
    }
}

/// A property value (RFC 8601 §2.2 `pvalue`): an RFC 2045 token or
/// `local@domain` as is, anything else as a quoted-string.
fn pvalue(value: &str) -> String {
    let atom = |s: &str| {
        !s.is_empty()
            && s.bytes().all(|b| {
                b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b) || b >= 0x80
            })
    };
    let as_is = match value.rsplit_once('@') {
        Some((local, domain)) => (local.is_empty() || atom(local)) && atom(domain),
        None => value.bytes().all(is_token_byte) && !value.is_empty(),
    };
    if as_is {
        return value.to_owned();
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        if !c.is_control() {
            quoted.push(c);
        }
    }
    quoted.push('"');
    quoted
}

/// RFC 2045 token characters: printable ASCII but tspecials.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b)
}

/// The authserv-id an `Authentication-Results` value starts with
/// (RFC 8601 §2.2), after any comments and white space; unquoted.
pub fn authserv_id(value: &str) -> Option<String> {
    let rest = skip_cfws(value);
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut id = String::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Some(id),
                '\\' => id.extend(chars.next()),
                c => id.push(c),
            }
        }
        return None;
    }
    let id: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ';' && *c != '(')
        .collect();
    (!id.is_empty()).then_some(id)
}

/// Skips white space and (nested) comments.
fn skip_cfws(mut text: &str) -> &str {
    loop {
        text = text.trim_start();
        if !text.starts_with('(') {
            return text;
        }
        let mut depth = 0usize;
        let mut end = text.len();
        let mut escaped = false;
        for (i, c) in text.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        text = &text[end..];
    }
}

/// The header changes that drop `Authentication-Results` headers claiming
/// our authserv-id (forged, or left by an earlier pass through us: RFC 8601
/// §5) and keep everyone else's. Fields can only be removed by name, so when
/// one must go, all go, and the others' are put back on top in their
/// original order. Returns (headers to remove, headers to prepend).
pub fn forged_header_changes(
    authserv_id_ours: &str,
    headers: &[(String, String)],
) -> (Vec<String>, Vec<String>) {
    let existing: Vec<&str> = headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(HEADER))
        .map(|(_, value)| value.as_str())
        .collect();
    let ours = |value: &str| {
        authserv_id(value).is_some_and(|id| id.eq_ignore_ascii_case(authserv_id_ours))
    };
    if !existing.iter().any(|v| ours(v)) {
        return (Vec::new(), Vec::new());
    }
    let kept = existing
        .into_iter()
        .filter(|v| !ours(v))
        .map(str::to_owned)
        .collect();
    (vec![HEADER.to_owned()], kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spf(outcome: AuthResult, domain: &str) -> SpfResult {
        SpfResult {
            outcome,
            domain: domain.into(),
            explanation: None,
        }
    }

    fn dmarc(outcome: AuthResult, policy: DmarcPolicy) -> DmarcResult {
        DmarcResult {
            outcome,
            header_from: "example.org".into(),
            policy,
            sampled: true,
            reason: None,
        }
    }

    fn results(spf_outcome: AuthResult, dmarc_result: DmarcResult) -> Results {
        Results {
            spf: spf(spf_outcome, "example.org"),
            dkim: Vec::new(),
            dmarc: dmarc_result,
            arc: AuthResult::None,
            arc_sealer: String::new(),
        }
    }

    #[test]
    fn defaults_and_unknown_keys() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        assert_eq!(Config::parse("{}").unwrap(), Config::default());
        let c = Config::parse(r#"{"reject_spf_fail": true, "dmarc_policy": false}"#).unwrap();
        assert!(c.reject_spf_fail && !c.dmarc_policy && !c.tempfail_on_temperror);
        let e = Config::parse(r#"{"reject_spf": true}"#).unwrap_err();
        assert!(e.to_string().contains("reject_spf"), "{e}");
        assert!(Config::parse(r#"{"dmarc_policy": "yes"}"#).is_err());
    }

    #[test]
    fn spf_fail_is_refused_at_mail_only_when_asked() {
        let fail = spf(AuthResult::Fail, "example.org");
        assert_eq!(
            Config::default().mail_verdict(&fail, "1.2.3.4"),
            Verdict::Next
        );
        let strict = Config {
            reject_spf_fail: true,
            ..Config::default()
        };
        match strict.mail_verdict(&fail, "1.2.3.4") {
            Verdict::Reject(Some(r)) => {
                assert_eq!((r.code, r.enhanced.as_deref()), (550, Some("5.7.23")));
                assert!(r.text.contains("example.org") && r.text.contains("1.2.3.4"));
            }
            other => panic!("{other:?}"),
        }
        let softfail = spf(AuthResult::Softfail, "example.org");
        assert_eq!(strict.mail_verdict(&softfail, "1.2.3.4"), Verdict::Next);
    }

    #[test]
    fn the_domains_explanation_is_cleaned_into_the_reply() {
        let mut fail = spf(AuthResult::Fail, "example.org");
        fail.explanation = Some("go\r\naway\u{7f} now".into());
        let strict = Config {
            reject_spf_fail: true,
            ..Config::default()
        };
        match strict.mail_verdict(&fail, "1.2.3.4") {
            Verdict::Reject(Some(r)) => assert_eq!(r.text, "SPF check failed: go away now"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn temperror_is_accepted_unless_configured() {
        let temp = spf(AuthResult::Temperror, "example.org");
        assert_eq!(Config::default().mail_verdict(&temp, "ip"), Verdict::Next);
        let strict = Config {
            tempfail_on_temperror: true,
            ..Config::default()
        };
        assert!(matches!(
            strict.mail_verdict(&temp, "ip"),
            Verdict::Tempfail(Some(Reply { code: 451, .. }))
        ));
        let r = results(
            AuthResult::Pass,
            dmarc(AuthResult::Temperror, DmarcPolicy::None),
        );
        assert_eq!(Config::default().data_verdict(&r, "ip"), Verdict::Next);
        assert!(matches!(
            strict.data_verdict(&r, "ip"),
            Verdict::Tempfail(Some(Reply { code: 451, .. }))
        ));
        // DMARC passed on DKIM: the SPF temperror no longer matters.
        let r = results(
            AuthResult::Temperror,
            dmarc(AuthResult::Pass, DmarcPolicy::Reject),
        );
        assert_eq!(strict.data_verdict(&r, "ip"), Verdict::Next);
    }

    #[test]
    fn dmarc_policies_are_honored_when_enabled() {
        let reject = results(
            AuthResult::Fail,
            dmarc(AuthResult::Fail, DmarcPolicy::Reject),
        );
        match Config::default().data_verdict(&reject, "ip") {
            Verdict::Reject(Some(r)) => {
                assert_eq!((r.code, r.enhanced.as_deref()), (550, Some("5.7.1")))
            }
            other => panic!("{other:?}"),
        }
        let quarantine = results(
            AuthResult::Fail,
            dmarc(AuthResult::Fail, DmarcPolicy::Quarantine),
        );
        // RFC 7489 §6.3: quarantine is delivered, marked, by default.
        assert_eq!(
            Config::default().data_verdict(&quarantine, "ip"),
            Verdict::Next
        );
        assert!(Config::default().marks_quarantine(&quarantine));
        let hold = Config::parse(r#"{"dmarc_quarantine": "hold"}"#).unwrap();
        assert!(matches!(
            hold.data_verdict(&quarantine, "ip"),
            Verdict::Quarantine(reason) if reason.contains("example.org")
        ));
        assert!(!hold.marks_quarantine(&quarantine));
        assert!(Config::parse(r#"{"dmarc_quarantine": "drop"}"#).is_err());
        let none = results(AuthResult::Fail, dmarc(AuthResult::Fail, DmarcPolicy::None));
        assert_eq!(Config::default().data_verdict(&none, "ip"), Verdict::Next);
        let pass = results(
            AuthResult::Fail,
            dmarc(AuthResult::Pass, DmarcPolicy::Reject),
        );
        assert_eq!(Config::default().data_verdict(&pass, "ip"), Verdict::Next);
        let off = Config {
            dmarc_policy: false,
            ..Config::default()
        };
        assert_eq!(off.data_verdict(&reject, "ip"), Verdict::Next);
    }

    #[test]
    fn header_lists_every_method_with_its_identity() {
        let r = Results {
            spf: spf(AuthResult::Pass, "example.org"),
            dkim: vec![
                DkimResult {
                    outcome: AuthResult::Pass,
                    domain: "example.org".into(),
                    selector: "sel".into(),
                    identity: "@example.org".into(),
                    reason: None,
                },
                DkimResult {
                    outcome: AuthResult::Fail,
                    domain: "other.test".into(),
                    selector: "s2".into(),
                    identity: String::new(),
                    reason: None,
                },
            ],
            dmarc: dmarc(AuthResult::Pass, DmarcPolicy::Reject),
            arc: AuthResult::Pass,
            arc_sealer: "forwarder.example".into(),
        };
        let identity = Identity {
            reverse_path: "alice@example.org",
            helo: Some("mail.example.org"),
        };
        assert_eq!(
            header_value("mx.example.test", &r, &identity, None),
            "mx.example.test; spf=pass smtp.mailfrom=alice@example.org; \
             dkim=pass header.d=example.org header.s=sel header.i=@example.org; \
             dkim=fail header.d=other.test header.s=s2; \
             dmarc=pass (p=reject) header.from=example.org; arc=pass"
        );
    }

    #[test]
    fn every_dkim_result_names_its_signer() {
        // RFC 8601 §2.7.1: header.d and header.s whatever the result, and
        // header.i when the signature has one.
        let signature = |outcome, reason: Option<&str>| DkimResult {
            outcome,
            domain: "example.org".into(),
            selector: "sel".into(),
            identity: "u@example.org".into(),
            reason: reason.map(str::to_owned),
        };
        for outcome in [
            AuthResult::Pass,
            AuthResult::Fail,
            AuthResult::Neutral,
            AuthResult::Temperror,
            AuthResult::Permerror,
        ] {
            let value = dkim_resinfo(&signature(outcome, None));
            assert!(
                value.ends_with(" header.d=example.org header.s=sel header.i=u@example.org"),
                "{value}"
            );
        }
        assert_eq!(
            dkim_resinfo(&signature(AuthResult::Permerror, Some("From (h=) is not signed"))),
            "dkim=permerror (From h= is not signed) header.d=example.org header.s=sel header.i=u@example.org"
        );
    }

    #[test]
    fn an_unsampled_dmarc_fail_records_the_local_policy() {
        // RFC 7489 §6.6.4 with RFC 8601 §2.3's policy ptype.
        let mut r = results(
            AuthResult::Fail,
            dmarc(AuthResult::Fail, DmarcPolicy::Quarantine),
        );
        r.dmarc.sampled = false;
        r.dmarc.reason = Some("pct=0 left this message out of the sample".into());
        let identity = Identity {
            reverse_path: "a@example.org",
            helo: None,
        };
        let value = header_value("mx", &r, &identity, None);
        assert!(
            value.contains(
                "dmarc=fail (p=quarantine: pct=0 left this message out of the sample) \
                 header.from=example.org policy.dmarc=quarantine"
            ),
            "{value}"
        );
    }

    #[test]
    fn a_trusted_arc_sealer_overrides_a_dmarc_fail() {
        // RFC 8617 §7.2.1.
        let mut r = results(
            AuthResult::Fail,
            dmarc(AuthResult::Fail, DmarcPolicy::Reject),
        );
        r.arc = AuthResult::Pass;
        r.arc_sealer = "forwarder.example".into();
        let trusting = Config::parse(r#"{"trusted_arc_sealers": ["Forwarder.Example"]}"#).unwrap();
        assert_eq!(trusting.arc_override(&r), Some("forwarder.example"));
        assert_eq!(trusting.data_verdict(&r, "ip"), Verdict::Next);
        // Not trusted, or a chain that does not validate: the policy holds.
        assert!(matches!(
            Config::default().data_verdict(&r, "ip"),
            Verdict::Reject(_)
        ));
        let mut broken = r.clone();
        broken.arc = AuthResult::Fail;
        assert_eq!(trusting.arc_override(&broken), None);
        assert!(matches!(
            trusting.data_verdict(&broken, "ip"),
            Verdict::Reject(_)
        ));
        let identity = Identity {
            reverse_path: "a@example.org",
            helo: None,
        };
        let value = header_value("mx", &r, &identity, trusting.arc_override(&r));
        assert!(
            value.contains(
                "dmarc=fail (p=reject) header.from=example.org \
                 policy.dmarc=none policy.arc-sealer=forwarder.example"
            ),
            "{value}"
        );
    }

    #[test]
    fn header_for_unsigned_mail_and_the_null_sender() {
        let r = Results {
            spf: spf(AuthResult::None, "mail.example.org"),
            dkim: Vec::new(),
            dmarc: DmarcResult {
                outcome: AuthResult::None,
                header_from: String::new(),
                policy: DmarcPolicy::None,
                sampled: true,
                reason: None,
            },
            arc: AuthResult::None,
            arc_sealer: String::new(),
        };
        let identity = Identity {
            reverse_path: "",
            helo: Some("mail.example.org"),
        };
        assert_eq!(
            header_value("mx", &r, &identity, None),
            "mx; spf=none smtp.mailfrom=postmaster@mail.example.org; dkim=none; dmarc=none"
        );
        let mut literal = r.clone();
        literal.spf.domain = "[127.0.0.2]".into();
        let identity = Identity {
            reverse_path: "",
            helo: Some("[127.0.0.2]"),
        };
        assert!(header_value("mx", &literal, &identity, None).contains("smtp.helo=\"[127.0.0.2]\""));
    }

    #[test]
    fn property_values_are_quoted_when_needed() {
        assert_eq!(pvalue("a.b@example.org"), "a.b@example.org");
        assert_eq!(pvalue("example.org"), "example.org");
        assert_eq!(pvalue("\"a b\"@example.org"), "\"\\\"a b\\\"@example.org\"");
        assert_eq!(pvalue("x;y"), "\"x;y\"");
    }

    #[test]
    fn authserv_ids_are_read_past_comments_and_quotes() {
        assert_eq!(
            authserv_id("mx.example.test; spf=pass").as_deref(),
            Some("mx.example.test")
        );
        assert_eq!(
            authserv_id("  (c (nested)) mx 1; none").as_deref(),
            Some("mx")
        );
        assert_eq!(
            authserv_id("\"mx.ex\\\"q\"; none").as_deref(),
            Some("mx.ex\"q")
        );
        assert_eq!(
            authserv_id("mx.example.test(c); none").as_deref(),
            Some("mx.example.test")
        );
        assert_eq!(authserv_id(""), None);
        assert_eq!(authserv_id("(unterminated"), None);
    }

    #[test]
    fn only_headers_claiming_our_id_are_dropped() {
        let headers = vec![
            ("Received".to_owned(), "from x".to_owned()),
            (HEADER.to_owned(), "other.example; spf=pass".to_owned()),
            (
                "authentication-results".to_owned(),
                "MX.example.test; dkim=pass".to_owned(),
            ),
            (HEADER.to_owned(), "third.example; dmarc=pass".to_owned()),
        ];
        let (remove, prepend) = forged_header_changes("mx.example.test", &headers);
        assert_eq!(remove, vec![HEADER.to_owned()]);
        assert_eq!(
            prepend,
            vec![
                "other.example; spf=pass".to_owned(),
                "third.example; dmarc=pass".to_owned()
            ]
        );
        let clean = vec![(HEADER.to_owned(), "other.example; spf=pass".to_owned())];
        assert_eq!(
            forged_header_changes("mx.example.test", &clean),
            (Vec::new(), Vec::new())
        );
    }
}
