//! Which TLS policy an attempt ran under: what the logs and the queue
//! view say, and the STARTTLS policy of the targets without DANE.

use super::mta_sts::Mode;
use crate::config::OutboundTls;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppliedTls {
    /// Some MX hosts have usable TLSA records: they get DANE, the others
    /// (in a DNSSEC-signed domain without TLSA for them) opportunistic TLS.
    Dane,
    /// The domain's MTA-STS policy in this mode.
    MtaSts(Mode),
    /// No DANE, no MTA-STS: the configured (or default) policy.
    Plain(OutboundTls),
}

impl AppliedTls {
    /// The STARTTLS policy of targets without TLSA records.
    pub fn client_tls(self) -> OutboundTls {
        match self {
            AppliedTls::Dane => OutboundTls::Opportunistic,
            AppliedTls::MtaSts(Mode::Enforce) => OutboundTls::Required,
            AppliedTls::MtaSts(_) => OutboundTls::Opportunistic,
            AppliedTls::Plain(OutboundTls::Auto | OutboundTls::MtaSts | OutboundTls::Dane) => {
                OutboundTls::Opportunistic
            }
            AppliedTls::Plain(tls) => tls,
        }
    }
}

impl AppliedTls {
    /// Whether the policy authenticates the next hop (DANE, MTA-STS
    /// enforce, `required`): a deferral under it says so, as the reason
    /// is often the policy itself.
    pub fn is_authenticating(self) -> bool {
        match self {
            AppliedTls::Dane | AppliedTls::MtaSts(_) => true,
            AppliedTls::Plain(_) => self.client_tls() == OutboundTls::Required,
        }
    }
}

impl std::fmt::Display for AppliedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppliedTls::Dane => f.write_str("dane"),
            AppliedTls::MtaSts(Mode::Enforce) => f.write_str("mta-sts enforce"),
            AppliedTls::MtaSts(Mode::Testing) => f.write_str("mta-sts testing"),
            AppliedTls::MtaSts(Mode::None) => f.write_str("mta-sts none"),
            AppliedTls::Plain(_) => write!(f, "{}", self.client_tls()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_name_themselves_and_their_starttls() {
        assert_eq!(AppliedTls::Dane.to_string(), "dane");
        assert_eq!(
            AppliedTls::MtaSts(Mode::Enforce).client_tls(),
            OutboundTls::Required
        );
        assert_eq!(
            AppliedTls::MtaSts(Mode::Testing).to_string(),
            "mta-sts testing"
        );
        assert_eq!(
            AppliedTls::Plain(OutboundTls::Auto).to_string(),
            "opportunistic"
        );
        assert_eq!(
            AppliedTls::Plain(OutboundTls::None).client_tls(),
            OutboundTls::None
        );
    }
}
