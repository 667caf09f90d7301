//! Recipient changes a data-stage plugin asks for (add or remove an
//! envelope recipient, or a milter's new sender): allowed only to a plugin the operator granted
//! `recipients` (`[plugins.NAME] allow`), and each address parsed like a
//! RCPT argument, so no CR, LF, NUL or other control character, RFC 5321
//! mailbox syntax and the RFC 5321 §4.5.3.1 lengths. A change that fails
//! either is the plugin's fault: its `on_error` decides. What passes goes
//! on in canonical form (the form RCPT stores) to the fold and the
//! session, which applies it and counts it toward `max_recipients`.

use super::fault::PluginFault;
use super::sandbox;
use super::verdict::Modification;
use crate::config::{Capabilities, Capability};
use crate::smtp::address::{parse_mailbox, AddressError, MAX_PATH};

/// Checks every recipient change of one plugin's answer; returns the
/// modifications with recipients in canonical form, or the fault.
pub(super) fn check(
    plugin: &str,
    allow: Capabilities,
    modifications: Vec<Modification>,
) -> Result<Vec<Modification>, PluginFault> {
    modifications
        .into_iter()
        .map(|modification| match modification {
            Modification::AddRecipient(address) => {
                canonical(plugin, allow, &address).map(Modification::AddRecipient)
            }
            Modification::RemoveRecipient(address) => {
                canonical(plugin, allow, &address).map(Modification::RemoveRecipient)
            }
            // The null reverse-path needs no parse.
            Modification::ChangeSender(address) if address.is_empty() => {
                sandbox::check(plugin, allow, Capability::Recipients).map_err(PluginFault::Host)?;
                Ok(Modification::ChangeSender(address))
            }
            Modification::ChangeSender(address) => match canonical(plugin, allow, &address) {
                Ok(sender) => Ok(Modification::ChangeSender(sender)),
                Err(PluginFault::BadRecipient { address, reason }) => {
                    Err(PluginFault::BadSender { address, reason })
                }
                Err(fault) => Err(fault),
            },
            header => Ok(header),
        })
        .collect()
}

/// The granted, parsed address as RCPT would store it.
fn canonical(plugin: &str, allow: Capabilities, address: &str) -> Result<String, PluginFault> {
    sandbox::check(plugin, allow, Capability::Recipients).map_err(PluginFault::Host)?;
    parse_recipient(address).map_err(|reason| PluginFault::BadRecipient {
        address: address.to_owned(),
        reason,
    })
}

/// Parses a bare `local@domain` as the mailbox of a RCPT TO path: ASCII
/// only (the transaction may not have SMTPUTF8), within the path length.
pub(crate) fn parse_recipient(address: &str) -> Result<String, AddressError> {
    // The path a RCPT would carry is the address in angle brackets.
    if address.len() + 2 > MAX_PATH {
        return Err(AddressError::PathTooLong);
    }
    parse_mailbox(address, false).map(|mailbox| mailbox.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted() -> Capabilities {
        Capabilities::from_iter([Capability::Recipients])
    }

    #[test]
    fn valid_recipients_come_out_canonical() {
        assert_eq!(
            parse_recipient("Hold@Example.ORG").unwrap(),
            "Hold@example.org"
        );
        assert_eq!(
            parse_recipient("\"a b\"@example.org").unwrap(),
            "\"a b\"@example.org"
        );
        assert_eq!(parse_recipient("x@[192.0.2.1]").unwrap(), "x@[192.0.2.1]");
    }

    #[test]
    fn what_rcpt_would_refuse_is_refused() {
        let long_local = format!("{}@example.org", "a".repeat(65));
        let long_path = format!("a@{}.org", "b.".repeat(126));
        for (address, reason) in [
            (
                "evil@example.org\r\nRCPT TO:<x@y>",
                AddressError::ControlCharacter,
            ),
            ("a@example.org\nb", AddressError::ControlCharacter),
            ("a\0@example.org", AddressError::ControlCharacter),
            ("", AddressError::EmptyLocalPart),
            ("nobody", AddressError::MissingDomain),
            ("a@b@example.org", AddressError::InvalidDomain),
            ("<a@example.org>", AddressError::InvalidLocalPart),
            ("a..b@example.org", AddressError::InvalidLocalPart),
            ("a@example..org", AddressError::InvalidDomain),
            ("j\u{f6}rg@example.org", AddressError::NonAscii),
            (long_local.as_str(), AddressError::LocalPartTooLong),
            (long_path.as_str(), AddressError::PathTooLong),
        ] {
            assert_eq!(parse_recipient(address), Err(reason), "{address:?}");
        }
    }

    #[test]
    fn a_recipient_change_needs_the_grant() {
        let changes = || {
            vec![
                Modification::RemoveHeader("X-Old".into()),
                Modification::AddRecipient("Copy@Example.org".into()),
            ]
        };
        let fault = check("p", Capabilities::bundled(), changes()).unwrap_err();
        assert_eq!(
            fault.to_string(),
            "not allowed: recipients (plugins.p.allow does not list it)"
        );
        let remove = vec![Modification::RemoveRecipient("a@example.org".into())];
        assert!(check("p", Capabilities::NONE, remove).is_err());
        assert_eq!(
            check("p", granted(), changes()).unwrap(),
            vec![
                Modification::RemoveHeader("X-Old".into()),
                Modification::AddRecipient("Copy@example.org".into()),
            ]
        );
    }

    #[test]
    fn a_new_sender_needs_the_grant_and_a_valid_address() {
        let change = |a: &str| vec![Modification::ChangeSender(a.into())];
        assert!(check("m", Capabilities::NONE, change("b@example.org")).is_err());
        assert!(check("m", Capabilities::NONE, change("")).is_err());
        assert_eq!(
            check("m", granted(), change("B@Example.ORG")).unwrap(),
            change("B@example.org")
        );
        assert_eq!(check("m", granted(), change("")).unwrap(), change(""));
        assert_eq!(
            check("m", granted(), change("b@example.org\r\nRCPT TO:<x@y>")).unwrap_err(),
            PluginFault::BadSender {
                address: "b@example.org\r\nRCPT TO:<x@y>".into(),
                reason: AddressError::ControlCharacter,
            }
        );
    }

    #[test]
    fn header_edits_need_no_grant() {
        let edits = vec![Modification::PrependHeader {
            name: "X-Spam".into(),
            value: "yes".into(),
        }];
        assert_eq!(
            check("p", Capabilities::NONE, edits.clone()).unwrap(),
            edits
        );
    }

    #[test]
    fn a_bad_address_is_the_plugins_fault_naming_it() {
        let changes = vec![Modification::AddRecipient("a@example.org\r\nDATA".into())];
        let fault = check("p", granted(), changes).unwrap_err();
        assert_eq!(
            fault,
            PluginFault::BadRecipient {
                address: "a@example.org\r\nDATA".into(),
                reason: AddressError::ControlCharacter,
            }
        );
        assert_eq!(fault.kind(), "error");
        assert!(
            fault.to_string().contains(r#""a@example.org\r\nDATA""#),
            "{fault}"
        );
    }
}
