//! Macros (`SMFIC_MACRO`): name/value pairs sent just before the command
//! they describe. Which ones go at which stage is what the milter asked for
//! in negotiation, or else the usual Postfix defaults; a macro sluice has
//! no value for is left out.

use std::collections::BTreeMap;

use super::wire::{command, put_str, Packet};

/// The stages a milter can ask macros for, by their protocol code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacroStage {
    Connect = 0,
    Helo = 1,
    Mail = 2,
    Rcpt = 3,
    Data = 4,
    Eom = 5,
    Eoh = 6,
}

impl MacroStage {
    pub fn from_code(code: u32) -> Option<MacroStage> {
        Some(match code {
            0 => MacroStage::Connect,
            1 => MacroStage::Helo,
            2 => MacroStage::Mail,
            3 => MacroStage::Rcpt,
            4 => MacroStage::Data,
            5 => MacroStage::Eom,
            6 => MacroStage::Eoh,
            _ => return None,
        })
    }

    /// The command the macros go in front of.
    fn command(self) -> u8 {
        match self {
            MacroStage::Connect => command::CONNECT,
            MacroStage::Helo => command::HELO,
            MacroStage::Mail => command::MAIL,
            MacroStage::Rcpt => command::RCPT,
            MacroStage::Data => command::DATA,
            MacroStage::Eom => command::BODYEOB,
            MacroStage::Eoh => command::EOH,
        }
    }

    /// Postfix's `milter_*_macros` defaults, less what sluice never has.
    fn defaults(self) -> &'static [&'static str] {
        match self {
            MacroStage::Connect => &[
                "j",
                "{daemon_name}",
                "{client_addr}",
                "{client_port}",
                "{client_name}",
                "_",
            ],
            MacroStage::Helo => &["{tls_version}", "{cipher}"],
            MacroStage::Mail => &["i", "{auth_type}", "{auth_authen}", "{mail_addr}"],
            MacroStage::Rcpt => &["{rcpt_addr}"],
            MacroStage::Data | MacroStage::Eom => &["i"],
            MacroStage::Eoh => &[],
        }
    }
}

/// The macro names a milter asked for, per stage (names without braces).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestedMacros {
    lists: [Option<Vec<String>>; 7],
}

impl RequestedMacros {
    /// Takes a space-separated list as negotiation carries it.
    pub fn set(&mut self, stage: MacroStage, list: &str) {
        self.lists[stage as usize] = Some(list.split_ascii_whitespace().map(bare).collect());
    }

    pub fn get(&self, stage: MacroStage) -> Option<&[String]> {
        self.lists[stage as usize].as_deref()
    }
}

/// `{name}` and `name` are the same macro.
fn bare(name: &str) -> String {
    name.trim_start_matches('{')
        .trim_end_matches('}')
        .to_owned()
}

/// The macro values sluice knows for the session so far, by bare name.
#[derive(Debug, Clone, Default)]
pub struct MacroValues {
    values: BTreeMap<String, String>,
}

impl MacroValues {
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.values.insert(bare(name), value.into());
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(&bare(name)).map(String::as_str)
    }

    /// The `SMFIC_MACRO` packet for a stage, or none when no asked-for
    /// macro has a value.
    pub fn packet(&self, stage: MacroStage, requested: &RequestedMacros) -> Option<Packet> {
        let mut data = vec![stage.command()];
        let mut any = false;
        let mut put = |name: &str| {
            if let Some(value) = self.get(name) {
                let name = bare(name);
                // Single-letter macros go bare, the others in braces.
                let wire = if name.len() == 1 {
                    name
                } else {
                    format!("{{{name}}}")
                };
                put_str(&mut data, wire.as_bytes());
                put_str(&mut data, value.as_bytes());
                any = true;
            }
        };
        match requested.get(stage) {
            Some(list) => list.iter().for_each(|name| put(name)),
            None => stage.defaults().iter().for_each(|name| put(name)),
        }
        any.then(|| Packet::new(command::MACRO, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> MacroValues {
        let mut values = MacroValues::default();
        values.set("j", "mx.example");
        values.set("{daemon_name}", "smtp");
        values.set("client_addr", "192.0.2.1");
        values.set("i", "Q123");
        values
    }

    #[test]
    fn defaults_go_when_nothing_was_asked_and_unknown_values_are_left_out() {
        let packet = values()
            .packet(MacroStage::Connect, &RequestedMacros::default())
            .unwrap();
        assert_eq!(packet.command, b'D');
        assert_eq!(
            packet.data,
            b"Cj\0mx.example\0{daemon_name}\0smtp\0{client_addr}\x00192.0.2.1\0".to_vec()
        );
        assert_eq!(
            values()
                .packet(MacroStage::Eom, &RequestedMacros::default())
                .unwrap()
                .data,
            b"Ei\0Q123\0"
        );
        assert_eq!(
            values().packet(MacroStage::Rcpt, &RequestedMacros::default()),
            None
        );
    }

    #[test]
    fn a_requested_list_replaces_the_defaults() {
        let mut requested = RequestedMacros::default();
        requested.set(MacroStage::Mail, "{client_addr} i {nope}");
        let packet = values().packet(MacroStage::Mail, &requested).unwrap();
        assert_eq!(packet.data, b"M{client_addr}\x00192.0.2.1\0i\0Q123\0");
        requested.set(MacroStage::Helo, "");
        assert_eq!(values().packet(MacroStage::Helo, &requested), None);
    }
}
